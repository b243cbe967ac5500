//! Who is looking: the token of the sign-in cookie, checked on every request like a
//! bearer token, whose scopes decide which actions a page offers; and the checks every
//! action passes first.
//!
//! Actions are safe from cross-site requests three times over: the browser does not
//! send a SameSite=Strict cookie with them, a request a browser marks `Sec-Fetch-Site:
//! cross-site` is refused, and every form carries a CSRF value derived from the token
//! that another site cannot know.

use axum::{
    body::Bytes,
    extract::FromRequestParts,
    http::{HeaderMap, StatusCode, header, request::Parts},
    response::{IntoResponse, Redirect, Response},
};
use sha2::{Digest, Sha256};
use turnq_core::auth::{Scope, TokenInfo};

use super::error::PageError;
use crate::AppState;

/// The cookie that holds the token.
pub(crate) const COOKIE: &str = "turnq_token";

/// The token of the request's cookie, if it has one.
pub(crate) fn cookie_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim())
        .filter(|v| !v.is_empty())
}

/// The CSRF value of forms for the holder of `token`: a hash of it, so another site
/// cannot make one, and it changes with the token.
fn csrf_for(token: &str) -> String {
    let digest = Sha256::digest(format!("turnq ui csrf\0{token}"));
    hex::encode(&digest[..16])
}

/// Who is looking at a page: a signed-in token with at least `read`.
pub(crate) struct Viewer {
    pub token: TokenInfo,
    pub csrf: String,
}

impl Viewer {
    /// Whether the viewer's token allows `scope` (admin allows everything).
    pub fn can(&self, scope: Scope) -> bool {
        self.token.allows(scope)
    }

    /// The fields of an action's form, once the request is shown to come from one of
    /// our pages (CSRF value, `Sec-Fetch-Site`) and the viewer may do `scope`.
    pub fn form(&self, headers: &HeaderMap, body: &Bytes, scope: Scope) -> Result<Form, PageError> {
        let site = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok());
        if matches!(site, Some("cross-site" | "same-site")) {
            return Err(PageError::new(
                StatusCode::FORBIDDEN,
                "this action came from another site, so it was refused",
            ));
        }
        let form = Form::parse(body);
        if form.get("csrf") != Some(self.csrf.as_str()) {
            return Err(PageError::new(
                StatusCode::FORBIDDEN,
                "the form is out of date or did not come from this page: reload it and try again",
            ));
        }
        if !self.can(scope) {
            return Err(PageError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "token {:?} lacks the `{scope}` scope this action needs",
                    self.token.name
                ),
            ));
        }
        Ok(form)
    }
}

impl FromRequestParts<AppState> for Viewer {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let to_signin = || {
            let here = parts
                .uri
                .path_and_query()
                .map(|p| p.as_str())
                .unwrap_or("/");
            let next = url::form_urlencoded::byte_serialize(here.as_bytes()).collect::<String>();
            Redirect::to(&format!("/signin?next={next}")).into_response()
        };
        let Some(raw) = cookie_token(&parts.headers) else {
            return Err(to_signin());
        };
        match state.tokens().authenticate(state.db(), raw).await {
            Ok(Some(token)) if token.allows(Scope::Read) => Ok(Viewer {
                csrf: csrf_for(raw),
                token,
            }),
            Ok(Some(token)) => Err(PageError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "token {:?} lacks the `read` scope the pages need",
                    token.name
                ),
            )
            .into_response()),
            Ok(None) => Err(to_signin()),
            Err(e) => Err(PageError::from(crate::ApiError::from(e)).into_response()),
        }
    }
}

/// The fields of a submitted form or a query string, in order; a name may repeat
/// (checkboxes).
pub(crate) struct Form(Vec<(String, String)>);

impl Form {
    pub fn parse(raw: &[u8]) -> Form {
        Form(url::form_urlencoded::parse(raw).into_owned().collect())
    }

    pub fn from_query(query: Option<&str>) -> Form {
        Self::parse(query.unwrap_or_default().as_bytes())
    }

    /// The first value of `name`, if given.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The first value of `name`, trimmed, if given and not blank.
    pub fn value(&self, name: &str) -> Option<String> {
        self.get(name)
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    }

    /// Every value of `name`.
    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

//! Signing in with a token: it is kept in an HttpOnly, SameSite=Strict cookie (never
//! where a script can read it), checked on every request like a bearer token, and the
//! viewer's scopes decide which actions a page offers.
//!
//! Actions are safe from cross-site requests three times over: the browser does not
//! send a SameSite=Strict cookie with them, a request a browser marks `Sec-Fetch-Site:
//! cross-site` is refused, and every form carries a CSRF value derived from the token
//! that another site cannot know.

use axum::{
    body::Bytes,
    extract::{FromRequestParts, RawQuery, State},
    http::{HeaderMap, HeaderValue, StatusCode, header, request::Parts},
    response::{IntoResponse, Redirect, Response},
};
use maud::{Markup, html};
use sha2::{Digest, Sha256};
use turnq_core::auth::{Scope, TokenInfo, TokenStore};

use super::layout::{self, PageError};
use crate::AppState;

/// The cookie that holds the token.
pub(crate) const COOKIE: &str = "turnq_token";
/// How long a sign-in lasts: the token's own revocation ends it sooner.
const COOKIE_MAX_AGE_SECS: u64 = 30 * 24 * 3600;

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
        match TokenStore::authenticate(state.db(), raw).await {
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

/// Where to go after signing in: a path of this site only (never `//other.site`).
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n) if n.starts_with('/') && !n.starts_with("//") && !n.starts_with("/\\") => {
            n.to_owned()
        }
        _ => "/".to_owned(),
    }
}

fn signin_page(next: &str, problem: Option<&str>) -> Markup {
    layout::bare(
        "Sign in",
        html! {
            form.signin method="post" action="/signin" {
                h1 { "turnq" }
                p { "Sign in with an API token. A token with " code { "read" }
                    " shows everything; " code { "submit" } " and " code { "admin" }
                    " add the actions." }
                @if let Some(problem) = problem {
                    p.problem role="alert" { (problem) }
                }
                label for="token" { "Token" }
                input #token type="password" name="token" autocomplete="current-password"
                    required autofocus;
                input type="hidden" name="next" value=(next);
                button type="submit" { "Sign in" }
                p.hint { "No token yet? " code { "turnq token create --name me --scopes read,submit,admin" } }
            }
        },
    )
}

/// `GET /signin`
pub(super) async fn form(RawQuery(query): RawQuery) -> Markup {
    let query = Form::from_query(query.as_deref());
    signin_page(&safe_next(query.get("next")), None)
}

/// `POST /signin`: a known token with `read` sets the cookie; anything else says why.
pub(super) async fn sign_in(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form = Form::parse(&body);
    let next = safe_next(form.get("next"));
    let Some(token) = form.value("token") else {
        return (
            StatusCode::BAD_REQUEST,
            signin_page(&next, Some("Paste a token to sign in.")),
        )
            .into_response();
    };
    match TokenStore::authenticate(state.db(), &token).await {
        Ok(Some(info)) if info.allows(Scope::Read) => {
            let secure = headers
                .get("x-forwarded-proto")
                .is_some_and(|v| v.as_bytes() == b"https");
            let cookie = format!(
                "{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age={COOKIE_MAX_AGE_SECS}{}",
                if secure { "; Secure" } else { "" }
            );
            let mut response = Redirect::to(&next).into_response();
            if let Ok(value) = HeaderValue::from_str(&cookie) {
                response.headers_mut().insert(header::SET_COOKIE, value);
            }
            response
        }
        Ok(Some(info)) => (
            StatusCode::FORBIDDEN,
            signin_page(
                &next,
                Some(&format!(
                    "Token {:?} lacks the read scope the pages need.",
                    info.name
                )),
            ),
        )
            .into_response(),
        Ok(None) => (
            StatusCode::UNAUTHORIZED,
            signin_page(&next, Some("That token is unknown or revoked.")),
        )
            .into_response(),
        Err(e) => PageError::from(crate::ApiError::from(e)).into_response(),
    }
}

/// `POST /signout`: forgets the cookie.
pub(super) async fn sign_out(viewer: Viewer, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(e) = viewer.form(&headers, &body, Scope::Read) {
        return e.into_response();
    }
    let mut response = Redirect::to("/signin").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("turnq_token=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    response
}

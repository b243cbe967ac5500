//! Signing in with a token: it is kept in an HttpOnly, SameSite=Strict cookie (never
//! where a script can read it); signing out forgets it. Who is signed in, and what they
//! may do, is [`super::viewer`]'s.

use axum::{
    body::Bytes,
    extract::{RawQuery, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Redirect, Response},
};
use maud::{Markup, html};
use turnq_core::auth::Scope;

use super::{
    error::PageError,
    layout,
    viewer::{COOKIE, Form, Viewer},
};
use crate::AppState;

/// How long a sign-in lasts: the token's own revocation ends it sooner.
const COOKIE_MAX_AGE_SECS: u64 = 30 * 24 * 3600;

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
    match state.tokens().authenticate(state.db(), &token).await {
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

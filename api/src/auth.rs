//! Bearer-token authentication with scopes. Every `/v1` route names the scope it needs;
//! health endpoints stay open for probes.

use axum::{
    extract::{Request, State},
    http::{HeaderValue, Method, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use turnq_core::auth::Scope;

use crate::{ApiError, AppState};

/// Lets the request through if it carries a known token with `scope` (or `admin`):
/// 401 without a valid token, 403 with one that lacks the scope.
pub(crate) async fn require(
    State((state, scope)): State<(AppState, Scope)>,
    mut request: Request,
    next: Next,
) -> Response {
    let bearer = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        // The scheme is case-insensitive (RFC 9110): `bearer x` is the same header.
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim());
    // The UI's sign-in cookie counts for reads (its pages follow the event stream
    // through it), never for a change: a form could be made to send a cookie, so
    // changes go through the UI's own CSRF-checked actions or a bearer header.
    let safe = matches!(*request.method(), Method::GET | Method::HEAD);
    let presented = bearer.or_else(|| {
        safe.then(|| crate::ui::viewer::cookie_token(request.headers()))
            .flatten()
    });
    let Some(presented) = presented else {
        return unauthorized(
            "this route needs an `Authorization: Bearer <token>` header; create a token with `turnq token create`",
        );
    };
    match state.tokens().authenticate(state.db(), presented).await {
        Ok(Some(token)) if token.allows(scope) => {
            request.extensions_mut().insert(Caller(token.name.clone()));
            next.run(request).await
        }
        Ok(Some(token)) => ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "token {:?} lacks the `{scope}` scope this route needs",
                token.name
            ),
        )
        .into_response(),
        Ok(None) => unauthorized("the bearer token is unknown or revoked"),
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// Who sent the request: the name of its token. Handlers that record a person's
/// decision (an answer to a request) take it from the request's extensions.
#[derive(Clone, Debug)]
pub(crate) struct Caller(pub(crate) String);

fn unauthorized(message: &str) -> Response {
    let mut response =
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message).into_response();
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

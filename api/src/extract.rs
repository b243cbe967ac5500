//! Extractors whose rejections use the API's error envelope.

use axum::{
    body::Bytes,
    extract::{FromRequest, FromRequestParts, Request},
    http::request::Parts,
};
use serde::de::DeserializeOwned;
use turnq_core::TaskId;

use crate::ApiError;

/// `axum::Json`, rejecting with [`ApiError`].
#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct Json<T>(pub T);

/// `axum::extract::Path`, rejecting with [`ApiError`].
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct Path<T>(pub T);

/// A raw body (`axum::body::Bytes`), rejecting with [`ApiError`]: a body over the
/// route's limit is a 413 in the envelope, not axum's plain text.
pub struct Body(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for Body {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        Ok(Body(Bytes::from_request(request, state).await?))
    }
}

/// `axum::extract::Query`, rejecting with [`ApiError`], and refusing a parameter that
/// is not UTF-8 once percent-decoded (axum would decode it lossily, turning `%FF` into
/// U+FFFD: a value the client never sent).
pub struct Query<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        if let Some(raw) = parts.uri.query() {
            check_utf8(raw)?;
        }
        let axum::extract::Query(value) =
            axum::extract::Query::<T>::from_request_parts(parts, state).await?;
        Ok(Query(value))
    }
}

/// Every name and value of the query string `raw` decodes to UTF-8.
fn check_utf8(raw: &str) -> Result<(), ApiError> {
    let decodes = |part: &str| {
        percent_encoding::percent_decode_str(part)
            .decode_utf8()
            .is_ok()
    };
    for pair in raw.split('&') {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        if !decodes(name) {
            return Err(ApiError::bad_request(
                "a query parameter's name is not valid UTF-8 once percent-decoded",
            ));
        }
        if !decodes(value) {
            let name = percent_encoding::percent_decode_str(name).decode_utf8_lossy();
            return Err(ApiError::bad_request(format!(
                "the query parameter {name:?} is not valid UTF-8 once percent-decoded"
            )));
        }
    }
    Ok(())
}

/// The `{id}` of a task route, parsed with a message that says what is wrong.
pub struct TaskPath(pub TaskId);

impl<S: Send + Sync> FromRequestParts<S> for TaskPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let axum::extract::Path(raw) =
            axum::extract::Path::<String>::from_request_parts(parts, state).await?;
        raw.parse::<TaskId>()
            .map(TaskPath)
            .map_err(|_| ApiError::bad_request(format!("task id {raw:?} is not a UUID")))
    }
}

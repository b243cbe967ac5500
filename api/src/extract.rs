//! Extractors whose rejections use the API's error envelope.

use axum::{
    extract::{FromRequest, FromRequestParts},
    http::request::Parts,
};
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

/// `axum::extract::Query`, rejecting with [`ApiError`].
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct Query<T>(pub T);

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

//! An error shown as a page: the status and what went wrong. It is rendered by
//! [`super::layout`] (its `IntoResponse`), so the pieces below it can return it without
//! knowing the page shell.

use axum::http::StatusCode;

use crate::ApiError;

/// An error shown as a page.
#[derive(Debug)]
pub(crate) struct PageError {
    pub(super) status: StatusCode,
    pub(super) message: String,
}

impl PageError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        PageError {
            status,
            message: message.into(),
        }
    }
}

impl From<ApiError> for PageError {
    fn from(e: ApiError) -> Self {
        PageError::new(e.status(), e.message())
    }
}

impl From<turnq_core::Error> for PageError {
    fn from(e: turnq_core::Error) -> Self {
        ApiError::from(e).into()
    }
}

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
    /// Where the page offers to go back to (a link and its text), when not the
    /// overview: the task whose action failed, say.
    pub(super) back: Option<(String, String)>,
}

impl PageError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        PageError {
            status,
            message: message.into(),
            back: None,
        }
    }

    /// The error page links back to `href`, labelled `label`.
    pub fn with_back(mut self, href: &str, label: &str) -> Self {
        self.back = Some((href.to_owned(), label.to_owned()));
        self
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

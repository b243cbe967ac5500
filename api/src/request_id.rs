//! Request ids: every response carries `x-request-id` (the client's, or a fresh UUID),
//! the access log line names it, and so does the error envelope, so a user can quote
//! the id of a failed request and an operator find its log lines.
//!
//! The id of the request being handled is kept in a task-local for its handler, since
//! an error turns into a response without seeing the request.

use axum::{extract::Request, middleware::Next, response::Response};

/// The header, as `tower-http` sets and propagates it.
pub(crate) const HEADER: &str = "x-request-id";

tokio::task_local! {
    static REQUEST_ID: String;
}

/// The id of the request this task is handling, if any.
pub(crate) fn current() -> Option<String> {
    REQUEST_ID.try_with(Clone::clone).ok()
}

/// Runs the rest of the request with its id in [`current`] (the id is on the request by
/// now: `SetRequestIdLayer` runs first).
pub(crate) async fn scope(request: Request, next: Next) -> Response {
    let id = request
        .headers()
        .get(HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    REQUEST_ID.scope(id, next.run(request)).await
}

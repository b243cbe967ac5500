//! The routes, one module per resource.

mod health;
mod tasks;
mod workers;

use axum::{
    Router,
    extract::DefaultBodyLimit,
    routing::{get, post},
};

use crate::AppState;

/// The largest body of a single submission: the 1 MiB input limit plus room for the
/// other fields, so an oversized input reaches validation and gets its own message.
const SUBMIT_BODY_LIMIT: usize = 2 * 1024 * 1024;
/// The largest body of a batch submission.
const BATCH_BODY_LIMIT: usize = 64 * 1024 * 1024;

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route(
            "/v1/tasks",
            post(tasks::submit)
                .layer(DefaultBodyLimit::max(SUBMIT_BODY_LIMIT))
                .get(tasks::list),
        )
        .route(
            "/v1/tasks/batch",
            post(tasks::submit_batch).layer(DefaultBodyLimit::max(BATCH_BODY_LIMIT)),
        )
        .route("/v1/tasks/{id}", get(tasks::get))
        .route("/v1/tasks/{id}/events", get(tasks::events))
        .route("/v1/tasks/{id}/cancel", post(tasks::cancel))
        .route("/v1/tasks/{id}/retry", post(tasks::retry))
        .route("/v1/tasks/{id}/approve", post(tasks::approve))
        .route("/v1/inbox", get(tasks::inbox))
        .route("/v1/workers", get(workers::list))
        .fallback(|| async { crate::ApiError::not_found("no such route") })
}

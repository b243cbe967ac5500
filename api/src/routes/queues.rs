//! `/v1/queues`: the queues, what each holds, and pausing one (an operator's act).
//!
//! The figures come from the process' event feed, which keeps them from the log
//! (`turnq_core::queue::QueueTally`): no table is read for them, however many tasks
//! there are.

use axum::{Json, extract::State, http::StatusCode};
use serde_json::{Value, json};
use turnq_core::queue::{Queue, QueueStats, QueueStore};

use crate::{ApiError, AppState, extract::Path};

fn metadata() -> Value {
    json!({"actor": "api"})
}

/// `queue` with what it holds now; 503 while the feed is still loading at start.
pub(crate) fn with_figures(state: &AppState, queue: Queue) -> Result<QueueStats, ApiError> {
    let figures = state
        .feed()
        .and_then(|feed| feed.queue_figures(&queue.name))
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the queue figures are still loading; retry shortly",
            )
        })?;
    Ok(QueueStats { queue, figures })
}

/// `GET /v1/queues`: every queue with its figures.
pub(super) async fn list(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let queues = QueueStore::list(state.db())
        .await?
        .into_iter()
        .map(|q| with_figures(&state, q))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Json(json!({ "queues": queues })))
}

/// `GET /v1/queues/{name}`.
pub(super) async fn get(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<QueueStats>, ApiError> {
    let queue = QueueStore::get(state.db(), &name).await?;
    Ok(Json(with_figures(&state, queue)?))
}

/// `POST /v1/queues/{name}/pause`: its tasks are no longer handed to Redis (those
/// already there still run). Pausing a paused queue changes nothing.
pub(super) async fn pause(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<QueueStats>, ApiError> {
    let queue = QueueStore::pause(state.db(), &name, &metadata()).await?;
    Ok(Json(with_figures(&state, queue)?))
}

/// `POST /v1/queues/{name}/resume`.
pub(super) async fn resume(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<QueueStats>, ApiError> {
    let queue = QueueStore::resume(state.db(), &name, &metadata()).await?;
    Ok(Json(with_figures(&state, queue)?))
}

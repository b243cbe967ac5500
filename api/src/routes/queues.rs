//! `/v1/queues`: the queues, what each holds, and pausing one (an operator's act).

use axum::{Json, extract::State};
use serde_json::{Value, json};
use turnq_core::queue::{QueueStats, QueueStore};

use crate::{ApiError, AppState, extract::Path};

fn metadata() -> Value {
    json!({"actor": "api"})
}

/// `GET /v1/queues`: every queue with its figures.
pub(super) async fn list(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let queues = QueueStore::list(state.db()).await?;
    Ok(Json(json!({ "queues": queues })))
}

/// `GET /v1/queues/{name}`.
pub(super) async fn get(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<QueueStats>, ApiError> {
    Ok(Json(QueueStore::get(state.db(), &name).await?))
}

/// `POST /v1/queues/{name}/pause`: its tasks are no longer handed to Redis (those
/// already there still run). Pausing a paused queue changes nothing.
pub(super) async fn pause(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<QueueStats>, ApiError> {
    Ok(Json(
        QueueStore::pause(state.db(), &name, &metadata()).await?,
    ))
}

/// `POST /v1/queues/{name}/resume`.
pub(super) async fn resume(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<QueueStats>, ApiError> {
    Ok(Json(
        QueueStore::resume(state.db(), &name, &metadata()).await?,
    ))
}

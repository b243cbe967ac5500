//! `/v1/queues`: the queues, what each holds, and pausing one (an operator's act).
//!
//! The figures come from the process' event feed, which keeps them from the log
//! (`turnq_core::queue::QueueTally`): no table is read for them, however many tasks
//! there are.

use axum::{Json, extract::State, http::StatusCode};
use serde::Serialize;
use serde_json::{Value, json};
use std::collections::BTreeSet;

use turnq_core::{
    queue::{Queue, QueueStats, QueueStore, UnservedAgent},
    worker::WorkerRegistry,
};
use utoipa::ToSchema;

use crate::{ApiError, AppState, extract::Path};

fn metadata() -> Value {
    json!({"actor": "api"})
}

/// `queue` with what it holds now, and the agents its tasks wait for that none of the
/// `served` pairs covers; 503 while the feed is still loading at start.
pub(crate) fn with_figures(
    state: &AppState,
    queue: Queue,
    served: &BTreeSet<(String, String)>,
) -> Result<QueueStats, ApiError> {
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
    Ok(QueueStats::new(queue, figures, served))
}

/// Every (queue, agent) that tasks wait for and no live worker serves, from the
/// process' tally (queues whose figures are still loading are left out).
pub(crate) async fn unserved(state: &AppState) -> Result<Vec<UnservedAgent>, ApiError> {
    let served = WorkerRegistry::served_pairs(state.db()).await?;
    Ok(QueueStore::list(state.db())
        .await?
        .into_iter()
        .filter_map(|q| with_figures(state, q, &served).ok())
        .flat_map(|stats| stats.unserved)
        .collect())
}

/// Every queue.
#[derive(Serialize, ToSchema)]
pub(super) struct QueueList {
    /// By name.
    queues: Vec<QueueStats>,
}

/// `GET /v1/queues`: every queue with its figures.
#[utoipa::path(
    get,
    path = "/v1/queues",
    tag = "queues",
    operation_id = "list_queues",
    summary = "Every queue with what it holds",
    description = "Scope `read`. 503 while the process is still loading the figures at start.",
    security(("bearer" = ["read"])),
    responses(
        (status = 200, description = "The queues.", body = QueueList),
        (status = 401, response = crate::openapi::responses::Unauthorized),
        (status = 403, response = crate::openapi::responses::Forbidden),
        (status = 500, response = crate::openapi::responses::Internal),
        (status = 503, response = crate::openapi::responses::Unavailable),
    ),
)]
pub(super) async fn list(State(state): State<AppState>) -> Result<Json<QueueList>, ApiError> {
    let served = WorkerRegistry::served_pairs(state.db()).await?;
    let queues = QueueStore::list(state.db())
        .await?
        .into_iter()
        .map(|q| with_figures(&state, q, &served))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Json(QueueList { queues }))
}

/// `GET /v1/queues/{name}`.
#[utoipa::path(
    get,
    path = "/v1/queues/{name}",
    tag = "queues",
    operation_id = "get_queue",
    summary = "One queue with what it holds",
    description = "Scope `read`.",
    params(("name" = String, Path, description = "The queue's name.", pattern = "^[A-Za-z0-9_.-]{1,64}$")),
    security(("bearer" = ["read"])),
    responses(
        (status = 200, description = "The queue.", body = QueueStats),
        (status = 400, response = crate::openapi::responses::BadRequest),
        (status = 401, response = crate::openapi::responses::Unauthorized),
        (status = 403, response = crate::openapi::responses::Forbidden),
        (status = 404, response = crate::openapi::responses::NotFound),
        (status = 500, response = crate::openapi::responses::Internal),
        (status = 503, response = crate::openapi::responses::Unavailable),
    ),
)]
pub(super) async fn get(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<QueueStats>, ApiError> {
    let queue = QueueStore::get(state.db(), &name).await?;
    let served = WorkerRegistry::served_pairs(state.db()).await?;
    Ok(Json(with_figures(&state, queue, &served)?))
}

/// `POST /v1/queues/{name}/pause`: its tasks are no longer handed to Redis (those
/// already there still run). Pausing a paused queue changes nothing.
#[utoipa::path(
    post,
    path = "/v1/queues/{name}/pause",
    tag = "queues",
    operation_id = "pause_queue",
    summary = "Stop dispatching a queue",
    description = "Scope `admin`. Its tasks are no longer handed to Redis; those already there still run. Pausing a paused queue changes nothing.",
    params(("name" = String, Path, description = "The queue's name.", pattern = "^[A-Za-z0-9_.-]{1,64}$")),
    security(("bearer" = ["admin"])),
    responses(
        (status = 200, description = "The queue.", body = QueueStats),
        (status = 400, response = crate::openapi::responses::BadRequest),
        (status = 401, response = crate::openapi::responses::Unauthorized),
        (status = 403, response = crate::openapi::responses::Forbidden),
        (status = 404, response = crate::openapi::responses::NotFound),
        (status = 409, response = crate::openapi::responses::Conflict),
        (status = 500, response = crate::openapi::responses::Internal),
        (status = 503, response = crate::openapi::responses::Unavailable),
    ),
)]
pub(super) async fn pause(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<QueueStats>, ApiError> {
    let queue = QueueStore::pause(state.db(), &name, &metadata()).await?;
    let served = WorkerRegistry::served_pairs(state.db()).await?;
    Ok(Json(with_figures(&state, queue, &served)?))
}

/// `POST /v1/queues/{name}/resume`.
#[utoipa::path(
    post,
    path = "/v1/queues/{name}/resume",
    tag = "queues",
    operation_id = "resume_queue",
    summary = "Dispatch a paused queue again",
    description = "Scope `admin`. Resuming a running queue changes nothing.",
    params(("name" = String, Path, description = "The queue's name.", pattern = "^[A-Za-z0-9_.-]{1,64}$")),
    security(("bearer" = ["admin"])),
    responses(
        (status = 200, description = "The queue.", body = QueueStats),
        (status = 400, response = crate::openapi::responses::BadRequest),
        (status = 401, response = crate::openapi::responses::Unauthorized),
        (status = 403, response = crate::openapi::responses::Forbidden),
        (status = 404, response = crate::openapi::responses::NotFound),
        (status = 409, response = crate::openapi::responses::Conflict),
        (status = 500, response = crate::openapi::responses::Internal),
        (status = 503, response = crate::openapi::responses::Unavailable),
    ),
)]
pub(super) async fn resume(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<QueueStats>, ApiError> {
    let queue = QueueStore::resume(state.db(), &name, &metadata()).await?;
    let served = WorkerRegistry::served_pairs(state.db()).await?;
    Ok(Json(with_figures(&state, queue, &served)?))
}

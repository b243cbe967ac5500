//! The worker registry, read-only.

use axum::{Json, extract::State};
use serde::Serialize;
use turnq_core::worker::{Worker, WorkerRegistry};

use crate::{ApiError, AppState};

/// Every worker process that registered.
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct WorkerList {
    workers: Vec<Worker>,
}

#[utoipa::path(
    get,
    path = "/v1/workers",
    tag = "workers",
    operation_id = "list_workers",
    summary = "The worker registry",
    description = "Scope `read`. Stopped workers stay listed with `stopped_at`.",
    security(("bearer" = ["read"])),
    responses(
        (status = 200, description = "The workers.", body = WorkerList),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 500, response = crate::openapi::Internal),
        (status = 503, response = crate::openapi::Unavailable),
    ),
)]
pub(super) async fn list(State(state): State<AppState>) -> Result<Json<WorkerList>, ApiError> {
    let workers = WorkerRegistry::list(state.db()).await?;
    Ok(Json(WorkerList { workers }))
}

//! The worker registry, read-only.

use std::time::Duration;

use axum::{Json, extract::State};
use serde::{Deserialize, Serialize};
use turnq_core::worker::{Worker, WorkerRegistry};

use crate::{ApiError, AppState, extract::Query};

/// How long a stopped or stale worker stays in the default listing.
pub(crate) const LISTED_FOR: Duration = Duration::from_secs(3600);

#[derive(Deserialize, Default, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct ListQuery {
    /// `true`: every worker that ever registered. Default: those heard from in the last
    /// hour.
    all: Option<bool>,
}

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
    description = "Scope `read`. Each worker's `state`: `live` (beat within 30 s), `stale` (silent since, and never said it stopped: killed, hung or cut off), `stopped`. Workers not heard from for an hour are left out unless `all=true`.",
    params(ListQuery),
    security(("bearer" = ["read"])),
    responses(
        (status = 200, description = "The workers.", body = WorkerList),
        (status = 400, response = crate::openapi::responses::BadRequest),
        (status = 401, response = crate::openapi::responses::Unauthorized),
        (status = 403, response = crate::openapi::responses::Forbidden),
        (status = 500, response = crate::openapi::responses::Internal),
        (status = 503, response = crate::openapi::responses::Unavailable),
    ),
)]
pub(super) async fn list(
    State(state): State<AppState>,
    Query(query): Query<ListQuery>,
) -> Result<Json<WorkerList>, ApiError> {
    let workers = if query.all == Some(true) {
        WorkerRegistry::list(state.db()).await?
    } else {
        WorkerRegistry::recent(state.db(), LISTED_FOR).await?
    };
    Ok(Json(WorkerList { workers }))
}

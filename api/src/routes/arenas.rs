//! `/v1/arenas`: one task given to several agents at once, compared side by side, and
//! the winner a person picks (see `turnq_core::arena`).

use axum::{Json, extract::State, http::StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use turnq_core::{
    ArenaId, TaskId,
    arena::{ArenaStore, ArenaView, NewArenaRequest, WinnerRequest},
    metrics as names, time,
    workspace::{Decision, WorkspaceStore},
};
use utoipa::{IntoParams, ToSchema};

use crate::{
    ApiError, AppState,
    auth::Caller,
    extract::{self, Query},
};

const DEFAULT_LIST: u64 = 50;

fn metadata() -> Value {
    json!({"actor": "api"})
}

/// The `{id}` of an arena route, parsed with a message that says what is wrong.
pub(crate) struct ArenaPath(pub ArenaId);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for ArenaPath {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        let extract::Path(raw) = extract::Path::<String>::from_request_parts(parts, state).await?;
        raw.parse::<ArenaId>()
            .map(ArenaPath)
            .map_err(|_| ApiError::bad_request(format!("arena id {raw:?} is not a UUID")))
    }
}

/// Counts the contestants' tasks as submitted, like `POST /v1/tasks` does.
pub(crate) fn count_submitted(arena: &ArenaView) {
    for c in &arena.contestants {
        metrics::counter!(names::TASKS_SUBMITTED, "queue" => arena.queue.clone(),
            "agent" => c.agent.clone())
        .increment(1);
    }
}

/// `POST /v1/arenas`: 201 with the arena and its contestants' new tasks.
#[utoipa::path(
    post,
    path = "/v1/arenas",
    tag = "arenas",
    operation_id = "create_arena",
    summary = "Give one task to several agents at once",
    description = "Scope `submit`. One transaction: the arena, its `arena.created` event and \
        one task per contestant (the arena's input, project and queue; the contestant's agent \
        and model; `arena_id` set; a session of its own, `arena-{id}-{i}`). 2 to 16 \
        contestants. Every rule of a task applies to each contestant's task; a bad field, \
        an unknown field or an agent that is not registered is a 400 that names it, and \
        writes nothing.",
    request_body = NewArenaRequest,
    security(("bearer" = ["submit"])),
    responses(
        (status = 201, description = "The new arena.", body = ArenaView),
        (status = 400, response = crate::openapi::responses::BadRequest),
        (status = 401, response = crate::openapi::responses::Unauthorized),
        (status = 403, response = crate::openapi::responses::Forbidden),
        (status = 413, response = crate::openapi::responses::PayloadTooLarge),
        (status = 415, response = crate::openapi::responses::UnsupportedMediaType),
        (status = 422, response = crate::openapi::responses::Unprocessable),
        (status = 500, response = crate::openapi::responses::Internal),
        (status = 503, response = crate::openapi::responses::Unavailable),
    ),
)]
pub(super) async fn create(
    State(state): State<AppState>,
    extract::Json(body): extract::Json<NewArenaRequest>,
) -> Result<(StatusCode, Json<ArenaView>), ApiError> {
    let arena = body.validate(time::now())?;
    let view = ArenaStore::create(state.db(), arena, &metadata()).await?;
    count_submitted(&view);
    Ok((StatusCode::CREATED, Json(view)))
}

#[derive(Deserialize, Default, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct ListQuery {
    /// Only the arenas of this project.
    project: Option<String>,
    /// Arenas at most: 1 to 200, default 50.
    #[param(minimum = 1, maximum = 200)]
    limit: Option<u64>,
}

/// The newest arenas.
#[derive(Serialize, ToSchema)]
pub(super) struct ArenaList {
    /// Newest first; inputs and output summaries as in the task list (previews when
    /// large).
    arenas: Vec<ArenaView>,
}

/// `GET /v1/arenas`: the newest arenas, of one project or of all.
#[utoipa::path(
    get,
    path = "/v1/arenas",
    tag = "arenas",
    operation_id = "list_arenas",
    summary = "The newest arenas",
    description = "Scope `read`. Newest first, with their contestants. An input over 1 KiB (as \
        JSON text) is listed as a preview string of its first 1,000 characters with \
        `input_truncated: true`, an output summary over 1,000 characters is cut \
        (`output_truncated: true`): `GET /v1/arenas/{id}` has them whole.",
    params(ListQuery),
    security(("bearer" = ["read"])),
    responses(
        (status = 200, description = "The arenas.", body = ArenaList),
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
) -> Result<Json<ArenaList>, ApiError> {
    let max = turnq_core::arena::MAX_LIST;
    let limit = match query.limit.unwrap_or(DEFAULT_LIST) {
        n @ 1.. if n <= max => n,
        n => {
            return Err(ApiError::bad_request(format!(
                "limit {n} is out of range: use 1 to {max}"
            )));
        }
    };
    let arenas = ArenaStore::list(state.db(), query.project.as_deref(), limit).await?;
    Ok(Json(ArenaList { arenas }))
}

/// `GET /v1/arenas/{id}`.
#[utoipa::path(
    get,
    path = "/v1/arenas/{id}",
    tag = "arenas",
    operation_id = "get_arena",
    summary = "One arena, its contestants side by side",
    description = "Scope `read`. Each contestant: its task's state, output summary, last error, \
        start, end and duration, usage (tokens and cost, every attempt's), the changes it \
        proposed by status, and whether it won.",
    params(("id" = uuid::Uuid, Path, description = "The arena's id.")),
    security(("bearer" = ["read"])),
    responses(
        (status = 200, description = "The arena.", body = ArenaView),
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
    ArenaPath(id): ArenaPath,
) -> Result<Json<ArenaView>, ApiError> {
    Ok(Json(ArenaStore::get(state.db(), id).await?))
}

/// `POST /v1/arenas/{id}/winner`: a person picks the contestant that won.
#[utoipa::path(
    post,
    path = "/v1/arenas/{id}/winner",
    tag = "arenas",
    operation_id = "pick_arena_winner",
    summary = "Pick an arena's winner",
    description = "Scope `submit`. `task_id` must be one of the arena's contestants, and \
        completed (400 otherwise). An arena is decided once: a second pick is a 409 \
        `arena_decided` that names the winner and who picked it. The token's name is \
        recorded as `decided_by`, with `arena.winner_picked`.",
    params(("id" = uuid::Uuid, Path, description = "The arena's id.")),
    request_body = WinnerRequest,
    security(("bearer" = ["submit"])),
    responses(
        (status = 200, description = "The arena, decided.", body = ArenaView),
        (status = 400, response = crate::openapi::responses::BadRequest),
        (status = 401, response = crate::openapi::responses::Unauthorized),
        (status = 403, response = crate::openapi::responses::Forbidden),
        (status = 404, response = crate::openapi::responses::NotFound),
        (status = 409, response = crate::openapi::responses::Conflict),
        (status = 413, response = crate::openapi::responses::PayloadTooLarge),
        (status = 415, response = crate::openapi::responses::UnsupportedMediaType),
        (status = 422, response = crate::openapi::responses::Unprocessable),
        (status = 500, response = crate::openapi::responses::Internal),
        (status = 503, response = crate::openapi::responses::Unavailable),
    ),
)]
pub(super) async fn pick_winner(
    State(state): State<AppState>,
    ArenaPath(id): ArenaPath,
    caller: Option<axum::Extension<Caller>>,
    extract::Json(body): extract::Json<WinnerRequest>,
) -> Result<Json<ArenaView>, ApiError> {
    // The token check in front of every scoped route names the caller; "api" only if a
    // route were ever mounted without it.
    let by = caller.map_or_else(|| "api".to_owned(), |axum::Extension(c)| c.0);
    let view =
        ArenaStore::pick_winner(state.db(), id, TaskId(body.task_id), &by, &metadata()).await?;
    if !body.reject_others {
        return Ok(Json(view));
    }
    for loser in view.contestants.iter().filter(|c| !c.winner) {
        let Some(session) = &loser.session_id else {
            continue;
        };
        let Some(worktree) = WorkspaceStore::active(state.db(), &view.project, session).await?
        else {
            continue;
        };
        match WorkspaceStore::hold(state.db(), &worktree, None, false).await {
            Ok(held) => {
                held.record(Decision::Rejected, Some(&by), None).await?;
            }
            // Nothing pending in that contestant's worktree.
            Err(turnq_core::Error::Invalid(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Json(ArenaStore::get(state.db(), id).await?))
}

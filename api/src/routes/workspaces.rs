//! A session's workspace over HTTP: its worktree, its pending changes (list, apply onto
//! the project branch, reject, revert) and its checkpoints (list, restore). See
//! docs/people-in-the-loop.md.
//!
//! The decisions themselves (apply, reject, revert, restore) live in
//! [`crate::workspace_ops`], shared with the UI's actions; these handlers read the
//! request and shape the JSON.

use std::path::Path;

use axum::{Json, extract::State};
use serde::{Deserialize, Serialize};
use turnq_core::workspace::{self, Checkpoint, PendingChange, WorkspaceStore, Worktree};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::sessions::SessionPath;
use crate::{
    ApiError, AppState,
    auth::Caller,
    extract::{self, Query},
    workspace_ops::{self, Decided, Restored, active_here, git_error},
};

/// The worktrees of a session.
#[derive(Serialize, ToSchema)]
pub(super) struct SessionWorktrees {
    /// The one its turns run in; absent when the session has none (its tasks name no
    /// repository) or it was archived.
    active: Option<Worktree>,
    /// Earlier ones, newest first (archived, or left behind on a host that was gone).
    archived: Vec<Worktree>,
}

#[utoipa::path(
    get,
    path = "/v1/sessions/{project_key}/{session_id}/worktree",
    tag = "workspaces",
    operation_id = "get_worktree",
    summary = "A session's worktree",
    description = "Scope `read`.",
    params(
        ("project_key" = String, Path, description = "The project key (a task's `project`)."),
        ("session_id" = String, Path, description = "The session id."),
    ),
    security(("bearer" = ["read"])),
    responses(
        (status = 200, description = "Its worktrees.", body = SessionWorktrees),
        (status = 400, response = crate::openapi::responses::BadRequest),
        (status = 401, response = crate::openapi::responses::Unauthorized),
        (status = 403, response = crate::openapi::responses::Forbidden),
        (status = 500, response = crate::openapi::responses::Internal),
        (status = 503, response = crate::openapi::responses::Unavailable),
    ),
)]
pub(super) async fn worktree(
    State(state): State<AppState>,
    SessionPath(project, session): SessionPath,
) -> Result<Json<SessionWorktrees>, ApiError> {
    let all = WorkspaceStore::of_session(state.db(), project.as_str(), session.as_str()).await?;
    let (active, archived): (Vec<Worktree>, Vec<Worktree>) =
        all.into_iter().partition(|w| w.status == "active");
    Ok(Json(SessionWorktrees {
        active: active.into_iter().next(),
        archived,
    }))
}

#[utoipa::path(
    post,
    path = "/v1/sessions/{project_key}/{session_id}/worktree/archive",
    tag = "workspaces",
    operation_id = "archive_worktree",
    summary = "Archive a session's worktree and remove its directory",
    description = "Scope `submit`. The branch and the checkpoints stay; the session's next \
        task with a repository gets a new worktree. 404 when the session has no active \
        worktree, 409 while one of its turns runs.",
    params(
        ("project_key" = String, Path, description = "The project key."),
        ("session_id" = String, Path, description = "The session id."),
    ),
    security(("bearer" = ["submit"])),
    responses(
        (status = 200, description = "The archived worktree.", body = Worktree),
        (status = 400, response = crate::openapi::responses::BadRequest),
        (status = 401, response = crate::openapi::responses::Unauthorized),
        (status = 403, response = crate::openapi::responses::Forbidden),
        (status = 404, response = crate::openapi::responses::NotFound),
        (status = 409, response = crate::openapi::responses::Conflict),
        (status = 500, response = crate::openapi::responses::Internal),
        (status = 503, response = crate::openapi::responses::Unavailable),
    ),
)]
pub(super) async fn archive(
    State(state): State<AppState>,
    SessionPath(project, session): SessionPath,
    caller: Option<axum::Extension<Caller>>,
) -> Result<Json<Worktree>, ApiError> {
    let worktree = active_here(&state, project.as_str(), session.as_str()).await?;
    // No turn may start in the directory while it goes (its claim waits for the lock).
    let quiet = WorkspaceStore::hold_session(state.db(), &worktree).await?;
    workspace::remove_worktree(Path::new(&worktree.repo), Path::new(&worktree.path))
        .await
        .map_err(git_error)?;
    let by = caller.map(|axum::Extension(c)| c.0);
    let archived = WorkspaceStore::archive(state.db(), worktree.id, by.as_deref()).await?;
    quiet.commit().await.map_err(turnq_core::Error::from)?;
    Ok(Json(archived))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct ChangesQuery {
    /// Only changes in this status: `pending`, `applied`, `rejected`, `reverted` or
    /// `superseded`.
    status: Option<String>,
}

/// A session's changes.
#[derive(Serialize, ToSchema)]
pub(super) struct ChangeList {
    /// Oldest first.
    changes: Vec<PendingChange>,
}

const STATUSES: [&str; 5] = ["pending", "applied", "rejected", "reverted", "superseded"];

#[utoipa::path(
    get,
    path = "/v1/sessions/{project_key}/{session_id}/changes",
    tag = "workspaces",
    operation_id = "list_changes",
    summary = "A session's changes, one per file and turn",
    description = "Scope `read`.",
    params(
        ("project_key" = String, Path, description = "The project key."),
        ("session_id" = String, Path, description = "The session id."),
        ChangesQuery,
    ),
    security(("bearer" = ["read"])),
    responses(
        (status = 200, description = "The changes.", body = ChangeList),
        (status = 400, response = crate::openapi::responses::BadRequest),
        (status = 401, response = crate::openapi::responses::Unauthorized),
        (status = 403, response = crate::openapi::responses::Forbidden),
        (status = 500, response = crate::openapi::responses::Internal),
        (status = 503, response = crate::openapi::responses::Unavailable),
    ),
)]
pub(super) async fn changes(
    State(state): State<AppState>,
    SessionPath(project, session): SessionPath,
    Query(query): Query<ChangesQuery>,
) -> Result<Json<ChangeList>, ApiError> {
    if let Some(status) = &query.status
        && !STATUSES.contains(&status.as_str())
    {
        return Err(ApiError::bad_request(format!(
            "status {status:?} is not one of {}",
            STATUSES.join(", ")
        )));
    }
    let changes = WorkspaceStore::changes(
        state.db(),
        project.as_str(),
        session.as_str(),
        query.status.as_deref(),
    )
    .await?;
    Ok(Json(ChangeList { changes }))
}

/// Which pending changes a decision is about.
#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct Decide {
    /// The changes (ids); absent: every pending change of the session.
    ids: Option<Vec<Uuid>>,
    /// The commit message of an apply (default: one naming the session and files).
    message: Option<String>,
}

macro_rules! decision_path {
    ($path:literal, $id:literal, $summary:literal, $description:literal, $item:item) => {
        #[utoipa::path(
                    post,
                    path = $path,
                    tag = "workspaces",
                    operation_id = $id,
                    summary = $summary,
                    description = $description,
                    params(
                        ("project_key" = String, Path, description = "The project key."),
                        ("session_id" = String, Path, description = "The session id."),
                    ),
                    request_body(content = Option<Decide>, content_type = "application/json"),
                    security(("bearer" = ["submit"])),
                    responses(
                        (status = 200, description = "What was decided.", body = Decided),
                        (status = 400, response = crate::openapi::responses::BadRequest),
                        (status = 401, response = crate::openapi::responses::Unauthorized),
                        (status = 403, response = crate::openapi::responses::Forbidden),
                        (status = 404, response = crate::openapi::responses::NotFound),
                        (status = 409, response = crate::openapi::responses::Conflict),
                        (status = 500, response = crate::openapi::responses::Internal),
                        (status = 503, response = crate::openapi::responses::Unavailable),
                    ),
                )]
        $item
    };
}

decision_path!(
    "/v1/sessions/{project_key}/{session_id}/changes/apply",
    "apply_changes",
    "Commit pending changes onto the project branch",
    "Scope `submit`. One commit of the chosen pending changes (default: all) onto the \
     worktree's target branch, moved by compare-and-swap; when that branch is checked out \
     in the repository its files follow. A diff that no longer applies is a 409 naming \
     the file, and nothing changes. 400 for a change that is not pending or not the \
     session's.",
    pub(super) async fn apply(
        State(state): State<AppState>,
        SessionPath(project, session): SessionPath,
        caller: Option<axum::Extension<Caller>>,
        extract::Body(body): extract::Body,
    ) -> Result<Json<Decided>, ApiError> {
        let decide: Decide = super::tasks::optional_body(&body)?;
        let by = caller.map(|axum::Extension(c)| c.0);
        let decided = workspace_ops::apply(
            &state,
            project.as_str(),
            session.as_str(),
            decide.ids.as_deref(),
            decide.message,
            by.as_deref(),
        )
        .await?;
        Ok(Json(decided))
    }
);

decision_path!(
    "/v1/sessions/{project_key}/{session_id}/changes/reject",
    "reject_changes",
    "Reject pending changes",
    "Scope `submit`. The chosen pending changes (default: all) are not wanted; nothing \
     changes in git (revert them to undo them in the worktree).",
    pub(super) async fn reject(
        State(state): State<AppState>,
        SessionPath(project, session): SessionPath,
        caller: Option<axum::Extension<Caller>>,
        extract::Body(body): extract::Body,
    ) -> Result<Json<Decided>, ApiError> {
        let decide: Decide = super::tasks::optional_body(&body)?;
        let by = caller.map(|axum::Extension(c)| c.0);
        let decided = workspace_ops::reject(
            &state,
            project.as_str(),
            session.as_str(),
            decide.ids.as_deref(),
            by.as_deref(),
        )
        .await?;
        Ok(Json(decided))
    }
);

decision_path!(
    "/v1/sessions/{project_key}/{session_id}/changes/revert",
    "revert_changes",
    "Undo pending changes in the worktree",
    "Scope `submit`. Each chosen file (default: every pending one) goes back to its \
     content at the worktree's base commit (deleted if it did not exist). 409 while a \
     turn of the session runs.",
    pub(super) async fn revert(
        State(state): State<AppState>,
        SessionPath(project, session): SessionPath,
        caller: Option<axum::Extension<Caller>>,
        extract::Body(body): extract::Body,
    ) -> Result<Json<Decided>, ApiError> {
        let decide: Decide = super::tasks::optional_body(&body)?;
        let by = caller.map(|axum::Extension(c)| c.0);
        let decided = workspace_ops::revert(
            &state,
            project.as_str(),
            session.as_str(),
            decide.ids.as_deref(),
            by.as_deref(),
        )
        .await?;
        Ok(Json(decided))
    }
);

/// A session's checkpoints.
#[derive(Serialize, ToSchema)]
pub(super) struct CheckpointList {
    /// Newest first.
    checkpoints: Vec<Checkpoint>,
}

#[utoipa::path(
    get,
    path = "/v1/sessions/{project_key}/{session_id}/checkpoints",
    tag = "workspaces",
    operation_id = "list_checkpoints",
    summary = "A session's checkpoints, one before each turn in its worktree",
    description = "Scope `read`.",
    params(
        ("project_key" = String, Path, description = "The project key."),
        ("session_id" = String, Path, description = "The session id."),
    ),
    security(("bearer" = ["read"])),
    responses(
        (status = 200, description = "The checkpoints.", body = CheckpointList),
        (status = 400, response = crate::openapi::responses::BadRequest),
        (status = 401, response = crate::openapi::responses::Unauthorized),
        (status = 403, response = crate::openapi::responses::Forbidden),
        (status = 500, response = crate::openapi::responses::Internal),
        (status = 503, response = crate::openapi::responses::Unavailable),
    ),
)]
pub(super) async fn checkpoints(
    State(state): State<AppState>,
    SessionPath(project, session): SessionPath,
) -> Result<Json<CheckpointList>, ApiError> {
    let checkpoints =
        WorkspaceStore::checkpoints(state.db(), project.as_str(), session.as_str()).await?;
    Ok(Json(CheckpointList { checkpoints }))
}

#[utoipa::path(
    post,
    path = "/v1/checkpoints/{id}/restore",
    tag = "workspaces",
    operation_id = "restore_checkpoint",
    summary = "Put a session back as it was at a checkpoint",
    description = "Scope `submit`. The worktree's files go back to the checkpoint, the \
        session transcript is rewound to it (later entries are hidden from `load`, never \
        deleted) and the session's agent sessions are closed, so its next turn starts a \
        fresh backend conversation from the rewound transcript. 409 while a turn of the \
        session runs, or when the checkpoint's worktree is archived.",
    params(("id" = uuid::Uuid, Path, description = "The checkpoint's id.")),
    security(("bearer" = ["submit"])),
    responses(
        (status = 200, description = "What was restored.", body = Restored),
        (status = 400, response = crate::openapi::responses::BadRequest),
        (status = 401, response = crate::openapi::responses::Unauthorized),
        (status = 403, response = crate::openapi::responses::Forbidden),
        (status = 404, response = crate::openapi::responses::NotFound),
        (status = 409, response = crate::openapi::responses::Conflict),
        (status = 500, response = crate::openapi::responses::Internal),
        (status = 503, response = crate::openapi::responses::Unavailable),
    ),
)]
pub(super) async fn restore(
    State(state): State<AppState>,
    extract::Path(id): extract::Path<Uuid>,
    caller: Option<axum::Extension<Caller>>,
) -> Result<Json<Restored>, ApiError> {
    let by = caller.map(|axum::Extension(c)| c.0);
    Ok(Json(
        workspace_ops::restore(&state, id, by.as_deref()).await?,
    ))
}

//! A session's workspace over HTTP: its worktree, its pending changes (list, apply onto
//! the project branch, reject, revert) and its checkpoints (list, restore). See
//! docs/people-in-the-loop.md.
//!
//! Applying, reverting and restoring run `git` on the repository and the worktree, so
//! the API process must see them: the same host as the worker that made the worktree,
//! or shared storage. Anywhere else the answer is a 409 that names the worktree's host.

use std::path::Path;

use axum::{Json, extract::State};
use serde::{Deserialize, Serialize};
use turnq_core::{
    Error,
    entity::tasks,
    task::TaskState,
    workspace::{
        self, Checkpoint, Decision, PendingChange, WorkspaceError, WorkspaceStore, Worktree,
    },
};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::sessions::SessionPath;
use crate::{
    ApiError, AppState,
    auth::Caller,
    extract::{self, Query},
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
    idle(&state, &worktree).await?;
    workspace::remove_worktree(Path::new(&worktree.repo), Path::new(&worktree.path))
        .await
        .map_err(git_error)?;
    let by = caller.map(|axum::Extension(c)| c.0);
    Ok(Json(
        WorkspaceStore::archive(state.db(), worktree.id, by.as_deref()).await?,
    ))
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

/// What a decision did.
#[derive(Serialize, ToSchema)]
pub(super) struct Decided {
    changes: Vec<PendingChange>,
    /// The commit an apply made on the target branch.
    commit_sha: Option<String>,
    /// The branch the changes were applied onto.
    branch: Option<String>,
    /// The target branch is checked out in the repository and its files were brought
    /// along (false: not checked out there, or see `warning`).
    checkout_updated: bool,
    /// Something the person should do (the checkout held local changes in the way).
    warning: Option<String>,
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
        let worktree = active_here(&state, project.as_str(), session.as_str()).await?;
        let chosen = chosen(&state, &worktree, decide.ids.as_deref()).await?;
        let files: Vec<_> = chosen.iter().map(PendingChange::file_change).collect();
        let message = decide.message.unwrap_or_else(|| {
            let paths: Vec<&str> = chosen.iter().map(|c| c.path.as_str()).collect();
            format!(
                "Apply {} change(s) of session {} (turnq)\n\n{}",
                chosen.len(),
                worktree.session_id,
                paths.join("\n")
            )
        });
        if message.contains('\0') {
            return Err(ApiError::bad_request("message contains U+0000"));
        }
        let repo = Path::new(&worktree.repo);
        let branch = &worktree.target_branch;
        let before = workspace::branch_tip(repo, branch)
            .await
            .map_err(git_error)?;
        let commit = workspace::apply(repo, branch, &files, &message)
            .await
            .map_err(git_error)?;
        let (checkout_updated, warning) =
            match workspace::sync_checkout(repo, branch, &before, &commit).await {
                Ok(updated) => (updated, None),
                Err(e) => (false, Some(e.to_string())),
            };
        let by = caller.map(|axum::Extension(c)| c.0);
        let ids: Vec<Uuid> = chosen.iter().map(|c| c.id).collect();
        let changes = WorkspaceStore::decide(
            state.db(),
            &ids,
            Decision::Applied,
            by.as_deref(),
            Some(&commit),
        )
        .await?;
        Ok(Json(Decided {
            changes,
            commit_sha: Some(commit),
            branch: Some(branch.clone()),
            checkout_updated,
            warning,
        }))
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
        let worktree = WorkspaceStore::active(state.db(), project.as_str(), session.as_str())
            .await?
            .ok_or_else(|| no_worktree(project.as_str(), session.as_str()))?;
        let chosen = chosen(&state, &worktree, decide.ids.as_deref()).await?;
        let by = caller.map(|axum::Extension(c)| c.0);
        let ids: Vec<Uuid> = chosen.iter().map(|c| c.id).collect();
        let changes =
            WorkspaceStore::decide(state.db(), &ids, Decision::Rejected, by.as_deref(), None)
                .await?;
        Ok(Json(Decided {
            changes,
            commit_sha: None,
            branch: None,
            checkout_updated: false,
            warning: None,
        }))
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
        let worktree = active_here(&state, project.as_str(), session.as_str()).await?;
        idle(&state, &worktree).await?;
        let chosen = chosen(&state, &worktree, decide.ids.as_deref()).await?;
        for change in &chosen {
            workspace::revert(
                Path::new(&worktree.path),
                &worktree.base_commit,
                &change.path,
            )
            .await
            .map_err(git_error)?;
        }
        let by = caller.map(|axum::Extension(c)| c.0);
        let ids: Vec<Uuid> = chosen.iter().map(|c| c.id).collect();
        let changes =
            WorkspaceStore::decide(state.db(), &ids, Decision::Reverted, by.as_deref(), None)
                .await?;
        Ok(Json(Decided {
            changes,
            commit_sha: None,
            branch: None,
            checkout_updated: false,
            warning: None,
        }))
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

/// What a restore did.
#[derive(Serialize, ToSchema)]
pub(super) struct Restored {
    checkpoint: Checkpoint,
    /// Transcript entries written after the checkpoint, now hidden from `load`.
    entries_hidden: u64,
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
    let checkpoint = WorkspaceStore::checkpoint(state.db(), id).await?;
    let worktree = match checkpoint.worktree_id {
        Some(worktree) => WorkspaceStore::worktree(state.db(), worktree).await?,
        None => return Err(conflict("the checkpoint's worktree no longer exists")),
    };
    if worktree.status != "active" {
        return Err(conflict(format!(
            "the checkpoint's worktree {} is {}: restore a checkpoint of the session's active worktree",
            worktree.id, worktree.status
        )));
    }
    reachable(&worktree)?;
    idle(&state, &worktree).await?;
    workspace::restore(Path::new(&worktree.path), &checkpoint.commit_sha)
        .await
        .map_err(git_error)?;
    let by = caller.map(|axum::Extension(c)| c.0);
    let entries_hidden =
        WorkspaceStore::record_restore(state.db(), &checkpoint, by.as_deref()).await?;
    Ok(Json(Restored {
        checkpoint,
        entries_hidden,
    }))
}

/// The session's active worktree, which this API process must be able to reach.
async fn active_here(state: &AppState, project: &str, session: &str) -> Result<Worktree, ApiError> {
    let worktree = WorkspaceStore::active(state.db(), project, session)
        .await?
        .ok_or_else(|| no_worktree(project, session))?;
    reachable(&worktree)?;
    Ok(worktree)
}

fn reachable(worktree: &Worktree) -> Result<(), ApiError> {
    if Path::new(&worktree.repo).is_dir() && Path::new(&worktree.path).is_dir() {
        return Ok(());
    }
    Err(conflict(format!(
        "the worktree {} lives on host {} and this API process cannot reach {} from here: \
         call an API process on that host (or put the repositories on shared storage)",
        worktree.id, worktree.host, worktree.path
    )))
}

/// Refuses while a turn of the worktree's session runs: it may be writing the files.
async fn idle(state: &AppState, worktree: &Worktree) -> Result<(), ApiError> {
    use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QuerySelect};
    let running: Option<Uuid> = tasks::Entity::find()
        .select_only()
        .column(tasks::Column::Id)
        .filter(tasks::Column::Project.eq(worktree.project.as_str()))
        .filter(tasks::Column::SessionId.eq(worktree.session_id.as_str()))
        .filter(tasks::Column::State.eq(TaskState::Running))
        .into_tuple()
        .one(state.db())
        .await
        .map_err(Error::from)?;
    match running {
        Some(task) => Err(conflict(format!(
            "task {task} of the session is running in the worktree: wait for its turn to end"
        ))),
        None => Ok(()),
    }
}

/// The chosen changes of the worktree, each pending; all of them when `ids` is absent.
async fn chosen(
    state: &AppState,
    worktree: &Worktree,
    ids: Option<&[Uuid]>,
) -> Result<Vec<PendingChange>, ApiError> {
    let pending =
        WorkspaceStore::changes(state.db(), &worktree.project, &worktree.session_id, None).await?;
    let chosen: Vec<PendingChange> = match ids {
        None => pending
            .into_iter()
            .filter(|c| c.status == "pending" && c.worktree_id == Some(worktree.id))
            .collect(),
        Some([]) => {
            return Err(ApiError::bad_request(
                "ids is empty: name at least one change",
            ));
        }
        Some(ids) => {
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                let Some(change) = pending.iter().find(|c| c.id == *id) else {
                    return Err(ApiError::bad_request(format!(
                        "change {id} is not a change of session {}",
                        worktree.session_id
                    )));
                };
                if change.status != "pending" || change.worktree_id != Some(worktree.id) {
                    return Err(ApiError::bad_request(format!(
                        "change {id} to {} is {}, not pending in the active worktree",
                        change.path, change.status
                    )));
                }
                if !out.iter().any(|c: &PendingChange| c.id == *id) {
                    out.push(change.clone());
                }
            }
            out
        }
    };
    if chosen.is_empty() {
        return Err(ApiError::bad_request(format!(
            "session {} has no pending changes",
            worktree.session_id
        )));
    }
    Ok(chosen)
}

fn no_worktree(project: &str, session: &str) -> ApiError {
    ApiError::not_found(format!(
        "session {session} of project {project} has no active worktree"
    ))
}

fn conflict(message: impl Into<String>) -> ApiError {
    ApiError::new(axum::http::StatusCode::CONFLICT, "conflict", message)
}

fn git_error(e: WorkspaceError) -> ApiError {
    match e {
        WorkspaceError::PathRefused { .. } | WorkspaceError::InvalidName { .. } => {
            ApiError::bad_request(e.to_string())
        }
        WorkspaceError::Conflict { .. } => conflict(e.to_string()),
        WorkspaceError::OutsideRoots { .. } | WorkspaceError::NotARepository { .. } => {
            conflict(e.to_string())
        }
        other => {
            tracing::error!(error = %other, "a git operation failed");
            ApiError::new(
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                "git_failed",
                other.to_string(),
            )
        }
    }
}

//! A person's decisions on a session's workspace, each done once for both faces: the
//! JSON routes (`routes/workspaces.rs`) and the UI's actions (`ui/actions.rs`) call
//! these and differ only in how they read the request and show the result.
//!
//! - [`apply`]: the chosen pending changes → `git apply` onto the target branch (one
//!   commit, moved by compare-and-swap) → the repository's checkout follows when that
//!   branch is checked out → the changes are recorded `applied`.
//! - [`reject`]: recorded `rejected`; git is not touched.
//! - [`revert`]: each file goes back to the base commit in the worktree → `reverted`.
//! - [`restore`]: the worktree's files go back to a checkpoint, the transcript is
//!   rewound to it and the session's agent sessions are closed.
//!
//! Applying, reverting and restoring run `git` on the repository and the worktree, so
//! this API process must see them (the worker's host, or shared storage); anywhere else
//! they are refused with a 409 that names the worktree's host.

use std::path::Path;

use serde::Serialize;
use turnq_core::workspace::{
    self, Checkpoint, Decision, PendingChange, WorkspaceError, WorkspaceStore, Worktree,
};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::{ApiError, AppState};

/// What a decision did.
#[derive(Serialize, ToSchema)]
pub(crate) struct Decided {
    pub changes: Vec<PendingChange>,
    /// The commit an apply made on the target branch.
    pub commit_sha: Option<String>,
    /// The branch the changes were applied onto.
    pub branch: Option<String>,
    /// The target branch is checked out in the repository and its files were brought
    /// along (false: not checked out there, or see `warning`).
    pub checkout_updated: bool,
    /// Something the person should do (the checkout held local changes in the way).
    pub warning: Option<String>,
}

impl Decided {
    /// A decision that touched no branch.
    fn recorded(changes: Vec<PendingChange>) -> Decided {
        Decided {
            changes,
            commit_sha: None,
            branch: None,
            checkout_updated: false,
            warning: None,
        }
    }
}

/// What a restore did.
#[derive(Serialize, ToSchema)]
pub(crate) struct Restored {
    pub checkpoint: Checkpoint,
    /// Transcript entries written after the checkpoint, now hidden from `load`.
    pub entries_hidden: u64,
}

/// Commits the chosen pending changes of the session (`ids`; `None`: all of them) onto
/// its worktree's target branch with `message` (default: one naming the session and the
/// files), and records them applied by `by`. A diff that no longer applies is a 409
/// naming the file, and nothing changes.
pub(crate) async fn apply(
    state: &AppState,
    project: &str,
    session: &str,
    ids: Option<&[Uuid]>,
    message: Option<String>,
    by: Option<&str>,
) -> Result<Decided, ApiError> {
    let worktree = active_here(state, project, session).await?;
    // Held until recorded: a change decided or superseded meanwhile cannot end up in
    // the commit while the database says otherwise.
    let held = WorkspaceStore::hold(state.db(), &worktree, ids, false).await?;
    let chosen = held.changes();
    let files: Vec<_> = chosen.iter().map(PendingChange::file_change).collect();
    let message = message.unwrap_or_else(|| {
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
        .map_err(|e| match e {
            WorkspaceError::Git { .. } => conflict(format!(
                "the target branch {branch} is not in the repository {} any more: {e}",
                worktree.repo
            )),
            other => git_error(other),
        })?;
    let commit = workspace::apply(repo, branch, &files, &message)
        .await
        .map_err(git_error)?;
    let (checkout_updated, warning) =
        match workspace::sync_checkout(repo, branch, &before, &commit).await {
            Ok(updated) => (updated, None),
            Err(e) => (false, Some(e.to_string())),
        };
    let changes = held.record(Decision::Applied, by, Some(&commit)).await?;
    Ok(Decided {
        changes,
        commit_sha: Some(commit),
        branch: Some(branch.clone()),
        checkout_updated,
        warning,
    })
}

/// Records the chosen pending changes (`None`: all) rejected by `by`. Git is not
/// touched, so the worktree need not be reachable from here.
pub(crate) async fn reject(
    state: &AppState,
    project: &str,
    session: &str,
    ids: Option<&[Uuid]>,
    by: Option<&str>,
) -> Result<Decided, ApiError> {
    let worktree = WorkspaceStore::active(state.db(), project, session)
        .await?
        .ok_or_else(|| no_worktree(project, session))?;
    let held = WorkspaceStore::hold(state.db(), &worktree, ids, false).await?;
    let changes = held.record(Decision::Rejected, by, None).await?;
    Ok(Decided::recorded(changes))
}

/// Puts each chosen file (`None`: every pending one) back to its content at the
/// worktree's base commit, and records the changes reverted by `by`. Refused while a
/// turn of the session runs.
pub(crate) async fn revert(
    state: &AppState,
    project: &str,
    session: &str,
    ids: Option<&[Uuid]>,
    by: Option<&str>,
) -> Result<Decided, ApiError> {
    let worktree = active_here(state, project, session).await?;
    // No turn may start while the files change (its claim waits for the lock).
    let held = WorkspaceStore::hold(state.db(), &worktree, ids, true).await?;
    let path = Path::new(&worktree.path);
    for change in held.changes() {
        workspace::revert(path, &worktree.base_commit, &change.path)
            .await
            .map_err(git_error)?;
    }
    // Onto the session's branch, which carries the work to any host.
    workspace::commit_all(path, "turnq: reverted changes")
        .await
        .map_err(git_error)?;
    let changes = held.record(Decision::Reverted, by, None).await?;
    Ok(Decided::recorded(changes))
}

/// Puts checkpoint `id`'s session back as it was then (see the module docs). Refused
/// while a turn of the session runs, or when the checkpoint's worktree is archived.
pub(crate) async fn restore(
    state: &AppState,
    id: Uuid,
    by: Option<&str>,
) -> Result<Restored, ApiError> {
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
    // No turn may start while the files go back (its claim waits for the lock).
    let quiet = WorkspaceStore::hold_session(state.db(), &worktree).await?;
    let path = Path::new(&worktree.path);
    workspace::restore(path, &checkpoint.commit_sha)
        .await
        .map_err(git_error)?;
    workspace::commit_all(
        path,
        &format!("turnq: restored checkpoint {}", checkpoint.id),
    )
    .await
    .map_err(git_error)?;
    let entries_hidden = WorkspaceStore::record_restore(quiet, &checkpoint, by).await?;
    Ok(Restored {
        checkpoint,
        entries_hidden,
    })
}

/// The session's active worktree, which this API process must be able to reach.
pub(crate) async fn active_here(
    state: &AppState,
    project: &str,
    session: &str,
) -> Result<Worktree, ApiError> {
    let worktree = WorkspaceStore::active(state.db(), project, session)
        .await?
        .ok_or_else(|| no_worktree(project, session))?;
    reachable(&worktree)?;
    Ok(worktree)
}

/// Whether this API process can run git on the worktree and its repository.
pub(crate) fn reachable(worktree: &Worktree) -> Result<(), ApiError> {
    if Path::new(&worktree.repo).is_dir() && Path::new(&worktree.path).is_dir() {
        return Ok(());
    }
    Err(conflict(format!(
        "the worktree {} lives on host {} and this API process cannot reach {} from here: \
         call an API process on that host (or put the repositories on shared storage)",
        worktree.id, worktree.host, worktree.path
    )))
}

fn no_worktree(project: &str, session: &str) -> ApiError {
    ApiError::not_found(format!(
        "session {session} of project {project} has no active worktree"
    ))
}

fn conflict(message: impl Into<String>) -> ApiError {
    ApiError::from(turnq_core::Error::Conflict(message.into()))
}

/// A git operation's failure as the API answers it: what the request asked for is
/// refused (400), does not fit what is there (409), or git itself failed (500).
pub(crate) fn git_error(e: WorkspaceError) -> ApiError {
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

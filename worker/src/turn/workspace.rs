//! A turn's workspace: when its task names a project repository (`repo`), the turn runs
//! in its session's git worktree on this host.
//!
//! Before the turn: the repository must lie under one of `--repo-roots`; the session's
//! active worktree is used when it lives on this host (made again in place if its
//! directory is gone), re-created here from its branch when it lives on another host
//! (the old one is archived), or made (a new branch from the repository's HEAD) when
//! the session has none; then a checkpoint of its files is taken. After a turn that
//! returned a result: the worktree's files are committed onto the session's branch
//! (so the branch carries the work to any host), and its changes against the base
//! become pending changes. Recording them never fails the task: a failure is logged.

use std::path::{Path, PathBuf};

use sea_orm::DatabaseConnection;
use turnq_core::{
    error::chain as error_chain,
    task::Task,
    workspace::{
        self, RepoRoots, WorkspaceError, WorkspaceStore, Worktree, checkpoint, commit_all,
        create_worktree, current_branch,
    },
};
use uuid::Uuid;

use crate::backend::TurnError;

/// The workspaces of this worker's turns.
pub(crate) struct Workspaces {
    db: DatabaseConnection,
    roots: RepoRoots,
    dir: PathBuf,
    host: String,
}

/// The worktree a turn runs in.
pub(crate) struct Prepared {
    pub(crate) worktree: Worktree,
}

impl Workspaces {
    pub(crate) fn new(
        db: DatabaseConnection,
        roots: Vec<PathBuf>,
        dir: PathBuf,
        host: String,
    ) -> Self {
        Workspaces {
            db,
            roots: RepoRoots::new(roots),
            dir,
            host,
        }
    }

    /// The worktree `task`'s turn runs in, checkpointed; `None` for a task without a
    /// repository. A repository this worker may not use, or one that is not a git
    /// repository, fails the task; git or Postgres failing retries it.
    pub(crate) async fn prepare(&self, task: &Task) -> Result<Option<Prepared>, TurnError> {
        let Some(repo) = &task.repo else {
            return Ok(None);
        };
        let Some(session) = &task.session_id else {
            return Err(TurnError::fatal(
                "a task with a repo needs a session_id: its worktree belongs to the session",
            ));
        };
        let repo_path = self.roots.check(repo).await.map_err(classify)?;
        let active = WorkspaceStore::active(&self.db, &task.project, session)
            .await
            .map_err(|e| {
                TurnError::retryable(format!(
                    "reading the session's worktree: {}",
                    error_chain(&e)
                ))
            })?;
        if let Some(worktree) = &active
            && Path::new(&worktree.repo) != repo_path
        {
            return Err(TurnError::fatal(format!(
                "session {session}'s worktree is of the repository {}, not {}: a session \
                 works in one repository (use another session_id)",
                worktree.repo,
                repo_path.display()
            )));
        }
        let worktree = match active {
            Some(worktree) if worktree.host == self.host => {
                if !Path::new(&worktree.path).exists() {
                    create_worktree(
                        &repo_path,
                        Path::new(&worktree.path),
                        &worktree.branch,
                        Some(&worktree.base_commit),
                    )
                    .await
                    .map_err(classify)?;
                }
                worktree
            }
            Some(elsewhere) => {
                // The work is on the session's branch; a repository here without it
                // (a clone the branch was never pushed to) would start the session
                // over from its base and lose that work.
                if let Err(e) = workspace::branch_tip(&repo_path, &elsewhere.branch).await {
                    return Err(TurnError::retryable(format!(
                        "the session's worktree lives on host {}, which is gone, and the \
                         repository here lacks its branch {} to re-create it from ({e}): \
                         share the repository between hosts or push the branch",
                        elsewhere.host, elsewhere.branch
                    )));
                }
                // Its work is on its branch (every turn commits there). Where the old
                // worktree is visible from here too (one machine, shared storage), it
                // holds the branch checked out: remove it first, or git refuses to
                // check the branch out again. No turn of the session runs meanwhile.
                if Path::new(&elsewhere.path).exists() {
                    workspace::remove_worktree(&repo_path, Path::new(&elsewhere.path))
                        .await
                        .map_err(classify)?;
                }
                let path = self.dir.join(Uuid::new_v4().to_string());
                let info = create_worktree(
                    &repo_path,
                    &path,
                    &elsewhere.branch,
                    Some(&elsewhere.base_commit),
                )
                .await
                .map_err(classify)?;
                tracing::info!(task_id = %task.id, session_id = %session, from_host = %elsewhere.host,
                    path = %info.path.display(), "re-created the session's worktree on this host from its branch");
                self.record(
                    task,
                    session,
                    &repo_path,
                    &info,
                    &elsewhere.target_branch,
                    Some(&elsewhere),
                )
                .await?
            }
            None => {
                // Changes land on the branch the repository has checked out.
                let Some(target) = current_branch(&repo_path).await.map_err(classify)? else {
                    return Err(TurnError::fatal(format!(
                        "the repository {} has no branch checked out (a detached HEAD): \
                         check out the branch the session's changes should land on",
                        repo_path.display()
                    )));
                };
                let id = Uuid::new_v4();
                let branch = format!("turnq/{}-{}", slug(session), &id.simple().to_string()[..8]);
                let info =
                    create_worktree(&repo_path, &self.dir.join(id.to_string()), &branch, None)
                        .await
                        .map_err(classify)?;
                tracing::info!(task_id = %task.id, session_id = %session, branch = %branch,
                    path = %info.path.display(), "made the session's worktree");
                self.record(task, session, &repo_path, &info, &target, None)
                    .await?
            }
        };
        let name = format!("{}-{}", task.id.0.simple(), task.attempt);
        let sha = checkpoint(Path::new(&worktree.path), &name)
            .await
            .map_err(classify)?;
        WorkspaceStore::record_checkpoint(&self.db, &worktree, task, &sha)
            .await
            .map_err(|e| {
                TurnError::retryable(format!("recording the checkpoint: {}", error_chain(&e)))
            })?;
        Ok(Some(Prepared { worktree }))
    }

    async fn record(
        &self,
        task: &Task,
        session: &str,
        repo: &Path,
        info: &workspace::WorktreeInfo,
        target: &str,
        replaces: Option<&Worktree>,
    ) -> Result<Worktree, TurnError> {
        WorkspaceStore::record_created(
            &self.db,
            &task.project,
            session,
            &repo.display().to_string(),
            info,
            target,
            &self.host,
            replaces,
        )
        .await
        .map_err(|e| TurnError::retryable(format!("recording the worktree: {}", error_chain(&e))))
    }

    /// After a turn that returned a result: commits the worktree onto its branch and
    /// records its changes. Logged, never fatal.
    pub(crate) async fn finish(&self, prepared: &Prepared, task: &Task) {
        let worktree = &prepared.worktree;
        let path = Path::new(&worktree.path);
        let message = format!(
            "turnq: attempt {} of task {} ({})",
            task.attempt, task.id, task.agent
        );
        let outcome = async {
            commit_all(path, &message).await?;
            workspace::changes(path, &worktree.base_commit).await
        }
        .await;
        match outcome {
            Ok(changes) => {
                match WorkspaceStore::record_changes(&self.db, worktree, task, &changes).await {
                    Ok(proposed) if !proposed.is_empty() || !changes.refused.is_empty() => {
                        tracing::info!(task_id = %task.id, proposed = proposed.len(),
                            refused = changes.refused.len(), "recorded the turn's changes")
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(task_id = %task.id, error = %error_chain(&e),
                        "could not record the turn's changes; the next turn records them"),
                }
            }
            Err(e) => tracing::warn!(task_id = %task.id, path = %worktree.path, error = %e,
                "could not read the turn's changes from its worktree"),
        }
    }
}

/// A failure the task's own settings cause is fatal; git or the disk failing may pass.
fn classify(e: WorkspaceError) -> TurnError {
    match e {
        WorkspaceError::PathRefused { .. }
        | WorkspaceError::OutsideRoots { .. }
        | WorkspaceError::NotARepository { .. }
        | WorkspaceError::InvalidName { .. } => TurnError::fatal(e.to_string()),
        _ => TurnError::retryable(format!("preparing the worktree: {e}")),
    }
}

/// A branch-name-safe form of a session id: letters, digits, `-` and `_`, at most 40.
fn slug(session: &str) -> String {
    let slug: String = session
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .take(40)
        .collect();
    let slug = slug.trim_matches('-');
    if slug.is_empty() {
        "session".into()
    } else {
        slug.to_owned()
    }
}

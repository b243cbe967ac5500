//! The git operations behind agent workspaces: a worktree per session, checkpoints of
//! its files, and its pending changes (listed per file, applied onto a branch, reverted
//! one by one).
//!
//! # Layout
//!
//! - `roots.rs`: the allow-list of directories repositories may live under
//!   ([`RepoRoots::check`]).
//! - `guard.rs`: whether a path a change names may be touched inside a worktree
//!   ([`guard()`]).
//! - `worktree.rs`: [`create_worktree`], [`remove_worktree`].
//! - `checkpoint.rs`: [`checkpoint()`] and [`restore`], through a temporary index.
//! - `changes.rs`: [`changes()`], [`apply`], [`revert`].
//! - `git.rs`: running the `git` CLI.
//! - `store.rs`: [`WorkspaceStore`], the records: worktrees, checkpoints, pending
//!   changes and transcript rewinds, each step an event.
//!
//! # Rules
//!
//! - Everything runs the `git` CLI (`tokio::process`), with a fixed identity
//!   (`turnq <turnq@localhost>`), no system config, no hooks and no prompts, so nothing
//!   depends on the host's git setup; a failure names the command and git's stderr.
//! - The agent's own index, HEAD and branch are never moved by a checkpoint or a
//!   listing of changes: those work on a temporary index (`GIT_INDEX_FILE`).
//! - A branch is only ever moved by a compare-and-swap (`git update-ref new old`).
//! - The git operations know no HTTP, no Redis and no database; `store.rs` records what
//!   they did (rows and events on the worktree's stream).

mod changes;
mod checkpoint;
mod git;
mod guard;
mod roots;
mod store;
mod worktree;

pub use changes::{
    Changes, FileChange, Operation, apply, branch_tip, changes, current_branch, revert,
    sync_checkout,
};
pub use checkpoint::{checkpoint, commit_all, restore};
pub use guard::{guard, secret};
pub use roots::RepoRoots;
pub use store::{Checkpoint, Decision, PendingChange, WorkspaceStore, Worktree};
pub use worktree::{WorktreeInfo, create_worktree, remove_worktree};

/// What went wrong in a workspace operation; each message says what and, where it can,
/// what to do.
#[derive(Debug, thiserror::Error)]
pub enum WorkspaceError {
    /// A path a change names breaks a rule of the [`guard()`]; `why` names the rule.
    #[error("refused the path {path:?}: {why}")]
    PathRefused { path: String, why: String },

    /// A repository lies outside every allowed root.
    #[error(
        "the repository {path} is outside the allowed repository roots ({roots}): name a \
         repository under one of them, or add its directory to the roots"
    )]
    OutsideRoots { path: String, roots: String },

    /// A directory that is not the top level of a git repository with a work tree.
    #[error("{path} is not a git repository turnq can work in: {detail}")]
    NotARepository { path: String, detail: String },

    /// A git command failed; `stderr` is what git said.
    #[error("`{command}` failed: {stderr}")]
    Git { command: String, stderr: String },

    /// A change does not apply, or the branch moved meanwhile: nothing was changed.
    #[error("conflict at {path}: {detail}")]
    Conflict { path: String, detail: String },

    /// A branch, commit or checkpoint name git cannot take.
    #[error("invalid name {name:?}: {why}")]
    InvalidName { name: String, why: String },

    /// A file system operation failed; the text says which, the source why.
    #[error("{0}")]
    Io(String, #[source] std::io::Error),
}

#[cfg(test)]
mod testing;

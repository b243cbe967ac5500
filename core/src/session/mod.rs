//! The session store: the transcripts of agent sessions, so a session can resume on any
//! worker host (or any Claude Agent SDK process) by replaying its transcript.
//!
//! A transcript is a list of opaque JSON objects ("entries") under a [`SessionKey`]:
//! project key, session id and an optional subpath (none = the session's main transcript;
//! subagents write beside it, e.g. `subagents/agent-<id>`). The contract is the Claude
//! Agent SDK's `SessionStore` (TypeScript and Python), so that an SDK process can use
//! turnq as its store over HTTP:
//!
//! - `append` keeps append-call order; an entry whose string `uuid` the transcript already
//!   holds is skipped (the SDK retries failed batches), also within one batch; entries
//!   without one are always appended; an empty batch changes nothing.
//! - `load` returns the entries deep-equal and in order, or `None` for a key never written.
//! - `list_sessions` and `list_session_summaries` cover sessions with a main transcript,
//!   with `mtime` in Unix epoch milliseconds, the time of the last write to it.
//! - `list_subkeys` lists a session's subpaths, never the main transcript.
//! - `delete` of a main key removes the subpaths and the summary too; of a subpath key,
//!   only that transcript; of an unknown key, nothing, without error.
//!
//! Invariants, held by the database: entries are never updated (a trigger refuses
//! UPDATE) and leave only through `delete`; a string `uuid` occurs at most once per
//! transcript (a unique partial index); the summary of a session is written in the same
//! transaction as the entries it summarises.
//!
//! Depends on the database layer only; knows no HTTP (the API maps its errors).

mod entries;
mod key;
mod store;
pub mod summary;

use std::{future::Future, pin::Pin};

use serde::Serialize;
use serde_json::Value;

pub use entries::{Entries, MAX_BATCH_ENTRIES, MAX_UUID_BYTES};
pub use key::{
    MAX_ID_BYTES, MAX_ID_CHARS, MAX_SUBPATH_BYTES, MAX_SUBPATH_CHARS, ProjectKey, SessionId,
    SessionKey, Subpath,
};
pub use store::PgSessionStore;

use crate::error::Result;

/// A boxed future, so that [`SessionStore`] stays dyn-compatible (`Arc<dyn SessionStore>`
/// is what a worker hands its agent backends).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What an `append` did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Appended {
    /// Entries stored.
    pub appended: usize,
    /// Entries skipped because their `uuid` was already stored (or came earlier in the
    /// same batch).
    pub duplicates: usize,
}

/// A session of a project, as `list_sessions` returns it.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SessionListing {
    pub session_id: String,
    /// The last write to the session's main transcript, in Unix epoch milliseconds.
    pub mtime: i64,
}

/// A session's summary, as `list_session_summaries` returns it: see `summary` (and
/// docs/sessions.md) for the fields of `data`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SessionSummary {
    pub session_id: String,
    /// The same value `list_sessions` reports for the session.
    pub mtime: i64,
    pub data: Value,
}

/// Where transcripts live. Implementations must keep the contract in the module
/// documentation; [`PgSessionStore`] is the one turnq runs on.
pub trait SessionStore: Send + Sync {
    /// Appends `entries` to the transcript `key`, skipping those already stored.
    fn append<'a>(
        &'a self,
        key: &'a SessionKey,
        entries: Entries,
    ) -> BoxFuture<'a, Result<Appended>>;

    /// The transcript's entries in append order; `None` when nothing was ever appended
    /// to `key` (or all of it was deleted).
    fn load<'a>(&'a self, key: &'a SessionKey) -> BoxFuture<'a, Result<Option<Vec<Value>>>>;

    /// The sessions of `project` that have a main transcript, newest first.
    fn list_sessions<'a>(
        &'a self,
        project: &'a ProjectKey,
    ) -> BoxFuture<'a, Result<Vec<SessionListing>>>;

    /// The summaries of the sessions `list_sessions` returns, newest first.
    fn list_session_summaries<'a>(
        &'a self,
        project: &'a ProjectKey,
    ) -> BoxFuture<'a, Result<Vec<SessionSummary>>>;

    /// The subpaths of a session that hold entries, in order; never the main transcript.
    fn list_subkeys<'a>(
        &'a self,
        project: &'a ProjectKey,
        session: &'a SessionId,
    ) -> BoxFuture<'a, Result<Vec<Subpath>>>;

    /// Deletes the transcript `key`; for a main key, also every subpath of the session
    /// and its summary. Deleting what does not exist is not an error.
    fn delete<'a>(&'a self, key: &'a SessionKey) -> BoxFuture<'a, Result<()>>;
}

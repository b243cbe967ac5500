//! turnq-core: the domain of turnq.
//!
//! # Layout
//!
//! - [`task`]: the task state machine ([`task::TaskState`], one transition function),
//!   the validated input of a submission ([`task::NewTask`]) and the task store: every
//!   write to a task is a conditional update of the `tasks` projection plus an append to
//!   the event log, in one transaction.
//! - [`event`]: the event kinds (a public, versioned JSON contract) and the event store
//!   (append with an expected version, read a stream, read the global log).
//! - [`projection`]: rebuilding the projections from the log (`turnq replay`) and
//!   reporting drift (`--verify`).
//! - [`session`]: the session store: agent transcripts as append-only JSON entries per
//!   (project key, session id, subpath), the contract of the Claude Agent SDK's
//!   `SessionStore`, with a per-session summary kept in the same transaction.
//! - [`agent`]: the agent registry (which agent CLIs exist, their backend, config and
//!   what probing found) and agent sessions (per session and agent: the backend's own
//!   session id and the running usage).
//! - [`queue`]: queues as objects: what each holds, pausing one.
//! - [`arena`]: one task given to several agents at once (a contestant task each),
//!   compared side by side, and the winner a person picks.
//! - [`stats`]: usage (tasks, tokens, cost) grouped by project, agent or day.
//! - [`worker`]: the worker registry.
//! - [`auth`]: API tokens with scopes, stored hashed.
//! - [`delivery`]: the job the dispatcher pushes to Redis and the names of its keys.
//! - [`db`]: connecting to Postgres, creating the database when it is missing.
//! - [`workspace`]: the git operations behind agent workspaces: a worktree per session,
//!   checkpoints of its files, its pending changes (listed per file, applied onto a
//!   branch, reverted), the path guard and the allow-list of repository roots. It runs
//!   the `git` CLI.
//! - [`storable`]: what Postgres can store (no NUL in text or jsonb, index keys within a
//!   btree row, counted in bytes), checked by every validation before a write.
//! - [`entity`]: sea-orm entities. They stay inside this crate: stores return domain
//!   types, so a column rename never leaks into the JSON contract.
//!
//! This crate knows no HTTP and no Redis: the API, the dispatcher and the workers
//! build on it; it builds on nothing of theirs.

pub mod agent;
pub mod arena;
pub mod auth;
pub mod db;
pub mod delivery;
pub mod entity;
pub mod error;
pub mod event;
pub mod fault;
pub mod ids;
pub mod listen;
pub mod metrics;
pub mod projection;
pub mod queue;
pub mod retry;
pub mod session;
pub mod stats;
pub mod storable;
pub mod supervise;
pub mod task;
pub mod time;
pub mod worker;
pub mod workspace;

pub use error::Error;
pub use ids::{ArenaId, LogPosition, StreamVersion, TaskId, WorkerId};

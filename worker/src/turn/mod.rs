//! One turn: claim the task in Postgres, run its backend, stream its output in batches,
//! record how it ended.
//!
//! Invariants:
//! - Nothing runs without a claim: the job from Redis only says "try task X at attempt
//!   N"; the conditional claim in Postgres decides, so stale and duplicate deliveries
//!   do nothing.
//! - Every write names the attempt and this worker (`TaskStore::record`). The first
//!   one refused (`Fenced`: the task was cancelled or its lease taken over) cancels the
//!   turn and nothing more is written for it.
//! - Exactly one place maps a turn's result to its last event (`outcome::ending_event`); the
//!   class of a failure, never its message, picks it. A turn stopped by its owner
//!   writes nothing; one stopped by a timeout is retried; one stopped by shutdown is
//!   handed back (`task.released`).
//! - After every turn of a task in a session that ended in a result (completed,
//!   blocked, retryable or fatal failure; not a cancelled or stopped one), the agent
//!   session of (session, agent) records the turn's usage, the agent's config hash,
//!   the backend session id (the last `session` output chunk) and the status (`idle`
//!   after a result, `crashed` after a failure), before the task's last event is
//!   written: the session's next turn may start as soon as that event commits, and it
//!   resumes the backend session recorded here. Failing to record it is logged and
//!   never fails the task.
//! - The backend runs on a task of its own: a panic in it fails the attempt
//!   (retryably) instead of taking the worker down, and a backend that ignores its
//!   cancellation token is aborted after [`CANCEL_GRACE`].
//!
//! # Layout
//!
//! - `runner`: one job: claim its tasks (grouped with other jobs' claims), then run
//!   each claimed task's turn holding one slot of the process' concurrency.
//! - `drive`: one turn: the backend on a task of its own, its deadline and
//!   cancellation, its output, and the writes of its end.
//! - `outcome`: the one mapping of a turn's result to its last event.
//! - `output`: the batching of streamed output into `task.output` events.
//! - `write`: where a turn's events go, and how its last writes wait out an outage.
//! - `control`: the registry of running turns and why each was stopped.
//! - `heartbeat`: lease renewal of every running turn, and stopping the lost ones.
//! - `cancel`: cancellations pushed from Postgres, stopping a turn within a second.
//! - `workspace`: the git worktree of a task with a repository: made or re-created
//!   and checkpointed before its turn, committed and turned into pending changes after.

pub(crate) mod cancel;
pub(crate) mod control;
pub(crate) mod drive;
pub(crate) mod heartbeat;
pub(crate) mod outcome;
pub(crate) mod output;
pub(crate) mod runner;
pub(crate) mod workspace;
pub(crate) mod write;

pub(crate) use control::StopReason;
pub(crate) use drive::CANCEL_GRACE;
pub(crate) use runner::Runner;

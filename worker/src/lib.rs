//! turnq-worker: the worker process. It takes jobs for its queues from Redis, claims
//! each task in Postgres, runs the agent turn through a backend, and records how it
//! ended. Postgres is the one source of truth; Redis only delivers.
//!
//! # Layout
//!
//! Each folder is one concern; a change goes where its name says:
//!
//! - [`Worker`] (`lifecycle/`): the one seam. `Worker::build` validates the settings and
//!   builds (and probes) the agents; `Worker::run` registers the worker, starts every
//!   long-lived task through the process' [`Supervisor`](turnq_core::supervise), consumes
//!   until shutdown, lets running turns finish within the grace period, hands back the
//!   rest and marks the worker stopped.
//! - [`WorkerConfig`] (`config`): every setting, a flag and an env var.
//! - `delivery/`: Redis delivery with apalis-redis: one supervised consumer per
//!   (queue, agent) pair, the process-wide limit on running turns, the dispatcher's
//!   wake-ups, and the clean-up of acknowledged jobs.
//! - `turn/`: running a turn: the runner (claim, then one turn per claimed task), the
//!   drive of one turn (backend, deadline, cancellation, output), the one mapping of
//!   its result to its last event, and what acts on running turns from outside: the
//!   heartbeat that renews their leases and the cancellations pushed from Postgres.
//! - `record/`: this process' side of Postgres: the group commit of claims and writes,
//!   and whether Postgres answers (an outage pauses the consumers).
//! - [`backend`]: the agent-backend trait, the worker's agents ([`Backends`], by agent
//!   name), the backends `script`, `command` and `openai`, and which agents of the
//!   registry this worker runs (`backend::discover`).
//!
//! Dependencies between the folders go one way: `lifecycle` → `delivery`, `turn`,
//! `record`, `backend`; `turn` → `record`, `backend`; `delivery` knows none of them
//! (the runner is handed to it as a `JobHandler` closure).
//!
//! Invariants: a job never runs a turn without a successful claim; a handler always
//! acknowledges its job (Postgres holds every outcome, apalis never retries), and a job
//! it could not claim because Postgres was unreachable goes back onto its queue first;
//! a turn outlives the Redis consumer that delivered it. The worker writes through
//! `turnq-core`'s stores only, never an entity directly. Depends on `turnq-core`, never
//! on `turnq-api`.

pub mod backend;
mod config;
mod delivery;
mod lifecycle;
mod record;
mod turn;

pub use backend::Backends;
pub use config::WorkerConfig;
pub use lifecycle::{Worker, WorkerError};

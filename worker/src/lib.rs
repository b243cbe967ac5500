//! turnq-worker: the worker process. It takes jobs for its queues from Redis, claims
//! each task in Postgres, runs the agent turn through a backend, and records how it
//! ended. Postgres is the one source of truth; Redis only delivers.
//!
//! # Layout
//!
//! - [`run`] (and [`run_with_backends`]): the one seam. Registers the worker, consumes
//!   its queues until `shutdown`, lets running turns finish within the grace period,
//!   hands back the rest, marks the worker stopped.
//! - [`WorkerConfig`] (`config`): every setting, a flag and an env var.
//! - `queue`: apalis-redis consumption: one supervised consumer per queue (rebuilt
//!   after any Redis failure, under a new name), the process-wide limit on running
//!   turns, and the cleanup of acknowledged jobs.
//! - `runner`: one turn: claim, run the backend, batch its output into events, map the
//!   result to the last event. Every write is fenced by attempt and worker.
//! - `lease`: the heartbeat: registry row, lease renewal of running turns, and stopping
//!   the turns whose task is no longer ours.
//! - [`backend`]: the agent-backend trait, the registry of backends, and `script`.
//!
//! Invariants: a job never runs a turn without a successful claim; a handler always
//! acknowledges its job (Postgres holds every outcome, apalis never retries); a turn
//! outlives the Redis consumer that delivered it. Depends on `turnq-core`, never on
//! `turnq-api`.

pub mod backend;
mod config;
mod lease;
mod queue;
mod runner;

use std::{sync::Arc, time::Duration};

use futures::FutureExt;
use sea_orm::DatabaseConnection;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use turnq_core::{
    WorkerId,
    delivery::{Job, RedisNames},
    worker::{WorkerInfo, WorkerRegistry},
};

pub use backend::Backends;
pub use config::WorkerConfig;

use crate::{
    queue::{Consumers, JobHandler, QueueSettings},
    runner::{CANCEL_GRACE, Runner, StopReason, error_chain},
};

/// Why a worker could not run. Outages after start are not errors: the worker waits
/// them out.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The settings cannot work; the message says which and why.
    #[error("invalid worker settings: {0}")]
    Config(String),

    /// The worker could not add itself to the worker registry in Postgres.
    #[error("worker {worker} could not register in the worker registry")]
    Register {
        worker: WorkerId,
        #[source]
        source: turnq_core::Error,
    },
}

/// Runs a worker with the built-in backends until `shutdown` is cancelled. See
/// [`run_with_backends`].
pub async fn run(
    db: DatabaseConnection,
    redis_url: String,
    names: RedisNames,
    config: WorkerConfig,
    shutdown: CancellationToken,
) -> Result<(), WorkerError> {
    run_with_backends(db, redis_url, names, config, Backends::builtin(), shutdown).await
}

/// Runs a worker with `backends` until `shutdown` is cancelled.
///
/// It registers in the worker registry (so Postgres must answer at start) and then
/// survives outages: an unreachable Redis is logged with its URL and retried, an
/// unreachable Postgres leaves tasks queued for later delivery. On shutdown it takes
/// no new jobs, lets running turns finish for `--shutdown-grace`, stops and hands back
/// (`task.released`) the ones still running, marks itself stopped and returns.
pub async fn run_with_backends(
    db: DatabaseConnection,
    redis_url: String,
    names: RedisNames,
    config: WorkerConfig,
    backends: Backends,
    shutdown: CancellationToken,
) -> Result<(), WorkerError> {
    let queues = config.validate().map_err(WorkerError::Config)?;
    let host = config.host_name();
    let worker = WorkerId::generate(&host);
    let info = WorkerInfo {
        id: worker.clone(),
        host,
        pid: i32::try_from(std::process::id()).unwrap_or(i32::MAX),
        queues: queues.clone(),
        concurrency: i32::try_from(config.concurrency).unwrap_or(i32::MAX),
        version: env!("CARGO_PKG_VERSION").into(),
    };
    WorkerRegistry::register(&db, &info)
        .await
        .map_err(|source| WorkerError::Register {
            worker: worker.clone(),
            source,
        })?;
    tracing::info!(worker_id = %worker, queues = ?queues, concurrency = config.concurrency,
        backends = ?backends, "worker registered; taking jobs");

    let runner = Arc::new(Runner::new(db.clone(), worker.clone(), &config, backends));
    // The heartbeat outlives `shutdown`: turns finishing in the grace period still need
    // their leases renewed.
    let beating = CancellationToken::new();
    let heartbeat = tokio::spawn(lease::heartbeat(
        db.clone(),
        worker.clone(),
        runner.turns().clone(),
        config.heartbeat,
        config.lease,
        beating.clone(),
    ));
    let handler: JobHandler = {
        let runner = runner.clone();
        Arc::new(move |job: Job| {
            let runner = runner.clone();
            async move { runner.run_job(job).await }.boxed()
        })
    };
    let consumers = Consumers::start(
        QueueSettings {
            redis_url,
            names,
            queues,
            concurrency: config.concurrency,
            poll_interval: config.poll_interval,
            worker_id: worker.clone(),
        },
        handler,
        shutdown.clone(),
    );

    shutdown.cancelled().await;
    tracing::info!(worker_id = %worker, running = consumers.running(),
        grace = %humantime::format_duration(config.shutdown_grace),
        "worker stopping: taking no new jobs, letting running turns finish");
    if timeout(config.shutdown_grace, consumers.finished())
        .await
        .is_err()
    {
        let stopped = runner.turns().stop_all(StopReason::Shutdown);
        tracing::warn!(worker_id = %worker, stopped,
            "shutdown grace is over: stopping the turns still running and handing their tasks back");
        // Long enough for a backend to notice, or be aborted, and for the hand-back to
        // be written.
        let patience = CANCEL_GRACE + Duration::from_secs(10);
        if timeout(patience, consumers.finished()).await.is_err() {
            tracing::warn!(worker_id = %worker, running = consumers.running(),
                "some turns did not stop; their leases will run out and their tasks run again");
        }
    }
    consumers.join().await;
    beating.cancel();
    let _ = heartbeat.await;
    if let Err(e) = WorkerRegistry::stopped(&db, &worker).await {
        tracing::warn!(worker_id = %worker, error = %error_chain(&e),
            "could not mark the worker stopped; the registry shows it dead once its heartbeat ages");
    }
    tracing::info!(worker_id = %worker, "worker stopped");
    Ok(())
}

//! The life of a worker process: build (settings, agents), run (register, start the
//! long-lived tasks, consume), drain (let running turns finish, hand back the rest),
//! stop (leave the registry).

mod reload;
#[cfg(test)]
mod tests;

use std::{sync::Arc, time::Duration};

use futures::FutureExt;
use sea_orm::{DatabaseConnection, sqlx::PgPool};
use tokio::{sync::Notify, time::timeout};
use tokio_util::sync::CancellationToken;
use turnq_core::{
    WorkerId,
    delivery::{Job, RedisNames},
    error::chain as error_chain,
    supervise::Supervisor,
    worker::{WorkerInfo, WorkerRegistry},
};

use crate::{
    backend::{Backends, discover},
    config::WorkerConfig,
    delivery::{Consumers, Delivery, JobHandler, QueueSettings},
    record::{self, PostgresHealth},
    turn::{CANCEL_GRACE, Runner, StopReason, cancel, heartbeat::Heartbeat},
};

/// Why a worker could not run. Outages after start are not errors: the worker waits
/// them out.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The settings cannot work; the message says which and why.
    #[error("invalid worker settings: {0}")]
    Config(String),

    /// The worker could not read the agent registry to learn which agents to run.
    #[error("the worker could not read the agent registry")]
    Agents {
        #[source]
        source: turnq_core::Error,
    },

    /// The worker could not add itself to the worker registry in Postgres.
    #[error("worker {worker} could not register in the worker registry")]
    Register {
        worker: WorkerId,
        #[source]
        source: turnq_core::Error,
    },
}

/// A worker, built and ready to run.
pub struct Worker {
    db: DatabaseConnection,
    pool: PgPool,
    redis_url: String,
    names: RedisNames,
    config: WorkerConfig,
    queues: Vec<String>,
    backends: Backends,
    /// Built from the agent registry ([`Worker::build`]): it follows the registry's
    /// changes while it runs. A worker given its backends does not.
    follow_registry: bool,
}

impl Worker {
    /// A worker with the agents of the agent registry it can run (and the built-in
    /// `script`), narrowed by `--agents`: each is probed now and only the ones that pass
    /// have their work taken (see `docs/agents.md`). While it runs, it follows the
    /// registry's changes (`reload`).
    pub async fn build(
        db: DatabaseConnection,
        redis_url: String,
        names: RedisNames,
        config: WorkerConfig,
    ) -> Result<Worker, WorkerError> {
        let only = config.agent_filter().map_err(WorkerError::Config)?;
        let backends = discover::discover(&db, &only)
            .await
            .map_err(|source| WorkerError::Agents { source })?;
        let mut worker = Self::with_backends(db, redis_url, names, config, backends)?;
        worker.follow_registry = true;
        Ok(worker)
    }

    /// A worker running the agents of `backends` (narrowed by `--agents`; not probed).
    /// It consumes one Redis queue per (queue, agent) pair of its `--queues` and those
    /// agents. `db` must be a Postgres pool: one of its connections LISTENs for
    /// cancellations.
    pub fn with_backends(
        db: DatabaseConnection,
        redis_url: String,
        names: RedisNames,
        config: WorkerConfig,
        mut backends: Backends,
    ) -> Result<Worker, WorkerError> {
        let queues = config.validate().map_err(WorkerError::Config)?;
        let only = config.agent_filter().map_err(WorkerError::Config)?;
        let available: Vec<String> = backends.names().map(str::to_owned).collect();
        if !only.is_empty() {
            backends.retain(|name| only.iter().any(|a| a == name));
        }
        if backends.is_empty() {
            let here = if available.is_empty() {
                String::new()
            } else {
                format!("; this worker could run: {}", available.join(", "))
            };
            return Err(WorkerError::Config(if only.is_empty() {
                "no agent to run: the registry names none this worker can run, and the \
                 built-in `script` was not given"
                    .into()
            } else {
                // Each named agent is either unknown (not registered, not built in) or
                // failed its probe at start, which a warning above says.
                format!(
                    "no agent to run: none of --agents ({}) can run here: each is unknown to \
                     the registry or failed its probe, as the warnings above say{here}",
                    only.join(", ")
                )
            }));
        }
        let pool = turnq_core::listen::postgres_pool(&db).ok_or_else(|| {
            WorkerError::Config(
                "the worker needs a Postgres connection pool (it LISTENs for cancellations)".into(),
            )
        })?;
        Ok(Worker {
            db,
            pool,
            redis_url,
            names,
            config,
            queues,
            backends,
            follow_registry: false,
        })
    }

    /// Runs the worker until `shutdown` is cancelled, its long-lived tasks spawned
    /// through `tasks`.
    ///
    /// It registers in the worker registry (so Postgres must answer at start) and then
    /// survives outages: an unreachable Redis is logged with its URL and retried; while
    /// Postgres is unreachable it takes no jobs (the ones in hand go back to their
    /// queues) and running turns go on. On shutdown it takes no new jobs, lets running
    /// turns finish for `--shutdown-grace`, stops and hands back (`task.released`) the
    /// ones still running, marks itself stopped and returns.
    pub async fn run(
        self,
        tasks: &Supervisor,
        shutdown: CancellationToken,
    ) -> Result<(), WorkerError> {
        let Worker {
            db,
            pool,
            redis_url,
            names,
            config,
            queues,
            backends,
            follow_registry,
        } = self;
        let host = config.host_name();
        let deliveries = Delivery::pairs(&queues, &backends.names().collect::<Vec<_>>(), &host);
        let worker = WorkerId::generate(&host);
        let info = WorkerInfo {
            id: worker.clone(),
            host,
            pid: i32::try_from(std::process::id()).unwrap_or(i32::MAX),
            queues: queues.clone(),
            concurrency: i32::try_from(config.concurrency).unwrap_or(i32::MAX),
            version: env!("CARGO_PKG_VERSION").into(),
            agents: backends.worker_agents(),
        };
        WorkerRegistry::register(&db, &info)
            .await
            .map_err(|source| WorkerError::Register {
                worker: worker.clone(),
                source,
            })?;
        tracing::info!(worker_id = %worker, queues = ?queues, concurrency = config.concurrency,
            agents = ?backends, "worker registered; taking jobs");

        let health = Arc::new(PostgresHealth::default());
        let runner = Arc::new(Runner::new(
            db.clone(),
            worker.clone(),
            &config,
            backends,
            health.clone(),
            tasks,
        ));
        // The heartbeat, the cancellation listener and the Postgres probe outlive
        // `shutdown`: turns finishing in the grace period still need their leases renewed
        // and can still be cancelled.
        let beating = CancellationToken::new();
        let renew_now = Arc::new(Notify::new());
        let heartbeat = tasks.spawn(
            "worker.heartbeat",
            Heartbeat {
                db: db.clone(),
                worker: worker.clone(),
                turns: runner.turns().clone(),
                every: config.heartbeat,
                lease: config.lease,
                health: health.clone(),
                renew_now: renew_now.clone(),
            }
            .run(beating.clone()),
        );
        let listener = tasks.spawn(
            "worker.cancel-listener",
            cancel::listen(
                pool.clone(),
                runner.turns().clone(),
                renew_now,
                beating.clone(),
            ),
        );
        let probe = tasks.spawn(
            "worker.postgres-probe",
            record::watch(health.clone(), record::ping(db.clone()), beating.clone()),
        );
        let handler: JobHandler = {
            let runner = runner.clone();
            Arc::new(move |job: Job, slots| {
                let runner = runner.clone();
                async move { runner.run_job(job, slots).await }.boxed()
            })
        };
        let consumers = Consumers::start(
            QueueSettings {
                redis_url,
                names,
                queues: deliveries,
                concurrency: config.concurrency,
                poll_interval: config.poll_interval,
                worker_id: worker.clone(),
            },
            handler,
            health.subscribe(),
            tasks,
            shutdown.clone(),
        );
        if follow_registry {
            tasks.spawn(
                "worker.agents-reload",
                reload::Reload {
                    db: db.clone(),
                    worker: worker.clone(),
                    queues: queues.clone(),
                    host: config.host_name(),
                    only: config.agent_filter().unwrap_or_default(),
                    runner: runner.clone(),
                    deliveries: consumers.deliveries(),
                }
                .run(pool, shutdown.clone()),
            );
        }

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
        let _ = tokio::join!(heartbeat, listener, probe);
        if let Err(e) = WorkerRegistry::stopped(&db, &worker).await {
            tracing::warn!(worker_id = %worker, error = %error_chain(&e),
                "could not mark the worker stopped; the registry shows it dead once its heartbeat ages");
        }
        tracing::info!(worker_id = %worker, "worker stopped");
        Ok(())
    }
}

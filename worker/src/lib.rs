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
//! - `queue`: apalis-redis consumption: one supervised consumer per (queue, agent) pair
//!   (`{prefix}:q:{queue}:{agent}`, for the worker's queues and agents; rebuilt
//!   after any Redis failure, under a new name), the process-wide limit on running
//!   turns, and the cleanup of acknowledged jobs.
//! - `runner`: one job: claim its tasks (one statement), then per task run the backend,
//!   batch its output into events, map the result to the last event. Every write is
//!   fenced by attempt and worker.
//! - `writer`: group commit: the writes of all running turns go to Postgres together,
//!   one transaction for whatever queued up while the last one committed.
//! - `wake`: the subscription to the dispatcher's wake-ups, so a consumer fetches as
//!   soon as jobs are pushed, not at its next poll.
//! - `lease`: the heartbeat: registry row, lease renewal of running turns, and stopping
//!   the turns whose task is no longer ours.
//! - `cancel`: LISTEN for cancellations of running tasks, so a turn cancelled on any
//!   host stops here within a second.
//! - `health`: whether Postgres answers; while it does not, the consumers take no jobs
//!   and a probe waits for it with a backoff.
//! - `agents`: which agents the worker runs: the agent registry read at start, a
//!   backend built per agent from its config, each agent probed before its work is
//!   taken.
//! - [`backend`]: the agent-backend trait, the worker's agents ([`Backends`], by agent
//!   name) and the backends `script`, `command` and `openai`.
//!
//! Invariants: a job never runs a turn without a successful claim; a handler always
//! acknowledges its job (Postgres holds every outcome, apalis never retries), and a job
//! it could not claim because Postgres was unreachable goes back onto its queue first;
//! a turn outlives the Redis consumer that delivered it. The worker writes through
//! `turnq-core`'s stores only, never an entity directly. Depends on `turnq-core`, never
//! on `turnq-api`.

mod agents;
pub mod backend;
mod cancel;
mod config;
mod health;
mod lease;
pub mod purge;
mod queue;
mod runner;
#[cfg(test)]
mod testdb;
mod wake;
mod writer;

use std::{sync::Arc, time::Duration};

use futures::FutureExt;
use sea_orm::{DatabaseConnection, DatabaseConnectionType};
use tokio::{sync::Notify, time::timeout};
use tokio_util::sync::CancellationToken;
use turnq_core::{
    WorkerId,
    delivery::{Job, RedisNames},
    worker::{WorkerInfo, WorkerRegistry},
};

pub use backend::Backends;
pub use config::WorkerConfig;

use crate::{
    health::PostgresHealth,
    lease::Heartbeat,
    queue::{Consumers, Delivery, JobHandler, QueueSettings},
    runner::{CANCEL_GRACE, Runner, StopReason, error_chain},
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

/// Runs a worker until `shutdown` is cancelled, with the agents of the agent registry
/// it can run (and the built-in `script`), narrowed by `--agents`: each is probed at
/// start and only the ones that pass have their work taken (see `docs/agents.md`).
/// The registry is read once: agents registered later are picked up on restart. See
/// [`run_with_backends`].
pub async fn run(
    db: DatabaseConnection,
    redis_url: String,
    names: RedisNames,
    config: WorkerConfig,
    shutdown: CancellationToken,
) -> Result<(), WorkerError> {
    let only = config.agent_filter().map_err(WorkerError::Config)?;
    let backends = agents::discover(&db, &only)
        .await
        .map_err(|source| WorkerError::Agents { source })?;
    run_with_backends(db, redis_url, names, config, backends, shutdown).await
}

/// Runs a worker with the agents of `backends` (narrowed by `--agents`; not probed)
/// until `shutdown` is cancelled. It consumes one Redis queue per (queue, agent) pair of
/// its `--queues` and those agents.
///
/// `db` must be a Postgres pool: one of its connections LISTENs for cancellations.
///
/// It registers in the worker registry (so Postgres must answer at start) and then
/// survives outages: an unreachable Redis is logged with its URL and retried; while
/// Postgres is unreachable it takes no jobs (the ones in hand go back to their queues)
/// and running turns go on. On shutdown it takes no new jobs, lets running turns finish
/// for `--shutdown-grace`, stops and hands back (`task.released`) the ones still
/// running, marks itself stopped and returns.
pub async fn run_with_backends(
    db: DatabaseConnection,
    redis_url: String,
    names: RedisNames,
    config: WorkerConfig,
    backends: Backends,
    shutdown: CancellationToken,
) -> Result<(), WorkerError> {
    let queues = config.validate().map_err(WorkerError::Config)?;
    let only = config.agent_filter().map_err(WorkerError::Config)?;
    let mut backends = backends;
    if !only.is_empty() {
        backends.retain(|name| only.iter().any(|a| a == name));
    }
    if backends.is_empty() {
        return Err(WorkerError::Config(if only.is_empty() {
            "no agent to run: none was given, or none passed its probe (see the warnings above)"
                .into()
        } else {
            format!(
                "no agent to run: none of --agents ({}) is available, or none passed its probe \
                 (see the warnings above)",
                only.join(", ")
            )
        }));
    }
    let deliveries = Delivery::pairs(&queues, &backends.names().collect::<Vec<_>>());
    let pool = match &db.inner {
        DatabaseConnectionType::SqlxPostgresPoolConnection(_) => {
            db.get_postgres_connection_pool().clone()
        }
        _ => {
            return Err(WorkerError::Config(
                "the worker needs a Postgres connection pool (it LISTENs for cancellations)".into(),
            ));
        }
    };
    let host = config.host_name();
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
    ));
    // The heartbeat, the cancellation listener and the Postgres probe outlive
    // `shutdown`: turns finishing in the grace period still need their leases renewed
    // and can still be cancelled.
    let beating = CancellationToken::new();
    let renew_now = Arc::new(Notify::new());
    let heartbeat = tokio::spawn(
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
    let listener = tokio::spawn(cancel::listen(
        pool,
        runner.turns().clone(),
        renew_now,
        beating.clone(),
    ));
    let probe = tokio::spawn(health::watch(
        health.clone(),
        health::select_one(db.clone()),
        beating.clone(),
    ));
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
    let _ = tokio::join!(heartbeat, listener, probe);
    if let Err(e) = WorkerRegistry::stopped(&db, &worker).await {
        tracing::warn!(worker_id = %worker, error = %error_chain(&e),
            "could not mark the worker stopped; the registry shows it dead once its heartbeat ages");
    }
    tracing::info!(worker_id = %worker, "worker stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    //! The whole worker against real Postgres and Redis: a database and a key prefix
    //! of its own per test.

    use super::*;
    use crate::{
        backend::{AgentBackend, Turn, TurnError, TurnOutcome},
        queue::tests::{TestPrefix, count, eventually, push, redis_url, waiting_ids},
        testdb::TestDb,
    };
    use futures::future::BoxFuture;
    use serde_json::json;
    use tokio::sync::mpsc;
    use turnq_core::{
        StreamVersion, TaskId,
        task::{NewTaskRequest, TaskState, TaskStore},
        time,
    };

    /// Runs until its turn is cancelled; hands the test its cancellation token.
    struct UntilCancelled {
        started: mpsc::UnboundedSender<(TaskId, CancellationToken)>,
    }

    impl AgentBackend for UntilCancelled {
        fn name(&self) -> &'static str {
            "until-cancelled"
        }
        fn run(&self, turn: Turn) -> BoxFuture<'static, Result<TurnOutcome, TurnError>> {
            let started = self.started.clone();
            async move {
                let _ = started.send((turn.task.id, turn.cancel.clone()));
                turn.cancel.cancelled().await;
                Err(TurnError::Cancelled)
            }
            .boxed()
        }
    }

    /// Counts the turns running at once, and the most seen.
    #[derive(Clone, Default)]
    struct Counting {
        running: Arc<std::sync::atomic::AtomicUsize>,
        peak: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl AgentBackend for Counting {
        fn name(&self) -> &'static str {
            "counting"
        }
        fn run(&self, _turn: Turn) -> BoxFuture<'static, Result<TurnOutcome, TurnError>> {
            use std::sync::atomic::Ordering::SeqCst;
            let (running, peak) = (self.running.clone(), self.peak.clone());
            async move {
                let now = running.fetch_add(1, SeqCst) + 1;
                peak.fetch_max(now, SeqCst);
                tokio::time::sleep(Duration::from_millis(100)).await;
                running.fetch_sub(1, SeqCst);
                Ok(TurnOutcome::Completed {
                    summary: "counted".into(),
                    usage: Default::default(),
                })
            }
            .boxed()
        }
    }

    /// Heartbeats far apart, so whatever happens within a second is not the heartbeat.
    fn config() -> WorkerConfig {
        WorkerConfig {
            concurrency: 2,
            poll_interval: Duration::from_millis(20),
            heartbeat: Duration::from_secs(30),
            lease: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(1),
            host: Some("test-host".into()),
            ..WorkerConfig::default()
        }
    }

    /// A worker with `config()` and `backends` on the test's database and prefix, and the
    /// token that stops it.
    fn start_worker(
        test: &TestDb,
        prefix: &TestPrefix,
        backends: Backends,
    ) -> (
        tokio::task::JoinHandle<Result<(), WorkerError>>,
        CancellationToken,
    ) {
        let shutdown = CancellationToken::new();
        let worker = tokio::spawn(run_with_backends(
            test.db.clone(),
            redis_url(),
            prefix.names.clone(),
            config(),
            backends,
            shutdown.clone(),
        ));
        (worker, shutdown)
    }

    fn apalis_config(names: &RedisNames, agent: &str) -> apalis_redis::Config {
        let delivery = Delivery::new("default", agent);
        QueueSettings {
            redis_url: redis_url(),
            names: names.clone(),
            queues: vec![delivery.clone()],
            concurrency: 2,
            poll_interval: Duration::from_millis(20),
            worker_id: WorkerId("test".into()),
        }
        .apalis_config(&delivery)
    }

    async fn submit(db: &DatabaseConnection, agent: &str) -> Job {
        let new = NewTaskRequest {
            input: json!("hello"),
            agent: Some(agent.into()),
            ..Default::default()
        }
        .validate(time::now())
        .expect("a valid task");
        let task = TaskStore::submit(db, new, &json!({"actor": "test"}))
            .await
            .unwrap()
            .task;
        Job::one(task.id, task.attempt)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_job_of_several_tasks_runs_them_all_within_the_concurrency() {
        let test = TestDb::create().await;
        let prefix = TestPrefix::new();
        let redis = queue::connect(&redis_url()).await.expect("Redis");
        let counting = Counting::default();
        // config(): concurrency 2.
        let (worker, shutdown) =
            start_worker(&test, &prefix, Backends::new().with(counting.clone()));
        // Five tasks in one job, as the dispatcher packs a backlog.
        let mut tasks = Vec::new();
        for _ in 0..5 {
            tasks.extend(submit(&test.db, "counting").await.tasks);
        }
        let ids: Vec<TaskId> = tasks.iter().map(|t| t.task_id).collect();
        push(
            &redis,
            &apalis_config(&prefix.names, "counting"),
            vec![Job { tasks }],
        )
        .await;
        eventually("every task of the job completes", || {
            let (db, ids) = (test.db.clone(), ids.clone());
            async move {
                let mut states = Vec::new();
                for id in &ids {
                    states.push(
                        TaskStore::get(&db, *id)
                            .await
                            .map_err(|e| e.to_string())?
                            .state,
                    );
                }
                if states.iter().all(|s| *s == TaskState::Completed) {
                    Ok(())
                } else {
                    Err(format!("{states:?}"))
                }
            }
        })
        .await;
        let peak = counting.peak.load(std::sync::atomic::Ordering::SeqCst);
        assert!(
            (1..=2).contains(&peak),
            "at most --concurrency turns at once, saw {peak}"
        );
        shutdown.cancel();
        worker.await.unwrap().unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_slots_of_a_jobs_stale_tasks_are_free_while_its_live_task_runs() {
        let test = TestDb::create().await;
        let prefix = TestPrefix::new();
        let redis = queue::connect(&redis_url()).await.expect("Redis");
        let (started_tx, mut started_rx) = mpsc::unbounded_channel();
        // config(): concurrency 2.
        let backends = Backends::new().with(UntilCancelled {
            started: started_tx,
        });
        let (worker, shutdown) = start_worker(&test, &prefix, backends);
        // A job of one live task and two cancelled ones (stale deliveries).
        let mut tasks = Vec::new();
        for _ in 0..3 {
            tasks.extend(submit(&test.db, "until-cancelled").await.tasks);
        }
        for stale in &tasks[1..] {
            TaskStore::cancel(&test.db, stale.task_id, None, &json!({}))
                .await
                .unwrap();
        }
        let config = apalis_config(&prefix.names, "until-cancelled");
        push(
            &redis,
            &config,
            vec![Job {
                tasks: tasks.clone(),
            }],
        )
        .await;
        let (first, cancel_first) = timeout(Duration::from_secs(20), started_rx.recv())
            .await
            .expect("the live task starts")
            .unwrap();
        assert_eq!(first, tasks[0].task_id);

        // One slot runs the live task; the other must be free for the next job.
        let next = submit(&test.db, "until-cancelled").await;
        push(&redis, &config, vec![next.clone()]).await;
        let (second, cancel_second) = timeout(Duration::from_secs(20), started_rx.recv())
            .await
            .expect("a slot taken for a stale task is free again while the live one runs")
            .unwrap();
        assert_eq!(second, next.tasks[0].task_id);
        cancel_first.cancel();
        cancel_second.cancel();
        shutdown.cancel();
        worker.await.unwrap().unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_running_task_cancelled_elsewhere_stops_within_a_second_and_writes_nothing() {
        let test = TestDb::create().await;
        let prefix = TestPrefix::new();
        let redis = queue::connect(&redis_url()).await.expect("Redis");
        let (started_tx, mut started_rx) = mpsc::unbounded_channel();
        let backends = Backends::new().with(UntilCancelled {
            started: started_tx,
        });
        let (worker, shutdown) = start_worker(&test, &prefix, backends);

        // Once the worker listens, a cancellation can only reach it within a second
        // through the notification: its heartbeats are 30 s apart.
        eventually("the worker listens for cancellations", || {
            let test = &test;
            async move {
                let listening = test
                    .admin_rows(&format!(
                        "SELECT 1 FROM pg_stat_activity WHERE datname = '{}' AND query ILIKE 'LISTEN%'",
                        test.name
                    ))
                    .await;
                if listening == 1 {
                    Ok(())
                } else {
                    Err(format!("{listening} listening connections"))
                }
            }
        })
        .await;
        let job = submit(&test.db, "until-cancelled").await;
        push(
            &redis,
            &apalis_config(&prefix.names, "until-cancelled"),
            vec![job.clone()],
        )
        .await;
        let (task, cancel) = timeout(Duration::from_secs(20), started_rx.recv())
            .await
            .expect("the turn starts")
            .unwrap();
        assert_eq!(task, job.tasks[0].task_id);

        // As `POST /v1/tasks/{id}/cancel` does, from any host.
        TaskStore::cancel(&test.db, task, None, &json!({"actor": "person"}))
            .await
            .unwrap();
        timeout(Duration::from_secs(1), cancel.cancelled())
            .await
            .expect("the backend is told to stop within a second");

        // The turn wrote nothing after the cancellation.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let kinds: Vec<String> = TaskStore::events(&test.db, task, StreamVersion::NEW, 100)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.kind)
            .collect();
        assert_eq!(
            kinds.last().map(String::as_str),
            Some("task.cancelled"),
            "{kinds:?}"
        );
        assert_eq!(
            TaskStore::get(&test.db, task).await.unwrap().state,
            TaskState::Cancelled
        );

        shutdown.cancel();
        timeout(Duration::from_secs(20), worker)
            .await
            .expect("the worker stops")
            .unwrap()
            .unwrap();
        drop(prefix);
        drop(test);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn while_postgres_is_unreachable_jobs_go_back_to_their_queue_and_run_once_it_returns() {
        let test = TestDb::create().await;
        let prefix = TestPrefix::new();
        let mut redis = queue::connect(&redis_url()).await.expect("Redis");
        let apalis = apalis_config(&prefix.names, "script");
        let (worker, shutdown) = start_worker(&test, &prefix, Backends::builtin());
        let job = submit(&test.db, "script").await;

        // Postgres goes away (for this database): no new connection is accepted and the
        // open ones are cut.
        test.admin_rows(&format!(
            "ALTER DATABASE \"{}\" ALLOW_CONNECTIONS false",
            test.name
        ))
        .await;
        test.admin_rows(&format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{}'",
            test.name
        ))
        .await;

        push(&redis, &apalis, vec![job.clone()]).await;
        // Either a consumer fetched the job, failed to claim it and pushed it back under a
        // new id, or the consumers had already paused (a heartbeat noticed the outage
        // first) and never fetched it: both keep exactly one job waiting in Redis, and
        // neither runs it. (The hand-back itself is tested in `queue`.)
        let one_waiting = || {
            let (mut c, apalis) = (redis.clone(), apalis.clone());
            async move {
                let ids = waiting_ids(&mut c, &apalis).await;
                let pushed = count(&mut c, "HLEN", apalis.job_data_hash()).await;
                if ids.len() == 1 && (1..=2).contains(&pushed) {
                    Ok(())
                } else {
                    Err(format!("waiting {ids:?}, {pushed} pushed so far"))
                }
            }
        };
        eventually(
            "the job waits in its queue while Postgres is away",
            one_waiting,
        )
        .await;
        // The consumers are paused: it stays there.
        tokio::time::sleep(Duration::from_millis(500)).await;
        eventually("the job still waits after a while", one_waiting).await;
        assert_eq!(waiting_ids(&mut redis, &apalis).await.len(), 1);

        // Postgres is back: the probe sees it, the consumers resume, the task runs.
        test.admin_rows(&format!(
            "ALTER DATABASE \"{}\" ALLOW_CONNECTIONS true",
            test.name
        ))
        .await;
        eventually("the task runs once Postgres answers", || {
            let db = test.db.clone();
            let task = job.tasks[0].task_id;
            async move {
                match TaskStore::get(&db, task).await {
                    Ok(t) if t.state == TaskState::Completed => Ok(()),
                    Ok(t) => Err(format!("{:?}", t.state)),
                    Err(e) => Err(e.to_string()),
                }
            }
        })
        .await;

        shutdown.cancel();
        timeout(Duration::from_secs(20), worker)
            .await
            .expect("the worker stops")
            .unwrap()
            .unwrap();
        drop(prefix);
        drop(test);
    }
}

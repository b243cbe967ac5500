//! The whole worker against real Postgres and Redis: a database and a key prefix
//! of its own per test.

use super::*;
use crate::{
    backend::{AgentBackend, Turn, TurnError, TurnOutcome},
    delivery::{
        self,
        tests::{Control, count, names, push, waiting_ids},
    },
};
use apalis_redis::ConnectionManager;
use futures::future::BoxFuture;
use serde_json::json;
use tokio::sync::mpsc;
use turnq_core::{
    StreamVersion, TaskId,
    task::{NewTaskRequest, TaskState, TaskStore},
    time,
};
use turnq_testkit::{TestDb, TestRedis, eventually, redis_url, within};

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

/// Heartbeats an hour apart, far beyond any wait of a test: whatever a test sees
/// happen was not the heartbeat's doing.
fn config() -> WorkerConfig {
    WorkerConfig {
        concurrency: 2,
        poll_interval: Duration::from_millis(20),
        heartbeat: Duration::from_secs(3600),
        lease: Duration::from_secs(7200),
        shutdown_grace: Duration::from_secs(1),
        host: Some("test-host".into()),
        ..WorkerConfig::default()
    }
}

/// A worker with `config()` and `backends` on the test's database and prefix, and the
/// token that stops it.
fn start_worker(
    test: &TestDb,
    prefix: &TestRedis,
    backends: Backends,
) -> (
    tokio::task::JoinHandle<Result<(), WorkerError>>,
    CancellationToken,
) {
    let shutdown = CancellationToken::new();
    let worker = Worker::with_backends(
        test.db.clone(),
        redis_url(),
        names(prefix),
        config(),
        backends,
    )
    .expect("the test worker's settings are valid");
    let tasks = Supervisor::new(shutdown.clone());
    let run = tokio::spawn({
        let shutdown = shutdown.clone();
        async move { worker.run(&tasks, shutdown).await }
    });
    (run, shutdown)
}

/// The jobs in flight (fetched and not yet acknowledged) on `config`'s queue, over
/// every consumer.
async fn in_flight(conn: &ConnectionManager, config: &apalis_redis::Config) -> usize {
    let mut c = conn.clone();
    let (mut cursor, mut total) = (0u64, 0usize);
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{}:*", config.inflight_jobs_set()))
            .query_async(&mut c)
            .await
            .expect("scanning Redis");
        for key in keys {
            total += count(&mut c, "SCARD", key).await;
        }
        if next == 0 {
            return total;
        }
        cursor = next;
    }
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
    let test = TestDb::new().await.unwrap();
    let prefix = TestRedis::new();
    let redis = delivery::connect(&redis_url()).await.expect("Redis");
    let counting = Counting::default();
    // config(): concurrency 2.
    let (worker, shutdown) = start_worker(&test, &prefix, Backends::new().with(counting.clone()));
    // Five tasks in one job, as the dispatcher packs a backlog.
    let mut tasks = Vec::new();
    for _ in 0..5 {
        tasks.extend(submit(&test.db, "counting").await.tasks);
    }
    let ids: Vec<TaskId> = tasks.iter().map(|t| t.task_id).collect();
    push(
        &redis,
        &apalis_config(&names(&prefix), "counting"),
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
    .await
    .unwrap();
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
    let test = TestDb::new().await.unwrap();
    let prefix = TestRedis::new();
    let redis = delivery::connect(&redis_url()).await.expect("Redis");
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
    let config = apalis_config(&names(&prefix), "until-cancelled");
    push(
        &redis,
        &config,
        vec![Job {
            tasks: tasks.clone(),
        }],
    )
    .await;
    let (first, cancel_first) = within("the live task starts", started_rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first, tasks[0].task_id);

    // One slot runs the live task; the other must be free for the next job.
    let next = submit(&test.db, "until-cancelled").await;
    push(&redis, &config, vec![next.clone()]).await;
    let (second, cancel_second) = within(
        "a slot taken for a stale task is free again while the live one runs",
        started_rx.recv(),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(second, next.tasks[0].task_id);
    cancel_first.cancel();
    cancel_second.cancel();
    shutdown.cancel();
    worker.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_task_cancelled_elsewhere_is_stopped_by_the_notification_and_writes_nothing() {
    let test = TestDb::new().await.unwrap();
    let prefix = TestRedis::new();
    let redis = delivery::connect(&redis_url()).await.expect("Redis");
    let (started_tx, mut started_rx) = mpsc::unbounded_channel();
    let backends = Backends::new().with(UntilCancelled {
        started: started_tx,
    });
    let (worker, shutdown) = start_worker(&test, &prefix, backends);

    // Once the worker listens, a cancellation can only reach it through the
    // notification: its heartbeats are an hour apart.
    eventually("the worker listens for cancellations", || {
        let test = &test;
        async move {
            let listening = test
                .admin(&format!(
                    "SELECT 1 FROM pg_stat_activity WHERE datname = '{}' AND query ILIKE 'LISTEN%'",
                    test.name
                ))
                .await
                .map_err(|e| e.to_string())?;
            if listening == 1 {
                Ok(())
            } else {
                Err(format!("{listening} listening connections"))
            }
        }
    })
    .await
    .unwrap();
    let job = submit(&test.db, "until-cancelled").await;
    push(
        &redis,
        &apalis_config(&names(&prefix), "until-cancelled"),
        vec![job.clone()],
    )
    .await;
    let (task, cancel) = within("the turn starts", started_rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(task, job.tasks[0].task_id);

    // As `POST /v1/tasks/{id}/cancel` does, from any host.
    TaskStore::cancel(&test.db, task, None, &json!({"actor": "person"}))
        .await
        .unwrap();
    within(
        "the notification tells the backend to stop",
        cancel.cancelled(),
    )
    .await
    .unwrap();

    // The turn wrote nothing after the cancellation: once its job is acknowledged
    // (which happens after the turn's last write, if any), the log ends as it was.
    let config = apalis_config(&names(&prefix), "until-cancelled");
    eventually("the job's turn is over and acknowledged", || async {
        match in_flight(&redis, &config).await {
            0 => Ok(()),
            n => Err(format!("{n} jobs in flight")),
        }
    })
    .await
    .unwrap();
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
    within("the worker stops", worker)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    drop(prefix);
    drop(test);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_postgres_is_unreachable_jobs_go_back_to_their_queue_and_run_once_it_returns() {
    let test = TestDb::new().await.unwrap();
    let prefix = TestRedis::new();
    let redis = delivery::connect(&redis_url()).await.expect("Redis");
    let apalis = apalis_config(&names(&prefix), "script");
    let (worker, shutdown) = start_worker(&test, &prefix, Backends::builtin());
    let job = submit(&test.db, "script").await;

    // Postgres goes away (for this database): no new connection is accepted and the
    // open ones are cut.
    test.admin(&format!(
        "ALTER DATABASE \"{}\" ALLOW_CONNECTIONS false",
        test.name
    ))
    .await
    .unwrap();
    test.admin(&format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{}'",
        test.name
    ))
    .await
    .unwrap();

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
    .await
    .unwrap();
    // The consumers are paused: it stays there while a consumer that is not paused
    // fetches three times.
    let mut control = Control::start(names(&prefix)).await;
    control.cycles(3).await;
    control.stop().await;
    // (Checked through `one_waiting` only: a consumer that fetched it before pausing
    // pushes it back under a new id, so at one instant it may be in flight, not waiting.)
    eventually("the job still waits", one_waiting)
        .await
        .unwrap();

    // Postgres is back: the probe sees it, the consumers resume, the task runs.
    test.admin(&format!(
        "ALTER DATABASE \"{}\" ALLOW_CONNECTIONS true",
        test.name
    ))
    .await
    .unwrap();
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
    .await
    .unwrap();

    shutdown.cancel();
    within("the worker stops", worker)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    drop(prefix);
    drop(test);
}

#[tokio::test]
async fn agents_named_that_cannot_run_here_are_refused_naming_the_ones_that_can() {
    let test = TestDb::new().await.expect("a test database");
    let prefix = TestRedis::new();
    let refused = Worker::with_backends(
        test.db.clone(),
        redis_url(),
        names(&prefix),
        WorkerConfig {
            agents: vec!["gpt9".into()],
            ..config()
        },
        Backends::builtin(),
    )
    .err()
    .map(|e| e.to_string())
    .unwrap_or_default();
    assert!(
        refused.contains("none of --agents (gpt9) can run here")
            && refused.contains("this worker could run: script"),
        "{refused}"
    );
}

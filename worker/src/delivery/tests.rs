//! The consumers against a real Redis: a key prefix of their own per test.

use super::*;
use apalis::prelude::TaskSink;
use apalis_redis::RedisStorage;
use futures::FutureExt;
use std::collections::HashSet;
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use turnq_core::{TaskId, delivery::Job};
use turnq_testkit::{TestRedis, eventually, redis_url, within};

/// The pair of queue `queue` and the agent `script`.
pub(crate) fn d(queue: &str) -> Delivery {
    Delivery::new(queue, "script")
}

#[test]
fn deliveries_pair_every_queue_with_every_agent_and_its_host_pinned_twin() {
    let queues = ["a".to_owned(), "b".to_owned()];
    let pairs = Delivery::pairs(&queues, &["x", "y"], "h");
    let names: Vec<String> = pairs.iter().map(ToString::to_string).collect();
    assert_eq!(
        names,
        [
            "a:x", "a:x@h", "a:y", "a:y@h", "b:x", "b:x@h", "b:y", "b:y@h"
        ]
    );
}

#[test]
fn passwords_in_redis_urls_are_hidden() {
    assert_eq!(redact("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    assert_eq!(
        redact("redis://:s3cret@host:6379/0"),
        "redis://:***@host:6379/0"
    );
    assert_eq!(redact("rediss://me:s3cret@host"), "rediss://me:***@host");
    assert_eq!(redact("redis://me@host"), "redis://me@host");
}

#[test]
fn fetch_batches_follow_the_slots_per_queue() {
    let settings = |concurrency, queues: &[&str]| QueueSettings {
        redis_url: String::new(),
        names: RedisNames::new("t"),
        queues: queues.iter().map(|q| d(q)).collect(),
        concurrency,
        poll_interval: Duration::from_millis(50),
        worker_id: WorkerId("w".into()),
    };
    assert_eq!(settings(16, &["a"]).apalis_config(&d("a")).batch_size, 10);
    assert_eq!(
        settings(16, &["a", "b", "c"])
            .apalis_config(&d("a"))
            .batch_size,
        5
    );
    assert_eq!(
        settings(1, &["a", "b"]).apalis_config(&d("a")).batch_size,
        1
    );
    let config = settings(4, &["a"]).apalis_config(&d("a"));
    assert_eq!(config.queue.to_string(), "t:q:a:script");
    assert!(config.persist_results);
}

// ---- against a real Redis -------------------------------------------------

/// The names under the test's own prefix.
pub(crate) fn names(redis: &TestRedis) -> RedisNames {
    RedisNames::new(&redis.prefix)
}

pub(crate) async fn push(conn: &ConnectionManager, config: &apalis_redis::Config, jobs: Vec<Job>) {
    // As the dispatcher pushes.
    let mut storage = RedisStorage::<Job>::new(conn.clone()).with_config(config.clone());
    storage
        .push_bulk(jobs)
        .await
        .expect("pushing jobs to Redis");
}

pub(crate) async fn count(conn: &mut ConnectionManager, command: &str, key: String) -> usize {
    redis::cmd(command)
        .arg(key)
        .query_async(conn)
        .await
        .expect("counting in Redis")
}

/// A gate that never shuts.
fn always_open() -> watch::Receiver<bool> {
    watch::channel(true).1
}

fn jobs(n: usize) -> Vec<Job> {
    (0..n).map(|i| Job::one(TaskId::new(), i as i32)).collect()
}

/// The positive control of a negative check ("a paused consumer fetches nothing"): a
/// consumer of its own, with an open gate and the same poll interval, on queue
/// `control` of the same Redis. [`Control::cycles`] pushes a job to it and waits until
/// it is delivered, `n` times: a paused consumer that still fetched would have fetched
/// in that time as well, so its silence means something however slow the machine.
pub(crate) struct Control {
    consumers: Consumers,
    stop: CancellationToken,
    seen: mpsc::UnboundedReceiver<Job>,
    admin: ConnectionManager,
    config: apalis_redis::Config,
}

impl Control {
    pub(crate) async fn start(names: RedisNames) -> Control {
        let settings = QueueSettings {
            redis_url: redis_url(),
            names,
            queues: vec![d("control")],
            concurrency: 1,
            poll_interval: Duration::from_millis(20),
            worker_id: WorkerId(format!("control-{}", uuid::Uuid::new_v4().simple())),
        };
        let (tx, seen) = mpsc::unbounded_channel::<Job>();
        let handler: JobHandler = Arc::new(move |job: Job, slots: Vec<OwnedSemaphorePermit>| {
            let tx = tx.clone();
            async move {
                let _slots = slots;
                let _ = tx.send(job);
                Handled::Done
            }
            .boxed()
        });
        let stop = CancellationToken::new();
        let config = settings.apalis_config(&d("control"));
        let consumers = Consumers::start(
            settings,
            handler,
            always_open(),
            &supervisor(&stop),
            stop.clone(),
        );
        Control {
            consumers,
            stop,
            seen,
            admin: connect(&redis_url()).await.expect("Redis"),
            config,
        }
    }

    /// `n` fetch cycles of the control consumer.
    pub(crate) async fn cycles(&mut self, n: usize) {
        for _ in 0..n {
            let job = jobs(1);
            push(&self.admin, &self.config, job.clone()).await;
            let seen = within("the control consumer fetches its job", self.seen.recv())
                .await
                .unwrap();
            assert_eq!(seen.as_ref(), job.first());
        }
    }

    pub(crate) async fn stop(self) {
        self.stop.cancel();
        self.consumers.finished().await;
        self.consumers.join().await;
    }
}

/// A supervisor for consumers that stop with `stop`.
fn supervisor(stop: &CancellationToken) -> Supervisor {
    Supervisor::new(stop.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_survive_a_dropped_connection_and_clean_up_after_themselves() {
    let prefix = TestRedis::new();
    let mut admin = connect(&redis_url())
        .await
        .expect("these tests need Redis at $TURNQ_TEST_REDIS_URL or redis://127.0.0.1:6379");
    let settings = QueueSettings {
        redis_url: redis_url(),
        names: names(&prefix),
        queues: vec![d("a"), d("b")],
        concurrency: 4,
        poll_interval: Duration::from_millis(20),
        worker_id: WorkerId(format!("smoke-{}", uuid::Uuid::new_v4().simple())),
    };
    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel::<Job>();
    let handler: JobHandler = Arc::new(move |job: Job, slots: Vec<OwnedSemaphorePermit>| {
        let seen = seen_tx.clone();
        async move {
            let _slots = slots;
            let _ = seen.send(job);
            Handled::Done
        }
        .boxed()
    });
    let stop = CancellationToken::new();
    let consumers = Consumers::start(
        settings.clone(),
        handler,
        always_open(),
        &supervisor(&stop),
        stop.clone(),
    );
    let config_a = settings.apalis_config(&d("a"));
    let config_b = settings.apalis_config(&d("b"));

    // Both queues are consumed.
    let first = jobs(30);
    push(&admin, &config_a, first[..20].to_vec()).await;
    push(&admin, &config_b, first[20..].to_vec()).await;
    let mut seen = HashSet::new();
    while seen.len() < first.len() {
        let job = within("every pushed job is delivered", seen_rx.recv())
            .await
            .unwrap()
            .expect("the handler is alive");
        seen.insert(job.tasks[0].task_id);
    }

    // Kill queue a's consumer connection under it: apalis dies, the supervisor
    // rebuilds it under a new name.
    let live_a = || {
        consumers
            .shared
            .live()
            .into_iter()
            .find(|(q, _)| *q == d("a").to_string())
            .map(|(_, n)| n)
    };
    eventually("queue a has a live consumer", || async {
        live_a().map(drop).ok_or_else(|| "none".to_string())
    })
    .await
    .unwrap();
    let first_name = live_a().unwrap();
    let clients: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut admin)
        .await
        .unwrap();
    let victim: i64 = clients
        .lines()
        .find(|line| line.contains(&format!(" name={first_name} ")))
        .and_then(|line| line.split_whitespace().find_map(|f| f.strip_prefix("id=")))
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("no connection named {first_name}:\n{clients}"));
    let _: () = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("ID")
        .arg(victim)
        .query_async(&mut admin)
        .await
        .unwrap();
    eventually("queue a's consumer is rebuilt under a new name", || async {
        match live_a() {
            Some(name) if name != first_name => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await
    .unwrap();

    // The rebuilt consumers deliver new jobs.
    let second = jobs(10);
    push(&admin, &config_a, second.clone()).await;
    let mut seen_second = HashSet::new();
    while seen_second.len() < second.len() {
        let job = within(
            "jobs pushed after the failure are delivered",
            seen_rx.recv(),
        )
        .await
        .unwrap()
        .expect("the handler is alive");
        if second
            .iter()
            .any(|j| j.tasks[0].task_id == job.tasks[0].task_id)
        {
            seen_second.insert(job.tasks[0].task_id);
        }
    }

    // The cleanup removes acknowledged jobs and their data.
    let mut c = admin.clone();
    clean_once(
        &mut c,
        &[
            ("a".into(), config_a.clone()),
            ("b".into(), config_b.clone()),
        ],
        &[],
    )
    .await
    .expect("cleaning");
    eventually("acknowledged jobs leave no data behind", || {
        let mut c = admin.clone();
        let (config_a, config_b) = (config_a.clone(), config_b.clone());
        async move {
            clean_once(
                &mut c,
                &[
                    ("a".into(), config_a.clone()),
                    ("b".into(), config_b.clone()),
                ],
                &[],
            )
            .await
            .map_err(|e| e.to_string())?;
            let data = count(&mut c, "HLEN", config_a.job_data_hash()).await
                + count(&mut c, "HLEN", config_b.job_data_hash()).await;
            let done = count(&mut c, "SCARD", config_a.done_jobs_set()).await;
            if data == 0 && done == 0 {
                Ok(())
            } else {
                Err(format!("{data} data, {done} done"))
            }
        }
    })
    .await
    .unwrap();

    // Stopping retires the consumers: no consumer names left behind.
    stop.cancel();
    consumers.finished().await;
    consumers.join().await;
    let workers = count(&mut admin, "ZCARD", config_a.workers_set()).await
        + count(&mut admin, "ZCARD", config_b.workers_set()).await;
    assert_eq!(workers, 0, "every consumer left the workers sets");
    drop(prefix);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_waiting_for_a_slot_at_shutdown_goes_back_to_its_queue() {
    let prefix = TestRedis::new();
    let admin = connect(&redis_url())
        .await
        .expect("these tests need Redis at $TURNQ_TEST_REDIS_URL or redis://127.0.0.1:6379");
    // Two queues share one slot: a job of queue b waits while one of a runs.
    let settings = QueueSettings {
        redis_url: redis_url(),
        names: names(&prefix),
        queues: vec![d("a"), d("b")],
        concurrency: 1,
        poll_interval: Duration::from_millis(20),
        worker_id: WorkerId(format!("smoke-{}", uuid::Uuid::new_v4().simple())),
    };
    let release = CancellationToken::new();
    let (started_tx, mut started_rx) = mpsc::unbounded_channel::<Job>();
    let handler: JobHandler = {
        let release = release.clone();
        Arc::new(move |job: Job, slots: Vec<OwnedSemaphorePermit>| {
            let (started, release) = (started_tx.clone(), release.clone());
            async move {
                let _slots = slots;
                let _ = started.send(job);
                release.cancelled().await;
                Handled::Done
            }
            .boxed()
        })
    };
    let stop = CancellationToken::new();
    let consumers = Consumers::start(
        settings.clone(),
        handler,
        always_open(),
        &supervisor(&stop),
        stop.clone(),
    );
    let (config_a, config_b) = (
        settings.apalis_config(&d("a")),
        settings.apalis_config(&d("b")),
    );
    let running = jobs(1);
    push(&admin, &config_a, running.clone()).await;
    let started = within("the first job starts", started_rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(started, running[0]);

    let waiting = jobs(1);
    push(&admin, &config_b, waiting.clone()).await;
    eventually(
        "queue b's consumer takes the job and waits for the slot",
        || {
            let mut c = admin.clone();
            let (scheduled, list) = (config_b.scheduled_jobs_set(), config_b.active_jobs_list());
            async move {
                let waiting =
                    count(&mut c, "ZCARD", scheduled).await + count(&mut c, "LLEN", list).await;
                match waiting {
                    0 => Ok(()),
                    n => Err(format!("{n} jobs not yet fetched")),
                }
            }
        },
    )
    .await
    .unwrap();
    assert_eq!(consumers.running(), 1, "only one job runs");

    stop.cancel();
    release.cancel();
    consumers.finished().await;
    consumers.join().await;
    assert!(started_rx.try_recv().is_err(), "nothing starts after stop");

    // The waiting job is back in queue b for another worker: apalis-redis puts every
    // push in the scheduled set (with run_at = now), promoted by the next fetch;
    // had the consumer fetched it again before stopping, it is in the active list.
    let mut c = admin.clone();
    let mut ids: Vec<String> = redis::cmd("ZRANGE")
        .arg(config_b.scheduled_jobs_set())
        .arg(0)
        .arg(-1)
        .query_async(&mut c)
        .await
        .unwrap();
    let active: Vec<String> = redis::cmd("LRANGE")
        .arg(config_b.active_jobs_list())
        .arg(0)
        .arg(-1)
        .query_async(&mut c)
        .await
        .unwrap();
    ids.extend(active);
    assert_eq!(
        ids.len(),
        1,
        "the unstarted job waits in its queue: {ids:?}"
    );
    let data: Vec<u8> = redis::cmd("HGET")
        .arg(config_b.job_data_hash())
        .arg(&ids[0])
        .query_async(&mut c)
        .await
        .unwrap();
    let job: Job = serde_json::from_slice(&data).expect("the handed-back job is a Job");
    assert_eq!(job, waiting[0]);
    // The job that ran was acknowledged, and the last cleanup removed it.
    assert_eq!(count(&mut c, "HLEN", config_a.job_data_hash()).await, 0);
    assert_eq!(count(&mut c, "LLEN", config_a.active_jobs_list()).await, 0);
    drop(prefix);
}

/// The ids of the jobs waiting in `config`'s queue (scheduled or active).
pub(crate) async fn waiting_ids(
    conn: &mut ConnectionManager,
    config: &apalis_redis::Config,
) -> Vec<String> {
    let mut ids: Vec<String> = redis::cmd("ZRANGE")
        .arg(config.scheduled_jobs_set())
        .arg(0)
        .arg(-1)
        .query_async(conn)
        .await
        .expect("reading the scheduled set");
    let active: Vec<String> = redis::cmd("LRANGE")
        .arg(config.active_jobs_list())
        .arg(0)
        .arg(-1)
        .query_async(conn)
        .await
        .expect("reading the active list");
    ids.extend(active);
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shut_gate_pauses_fetching_and_a_job_postgres_refused_goes_back_to_its_queue() {
    let prefix = TestRedis::new();
    let admin = connect(&redis_url())
        .await
        .expect("these tests need Redis at $TURNQ_TEST_REDIS_URL or redis://127.0.0.1:6379");
    let settings = QueueSettings {
        redis_url: redis_url(),
        names: names(&prefix),
        queues: vec![d("a")],
        concurrency: 4,
        poll_interval: Duration::from_millis(20),
        worker_id: WorkerId(format!("smoke-{}", uuid::Uuid::new_v4().simple())),
    };
    let config = settings.apalis_config(&d("a"));
    let (gate_tx, gate_rx) = watch::channel(false);
    let gate_tx = Arc::new(gate_tx);
    let refused = jobs(1).remove(0);
    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel::<Job>();
    let handler: JobHandler = {
        let (gate_tx, refused_once) = (gate_tx.clone(), Arc::new(Mutex::new(false)));
        let refused = refused.clone();
        Arc::new(move |job: Job, slots: Vec<OwnedSemaphorePermit>| {
            let (seen, gate_tx, refused_once, refused) = (
                seen_tx.clone(),
                gate_tx.clone(),
                refused_once.clone(),
                refused.clone(),
            );
            async move {
                let _slots = slots;
                let _ = seen.send(job.clone());
                let mut once = refused_once.lock().unwrap();
                if job == refused && !*once {
                    // As the runner does when the claim finds Postgres unreachable.
                    *once = true;
                    gate_tx.send_replace(false);
                    return Handled::PostgresUnavailable;
                }
                Handled::Done
            }
            .boxed()
        })
    };
    let stop = CancellationToken::new();
    let consumers = Consumers::start(
        settings.clone(),
        handler,
        gate_rx,
        &supervisor(&stop),
        stop.clone(),
    );

    // Shut: nothing is fetched, the jobs wait in Redis.
    let mut control = Control::start(names(&prefix)).await;
    let first = jobs(3);
    push(&admin, &config, first.clone()).await;
    control.cycles(3).await;
    assert!(
        seen_rx.try_recv().is_err(),
        "a paused consumer fetches nothing"
    );
    assert_eq!(waiting_ids(&mut admin.clone(), &config).await.len(), 3);

    // Open: they are delivered.
    gate_tx.send_replace(true);
    for _ in 0..first.len() {
        within("an open gate delivers", seen_rx.recv())
            .await
            .unwrap()
            .unwrap();
    }

    // A job whose claim found Postgres unreachable goes back to the queue, and is
    // not fetched again while the gate is shut.
    push(&admin, &config, vec![refused.clone()]).await;
    let delivered = within("the refused job is delivered", seen_rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(delivered, refused);
    eventually("the refused job is back in its queue", || {
        let (mut c, config, refused) = (admin.clone(), config.clone(), refused.clone());
        async move {
            let ids = waiting_ids(&mut c, &config).await;
            let mut jobs = Vec::new();
            for id in &ids {
                let data: Vec<u8> = redis::cmd("HGET")
                    .arg(config.job_data_hash())
                    .arg(id)
                    .query_async(&mut c)
                    .await
                    .map_err(|e| e.to_string())?;
                jobs.push(serde_json::from_slice::<Job>(&data).map_err(|e| e.to_string())?);
            }
            if jobs == [refused] {
                Ok(())
            } else {
                Err(format!("{jobs:?}"))
            }
        }
    })
    .await
    .unwrap();
    control.cycles(3).await;
    assert!(seen_rx.try_recv().is_err(), "not fetched again while shut");

    gate_tx.send_replace(true);
    let again = within("delivered again once the gate opens", seen_rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again, refused);

    stop.cancel();
    consumers.finished().await;
    consumers.join().await;
    control.stop().await;
    drop(prefix);
}

//! The dispatcher: relays due tasks from Postgres to their Redis queues.
//!
//! It wakes on `NOTIFY tasks_new` (one per insert statement) and also polls every
//! `--dispatch-poll-interval`, because a notification sent while the listener was
//! reconnecting is lost and a retry's `run_at` passes without any insert. Each round
//! takes due tasks with `FOR UPDATE SKIP LOCKED` (several API replicas can run it),
//! pushes them as apalis jobs onto the queue of their (queue, agent) pair
//! (`{prefix}:q:{queue}:{agent}`), then commits `task.queued`: push before commit, so a
//! crash in between re-pushes and never loses. A job carries one task, or several of one
//! pair when a round finds a backlog (`--dispatch-pack-above`, `--dispatch-job-size`),
//! which a worker then claims in one statement.
//!
//! The dispatcher's LISTEN connection is a long-lived task of its own
//! (`dispatcher.listener`, see `turnq_core::listen`); both it and the dispatch loop are
//! supervised: if either dies, the process stops (`turnq_core::supervise`).
//!
//! What it pushes is bounded (`--dispatch-max-queued`): Redis holds what workers can
//! take soon, the rest waits in Postgres. apalis-redis' fetch script fails for every
//! worker once a queue holds many thousands of due jobs, and a bounded queue also keeps
//! priorities meaningful (a late high-priority task is not stuck behind a deep FIFO).

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::Duration,
};

use apalis::prelude::{TaskBuilder, TaskId, TaskSink};
use apalis_redis::{ConnectionManager, RedisStorage};
use sea_orm::{DatabaseConnection, sqlx::PgPool};
use serde_json::json;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use turnq_core::{
    delivery::{Job, JobTask, RedisNames, pinned_agent},
    fault::fail_point,
    listen::{Listener, Notice, postgres_pool},
    retry::Backoff,
    supervise::Supervisor,
    task::{CHANNEL_TASKS_NEW as CHANNEL, DueTask, TaskStore},
    worker::WorkerRegistry,
};

/// The dispatcher's settings.
#[derive(clap::Args, Clone, Debug)]
pub struct DispatcherConfig {
    /// How often the dispatcher looks for due tasks when no notification woke it
    /// (retries whose backoff has passed, scheduled tasks, missed notifications).
    #[arg(long, env = "TURNQ_DISPATCH_POLL_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub dispatch_poll_interval: Duration,

    /// The most tasks handed to Redis in one transaction.
    #[arg(long, env = "TURNQ_DISPATCH_BATCH", default_value_t = 500)]
    pub dispatch_batch: u64,

    /// The most tasks waiting in Redis (queued, not yet started) per queue and agent; the
    /// rest wait in Postgres until workers catch up.
    #[arg(long, env = "TURNQ_DISPATCH_MAX_QUEUED", default_value_t = 5000)]
    pub dispatch_max_queued: u64,

    /// The most tasks one Redis job carries. A dispatch round that finds more due tasks of
    /// one (queue, agent) than `--dispatch-pack-above` packs them into jobs of up to this
    /// many, which a worker claims in one statement; fewer go out one per job, so an idle
    /// fleet starts each task at once and several workers share a small burst. 1 turns
    /// packing off.
    #[arg(long, env = "TURNQ_DISPATCH_JOB_SIZE", default_value_t = 16)]
    pub dispatch_job_size: usize,

    /// Due tasks of one (queue, agent) in a round at or below which every task goes out
    /// in a job of its own.
    #[arg(long, env = "TURNQ_DISPATCH_PACK_ABOVE", default_value_t = 64)]
    pub dispatch_pack_above: usize,

    /// A task queued this long without starting is pushed again (its job was lost with
    /// Redis or with a worker). Duplicates are harmless: the claim is conditional.
    #[arg(long, env = "TURNQ_REDELIVER_AFTER", default_value = "5m", value_parser = humantime::parse_duration)]
    pub redeliver_after: Duration,
}

/// A host counts as alive for pinning a session's task to it when one of its workers
/// was heard from this recently: the default `--lease`, so that a session whose host
/// crashed (its tasks recovered when their lease ran out) is not pinned to it again.
const PIN_LIVE: Duration = Duration::from_secs(10);

/// How often the sweep looks for sub-tasks that a cancelled parent left open.
const ORPHAN_SWEEP_EVERY: Duration = Duration::from_secs(60);

/// Tasks whose lease expired, recovered per round at most.
const SWEEP_BATCH: u64 = 500;

/// Runs the dispatcher until `shutdown`, its listener a long-lived task of `tasks`.
/// Outages of Postgres or Redis are logged and retried, never fatal.
pub async fn run(
    db: DatabaseConnection,
    redis_url: String,
    names: RedisNames,
    config: DispatcherConfig,
    tasks: Supervisor,
    shutdown: CancellationToken,
) {
    let wake = Arc::new(Notify::new());
    match postgres_pool(&db) {
        Some(pool) => {
            tasks.spawn(
                "dispatcher.listener",
                listen(pool, wake.clone(), shutdown.clone()),
            );
        }
        None => tracing::warn!(
            "the dispatcher's database is not a Postgres pool: it cannot LISTEN, and polls only"
        ),
    }
    // Recovering the tasks of dead workers needs Postgres only: it runs on its own, at
    // its own pace, whatever state Redis is in.
    tasks.spawn(
        "dispatcher.lease-sweep",
        sweep(db.clone(), config.dispatch_poll_interval, shutdown.clone()),
    );
    let mut redis: Option<ConnectionManager> = None;
    let mut epoch: Option<String> = None;
    let mut served = Served::every(config.dispatch_poll_interval);
    let mut failures = 0u32;
    // Short: a round that failed because Redis or Postgres was away is tried again
    // within half a second, so dispatching resumes as soon as they answer.
    let mut backoff = Backoff::between(RETRY_FIRST, RETRY_MOST);
    while !shutdown.is_cancelled() {
        fail_point!("dispatcher.round");
        if redis.is_none() {
            match apalis_redis::connect(redis_url.as_str()).await {
                Ok(conn) => redis = Some(conn),
                Err(e) => {
                    tracing::warn!(url = %redis_url, error = %e, "dispatcher cannot reach Redis; retrying (start it with: redis-server --daemonize yes)");
                }
            }
        }
        let outcome = match &mut redis {
            Some(conn) => match check_epoch(conn, &names, &mut epoch).await {
                Ok(lost) => {
                    // After a loss, everything queued is pushed again at once, not
                    // only what has waited longer than --redeliver-after.
                    let now = turnq_core::time::now();
                    let stale = if lost {
                        now
                    } else {
                        now - chrono::TimeDelta::from_std(config.redeliver_after)
                            .unwrap_or(chrono::TimeDelta::MAX)
                    };
                    // Re-deliveries go only to pairs some live worker serves: a task
                    // no worker takes is pushed once and waits in Redis. After a loss,
                    // everything queued is pushed again, served or not.
                    match if lost {
                        Ok(None)
                    } else {
                        served.get(&db).await.map(Some)
                    } {
                        Ok(pairs) => drain(&db, conn, &names, &config, stale, pairs).await,
                        Err(e) => Err(e),
                    }
                }
                Err(e) => Err(turnq_core::Error::Delivery(Box::new(e))),
            },
            None => Err(turnq_core::Error::Delivery("Redis is not connected".into())),
        };
        let pause = match outcome {
            Ok(_) => {
                failures = 0;
                backoff.reset();
                None
            }
            Err(e) => {
                failures += 1;
                if matches!(e, turnq_core::Error::Delivery(_)) {
                    // Rebuild the connection: apalis' connection manager reconnects on
                    // its own, but a fresh one also clears a wedged state.
                    redis = None;
                }
                tracing::warn!(error = %turnq_core::error::chain(&e), failures, "dispatch round failed; retrying");
                Some(backoff.next_delay())
            }
        };
        let wait = pause.unwrap_or(config.dispatch_poll_interval);
        tokio::select! {
            _ = wake.notified(), if pause.is_none() => {}
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.cancelled() => {}
        }
    }
}

/// The (queue, agent) pairs some live worker serves, read from the worker registry at
/// most once per interval: a round runs on every submission.
struct Served {
    every: Duration,
    read: Option<(std::time::Instant, BTreeSet<(String, String)>)>,
}

impl Served {
    fn every(every: Duration) -> Self {
        Served { every, read: None }
    }

    async fn get(
        &mut self,
        db: &DatabaseConnection,
    ) -> Result<&BTreeSet<(String, String)>, turnq_core::Error> {
        let read = match self.read.take() {
            Some(read) if read.0.elapsed() < self.every => read,
            _ => (
                std::time::Instant::now(),
                WorkerRegistry::served_pairs(db).await?,
            ),
        };
        Ok(&self.read.insert(read).1)
    }
}

/// The first wait before retrying a failed round, and the longest.
const RETRY_FIRST: Duration = Duration::from_millis(50);
const RETRY_MOST: Duration = Duration::from_millis(500);

/// Every `every`, until `shutdown`: recovers the tasks whose lease expired (their
/// worker died), ends requests whose deadline passed, and re-opens parents whose
/// sub-tasks have all ended.
async fn sweep(db: DatabaseConnection, every: Duration, shutdown: CancellationToken) {
    let metadata = json!({"actor": "dispatcher"});
    let mut orphans_swept: Option<std::time::Instant> = None;
    while !shutdown.is_cancelled() {
        match TaskStore::expire_leases(&db, SWEEP_BATCH, &metadata).await {
            Ok(0) => {}
            Ok(n) => tracing::warn!(
                recovered = n,
                "re-queued tasks whose worker stopped renewing its lease"
            ),
            Err(e) => {
                tracing::warn!(error = %turnq_core::error::chain(&e), "lease sweep failed")
            }
        }
        match TaskStore::expire_requests(&db, SWEEP_BATCH, &metadata).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                ended = n,
                "ended requests nobody answered by their deadline"
            ),
            Err(e) => {
                tracing::warn!(error = %turnq_core::error::chain(&e), "request deadline sweep failed")
            }
        }
        // Rare repairs (a cancellation's cascade cut short) read recent cancellations:
        // once a minute, not every round.
        if orphans_swept.is_none_or(|at| at.elapsed() >= ORPHAN_SWEEP_EVERY) {
            orphans_swept = Some(std::time::Instant::now());
            match TaskStore::cancel_orphans(&db, SWEEP_BATCH, &metadata).await {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(cancelled = n, "cancelled sub-tasks of cancelled parents")
                }
                Err(e) => tracing::warn!(error = %turnq_core::error::chain(&e),
                    "sub-task cancel sweep failed"),
            }
        }
        match TaskStore::resume_parents(&db, SWEEP_BATCH, &metadata).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(resumed = n, "re-opened parents whose sub-tasks all ended"),
            Err(e) => {
                tracing::warn!(error = %turnq_core::error::chain(&e), "sub-task sweep failed")
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.cancelled() => {}
        }
    }
}

/// Checks that Redis still holds the epoch this dispatcher saw; true when it lost its
/// data since the last round (flushed, or restarted without persistence), or when it
/// holds no epoch at all: then it lost its data while no dispatcher ran (or this is its
/// first use), and nothing Postgres counts as queued can be trusted to be in it.
/// Several dispatchers share one epoch: whoever finds it missing writes a new one (and
/// pushes everything again), and the others see it changed.
async fn check_epoch(
    conn: &mut ConnectionManager,
    names: &RedisNames,
    seen: &mut Option<String>,
) -> Result<bool, redis::RedisError> {
    let key = names.epoch();
    let current: Option<String> = redis::cmd("GET").arg(&key).query_async(conn).await?;
    let (current, created) = match current {
        Some(value) => (value, false),
        None => {
            let fresh = uuid::Uuid::new_v4().to_string();
            let set: Option<String> = redis::cmd("SET")
                .arg(&key)
                .arg(&fresh)
                .arg("NX")
                .query_async(conn)
                .await?;
            let value: Option<String> = redis::cmd("GET").arg(&key).query_async(conn).await?;
            (value.unwrap_or(fresh), set.is_some())
        }
    };
    let changed = seen.as_ref().is_some_and(|s| *s != current);
    if changed || created {
        tracing::warn!(
            "Redis holds none of the jobs turnq gave it (flushed or restarted without persistence, or first used): pushing every queued task again"
        );
    }
    *seen = Some(current);
    Ok(changed || created)
}

/// Dispatches until nothing is due or every (queue, agent) pair with due work holds
/// `--dispatch-max-queued` tasks in Redis. The bound is per pair, so an agent that no
/// worker runs fills only its own queue; one batch may overshoot a pair's bound by at most
/// `--dispatch-batch`.
async fn drain(
    db: &DatabaseConnection,
    redis: &ConnectionManager,
    names: &RedisNames,
    config: &DispatcherConfig,
    stale: turnq_core::time::Timestamp,
    redeliver_to: Option<&BTreeSet<(String, String)>>,
) -> Result<usize, turnq_core::Error> {
    let metadata = json!({"actor": "dispatcher"});
    let limit = config.dispatch_batch.max(1);
    let mut total = 0;
    loop {
        // Only what was queued since the cutoff is still in Redis (after a loss, the
        // cutoff is the moment of the loss, so nothing counts and everything is re-pushed).
        let full: Vec<(String, String)> = TaskStore::queued_by_pair(db, stale)
            .await?
            .into_iter()
            .filter(|(_, _, n)| *n as u64 >= config.dispatch_max_queued)
            .map(|(queue, agent, _)| (queue, agent))
            .collect();
        let pushed_to = std::sync::Mutex::new(BTreeSet::new());
        let pushed = TaskStore::dispatch_due_queued_before(
            db,
            limit,
            stale,
            &full,
            redeliver_to,
            &metadata,
            |due| push(db, redis.clone(), names, due, config, &pushed_to),
        )
        .await?;
        // After the commit: a woken worker's claim would otherwise wait for this round's
        // row locks.
        let pairs = pushed_to.into_inner().unwrap_or_else(|p| p.into_inner());
        wake(redis, names, pairs).await;
        total += pushed;
        if (pushed as u64) < limit {
            return Ok(total);
        }
    }
}

/// Pushes the due tasks onto the Redis queue of their (queue, agent) pair, one bulk push
/// per pair (only workers that run the task's agent consume it): one job per task, or
/// packed into jobs of several when the pair has a backlog ([`pack`]).
async fn push(
    db: &DatabaseConnection,
    conn: ConnectionManager,
    names: &RedisNames,
    due: Vec<DueTask>,
    config: &DispatcherConfig,
    pushed_to: &std::sync::Mutex<BTreeSet<(String, String)>>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    // A task pinned to a host that stopped would wait in a queue nobody consumes until
    // `--redeliver-after`: pinning reads the live workers now, and only when a task
    // names a worktree's host.
    let pinnable = if due.iter().any(|t| t.host.is_some()) {
        WorkerRegistry::pinned_pairs(db, PIN_LIVE).await?
    } else {
        BTreeSet::new()
    };
    // Per pair: (tasks already attempted, fresh tasks).
    let mut by_pair: BTreeMap<(String, String), (Vec<JobTask>, Vec<JobTask>)> = BTreeMap::new();
    for task in due {
        // A task whose session's worktree lives on a host with a live worker goes to
        // that host's pinned queue; when the host is gone, to any worker (which makes
        // the worktree again from its branch).
        let agent = match &task.host {
            Some(host) => {
                let pinned = pinned_agent(&task.agent, host);
                if pinnable.contains(&(task.queue.clone(), pinned.clone())) {
                    pinned
                } else {
                    task.agent
                }
            }
            None => task.agent,
        };
        let pair = by_pair.entry((task.queue, agent)).or_default();
        let job = JobTask {
            task_id: task.id,
            attempt: task.attempt,
        };
        if task.attempt > 0 {
            pair.0.push(job);
        } else {
            pair.1.push(job);
        }
    }
    for ((queue, agent), (resumed, fresh)) in by_pair {
        let queue_config = apalis_redis::Config::default()
            .queue(names.agent_queue(&queue, &agent))
            // Postgres holds results; apalis need not.
            .persist_results(false);
        let mut storage = RedisStorage::<Job>::new(conn.clone()).with_config(queue_config.clone());
        let failed = |e: String| format!("pushing to the Redis queue of {queue}/{agent}: {e}");
        // Tasks that already ran (handed back by a stopping worker, recovered from a
        // dead one, retried) were admitted before the backlog now waiting: they go to
        // the front of the queue, one per job, not behind it.
        if !resumed.is_empty() {
            let jobs = pack(resumed, usize::MAX, 1);
            let ids: Vec<ulid::Ulid> = jobs.iter().map(|_| ulid::Ulid::generate()).collect();
            let tasks: Vec<_> = jobs
                .into_iter()
                .zip(ids.iter().copied())
                .map(|(job, id)| TaskBuilder::new(job).task_id(TaskId::from_ulid(id)).build())
                .collect();
            storage
                .push_all(futures::stream::iter(tasks))
                .await
                .map_err(|e| failed(e.to_string()))?;
            to_front(&conn, &queue_config, &ids)
                .await
                .map_err(|e| failed(e.to_string()))?;
        }
        if !fresh.is_empty() {
            let jobs = pack(fresh, config.dispatch_pack_above, config.dispatch_job_size);
            storage
                .push_bulk(jobs)
                .await
                .map_err(|e| failed(e.to_string()))?;
        }
        pushed_to
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((queue, agent));
    }
    Ok(())
}

/// Moves the jobs `ids` (just pushed) to the front of their queue, in their order.
/// apalis-redis parks every pushed job in the queue's scheduled set until a worker's
/// fetch promotes it to the tail of the active list, behind whatever waits there; these
/// go straight to the head instead. A job a fetch has promoted meanwhile stays where it
/// is: an order, never a job, is what can differ.
async fn to_front(
    conn: &ConnectionManager,
    queue: &apalis_redis::Config,
    ids: &[ulid::Ulid],
) -> Result<(), redis::RedisError> {
    let script = redis::Script::new(
        r"for i = #ARGV, 1, -1 do
            if redis.call('ZREM', KEYS[1], ARGV[i]) == 1 then
              redis.call('LPUSH', KEYS[2], ARGV[i])
            end
          end
          redis.call('DEL', KEYS[3])
          redis.call('LPUSH', KEYS[3], 1)
          return 1",
    );
    let mut invocation = script.prepare_invoke();
    invocation
        .key(queue.scheduled_jobs_set())
        .key(queue.active_jobs_list())
        .key(queue.signal_list());
    for id in ids {
        invocation.arg(id.to_string());
    }
    let _: i64 = invocation.invoke_async(&mut conn.clone()).await?;
    Ok(())
}

/// Tells the idle workers of each pair that jobs were pushed, so they fetch now rather
/// than at their next poll. A failure is logged, never fatal: a lost wake-up only costs
/// that poll (and a Redis without pub/sub still delivers).
async fn wake(redis: &ConnectionManager, names: &RedisNames, pairs: BTreeSet<(String, String)>) {
    for (queue, agent) in pairs {
        let published: redis::RedisResult<i64> = redis::cmd("PUBLISH")
            .arg(names.wake_channel(&queue, &agent))
            .arg(1)
            .query_async(&mut redis.clone())
            .await;
        if let Err(e) = published {
            tracing::debug!(queue = %queue, agent = %agent, error = %e,
                "could not wake the workers; they find the jobs at their next poll");
        }
    }
}

/// The jobs for one pair's due tasks, in their order: one task per job when there are at
/// most `pack_above`, else as few jobs as it takes to keep about `pack_above` of them
/// (so workers still share the backlog), each of at most `job_size` tasks.
fn pack(tasks: Vec<JobTask>, pack_above: usize, job_size: usize) -> Vec<Job> {
    let per_job = if tasks.len() <= pack_above.max(1) {
        1
    } else {
        tasks
            .len()
            .div_ceil(pack_above.max(1))
            .clamp(1, job_size.max(1))
    };
    tasks
        .chunks(per_job)
        .map(|chunk| Job {
            tasks: chunk.to_vec(),
        })
        .collect()
}

/// LISTENs on `tasks_new` and wakes the dispatcher; it wakes it at every
/// (re)connection too, since a notification may have been missed in between.
async fn listen(pool: PgPool, wake: Arc<Notify>, shutdown: CancellationToken) {
    let listener = Listener {
        what: "the dispatcher's wake-up listener",
        meanwhile: "it polls every --dispatch-poll-interval meanwhile",
    };
    listener
        .run(&pool, &[CHANNEL], &shutdown, |notice| {
            if matches!(notice, Notice::Connected) {
                fail_point!("dispatcher.listener");
            }
            wake.notify_one();
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use turnq_core::{
        TaskId, WorkerId,
        event::{Released, TaskEvent},
        task::NewTaskRequest,
        time,
    };
    use turnq_testkit::{TestDb, TestRedis, eventually};

    fn settings() -> DispatcherConfig {
        DispatcherConfig {
            dispatch_poll_interval: Duration::from_millis(50),
            dispatch_batch: 500,
            dispatch_max_queued: 5000,
            dispatch_job_size: 16,
            dispatch_pack_above: 64,
            // Far beyond any test: only noticing the loss can re-push.
            redeliver_after: Duration::from_secs(3600),
        }
    }

    async fn submit(db: &DatabaseConnection, input: &str) -> TaskId {
        let new = NewTaskRequest {
            input: json!(input),
            ..Default::default()
        }
        .validate(time::now())
        .unwrap();
        TaskStore::submit(db, new, &json!({"actor": "test"}))
            .await
            .unwrap()
            .task
            .id
    }

    /// The jobs of the default queue, in the order workers take them: the active list
    /// from its head, then the scheduled set.
    async fn queued_task_ids(redis: &TestRedis, names: &RedisNames) -> Vec<String> {
        let config = apalis_redis::Config::default().queue(names.agent_queue("default", "script"));
        let mut conn = turnq_testkit::redis::connect(&redis.url).await.unwrap();
        let mut ids: Vec<String> = redis::cmd("LRANGE")
            .arg(config.active_jobs_list())
            .arg(0)
            .arg(-1)
            .query_async(&mut conn)
            .await
            .unwrap();
        // Then the scheduled set, which fetches promote behind the active list.
        let scheduled: Vec<String> = redis::cmd("ZRANGE")
            .arg(config.scheduled_jobs_set())
            .arg(0)
            .arg(-1)
            .query_async(&mut conn)
            .await
            .unwrap();
        ids.extend(scheduled);
        let mut tasks = Vec::new();
        for id in ids {
            let data: String = redis::cmd("HGET")
                .arg(config.job_data_hash())
                .arg(&id)
                .query_async(&mut conn)
                .await
                .unwrap();
            tasks.push(data);
        }
        tasks
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dispatcher_started_after_redis_lost_its_data_pushes_the_queued_tasks_again() {
        let test = TestDb::new().await.unwrap();
        let redis = TestRedis::new();
        let names = RedisNames::new(&redis.prefix);
        let id = submit(&test.db, "queued before the loss").await;
        // An earlier dispatcher pushed it and recorded `task.queued`; then Redis lost
        // everything while no dispatcher ran (here: the push went nowhere).
        let pushed = TaskStore::dispatch_due(&test.db, 10, Duration::ZERO, &json!({}), |_| async {
            Ok(())
        })
        .await
        .unwrap();
        assert_eq!(pushed, 1);

        let stop = CancellationToken::new();
        let tasks = Supervisor::new(stop.clone());
        tasks.spawn(
            "dispatcher",
            run(
                test.db.clone(),
                redis.url.clone(),
                names.clone(),
                settings(),
                tasks.clone(),
                stop.clone(),
            ),
        );
        eventually("the queued task is pushed again at once", || {
            let (redis, names) = (&redis, &names);
            async move {
                let jobs = queued_task_ids(redis, names).await;
                if jobs.iter().any(|job| job.contains(&id.to_string())) {
                    Ok(())
                } else {
                    Err(format!("jobs in Redis: {jobs:?}"))
                }
            }
        })
        .await
        .unwrap();
        stop.cancel();
        tasks.wait().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dead_workers_tasks_are_recovered_while_redis_hangs() {
        let test = TestDb::new().await.unwrap();
        // A "Redis" that accepts connections and never answers: every dispatch round
        // waits on it.
        let hanging = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("redis://{}", hanging.local_addr().unwrap());
        let held = tokio::spawn(async move {
            let mut sockets = Vec::new();
            while let Ok((socket, _)) = hanging.accept().await {
                sockets.push(socket);
            }
        });
        // A worker claimed a task and died: its lease runs out at once.
        let id = submit(&test.db, "orphan").await;
        let worker = WorkerId("dead".into());
        TaskStore::claim(&test.db, id, 0, &worker, Duration::ZERO, &json!({}))
            .await
            .unwrap()
            .unwrap();

        let stop = CancellationToken::new();
        let tasks = Supervisor::new(stop.clone());
        let names = RedisNames::new("turnq-test-hanging");
        tasks.spawn(
            "dispatcher",
            run(
                test.db.clone(),
                url,
                names,
                settings(),
                tasks.clone(),
                stop.clone(),
            ),
        );
        eventually("the expired lease is recovered without Redis", || {
            let db = test.db.clone();
            async move {
                let task = TaskStore::get(&db, id).await.map_err(|e| e.to_string())?;
                if task.state == turnq_core::task::TaskState::Pending && task.attempt == 1 {
                    Ok(())
                } else {
                    Err(format!("{:?} at attempt {}", task.state, task.attempt))
                }
            }
        })
        .await
        .unwrap();
        stop.cancel();
        held.abort();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_task_handed_back_goes_to_the_front_of_its_queue() {
        let test = TestDb::new().await.unwrap();
        let redis = TestRedis::new();
        let names = RedisNames::new(&redis.prefix);
        let conn = apalis_redis::connect(redis.url.as_str()).await.unwrap();
        let stale = time::now() - chrono::TimeDelta::hours(1);
        // A backlog is in Redis, promoted to the active list by the workers' fetches.
        for i in 0..5 {
            submit(&test.db, &format!("backlog {i}")).await;
        }
        assert_eq!(
            drain(&test.db, &conn, &names, &settings(), stale, None,)
                .await
                .unwrap(),
            5
        );
        let queue = apalis_redis::Config::default().queue(names.agent_queue("default", "script"));
        let mut raw = turnq_testkit::redis::connect(&redis.url).await.unwrap();
        let promote = redis::Script::new(
            r"local ids = redis.call('ZRANGE', KEYS[1], 0, -1)
              for _, id in ipairs(ids) do redis.call('RPUSH', KEYS[2], id) end
              redis.call('DEL', KEYS[1])
              return #ids",
        );
        let promoted: i64 = promote
            .key(queue.scheduled_jobs_set())
            .key(queue.active_jobs_list())
            .invoke_async(&mut raw)
            .await
            .unwrap();
        assert_eq!(promoted, 5);

        // A worker claimed another task and handed it back on its way out.
        let handed_back = submit(&test.db, "handed back").await;
        let worker = WorkerId("w".into());
        let meta = json!({"actor": "test"});
        TaskStore::claim(
            &test.db,
            handed_back,
            0,
            &worker,
            Duration::from_secs(60),
            &meta,
        )
        .await
        .unwrap()
        .unwrap();
        let released = TaskEvent::Released(Released {
            attempt: 1,
            worker_id: "w".into(),
            reason: "the worker is stopping".into(),
        });
        TaskStore::record(&test.db, handed_back, 1, &worker, &released, &meta)
            .await
            .unwrap();
        assert_eq!(
            drain(&test.db, &conn, &names, &settings(), stale, None,)
                .await
                .unwrap(),
            1
        );
        let jobs = queued_task_ids(&redis, &names).await;
        assert_eq!(jobs.len(), 6, "{jobs:?}");
        assert!(
            jobs[0].contains(&handed_back.to_string()),
            "first in line, not behind the backlog: {jobs:?}"
        );
    }

    fn tasks(n: usize) -> Vec<JobTask> {
        (0..n)
            .map(|_| JobTask {
                task_id: TaskId::new(),
                attempt: 0,
            })
            .collect()
    }

    #[test]
    fn a_small_round_sends_one_task_per_job_and_a_backlog_is_packed_in_order() {
        let few = tasks(64);
        let jobs = pack(few.clone(), 64, 16);
        assert_eq!(jobs.len(), 64);
        assert!(jobs.iter().all(|j| j.tasks.len() == 1));

        let many = tasks(500);
        let jobs = pack(many.clone(), 64, 16);
        assert_eq!(jobs.iter().map(|j| j.tasks.len()).max(), Some(8));
        let flat: Vec<JobTask> = jobs.into_iter().flat_map(|j| j.tasks).collect();
        assert_eq!(flat, many, "every task once, in order");

        let jobs = pack(tasks(5000), 64, 16);
        assert!(jobs.iter().all(|j| j.tasks.len() <= 16));
        assert_eq!(jobs.iter().map(|j| j.tasks.len()).sum::<usize>(), 5000);

        let jobs = pack(tasks(500), 64, 1);
        assert_eq!(jobs.len(), 500, "job size 1 turns packing off");
    }
}

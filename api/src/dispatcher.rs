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
    time::{Duration, Instant},
};

use apalis::prelude::TaskSink;
use apalis_redis::{ConnectionManager, RedisStorage};
use sea_orm::{DatabaseConnection, sqlx::PgPool};
use serde_json::json;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use turnq_core::{
    delivery::{Job, JobTask, RedisNames},
    fault::fail_point,
    listen::{Listener, Notice, postgres_pool},
    retry::Backoff,
    supervise::Supervisor,
    task::{CHANNEL_TASKS_NEW as CHANNEL, DueTask, TaskStore},
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
    let mut redis: Option<ConnectionManager> = None;
    let mut epoch: Option<String> = None;
    let mut failures = 0u32;
    let mut backoff = Backoff::reconnect();
    let mut last_sweep: Option<Instant> = None;
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
        // The sweep runs at most once per poll interval, not on every notification: a
        // lease is seconds long, and the round that starts a fresh task should not wait
        // for it.
        if last_sweep.is_none_or(|at: Instant| at.elapsed() >= config.dispatch_poll_interval) {
            last_sweep = Some(Instant::now());
            match TaskStore::expire_leases(&db, SWEEP_BATCH, &json!({"actor": "dispatcher"})).await
            {
                Ok(0) => {}
                Ok(n) => tracing::warn!(
                    recovered = n,
                    "re-queued tasks whose worker stopped renewing its lease"
                ),
                Err(e) => {
                    tracing::warn!(error = %turnq_core::error::chain(&e), "lease sweep failed")
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
                    drain(&db, conn, &names, &config, stale).await
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

/// Checks that Redis still holds the epoch this dispatcher saw; true when it lost its
/// data since the last round (flushed, or restarted without persistence). Several
/// dispatchers share one epoch: whoever finds it missing writes a new one, and the
/// others see it changed.
async fn check_epoch(
    conn: &mut ConnectionManager,
    names: &RedisNames,
    seen: &mut Option<String>,
) -> Result<bool, redis::RedisError> {
    let key = names.epoch();
    let current: Option<String> = redis::cmd("GET").arg(&key).query_async(conn).await?;
    let current = match current {
        Some(value) => value,
        None => {
            let fresh = uuid::Uuid::new_v4().to_string();
            let _: () = redis::cmd("SET")
                .arg(&key)
                .arg(&fresh)
                .arg("NX")
                .query_async(conn)
                .await?;
            let value: Option<String> = redis::cmd("GET").arg(&key).query_async(conn).await?;
            value.unwrap_or(fresh)
        }
    };
    let lost = seen.as_ref().is_some_and(|s| *s != current);
    if lost {
        tracing::warn!(
            "Redis lost its data (flushed or restarted without persistence): pushing every queued task again"
        );
    }
    *seen = Some(current);
    Ok(lost)
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
        let pushed =
            TaskStore::dispatch_due_queued_before(db, limit, stale, &full, &metadata, |due| {
                push(redis.clone(), names, due, config, &pushed_to)
            })
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
    conn: ConnectionManager,
    names: &RedisNames,
    due: Vec<DueTask>,
    config: &DispatcherConfig,
    pushed_to: &std::sync::Mutex<BTreeSet<(String, String)>>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mut by_pair: BTreeMap<(String, String), Vec<JobTask>> = BTreeMap::new();
    for task in due {
        by_pair
            .entry((task.queue, task.agent))
            .or_default()
            .push(JobTask {
                task_id: task.id,
                attempt: task.attempt,
            });
    }
    for ((queue, agent), tasks) in by_pair {
        let jobs = pack(tasks, config.dispatch_pack_above, config.dispatch_job_size);
        let config = apalis_redis::Config::default()
            .queue(names.agent_queue(&queue, &agent))
            // Postgres holds results; apalis need not.
            .persist_results(false);
        let mut storage = RedisStorage::<Job>::new(conn.clone()).with_config(config);
        storage
            .push_bulk(jobs)
            .await
            .map_err(|e| format!("pushing to the Redis queue of {queue}/{agent}: {e}"))?;
        pushed_to
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((queue, agent));
    }
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
    use turnq_core::TaskId;

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

//! Taking jobs from Redis with apalis-redis: one supervised consumer per queue, a shared
//! limit on running turns, and the cleanup apalis does not do.
//!
//! Redis is delivery only. A job says "try task X at attempt N"; the handler claims it
//! in Postgres and acknowledges the job whatever the outcome (every outcome is recorded
//! there), so apalis' own retries and attempt counts never run a turn.
//!
//! Sharp edges of apalis-redis 1.0 this module is built around (see its source):
//! - Any Redis error in register, heartbeat, fetch or acknowledge makes the backend
//!   dead and ends the apalis worker, dropping its in-flight handler futures. So a
//!   supervisor rebuilds the connection and a new apalis worker in a loop with backoff,
//!   each under a new name (`{worker_id}:{queue}:{generation}`: a reused name would
//!   inherit, or collide with, a dead consumer's in-flight set). And turns run on tasks
//!   of their own (a [`TaskTracker`]), so a Redis failure never aborts a running turn:
//!   its result still goes to Postgres; only the acknowledgement is lost, and the
//!   re-delivery that follows is a harmless duplicate.
//! - An idle consumer whose fetch came back empty sleeps until its next heartbeat; the
//!   backend is wrapped with `poll_with_interval` so new jobs are seen within
//!   `--poll-interval`.
//! - Acknowledging (`persist_results`) moves the job id to `{queue}:done` and never
//!   deletes its data or metadata; without it a job is never acknowledged at all and is
//!   re-enqueued as orphaned. A cleanup loop removes acknowledged jobs every
//!   [`CLEANUP_EVERY`], expires the metadata of consumers that die without a goodbye,
//!   and a consumer that stops (or died) is retired: the jobs it fetched but never
//!   started go back to the queue and its name leaves the workers set (apalis' own
//!   close removes the wrong member).
//! - apalis' connection manager times responses out after 500 ms, short for a loaded
//!   box: consumers use [`RESPONSE_TIMEOUT`].
//!
//! All queues of a process share one semaphore of `--concurrency` permits, taken in the
//! handler before the claim (one per task), and each apalis worker has the same
//! `.concurrency`, so a consumer never has more jobs in hand than the process could run.
//! A packed job (several tasks, only under a backlog) can hold tasks that wait for a
//! slot here; should they wait past `--redeliver-after`, the dispatcher pushes them
//! again for another worker (the conditional claim makes the copy harmless).
//!
//! A gate (a `watch` of "may fetch", in the worker: "Postgres answers") pauses every
//! consumer while it is shut (apalis' `WorkerContext::pause`: no fetch, while its
//! Redis heartbeat goes on). A job whose claim found Postgres unreachable
//! ([`Handled::PostgresUnavailable`]), or that was fetched or waiting for a slot when
//! the gate shut, is pushed back onto its queue unstarted: never acknowledged and
//! dropped. Only a consumer at its concurrency limit can still hold part of a fetched
//! batch when it pauses; that waits in it until it resumes (or, should the pause
//! outlast apalis' dead-consumer detection, is re-delivered elsewhere as well: a
//! duplicate, which the conditional claim makes harmless).

use std::{
    collections::{BTreeMap, HashMap},
    convert::Infallible,
    sync::{Arc, Mutex},
    time::Duration,
};

use apalis::prelude::{
    BackendExt, Data, Event, EventListenerExt, Strategy, TaskSink, WorkerBuilder, WorkerBuilderExt,
    WorkerContext, WorkerError as ApalisError,
};
use apalis_redis::{Client, ConnectionManager, RedisStorage};
use futures::future::BoxFuture;
use redis::aio::ConnectionManagerConfig;
use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore, watch},
    task::JoinHandle,
    time::{Instant, sleep, timeout},
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use turnq_core::{WorkerId, delivery::Job, delivery::RedisNames};

use crate::{runner::error_chain, wake::Wake};

/// apalis' own heartbeat: how often a consumer tells Redis it is alive and re-enqueues
/// the in-flight jobs of consumers that stopped beating. Postgres leases, not this,
/// decide who owns a task, so it only bounds how long a dead consumer's jobs wait.
///
/// Short, because a killed worker's fetched-but-unclaimed jobs wait this long times
/// `APALIS_MISSED_HEARTBEATS` before another consumer re-enqueues them (the lease sweep
/// only recovers tasks that were claimed). A live consumer that misses beats while all
/// its slots are busy may see its waiting jobs re-delivered: harmless, the claim is
/// conditional.
const APALIS_HEARTBEAT: Duration = Duration::from_secs(2);
/// Missed apalis heartbeats before a consumer's in-flight jobs are re-enqueued (8 s).
const APALIS_MISSED_HEARTBEATS: usize = 4;
/// The most jobs one fetch takes; fewer when the process has few slots per queue, so a
/// busy consumer does not sit on jobs another worker could start now.
const MAX_BATCH: usize = 10;
/// Redis answers slower than this count as failures (apalis' default is 500 ms).
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(2);
/// Backoff between rebuilding a failed consumer: doubling from the first to the second.
const REBUILD_BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(5));
/// A consumer that ran this long was healthy: the next failure starts the backoff over.
const HEALTHY_RUN: Duration = Duration::from_secs(30);
/// How often acknowledged jobs are removed from Redis.
const CLEANUP_EVERY: Duration = Duration::from_secs(10);
/// Jobs removed per cleanup script call, and calls per queue per round at most.
const CLEANUP_BATCH: usize = 500;
const CLEANUP_ROUNDS: usize = 20;
/// Consumer metadata expires this long after its consumer stops renewing it.
const METADATA_TTL: Duration = Duration::from_secs(600);
/// How long stopping waits for each consumer to hand back and close.
const CLOSE_PATIENCE: Duration = Duration::from_secs(10);
/// How soon a gate change that apalis refused (its worker had not started yet) is
/// applied again.
const GATE_RETRY: Duration = Duration::from_millis(10);

/// Removes acknowledged (and dead) jobs with their data and metadata.
const CLEANUP_SCRIPT: &str = r"
-- KEYS[1]: the done set, KEYS[2]: the dead set, KEYS[3]: the job data hash,
-- KEYS[4]: the job metadata key prefix. ARGV[1]: the most ids to take from each set.
local removed = 0
for _, set in ipairs({KEYS[1], KEYS[2]}) do
  local ids = redis.call('SPOP', set, tonumber(ARGV[1]))
  for _, id in ipairs(ids) do
    redis.call('HDEL', KEYS[3], id)
    redis.call('DEL', KEYS[4] .. ':' .. id)
  end
  removed = removed + #ids
end
return removed
";

/// Retires a consumer that stopped or died: the jobs it fetched but did not finish go
/// back to the queue, and its name and metadata leave Redis.
const RETIRE_SCRIPT: &str = r"
-- KEYS[1]: the consumer's in-flight set, KEYS[2]: the active list, KEYS[3]: the signal
-- list, KEYS[4]: the workers set, KEYS[5]: the consumer's metadata hash.
-- ARGV[1]: the consumer's name.
local ids = redis.call('SMEMBERS', KEYS[1])
for i = 1, #ids, 1000 do
  redis.call('RPUSH', KEYS[2], unpack(ids, i, math.min(i + 999, #ids)))
end
if #ids > 0 then
  redis.call('DEL', KEYS[1])
  redis.call('DEL', KEYS[3])
  redis.call('LPUSH', KEYS[3], 1)
end
redis.call('ZREM', KEYS[4], ARGV[1])
redis.call('DEL', KEYS[5])
return #ids
";

/// What a consumer does with a job: claim its tasks and run their turns, each holding
/// one of the slots it is given (one per task) until its turn ends. It owns the outcome.
pub(crate) type JobHandler =
    Arc<dyn Fn(Job, Vec<OwnedSemaphorePermit>) -> BoxFuture<'static, Handled> + Send + Sync>;

/// What became of a job, as far as its queue is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Handled {
    /// The outcome is recorded in Postgres (or the task is still queued there, and is
    /// delivered again): acknowledge the job.
    Done,
    /// Postgres could not be reached, so nothing was started: put the job back on its
    /// queue (and acknowledge the delivery that brought it).
    PostgresUnavailable,
}

/// One Redis queue a worker consumes: the tasks of `agent` in the turnq queue `queue`
/// ([`RedisNames::agent_queue`]).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Delivery {
    pub(crate) queue: String,
    pub(crate) agent: String,
}

impl Delivery {
    pub(crate) fn new(queue: impl Into<String>, agent: impl Into<String>) -> Self {
        Delivery {
            queue: queue.into(),
            agent: agent.into(),
        }
    }

    /// Every (queue, agent) pair of `queues` and `agents`.
    pub(crate) fn pairs(queues: &[String], agents: &[&str]) -> Vec<Delivery> {
        queues
            .iter()
            .flat_map(|q| agents.iter().map(move |a| Delivery::new(q.as_str(), *a)))
            .collect()
    }
}

/// `queue:agent`: how logs, consumer names and the live map name a delivery.
impl std::fmt::Display for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.queue, self.agent)
    }
}

/// Where and how to consume.
#[derive(Clone, Debug)]
pub(crate) struct QueueSettings {
    pub(crate) redis_url: String,
    pub(crate) names: RedisNames,
    /// The (queue, agent) pairs to consume, one consumer each.
    pub(crate) queues: Vec<Delivery>,
    pub(crate) concurrency: usize,
    pub(crate) poll_interval: Duration,
    pub(crate) worker_id: WorkerId,
}

impl QueueSettings {
    /// apalis' settings for one (queue, agent) pair.
    pub(crate) fn apalis_config(&self, delivery: &Delivery) -> apalis_redis::Config {
        let per_queue = self.concurrency / self.queues.len().max(1);
        apalis_redis::Config::default()
            .queue(self.names.agent_queue(&delivery.queue, &delivery.agent))
            .heartbeat_interval(APALIS_HEARTBEAT)
            .missed_heartbeats(APALIS_MISSED_HEARTBEATS)
            .batch_size(per_queue.clamp(1, MAX_BATCH))
            // The acknowledgement: without it a handled job stays in flight forever.
            .persist_results(true)
            // Locks only mark metadata (and cost an O(queue) LREM per job); the
            // in-flight set and Postgres' claim already say who has the job.
            .lock_tasks(false)
            // Nobody subscribes to apalis' pub/sub; publishing per job is waste.
            .emit_events(false)
    }
}

struct Shared {
    settings: QueueSettings,
    handler: JobHandler,
    /// One permit per turn this process may run, shared by all its queues.
    slots: Arc<Semaphore>,
    /// Every job being handled, so shutdown can wait for them and a Redis failure that
    /// ends a consumer cannot abort them.
    jobs: TaskTracker,
    /// Cancelled when the worker stops taking jobs.
    stop: CancellationToken,
    /// While false, consumers are paused and jobs in hand go back unstarted.
    gate: watch::Receiver<bool>,
    /// The live consumer of each queue, whose metadata the cleanup keeps from expiring.
    live: Mutex<BTreeMap<String, String>>,
    /// Each queue's wake-up, signalled when the dispatcher pushes to it.
    wakes: HashMap<String, Wake>,
}

impl Shared {
    fn gate_open(&self) -> bool {
        *self.gate.borrow()
    }

    fn set_live(&self, queue: &str, name: Option<String>) {
        // A poisoned lock only means a panic elsewhere; the map is still consistent.
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        match name {
            Some(name) => live.insert(queue.to_owned(), name),
            None => live.remove(queue),
        };
    }

    /// apalis' settings for each queue.
    fn configs(&self) -> Vec<(String, apalis_redis::Config)> {
        self.settings
            .queues
            .iter()
            .map(|d| (d.to_string(), self.settings.apalis_config(d)))
            .collect()
    }

    fn live(&self) -> Vec<(String, String)> {
        let live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        live.iter().map(|(q, n)| (q.clone(), n.clone())).collect()
    }
}

/// The running consumers of a worker.
pub(crate) struct Consumers {
    shared: Arc<Shared>,
    supervisors: Vec<JoinHandle<()>>,
    cleanup: JoinHandle<()>,
}

impl Consumers {
    /// Starts one supervised consumer per queue and the cleanup; they take jobs until
    /// `stop` is cancelled, and only while `gate` is true.
    pub(crate) fn start(
        settings: QueueSettings,
        handler: JobHandler,
        gate: watch::Receiver<bool>,
        stop: CancellationToken,
    ) -> Consumers {
        let wakes = crate::wake::start(
            &settings.redis_url,
            &settings.names,
            &settings.queues,
            stop.clone(),
        );
        let shared = Arc::new(Shared {
            wakes,
            slots: Arc::new(Semaphore::new(settings.concurrency)),
            settings,
            handler,
            jobs: TaskTracker::new(),
            stop,
            gate,
            live: Mutex::default(),
        });
        let supervisors = shared
            .settings
            .queues
            .iter()
            .map(|delivery| tokio::spawn(supervise(shared.clone(), delivery.clone())))
            .collect();
        let cleanup = tokio::spawn(clean(shared.clone()));
        Consumers {
            shared,
            supervisors,
            cleanup,
        }
    }

    /// Jobs being handled now (claiming or running a turn).
    pub(crate) fn running(&self) -> usize {
        self.shared.jobs.len()
    }

    /// Resolves when every job handed out has been handled. Call after `stop`: jobs
    /// that arrive later are handed back, never started.
    pub(crate) async fn finished(&self) {
        self.shared.jobs.close();
        self.shared.jobs.wait().await;
    }

    /// Waits (within limits) for the consumers to acknowledge, hand back and close,
    /// then cleans up once more so a stopped worker leaves no acknowledged jobs behind.
    pub(crate) async fn join(self) {
        for supervisor in self.supervisors {
            let abort = supervisor.abort_handle();
            if timeout(CLOSE_PATIENCE, supervisor).await.is_err() {
                tracing::warn!(
                    "a Redis consumer did not close in time; abandoning it (its jobs are re-delivered)"
                );
                abort.abort();
            }
        }
        self.cleanup.abort();
        let last_round = async {
            let mut conn = connect(&self.shared.settings.redis_url).await?;
            clean_once(&mut conn, &self.shared.configs(), &[]).await
        };
        match timeout(CLOSE_PATIENCE, last_round).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::debug!(error = %e,
                "the last Redis cleanup failed; another worker's cleanup will do it"),
            Err(_) => tracing::debug!(
                "the last Redis cleanup timed out; another worker's cleanup will do it"
            ),
        }
    }
}

/// The URL with any password replaced, for logs.
pub(crate) fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

pub(crate) async fn connect(url: &str) -> Result<ConnectionManager, redis::RedisError> {
    let client = Client::open(url)?;
    let config = ConnectionManagerConfig::new()
        .set_response_timeout(Some(RESPONSE_TIMEOUT))
        .set_connection_timeout(Some(CONNECTION_TIMEOUT))
        // Fail fast: the supervisor retries with its own backoff and says so in the log.
        .set_number_of_retries(1);
    client.get_connection_manager_with_config(config).await
}

/// Sleeps `wait` unless `stop` comes first; false when stopping.
async fn pause(wait: Duration, stop: &CancellationToken) -> bool {
    tokio::select! {
        _ = sleep(wait) => true,
        _ = stop.cancelled() => false,
    }
}

/// Keeps a consumer running on `delivery` until `stop`, rebuilding it after any failure.
async fn supervise(shared: Arc<Shared>, delivery: Delivery) {
    let settings = &shared.settings;
    let config = settings.apalis_config(&delivery);
    // `queue:agent`, in logs, the consumer's name and the live map.
    let queue = delivery.to_string();
    let url = redact(&settings.redis_url);
    let (first, most) = REBUILD_BACKOFF;
    let mut backoff = first;
    let mut generation: u64 = 0;
    let mut failures: u32 = 0;
    // Consumers that died: retired once Redis answers again.
    let mut dead: Vec<String> = Vec::new();
    while !shared.stop.is_cancelled() {
        let mut conn = match connect(&settings.redis_url).await {
            Ok(conn) => conn,
            Err(e) => {
                failures += 1;
                // Say it at once, then about once a minute, not every few seconds.
                if failures == 1 || failures.is_multiple_of(12) {
                    tracing::warn!(url = %url, queue = %queue, failures, error = %e,
                        "cannot reach Redis at {url}: taking no jobs from queue {queue} until it answers \
                         (start it with: redis-server --daemonize yes)");
                } else {
                    tracing::debug!(url = %url, queue = %queue, failures, error = %e, "Redis still unreachable");
                }
                if !pause(backoff, &shared.stop).await {
                    break;
                }
                backoff = (backoff * 2).min(most);
                continue;
            }
        };
        if failures > 0 {
            tracing::info!(url = %url, queue = %queue, "Redis answers again");
            failures = 0;
        }
        retire(&mut conn, &config, &mut dead).await;

        generation += 1;
        let name = format!("{}:{queue}:{generation}", settings.worker_id);
        // Named so `CLIENT LIST` shows which consumer holds which connection.
        let named: redis::RedisResult<()> = redis::cmd("CLIENT")
            .arg("SETNAME")
            .arg(&name)
            .query_async(&mut conn)
            .await;
        if let Err(e) = named {
            tracing::debug!(consumer = %name, error = %e, "could not name the Redis connection");
        }
        shared.set_live(&queue, Some(name.clone()));
        let started = Instant::now();
        let result = consume(&shared, &queue, &name, conn.clone(), config.clone()).await;
        shared.set_live(&queue, None);
        dead.push(name.clone());
        // Keep the list bounded through a long outage: apalis' orphan detection
        // re-enqueues the jobs of any consumer left in it.
        if dead.len() > 100 {
            dead.remove(0);
        }

        if shared.stop.is_cancelled() {
            if let Err(e) = &result {
                tracing::warn!(queue = %queue, consumer = %name, error = %error_chain(e),
                    "the Redis consumer failed while stopping; its unacknowledged jobs are re-delivered");
            }
            // Everything it finished is acknowledged; what it fetched but never
            // started goes back to the queue for other workers.
            retire(&mut conn, &config, &mut dead).await;
            break;
        }
        match result {
            Ok(()) => tracing::warn!(queue = %queue, consumer = %name,
                "the Redis consumer stopped by itself; starting a new one"),
            Err(e) => tracing::warn!(queue = %queue, consumer = %name, error = %error_chain(&e),
                retry_in_ms = backoff.as_millis() as u64,
                "Redis delivery failed; rebuilding the consumer (running turns are not affected)"),
        }
        if started.elapsed() >= HEALTHY_RUN {
            backoff = first;
        }
        if !pause(backoff, &shared.stop).await {
            break;
        }
        backoff = (backoff * 2).min(most);
    }
}

/// Retires the consumers named in `dead`; the ones Redis did not take stay listed.
async fn retire(
    conn: &mut ConnectionManager,
    config: &apalis_redis::Config,
    dead: &mut Vec<String>,
) {
    let script = redis::Script::new(RETIRE_SCRIPT);
    let mut still_dead = Vec::new();
    for name in dead.drain(..) {
        let requeued: Result<u64, _> = script
            .key(format!("{}:{name}", config.inflight_jobs_set()))
            .key(config.active_jobs_list())
            .key(config.signal_list())
            .key(config.workers_set())
            .key(metadata_key(config, &name))
            .arg(&name)
            .invoke_async(conn)
            .await;
        match requeued {
            Ok(0) => tracing::debug!(consumer = %name, "retired the consumer"),
            Ok(n) => tracing::info!(consumer = %name, requeued = n,
                "retired the consumer; its unstarted jobs went back to the queue"),
            Err(e) => {
                tracing::debug!(consumer = %name, error = %e, "retiring the consumer failed; trying later");
                still_dead.push(name);
            }
        }
    }
    *dead = still_dead;
}

/// apalis-redis' key for a consumer's metadata (`Config::worker_metadata_key`, which
/// needs a live `WorkerContext`).
fn metadata_key(config: &apalis_redis::Config, name: &str) -> String {
    format!("{}:workers:metadata:{name}", config.queue)
}

/// Runs one apalis consumer on `conn` until `stop` (Ok) or a Redis failure (Err).
async fn consume(
    shared: &Arc<Shared>,
    queue: &str,
    name: &str,
    conn: ConnectionManager,
    config: apalis_redis::Config,
) -> Result<(), ApalisError> {
    let context = Arc::new(QueueContext {
        shared: shared.clone(),
        queue: queue.to_owned(),
        conn: conn.clone(),
        config: config.clone(),
    });
    // Fetch when the dispatcher says it pushed, and every poll interval regardless.
    let wake = shared.wakes.get(queue).cloned().unwrap_or_default();
    let backend = RedisStorage::<Job>::new(conn)
        .with_config(config)
        .poll_with_strategy(
            Strategy::new()
                .stream(wake)
                .interval(shared.settings.poll_interval),
        );
    let gate_at_start = shared.gate.clone();
    let worker = WorkerBuilder::new(name)
        .backend(backend)
        .concurrency(shared.settings.concurrency)
        .data(context)
        // Paused as it starts, before its first fetch, if the gate is shut: apalis
        // refuses to pause a worker that has not started, and `follow_gate` could
        // only catch up after a fetch.
        .on_event(move |ctx, event| {
            if matches!(event, Event::Start) && !*gate_at_start.borrow() {
                let _ = ctx.pause();
            }
        })
        .build(deliver);
    let stop = shared.stop.clone();
    let gate = shared.gate.clone();
    worker
        .run_with_ctx(move |ctx| follow_gate(ctx, gate.clone(), stop.clone()))
        .await
}

/// Until `stop`: pauses the consumer while `gate` is shut and resumes it when it opens;
/// then stops it.
async fn follow_gate(
    ctx: WorkerContext,
    mut gate: watch::Receiver<bool>,
    stop: CancellationToken,
) -> Result<(), ApalisError> {
    loop {
        let open = *gate.borrow_and_update();
        // apalis refuses to pause a worker that has not started yet: try again shortly.
        let applied = ctx.is_shutting_down()
            || if open {
                !ctx.is_paused() || ctx.resume().is_ok()
            } else {
                ctx.is_paused() || ctx.pause().is_ok()
            };
        tokio::select! {
            _ = stop.cancelled() => break,
            changed = gate.changed() => {
                if changed.is_err() {
                    // The gate is gone with its owner: keep the last state until stop.
                    stop.cancelled().await;
                    break;
                }
            }
            _ = sleep(GATE_RETRY), if !applied => {}
        }
    }
    // apalis refuses to stop a worker that has not started yet (this future is polled
    // before the worker's first poll): wait for it to start, which is its next poll.
    while ctx.stop().is_err() {
        sleep(GATE_RETRY).await;
    }
    Ok(())
}

/// What the handler of one consumer needs.
struct QueueContext {
    shared: Arc<Shared>,
    queue: String,
    conn: ConnectionManager,
    config: apalis_redis::Config,
}

impl QueueContext {
    /// Puts a job the worker will not start back on its queue, so another worker takes
    /// it now rather than after the dispatcher's re-delivery period.
    async fn hand_back(&self, job: Job) {
        let mut storage =
            RedisStorage::<Job>::new(self.conn.clone()).with_config(self.config.clone());
        match storage.push(job.clone()).await {
            Ok(()) => {
                tracing::debug!(tasks = job.tasks.len(), queue = %self.queue, "handed an unstarted job back")
            }
            Err(e) => tracing::warn!(tasks = ?job.tasks, queue = %self.queue, error = %e,
                "could not hand an unstarted job back to Redis; the dispatcher delivers it again later"),
        }
    }
}

/// The apalis handler. Always Ok: the outcome is in Postgres (or the task is still
/// queued there), and an error would make apalis retry behind turnq's back.
///
/// A job of several tasks takes as many slots as are free (waiting for one if none is)
/// and claims that many of its tasks together, then the next ones as slots free up; the
/// job is acknowledged when all its turns have ended. Its waiting tasks stay in this
/// worker's hand meanwhile (a packed job is at most `--dispatch-job-size` tasks).
/// Tasks not yet started when the worker stops or Postgres goes away go back to the
/// queue as one job.
async fn deliver(job: Job, context: Data<Arc<QueueContext>>) -> Result<(), Infallible> {
    let context: Arc<QueueContext> = (*context).clone();
    let shared = &context.shared;
    if !shared.gate_open() {
        // Fetched before the pause took effect.
        context.hand_back(job).await;
        return Ok(());
    }
    let mut rest = job.tasks;
    let mut handles = Vec::new();
    while !rest.is_empty() {
        let mut gate = shared.gate.clone();
        let shut = async move {
            // The guard `wait_for` returns is dropped at once: it is not `Send`. A gate
            // whose sender is gone stays as it was: open.
            if gate.wait_for(|open| !*open).await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        // As many slots as the job has tasks and the process has free (at least one),
        // taken together: the job's tasks are then claimed in one statement. Asking for
        // more than are free would make every other job wait behind this one (the
        // semaphore is fair); taking one and hoping for more left every job of a backlog
        // claiming its tasks one by one.
        let wanted = rest
            .len()
            .min(shared.slots.available_permits().max(1))
            .min(shared.settings.concurrency.max(1));
        let taken = tokio::select! {
            biased;
            _ = shared.stop.cancelled() => None,
            _ = shut => None,
            slots = shared.slots.clone().acquire_many_owned(wanted as u32) => slots.ok(),
        };
        let Some(mut taken) = taken else {
            // Stopping, or Postgres went away, while these waited for a slot: they were
            // never started.
            context
                .hand_back(Job {
                    tasks: std::mem::take(&mut rest),
                })
                .await;
            break;
        };
        // One permit per task, so each turn frees its own slot when it ends.
        let mut slots = Vec::with_capacity(wanted);
        while let Some(one) = taken.split(1) {
            slots.push(one);
        }
        let chunk = Job {
            tasks: rest.drain(..slots.len()).collect(),
        };
        let handler = shared.handler.clone();
        let stop = shared.stop.clone();
        let job_context = context.clone();
        // The turns run on a task of their own: if this consumer dies (and drops this
        // future), they still finish and record their results.
        handles.push(shared.jobs.spawn(async move {
            if stop.is_cancelled() || !job_context.shared.gate_open() {
                drop(slots);
                job_context.hand_back(chunk).await;
                return;
            }
            match handler(chunk.clone(), slots).await {
                Handled::Done => {}
                Handled::PostgresUnavailable => job_context.hand_back(chunk).await,
            }
        }));
    }
    for handled in handles {
        if let Err(e) = handled.await {
            tracing::error!(queue = %context.queue, error = %e, "handling a job panicked");
        }
    }
    Ok(())
}

/// Every [`CLEANUP_EVERY`] until `stop`: removes acknowledged jobs and keeps the live
/// consumers' metadata from expiring.
async fn clean(shared: Arc<Shared>) {
    let configs = shared.configs();
    let mut conn: Option<ConnectionManager> = None;
    loop {
        if !pause(CLEANUP_EVERY, &shared.stop).await {
            return;
        }
        if conn.is_none() {
            // The supervisors report an unreachable Redis; stay quiet here.
            conn = connect(&shared.settings.redis_url).await.ok();
        }
        let Some(c) = conn.as_mut() else { continue };
        let live = shared.live();
        if let Err(e) = clean_once(c, &configs, &live).await {
            tracing::debug!(error = %e, "cleaning Redis failed; trying again later");
            conn = None;
        }
    }
}

/// One cleanup round; returns the number of jobs removed.
pub(crate) async fn clean_once(
    conn: &mut ConnectionManager,
    configs: &[(String, apalis_redis::Config)],
    live: &[(String, String)],
) -> Result<usize, redis::RedisError> {
    let script = redis::Script::new(CLEANUP_SCRIPT);
    let mut total = 0;
    for (queue, config) in configs {
        for _ in 0..CLEANUP_ROUNDS {
            let removed: usize = script
                .key(config.done_jobs_set())
                .key(config.dead_jobs_set())
                .key(config.job_data_hash())
                .key(config.job_meta_hash())
                .arg(CLEANUP_BATCH)
                .invoke_async(conn)
                .await?;
            total += removed;
            if removed < CLEANUP_BATCH {
                break;
            }
        }
        // apalis writes a metadata hash per consumer and never deletes it; a consumer
        // that dies without being retired leaves it to expire.
        for (_, name) in live.iter().filter(|(q, _)| q == queue) {
            let _: bool = redis::cmd("EXPIRE")
                .arg(metadata_key(config, name))
                .arg(METADATA_TTL.as_secs())
                .query_async(conn)
                .await?;
        }
    }
    if total > 0 {
        tracing::debug!(removed = total, "removed acknowledged jobs from Redis");
    }
    Ok(total)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use futures::FutureExt;
    use std::collections::HashSet;
    use tokio::sync::mpsc;
    use turnq_core::TaskId;

    /// The pair of queue `queue` and the agent `script`.
    pub(crate) fn d(queue: &str) -> Delivery {
        Delivery::new(queue, "script")
    }

    #[test]
    fn deliveries_pair_every_queue_with_every_agent() {
        let queues = ["a".to_owned(), "b".to_owned()];
        let pairs = Delivery::pairs(&queues, &["x", "y"]);
        let names: Vec<String> = pairs.iter().map(ToString::to_string).collect();
        assert_eq!(names, ["a:x", "a:y", "b:x", "b:y"]);
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

    /// The Redis the workspace's tests use (CI starts it).
    pub(crate) fn redis_url() -> String {
        std::env::var("TURNQ_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
    }

    /// A unique prefix per test; its keys are deleted with SCAN + UNLINK on drop.
    pub(crate) struct TestPrefix {
        pub(crate) names: RedisNames,
    }

    impl TestPrefix {
        pub(crate) fn new() -> Self {
            let id = uuid::Uuid::new_v4().simple().to_string();
            TestPrefix {
                names: RedisNames::new(format!("turnq-worker-test-{}", &id[..12])),
            }
        }
    }

    impl Drop for TestPrefix {
        fn drop(&mut self) {
            let names = self.names.clone();
            let _ = std::thread::spawn(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map(|rt| rt.block_on(crate::purge::delete_keys(&redis_url(), &names)))
            })
            .join();
        }
    }

    pub(crate) async fn push(
        conn: &ConnectionManager,
        config: &apalis_redis::Config,
        jobs: Vec<Job>,
    ) {
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

    /// Waits until `check` holds, or fails saying what it last saw.
    pub(crate) async fn eventually<F, Fut>(what: &str, mut check: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<(), String>>,
    {
        let give_up = Instant::now() + Duration::from_secs(20);
        loop {
            match check().await {
                Ok(()) => return,
                Err(seen) if Instant::now() > give_up => panic!("{what}: last saw {seen}"),
                Err(_) => sleep(Duration::from_millis(50)).await,
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn consumers_survive_a_dropped_connection_and_clean_up_after_themselves() {
        let prefix = TestPrefix::new();
        let mut admin = connect(&redis_url())
            .await
            .expect("these tests need Redis at $TURNQ_TEST_REDIS_URL or redis://127.0.0.1:6379");
        let settings = QueueSettings {
            redis_url: redis_url(),
            names: prefix.names.clone(),
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
        let consumers = Consumers::start(settings.clone(), handler, always_open(), stop.clone());
        let config_a = settings.apalis_config(&d("a"));
        let config_b = settings.apalis_config(&d("b"));

        // Both queues are consumed.
        let first = jobs(30);
        push(&admin, &config_a, first[..20].to_vec()).await;
        push(&admin, &config_b, first[20..].to_vec()).await;
        let mut seen = HashSet::new();
        while seen.len() < first.len() {
            let job = timeout(Duration::from_secs(20), seen_rx.recv())
                .await
                .expect("every pushed job is delivered")
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
        .await;
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
        .await;

        // The rebuilt consumers deliver new jobs.
        let second = jobs(10);
        push(&admin, &config_a, second.clone()).await;
        let mut seen_second = HashSet::new();
        while seen_second.len() < second.len() {
            let job = timeout(Duration::from_secs(20), seen_rx.recv())
                .await
                .expect("jobs pushed after the failure are delivered")
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
        .await;

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
        let prefix = TestPrefix::new();
        let admin = connect(&redis_url())
            .await
            .expect("these tests need Redis at $TURNQ_TEST_REDIS_URL or redis://127.0.0.1:6379");
        // Two queues share one slot: a job of queue b waits while one of a runs.
        let settings = QueueSettings {
            redis_url: redis_url(),
            names: prefix.names.clone(),
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
        let consumers = Consumers::start(settings.clone(), handler, always_open(), stop.clone());
        let (config_a, config_b) = (
            settings.apalis_config(&d("a")),
            settings.apalis_config(&d("b")),
        );
        let running = jobs(1);
        push(&admin, &config_a, running.clone()).await;
        let started = timeout(Duration::from_secs(20), started_rx.recv())
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
                let (scheduled, list) =
                    (config_b.scheduled_jobs_set(), config_b.active_jobs_list());
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
        .await;
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
        let prefix = TestPrefix::new();
        let admin = connect(&redis_url())
            .await
            .expect("these tests need Redis at $TURNQ_TEST_REDIS_URL or redis://127.0.0.1:6379");
        let settings = QueueSettings {
            redis_url: redis_url(),
            names: prefix.names.clone(),
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
        let consumers = Consumers::start(settings.clone(), handler, gate_rx, stop.clone());

        // Shut: nothing is fetched, the jobs wait in Redis.
        let first = jobs(3);
        push(&admin, &config, first.clone()).await;
        sleep(Duration::from_millis(500)).await;
        assert!(
            seen_rx.try_recv().is_err(),
            "a paused consumer fetches nothing"
        );
        assert_eq!(waiting_ids(&mut admin.clone(), &config).await.len(), 3);

        // Open: they are delivered.
        gate_tx.send_replace(true);
        for _ in 0..first.len() {
            timeout(Duration::from_secs(20), seen_rx.recv())
                .await
                .expect("an open gate delivers")
                .unwrap();
        }

        // A job whose claim found Postgres unreachable goes back to the queue, and is
        // not fetched again while the gate is shut.
        push(&admin, &config, vec![refused.clone()]).await;
        let delivered = timeout(Duration::from_secs(20), seen_rx.recv())
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
        .await;
        sleep(Duration::from_millis(300)).await;
        assert!(seen_rx.try_recv().is_err(), "not fetched again while shut");

        gate_tx.send_replace(true);
        let again = timeout(Duration::from_secs(20), seen_rx.recv())
            .await
            .expect("delivered again once the gate opens")
            .unwrap();
        assert_eq!(again, refused);

        stop.cancel();
        consumers.finished().await;
        consumers.join().await;
        drop(prefix);
    }
}

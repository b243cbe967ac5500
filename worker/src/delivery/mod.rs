//! Redis delivery: taking jobs from Redis with apalis-redis, one supervised consumer per
//! (queue, agent), a shared limit on running turns, wake-ups, and the clean-up apalis
//! does not do.
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
//!   `CLEANUP_EVERY` (10 s), expires the metadata of consumers that die without a goodbye,
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
//!
//! # Layout
//!
//! - this file: what a delivery is ([`Delivery`], [`QueueSettings`]), the set of
//!   running consumers ([`Consumers`]) and the Redis connection they use.
//! - `consumer`: one consumer's supervisor loop (rebuilt after any Redis failure, under
//!   a new name) and its pause/resume gate.
//! - `handler`: what a consumer does with a job: slots, the hand-off to the runner,
//!   handing unstarted work back.
//! - `cleanup`: removing acknowledged jobs and retiring dead consumers.
//! - `wake`: the dispatcher's wake-ups, so a consumer fetches at once.

mod cleanup;
mod consumer;
mod handler;
#[cfg(test)]
pub(crate) mod tests;
mod wake;

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::Duration,
};

use apalis_redis::{Client, ConnectionManager};
use redis::aio::ConnectionManagerConfig;
use tokio::{
    sync::{Semaphore, watch},
    task::JoinHandle,
    time::timeout,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use turnq_core::{WorkerId, delivery::RedisNames, supervise::Supervisor};

pub(crate) use handler::{Handled, JobHandler};

use self::{cleanup::clean_once, wake::Wake};

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
/// How long stopping waits for each consumer to hand back and close.
const CLOSE_PATIENCE: Duration = Duration::from_secs(10);

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

    /// Every (queue, agent) pair of `queues` and `agents`, and each pinned to `host`
    /// (the tasks whose session's worktree lives on this host:
    /// [`turnq_core::delivery::pinned_agent`]).
    pub(crate) fn pairs(queues: &[String], agents: &[&str], host: &str) -> Vec<Delivery> {
        queues
            .iter()
            .flat_map(|q| {
                agents.iter().flat_map(move |a| {
                    [
                        Delivery::new(q.as_str(), *a),
                        Delivery::new(q.as_str(), turnq_core::delivery::pinned_agent(a, host)),
                    ]
                })
            })
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
    /// The (queue, agent) pairs consumed at start, one consumer each (the agent
    /// registry may change them while the worker runs: [`Consumers::set_deliveries`]).
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

pub(crate) struct Shared {
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
    /// Each queue's wake-up, signalled when the dispatcher pushes to it. (A pair added
    /// while the worker runs has none: its consumer polls every `--poll-interval`.)
    wakes: HashMap<String, Wake>,
    /// The pairs consumed now, each with the token that retires its consumer.
    consumed: Mutex<BTreeMap<Delivery, CancellationToken>>,
    /// Where consumers are spawned, and their handles (joined on stop).
    tasks: Supervisor,
    supervisors: Mutex<Vec<JoinHandle<()>>>,
}

impl Shared {
    fn gate_open(&self) -> bool {
        *self.gate.borrow()
    }

    fn set_live(&self, queue: &str, name: &str) {
        // A poisoned lock only means a panic elsewhere; the map is still consistent.
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        live.insert(queue.to_owned(), name.to_owned());
    }

    /// Forgets `name` as the live consumer of `queue`, unless another has taken its
    /// place (the queue was retired and consumed again meanwhile).
    fn clear_live(&self, queue: &str, name: &str) {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        if live.get(queue).is_some_and(|n| n == name) {
            live.remove(queue);
        }
    }

    /// apalis' settings for each queue consumed now.
    fn configs(&self) -> Vec<(String, apalis_redis::Config)> {
        let consumed = self.consumed.lock().unwrap_or_else(|p| p.into_inner());
        consumed
            .keys()
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
    cleanup: JoinHandle<()>,
}

/// Changes which (queue, agent) pairs a worker consumes while it runs; cheap to clone.
#[derive(Clone)]
pub(crate) struct Deliveries(Arc<Shared>);

impl Consumers {
    /// Starts one consumer per queue, the cleanup and the wake-up subscription, as
    /// long-lived tasks of `tasks`; they take jobs until `stop` is cancelled, and only
    /// while `gate` is true.
    pub(crate) fn start(
        settings: QueueSettings,
        handler: JobHandler,
        gate: watch::Receiver<bool>,
        tasks: &Supervisor,
        stop: CancellationToken,
    ) -> Consumers {
        let wakes = wake::start(
            &settings.redis_url,
            &settings.names,
            &settings.queues,
            tasks,
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
            consumed: Mutex::default(),
            tasks: tasks.clone(),
            supervisors: Mutex::default(),
        });
        let cleanup = tasks.spawn("worker.redis-cleanup", cleanup::clean(shared.clone()));
        Deliveries(shared.clone()).set(shared.settings.queues.clone());
        Consumers { shared, cleanup }
    }

    /// The handle that changes which pairs are consumed.
    pub(crate) fn deliveries(&self) -> Deliveries {
        Deliveries(self.shared.clone())
    }
}

impl Deliveries {
    /// Consumes exactly `wanted` from now on: starts a consumer for each pair not
    /// consumed yet, and retires the consumers of pairs no longer wanted (they take no
    /// new job; what they fetched and did not start goes back to its queue; turns
    /// running go on). Returns (added, retired).
    pub(crate) fn set(&self, wanted: Vec<Delivery>) -> (Vec<Delivery>, Vec<Delivery>) {
        let shared = &self.0;
        let mut consumed = shared.consumed.lock().unwrap_or_else(|p| p.into_inner());
        let retired: Vec<Delivery> = consumed
            .keys()
            .filter(|d| !wanted.contains(d))
            .cloned()
            .collect();
        for delivery in &retired {
            if let Some(token) = consumed.remove(delivery) {
                token.cancel();
            }
        }
        let mut added = Vec::new();
        let mut supervisors = shared.supervisors.lock().unwrap_or_else(|p| p.into_inner());
        for delivery in wanted {
            if consumed.contains_key(&delivery) || shared.stop.is_cancelled() {
                continue;
            }
            let retire = shared.stop.child_token();
            consumed.insert(delivery.clone(), retire.clone());
            supervisors.push(shared.tasks.spawn_until(
                format!("worker.consumer {delivery}"),
                retire.clone(),
                consumer::supervise(shared.clone(), delivery.clone(), retire),
            ));
            added.push(delivery);
        }
        (added, retired)
    }
}

impl Consumers {
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
        let supervisors = std::mem::take(
            &mut *self
                .shared
                .supervisors
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        for supervisor in supervisors {
            let abort = supervisor.abort_handle();
            if timeout(CLOSE_PATIENCE, supervisor).await.is_err() {
                tracing::warn!(
                    "a Redis consumer did not close in time; abandoning it (its jobs are re-delivered)"
                );
                abort.abort();
            }
        }
        // It stops at its next pause, `stop` being cancelled.
        if timeout(CLOSE_PATIENCE, self.cleanup).await.is_err() {
            tracing::debug!("the Redis cleanup did not stop in time");
        }
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
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.into()
        }
        // Nothing to hide, or not a URL at all (then it holds no password field).
        _ => url.to_owned(),
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

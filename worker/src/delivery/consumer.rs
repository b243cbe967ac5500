//! One consumer per (queue, agent): an apalis worker on its own Redis connection,
//! rebuilt under a new name after any Redis failure, paused while the gate is shut.

use std::{sync::Arc, time::Duration};

use apalis::prelude::{
    BackendExt, Event, EventListenerExt, Strategy, WorkerBuilder, WorkerBuilderExt, WorkerContext,
    WorkerError as ApalisError,
};
use apalis_redis::{ConnectionManager, RedisStorage};
use tokio::{
    sync::watch,
    time::{Instant, sleep},
};
use tokio_util::sync::CancellationToken;
use turnq_core::{delivery::Job, error::chain as error_chain, fault::fail_point, retry::Backoff};

use super::{
    Delivery, Shared,
    cleanup::retire,
    connect,
    handler::{QueueContext, deliver},
    redact,
};

/// A consumer that ran this long was healthy: the next failure starts the backoff over.
const HEALTHY_RUN: Duration = Duration::from_secs(30);
/// How soon a gate change that apalis refused (its worker had not started yet) is
/// applied again.
const GATE_RETRY: Duration = Duration::from_millis(10);

/// Keeps a consumer running on `delivery` until `stop` (the worker stopping, or the pair
/// retired), rebuilding it after any failure.
pub(super) async fn supervise(shared: Arc<Shared>, delivery: Delivery, stop: CancellationToken) {
    let settings = &shared.settings;
    let config = settings.apalis_config(&delivery);
    // `queue:agent`, in logs, the consumer's name and the live map.
    let queue = delivery.to_string();
    let url = redact(&settings.redis_url);
    let mut backoff = Backoff::reconnect();
    let mut generation: u64 = 0;
    let mut failures: u32 = 0;
    // Consumers that died: retired once Redis answers again.
    let mut dead: Vec<String> = Vec::new();
    while !stop.is_cancelled() {
        fail_point!("worker.consumer");
        let mut conn = match connect(&settings.redis_url).await {
            Ok(conn) => conn,
            Err(e) => {
                failures += 1;
                metrics::counter!(turnq_core::metrics::WORKER_REDIS_ERRORS).increment(1);
                // Say it at once, then about once a minute, not every few seconds.
                if failures == 1 || failures.is_multiple_of(12) {
                    tracing::warn!(url = %url, queue = %queue, failures, error = %e,
                        "cannot reach Redis at {url}: taking no jobs from queue {queue} until it answers \
                         (start it with: redis-server --daemonize yes)");
                } else {
                    tracing::debug!(url = %url, queue = %queue, failures, error = %e, "Redis still unreachable");
                }
                if !backoff.wait(&stop).await {
                    break;
                }
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
        shared.set_live(&queue, &name);
        let started = Instant::now();
        let result = consume(&shared, &queue, &name, conn.clone(), config.clone(), &stop).await;
        shared.clear_live(&queue, &name);
        dead.push(name.clone());
        // Keep the list bounded through a long outage: apalis' orphan detection
        // re-enqueues the jobs of any consumer left in it.
        if dead.len() > 100 {
            dead.remove(0);
        }

        if stop.is_cancelled() {
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
            Err(e) => {
                metrics::counter!(turnq_core::metrics::WORKER_REDIS_ERRORS).increment(1);
                tracing::warn!(queue = %queue, consumer = %name, error = %error_chain(&e),
                    "Redis delivery failed; rebuilding the consumer (running turns are not affected)")
            }
        }
        if started.elapsed() >= HEALTHY_RUN {
            backoff.reset();
        }
        if !backoff.wait(&stop).await {
            break;
        }
    }
}

/// Runs one apalis consumer on `conn` until `stop` (Ok) or a Redis failure (Err).
async fn consume(
    shared: &Arc<Shared>,
    queue: &str,
    name: &str,
    conn: ConnectionManager,
    config: apalis_redis::Config,
    stop: &CancellationToken,
) -> Result<(), ApalisError> {
    let context = Arc::new(QueueContext {
        shared: shared.clone(),
        queue: queue.to_owned(),
        conn: conn.clone(),
        config: config.clone(),
        stop: stop.clone(),
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
    let stop = stop.clone();
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

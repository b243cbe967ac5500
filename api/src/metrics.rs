//! Prometheus metrics: the process' recorder, `GET /metrics`, and the small server a
//! worker process runs for them (`turnq worker --metrics-listen`).
//!
//! The counters and histograms are recorded where things happen (submit, claim, a
//! turn's end; see `turnq_core::metrics`). The gauges are set when scraped, at most once
//! per [`GAUGES_FRESH_FOR`] whatever the number of scrapers: the queue counts from the
//! event feed's tally (no table read), the queue list and the worker counts from
//! Postgres (two small reads). A scrape storm cannot load the database.

use std::{
    sync::OnceLock,
    time::{Duration, Instant},
};

use axum::{
    Router,
    extract::State,
    http::{HeaderValue, header},
    response::{IntoResponse, Response},
    routing::get,
};
use metrics::gauge;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::{net::TcpListener, sync::Mutex};
use tokio_util::sync::CancellationToken;
use turnq_core::{
    metrics::{self as names},
    queue::QueueStore,
    worker::WorkerRegistry,
};

use crate::AppState;

/// How long gauges read from Postgres are reused.
pub const GAUGES_FRESH_FOR: Duration = Duration::from_secs(5);
/// A worker with no heartbeat for this long counts as dead in `turnq_workers`.
pub const WORKER_DEAD_AFTER: Duration = turnq_core::worker::STALE_AFTER;

/// Histogram buckets, in seconds: from a millisecond (pickup) to an hour (a long turn).
const SECONDS_BUCKETS: [f64; 16] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 30.0, 120.0, 600.0,
    3600.0,
];

/// The process' recorder, installed on first use (one per process: every app of a
/// process shares it, as the `metrics` facade has one global recorder).
pub fn recorder() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let installed = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &SECONDS_BUCKETS)
                .and_then(PrometheusBuilder::install_recorder);
            match installed {
                Ok(handle) => {
                    names::describe();
                    handle
                }
                // Another recorder is installed (an embedding program's): render an
                // empty one rather than fail; its metrics go to that recorder.
                Err(e) => {
                    tracing::warn!(error = %e, "a metrics recorder is installed already; /metrics shows none of turnq's series");
                    PrometheusBuilder::new().build_recorder().handle()
                }
            }
        })
        .clone()
}

/// When the Postgres gauges were last read; held while they are read, so concurrent
/// scrapes wait for one read instead of each making their own.
static GAUGES_READ_AT: Mutex<Option<Instant>> = Mutex::const_new(None);

/// Sets the queue gauges (their counts from the feed's tally: no table read) and the
/// worker gauges (from Postgres), unless they are fresh.
async fn refresh_gauges(state: &AppState) {
    let mut read_at = GAUGES_READ_AT.lock().await;
    if read_at.is_some_and(|at| at.elapsed() < GAUGES_FRESH_FOR) {
        return;
    }
    let db = state.db();
    match QueueStore::list(db).await {
        Ok(queues) => {
            for queue in queues {
                // Still loading at start: the next scrape has them.
                let Some(f) = state
                    .feed()
                    .and_then(|feed| feed.queue_figures(&queue.name))
                else {
                    continue;
                };
                let name = queue.name;
                let paused = queue.paused;
                for (state, n) in [
                    ("pending", f.pending),
                    ("queued", f.queued),
                    ("running", f.running),
                    ("blocked", f.blocked),
                    ("failed", f.failed),
                ] {
                    gauge!(names::QUEUE_TASKS, "queue" => name.clone(), "state" => state)
                        .set(n as f64);
                }
                gauge!(names::QUEUE_OLDEST_PENDING, "queue" => name.clone())
                    .set(f.oldest_pending_seconds);
                gauge!(names::QUEUE_PAUSED, "queue" => name).set(if paused { 1.0 } else { 0.0 });
            }
        }
        Err(e) => {
            tracing::warn!(error = %turnq_core::error::chain(&e), "metrics: could not read the queues")
        }
    }
    match WorkerRegistry::live_and_dead(db, WORKER_DEAD_AFTER).await {
        Ok((live, dead)) => {
            gauge!(names::WORKERS, "state" => "live").set(live as f64);
            gauge!(names::WORKERS, "state" => "dead").set(dead as f64);
        }
        Err(e) => {
            tracing::warn!(error = %turnq_core::error::chain(&e), "metrics: could not read the workers")
        }
    }
    *read_at = Some(Instant::now());
}

/// The text of `GET /metrics` on the API: every series of the process, with the gauges
/// refreshed when they are stale.
pub(crate) async fn render(state: &AppState) -> String {
    refresh_gauges(state).await;
    state.metrics().render()
}

/// `body` as the Prometheus text format.
pub(crate) fn text(body: String) -> Response {
    let mut response = body.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

/// Serves `GET /metrics` (and `GET /healthz`) of a process that runs no API, a worker,
/// on `listener` until `stop`.
pub async fn serve_metrics(
    listener: TcpListener,
    handle: PrometheusHandle,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let router = Router::new()
        .route(
            "/metrics",
            get(|State(handle): State<PrometheusHandle>| async move { text(handle.render()) }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .with_state(handle);
    axum::serve(listener, router)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await
}

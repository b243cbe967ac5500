//! turnq-api: the HTTP face of turnq, and the dispatcher.
//!
//! # Layout
//!
//! - [`serve`]: the one seam. It runs the router on a listener until `shutdown`; the
//!   app (`turnq::App`, which the binary, the bench and the tests all start) starts the
//!   API through it.
//! - `routes/`: one module per resource (`tasks`, `sessions`, `agents`, `workers`,
//!   `stats`, `health`), thin handlers that validate input, call a `turnq-core` store
//!   and shape the JSON; `routes/mod.rs` mounts them with their scopes.
//! - `ui`: the web UI at `/`, server-rendered pages over the same stores (docs/ui.md).
//! - `workspace_ops`: a person's decisions on a session's workspace (apply, reject,
//!   revert changes; restore a checkpoint), done once for the JSON routes and the UI.
//! - `auth`: bearer tokens with scopes (`submit`, `read`, `admin`); health stays open.
//! - `error`: the one error type; core errors and extractor rejections map to the
//!   `{"error":{"code","message"}}` envelope in one place.
//! - `extract`: the extractors whose rejections use that envelope.
//! - [`openapi`]: the API document (`GET /v1/openapi.json`), generated from the
//!   handlers' annotations and the types they return.
//! - [`dispatcher`]: the Postgres → Redis relay (LISTEN `tasks_new` plus a fallback
//!   poll), so any API replica can run it.
//!
//! Depends on `turnq-core`, never on `turnq-worker`.

mod auth;
pub mod dispatcher;
mod error;
mod extract;
pub mod metrics;
pub mod openapi;
mod outage;
mod request_id;
mod routes;
mod serve;
mod ui;
mod workspace_ops;

use std::{sync::Arc, time::Duration};

use axum::Router;
use axum::{extract::Request, http::HeaderName, middleware};
use metrics_exporter_prometheus::PrometheusHandle;
use sea_orm::DatabaseConnection;
use tower_http::{
    classify::ServerErrorsFailureClass,
    request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer},
    timeout::RequestBodyTimeoutLayer,
    trace::{DefaultOnResponse, TraceLayer},
};
use tracing::Level;
use turnq_core::{
    auth::{TOKEN_CACHE_TTL, TokenCache},
    event::EventFeed,
    session::PgSessionStore,
    supervise::Supervisor,
};

pub use error::ApiError;
pub use serve::serve;

/// The default of [`ApiConfig::session_body_limit`]: 16 MiB. The SDK flushes its batches
/// at about 1 MiB, but one entry can carry a large tool output on top of that.
pub const DEFAULT_SESSION_BODY_LIMIT: usize = 16 * 1024 * 1024;

/// The API's settings. `clap::Args`, so the binary can flatten it into its subcommands.
#[derive(clap::Args, Clone, Debug)]
pub struct ApiConfig {
    /// The largest body `POST /v1/sessions/{project}/{session}/entries` accepts, in
    /// bytes (default 16 MiB); a larger one is refused with 413.
    #[arg(long, env = "TURNQ_SESSION_BODY_LIMIT", default_value_t = DEFAULT_SESSION_BODY_LIMIT)]
    pub session_body_limit: usize,

    /// How often the event stream's reader looks for new events when nothing woke it
    /// (a duration; submissions and cancellations wake it at once). Default: 100ms.
    #[arg(long, env = "TURNQ_STREAM_POLL_INTERVAL", default_value = "100ms", value_parser = humantime::parse_duration)]
    pub stream_poll_interval: Duration,

    /// Events the event stream keeps for its slowest client; a client that falls
    /// further behind is told where to reconnect from and disconnected. Default: 10000.
    #[arg(long, env = "TURNQ_STREAM_BUFFER", default_value_t = 10_000)]
    pub stream_buffer: usize,

    /// How long a token seen valid is trusted without asking Postgres again (a
    /// duration; a revocation clears every API process' cache at once). Default: 30s.
    #[arg(long, env = "TURNQ_TOKEN_CACHE_TTL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub token_cache_ttl: Duration,

    /// How long a client has to send the whole head (request line and headers) of a
    /// request before its connection is closed (a duration). Default: 10s.
    #[arg(long, env = "TURNQ_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub header_read_timeout: Duration,

    /// How long a request body may stall (no byte arriving) before the request fails
    /// with 408 `request_timeout` (a duration). Default: 30s.
    #[arg(long, env = "TURNQ_BODY_READ_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub body_read_timeout: Duration,

    /// The largest request head (request line and headers) accepted, in bytes; a larger
    /// one is answered 431. At least 8192. Default: 65536.
    #[arg(long, env = "TURNQ_MAX_HEADER_BYTES", default_value_t = serve::DEFAULT_MAX_HEAD_BYTES,
        value_parser = serve::parse_head_bytes)]
    pub max_header_bytes: usize,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            session_body_limit: DEFAULT_SESSION_BODY_LIMIT,
            stream_poll_interval: Duration::from_millis(100),
            stream_buffer: 10_000,
            token_cache_ttl: TOKEN_CACHE_TTL,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            max_header_bytes: serve::DEFAULT_MAX_HEAD_BYTES,
        }
    }
}

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    db: DatabaseConnection,
    sessions: PgSessionStore,
    config: ApiConfig,
    /// The process' long-lived tasks, whose deaths make `/readyz` answer 503, and
    /// whose stop ends the event streams.
    tasks: Option<Supervisor>,
    /// The process' one reader of the event log, which every stream client follows.
    feed: Option<Arc<EventFeed>>,
    /// The process' metrics recorder, rendered at `/metrics`.
    metrics: PrometheusHandle,
    /// Whether Postgres is known to be unreachable, to answer 503 at once meanwhile.
    outage: outage::Outage,
    /// Tokens seen valid lately (see `turnq_core::auth::TokenCache`).
    tokens: Arc<TokenCache>,
}

impl AppState {
    /// The state with the default [`ApiConfig`].
    pub fn new(db: DatabaseConnection) -> Self {
        Self::with_config(db, ApiConfig::default())
    }

    pub fn with_config(db: DatabaseConnection, config: ApiConfig) -> Self {
        AppState {
            inner: Arc::new(Inner {
                sessions: PgSessionStore::new(db.clone()),
                db,
                config,
                tasks: None,
                feed: None,
                metrics: metrics::recorder(),
                outage: outage::Outage::default(),
                // Nothing here follows revocations: ask Postgres every time.
                tokens: Arc::new(TokenCache::new(Duration::ZERO)),
            }),
        }
    }

    /// The state of an API whose readiness also reflects the long-lived tasks of
    /// `tasks` (the dispatcher, and in `turnq up` the worker pool), with the event
    /// stream fed by `feed` (a long-lived task of `tasks`, see [`AppState::start_feed`]).
    pub fn supervised(
        db: DatabaseConnection,
        config: ApiConfig,
        tasks: Supervisor,
        feed: Arc<EventFeed>,
    ) -> Self {
        let tokens = Arc::new(TokenCache::new(config.token_cache_ttl));
        tasks.spawn("api.token-revocations", {
            let (tokens, db, stop) = (tokens.clone(), db.clone(), tasks.stopping().clone());
            async move { tokens.follow_revocations(&db, &stop).await }
        });
        AppState {
            inner: Arc::new(Inner {
                sessions: PgSessionStore::new(db.clone()),
                db,
                config,
                tasks: Some(tasks),
                feed: Some(feed),
                metrics: metrics::recorder(),
                outage: outage::Outage::default(),
                tokens,
            }),
        }
    }

    /// Starts the process' reader of the event log as a long-lived task of `tasks`,
    /// stopping with them; the API's streams follow it.
    pub fn start_feed(
        db: &DatabaseConnection,
        config: &ApiConfig,
        tasks: &Supervisor,
    ) -> Arc<EventFeed> {
        let feed = EventFeed::new(config.stream_buffer, config.stream_poll_interval);
        tasks.spawn(
            "api.event-feed",
            feed.clone()
                .run(db.clone(), tasks.clone(), tasks.stopping().clone()),
        );
        feed
    }

    pub(crate) fn tasks(&self) -> Option<&Supervisor> {
        self.inner.tasks.as_ref()
    }

    pub(crate) fn feed(&self) -> Option<&Arc<EventFeed>> {
        self.inner.feed.as_ref()
    }

    pub(crate) fn metrics(&self) -> &PrometheusHandle {
        &self.inner.metrics
    }

    pub(crate) fn tokens(&self) -> &TokenCache {
        &self.inner.tokens
    }

    pub(crate) fn outage(&self) -> &outage::Outage {
        &self.inner.outage
    }

    pub(crate) fn db(&self) -> &DatabaseConnection {
        &self.inner.db
    }

    pub(crate) fn sessions(&self) -> &PgSessionStore {
        &self.inner.sessions
    }

    pub(crate) fn config(&self) -> &ApiConfig {
        &self.inner.config
    }
}

/// The router with every route.
pub fn router(state: AppState) -> Router {
    let header = HeaderName::from_static(request_id::HEADER);
    // Outermost last: the id is set first, then the access log's span names it, then
    // it is copied to the response, then the handler runs with it (errors quote it).
    routes::router(&state)
        .merge(ui::router())
        .layer(middleware::from_fn(request_id::scope))
        .layer(PropagateRequestIdLayer::new(header.clone()))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|request: &Request<_>| {
                    let id = request
                        .headers()
                        .get(request_id::HEADER)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default();
                    tracing::info_span!("request", method = %request.method(),
                        uri = %request.uri(), request_id = %id)
                })
                .on_response(DefaultOnResponse::new().level(Level::INFO))
                .on_failure(log_failure),
        )
        .layer(SetRequestIdLayer::new(header, MakeRequestUuid))
        .layer(RequestBodyTimeoutLayer::new(
            state.config().body_read_timeout,
        ))
        .with_state(state)
}

/// Logs a failed request once: a 503 (Postgres unreachable, or the process stopping)
/// is a state the client is told to retry through, so WARN; any other 5xx is ERROR.
fn log_failure(class: ServerErrorsFailureClass, latency: Duration, _span: &tracing::Span) {
    let latency_ms = latency.as_millis() as u64;
    match class {
        ServerErrorsFailureClass::StatusCode(status)
            if status == axum::http::StatusCode::SERVICE_UNAVAILABLE =>
        {
            tracing::warn!(%status, latency_ms, "request answered 503")
        }
        ServerErrorsFailureClass::StatusCode(status) => {
            tracing::error!(%status, latency_ms, "request failed")
        }
        ServerErrorsFailureClass::Error(error) => {
            tracing::error!(%error, latency_ms, "request failed")
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        io,
        sync::{Arc, Mutex},
    };

    use super::*;

    /// Collects what a subscriber writes.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_503_is_logged_as_a_warning_and_other_5xx_as_errors() {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::Span::none();
            let status = |code| {
                ServerErrorsFailureClass::StatusCode(
                    axum::http::StatusCode::from_u16(code).unwrap(),
                )
            };
            log_failure(status(503), Duration::from_millis(3), &span);
            log_failure(status(500), Duration::from_millis(3), &span);
        });
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(
            lines[0].contains(" WARN ") && lines[0].contains("503"),
            "{text}"
        );
        assert!(
            lines[1].contains("ERROR") && lines[1].contains("500"),
            "{text}"
        );
    }
}

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
//! - `auth`: bearer tokens with scopes (`submit`, `read`, `admin`); health stays open.
//! - `error`: the one error type; core errors and extractor rejections map to the
//!   `{"error":{"code","message"}}` envelope in one place.
//! - `extract`: the extractors whose rejections use that envelope.
//! - [`dispatcher`]: the Postgres → Redis relay (LISTEN `tasks_new` plus a fallback
//!   poll), so any API replica can run it.
//!
//! Depends on `turnq-core`, never on `turnq-worker`.

mod auth;
pub mod dispatcher;
mod error;
mod extract;
mod routes;

use std::{io, sync::Arc};

use axum::Router;
use sea_orm::DatabaseConnection;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_http::trace::TraceLayer;
use turnq_core::{session::PgSessionStore, supervise::Supervisor};

pub use error::ApiError;

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
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            session_body_limit: DEFAULT_SESSION_BODY_LIMIT,
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
    /// The process' long-lived tasks, whose deaths make `/readyz` answer 503.
    tasks: Option<Supervisor>,
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
            }),
        }
    }

    /// The state of an API whose readiness also reflects the long-lived tasks of
    /// `tasks` (the dispatcher, and in `turnq up` the worker pool).
    pub fn supervised(db: DatabaseConnection, config: ApiConfig, tasks: Supervisor) -> Self {
        AppState {
            inner: Arc::new(Inner {
                sessions: PgSessionStore::new(db.clone()),
                db,
                config,
                tasks: Some(tasks),
            }),
        }
    }

    pub(crate) fn tasks(&self) -> Option<&Supervisor> {
        self.inner.tasks.as_ref()
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
    routes::router(&state)
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// Serves the API on `listener` until `shutdown` is cancelled, then lets in-flight
/// requests finish.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: CancellationToken,
) -> io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

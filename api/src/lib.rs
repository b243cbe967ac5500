//! turnq-api: the HTTP face of turnq, and the dispatcher.
//!
//! # Layout
//!
//! - [`serve`]: the one seam. It runs the router on a listener until `shutdown`; the
//!   binary and the tests both start the API through it.
//! - `routes/`: one module per resource (`tasks`, `health`, `workers`), thin handlers
//!   that validate input, call a `turnq-core` store and shape the JSON.
//! - `auth`: bearer tokens with scopes (`submit`, `read`, `admin`); health stays open.
//! - `error`: the one error type; core errors and extractor rejections map to the
//!   `{"error":{"code","message"}}` envelope in one place.
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

pub use error::ApiError;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    db: DatabaseConnection,
}

impl AppState {
    pub fn new(db: DatabaseConnection) -> Self {
        AppState {
            inner: Arc::new(Inner { db }),
        }
    }

    pub(crate) fn db(&self) -> &DatabaseConnection {
        &self.inner.db
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

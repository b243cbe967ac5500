//! Liveness and readiness. Both stay open to unauthenticated probes.

use std::collections::BTreeMap;

use axum::{Json, extract::State, http::StatusCode, response::Response};
use serde::Serialize;

use crate::{ApiError, AppState};

#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct Health {
    /// Always `ok`.
    status: &'static str,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct Ready {
    /// Always `ready`.
    status: &'static str,
    /// The process' long-lived tasks running, by name, with how many of each.
    tasks: BTreeMap<String, usize>,
}

/// The process is up.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "health",
    operation_id = "healthz",
    summary = "Liveness: the process is up",
    description = "Open, no token.",
    responses(
        (status = 200, description = "Up.", body = Health),
        (status = 500, response = crate::openapi::responses::Internal),
    ),
)]
pub(super) async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// The process can serve: Postgres answers, and none of the process' long-lived tasks
/// (the dispatcher, a worker pool's loops) has died. A death stops the process anyway;
/// this answers 503 in the moments before it exits, so a load balancer stops sending
/// to it at once. The body lists the tasks running, by name.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "health",
    operation_id = "readyz",
    summary = "Readiness: Postgres answers and no long-lived task has died",
    description = "Open, no token.",
    responses(
        (status = 200, description = "Ready.", body = Ready),
        (status = 500, response = crate::openapi::responses::Internal),
        (status = 503, response = crate::openapi::responses::Unavailable),
    ),
)]
pub(super) async fn readyz(State(state): State<AppState>) -> Result<Json<Ready>, ApiError> {
    if let Some(tasks) = state.tasks() {
        let deaths = tasks.deaths();
        if let Some(first) = deaths.first() {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                format!("{first}; the process is stopping"),
            ));
        }
    }
    if let Err(e) = state.db().ping().await {
        tracing::warn!(error = %e, "readiness check: Postgres does not answer");
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "Postgres does not answer",
        ));
    }
    let running = state.tasks().map(|t| t.running()).unwrap_or_default();
    Ok(Json(Ready {
        status: "ready",
        tasks: running,
    }))
}

/// `GET /metrics` on the API: every series of the process, and the Postgres gauges.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "health",
    operation_id = "metrics",
    summary = "Prometheus metrics",
    description = "Open, no token, for scrapers: the series of docs/metrics.md in the \
        Prometheus text format.",
    responses(
        (status = 200, description = "The series.",
            content_type = "text/plain; version=0.0.4; charset=utf-8", body = String),
        (status = 500, response = crate::openapi::responses::Internal),
    ),
)]
pub(crate) async fn metrics(State(state): State<AppState>) -> Response {
    crate::metrics::text(crate::metrics::render(&state).await)
}

//! Liveness and readiness. Both stay open to unauthenticated probes.

use axum::{Json, extract::State, http::StatusCode};
use serde_json::{Value, json};

use crate::{ApiError, AppState};

/// The process is up.
pub(super) async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// The process can serve: Postgres answers, and none of the process' long-lived tasks
/// (the dispatcher, a worker pool's loops) has died. A death stops the process anyway;
/// this answers 503 in the moments before it exits, so a load balancer stops sending
/// to it at once. The body lists the tasks running, by name.
pub(super) async fn readyz(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
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
    Ok(Json(json!({"status": "ready", "tasks": running})))
}

//! Liveness and readiness. Both stay open to unauthenticated probes.

use axum::{Json, extract::State, http::StatusCode};
use sea_orm::ConnectionTrait;
use serde_json::{Value, json};

use crate::{ApiError, AppState};

/// The process is up.
pub(super) async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// The process can serve: Postgres answers.
pub(super) async fn readyz(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    match state.db().execute_unprepared("SELECT 1").await {
        Ok(_) => Ok(Json(json!({"status": "ready"}))),
        Err(e) => {
            tracing::warn!(error = %e, "readiness check: Postgres does not answer");
            Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "Postgres does not answer",
            ))
        }
    }
}

//! The worker registry, read-only.

use axum::{Json, extract::State};
use serde_json::{Value, json};
use turnq_core::worker::WorkerRegistry;

use crate::{ApiError, AppState};

pub(super) async fn list(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let workers = WorkerRegistry::list(state.db()).await?;
    Ok(Json(json!({ "workers": workers })))
}

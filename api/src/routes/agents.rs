//! `/v1/agents`: the agent registry. Reading needs `read`; declaring an agent needs
//! `admin`, since its config decides what a worker runs (see `docs/agents.md`).

use axum::{Json, extract::State, http::StatusCode};
use serde_json::{Value, json};
use turnq_core::{
    agent::{Agent, AgentRegistry, AgentSpec},
    time,
};

use crate::{
    ApiError, AppState,
    extract::{self, Path},
};

/// `GET /v1/agents`: `{"agents":[…]}`, by name.
pub(super) async fn list(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let agents = AgentRegistry::list(state.db()).await?;
    Ok(Json(json!({ "agents": agents })))
}

/// `GET /v1/agents/{name}`: the agent, or 404.
pub(super) async fn get(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Agent>, ApiError> {
    AgentRegistry::get(state.db(), &name)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("agent {name:?} is not registered")))
}

/// `PUT /v1/agents/{name}`, body an [`AgentSpec`]: 201 with the new agent, or 200 with
/// the updated one. A bad name or body is a 400 and writes nothing.
pub(super) async fn put(
    State(state): State<AppState>,
    Path(name): Path<String>,
    extract::Json(body): extract::Json<Value>,
) -> Result<(StatusCode, Json<Agent>), ApiError> {
    // Parsed here rather than by the extractor, which answers a body of the wrong shape
    // (an unknown field, a missing backend) with 422: every bad spec is a 400.
    let spec: AgentSpec = serde_json::from_value(body)
        .map_err(|e| ApiError::bad_request(format!("invalid agent spec: {e}")))?;
    let put = AgentRegistry::put(state.db(), &name, spec, time::now()).await?;
    let status = if put.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(put.agent)))
}

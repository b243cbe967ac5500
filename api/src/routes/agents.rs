//! `/v1/agents`: the agent registry. Reading needs `read`; declaring an agent needs
//! `admin`, since its config decides what a worker runs (see `docs/agents.md`).

use axum::{Json, extract::State, http::StatusCode};
use serde::Serialize;
use serde_json::Value;
use turnq_core::{
    agent::{Agent, AgentRegistry, AgentSpec},
    time,
};

use crate::{
    ApiError, AppState,
    extract::{self, Path},
};

/// Every registered agent.
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct AgentList {
    /// By name.
    agents: Vec<Agent>,
}

/// `GET /v1/agents`: `{"agents":[…]}`, by name.
#[utoipa::path(
    get,
    path = "/v1/agents",
    tag = "agents",
    operation_id = "list_agents",
    summary = "Every registered agent",
    description = "Scope `read`.",
    security(("bearer" = ["read"])),
    responses(
        (status = 200, description = "The agents.", body = AgentList),
        (status = 401, response = crate::openapi::responses::Unauthorized),
        (status = 403, response = crate::openapi::responses::Forbidden),
        (status = 500, response = crate::openapi::responses::Internal),
        (status = 503, response = crate::openapi::responses::Unavailable),
    ),
)]
pub(super) async fn list(State(state): State<AppState>) -> Result<Json<AgentList>, ApiError> {
    let agents = AgentRegistry::list(state.db()).await?;
    Ok(Json(AgentList { agents }))
}

/// `GET /v1/agents/{name}`: the agent, or 404.
#[utoipa::path(
    get,
    path = "/v1/agents/{name}",
    tag = "agents",
    operation_id = "get_agent",
    summary = "One agent",
    description = "Scope `read`.",
    params(("name" = String, Path, description = "The agent's name.", pattern = "^[A-Za-z0-9_.-]{1,64}$")),
    security(("bearer" = ["read"])),
    responses(
        (status = 200, description = "The agent.", body = Agent),
        (status = 400, response = crate::openapi::responses::BadRequest),
        (status = 401, response = crate::openapi::responses::Unauthorized),
        (status = 403, response = crate::openapi::responses::Forbidden),
        (status = 404, response = crate::openapi::responses::NotFound),
        (status = 500, response = crate::openapi::responses::Internal),
        (status = 503, response = crate::openapi::responses::Unavailable),
    ),
)]
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
#[utoipa::path(
    put,
    path = "/v1/agents/{name}",
    tag = "agents",
    operation_id = "put_agent",
    summary = "Declare an agent, or replace its spec",
    description = "Scope `admin`: an agent's config decides what workers run. Probe results are kept.",
    params(("name" = String, Path, description = "The agent's name.", pattern = "^[A-Za-z0-9_.-]{1,64}$")),
    request_body = AgentSpec,
    security(("bearer" = ["admin"])),
    responses(
        (status = 201, description = "The new agent.", body = Agent),
        (status = 200, description = "The updated agent.", body = Agent),
        (status = 400, response = crate::openapi::responses::BadRequest),
        (status = 401, response = crate::openapi::responses::Unauthorized),
        (status = 403, response = crate::openapi::responses::Forbidden),
        (status = 409, response = crate::openapi::responses::Conflict),
        (status = 413, response = crate::openapi::responses::PayloadTooLarge),
        (status = 415, response = crate::openapi::responses::UnsupportedMediaType),
        (status = 500, response = crate::openapi::responses::Internal),
        (status = 503, response = crate::openapi::responses::Unavailable),
    ),
)]
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

/// `DELETE /v1/agents/{name}`: 204. Its tasks still waiting stay, shown as unserved.
#[utoipa::path(
    delete,
    path = "/v1/agents/{name}",
    tag = "agents",
    operation_id = "delete_agent",
    summary = "Remove an agent from the registry",
    description = "Scope `admin`. Workers stop taking its tasks; its tasks still waiting stay (listed as unserved in `/v1/queues` and the inbox) until it is registered again or they are cancelled; new tasks naming it are refused. The built-in `script` cannot be removed.",
    params(("name" = String, Path, description = "The agent's name.", pattern = "^[A-Za-z0-9_.-]{1,64}$")),
    security(("bearer" = ["admin"])),
    responses(
        (status = 204, description = "Removed."),
        (status = 400, response = crate::openapi::responses::BadRequest),
        (status = 401, response = crate::openapi::responses::Unauthorized),
        (status = 403, response = crate::openapi::responses::Forbidden),
        (status = 404, response = crate::openapi::responses::NotFound),
        (status = 500, response = crate::openapi::responses::Internal),
        (status = 503, response = crate::openapi::responses::Unavailable),
    ),
)]
pub(super) async fn delete(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let agent = AgentRegistry::delete(state.db(), &name).await?;
    tracing::info!(agent = %agent.name, backend = %agent.backend, "agent removed from the registry");
    Ok(StatusCode::NO_CONTENT)
}

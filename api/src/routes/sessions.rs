//! `/v1/sessions`: the session store over HTTP, shaped after the Claude Agent SDK's
//! `SessionStore` so an SDK process can use turnq as its store (see `docs/sessions.md`).
//!
//! Project keys and session ids are path segments (percent-encode them); the subpath of
//! a transcript beside the main one is the `subpath` query parameter, absent for the
//! main transcript.

use axum::{
    Json,
    extract::{FromRequestParts, Path, State},
    http::{StatusCode, request::Parts},
};
use serde::Deserialize;
use serde_json::{Value, json};
use turnq_core::session::{Entries, ProjectKey, SessionId, SessionKey, SessionStore, Subpath};

use crate::{
    ApiError, AppState,
    extract::{self, Query},
};

/// `{project_key}` of a route, validated.
pub(super) struct ProjectPath(ProjectKey);

impl<S: Send + Sync> FromRequestParts<S> for ProjectPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path(project) = Path::<String>::from_request_parts(parts, state).await?;
        Ok(ProjectPath(ProjectKey::new(project)?))
    }
}

/// `{project_key}/{session_id}` of a route, validated.
pub(super) struct SessionPath(ProjectKey, SessionId);

impl<S: Send + Sync> FromRequestParts<S> for SessionPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path((project, session)) =
            Path::<(String, String)>::from_request_parts(parts, state).await?;
        Ok(SessionPath(
            ProjectKey::new(project)?,
            SessionId::new(session)?,
        ))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SubpathQuery {
    /// Absent for the main transcript.
    subpath: Option<String>,
}

fn key(
    project: ProjectKey,
    session: SessionId,
    query: SubpathQuery,
) -> Result<SessionKey, ApiError> {
    Ok(SessionKey {
        project,
        session,
        subpath: query.subpath.map(Subpath::new).transpose()?,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AppendRequest {
    entries: Vec<Value>,
}

/// `POST /v1/sessions/{project_key}/{session_id}/entries[?subpath=…]`, body
/// `{"entries":[…]}`: 204. Entries whose `uuid` is already stored are skipped, so a
/// retried batch is harmless.
pub(super) async fn append(
    State(state): State<AppState>,
    SessionPath(project, session): SessionPath,
    Query(query): Query<SubpathQuery>,
    extract::Json(body): extract::Json<AppendRequest>,
) -> Result<StatusCode, ApiError> {
    let key = key(project, session, query)?;
    let entries = Entries::new(body.entries)?;
    let appended = state.sessions().append(&key, entries).await?;
    tracing::debug!(%key, appended = appended.appended, duplicates = appended.duplicates, "session entries appended");
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v1/sessions/{project_key}/{session_id}/entries[?subpath=…]`: the entries in
/// append order, or 404 when nothing was ever appended to the key.
pub(super) async fn load(
    State(state): State<AppState>,
    SessionPath(project, session): SessionPath,
    Query(query): Query<SubpathQuery>,
) -> Result<Json<Value>, ApiError> {
    let key = key(project, session, query)?;
    match state.sessions().load(&key).await? {
        Some(entries) => Ok(Json(json!({ "entries": entries }))),
        None => Err(ApiError::not_found(format!("session {key} has no entries"))),
    }
}

/// `GET /v1/sessions/{project_key}`: the sessions with a main transcript, newest first.
pub(super) async fn list(
    State(state): State<AppState>,
    ProjectPath(project): ProjectPath,
) -> Result<Json<Value>, ApiError> {
    let sessions = state.sessions().list_sessions(&project).await?;
    Ok(Json(json!({ "sessions": sessions })))
}

/// `GET /v1/sessions/{project_key}/summaries`: one summary per listed session.
pub(super) async fn summaries(
    State(state): State<AppState>,
    ProjectPath(project): ProjectPath,
) -> Result<Json<Value>, ApiError> {
    let summaries = state.sessions().list_session_summaries(&project).await?;
    Ok(Json(json!({ "summaries": summaries })))
}

/// `GET /v1/sessions/{project_key}/{session_id}/subkeys`: the session's subpaths.
pub(super) async fn subkeys(
    State(state): State<AppState>,
    SessionPath(project, session): SessionPath,
) -> Result<Json<Value>, ApiError> {
    let subkeys = state.sessions().list_subkeys(&project, &session).await?;
    Ok(Json(json!({ "subkeys": subkeys })))
}

/// `DELETE /v1/sessions/{project_key}/{session_id}[?subpath=…]`: 204, also when there
/// was nothing to delete. Without `subpath` the whole session goes.
pub(super) async fn delete(
    State(state): State<AppState>,
    SessionPath(project, session): SessionPath,
    Query(query): Query<SubpathQuery>,
) -> Result<StatusCode, ApiError> {
    let key = key(project, session, query)?;
    state.sessions().delete(&key).await?;
    tracing::info!(%key, "session deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE /v1/sessions/{project_key}/summaries[?subpath=…]`: the route of
/// [`summaries`] wins over `{session_id}` (a static segment beats a capture), so the
/// delete of a session named `summaries` arrives here and is served the same way.
pub(super) async fn delete_session_named_summaries(
    State(state): State<AppState>,
    ProjectPath(project): ProjectPath,
    Query(query): Query<SubpathQuery>,
) -> Result<StatusCode, ApiError> {
    let key = key(project, SessionId::new("summaries")?, query)?;
    state.sessions().delete(&key).await?;
    tracing::info!(%key, "session deleted");
    Ok(StatusCode::NO_CONTENT)
}

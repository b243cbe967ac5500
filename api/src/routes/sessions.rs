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
use serde::{Deserialize, Serialize};
use serde_json::Value;
use turnq_core::session::{
    Entries, ProjectKey, SessionId, SessionKey, SessionListing, SessionStore, SessionSummary,
    Subpath,
    summary::{self, SummaryStyle},
};
use utoipa::{IntoParams, ToSchema};

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
pub(super) struct SessionPath(pub(super) ProjectKey, pub(super) SessionId);

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

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct SubpathQuery {
    /// The transcript beside the main one (such as `subagents/agent-1`); absent for the
    /// main transcript. 1 to 512 characters, no `..` segment.
    subpath: Option<String>,
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct SummaryQuery {
    /// Whose fold `data` should look like: `python` (the default; snake_case, as the
    /// Python SDK's `fold_session_summary` writes and reads it) or `typescript`
    /// (camelCase, as the TypeScript SDK's `foldSessionSummary` does).
    #[param(inline)]
    style: Option<SummaryStyle>,
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

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct AppendRequest {
    /// Up to 10,000 JSON objects, stored as they are; one whose `uuid` is stored already
    /// is skipped.
    #[schema(value_type = Vec<Object>)]
    entries: Vec<Value>,
}

/// A transcript's entries.
#[derive(Serialize, ToSchema)]
pub(super) struct EntryList {
    /// In append order.
    #[schema(value_type = Vec<Object>)]
    entries: Vec<Value>,
}

/// A project's sessions.
#[derive(Serialize, ToSchema)]
pub(super) struct SessionList {
    /// Newest first.
    sessions: Vec<SessionListing>,
}

/// A project's session summaries.
#[derive(Serialize, ToSchema)]
pub(super) struct SummaryList {
    /// Newest first.
    summaries: Vec<SessionSummary>,
}

/// A session's transcripts beside the main one.
#[derive(Serialize, ToSchema)]
pub(super) struct SubkeyList {
    /// Their subpaths, in order.
    #[schema(value_type = Vec<String>)]
    subkeys: Vec<Subpath>,
}

/// `POST /v1/sessions/{project_key}/{session_id}/entries[?subpath=…]`, body
/// `{"entries":[…]}`: 204. Entries whose `uuid` is already stored are skipped, so a
/// retried batch is harmless.
#[utoipa::path(
    post,
    path = "/v1/sessions/{project_key}/{session_id}/entries",
    tag = "sessions",
    operation_id = "append_session_entries",
    summary = "Append entries to a transcript",
    description = "Scope `submit`. Entries whose `uuid` is already stored are skipped, so a retried batch is harmless.",
    params(("project_key" = String, Path, description = "The project key: 1 to 256 characters and at most 512 bytes of UTF-8, no control characters.", min_length = 1, max_length = 256), ("session_id" = String, Path, description = "The session id: 1 to 256 characters and at most 512 bytes of UTF-8, no control characters.", min_length = 1, max_length = 256), SubpathQuery),
    request_body = AppendRequest,
    security(("bearer" = ["submit"])),
    responses(
        (status = 204, description = "Appended."),
        (status = 400, response = crate::openapi::responses::BadRequest),
        (status = 401, response = crate::openapi::responses::Unauthorized),
        (status = 403, response = crate::openapi::responses::Forbidden),
        (status = 409, response = crate::openapi::responses::Conflict),
        (status = 413, response = crate::openapi::responses::PayloadTooLarge),
        (status = 415, response = crate::openapi::responses::UnsupportedMediaType),
        (status = 422, response = crate::openapi::responses::Unprocessable),
        (status = 500, response = crate::openapi::responses::Internal),
        (status = 503, response = crate::openapi::responses::Unavailable),
    ),
)]
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
#[utoipa::path(
    get,
    path = "/v1/sessions/{project_key}/{session_id}/entries",
    tag = "sessions",
    operation_id = "load_session_entries",
    summary = "A transcript's entries",
    description = "Scope `read`. 404 when nothing was ever appended to the key.",
    params(("project_key" = String, Path, description = "The project key: 1 to 256 characters and at most 512 bytes of UTF-8, no control characters.", min_length = 1, max_length = 256), ("session_id" = String, Path, description = "The session id: 1 to 256 characters and at most 512 bytes of UTF-8, no control characters.", min_length = 1, max_length = 256), SubpathQuery),
    security(("bearer" = ["read"])),
    responses(
        (status = 200, description = "The entries.", body = EntryList),
        (status = 400, response = crate::openapi::responses::BadRequest),
        (status = 401, response = crate::openapi::responses::Unauthorized),
        (status = 403, response = crate::openapi::responses::Forbidden),
        (status = 404, response = crate::openapi::responses::NotFound),
        (status = 500, response = crate::openapi::responses::Internal),
        (status = 503, response = crate::openapi::responses::Unavailable),
    ),
)]
pub(super) async fn load(
    State(state): State<AppState>,
    SessionPath(project, session): SessionPath,
    Query(query): Query<SubpathQuery>,
) -> Result<Json<EntryList>, ApiError> {
    let key = key(project, session, query)?;
    match state.sessions().load(&key).await? {
        Some(entries) => Ok(Json(EntryList { entries })),
        None => Err(ApiError::not_found(format!("session {key} has no entries"))),
    }
}

/// `GET /v1/sessions/{project_key}`: the sessions with a main transcript, newest first.
#[utoipa::path(
    get,
    path = "/v1/sessions/{project_key}",
    tag = "sessions",
    operation_id = "list_sessions",
    summary = "A project's sessions, newest first",
    description = "Scope `read`. The sessions with a main transcript.",
    params(("project_key" = String, Path, description = "The project key: 1 to 256 characters and at most 512 bytes of UTF-8, no control characters.", min_length = 1, max_length = 256)),
    security(("bearer" = ["read"])),
    responses(
        (status = 200, description = "The sessions.", body = SessionList),
        (status = 400, response = crate::openapi::responses::BadRequest),
        (status = 401, response = crate::openapi::responses::Unauthorized),
        (status = 403, response = crate::openapi::responses::Forbidden),
        (status = 500, response = crate::openapi::responses::Internal),
        (status = 503, response = crate::openapi::responses::Unavailable),
    ),
)]
pub(super) async fn list(
    State(state): State<AppState>,
    ProjectPath(project): ProjectPath,
) -> Result<Json<SessionList>, ApiError> {
    let sessions = state.sessions().list_sessions(&project).await?;
    Ok(Json(SessionList { sessions }))
}

/// `GET /v1/sessions/{project_key}/summaries`: one summary per listed session.
#[utoipa::path(
    get,
    path = "/v1/sessions/{project_key}/summaries",
    tag = "sessions",
    operation_id = "list_session_summaries",
    summary = "A project's session summaries, newest first",
    description = "Scope `read`. One per listed session; see docs/sessions.md for `data`, whose field names follow `style`.",
    params(("project_key" = String, Path, description = "The project key: 1 to 256 characters and at most 512 bytes of UTF-8, no control characters.", min_length = 1, max_length = 256), SummaryQuery),
    security(("bearer" = ["read"])),
    responses(
        (status = 200, description = "The summaries.", body = SummaryList),
        (status = 400, response = crate::openapi::responses::BadRequest),
        (status = 401, response = crate::openapi::responses::Unauthorized),
        (status = 403, response = crate::openapi::responses::Forbidden),
        (status = 500, response = crate::openapi::responses::Internal),
        (status = 503, response = crate::openapi::responses::Unavailable),
    ),
)]
pub(super) async fn summaries(
    State(state): State<AppState>,
    ProjectPath(project): ProjectPath,
    Query(query): Query<SummaryQuery>,
) -> Result<Json<SummaryList>, ApiError> {
    let style = query.style.unwrap_or_default();
    let summaries = state
        .sessions()
        .list_session_summaries(&project)
        .await?
        .into_iter()
        .map(|summary| SessionSummary {
            data: summary::in_style(summary.data, style),
            ..summary
        })
        .collect();
    Ok(Json(SummaryList { summaries }))
}

/// `GET /v1/sessions/{project_key}/{session_id}/subkeys`: the session's subpaths.
#[utoipa::path(
    get,
    path = "/v1/sessions/{project_key}/{session_id}/subkeys",
    tag = "sessions",
    operation_id = "list_session_subkeys",
    summary = "A session's transcripts beside the main one",
    description = "Scope `read`.",
    params(("project_key" = String, Path, description = "The project key: 1 to 256 characters and at most 512 bytes of UTF-8, no control characters.", min_length = 1, max_length = 256), ("session_id" = String, Path, description = "The session id: 1 to 256 characters and at most 512 bytes of UTF-8, no control characters.", min_length = 1, max_length = 256)),
    security(("bearer" = ["read"])),
    responses(
        (status = 200, description = "The subpaths.", body = SubkeyList),
        (status = 400, response = crate::openapi::responses::BadRequest),
        (status = 401, response = crate::openapi::responses::Unauthorized),
        (status = 403, response = crate::openapi::responses::Forbidden),
        (status = 500, response = crate::openapi::responses::Internal),
        (status = 503, response = crate::openapi::responses::Unavailable),
    ),
)]
pub(super) async fn subkeys(
    State(state): State<AppState>,
    SessionPath(project, session): SessionPath,
) -> Result<Json<SubkeyList>, ApiError> {
    let subkeys = state.sessions().list_subkeys(&project, &session).await?;
    Ok(Json(SubkeyList { subkeys }))
}

/// `DELETE /v1/sessions/{project_key}/{session_id}[?subpath=…]`: 204, also when there
/// was nothing to delete. Without `subpath` the whole session goes.
#[utoipa::path(
    delete,
    path = "/v1/sessions/{project_key}/{session_id}",
    tag = "sessions",
    operation_id = "delete_session",
    summary = "Delete a session or one of its transcripts",
    description = "Scope `admin`: a transcript is the only record of a conversation. Without `subpath` the whole session goes (every transcript and the summary). 204 also when there was nothing to delete.",
    params(("project_key" = String, Path, description = "The project key: 1 to 256 characters and at most 512 bytes of UTF-8, no control characters.", min_length = 1, max_length = 256), ("session_id" = String, Path, description = "The session id: 1 to 256 characters and at most 512 bytes of UTF-8, no control characters.", min_length = 1, max_length = 256), SubpathQuery),
    security(("bearer" = ["admin"])),
    responses(
        (status = 204, description = "Deleted (or there was nothing)."),
        (status = 400, response = crate::openapi::responses::BadRequest),
        (status = 401, response = crate::openapi::responses::Unauthorized),
        (status = 403, response = crate::openapi::responses::Forbidden),
        (status = 500, response = crate::openapi::responses::Internal),
        (status = 503, response = crate::openapi::responses::Unavailable),
    ),
)]
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
#[utoipa::path(
    delete,
    path = "/v1/sessions/{project_key}/summaries",
    tag = "sessions",
    operation_id = "delete_session_named_summaries",
    summary = "Delete the session named `summaries`",
    description = "Scope `admin`. The same as deleting `/v1/sessions/{project_key}/{session_id}` with the session id `summaries`, whose path the summaries route takes.",
    params(("project_key" = String, Path, description = "The project key: 1 to 256 characters and at most 512 bytes of UTF-8, no control characters.", min_length = 1, max_length = 256), SubpathQuery),
    security(("bearer" = ["admin"])),
    responses(
        (status = 204, description = "Deleted (or there was nothing)."),
        (status = 400, response = crate::openapi::responses::BadRequest),
        (status = 401, response = crate::openapi::responses::Unauthorized),
        (status = 403, response = crate::openapi::responses::Forbidden),
        (status = 500, response = crate::openapi::responses::Internal),
        (status = 503, response = crate::openapi::responses::Unavailable),
    ),
)]
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

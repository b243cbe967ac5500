//! The API document: OpenAPI 3.1, generated from the handlers' `#[utoipa::path]`
//! annotations and the `ToSchema` types (core's behind its `openapi` feature), served
//! at `GET /v1/openapi.json` and kept in the repository as `docs/openapi.json`.
//!
//! Every route of `routes/mod.rs` is listed in [`ApiDoc`]; a test compares the two, and
//! another the served document with the committed one, so an API change shows as a
//! diff of `docs/openapi.json`. Schemathesis fuzzes the API from it (`.ci/fuzz-api`),
//! checking that every response matches what the document says.
//!
//! The error responses are shared (`components/responses`), one per status, all with
//! the [`ErrorEnvelope`] body that `error.rs` writes.

use std::sync::OnceLock;

use axum::{
    http::{HeaderValue, header},
    response::{IntoResponse, Response},
};
use utoipa::{
    Modify, OpenApi,
    openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
};

pub(crate) mod responses;

use responses::{
    BadRequest, Conflict, Forbidden, Internal, NotFound, PayloadTooLarge, Unauthorized,
    Unavailable, Unprocessable, UnsupportedMediaType,
};

use crate::error::{ErrorDetail, ErrorEnvelope};
use crate::routes::{
    agents, arenas, events, health, queues, sessions, stats, tasks, workers, workspaces,
};

/// The whole document. `paths` names every handler; the schemas they use are collected
/// from them.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "turnq",
        description = "An event-sourced job queue for AI agent turns. Every `/v1` route \
            except this document needs a bearer token (`turnq token create`) with the \
            scope its operation names: `read`, `submit` or `admin` (an `admin` token may \
            do everything). Every error is `{\"error\":{\"code\",\"message\",\"request_id\"}}`.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    paths(
        health::healthz,
        health::readyz,
        health::metrics,
        document,
        tasks::list,
        tasks::submit,
        tasks::submit_batch,
        tasks::get,
        tasks::events,
        tasks::cancel,
        tasks::retry,
        tasks::approve,
        tasks::respond,
        tasks::tree,
        workspaces::worktree,
        workspaces::archive,
        workspaces::changes,
        workspaces::apply,
        workspaces::reject,
        workspaces::revert,
        workspaces::checkpoints,
        workspaces::restore,
        tasks::inbox,
        arenas::create,
        arenas::list,
        arenas::get,
        arenas::pick_winner,
        events::stream,
        workers::list,
        queues::list,
        queues::get,
        queues::pause,
        queues::resume,
        agents::list,
        agents::get,
        agents::put,
        agents::delete,
        stats::usage,
        sessions::list,
        sessions::summaries,
        sessions::load,
        sessions::append,
        sessions::subkeys,
        sessions::delete,
        sessions::delete_session_named_summaries,
    ),
    components(
        // The `data:` of each event of the stream, which the SSE body cannot name.
        schemas(ErrorEnvelope, ErrorDetail, turnq_core::event::LiveEvent),
        responses(
            BadRequest,
            Unauthorized,
            Forbidden,
            NotFound,
            Conflict,
            PayloadTooLarge,
            UnsupportedMediaType,
            Unprocessable,
            Unavailable,
            Internal
        ),
    ),
    modifiers(&BearerScheme),
    tags(
        (name = "health", description = "Probes and metrics, open to all."),
        (name = "tasks", description = "Submitting, reading and moving tasks."),
        (name = "arenas", description = "One task given to several agents at once, compared, and the winner picked."),
        (name = "events", description = "The live event stream."),
        (name = "queues", description = "Queues, their figures, pausing."),
        (name = "agents", description = "The agent registry."),
        (name = "workers", description = "The worker registry."),
        (name = "stats", description = "Usage statistics."),
        (name = "sessions", description = "The session store (agent transcripts)."),
        (name = "workspaces", description = "A session's git worktree, its pending changes and checkpoints."),
    ),
)]
pub struct ApiDoc;

/// The bearer scheme every scoped operation names, with its scope as the "role" that
/// OpenAPI 3.1 lets a non-OAuth requirement list.
struct BearerScheme;

impl Modify for BearerScheme {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "A token from `turnq token create --scope read|submit|admin`. Each \
                         operation lists the scope it needs; `admin` allows everything.",
                    ))
                    .build(),
            ),
        );
    }
}

/// The document as served: built once, it never changes while the process runs.
pub fn document_json() -> &'static str {
    static JSON: OnceLock<String> = OnceLock::new();
    JSON.get_or_init(|| {
        // Serialising a tree of maps, strings and numbers cannot fail; say so rather
        // than serve an empty document.
        ApiDoc::openapi()
            .to_pretty_json()
            .unwrap_or_else(|e| unreachable!("the API document always serialises: {e}"))
    })
}

/// The API document (this one). Open like `/healthz`: it describes the API and holds
/// no data, and tools (client generators, Schemathesis) fetch it without a token.
#[utoipa::path(
    get,
    path = "/v1/openapi.json",
    tag = "health",
    operation_id = "openapi_document",
    responses(
        (status = 200, description = "This document, OpenAPI 3.1.", content_type = "application/json", body = Object),
        (status = 500, response = Internal),
    ),
)]
pub(crate) async fn document() -> Response {
    let mut response = document_json().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

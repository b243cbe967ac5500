//! The routes, one module per resource, grouped by the scope they need.

// Visible to the crate for `openapi/mod.rs`, which lists every handler.
pub(crate) mod agents;
pub(crate) mod arenas;
pub(crate) mod events;
pub(crate) mod health;
pub(crate) mod queues;

pub(crate) use queues::unserved as unserved_agents;
pub(crate) use tasks::{count as count_task, count_retry_by_person};
pub(crate) use workers::LISTED_FOR as WORKERS_LISTED_FOR;
pub(crate) mod sessions;
pub(crate) mod stats;
pub(crate) mod tasks;
pub(crate) mod workers;
pub(crate) mod workspaces;

use axum::{
    Router,
    extract::DefaultBodyLimit,
    middleware,
    routing::{delete, get, post, put},
};
use turnq_core::auth::Scope;

use crate::{AppState, auth};

/// The largest body of a single submission: the 1 MiB input limit plus room for the
/// other fields, so an oversized input reaches validation and gets its own message.
const SUBMIT_BODY_LIMIT: usize = 2 * 1024 * 1024;
/// The largest body of a batch submission.
const BATCH_BODY_LIMIT: usize = 64 * 1024 * 1024;

/// `routes` behind a token with `scope`.
fn scoped(state: &AppState, scope: Scope, routes: Router<AppState>) -> Router<AppState> {
    routes.route_layer(middleware::from_fn_with_state(
        (state.clone(), scope),
        auth::require,
    ))
}

pub(crate) fn router(state: &AppState) -> Router<AppState> {
    let read = Router::new()
        .route("/v1/tasks", get(tasks::list))
        .route("/v1/tasks/{id}", get(tasks::get))
        .route("/v1/tasks/{id}/events", get(tasks::events))
        .route("/v1/tasks/{id}/tree", get(tasks::tree))
        .route(
            "/v1/sessions/{project_key}/{session_id}/worktree",
            get(workspaces::worktree),
        )
        .route(
            "/v1/sessions/{project_key}/{session_id}/changes",
            get(workspaces::changes),
        )
        .route(
            "/v1/sessions/{project_key}/{session_id}/checkpoints",
            get(workspaces::checkpoints),
        )
        .route("/v1/events/stream", get(events::stream))
        .route("/v1/inbox", get(tasks::inbox))
        .route("/v1/workers", get(workers::list))
        .route("/v1/queues", get(queues::list))
        .route("/v1/queues/{name}", get(queues::get))
        .route("/v1/arenas", get(arenas::list))
        .route("/v1/arenas/{id}", get(arenas::get))
        .route("/v1/agents", get(agents::list))
        .route("/v1/agents/{name}", get(agents::get))
        .route("/v1/stats/usage", get(stats::usage))
        .route("/v1/sessions/{project_key}", get(sessions::list))
        .route(
            "/v1/sessions/{project_key}/summaries",
            get(sessions::summaries),
        )
        .route(
            "/v1/sessions/{project_key}/{session_id}/entries",
            get(sessions::load),
        )
        .route(
            "/v1/sessions/{project_key}/{session_id}/subkeys",
            get(sessions::subkeys),
        );
    let submit = Router::new()
        .route(
            "/v1/tasks",
            post(tasks::submit).layer(DefaultBodyLimit::max(SUBMIT_BODY_LIMIT)),
        )
        .route(
            "/v1/tasks/batch",
            post(tasks::submit_batch).layer(DefaultBodyLimit::max(BATCH_BODY_LIMIT)),
        )
        .route(
            "/v1/arenas",
            post(arenas::create).layer(DefaultBodyLimit::max(SUBMIT_BODY_LIMIT)),
        )
        // The person comparing the contestants decides with the token that submits them.
        .route("/v1/arenas/{id}/winner", post(arenas::pick_winner))
        .route("/v1/tasks/{id}/cancel", post(tasks::cancel))
        // The person a turn asks answers with the same token that submits its tasks.
        .route("/v1/tasks/{id}/respond", post(tasks::respond))
        // A person reviewing an agent's work uses the token that submits its tasks.
        .route(
            "/v1/sessions/{project_key}/{session_id}/worktree/archive",
            post(workspaces::archive),
        )
        .route(
            "/v1/sessions/{project_key}/{session_id}/changes/apply",
            post(workspaces::apply),
        )
        .route(
            "/v1/sessions/{project_key}/{session_id}/changes/reject",
            post(workspaces::reject),
        )
        .route(
            "/v1/sessions/{project_key}/{session_id}/changes/revert",
            post(workspaces::revert),
        )
        .route("/v1/checkpoints/{id}/restore", post(workspaces::restore))
        .route(
            "/v1/sessions/{project_key}/{session_id}/entries",
            post(sessions::append).layer(DefaultBodyLimit::max(state.config().session_body_limit)),
        );
    let admin = Router::new()
        .route("/v1/tasks/{id}/retry", post(tasks::retry))
        .route("/v1/tasks/{id}/approve", post(tasks::approve))
        // Stopping a queue's dispatch affects every submitter of it: an operator's act.
        .route("/v1/queues/{name}/pause", post(queues::pause))
        .route("/v1/queues/{name}/resume", post(queues::resume))
        // An agent's config decides what workers run: an operator's act.
        .route("/v1/agents/{name}", put(agents::put))
        .route("/v1/agents/{name}", delete(agents::delete))
        // Deleting a transcript destroys the only record of a conversation: an operator's
        // act, not an agent's, so it needs `admin` (see docs/sessions.md).
        .route(
            "/v1/sessions/{project_key}/{session_id}",
            delete(sessions::delete),
        )
        .route(
            "/v1/sessions/{project_key}/summaries",
            delete(sessions::delete_session_named_summaries),
        );
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        // Open like the health probes, for scrapers; it names queues and agents only.
        .route("/metrics", get(health::metrics))
        // Open too: it describes the API and holds no data (see openapi/mod.rs). Every
        // route here must be in its `paths`; a test checks.
        .route("/v1/openapi.json", get(crate::openapi::document))
        .merge(
            // Outside the token check, which reads Postgres too.
            Router::new()
                .merge(scoped(state, Scope::Read, read))
                .merge(scoped(state, Scope::Submit, submit))
                .merge(scoped(state, Scope::Admin, admin))
                .route_layer(middleware::from_fn_with_state(
                    state.clone(),
                    crate::outage::fail_fast,
                )),
        )
        .fallback(|| async { crate::ApiError::not_found("no such route") })
        // axum's own 405 has an empty body; every refusal uses the envelope.
        .method_not_allowed_fallback(|| async {
            crate::ApiError::new(
                axum::http::StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this route does not answer this method",
            )
        })
}

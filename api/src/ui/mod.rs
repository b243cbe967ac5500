//! The web UI: server-rendered pages for the operator, served by the API at `/`.
//!
//! # Layout
//!
//! - [`viewer`]: [`viewer::Viewer`], the extractor every page and action starts from
//!   (who is looking, from the sign-in cookie, and what they may do), and the CSRF and
//!   cross-site checks of every action. [`signin`]: the sign-in and sign-out pages.
//! - [`error`]: `PageError`, an error shown as a page.
//! - [`layout`]: the page shell (navigation, help dialog) and the small pieces every
//!   page shares (times, state badges, links that keep a filter).
//! - `pages/`: one module per page, each a handler that reads `turnq-core` stores and
//!   renders HTML with maud. Pages never call the JSON routes; they share the stores.
//! - [`request`]: what a blocked task asks a person (a permission, a question, a plan,
//!   a text, or a wait on sub-tasks), as a form fitting its kind, and the answer.
//! - [`review`]: a session's workspace on its page: the worktree, pending changes as
//!   diffs with the forms that apply, reject or revert them, decided changes, and
//!   checkpoints to restore.
//! - [`actions`]: the POST forms (retry, cancel, approve, answer a request, run again,
//!   submit, bulk, pause/resume, decide changes, restore a checkpoint), each checking the viewer's scope as the JSON route would, then
//!   redirecting back (post/redirect/get), so every action works without JavaScript;
//!   picking an arena's winner too.
//! - [`assets`]: the stylesheet, script and icon in `api/ui/`, compiled into the binary.
//!
//! Live updates come from `/v1/events/stream` (the cookie authenticates its GET):
//! `app.js` refreshes the page's `data-live` regions after events, one fetch at a time,
//! not while the tab is hidden. Every response carries a strict Content-Security-Policy:
//! no inline script or style, nothing from another origin.

mod actions;
mod assets;
mod chart;
mod error;
mod layout;
mod pages;
mod request;
mod review;
mod signin;
pub(crate) mod viewer;

use axum::{
    Router,
    extract::Request,
    http::{HeaderValue, header},
    middleware::{self, Next},
    response::Response,
    routing::{get, post},
};

use crate::AppState;

/// What a page may load and do: only this origin's own files, no inline code, no frames.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
    connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The UI's routes. Pages need a signed-in viewer with `read`; actions check their own
/// scope.
pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(pages::overview::page))
        .route("/tasks", get(pages::tasks::page))
        .route("/tasks/{id}", get(pages::task::page))
        .route("/inbox", get(pages::inbox::page))
        .route("/workers", get(pages::workers::page))
        .route("/sessions", get(pages::sessions::list))
        .route(
            "/sessions/{project}/{session}",
            get(pages::sessions::transcript),
        )
        .route("/agents", get(pages::agents::page))
        .route("/arenas", get(pages::arena::list))
        .route("/arenas/{id}", get(pages::arena::page))
        .route("/signin", get(signin::form).post(signin::sign_in))
        .route("/signout", post(signin::sign_out))
        .route("/ui/tasks", post(actions::submit))
        .route("/ui/tasks/bulk", post(actions::bulk))
        // Before the generic task actions: a static segment wins over `{action}`.
        .route("/ui/tasks/{id}/respond", post(actions::respond))
        .route("/ui/tasks/{id}/{action}", post(actions::on_task))
        .route("/ui/queues/{name}/{action}", post(actions::on_queue))
        .route("/ui/arenas/{id}/winner", post(actions::pick_winner))
        .route(
            "/ui/sessions/{project}/{session}/changes/{action}",
            post(actions::on_changes),
        )
        .route("/ui/checkpoints/{id}/restore", post(actions::restore))
        .route("/assets/{name}", get(assets::serve))
        .layer(middleware::from_fn(security_headers))
}

/// The headers of every UI response: the CSP, no sniffing, no framing, no referrer
/// leaking task ids to other sites.
async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    response
}

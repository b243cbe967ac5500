//! `GET /v1/events/stream`: the event log as Server-Sent Events, live and resumable.
//!
//! A client starts from `after=<cursor>`, from the `Last-Event-ID` header (what a
//! browser's `EventSource` sends when it reconnects), or from now. It first reads what
//! it missed from the log, page by page, up to the process' feed head, then follows the
//! feed ([`turnq_core::event::EventFeed`]): one reader of the log per process, fanned
//! out to every client through one bounded channel. Each event goes out once, in
//! commit order, with its cursor as the SSE `id`; a client that falls behind the
//! channel gets a last `reconnect` event naming the cursor to resume from, and the
//! stream ends. Keep-alive comments keep idle streams open through proxies.

use std::{collections::VecDeque, convert::Infallible, sync::Arc, time::Duration};

use axum::{
    extract::State,
    http::HeaderMap,
    response::sse::{Event, KeepAlive, Sse},
};
use futures::{Stream, stream};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::broadcast::{self, error::RecvError};
use tokio_util::sync::CancellationToken;
use turnq_core::{
    event::{Cursor, LiveEvent, LiveFilter, LiveLog, StreamRef, TaskEvent},
    task::check_name,
};
use uuid::Uuid;

use crate::{ApiError, AppState, extract::Query};

/// Events read from the log per page while a client catches up.
const CATCH_UP_PAGE: u64 = 500;
/// How often an idle stream sends a keep-alive comment.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// The query of `GET /v1/events/stream`.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct StreamQuery {
    /// Resume after this cursor (an event's `id`); the `Last-Event-ID` header does the
    /// same. Without either: from now.
    after: Option<String>,
    /// Only the events of this task.
    task: Option<String>,
    /// Only the events of tasks of this project.
    project: Option<String>,
    /// Only the events of tasks of this session (with `project`, one session's key).
    session: Option<String>,
    /// Only the events of tasks of this queue.
    queue: Option<String>,
    /// Only events of this kind, or of kinds starting with it when it ends in `.`.
    kind: Option<String>,
}

impl StreamQuery {
    fn filter(self) -> Result<(LiveFilter, Option<Cursor>), ApiError> {
        let text = |field: &str, value: Option<String>| -> Result<Option<String>, ApiError> {
            match value {
                Some(v) if v.is_empty() || v.contains('\0') || v.chars().count() > 4096 => {
                    Err(ApiError::bad_request(format!(
                        "{field} must be 1 to 4096 characters without NUL"
                    )))
                }
                other => Ok(other),
            }
        };
        let task = match self.task {
            None => None,
            Some(t) => Some(Uuid::parse_str(&t).map_err(|_| {
                ApiError::bad_request(format!("task {t:?} is not a task id (a UUID)"))
            })?),
        };
        if let Some(queue) = &self.queue {
            check_name("queue", queue)?;
        }
        let kind = text("kind", self.kind)?;
        if let Some(k) = &kind
            && !k
                .chars()
                .all(|c| c.is_ascii_lowercase() || c == '.' || c == '_')
        {
            return Err(ApiError::bad_request(format!(
                "kind {k:?} is not an event kind: dotted lowercase, e.g. task.completed, or a prefix such as task."
            )));
        }
        let after = match self.after {
            None => None,
            Some(a) => Some(a.parse::<Cursor>().map_err(ApiError::bad_request)?),
        };
        Ok((
            LiveFilter {
                task,
                project: text("project", self.project)?,
                session_id: text("session", self.session)?,
                queue: self.queue,
                kind,
            },
            after,
        ))
    }
}

/// `GET /v1/events/stream`.
#[utoipa::path(
    get,
    path = "/v1/events/stream",
    tag = "events",
    operation_id = "event_stream",
    summary = "The event log, live, as Server-Sent Events",
    description = "Scope `read`. Each event: `id:` its cursor, `event:` its kind, `data:` a \
        `LiveEvent` as JSON. A stream that ends early sends a last `reconnect` event whose \
        data names the cursor to resume from. Keep-alive comments every 15 s. See docs/events.md.",
    params(StreamQuery, ("Last-Event-ID" = Option<String>, Header,
        description = "Resume after this cursor (what `EventSource` sends when it reconnects); `after` wins over it.")),
    security(("bearer" = ["read"])),
    responses(
        (status = 200, description = "The stream; each `data:` is a `LiveEvent`.",
            content_type = "text/event-stream", body = String),
        (status = 400, response = crate::openapi::responses::BadRequest),
        (status = 401, response = crate::openapi::responses::Unauthorized),
        (status = 403, response = crate::openapi::responses::Forbidden),
        (status = 500, response = crate::openapi::responses::Internal),
        (status = 503, response = crate::openapi::responses::Unavailable),
    ),
)]
pub(super) async fn stream(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<StreamQuery>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let (filter, after) = query.filter()?;
    let last_event_id = match headers.get("last-event-id") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|v| v.parse::<Cursor>().ok())
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "the Last-Event-ID header is not a cursor of this stream (an event's id, e.g. 7321-1045)",
                    )
                })?,
        ),
    };
    let (Some(feed), Some(tasks)) = (state.feed(), state.tasks()) else {
        return Err(ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "this API process runs no event stream",
        ));
    };
    let (live, head) = feed.subscribe();
    // The query's `after` wins over the header: a client that names a cursor means it.
    let start = after.or(last_event_id).unwrap_or(head);
    let follower = Follower {
        db: state.db().clone(),
        filter,
        last: start,
        until: head,
        catching_up: start < head,
        pending: VecDeque::new(),
        live,
        stop: tasks.stopping().clone(),
        done: false,
    };
    Ok(Sse::new(stream::unfold(follower, Follower::next))
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE).text("keep-alive")))
}

/// One client's place in the stream.
struct Follower {
    db: sea_orm::DatabaseConnection,
    filter: LiveFilter,
    /// The last cursor passed on (or skipped by the filter): where to resume from.
    last: Cursor,
    /// The feed's head when the client subscribed: the log is read up to it.
    until: Cursor,
    catching_up: bool,
    pending: VecDeque<LiveEvent>,
    live: broadcast::Receiver<Arc<LiveEvent>>,
    stop: CancellationToken,
    done: bool,
}

impl Follower {
    async fn next(mut self) -> Option<(Result<Event, Infallible>, Follower)> {
        loop {
            if self.done {
                return None;
            }
            if let Some(event) = self.pending.pop_front() {
                return Some((Ok(sse(&event)), self));
            }
            if self.catching_up {
                match self.read_page().await {
                    Ok(true) => continue,
                    Ok(false) => {
                        // Everything up to the head that this filter wants was in the
                        // log; what comes on the channel up to it repeats it.
                        self.last = self.last.max(self.until);
                        self.catching_up = false;
                        continue;
                    }
                    Err(e) => {
                        // The client resumes from where it got: nothing is lost.
                        tracing::warn!(error = %turnq_core::error::chain(&e),
                            "an event stream could not read the log; ending it");
                        self.done = true;
                        return Some((Ok(self.reconnect("the log could not be read")), self));
                    }
                }
            }
            let received = tokio::select! {
                received = self.live.recv() => received,
                _ = self.stop.cancelled() => {
                    self.done = true;
                    return Some((Ok(self.reconnect("the server is shutting down")), self));
                }
            };
            match received {
                Ok(event) => {
                    if event.cursor <= self.last {
                        // Read from the log already, while catching up.
                        continue;
                    }
                    self.last = event.cursor;
                    if self.filter.matches(&event) {
                        return Some((Ok(sse(&event)), self));
                    }
                }
                Err(RecvError::Lagged(missed)) => {
                    self.done = true;
                    let why = format!("the client fell {missed} events behind");
                    return Some((Ok(self.reconnect(&why)), self));
                }
                Err(RecvError::Closed) => return None,
            }
        }
    }

    /// Reads the next page of the log up to `until` into `pending`; false when there was
    /// nothing left.
    async fn read_page(&mut self) -> Result<bool, turnq_core::Error> {
        let stream = self
            .filter
            .task
            .map(|t| StreamRef::new(TaskEvent::STREAM_TYPE, t.to_string()));
        let mut page = LiveLog::after(
            &self.db,
            self.last,
            Some(self.until),
            stream.as_ref(),
            CATCH_UP_PAGE,
        )
        .await?;
        let Some(last) = page.last().map(|e| e.cursor) else {
            return Ok(false);
        };
        LiveLog::label(&self.db, &mut page).await?;
        self.last = last;
        self.pending
            .extend(page.into_iter().filter(|e| self.filter.matches(e)));
        Ok(true)
    }

    /// The last event of a stream that ends early: where to reconnect from, and why.
    fn reconnect(&self, why: &str) -> Event {
        Event::default()
            .id(self.last.to_string())
            .event("reconnect")
            .data(json!({"reconnect_from": self.last, "reason": why}).to_string())
    }
}

fn sse(event: &LiveEvent) -> Event {
    Event::default()
        .id(event.cursor.to_string())
        .event(event.event.kind.as_str())
        .data(serde_json::to_string(event).unwrap_or_else(|e| {
            // A serde_json::Value always serialises; say so rather than send nothing.
            json!({"cursor": event.cursor, "error": e.to_string()}).to_string()
        }))
}

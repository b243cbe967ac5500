//! A client of the live event stream (`GET /v1/events/stream`), for the command line
//! (`turnq watch`, `turnq submit --wait`) and the tests.
//!
//! [`EventStream::connect`] is one connection; [`EventStream::follow`] reconnects after
//! any break (a network error, the server restarting, a `reconnect` event telling a
//! slow client to come back) with the cursor of the last event it passed on, so its
//! caller sees every event once, in order, across reconnects.

use std::time::Duration;

use anyhow::{Context, Result};
use eventsource_stream::Eventsource;
use futures::{Stream, StreamExt, stream::BoxStream};
use serde_json::Value;

/// One event of the stream.
#[derive(Clone, Debug, PartialEq)]
pub struct StreamEvent {
    /// The event's cursor: resume after it with `after=` or `Last-Event-ID`.
    pub id: String,
    /// The event's kind (`task.completed`), or `reconnect`.
    pub kind: String,
    /// The event's JSON (`docs/events.md`).
    pub data: Value,
}

/// Where the stream is, and how to read it.
#[derive(Clone, Debug)]
pub struct EventStream {
    /// The API's base URL, e.g. `http://127.0.0.1:8080`.
    pub base: String,
    pub token: String,
    /// Filters, as the query string takes them (e.g. `task=…&kind=task.`).
    pub filters: Vec<(String, String)>,
}

/// Why a connection to the stream failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The server refused the request itself (a bad token, a bad filter or cursor):
    /// reconnecting will not mend it.
    #[error("the event stream answered {status}: {body}")]
    Refused {
        status: reqwest::StatusCode,
        body: String,
    },
    /// The server could not be reached, or failed: worth reconnecting.
    #[error("connecting to the event stream of {base}")]
    Unreachable {
        base: String,
        #[source]
        source: reqwest::Error,
    },
}

/// The wait before reconnecting after a break; a server that is away for longer is
/// retried at this pace until it returns.
const RECONNECT_AFTER: Duration = Duration::from_millis(200);

impl EventStream {
    /// One connection, starting after `from` (a cursor; from now when `None`). Ends
    /// when the server ends the stream or the connection breaks (an `Err` item).
    pub async fn connect(
        &self,
        http: &reqwest::Client,
        from: Option<&str>,
    ) -> Result<BoxStream<'static, Result<StreamEvent>>, ConnectError> {
        let mut request = http
            .get(format!(
                "{}/v1/events/stream",
                self.base.trim_end_matches('/')
            ))
            .bearer_auth(&self.token)
            .query(&self.filters);
        if let Some(from) = from {
            request = request.header("Last-Event-ID", from);
        }
        let unreachable = |source| ConnectError::Unreachable {
            base: self.base.clone(),
            source,
        };
        let response = request.send().await.map_err(unreachable)?;
        let status = response.status();
        if status.is_client_error() {
            let body = response.text().await.unwrap_or_default();
            return Err(ConnectError::Refused { status, body });
        }
        let response = response.error_for_status().map_err(unreachable)?;
        Ok(response
            .bytes_stream()
            .eventsource()
            .map(|item| {
                let event = item.context("reading the event stream")?;
                let data = serde_json::from_str(&event.data)
                    .with_context(|| format!("an event that is not JSON: {}", event.data))?;
                Ok(StreamEvent {
                    id: event.id,
                    kind: event.event,
                    data,
                })
            })
            .boxed())
    }

    /// Every event after `from` (from now when `None`), reconnecting after any break
    /// from the last one passed on; `reconnect` events are followed, not passed on. Ends
    /// only when the caller stops reading, or on an answer that reconnecting cannot
    /// mend (a 4xx: a bad token or filter).
    pub fn follow(
        self,
        http: reqwest::Client,
        from: Option<String>,
    ) -> impl Stream<Item = Result<StreamEvent>> {
        struct State {
            source: EventStream,
            http: reqwest::Client,
            last: Option<String>,
            current: Option<BoxStream<'static, Result<StreamEvent>>>,
        }
        let state = State {
            source: self,
            http,
            last: from,
            current: None,
        };
        futures::stream::unfold(state, |mut state| async move {
            loop {
                let Some(current) = state.current.as_mut() else {
                    match state
                        .source
                        .connect(&state.http, state.last.as_deref())
                        .await
                    {
                        Ok(stream) => state.current = Some(stream),
                        Err(e @ ConnectError::Refused { .. }) => {
                            return Some((Err(e.into()), state));
                        }
                        Err(e) => {
                            tracing::debug!(error = %turnq_core::error::chain(&e),
                                "the event stream is away; reconnecting");
                            tokio::time::sleep(RECONNECT_AFTER).await;
                        }
                    }
                    continue;
                };
                match current.next().await {
                    Some(Ok(event)) if event.kind == "reconnect" => {
                        if let Some(from) = event.data["reconnect_from"].as_str() {
                            state.last = Some(from.to_owned());
                        }
                        state.current = None;
                    }
                    Some(Ok(event)) => {
                        state.last = Some(event.id.clone());
                        return Some((Ok(event), state));
                    }
                    Some(Err(_)) | None => {
                        state.current = None;
                        tokio::time::sleep(RECONNECT_AFTER).await;
                    }
                }
            }
        })
    }
}

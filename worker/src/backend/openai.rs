//! The `openai` backend: an OpenAI-compatible streaming chat endpoint.
//!
//! Configuration ([`OpenAiConfig`], an agent's JSON `config`): `base_url`, `model` (the
//! task's `model` wins), `api_key_env` (the name of the environment variable holding
//! the key, read at each turn; `Authorization: Bearer` is sent only when it is set),
//! `system` (an optional system prompt) and `timeout` (a humantime duration such as
//! `"2m"`; the turn's deadline applies too, whichever comes first).
//!
//! A turn is one `POST {base_url}/chat/completions` with `stream: true` and
//! `stream_options: {include_usage: true}`. `messages` are the system prompt, then,
//! when the task has a `session_id`, the session's main transcript from the session
//! store (project = the task's project), then the task's input as the user message.
//! The reply is read as Server-Sent Events (by the `eventsource-stream` crate, to the
//! spec: comments and other fields skipped, an event's `data` lines joined) up to the
//! event whose data is `[DONE]`. Each event's data is one chunk of the completion: its
//! `choices[0].delta.content` streams as `text` (a `reasoning_content` delta, which some
//! compatible servers send, as `reasoning`); usage comes from the chunk that carries
//! `usage` (`prompt_tokens`, `completion_tokens`). The summary is the reply.
//!
//! Transcript entries are in the Claude Agent SDK's shape, so that an SDK process
//! resuming the session reads them: `{"type": "user" | "assistant", "uuid", "parentUuid",
//! "sessionId", "timestamp", "message": {"role", "content"}}`. Replay takes the `user`
//! and `assistant` entries of the transcript, whoever wrote them, with `content` a
//! string or a list of blocks whose `text` blocks are joined; other entries are
//! skipped. After the reply, the user entry and the assistant entry (fresh uuids) are
//! appended in one batch, so a transcript never holds a question without its answer.
//!
//! Failures: HTTP 429 and 5xx, a connection error, a stream cut or broken before
//! `[DONE]`, an event that is not JSON or not UTF-8, an error event in the stream
//! (`{"error": …}`), the timeout, and a session store that cannot be reached
//! are retryable; any other 4xx is fatal, with the body's `error.message`; a malformed
//! session key is fatal. Cancellation drops the request at once.

use std::{pin::pin, sync::Arc, time::Duration};

use eventsource_stream::{EventStreamError, Eventsource};
use futures::{FutureExt, Stream, StreamExt, future::BoxFuture};
use serde::{Deserialize, Deserializer};
use serde_json::{Value, json};
use tokio::time::{Instant, sleep_until};
use turnq_core::{
    event::Usage,
    session::{Entries, SessionKey},
    time,
};

use super::{
    AgentBackend, OutputSink, Turn, TurnError, TurnOutcome, input_text,
    script::{MAX_SUMMARY_CHARS, truncate},
};

/// The longest error body quoted in a failure message, in characters.
const MAX_ERROR_CHARS: usize = 1000;

/// An agent's configuration of the `openai` backend.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenAiConfig {
    /// The API root, e.g. `http://localhost:11434/v1`; `/chat/completions` is added.
    pub base_url: String,
    /// The model when the task names none.
    pub model: String,
    /// The environment variable that holds the API key (never the key itself).
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// A system prompt put before the history.
    #[serde(default)]
    pub system: Option<String>,
    /// The longest a request may take, e.g. `"90s"`; unset: only the turn's deadline.
    #[serde(default, deserialize_with = "humantime_opt")]
    pub timeout: Option<Duration>,
}

fn humantime_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    Option::<String>::deserialize(d)?
        .map(|s| {
            humantime::parse_duration(&s).map_err(|e| {
                serde::de::Error::custom(format!("`timeout` {s:?} is not a duration: {e}"))
            })
        })
        .transpose()
}

/// Streams a chat completion per turn; see the module documentation.
#[derive(Clone, Debug)]
pub struct OpenAiBackend {
    config: Arc<OpenAiConfig>,
    client: reqwest::Client,
}

impl OpenAiBackend {
    /// A backend for `config`; refuses a `base_url` that is not http(s) and an empty
    /// `model`.
    pub fn new(config: OpenAiConfig) -> Result<Self, String> {
        let url = reqwest::Url::parse(&config.base_url).map_err(|e| {
            format!(
                "the `openai` backend's `base_url` {:?} is not a URL: {e}",
                config.base_url
            )
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!(
                "the `openai` backend's `base_url` {:?} is not http(s)",
                config.base_url
            ));
        }
        if config.model.trim().is_empty() {
            return Err("the `openai` backend's config has an empty `model`".into());
        }
        let client = reqwest::Client::builder()
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(OpenAiBackend {
            config: Arc::new(config),
            client,
        })
    }

    /// A backend from an agent's JSON `config` object; the message says what is wrong.
    pub fn from_config(config: Value) -> Result<Self, String> {
        let config: OpenAiConfig = serde_json::from_value(config)
            .map_err(|e| format!("the `openai` backend's config is malformed: {e}"))?;
        Self::new(config)
    }

    pub fn config(&self) -> &OpenAiConfig {
        &self.config
    }
}

impl AgentBackend for OpenAiBackend {
    fn name(&self) -> &'static str {
        "openai"
    }

    fn run(&self, turn: Turn) -> BoxFuture<'static, Result<TurnOutcome, TurnError>> {
        let config = self.config.clone();
        let client = self.client.clone();
        async move {
            let deadline = match config.timeout {
                Some(timeout) => turn.deadline.min(Instant::now() + timeout),
                None => turn.deadline,
            };
            tokio::select! {
                biased;
                _ = turn.cancel.cancelled() => Err(TurnError::Cancelled),
                _ = sleep_until(deadline) => Err(TurnError::retryable(
                    "the chat completion ran past its timeout or the turn's deadline",
                )),
                result = run(&config, &client, &turn) => result,
            }
        }
        .boxed()
    }
}

async fn run(
    config: &OpenAiConfig,
    client: &reqwest::Client,
    turn: &Turn,
) -> Result<TurnOutcome, TurnError> {
    let task = &turn.task;
    let key = match &task.session_id {
        Some(session) => Some(
            SessionKey::new(task.project.clone(), session.clone(), None)
                .map_err(|e| TurnError::fatal(format!("the task's session key: {e}")))?,
        ),
        None => None,
    };
    let history = match &key {
        Some(key) => turn
            .sessions
            .load(key)
            .await
            .map_err(|e| TurnError::retryable(format!("loading session {key}: {e}")))?
            .unwrap_or_default(),
        None => Vec::new(),
    };
    let input = input_text(&task.input);
    let mut messages = Vec::new();
    if let Some(system) = &config.system {
        messages.push(json!({"role": "system", "content": system}));
    }
    messages.extend(history.iter().filter_map(replayed));
    messages.push(json!({"role": "user", "content": input}));
    let model = task.model.as_deref().unwrap_or(&config.model);
    let body = json!({
        "model": model,
        "messages": messages,
        "stream": true,
        "stream_options": {"include_usage": true},
    });

    let url = format!("{}/chat/completions", config.base_url.trim_end_matches('/'));
    let mut request = client.post(&url).json(&body);
    if let Some(key) = config
        .api_key_env
        .as_deref()
        .and_then(|name| std::env::var(name).ok())
        .filter(|key| !key.is_empty())
    {
        request = request.bearer_auth(key);
    }
    let response = request
        .send()
        .await
        .map_err(|e| TurnError::retryable(format!("POST {url}: {}", error_chain(&e))))?;
    let status = response.status();
    if !status.is_success() {
        let body = response.text().await.unwrap_or_default();
        let message = format!("POST {url}: HTTP {status}: {}", error_message(&body));
        return Err(
            if status.as_u16() == 429 || status.is_server_error() || !status.is_client_error() {
                TurnError::retryable(message)
            } else {
                TurnError::fatal(message)
            },
        );
    }

    let reply = read_stream(response.bytes_stream(), &turn.output).await?;
    let usage = reply.usage;
    if let Some(key) = &key {
        let entries = transcript_entries(&history, key, &input, &reply.text);
        let entries = Entries::new(entries).map_err(|e| TurnError::Fatal {
            message: format!("the turn's transcript entries cannot be stored: {e}"),
            usage,
        })?;
        turn.sessions
            .append(key, entries)
            .await
            .map_err(|e| TurnError::Retryable {
                message: format!("appending the turn to session {key}: {e}"),
                usage,
            })?;
    }
    Ok(TurnOutcome::Completed {
        summary: truncate(reply.text.trim().to_owned(), MAX_SUMMARY_CHARS),
        usage,
    })
}

/// A transcript entry as a chat message, if it is a user or assistant message with text.
fn replayed(entry: &Value) -> Option<Value> {
    let kind = entry.get("type").and_then(Value::as_str)?;
    if kind != "user" && kind != "assistant" {
        return None;
    }
    let message = entry.get("message")?;
    let role = message.get("role").and_then(Value::as_str).unwrap_or(kind);
    let content = match message.get("content")? {
        Value::String(text) => text.clone(),
        Value::Array(blocks) => {
            let texts: Vec<&str> = blocks
                .iter()
                .filter(|b| b.get("type").and_then(Value::as_str) == Some("text"))
                .filter_map(|b| b.get("text").and_then(Value::as_str))
                .collect();
            if texts.is_empty() {
                return None;
            }
            texts.join("\n")
        }
        _ => return None,
    };
    Some(json!({"role": role, "content": content}))
}

/// The user entry and the assistant entry of a turn, chained after `history`.
fn transcript_entries(history: &[Value], key: &SessionKey, input: &str, reply: &str) -> Vec<Value> {
    let parent = history
        .iter()
        .rev()
        .find_map(|e| e.get("uuid").and_then(Value::as_str))
        .map(str::to_owned);
    let timestamp = time::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let user = uuid::Uuid::new_v4().to_string();
    let assistant = uuid::Uuid::new_v4().to_string();
    vec![
        json!({
            "type": "user",
            "uuid": user,
            "parentUuid": parent,
            "sessionId": key.session.as_str(),
            "timestamp": timestamp,
            "message": {"role": "user", "content": input},
        }),
        json!({
            "type": "assistant",
            "uuid": assistant,
            "parentUuid": user,
            "sessionId": key.session.as_str(),
            "timestamp": timestamp,
            "message": {"role": "assistant", "content": reply},
        }),
    ]
}

/// What a streamed reply said.
#[derive(Debug, Default)]
struct Reply {
    text: String,
    usage: Usage,
}

/// Reads the SSE body to `data: [DONE]`, streaming the deltas to `output`.
// why generic over the byte stream: the tests feed it bytes cut at every boundary.
async fn read_stream<B, E>(
    body: impl Stream<Item = Result<B, E>>,
    output: &OutputSink,
) -> Result<Reply, TurnError>
where
    B: AsRef<[u8]>,
    E: std::error::Error,
{
    let mut reply = Reply::default();
    let mut events = pin!(body.eventsource());
    while let Some(sse) = events.next().await {
        let sse = sse.map_err(|e| {
            TurnError::retryable(format!("reading the reply stream: {}", stream_error(&e)))
        })?;
        match event(&sse.data, &mut reply)? {
            Event::Done => return Ok(reply),
            Event::Chunks(chunks) => {
                for (stream, text) in chunks {
                    output.send(stream, text).await;
                }
            }
        }
    }
    Err(TurnError::Retryable {
        message: "the reply stream ended before `data: [DONE]`".into(),
        usage: reply.usage,
    })
}

/// Why the reply stream could not be read, with the transport's causes.
fn stream_error<E: std::error::Error>(e: &EventStreamError<E>) -> String {
    match e {
        EventStreamError::Transport(e) => error_chain(e),
        EventStreamError::Utf8(e) => format!("it is not UTF-8 ({e})"),
        EventStreamError::Parser(e) => format!("it is not a Server-Sent Events stream ({e})"),
    }
}

enum Event {
    Done,
    Chunks(Vec<(&'static str, String)>),
}

/// One event's data.
fn event(data: &str, reply: &mut Reply) -> Result<Event, TurnError> {
    if data.trim() == "[DONE]" {
        return Ok(Event::Done);
    }
    let chunk: Value = serde_json::from_str(data).map_err(|e| {
        TurnError::retryable(format!(
            "the reply stream sent an event that is not JSON ({e}): {}",
            truncate(data.to_owned(), MAX_ERROR_CHARS)
        ))
    })?;
    if let Some(error) = chunk.get("error") {
        return Err(TurnError::Retryable {
            message: format!(
                "the reply stream reported an error: {}",
                error_message(&error.to_string())
            ),
            usage: reply.usage,
        });
    }
    if let Some(usage) = chunk.get("usage").filter(|u| u.is_object()) {
        let tokens = |field: &str| usage.get(field).and_then(Value::as_i64).unwrap_or(0);
        reply.usage = Usage {
            input_tokens: tokens("prompt_tokens"),
            output_tokens: tokens("completion_tokens"),
            cost_usd: 0.0,
        };
    }
    let mut chunks = Vec::new();
    if let Some(delta) = chunk.pointer("/choices/0/delta") {
        let field = |name: &str| {
            delta
                .get(name)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
        };
        if let Some(reasoning) = field("reasoning_content") {
            chunks.push(("reasoning", reasoning.to_owned()));
        }
        if let Some(text) = field("content") {
            reply.text.push_str(text);
            chunks.push(("text", text.to_owned()));
        }
    }
    Ok(Event::Chunks(chunks))
}

/// The `error.message` of an error body, else the body itself (cut).
fn error_message(body: &str) -> String {
    let parsed: Option<Value> = serde_json::from_str(body).ok();
    let message = parsed.as_ref().and_then(|v| {
        v.pointer("/error/message")
            .or_else(|| v.get("message"))
            .and_then(Value::as_str)
    });
    match message {
        Some(message) => message.to_owned(),
        None if body.trim().is_empty() => "(empty body)".to_owned(),
        None => truncate(body.trim().to_owned(), MAX_ERROR_CHARS),
    }
}

// `e` with its causes: reqwest's own message rarely says why a connection failed.
use turnq_core::error::chain as error_chain;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::tests::{sessions, task};
    use axum::{
        Json, Router,
        body::{Body, Bytes},
        extract::State,
        http::{HeaderMap, StatusCode, header},
        response::{IntoResponse, Response},
        routing::post,
    };
    use std::sync::Mutex;
    use tokio_util::sync::CancellationToken;
    use turnq_core::event::OutputChunk;
    use turnq_core::session::SessionStore;
    use turnq_testkit::patience;

    /// (authorization header, request body) per request.
    type Received = Arc<Mutex<Vec<(Option<String>, Value)>>>;

    /// What the fake server answers, and what it received.
    #[derive(Clone, Default)]
    struct Fake {
        /// `None`: stream a reply; `Some((status, body))`: fail with it.
        failure: Option<(StatusCode, &'static str)>,
        /// `Some((parts, ending))`: answer 200 with these parts of an SSE body instead
        /// of a reply, each sent as it is, then end the body so.
        stream: Option<(&'static [&'static str], Ending)>,
        received: Received,
    }

    /// How a scripted SSE body ends after its parts.
    #[derive(Clone, Copy)]
    enum Ending {
        /// The body ends cleanly.
        Close,
        /// The connection breaks mid-body (the chunked body is never terminated).
        Break,
        /// The body stays open for good, as a server that forgot to close it would.
        HoldOpen,
    }

    /// One `chat.completion.chunk` event carrying `text`, as an SSE event.
    const DELTA_PARTIAL: &str =
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"partial\"}}]}\n\n";

    fn scripted(parts: &[&'static str], ending: Ending) -> Response {
        let parts: Vec<Result<Bytes, std::io::Error>> = parts
            .iter()
            .map(|part| Ok(Bytes::from_static(part.as_bytes())))
            .collect();
        let parts = futures::stream::iter(parts);
        let body = match ending {
            Ending::Close => Body::from_stream(parts),
            // The break waits for one turn of the server's loop: told "not yet", hyper
            // flushes the head and the parts first, so the client sees a 200 and then a
            // body that stops short, not a connection lost before any answer.
            Ending::Break => Body::from_stream(parts.chain(futures::stream::once(async {
                tokio::task::yield_now().await;
                Err(std::io::Error::other(
                    "the fake server breaks the connection",
                ))
            }))),
            Ending::HoldOpen => Body::from_stream(parts.chain(futures::stream::pending())),
        };
        ([(header::CONTENT_TYPE, "text/event-stream")], body).into_response()
    }

    /// The reply to the n-th request (1-based): `reply n` in three deltas.
    async fn completions(
        State(fake): State<Fake>,
        headers: HeaderMap,
        Json(body): Json<Value>,
    ) -> Response {
        let n = {
            let mut received = fake.received.lock().unwrap();
            let auth = headers
                .get(header::AUTHORIZATION)
                .map(|v| v.to_str().unwrap().to_owned());
            received.push((auth, body));
            received.len()
        };
        if let Some((status, body)) = fake.failure {
            return (status, body).into_response();
        }
        if let Some((parts, ending)) = fake.stream {
            return scripted(parts, ending);
        }
        let delta = |text: &str| {
            json!({"id": "c1", "object": "chat.completion.chunk",
                   "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": null}]})
        };
        let events = [
            json!({"id": "c1", "object": "chat.completion.chunk",
                   "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}),
            delta("reply"),
            delta(" "),
            delta(&n.to_string()),
            json!({"id": "c1", "object": "chat.completion.chunk",
                   "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}),
            json!({"id": "c1", "object": "chat.completion.chunk", "choices": [],
                   "usage": {"prompt_tokens": 10 * n, "completion_tokens": 3, "total_tokens": 10 * n + 3}}),
        ];
        let mut sse: String = events.iter().map(|e| format!("data: {e}\n\n")).collect();
        sse.push_str("data: [DONE]\n\n");
        ([(header::CONTENT_TYPE, "text/event-stream")], sse).into_response()
    }

    /// Serves `fake` on port 0; returns the base URL.
    async fn serve(fake: Fake) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new()
            .route("/v1/chat/completions", post(completions))
            .with_state(fake);
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        format!("http://{addr}/v1")
    }

    fn backend(base_url: &str, extra: Value) -> OpenAiBackend {
        let mut config = json!({"base_url": base_url, "model": "config-model"});
        config
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        OpenAiBackend::from_config(config).unwrap()
    }

    async fn run_turn(
        backend: &OpenAiBackend,
        task: turnq_core::task::Task,
        sessions: Arc<dyn SessionStore>,
    ) -> (Result<TurnOutcome, TurnError>, Vec<OutputChunk>) {
        let (output, mut rx) = OutputSink::channel(1024);
        let turn = Turn {
            task,
            output,
            cancel: CancellationToken::new(),
            // The test's patience: a turn that hangs fails the test.
            deadline: Instant::now() + patience(),
            sessions,
        };
        let result = backend.run(turn).await;
        let mut chunks = Vec::new();
        while let Ok(chunk) = rx.try_recv() {
            chunks.push(chunk);
        }
        (result, chunks)
    }

    #[tokio::test]
    async fn a_session_is_replayed_into_the_next_turn_and_each_reply_appended() {
        let fake = Fake::default();
        let base = serve(fake.clone()).await;
        let backend = backend(&base, json!({"system": "Be brief."}));
        let store = sessions();
        let session_task = |input: &str| {
            let mut t = task(json!(input));
            t.session_id = Some("sess-7".into());
            t
        };

        let (result, chunks) = run_turn(&backend, session_task("first?"), store.clone()).await;
        let texts: Vec<(&str, &str)> = chunks
            .iter()
            .map(|c| (c.stream.as_str(), c.text.as_str()))
            .collect();
        assert_eq!(texts, [("text", "reply"), ("text", " "), ("text", "1")]);
        assert_eq!(
            result.unwrap(),
            TurnOutcome::Completed {
                summary: "reply 1".into(),
                usage: Usage {
                    input_tokens: 10,
                    output_tokens: 3,
                    cost_usd: 0.0
                }
            }
        );

        let mut second = session_task("second?");
        second.model = Some("task-model".into());
        let (result, _) = run_turn(&backend, second, store.clone()).await;
        assert!(
            matches!(&result, Ok(TurnOutcome::Completed { summary, .. }) if summary == "reply 2"),
            "{result:?}"
        );

        let received = fake.received.lock().unwrap().clone();
        assert_eq!(received.len(), 2);
        let (auth, first) = &received[0];
        assert_eq!(auth, &None, "no api_key_env: no Authorization header");
        assert_eq!(first["model"], "config-model");
        assert_eq!(first["stream"], true);
        assert_eq!(first["stream_options"], json!({"include_usage": true}));
        assert_eq!(
            first["messages"],
            json!([
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "first?"},
            ])
        );
        let (_, second) = &received[1];
        assert_eq!(second["model"], "task-model", "the task's model wins");
        assert_eq!(
            second["messages"],
            json!([
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "first?"},
                {"role": "assistant", "content": "reply 1"},
                {"role": "user", "content": "second?"},
            ])
        );

        let key = SessionKey::new("default", "sess-7", None).unwrap();
        let transcript = store.load(&key).await.unwrap().unwrap();
        assert_eq!(transcript.len(), 4);
        let kinds: Vec<&str> = transcript
            .iter()
            .map(|e| e["type"].as_str().unwrap())
            .collect();
        assert_eq!(kinds, ["user", "assistant", "user", "assistant"]);
        assert_eq!(
            transcript[3]["message"],
            json!({"role": "assistant", "content": "reply 2"})
        );
        assert_eq!(transcript[0]["parentUuid"], Value::Null);
        for pair in transcript.windows(2) {
            assert_eq!(pair[1]["parentUuid"], pair[0]["uuid"], "a chain of uuids");
        }
        let mut uuids: Vec<&str> = transcript
            .iter()
            .map(|e| e["uuid"].as_str().unwrap())
            .collect();
        uuids.sort_unstable();
        uuids.dedup();
        assert_eq!(uuids.len(), 4, "fresh uuids");
    }

    #[tokio::test]
    async fn the_key_is_sent_only_when_its_variable_is_set_and_nothing_is_stored_without_a_session()
    {
        let fake = Fake::default();
        let base = serve(fake.clone()).await;
        // A variable every test process has stands in for the key: setting one would
        // take `unsafe` (edition 2024), which the workspace forbids.
        let home = std::env::var("HOME").expect("HOME is set");
        let store = sessions();
        let with_key = backend(&base, json!({"api_key_env": "HOME"}));
        let (result, _) = run_turn(&with_key, task(json!("hi")), store.clone()).await;
        assert!(result.is_ok(), "{result:?}");
        let unset = backend(
            &base,
            json!({"api_key_env": "TURNQ_TEST_NO_SUCH_VARIABLE_7F3A"}),
        );
        let (result, _) = run_turn(&unset, task(json!("hi")), store.clone()).await;
        assert!(result.is_ok(), "{result:?}");

        let received = fake.received.lock().unwrap().clone();
        assert_eq!(received[0].0, Some(format!("Bearer {home}")));
        assert_eq!(received[1].0, None);
        assert_eq!(
            received[0].1["messages"],
            json!([{"role": "user", "content": "hi"}])
        );
        let key = SessionKey::new("default", "any", None).unwrap();
        assert_eq!(store.load(&key).await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_rate_limit_is_retryable_and_a_bad_request_fatal_with_its_message() {
        let fake = Fake {
            failure: Some((
                StatusCode::TOO_MANY_REQUESTS,
                r#"{"error":{"message":"slow down"}}"#,
            )),
            ..Fake::default()
        };
        let base = serve(fake).await;
        let (result, _) = run_turn(&backend(&base, json!({})), task(json!("x")), sessions()).await;
        let Err(TurnError::Retryable { message, .. }) = result else {
            panic!("expected a retryable failure, got {result:?}");
        };
        assert!(
            message.contains("429") && message.contains("slow down"),
            "{message}"
        );

        let fake = Fake {
            failure: Some((
                StatusCode::BAD_REQUEST,
                r#"{"error":{"message":"model 'nope' does not exist","type":"invalid_request_error"}}"#,
            )),
            ..Fake::default()
        };
        let base = serve(fake).await;
        let (result, _) = run_turn(&backend(&base, json!({})), task(json!("x")), sessions()).await;
        let Err(TurnError::Fatal { message, .. }) = result else {
            panic!("expected a fatal failure, got {result:?}");
        };
        assert!(message.contains("400"), "{message}");
        assert!(
            message.ends_with("model 'nope' does not exist"),
            "{message}"
        );

        let fake = Fake {
            failure: Some((StatusCode::BAD_GATEWAY, "upstream down")),
            ..Fake::default()
        };
        let base = serve(fake).await;
        let (result, _) = run_turn(&backend(&base, json!({})), task(json!("x")), sessions()).await;
        assert!(
            matches!(&result, Err(TurnError::Retryable { message, .. }) if message.ends_with("upstream down")),
            "{result:?}"
        );
    }

    #[tokio::test]
    async fn a_refused_connection_is_retryable() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let backend = backend(&format!("http://{addr}/v1"), json!({}));
        let (result, _) = run_turn(&backend, task(json!("x")), sessions()).await;
        assert!(
            matches!(result, Err(TurnError::Retryable { .. })),
            "{result:?}"
        );
    }

    #[tokio::test]
    async fn sse_events_are_found_whatever_the_byte_boundaries() {
        // CRLF, a comment, an event name, a multi-line data field, a character of two
        // bytes, and a sentinel without the space after the colon.
        let body = "data: {\"choices\":[{\"delta\":\r\ndata: {\"content\":\"caf\u{e9}\"}}]}\r\n\r\n\
                    : keep-alive\n\
                    event: x\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":4,\"completion_tokens\":2}}\n\n\
                    data:[DONE]\n\n\
                    data: {\"never\": \"read\"}\n\n";
        let bytes = futures::stream::iter(
            body.as_bytes()
                .iter()
                .map(|byte| Ok::<_, std::io::Error>([*byte])),
        );
        let (output, mut rx) = OutputSink::channel(16);
        let reply = read_stream(bytes, &output).await.unwrap();
        assert_eq!(reply.text, "caf\u{e9}");
        assert_eq!(
            reply.usage,
            Usage {
                input_tokens: 4,
                output_tokens: 2,
                cost_usd: 0.0
            }
        );
        let chunk = rx.try_recv().unwrap();
        assert_eq!(
            (chunk.stream.as_str(), chunk.text.as_str()),
            ("text", "caf\u{e9}")
        );
        assert!(rx.try_recv().is_err(), "one chunk only");
    }

    #[tokio::test]
    async fn an_error_event_mid_stream_fails_the_turn_retryably_after_what_came_before() {
        let fake = Fake {
            stream: Some((
                &[
                    DELTA_PARTIAL,
                    "data: {\"error\":{\"message\":\"the model is overloaded\",\"type\":\"server_error\"}}\n\n",
                    "data: [DONE]\n\n",
                ],
                Ending::Close,
            )),
            ..Fake::default()
        };
        let base = serve(fake).await;
        let (result, chunks) =
            run_turn(&backend(&base, json!({})), task(json!("x")), sessions()).await;
        assert_eq!(chunks.len(), 1, "{chunks:?}");
        assert_eq!(chunks[0].text, "partial");
        let Err(TurnError::Retryable { message, .. }) = result else {
            panic!("expected a retryable failure, got {result:?}");
        };
        assert!(
            message.starts_with("the reply stream reported an error")
                && message.ends_with("the model is overloaded"),
            "{message}"
        );
    }

    #[tokio::test]
    async fn a_reply_stream_that_ends_or_breaks_before_done_is_retryable() {
        let fake = Fake {
            stream: Some((&[DELTA_PARTIAL], Ending::Close)),
            ..Fake::default()
        };
        let base = serve(fake).await;
        let (result, _) = run_turn(&backend(&base, json!({})), task(json!("x")), sessions()).await;
        assert!(
            matches!(&result, Err(TurnError::Retryable { message, .. })
                if message == "the reply stream ended before `data: [DONE]`"),
            "{result:?}"
        );

        let fake = Fake {
            stream: Some((&[DELTA_PARTIAL], Ending::Break)),
            ..Fake::default()
        };
        let base = serve(fake).await;
        let (result, _) = run_turn(&backend(&base, json!({})), task(json!("x")), sessions()).await;
        assert!(
            matches!(&result, Err(TurnError::Retryable { message, .. })
                if message.starts_with("reading the reply stream: ")),
            "{result:?}"
        );
    }

    #[tokio::test]
    async fn the_done_event_ends_the_reply_though_the_server_keeps_the_body_open() {
        let fake = Fake {
            stream: Some((&[DELTA_PARTIAL, "data: [DONE]\n\n"], Ending::HoldOpen)),
            ..Fake::default()
        };
        let base = serve(fake).await;
        // Were the end of the body awaited, the turn would run into its deadline and
        // fail instead.
        let (result, _) = run_turn(&backend(&base, json!({})), task(json!("x")), sessions()).await;
        assert!(
            matches!(&result, Ok(TurnOutcome::Completed { summary, .. }) if summary == "partial"),
            "{result:?}"
        );
    }

    #[test]
    fn replay_keeps_user_and_assistant_text_and_skips_the_rest() {
        let entries = [
            json!({"type": "summary", "summary": "x"}),
            json!({"type": "user", "message": {"role": "user", "content": [
                {"type": "text", "text": "a"}, {"type": "image"}, {"type": "text", "text": "b"}]}}),
            json!({"type": "user", "message": {"role": "user", "content": [
                {"type": "tool_result", "content": "r"}]}}),
            json!({"type": "assistant", "message": {"role": "assistant", "content": "c"}}),
        ];
        let replayed: Vec<Value> = entries.iter().filter_map(replayed).collect();
        assert_eq!(
            replayed,
            [
                json!({"role": "user", "content": "a\nb"}),
                json!({"role": "assistant", "content": "c"}),
            ]
        );
    }

    #[test]
    fn a_malformed_config_is_refused_saying_what_is_wrong() {
        let message = |config: Value| OpenAiBackend::from_config(config).unwrap_err();
        assert!(message(json!({"model": "m"})).contains("missing field `base_url`"));
        assert!(
            message(json!({"base_url": "http://x", "model": "m", "api_key": "sk"}))
                .contains("unknown field `api_key`")
        );
        assert!(
            message(json!({"base_url": "http://x", "model": "m", "timeout": "soon"}))
                .contains("`timeout` \"soon\" is not a duration")
        );
        assert!(message(json!({"base_url": "localhost", "model": "m"})).contains("not a URL"));
        assert!(message(json!({"base_url": "ftp://x", "model": "m"})).contains("not http(s)"));
        let backend = OpenAiBackend::from_config(
            json!({"base_url": "http://x/v1", "model": "m", "timeout": "90s"}),
        )
        .unwrap();
        assert_eq!(backend.config().timeout, Some(Duration::from_secs(90)));
        assert_eq!(backend.name(), "openai");
    }
}

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

use std::{pin::pin, sync::Arc};

use eventsource_stream::{EventStreamError, Eventsource};
use futures::{FutureExt, Stream, StreamExt, future::BoxFuture};
use serde_json::{Value, json};
use tokio::time::{Instant, sleep_until};
use turnq_core::{
    event::Usage,
    session::{Entries, SessionKey},
    time,
};

use super::{
    AgentBackend, OutputSink, Turn, TurnError, TurnOutcome, prompt_text,
    script::{MAX_SUMMARY_CHARS, truncate},
};

/// The longest error body quoted in a failure message, in characters.
const MAX_ERROR_CHARS: usize = 1000;

pub use turnq_core::agent::backend_config::OpenAiConfig;

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
        config.check()?;
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
        Self::new(OpenAiConfig::parse(config)?)
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
    let input = prompt_text(task);
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
mod tests;

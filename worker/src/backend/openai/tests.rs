//! The `openai` backend against a local server that speaks the protocol: streamed
//! replies, usage, errors mid-stream, and the history replayed from the session store.

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
        subtasks: crate::backend::tests::no_subtasks(),
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
async fn the_key_is_sent_only_when_its_variable_is_set_and_nothing_is_stored_without_a_session() {
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
    let (result, chunks) = run_turn(&backend(&base, json!({})), task(json!("x")), sessions()).await;
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
    assert_eq!(
        backend.config().timeout,
        Some(std::time::Duration::from_secs(90))
    );
    assert_eq!(backend.name(), "openai");
}

#[tokio::test]
async fn a_turn_resumed_by_an_answer_sends_it_as_the_next_user_message() {
    let fake = Fake::default();
    let base = serve(fake.clone()).await;
    let backend = backend(&base, json!({}));
    let store = sessions();
    let mut first = task(json!("clean the build?"));
    first.session_id = Some("sess-9".into());
    let (result, _) = run_turn(&backend, first.clone(), store.clone()).await;
    assert!(result.is_ok(), "{result:?}");

    // The same task after a person allowed it with an edited input.
    let mut resumed = first;
    resumed.request = Some(turnq_core::task::HumanRequest {
        kind: turnq_core::task::RequestKind::Permission,
        prompt: "run rm?".into(),
        options: vec!["allow".into(), "deny".into()],
        tool: Some("bash".into()),
        tool_input: Some(json!({"cmd": "rm -rf build"})),
        deadline: None,
        on_timeout: turnq_core::task::OnTimeout::Deny,
    });
    resumed.response = Some(turnq_core::task::Response {
        choice: Some("allow".into()),
        input: Some(json!({"cmd": "rm -rf build/tmp"})),
        ..Default::default()
    });
    let (result, _) = run_turn(&backend, resumed, store).await;
    assert!(result.is_ok(), "{result:?}");
    let received = fake.received.lock().unwrap().clone();
    let messages = received[1].1["messages"].as_array().unwrap().clone();
    assert_eq!(messages.len(), 3, "{messages:?}");
    assert_eq!(messages[0]["content"], "clean the build?");
    assert_eq!(messages[1]["role"], "assistant");
    assert_eq!(messages[2]["role"], "user");
    let answer = messages[2]["content"].as_str().unwrap();
    assert!(
        answer.contains("permission request: allow") && answer.contains("rm -rf build/tmp"),
        "{answer}"
    );
}

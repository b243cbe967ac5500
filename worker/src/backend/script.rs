//! The `script` backend: a deterministic simulated agent, driven by the task's input,
//! for tests, demos and benchmarks.
//!
//! - Input `{"script": {…}}`: the script says what to do. Every field is optional:
//!   `latency_ms` (total run time, spread across the chunks, default 0), `chunks`
//!   (output; default `["ok"]` for a turn that succeeds, nothing for one that fails or
//!   blocks), `input_tokens`, `output_tokens`, `cost_usd` (usage,
//!   default 0), `outcome` (`succeed` | `fail` | `retry` | `block`, default `succeed`),
//!   `message` (the error or block reason) and `fail_attempts` (fail retryably while
//!   the attempt is at most this, then take `outcome`). The summary is the chunks
//!   joined. A malformed script (wrong type, unknown field or outcome) fails fatally
//!   with a message that says what is wrong: running it again cannot help.
//!   People in the loop: `request` (`{kind, prompt, options, tool, tool_input,
//!   timeout_ms, on_timeout}`) makes a turn that would succeed ask a person instead;
//!   the next turn (once answered) says the answer and completes with its JSON as the
//!   summary. `spawn` (a list of task submissions) creates sub-tasks and waits for
//!   them; the next turn completes with their summaries joined by `; `, or fails when
//!   one did not complete, unless `on_child_failure` is `continue`. `files` (`{path:
//!   text | null}`) writes or deletes files in the task's worktree first, each path
//!   through the workspace's path guard.
//!   `by_model` (`{model: {…}}`): the fields of the entry named by the task's `model`
//!   replace the script's own, so the contestants of an arena, which share one input,
//!   can each run their own way.
//! - Input a JSON string: echoed as one `text` chunk; usage counts its words.
//! - Any other input: its compact JSON text, echoed the same way.
//!
//! The same input always produces the same events, except for timing. Cancellation is
//! honoured at any moment, including in the middle of the latency.

use std::time::Duration;

use futures::{FutureExt, future::BoxFuture};
use serde::Deserialize;
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use turnq_core::{
    event::Usage,
    task::{HumanRequest, NewTaskRequest, OnTimeout, RequestKind, Response},
    time,
};

use super::{AgentBackend, OutputSink, Turn, TurnError, TurnOutcome};

/// The longest output summary, in characters.
pub const MAX_SUMMARY_CHARS: usize = 1000;

/// The stream name of every chunk the script backend writes.
const STREAM: &str = "text";

#[derive(Clone, Copy, Debug, Default)]
pub struct ScriptBackend;

impl AgentBackend for ScriptBackend {
    fn name(&self) -> &'static str {
        "script"
    }

    fn run(&self, turn: Turn) -> BoxFuture<'static, Result<TurnOutcome, TurnError>> {
        run(turn).boxed()
    }
}

/// What a script may say. Unknown fields are refused so a typo (`"latncy_ms"`) fails
/// loudly instead of silently running the default.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Script {
    #[serde(default)]
    latency_ms: u64,
    /// `None`: `["ok"]` if the turn succeeds, nothing otherwise (a failing turn that said
    /// "ok" first would be a confusing demo).
    #[serde(default)]
    chunks: Option<Vec<String>>,
    #[serde(default)]
    input_tokens: i64,
    #[serde(default)]
    output_tokens: i64,
    #[serde(default)]
    cost_usd: f64,
    #[serde(default)]
    outcome: ScriptOutcome,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    fail_attempts: Option<u32>,
    /// Ask a person (after the chunks), unless the task already holds the answer:
    /// then say the answer and complete with it (its JSON) as the summary.
    #[serde(default)]
    request: Option<ScriptRequest>,
    /// Create these sub-tasks and wait for them, unless the task already holds their
    /// outcomes: then complete with their summaries, or fail when one did not
    /// complete and `on_child_failure` is `fail` (the default).
    #[serde(default)]
    spawn: Option<Vec<NewTaskRequest>>,
    #[serde(default)]
    on_child_failure: OnChildFailure,
    /// Files to write (a text) or delete (`null`) in the task's worktree, by path
    /// relative to it, before anything else; every path passes the workspace's path
    /// guard, and a refused one fails the turn fatally with the guard's reason.
    #[serde(default)]
    files: Option<std::collections::BTreeMap<String, Option<String>>>,
}

/// A request as a script states it: a [`HumanRequest`] with its deadline given as a
/// timeout from the moment the turn blocks.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScriptRequest {
    kind: RequestKind,
    prompt: String,
    #[serde(default)]
    options: Vec<String>,
    #[serde(default)]
    tool: Option<String>,
    #[serde(default)]
    tool_input: Option<Value>,
    #[serde(default)]
    timeout_ms: Option<u64>,
    #[serde(default)]
    on_timeout: OnTimeout,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum OnChildFailure {
    #[default]
    Fail,
    Continue,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum ScriptOutcome {
    #[default]
    Succeed,
    Fail,
    Retry,
    Block,
}

impl Script {
    fn parse(value: &Value) -> Result<Script, String> {
        let script: Script = Script::deserialize(value)
            .map_err(|e| format!("the task's input has a malformed `script`: {e}"))?;
        for (field, n) in [
            ("input_tokens", script.input_tokens),
            ("output_tokens", script.output_tokens),
        ] {
            if n < 0 {
                return Err(format!(
                    "the task's input has a malformed `script`: {field} is {n}; it must not be negative"
                ));
            }
        }
        if script.request.is_some() && script.spawn.is_some() {
            return Err(
                "the task's input has a malformed `script`: it may ask a person (`request`) \
                 or create sub-tasks (`spawn`), not both"
                    .into(),
            );
        }
        if !script.cost_usd.is_finite() || script.cost_usd < 0.0 {
            return Err(format!(
                "the task's input has a malformed `script`: cost_usd is {}; it must be a non-negative number",
                script.cost_usd
            ));
        }
        Ok(script)
    }

    fn usage(&self) -> Usage {
        Usage {
            input_tokens: self.input_tokens,
            output_tokens: self.output_tokens,
            cost_usd: self.cost_usd,
        }
    }
}

async fn run(turn: Turn) -> Result<TurnOutcome, TurnError> {
    match turn.task.input.get("script") {
        Some(script) if turn.task.input.is_object() => {
            let script = for_model(script, turn.task.model.as_deref()).map_err(TurnError::fatal)?;
            let mut script = Script::parse(&script).map_err(TurnError::fatal)?;
            if let Some(files) = script.files.take() {
                write_files(&turn, files).await?;
            }
            if let Some(answer) = &turn.task.response
                && (script.request.is_some() || script.spawn.is_some())
            {
                return resume(script, answer, &turn).await;
            }
            let request = script.request.take();
            let spawn = script.spawn.take();
            let outcome = play(script, turn.task.attempt, &turn.output, &turn.cancel).await?;
            match (outcome, request, spawn) {
                (TurnOutcome::Completed { usage, .. }, Some(request), _) => ask(request, usage),
                (TurnOutcome::Completed { usage, .. }, _, Some(children)) => {
                    let n = children.len();
                    turn.subtasks.spawn(&turn.task, children).await?;
                    Ok(TurnOutcome::Blocked {
                        reason: format!("waits for its {n} sub-tasks"),
                        usage,
                        request: Some(children_request(n)),
                    })
                }
                (outcome, _, _) => Ok(outcome),
            }
        }
        _ => {
            let text = match &turn.task.input {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            echo(text, &turn.output, &turn.cancel).await
        }
    }
}

/// `script` with the fields of its `by_model` entry for `model` over its own, when it
/// has one: the contestants of an arena share one input and differ by agent and model,
/// so a script can make each model run its own way (slower, dearer, failing).
fn for_model(script: &Value, model: Option<&str>) -> Result<Value, String> {
    let Value::Object(object) = script else {
        // Not an object: `Script::parse` says so.
        return Ok(script.clone());
    };
    let mut object = object.clone();
    let Some(by_model) = object.remove("by_model") else {
        return Ok(Value::Object(object));
    };
    let Value::Object(by_model) = by_model else {
        return Err(
            "the task's input has a malformed `script`: by_model must be an object of \
             scripts by model name"
                .into(),
        );
    };
    if let Some((name, entry)) = model.and_then(|m| by_model.get_key_value(m)) {
        let Value::Object(entry) = entry else {
            return Err(format!(
                "the task's input has a malformed `script`: by_model.{name} must be an object"
            ));
        };
        object.extend(entry.clone());
    }
    Ok(Value::Object(object))
}

async fn echo(
    text: String,
    output: &OutputSink,
    cancel: &CancellationToken,
) -> Result<TurnOutcome, TurnError> {
    if cancel.is_cancelled() {
        return Err(TurnError::Cancelled);
    }
    let words = text.split_whitespace().count() as i64;
    output.send(STREAM, text.clone()).await;
    Ok(TurnOutcome::Completed {
        summary: truncate(text, MAX_SUMMARY_CHARS),
        usage: Usage {
            input_tokens: words,
            output_tokens: words,
            cost_usd: 0.0,
        },
    })
}

async fn play(
    script: Script,
    attempt: i32,
    output: &OutputSink,
    cancel: &CancellationToken,
) -> Result<TurnOutcome, TurnError> {
    let failing = script
        .fail_attempts
        .is_some_and(|n| i64::from(attempt) <= i64::from(n));
    let succeeds = !failing && script.outcome == ScriptOutcome::Succeed;
    let chunks = script.chunks.clone().unwrap_or_else(|| {
        if succeeds {
            vec!["ok".into()]
        } else {
            Vec::new()
        }
    });
    // The latency is spread evenly before each chunk, so output streams over the run;
    // with no chunks it is one wait.
    let total = Duration::from_millis(script.latency_ms);
    let steps = chunks.len().max(1) as u32;
    let step = total / steps;
    let remainder = total - step * steps;
    for (i, chunk) in chunks.iter().enumerate() {
        let wait = if i == 0 { step + remainder } else { step };
        pause(wait, cancel).await?;
        output.send(STREAM, chunk.clone()).await;
    }
    if chunks.is_empty() {
        pause(total, cancel).await?;
    }
    if cancel.is_cancelled() {
        return Err(TurnError::Cancelled);
    }

    let usage = script.usage();
    if failing {
        let n = script.fail_attempts.unwrap_or_default();
        return Err(TurnError::Retryable {
            message: script.message.unwrap_or_else(|| {
                format!("scripted failure of attempt {attempt} (fails while attempt <= {n})")
            }),
            usage,
        });
    }
    match script.outcome {
        ScriptOutcome::Succeed => Ok(TurnOutcome::Completed {
            summary: truncate(chunks.concat(), MAX_SUMMARY_CHARS),
            usage,
        }),
        ScriptOutcome::Block => Ok(TurnOutcome::Blocked {
            reason: script
                .message
                .unwrap_or_else(|| "the script asks for a person".into()),
            usage,
            request: None,
        }),
        ScriptOutcome::Fail => Err(TurnError::Fatal {
            message: script
                .message
                .unwrap_or_else(|| "the script failed (outcome \"fail\")".into()),
            usage,
        }),
        ScriptOutcome::Retry => Err(TurnError::Retryable {
            message: script
                .message
                .unwrap_or_else(|| "the script failed retryably (outcome \"retry\")".into()),
            usage,
        }),
    }
}

/// Writes (or deletes) `files` in the task's worktree.
async fn write_files(
    turn: &Turn,
    files: std::collections::BTreeMap<String, Option<String>>,
) -> Result<(), TurnError> {
    // Only in a worktree the runner prepared (a task naming a `repo`): a task's own
    // `worktree_path` detail is the submitter's word, and a path anywhere on the host.
    let (Some(_), Some(root)) = (&turn.task.repo, &turn.task.worktree_path) else {
        return Err(TurnError::fatal(
            "the script writes `files`, but the task has no worktree (give it a `repo` and a `session_id`)",
        ));
    };
    let root = std::path::Path::new(root);
    for (path, content) in files {
        let target = turnq_core::workspace::guard(root, &path)
            .map_err(|e| TurnError::fatal(format!("the script's file: {e}")))?;
        let written = match content {
            Some(text) => {
                if let Some(parent) = target.parent() {
                    tokio::fs::create_dir_all(parent).await.map_err(|e| {
                        TurnError::retryable(format!("creating {}: {e}", parent.display()))
                    })?;
                }
                tokio::fs::write(&target, text).await
            }
            None => match tokio::fs::remove_file(&target).await {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                other => other,
            },
        };
        written.map_err(|e| TurnError::retryable(format!("writing {}: {e}", target.display())))?;
    }
    Ok(())
}

/// Blocks the turn on `request`.
fn ask(request: ScriptRequest, usage: Usage) -> Result<TurnOutcome, TurnError> {
    let deadline = match request.timeout_ms {
        None => None,
        Some(ms) => {
            let at = i64::try_from(ms)
                .ok()
                .and_then(chrono::TimeDelta::try_milliseconds)
                .and_then(|wait| time::now().checked_add_signed(wait))
                .ok_or_else(|| {
                    TurnError::fatal(format!(
                        "the task's input has a malformed `script`: timeout_ms {ms} puts the deadline out of range"
                    ))
                })?;
            Some(time::truncate(at))
        }
    };
    let request = HumanRequest {
        kind: request.kind,
        prompt: request.prompt,
        options: request.options,
        tool: request.tool,
        tool_input: request.tool_input,
        deadline,
        on_timeout: request.on_timeout,
    }
    .validated()
    .map_err(|e| TurnError::fatal(format!("the task's input has a malformed `script`: {e}")))?;
    Ok(TurnOutcome::Blocked {
        reason: request.prompt.clone(),
        usage,
        request: Some(request),
    })
}

fn children_request(n: usize) -> HumanRequest {
    HumanRequest {
        kind: RequestKind::Children,
        prompt: format!("waits for its {n} sub-tasks"),
        options: Vec::new(),
        tool: None,
        tool_input: None,
        deadline: None,
        on_timeout: OnTimeout::Fail,
    }
}

/// The turn after an answer: says the answer, then completes with it (a request) or
/// with the children's summaries (a wait on sub-tasks).
async fn resume(script: Script, answer: &Response, turn: &Turn) -> Result<TurnOutcome, TurnError> {
    let usage = script.usage();
    let said = answer.as_prompt(turn.task.request.as_ref());
    turn.output.send(STREAM, said).await;
    if turn.cancel.is_cancelled() {
        return Err(TurnError::Cancelled);
    }
    if script.spawn.is_none() {
        let summary = serde_json::to_string(answer).unwrap_or_default();
        return Ok(TurnOutcome::Completed {
            summary: truncate(summary, MAX_SUMMARY_CHARS),
            usage,
        });
    }
    let unfinished = answer
        .children
        .iter()
        .find(|c| c.state != turnq_core::task::TaskState::Completed);
    if let (Some(child), OnChildFailure::Fail) = (unfinished, script.on_child_failure) {
        return Err(TurnError::Fatal {
            message: format!(
                "sub-task {} ended {}: {}",
                child.id,
                child.state,
                child.error.as_deref().unwrap_or("no error recorded")
            ),
            usage,
        });
    }
    let summaries: Vec<&str> = answer
        .children
        .iter()
        .map(|c| c.output_summary.as_deref().unwrap_or(""))
        .collect();
    Ok(TurnOutcome::Completed {
        summary: truncate(summaries.join("; "), MAX_SUMMARY_CHARS),
        usage,
    })
}

/// Waits `wait`, or returns `Cancelled` as soon as the token fires.
async fn pause(wait: Duration, cancel: &CancellationToken) -> Result<(), TurnError> {
    if cancel.is_cancelled() {
        return Err(TurnError::Cancelled);
    }
    if wait.is_zero() {
        return Ok(());
    }
    tokio::select! {
        _ = tokio::time::sleep(wait) => Ok(()),
        _ = cancel.cancelled() => Err(TurnError::Cancelled),
    }
}

/// `text` cut to at most `max` characters (never inside a character).
pub(crate) fn truncate(mut text: String, max: usize) -> String {
    if let Some((end, _)) = text.char_indices().nth(max) {
        text.truncate(end);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::tests::{sessions, task};
    use serde_json::json;
    use tokio::time::Instant;
    use turnq_core::event::OutputChunk;

    struct Run {
        result: Result<TurnOutcome, TurnError>,
        chunks: Vec<OutputChunk>,
    }

    async fn run_with(input: Value, attempt: i32, cancel: CancellationToken) -> Run {
        let mut task = task(input);
        task.attempt = attempt;
        let (output, mut rx) = OutputSink::channel(1024);
        let turn = Turn {
            task,
            output,
            cancel,
            deadline: Instant::now() + Duration::from_secs(60),
            sessions: sessions(),
            subtasks: crate::backend::tests::no_subtasks(),
        };
        let result = ScriptBackend.run(turn).await;
        let mut chunks = Vec::new();
        while let Ok(chunk) = rx.try_recv() {
            chunks.push(chunk);
        }
        Run { result, chunks }
    }

    async fn run_input(input: Value) -> Run {
        run_with(input, 1, CancellationToken::new()).await
    }

    fn texts(chunks: &[OutputChunk]) -> Vec<&str> {
        chunks.iter().map(|c| c.text.as_str()).collect()
    }

    fn fatal_message(result: Result<TurnOutcome, TurnError>) -> String {
        match result {
            Err(TurnError::Fatal { message, .. }) => message,
            other => panic!("expected a fatal error, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_model_named_in_by_model_runs_its_own_script() {
        let input = json!({"script": {"chunks": ["base"], "output_tokens": 1,
            "by_model": {"fast": {"chunks": ["quick"], "cost_usd": 0.5}, "broken": {"outcome": "fail"}}}});
        let by = |model: Option<&str>| {
            let mut task = task(input.clone());
            task.model = model.map(str::to_owned);
            task
        };
        for (model, summary, cost) in [
            (None, "base", 0.0),
            (Some("other"), "base", 0.0),
            (Some("fast"), "quick", 0.5),
        ] {
            let (output, _rx) = OutputSink::channel(1024);
            let turn = Turn {
                task: by(model),
                output,
                cancel: CancellationToken::new(),
                deadline: Instant::now() + Duration::from_secs(60),
                sessions: sessions(),
                subtasks: crate::backend::tests::no_subtasks(),
            };
            let Ok(TurnOutcome::Completed {
                summary: got,
                usage,
            }) = ScriptBackend.run(turn).await
            else {
                panic!("{model:?} should complete");
            };
            assert_eq!(
                (got.as_str(), usage.output_tokens, usage.cost_usd),
                (summary, 1, cost),
                "{model:?}"
            );
        }
        assert_eq!(
            for_model(&input["script"], Some("broken")).unwrap()["outcome"],
            "fail"
        );
        let bad = for_model(&json!({"by_model": {"m": 1}}), Some("m")).unwrap_err();
        assert!(bad.contains("by_model.m must be an object"), "{bad}");
        let bad = for_model(&json!({"by_model": []}), None).unwrap_err();
        assert!(bad.contains("by_model must be an object"), "{bad}");
    }

    #[tokio::test]
    async fn a_string_input_is_echoed_with_its_word_count_as_usage() {
        let run = run_input(json!("hello there  world")).await;
        assert_eq!(texts(&run.chunks), ["hello there  world"]);
        assert_eq!(run.chunks[0].stream, "text");
        assert_eq!(
            run.result.unwrap(),
            TurnOutcome::Completed {
                summary: "hello there  world".into(),
                usage: Usage {
                    input_tokens: 3,
                    output_tokens: 3,
                    cost_usd: 0.0
                },
            }
        );
    }

    #[tokio::test]
    async fn other_json_is_echoed_as_compact_json() {
        let run = run_input(json!({"prompt": "hi", "n": [1, 2]})).await;
        assert_eq!(texts(&run.chunks), [r#"{"n":[1,2],"prompt":"hi"}"#]);
        let Ok(TurnOutcome::Completed { summary, usage }) = run.result else {
            panic!("expected completion");
        };
        assert_eq!(summary, r#"{"n":[1,2],"prompt":"hi"}"#);
        assert_eq!(usage.input_tokens, 1);
        // An array is not an object, so its `script`-less JSON is echoed too.
        let run = run_input(json!([{"script": {}}])).await;
        assert_eq!(texts(&run.chunks), [r#"[{"script":{}}]"#]);
    }

    #[tokio::test]
    async fn a_long_echo_summary_is_cut_at_a_character_boundary() {
        let text = "é".repeat(MAX_SUMMARY_CHARS + 10);
        let run = run_input(json!(text)).await;
        let Ok(TurnOutcome::Completed { summary, .. }) = run.result else {
            panic!("expected completion");
        };
        assert_eq!(summary.chars().count(), MAX_SUMMARY_CHARS);
        assert_eq!(run.chunks[0].text, text, "the output itself is not cut");
    }

    #[tokio::test]
    async fn an_empty_script_succeeds_with_ok() {
        let run = run_input(json!({"script": {}})).await;
        assert_eq!(texts(&run.chunks), ["ok"]);
        assert_eq!(
            run.result.unwrap(),
            TurnOutcome::Completed {
                summary: "ok".into(),
                usage: Usage::default()
            }
        );
    }

    #[tokio::test]
    async fn a_script_streams_its_chunks_and_reports_its_usage() {
        let run = run_input(json!({"script": {
            "chunks": ["Hello, ", "world"],
            "input_tokens": 12, "output_tokens": 5, "cost_usd": 0.25
        }, "other": "ignored"}))
        .await;
        assert_eq!(texts(&run.chunks), ["Hello, ", "world"]);
        assert_eq!(
            run.result.unwrap(),
            TurnOutcome::Completed {
                summary: "Hello, world".into(),
                usage: Usage {
                    input_tokens: 12,
                    output_tokens: 5,
                    cost_usd: 0.25
                }
            }
        );
    }

    #[tokio::test]
    async fn a_script_summary_is_truncated() {
        let chunks = vec!["x".repeat(600), "y".repeat(600)];
        let run = run_input(json!({"script": {"chunks": chunks}})).await;
        let Ok(TurnOutcome::Completed { summary, .. }) = run.result else {
            panic!("expected completion");
        };
        assert_eq!(summary.len(), MAX_SUMMARY_CHARS);
        assert!(summary.ends_with('y'));
    }

    #[tokio::test]
    async fn each_outcome_maps_to_its_result_with_the_message() {
        let usage = Usage {
            input_tokens: 1,
            output_tokens: 2,
            cost_usd: 0.5,
        };
        let script = |outcome: &str| json!({"script": {"outcome": outcome, "message": "why", "input_tokens": 1, "output_tokens": 2, "cost_usd": 0.5}});
        assert_eq!(
            run_input(script("fail")).await.result,
            Err(TurnError::Fatal {
                message: "why".into(),
                usage
            })
        );
        assert_eq!(
            run_input(script("retry")).await.result,
            Err(TurnError::Retryable {
                message: "why".into(),
                usage
            })
        );
        assert_eq!(
            run_input(script("block")).await.result,
            Ok(TurnOutcome::Blocked {
                reason: "why".into(),
                usage,
                request: None,
            })
        );
        let run = run_input(json!({"script": {"outcome": "block"}})).await;
        assert!(
            matches!(run.result, Ok(TurnOutcome::Blocked { reason, .. }) if !reason.is_empty())
        );
    }

    #[tokio::test]
    async fn fail_attempts_fails_retryably_until_the_attempt_passes_it() {
        let input = json!({"script": {"fail_attempts": 2, "chunks": ["done"]}});
        for attempt in [1, 2] {
            let run = run_with(input.clone(), attempt, CancellationToken::new()).await;
            let Err(TurnError::Retryable { message, .. }) = run.result else {
                panic!("attempt {attempt} should fail retryably: {:?}", run.result);
            };
            assert!(message.contains(&format!("attempt {attempt}")), "{message}");
        }
        let run = run_with(input, 3, CancellationToken::new()).await;
        assert!(
            matches!(run.result, Ok(TurnOutcome::Completed { summary, .. }) if summary == "done")
        );
    }

    #[tokio::test]
    async fn a_malformed_script_fails_fatally_saying_what_is_wrong() {
        let message = fatal_message(
            run_input(json!({"script": {"latency_ms": "slow"}}))
                .await
                .result,
        );
        assert!(message.contains("malformed `script`"), "{message}");
        assert!(message.contains("invalid type"), "{message}");

        let message = fatal_message(
            run_input(json!({"script": {"outcome": "explode"}}))
                .await
                .result,
        );
        assert!(message.contains("unknown variant `explode`"), "{message}");

        let message = fatal_message(run_input(json!({"script": {"latncy_ms": 5}})).await.result);
        assert!(message.contains("unknown field `latncy_ms`"), "{message}");

        let message = fatal_message(run_input(json!({"script": 7})).await.result);
        assert!(message.contains("malformed `script`"), "{message}");

        let message = fatal_message(
            run_input(json!({"script": {"output_tokens": -1}}))
                .await
                .result,
        );
        assert!(message.contains("output_tokens is -1"), "{message}");

        let message = fatal_message(
            run_input(
                json!({"script": {"request": {"kind": "text", "prompt": "name?",
                "timeout_ms": u64::MAX}}}),
            )
            .await
            .result,
        );
        assert!(message.contains("out of range"), "{message}");
        let message = fatal_message(
            run_input(json!({"script": {"request": {"kind": "question", "prompt": "which?"}}}))
                .await
                .result,
        );
        assert!(message.contains("needs options"), "{message}");
        let message = fatal_message(
            run_input(
                json!({"script": {"request": {"kind": "text", "prompt": "x"},
                "spawn": [{"input": "a"}]}}),
            )
            .await
            .result,
        );
        assert!(message.contains("not both"), "{message}");

        // A failing or blocking script says nothing unless told to; told to, it streams
        // its output first.
        for outcome in ["fail", "retry", "block"] {
            let run = run_input(json!({"script": {"outcome": outcome}})).await;
            assert!(run.chunks.is_empty(), "{outcome}: {:?}", texts(&run.chunks));
        }
        let run = run_input(json!({"script": {"fail_attempts": 1}})).await;
        assert!(
            run.chunks.is_empty(),
            "a scripted failed attempt says nothing"
        );
        let run = run_input(json!({"script": {"outcome": "fail", "chunks": ["partial"]}})).await;
        assert_eq!(texts(&run.chunks), ["partial"]);
    }

    #[tokio::test(start_paused = true)]
    async fn latency_is_spread_across_the_chunks() {
        let started = Instant::now();
        let (output, mut rx) = OutputSink::channel(16);
        let turn = Turn {
            task: task(json!({"script": {"latency_ms": 300, "chunks": ["a", "b", "c"]}})),
            output,
            cancel: CancellationToken::new(),
            deadline: Instant::now() + Duration::from_secs(60),
            sessions: sessions(),
            subtasks: crate::backend::tests::no_subtasks(),
        };
        let running = tokio::spawn(ScriptBackend.run(turn));
        let mut arrivals = Vec::new();
        while let Some(chunk) = rx.recv().await {
            arrivals.push((chunk.text, started.elapsed().as_millis()));
        }
        assert!(running.await.unwrap().is_ok());
        assert_eq!(
            arrivals,
            [("a".into(), 100), ("b".into(), 200), ("c".into(), 300)]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn cancellation_interrupts_the_latency() {
        let cancel = CancellationToken::new();
        let started = Instant::now();
        let canceller = {
            let cancel = cancel.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(150)).await;
                cancel.cancel();
            })
        };
        let run = run_with(
            json!({"script": {"latency_ms": 10_000, "chunks": ["a", "b"]}}),
            1,
            cancel,
        )
        .await;
        canceller.await.unwrap();
        assert_eq!(run.result, Err(TurnError::Cancelled));
        assert!(run.chunks.is_empty());
        assert_eq!(started.elapsed().as_millis(), 150);

        let cancel = CancellationToken::new();
        cancel.cancel();
        let run = run_with(json!("hi"), 1, cancel).await;
        assert_eq!(run.result, Err(TurnError::Cancelled));
    }
}

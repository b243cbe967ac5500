//! The `command` backend: runs a command-line agent as a child process, one per turn.
//!
//! Configuration ([`CommandConfig`], an agent's JSON `config`): `program`, `args` (a
//! template), `resume_args` (a template), `cwd`, `env`, `stdin` and `mode`. The program
//! is executed directly, never through a shell; in each argument the placeholders
//! `{input}` (the task's input as text: a JSON string as it is, other JSON compact),
//! `{session_id}`, `{task_id}`, `{model}` and `{backend_session_id}` are replaced (an
//! absent value by the empty string, in one pass, so a value that itself contains `{…}`
//! is never expanded again; other braces stay as they are).
//!
//! Resuming: `{backend_session_id}` is the backend session id stored in the task's agent
//! session (session id, agent), the provider session id an earlier turn reported (see
//! `jsonl` below); it is read through the backend's [`AgentSessionLookup`] when the
//! config uses it. When there is one, `resume_args` are appended after `args`: last, so
//! that they reach the agent also when `program` is a wrapper whose own options come
//! first (`npx @anthropic-ai/claude-code …`, `bash -c <script> bash …`, `docker run …`);
//! `claude -p {input} … --resume <id>` resumes. (So `args` must not end in `--`.)
//! Without one (no session, a first turn, a fresh session after a config change or a
//! close, a backend built without a lookup) `resume_args` are left out.
//! The task's `worktree_path`, when set, is the working directory; else `cwd`; else the
//! worker's. With `stdin: true` the input is written to the child's stdin, which is then
//! closed; otherwise stdin is `/dev/null`.
//!
//! Output, `mode: "text"` (the default): each stdout line (newline included) is one
//! `text` chunk; the summary is the whole output, trimmed.
//!
//! Output, `mode: "jsonl"`: each stdout line is one JSON event, in the shape of
//! `claude -p --output-format stream-json --verbose`:
//!
//! | line                                                    | becomes                      |
//! |---------------------------------------------------------|------------------------------|
//! | any event's top-level `session_id` (or `sessionId`)     | the provider session id: a `session` chunk when it first appears or changes |
//! | `{"type":"assistant","message":{"content":[…]}}`: block `{"type":"text","text"}` | a `text` chunk |
//! | … block `{"type":"thinking","thinking"}`                | a `reasoning` chunk          |
//! | … block `{"type":"tool_use","id","name","input"}`       | a `tool_call` chunk: `{"id","name","input"}` as compact JSON |
//! | … `content` a plain string                              | a `text` chunk               |
//! | `{"type":"user","message":{"content":[…]}}`: block `{"type":"tool_result","tool_use_id","content","is_error"}` | a `tool_result` chunk: those three fields as compact JSON |
//! | `{"type":"result","result","usage","total_cost_usd","is_error","subtype"}` | the summary (`result`), the usage, and a failure when `is_error` |
//! | `system`, `stream_event` (partial messages, which would repeat the text), other types, blank lines | nothing |
//! | a line that is not JSON                                 | a `log` chunk, as it is      |
//!
//! Usage is the `result` event's: `input_tokens` is `usage.input_tokens` plus
//! `cache_creation_input_tokens` plus `cache_read_input_tokens` (every prompt token the
//! model read), `output_tokens` is `usage.output_tokens`, `cost_usd` is `total_cost_usd`
//! (or `cost_usd`, its older name). Without a `result` event the summary is the
//! assistant text joined by blank lines and the usage is zero.
//!
//! Endings: exit 0 completes the turn (unless a `result` event said `is_error`, which
//! fails it retryably). A non-zero exit or a death by signal is retryable (a crash is
//! worth another attempt) with the status and the last [`STDERR_TAIL_BYTES`] of stderr
//! in the message. A program that cannot be started (not found, not executable, missing
//! working directory) is fatal. On cancellation or when the turn's deadline passes, the
//! child's whole process group is killed (the child leads a group of its own), then the
//! child itself, which is reaped; `kill_on_drop` covers a turn that is aborted instead.
//!
//! # Layout
//!
//! - this module: [`CommandBackend`] and a turn's run, from reading the backend session
//!   id it resumes to mapping the child's ending to the turn's outcome;
//! - `config`: [`CommandConfig`], [`CommandMode`] and the placeholder substitution;
//! - `process`: the child from spawn to reaping: stdin, the tail of stderr, stopping
//!   its process group on cancellation or at the deadline;
//! - `transcript`: reading stdout, in `text` or `jsonl` mode, into chunks and what the
//!   outcome needs.

mod config;
mod process;
mod transcript;

use std::{fmt, path::Path, sync::Arc};

use futures::{FutureExt, future::BoxFuture};
use serde_json::Value;
use turnq_core::error::chain;

pub use config::{CommandConfig, CommandMode};
pub use process::STDERR_TAIL_BYTES;

use self::{process::AgentProcess, transcript::Transcript};
use super::{
    AgentBackend, AgentSessionLookup, Turn, TurnError, TurnOutcome, prompt_text,
    script::{MAX_SUMMARY_CHARS, truncate},
};

/// Runs a command-line agent per turn; see the module documentation.
#[derive(Clone)]
pub struct CommandBackend {
    config: Arc<CommandConfig>,
    /// Where the stored backend session id is read; `None`: never resumes.
    sessions: Option<Arc<dyn AgentSessionLookup>>,
}

impl fmt::Debug for CommandBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CommandBackend")
            .field("config", &self.config)
            .field("resumes", &self.sessions.is_some())
            .finish()
    }
}

impl CommandBackend {
    /// A backend for `config`; refuses an empty `program`.
    pub fn new(config: CommandConfig) -> Result<Self, String> {
        config.check()?;
        Ok(CommandBackend {
            config: Arc::new(config),
            sessions: None,
        })
    }

    /// The backend reading stored backend session ids from `sessions`, so that
    /// `resume_args` and `{backend_session_id}` resume the agent's conversation.
    pub fn resuming(mut self, sessions: Arc<dyn AgentSessionLookup>) -> Self {
        self.sessions = Some(sessions);
        self
    }

    /// A backend from an agent's JSON `config` object; the message says what is wrong
    /// (a missing `program`, an unknown field, a `mode` that is neither `text` nor
    /// `jsonl`, …).
    pub fn from_config(config: Value) -> Result<Self, String> {
        Self::new(CommandConfig::parse(config)?)
    }

    pub fn config(&self) -> &CommandConfig {
        &self.config
    }
}

impl AgentBackend for CommandBackend {
    fn name(&self) -> &'static str {
        "command"
    }

    fn run(&self, turn: Turn) -> BoxFuture<'static, Result<TurnOutcome, TurnError>> {
        run(self.config.clone(), self.sessions.clone(), turn).boxed()
    }
}

/// The backend session id the turn resumes: read from `sessions` when the task has a
/// session and the config uses it. A failed read is retryable: running without it would
/// silently start the conversation over.
async fn backend_session_id(
    config: &CommandConfig,
    sessions: Option<&dyn AgentSessionLookup>,
    turn: &Turn,
) -> Result<Option<String>, TurnError> {
    let (Some(sessions), Some(session_id)) = (sessions, turn.task.session_id.as_deref()) else {
        return Ok(None);
    };
    if !config.uses_backend_session() {
        return Ok(None);
    }
    let agent = turn.task.agent.as_str();
    tokio::select! {
        biased;
        _ = turn.cancel.cancelled() => Err(TurnError::Cancelled),
        read = sessions.backend_session_id(&turn.task.project, session_id, agent) => read
            .map(|id| id.filter(|id| !id.is_empty()))
            .map_err(|e| TurnError::retryable(format!(
                "cannot read the agent session ({session_id:?}, {agent:?}) to resume it: {}",
                chain(&e)
            ))),
    }
}

async fn run(
    config: Arc<CommandConfig>,
    sessions: Option<Arc<dyn AgentSessionLookup>>,
    turn: Turn,
) -> Result<TurnOutcome, TurnError> {
    if turn.cancel.is_cancelled() {
        return Err(TurnError::Cancelled);
    }
    let resumed = backend_session_id(&config, sessions.as_deref(), &turn).await?;
    let task = &turn.task;
    let input = prompt_text(task);
    let task_id = task.id.to_string();
    let values = [
        ("input", input.as_str()),
        ("session_id", task.session_id.as_deref().unwrap_or_default()),
        ("task_id", task_id.as_str()),
        ("model", task.model.as_deref().unwrap_or_default()),
        ("backend_session_id", resumed.as_deref().unwrap_or_default()),
    ];
    let args = config.argv(&values, resumed.is_some());
    let dir = task
        .worktree_path
        .as_deref()
        .map(Path::new)
        .or(config.cwd.as_deref());
    let (mut process, stdout) = AgentProcess::spawn(&config, args, dir, input).await?;

    let mut transcript = Transcript::new(config.mode);
    process
        .unless_stopped(
            &turn.cancel,
            turn.deadline,
            transcript.read(stdout, &turn.output),
        )
        .await?;
    // Stdout is closed, but the child may still be running.
    let status = process.wait(&turn.cancel, turn.deadline).await?;
    let usage = transcript.usage;
    if !status.success() {
        let tail = process.stderr_tail().await;
        let tail = tail.trim_end();
        let message = if tail.is_empty() {
            format!(
                "the agent program {:?} ended with {status} (no stderr)",
                config.program
            )
        } else {
            format!(
                "the agent program {:?} ended with {status}; the end of its stderr:\n{tail}",
                config.program
            )
        };
        return Err(TurnError::Retryable { message, usage });
    }
    if let Some(message) = transcript.error {
        return Err(TurnError::Retryable { message, usage });
    }
    Ok(TurnOutcome::Completed {
        summary: truncate(transcript.summary(), MAX_SUMMARY_CHARS),
        usage,
    })
}

#[cfg(test)]
pub(super) mod tests {
    //! The turn's run end to end, through real child processes (`sh`, `echo`), and the
    //! helpers the tests of the submodules share.

    use super::*;
    use crate::backend::{
        OutputSink,
        tests::{sessions, task},
    };
    use serde_json::json;
    use std::time::Duration;
    use tokio::{sync::mpsc, time::Instant};
    use tokio_util::sync::CancellationToken;
    use turnq_core::{
        event::{OutputChunk, Usage},
        task::Task,
    };
    use turnq_testkit::patience;

    pub(super) fn backend(config: Value) -> CommandBackend {
        CommandBackend::from_config(config).unwrap()
    }

    /// `sh -c script` in `mode`.
    pub(super) fn sh(script: &str, mode: &str) -> CommandBackend {
        backend(json!({"program": "sh", "args": ["-c", script], "mode": mode}))
    }

    /// Starts a turn of `backend` on a task of its own, its deadline `deadline_in` from
    /// now; returns it and the receiver of its output.
    pub(super) fn start(
        backend: &CommandBackend,
        task: Task,
        cancel: CancellationToken,
        deadline_in: Duration,
    ) -> (
        tokio::task::JoinHandle<Result<TurnOutcome, TurnError>>,
        mpsc::Receiver<OutputChunk>,
    ) {
        let (output, rx) = OutputSink::channel(1024);
        let turn = Turn {
            task,
            output,
            cancel,
            deadline: Instant::now() + deadline_in,
            sessions: sessions(),
            subtasks: crate::backend::tests::no_subtasks(),
        };
        (tokio::spawn(backend.run(turn)), rx)
    }

    /// Runs a turn of `backend` to its end; returns its result and its output. The
    /// turn's deadline is the test's patience: a turn that hangs fails the test.
    pub(super) async fn run(
        backend: &CommandBackend,
        task: Task,
    ) -> (Result<TurnOutcome, TurnError>, Vec<OutputChunk>) {
        let (running, mut rx) = start(backend, task, CancellationToken::new(), patience());
        let result = running.await.unwrap();
        let mut chunks = Vec::new();
        while let Ok(chunk) = rx.try_recv() {
            chunks.push(chunk);
        }
        (result, chunks)
    }

    pub(super) fn pairs(chunks: &[OutputChunk]) -> Vec<(&str, &str)> {
        chunks
            .iter()
            .map(|c| (c.stream.as_str(), c.text.as_str()))
            .collect()
    }

    #[tokio::test]
    async fn text_mode_streams_each_stdout_line_as_a_text_chunk() {
        let (result, chunks) = run(&sh("printf 'one\\ntwo\\n'", "text"), task(json!("hi"))).await;
        assert_eq!(pairs(&chunks), [("text", "one\n"), ("text", "two\n")]);
        assert_eq!(
            result.unwrap(),
            TurnOutcome::Completed {
                summary: "one\ntwo".into(),
                usage: Usage::default()
            }
        );
    }

    #[tokio::test]
    async fn a_result_event_with_is_error_fails_the_turn_retryably_with_its_usage() {
        let script = r#"echo '{"type":"result","subtype":"error_during_execution","is_error":true,"result":"API overloaded","usage":{"input_tokens":3,"output_tokens":1}}'"#;
        let (result, _) = run(&sh(script, "jsonl"), task(json!("x"))).await;
        let Err(TurnError::Retryable { message, usage }) = result else {
            panic!("expected a retryable failure, got {result:?}");
        };
        assert!(message.contains("error_during_execution"), "{message}");
        assert!(message.contains("API overloaded"), "{message}");
        assert_eq!(usage.input_tokens, 3);
    }

    /// An agent-session lookup that answers `stored` and counts its reads.
    struct Stored {
        stored: Result<Option<String>, String>,
        reads: std::sync::Mutex<Vec<(String, String)>>,
    }

    impl Stored {
        fn new(stored: Result<Option<&str>, &str>) -> Arc<Stored> {
            Arc::new(Stored {
                stored: stored.map(|s| s.map(str::to_owned)).map_err(str::to_owned),
                reads: Default::default(),
            })
        }

        fn reads(&self) -> Vec<(String, String)> {
            self.reads.lock().unwrap().clone()
        }
    }

    impl AgentSessionLookup for Stored {
        fn backend_session_id<'a>(
            &'a self,
            _project: &'a str,
            session_id: &'a str,
            agent: &'a str,
        ) -> BoxFuture<'a, Result<Option<String>, turnq_core::Error>> {
            self.reads
                .lock()
                .unwrap()
                .push((session_id.to_owned(), agent.to_owned()));
            let answer = self.stored.clone().map_err(turnq_core::Error::Invalid);
            async move { answer }.boxed()
        }
    }

    /// `echo`, which prints its arguments as they are (`--resume` too).
    fn echoing(stored: &Arc<Stored>) -> CommandBackend {
        backend(json!({
            "program": "echo",
            "args": ["-p", "{input}", "id={backend_session_id}"],
            "resume_args": ["--resume", "{backend_session_id}"],
        }))
        .resuming(stored.clone())
    }

    fn in_session(input: &str) -> Task {
        let mut t = task(json!(input));
        t.session_id = Some("s-1".into());
        t.agent = "claude".into();
        t
    }

    #[tokio::test]
    async fn resume_args_follow_args_only_when_the_agent_session_has_a_backend_session_id() {
        let stored = Stored::new(Ok(Some("prov-1")));
        let (result, chunks) = run(&echoing(&stored), in_session("hi")).await;
        assert!(result.is_ok(), "{result:?}");
        assert_eq!(
            pairs(&chunks),
            [("text", "-p hi id=prov-1 --resume prov-1\n")]
        );
        assert_eq!(stored.reads(), [("s-1".to_owned(), "claude".to_owned())]);

        // None stored (a first turn, a fresh session): no resume args, an empty id.
        for none in [None, Some("")] {
            let stored = Stored::new(Ok(none));
            let (_, chunks) = run(&echoing(&stored), in_session("hi")).await;
            assert_eq!(pairs(&chunks), [("text", "-p hi id=\n")], "{none:?}");
        }

        // A task without a session has nothing to resume: nothing is read.
        let stored = Stored::new(Ok(Some("prov-1")));
        let (_, chunks) = run(&echoing(&stored), task(json!("hi"))).await;
        assert_eq!(pairs(&chunks), [("text", "-p hi id=\n")]);
        assert!(stored.reads().is_empty());

        // Nor is it for a config that uses no backend session id.
        let plain =
            backend(json!({"program": "echo", "args": ["{session_id}"]})).resuming(stored.clone());
        let (_, chunks) = run(&plain, in_session("hi")).await;
        assert_eq!(pairs(&chunks), [("text", "s-1\n")]);
        assert!(stored.reads().is_empty());

        // Built without a lookup, the backend never resumes.
        let unresumed = backend(json!({
            "program": "echo", "args": ["{backend_session_id}."],
            "resume_args": ["--resume"],
        }));
        let (_, chunks) = run(&unresumed, in_session("hi")).await;
        assert_eq!(pairs(&chunks), [("text", ".\n")]);
    }

    #[tokio::test]
    async fn an_agent_session_that_cannot_be_read_fails_the_turn_retryably_before_starting_it() {
        let stored = Stored::new(Err("Postgres is down"));
        let (result, chunks) = run(&echoing(&stored), in_session("hi")).await;
        assert!(chunks.is_empty(), "nothing ran: {chunks:?}");
        let Err(TurnError::Retryable { message, .. }) = result else {
            panic!("expected a retryable failure, got {result:?}");
        };
        assert!(
            message.contains(r#"cannot read the agent session ("s-1", "claude") to resume it"#),
            "{message}"
        );
        assert!(message.contains("Postgres is down"), "{message}");
    }
}

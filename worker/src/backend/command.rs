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

use std::{collections::BTreeMap, fmt, path::PathBuf, process::Stdio, sync::Arc, time::Duration};

use futures::{FutureExt, future::BoxFuture};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader},
    process::{Child, ChildStdout, Command},
    time::sleep_until,
};
use turnq_core::{error::chain, event::Usage};

use super::{
    AgentBackend, AgentSessionLookup, OutputSink, Turn, TurnError, TurnOutcome, input_text,
    script::{MAX_SUMMARY_CHARS, truncate},
};

/// How much of the end of stderr a crash message carries, in bytes.
pub const STDERR_TAIL_BYTES: usize = 2048;

/// How long to wait, after the child exited, for the rest of its stderr (a grandchild
/// may still hold the pipe open).
const STDERR_PATIENCE: Duration = Duration::from_secs(1);

/// An agent's configuration of the `command` backend.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandConfig {
    /// The program to run: a path, or a name looked up in `PATH`.
    pub program: String,
    /// The arguments, each a template (see the module documentation).
    #[serde(default)]
    pub args: Vec<String>,
    /// Arguments appended after `args` only when the agent session has a stored backend
    /// session id, each a template (`["--resume", "{backend_session_id}"]` for Claude
    /// Code); default none.
    #[serde(default)]
    pub resume_args: Vec<String>,
    /// The working directory when the task has no `worktree_path`.
    #[serde(default)]
    pub cwd: Option<PathBuf>,
    /// Environment variables set for the child, on top of the worker's.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Write the input to stdin, then close it.
    #[serde(default)]
    pub stdin: bool,
    /// How stdout is read.
    #[serde(default)]
    pub mode: CommandMode,
}

/// How the `command` backend reads the child's stdout.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CommandMode {
    /// Each line is a `text` chunk.
    #[default]
    Text,
    /// Each line is a JSON event (`claude --output-format stream-json`).
    Jsonl,
}

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

impl CommandConfig {
    /// Whether a turn needs the stored backend session id.
    fn uses_backend_session(&self) -> bool {
        !self.resume_args.is_empty()
            || self
                .args
                .iter()
                .any(|arg| arg.contains("{backend_session_id}"))
    }
}

impl CommandBackend {
    /// A backend for `config`; refuses an empty `program`.
    pub fn new(config: CommandConfig) -> Result<Self, String> {
        if config.program.trim().is_empty() {
            return Err("the `command` backend's config has an empty `program`".into());
        }
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
        let config: CommandConfig = serde_json::from_value(config)
            .map_err(|e| format!("the `command` backend's config is malformed: {e}"))?;
        Self::new(config)
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

/// `template` with the placeholders replaced, in one pass.
fn substitute(template: &str, values: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    'scan: while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open..];
        for (name, value) in values {
            if let Some(tail) = after
                .strip_prefix('{')
                .and_then(|t| t.strip_prefix(name))
                .and_then(|t| t.strip_prefix('}'))
            {
                out.push_str(value);
                rest = tail;
                continue 'scan;
            }
        }
        out.push('{');
        rest = &after[1..];
    }
    out.push_str(rest);
    out
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
        read = sessions.backend_session_id(session_id, agent) => read
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
    let input = input_text(&task.input);
    let task_id = task.id.to_string();
    let values = [
        ("input", input.as_str()),
        ("session_id", task.session_id.as_deref().unwrap_or_default()),
        ("task_id", task_id.as_str()),
        ("model", task.model.as_deref().unwrap_or_default()),
        ("backend_session_id", resumed.as_deref().unwrap_or_default()),
    ];
    let resume_args: &[String] = if resumed.is_some() {
        &config.resume_args
    } else {
        &[]
    };
    let mut command = Command::new(&config.program);
    command
        .args(
            config
                .args
                .iter()
                .chain(resume_args)
                .map(|arg| substitute(arg, &values)),
        )
        .envs(&config.env)
        .stdin(if config.stdin {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    // A group of its own, so that a cancelled turn also kills what the agent started.
    #[cfg(unix)]
    command.process_group(0);
    if let Some(dir) = task.worktree_path.as_deref().map(PathBuf::from) {
        command.current_dir(dir);
    } else if let Some(dir) = &config.cwd {
        command.current_dir(dir);
    }
    let mut child = command.spawn().map_err(|e| {
        let message = format!("cannot start the agent program {:?}: {e}", config.program);
        match e.kind() {
            // The same configuration fails the same way on the next attempt.
            std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied => {
                TurnError::fatal(message)
            }
            // Out of processes or file descriptors, say: may pass.
            _ => TurnError::retryable(message),
        }
    })?;

    if let Some(mut stdin) = child.stdin.take() {
        // On a task of its own: a child that does not read stdin before writing a
        // pipe-full of output would otherwise deadlock against this write. A child
        // that exits without reading it is not an error here (its exit status says).
        tokio::spawn(async move {
            let _ = stdin.write_all(input.as_bytes()).await;
            let _ = stdin.shutdown().await;
        });
    }
    let stderr = child
        .stderr
        .take()
        .map(|stderr| tokio::spawn(read_tail(stderr, STDERR_TAIL_BYTES)));
    let Some(stdout) = child.stdout.take() else {
        stop(&mut child).await;
        return Err(TurnError::fatal("the child's stdout was not captured"));
    };

    let mut transcript = Transcript::new(config.mode);
    let streamed = tokio::select! {
        biased;
        _ = turn.cancel.cancelled() => Err(TurnError::Cancelled),
        _ = sleep_until(turn.deadline) => Err(past_deadline(&config.program)),
        streamed = stream(stdout, &mut transcript, &turn.output) => streamed,
    };
    if let Err(e) = streamed {
        stop(&mut child).await;
        return Err(e);
    }
    // Stdout is closed, but the child may still be running.
    let status = tokio::select! {
        biased;
        _ = turn.cancel.cancelled() => Err(TurnError::Cancelled),
        _ = sleep_until(turn.deadline) => Err(past_deadline(&config.program)),
        status = child.wait() => status.map_err(|e| {
            TurnError::retryable(format!("waiting for the agent program {:?}: {e}", config.program))
        }),
    };
    let status = match status {
        Ok(status) => status,
        Err(e) => {
            stop(&mut child).await;
            return Err(e);
        }
    };
    let usage = transcript.usage;
    if !status.success() {
        let tail = match stderr {
            Some(reading) => tokio::time::timeout(STDERR_PATIENCE, reading)
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or_default(),
            None => String::new(),
        };
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

fn past_deadline(program: &str) -> TurnError {
    TurnError::retryable(format!(
        "the agent program {program:?} ran past the turn's deadline and was killed"
    ))
}

/// Reads stdout to its end, line by line, into `transcript` and `output`.
async fn stream(
    stdout: ChildStdout,
    transcript: &mut Transcript,
    output: &OutputSink,
) -> Result<(), TurnError> {
    let mut reader = BufReader::new(stdout);
    let mut line = Vec::new();
    loop {
        line.clear();
        let read = reader
            .read_until(b'\n', &mut line)
            .await
            .map_err(|e| TurnError::retryable(format!("reading the agent's output: {e}")))?;
        if read == 0 {
            return Ok(());
        }
        // Lossy: an agent that prints a broken character should not fail the turn.
        for (stream, text) in transcript.line(&String::from_utf8_lossy(&line)) {
            output.send(stream, text).await;
        }
    }
}

/// Up to the last `limit` bytes `reader` yields (a character cut at the start is
/// replaced, not an error).
async fn read_tail(mut reader: impl AsyncRead + Unpin, limit: usize) -> String {
    let mut tail = Vec::with_capacity(2 * limit);
    let mut buf = vec![0; 8192];
    while let Ok(n) = reader.read(&mut buf).await {
        if n == 0 {
            break;
        }
        tail.extend_from_slice(&buf[..n]);
        if tail.len() > 2 * limit {
            tail.drain(..tail.len() - limit);
        }
    }
    let start = tail.len().saturating_sub(limit);
    String::from_utf8_lossy(&tail[start..]).into_owned()
}

/// Kills the child's process group, then the child, and reaps it.
async fn stop(child: &mut Child) {
    #[cfg(unix)]
    if let Some(pid) = child.id() {
        // why the `kill` program: signalling a process group from Rust takes libc and
        // `unsafe`, which the workspace forbids. Best effort: if `kill` is missing, the
        // child itself is still killed below.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{pid}")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await;
    }
    let _ = child.kill().await;
    let _ = child.wait().await;
}

/// What the output of a turn said, as far as the outcome is concerned.
struct Transcript {
    mode: CommandMode,
    /// Text mode: all of stdout; jsonl mode: the assistant's text blocks.
    text: Vec<String>,
    /// The `result` event's text.
    result: Option<String>,
    usage: Usage,
    session_id: Option<String>,
    /// Set by a `result` event with `is_error`.
    error: Option<String>,
}

impl Transcript {
    fn new(mode: CommandMode) -> Self {
        Transcript {
            mode,
            text: Vec::new(),
            result: None,
            usage: Usage::default(),
            session_id: None,
            error: None,
        }
    }

    fn summary(&self) -> String {
        match (&self.result, self.mode) {
            (Some(result), _) => result.trim().to_owned(),
            (None, CommandMode::Text) => self.text.concat().trim().to_owned(),
            (None, CommandMode::Jsonl) => self.text.join("\n\n").trim().to_owned(),
        }
    }

    /// Takes one line of stdout; returns the chunks to stream.
    fn line(&mut self, line: &str) -> Vec<(&'static str, String)> {
        match self.mode {
            CommandMode::Text => {
                self.text.push(line.to_owned());
                vec![("text", line.to_owned())]
            }
            CommandMode::Jsonl => {
                let trimmed = line.trim();
                if trimmed.is_empty() {
                    return Vec::new();
                }
                match serde_json::from_str::<Value>(trimmed) {
                    Ok(event) => self.event(&event),
                    Err(_) => vec![("log", line.to_owned())],
                }
            }
        }
    }

    fn event(&mut self, event: &Value) -> Vec<(&'static str, String)> {
        let mut chunks = Vec::new();
        let session_id = event
            .get("session_id")
            .or_else(|| event.get("sessionId"))
            .and_then(Value::as_str);
        if let Some(id) = session_id
            && self.session_id.as_deref() != Some(id)
        {
            self.session_id = Some(id.to_owned());
            chunks.push(("session", id.to_owned()));
        }
        let content = event.pointer("/message/content");
        match event.get("type").and_then(Value::as_str) {
            Some("assistant") => match content {
                Some(Value::String(text)) => {
                    self.text.push(text.clone());
                    chunks.push(("text", text.clone()));
                }
                Some(Value::Array(blocks)) => {
                    for block in blocks {
                        if let Some(chunk) = self.block(block) {
                            chunks.push(chunk);
                        }
                    }
                }
                _ => {}
            },
            Some("user") => {
                for block in content.and_then(Value::as_array).into_iter().flatten() {
                    if block.get("type").and_then(Value::as_str) == Some("tool_result") {
                        chunks.push(("tool_result", tool_result(block)));
                    }
                }
            }
            Some("result") => self.result(event),
            _ => {}
        }
        chunks
    }

    /// A content block of an assistant message.
    fn block(&mut self, block: &Value) -> Option<(&'static str, String)> {
        let text_of = |field: &str| block.get(field).and_then(Value::as_str);
        match block.get("type").and_then(Value::as_str)? {
            "text" => {
                let text = text_of("text")?.to_owned();
                self.text.push(text.clone());
                Some(("text", text))
            }
            "thinking" => Some(("reasoning", text_of("thinking")?.to_owned())),
            "tool_use" => Some((
                "tool_call",
                json!({
                    "id": block.get("id"),
                    "name": block.get("name"),
                    "input": block.get("input"),
                })
                .to_string(),
            )),
            "tool_result" => Some(("tool_result", tool_result(block))),
            _ => None,
        }
    }

    fn result(&mut self, event: &Value) {
        if let Some(result) = event.get("result").and_then(Value::as_str) {
            self.result = Some(result.to_owned());
        }
        let tokens = |field: &str| {
            event
                .get("usage")
                .and_then(|u| u.get(field))
                .and_then(Value::as_i64)
                .unwrap_or(0)
        };
        self.usage = Usage {
            input_tokens: tokens("input_tokens")
                + tokens("cache_creation_input_tokens")
                + tokens("cache_read_input_tokens"),
            output_tokens: tokens("output_tokens"),
            cost_usd: event
                .get("total_cost_usd")
                .or_else(|| event.get("cost_usd"))
                .and_then(Value::as_f64)
                .filter(|c| c.is_finite() && *c >= 0.0)
                .unwrap_or(0.0),
        };
        if event.get("is_error").and_then(Value::as_bool) == Some(true) {
            let subtype = event
                .get("subtype")
                .and_then(Value::as_str)
                .unwrap_or("error");
            let detail = self.result.as_deref().unwrap_or("").trim();
            self.error = Some(if detail.is_empty() {
                format!("the agent reported an error ({subtype})")
            } else {
                format!("the agent reported an error ({subtype}): {detail}")
            });
        }
    }
}

fn tool_result(block: &Value) -> String {
    json!({
        "tool_use_id": block.get("tool_use_id"),
        "content": block.get("content"),
        "is_error": block.get("is_error").and_then(Value::as_bool).unwrap_or(false),
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{
        Backends,
        tests::{sessions, task},
    };
    use tokio::{sync::mpsc, time::Instant};
    use tokio_util::sync::CancellationToken;
    use turnq_core::{event::OutputChunk, task::Task};

    fn backend(config: Value) -> CommandBackend {
        CommandBackend::from_config(config).unwrap()
    }

    /// `sh -c script` in `mode`.
    fn sh(script: &str, mode: &str) -> CommandBackend {
        backend(json!({"program": "sh", "args": ["-c", script], "mode": mode}))
    }

    fn start(
        backend: &CommandBackend,
        task: Task,
        cancel: CancellationToken,
        within: Duration,
    ) -> (
        tokio::task::JoinHandle<Result<TurnOutcome, TurnError>>,
        mpsc::Receiver<OutputChunk>,
    ) {
        let (output, rx) = OutputSink::channel(1024);
        let turn = Turn {
            task,
            output,
            cancel,
            deadline: Instant::now() + within,
            sessions: sessions(),
        };
        (tokio::spawn(backend.run(turn)), rx)
    }

    async fn run(
        backend: &CommandBackend,
        task: Task,
    ) -> (Result<TurnOutcome, TurnError>, Vec<OutputChunk>) {
        let (running, mut rx) = start(
            backend,
            task,
            CancellationToken::new(),
            Duration::from_secs(30),
        );
        let result = running.await.unwrap();
        let mut chunks = Vec::new();
        while let Ok(chunk) = rx.try_recv() {
            chunks.push(chunk);
        }
        (result, chunks)
    }

    fn pairs(chunks: &[OutputChunk]) -> Vec<(&str, &str)> {
        chunks
            .iter()
            .map(|c| (c.stream.as_str(), c.text.as_str()))
            .collect()
    }

    /// Whether `pid` is gone: `kill -0` fails, or it is a zombie whose parent has not
    /// reaped it yet (a grandchild, reparented to a PID 1 that may not reap).
    fn gone(pid: &str) -> bool {
        let alive = std::process::Command::new("kill")
            .args(["-0", pid])
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success();
        let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
            stat.rsplit(')')
                .next()
                .unwrap_or("")
                .trim()
                .starts_with('Z')
        });
        !alive || zombie
    }

    async fn eventually_gone(pid: &str) {
        let until = Instant::now() + Duration::from_secs(5);
        while !gone(pid) {
            assert!(Instant::now() < until, "process {pid} is still alive");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
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

    const STREAM_JSON: &str = r#"cat <<'EOF'
{"type":"system","subtype":"init","session_id":"sess-1","model":"claude-x","tools":["Bash"]}
{"type":"stream_event","session_id":"sess-1","event":{"type":"content_block_delta","delta":{"type":"text_delta","text":"Let"}}}
{"type":"assistant","session_id":"sess-1","message":{"role":"assistant","content":[{"type":"thinking","thinking":"List the files."},{"type":"text","text":"Let me look."},{"type":"tool_use","id":"toolu_1","name":"Bash","input":{"command":"ls"}}]}}
{"type":"user","session_id":"sess-1","message":{"role":"user","content":[{"type":"tool_result","tool_use_id":"toolu_1","content":"a.txt","is_error":false}]}}
not json at all

{"type":"assistant","session_id":"sess-1","message":{"role":"assistant","content":[{"type":"text","text":"There is a.txt."}]}}
{"type":"result","subtype":"success","is_error":false,"result":"There is a.txt.","session_id":"sess-1","total_cost_usd":0.25,"usage":{"input_tokens":10,"cache_creation_input_tokens":100,"cache_read_input_tokens":1000,"output_tokens":7}}
EOF
"#;

    #[tokio::test]
    async fn jsonl_mode_maps_claude_stream_json_to_normalized_output() {
        let (result, chunks) = run(&sh(STREAM_JSON, "jsonl"), task(json!("ls"))).await;
        assert_eq!(
            pairs(&chunks),
            [
                ("session", "sess-1"),
                ("reasoning", "List the files."),
                ("text", "Let me look."),
                (
                    "tool_call",
                    r#"{"id":"toolu_1","input":{"command":"ls"},"name":"Bash"}"#
                ),
                (
                    "tool_result",
                    r#"{"content":"a.txt","is_error":false,"tool_use_id":"toolu_1"}"#
                ),
                ("log", "not json at all\n"),
                ("text", "There is a.txt."),
            ]
        );
        assert_eq!(
            result.unwrap(),
            TurnOutcome::Completed {
                summary: "There is a.txt.".into(),
                usage: Usage {
                    input_tokens: 1110,
                    output_tokens: 7,
                    cost_usd: 0.25
                }
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

    #[tokio::test]
    async fn the_input_is_written_to_stdin_which_is_then_closed() {
        let backend = backend(json!({"program": "cat", "stdin": true}));
        let (result, chunks) = run(&backend, task(json!("hello from stdin\nsecond"))).await;
        assert_eq!(
            pairs(&chunks),
            [("text", "hello from stdin\n"), ("text", "second")]
        );
        assert!(result.is_ok(), "{result:?}");
    }

    #[tokio::test]
    async fn placeholders_are_replaced_in_each_argument_without_a_shell() {
        let backend = backend(json!({
            "program": "sh",
            "args": ["-c", "printf '[%s]' \"$@\"", "sh", "{input}", "--session={session_id}",
                     "{task_id}", "{model}/{model}", "{unknown} {", "$HOME;{input}"],
        }));
        let mut t = task(json!("it's {model} `$(x)`"));
        t.session_id = Some("s-9".into());
        t.model = Some("m1".into());
        let id = t.id.to_string();
        let (result, chunks) = run(&backend, t).await;
        assert!(result.is_ok(), "{result:?}");
        assert_eq!(
            chunks[0].text,
            format!(
                "[it's {{model}} `$(x)`][--session=s-9][{id}][m1/m1][{{unknown}} {{][$HOME;it's {{model}} `$(x)`]"
            )
        );

        // Absent values become empty; JSON input is passed as compact JSON.
        let backend = self::backend(json!({
            "program": "printf", "args": ["%s|%s|%s", "{session_id}", "{model}", "{input}"],
        }));
        let (_, chunks) = run(&backend, task(json!({"a": 1}))).await;
        assert_eq!(chunks[0].text, r#"||{"a":1}"#);
    }

    #[tokio::test]
    async fn env_is_set_and_the_worktree_path_wins_over_cwd() {
        let backend = backend(json!({
            "program": "sh", "args": ["-c", "printf '%s %s' \"$AGENT_FLAVOUR\" \"$(pwd -P)\""],
            "env": {"AGENT_FLAVOUR": "mint"}, "cwd": "/",
        }));
        let (_, chunks) = run(&backend, task(json!("x"))).await;
        assert_eq!(chunks[0].text, "mint /");

        let worktree = std::env::temp_dir().canonicalize().unwrap();
        let mut t = task(json!("x"));
        t.worktree_path = Some(worktree.to_string_lossy().into_owned());
        let (_, chunks) = run(&backend, t).await;
        assert_eq!(chunks[0].text, format!("mint {}", worktree.display()));
    }

    #[tokio::test]
    async fn cancellation_kills_the_child_and_its_process_group() {
        let backend = sh("sleep 30 & echo $$ $!; wait", "text");
        let cancel = CancellationToken::new();
        let (running, mut rx) = start(
            &backend,
            task(json!("x")),
            cancel.clone(),
            Duration::from_secs(60),
        );
        let first = rx.recv().await.unwrap().text;
        let pids: Vec<String> = first.split_whitespace().map(str::to_owned).collect();
        assert_eq!(pids.len(), 2, "{first:?}");
        assert!(!gone(&pids[0]) && !gone(&pids[1]));
        cancel.cancel();
        let result = tokio::time::timeout(Duration::from_secs(5), running)
            .await
            .expect("the turn stops promptly")
            .unwrap();
        assert_eq!(result, Err(TurnError::Cancelled));
        assert!(gone(&pids[0]), "the child was killed and reaped");
        eventually_gone(&pids[1]).await;
    }

    #[tokio::test]
    async fn a_crash_mid_turn_is_retryable_with_the_status_and_the_end_of_stderr() {
        let script = "echo partial; head -c 5000 /dev/zero | tr '\\0' x >&2; echo 'boom: it broke' >&2; exit 3";
        let (result, chunks) = run(&sh(script, "text"), task(json!("x"))).await;
        assert_eq!(pairs(&chunks), [("text", "partial\n")]);
        let Err(TurnError::Retryable { message, .. }) = result else {
            panic!("expected a retryable failure, got {result:?}");
        };
        assert!(message.contains("exit status: 3"), "{message}");
        assert!(message.ends_with("boom: it broke"), "{message}");
        assert!(
            message.len() < STDERR_TAIL_BYTES + 200,
            "only the tail: {}",
            message.len()
        );
    }

    #[tokio::test]
    async fn a_turn_past_its_deadline_is_killed_and_retryable() {
        let backend = sh("echo $$; exec sleep 30", "text");
        let started = Instant::now();
        let (running, mut rx) = start(
            &backend,
            task(json!("x")),
            CancellationToken::new(),
            Duration::from_millis(500),
        );
        let pid = rx.recv().await.unwrap().text.trim().to_owned();
        let result = running.await.unwrap();
        assert!(started.elapsed() < Duration::from_secs(5));
        let Err(TurnError::Retryable { message, .. }) = result else {
            panic!("expected a retryable failure, got {result:?}");
        };
        assert!(message.contains("deadline"), "{message}");
        assert!(gone(&pid), "process {pid} is still alive");
    }

    #[tokio::test]
    async fn a_program_that_cannot_be_started_is_fatal() {
        let backend = backend(json!({"program": "/nonexistent/turnq-agent"}));
        let (result, _) = run(&backend, task(json!("x"))).await;
        let Err(TurnError::Fatal { message, .. }) = result else {
            panic!("expected a fatal failure, got {result:?}");
        };
        assert!(message.contains("/nonexistent/turnq-agent"), "{message}");
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

    #[test]
    fn a_malformed_config_is_refused_saying_what_is_wrong() {
        let message = |config: Value| CommandBackend::from_config(config).unwrap_err();
        assert!(message(json!({"args": []})).contains("missing field `program`"));
        assert!(message(json!({"program": "x", "shell": true})).contains("unknown field `shell`"));
        assert!(message(json!({"program": "x", "mode": "xml"})).contains("unknown variant `xml`"));
        assert!(message(json!({"program": " "})).contains("empty `program`"));
        assert!(message(json!("claude")).contains("malformed"));
        let backend = backend(json!({"program": "claude", "mode": "jsonl", "stdin": true}));
        assert_eq!(backend.config().mode, CommandMode::Jsonl);
        let backends = Backends::builtin().with(backend);
        assert_eq!(backends.names().collect::<Vec<_>>(), ["command", "script"]);
    }
}

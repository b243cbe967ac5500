//! Agent backends: what actually runs a turn.
//!
//! A backend gets a [`Turn`] (the claimed task, the session store, a sink for streamed
//! output, a cancellation token and a deadline) and returns a [`TurnOutcome`] or a classified
//! [`TurnError`]. It never writes task events: the runner owns every such write, so
//! batching, fencing of a lost or cancelled attempt, and the retry decision live in one
//! place for every backend. The one thing a backend writes is its session's transcript,
//! through the [`SessionStore`] trait, so it never knows Postgres. The class of a failure,
//! never its message, decides what happens next.
//!
//! Backends must stop promptly when `cancel` fires and return [`TurnError::Cancelled`];
//! one that ignores it is dropped (its task aborted) a few seconds later, so whatever it
//! holds must clean up on drop (a child process with `kill_on_drop`, say).
//!
//! # Layout
//!
//! - this file: the [`AgentBackend`] trait, a [`Turn`] and its endings, and
//!   [`Backends`], the agents a worker runs by name.
//! - `script`, `command/`, `openai`: the backends.
//! - `discover`: which agents of the registry a worker runs, built and probed at start.
//! - `lookup`: the agent sessions a resuming backend reads.
//! - `subtasks`: the Postgres [`SubTasks`], creating a turn's sub-tasks.

pub mod command;
pub(crate) mod discover;
mod lookup;
pub mod openai;
pub mod script;
mod subtasks;

use std::{collections::BTreeMap, fmt, sync::Arc};

use futures::future::BoxFuture;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use turnq_core::{
    TaskId,
    agent::Agent,
    event::{OutputChunk, Usage},
    session::SessionStore,
    task::{HumanRequest, NewTaskRequest, Task},
    worker::WorkerAgent,
};

pub use command::{CommandBackend, CommandConfig, CommandMode};
pub use lookup::PgAgentSessions;
pub use openai::{OpenAiBackend, OpenAiConfig};
pub use script::ScriptBackend;
pub use subtasks::PgSubTasks;

/// Something that can run an agent turn. Dyn-compatible: a worker keeps its backends as
/// `Arc<dyn AgentBackend>` and picks one per task.
pub trait AgentBackend: Send + Sync {
    /// The backend's kind (`script`, `command`, `openai`): it names the backend in logs
    /// and agent sessions, and is the agent name [`Backends::with`] adds it under.
    fn name(&self) -> &'static str;

    /// Runs one turn to its end. The future owns what it needs (`'static`), so the
    /// runner can drive it on a task of its own and survive a panic inside it.
    fn run(&self, turn: Turn) -> BoxFuture<'static, Result<TurnOutcome, TurnError>>;
}

/// Where a backend that resumes its agent's own conversations (`command`) reads the
/// backend session id stored in the agent session of (project, session id, agent).
// why a trait and not a field of `Turn`: the runner records the agent session (`active`,
// which starts a fresh backend session after a config change or a close) before it
// starts the backend, so reading it here sees what this turn resumes, and backends stay
// free of Postgres. `turnq worker` gives every `command` agent the Postgres one.
pub trait AgentSessionLookup: Send + Sync {
    /// The stored backend session id of (`project`, `session_id`, `agent`); `None` when
    /// there is no agent session yet or it has none (a fresh one).
    fn backend_session_id<'a>(
        &'a self,
        project: &'a str,
        session_id: &'a str,
        agent: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, turnq_core::Error>>;
}

/// One attempt of a task, as a backend sees it.
pub struct Turn {
    /// The task as claimed; `task.attempt` is this attempt's number (1 for the first).
    pub task: Task,
    /// Where streamed output goes; the runner batches it into `task.output` events.
    pub output: OutputSink,
    /// Fires when the turn must stop: the task was cancelled or its lease lost, the
    /// turn timed out, or the worker's shutdown grace ran out.
    pub cancel: CancellationToken,
    /// When the runner cancels the turn for running too long (`--turn-timeout`); a
    /// backend may pass it on, e.g. as an HTTP timeout.
    pub deadline: tokio::time::Instant,
    /// The session transcripts (`task.project` / `task.session_id`).
    // why here: a backend that resumes a session (`openai`) loads its history and
    // appends its transcript through the trait, so it never knows Postgres and its
    // tests run on an in-memory store. The runner hands every turn the worker's
    // `PgSessionStore`.
    pub sessions: Arc<dyn SessionStore>,
    /// Creates sub-tasks of this task, the tool a backend is given for splitting its
    /// work; the turn then ends with a [`turnq_core::task::RequestKind::Children`]
    /// request to wait for them.
    pub subtasks: Arc<dyn SubTasks>,
}

/// Creates sub-tasks of a running task. Dyn-compatible, so backends stay free of
/// Postgres (the worker hands every turn the Postgres one, [`PgSubTasks`]).
pub trait SubTasks: Send + Sync + fmt::Debug {
    /// Creates `children` under `parent` (idempotent per parent and content) and returns
    /// their ids; a child that breaks a rule is a fatal error of the turn.
    fn spawn<'a>(
        &'a self,
        parent: &'a Task,
        children: Vec<NewTaskRequest>,
    ) -> BoxFuture<'a, Result<Vec<TaskId>, TurnError>>;
}

impl fmt::Debug for Turn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Turn")
            .field("task", &self.task.id)
            .field("attempt", &self.task.attempt)
            .field("cancelled", &self.cancel.is_cancelled())
            .field("deadline", &self.deadline)
            .finish()
    }
}

/// The sending half of a turn's output stream. Cheap to clone.
#[derive(Clone, Debug)]
pub struct OutputSink {
    tx: mpsc::Sender<OutputChunk>,
}

impl OutputSink {
    /// A sink and the receiver its chunks arrive at. When the channel is full `send`
    /// waits: that back-pressure keeps a chatty agent from outrunning Postgres.
    pub fn channel(capacity: usize) -> (OutputSink, mpsc::Receiver<OutputChunk>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        (OutputSink { tx }, rx)
    }

    /// Streams one chunk; `stream` is `text`, `reasoning`, `tool_call`, … A closed
    /// channel is ignored: the runner stopped listening because the turn is being
    /// stopped, and the backend learns that from its cancellation token.
    pub async fn send(&self, stream: &str, text: impl Into<String>) {
        let chunk = OutputChunk {
            stream: stream.to_owned(),
            text: text.into(),
        };
        let _ = self.tx.send(chunk).await;
    }
}

/// How a turn ended when it did not fail.
#[derive(Clone, Debug, PartialEq)]
pub enum TurnOutcome {
    /// The agent finished; `summary` becomes the task's output summary.
    Completed { summary: String, usage: Usage },
    /// The agent waits for a person; `reason` says what it asks, `request` (when
    /// present) what kind of answer it wants, its options and deadline. A bare block
    /// (no request) is approved by a person; a request is answered.
    Blocked {
        reason: String,
        usage: Usage,
        request: Option<HumanRequest>,
    },
}

/// How a turn failed. The variant picks the next state; the message is for people.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum TurnError {
    /// Worth another attempt (a timeout, a rate limit, a crashed agent process).
    #[error("{message}")]
    Retryable { message: String, usage: Usage },
    /// Another attempt would fail the same way (bad input, unknown backend).
    #[error("{message}")]
    Fatal { message: String, usage: Usage },
    /// The turn stopped because its cancellation token fired. Whoever cancelled it
    /// decides what is recorded, never the backend.
    #[error("the turn was cancelled")]
    Cancelled,
}

impl TurnError {
    /// A retryable failure that used nothing worth counting.
    pub fn retryable(message: impl Into<String>) -> Self {
        TurnError::Retryable {
            message: message.into(),
            usage: Usage::default(),
        }
    }

    /// A fatal failure that used nothing worth counting.
    pub fn fatal(message: impl Into<String>) -> Self {
        TurnError::Fatal {
            message: message.into(),
            usage: Usage::default(),
        }
    }
}

/// What an agent is told this turn: the answer it waited for, when a person (or turnq,
/// for its sub-tasks) answered the task's request, which resumes its conversation;
/// otherwise the task's input (a JSON string as it is, anything else as its compact
/// JSON).
pub(crate) fn prompt_text(task: &Task) -> String {
    if let Some(answer) = &task.response {
        return answer.as_prompt(task.request.as_ref());
    }
    match &task.input {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The agents a worker runs, by agent name, each with the backend that runs it. Several
/// agents may share a backend kind with different configs (two `command` agents, say).
#[derive(Clone, Default)]
pub struct Backends {
    by_agent: BTreeMap<String, AgentEntry>,
}

/// One agent a worker runs: the registry's view of it and its backend.
#[derive(Clone)]
pub struct AgentEntry {
    /// The agent as registered, or as synthesized for an agent that is not (the
    /// built-in `script`, a backend added with [`Backends::with`]): its `config_hash`
    /// fingerprints agent sessions.
    pub agent: Agent,
    pub backend: Arc<dyn AgentBackend>,
}

impl fmt::Debug for Backends {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(
                self.by_agent
                    .iter()
                    .map(|(name, e)| (name, e.backend.name())),
            )
            .finish()
    }
}

/// An agent that is not in the registry, as [`Backends::with`] and the built-in `script`
/// agent see it: named like its backend, with an empty config.
pub fn unregistered_agent(name: &str, backend: &str) -> Agent {
    let at = turnq_core::time::now();
    Agent {
        name: name.to_owned(),
        label: None,
        backend: backend.to_owned(),
        config: Value::Object(Default::default()),
        models: Value::Array(Vec::new()),
        version: None,
        capabilities: Value::Object(Default::default()),
        commands: Value::Array(Vec::new()),
        install_path: None,
        last_probed_at: None,
        created_at: at,
        updated_at: at,
    }
}

impl Backends {
    /// No agents at all.
    pub fn new() -> Self {
        Self::default()
    }

    /// The built-in agent every worker can run: `script` (the `script` backend), even
    /// when the registry does not list it. `command` and `openai` agents need a config:
    /// the worker builds them from the agent registry at start.
    pub fn builtin() -> Self {
        Self::new().with(ScriptBackend)
    }

    /// Adds `backend` as the agent named like it (`backend.name()`), with an empty
    /// config, replacing an agent of that name.
    pub fn with(mut self, backend: impl AgentBackend + 'static) -> Self {
        self.insert(Arc::new(backend));
        self
    }

    /// Adds `backend` as the agent named like it, replacing an agent of that name.
    pub fn insert(&mut self, backend: Arc<dyn AgentBackend>) {
        let agent = unregistered_agent(backend.name(), backend.name());
        self.insert_agent(agent, backend);
    }

    /// Adds `agent`, run by `backend`, replacing an agent of the same name.
    pub fn insert_agent(&mut self, agent: Agent, backend: Arc<dyn AgentBackend>) {
        self.by_agent
            .insert(agent.name.clone(), AgentEntry { agent, backend });
    }

    /// Removes the agent `name`; true when there was one.
    pub fn remove(&mut self, name: &str) -> bool {
        self.by_agent.remove(name).is_some()
    }

    /// Keeps only the agents `keep` accepts.
    pub fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) {
        self.by_agent.retain(|name, _| keep(name));
    }

    /// The names of the agents, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> + '_ {
        self.by_agent.keys().map(String::as_str)
    }

    pub fn is_empty(&self) -> bool {
        self.by_agent.is_empty()
    }

    /// The agent `name` and its backend, if this worker runs it.
    pub fn agent(&self, name: &str) -> Option<&AgentEntry> {
        self.by_agent.get(name)
    }

    /// The agents as the worker registry lists them: name, backend kind and version
    /// (the probed one, under `turnq worker`), by name.
    pub fn worker_agents(&self) -> Vec<WorkerAgent> {
        self.by_agent
            .values()
            .map(|e| WorkerAgent {
                name: e.agent.name.clone(),
                backend: e.agent.backend.clone(),
                version: e.agent.version.clone(),
            })
            .collect()
    }

    /// The backend of the agent `name`, if this worker runs it.
    pub fn get(&self, name: &str) -> Option<Arc<dyn AgentBackend>> {
        self.by_agent.get(name).map(|e| e.backend.clone())
    }

    /// The agent that runs `task`: `task.agent` (delivery is by queue and agent, so a
    /// worker only receives tasks of its agents). An unknown agent comes back as the
    /// message of a fatal failure: another attempt on this worker would fail the same
    /// way.
    pub fn for_task(&self, task: &Task) -> Result<&AgentEntry, String> {
        let name = task.agent.as_str();
        self.agent(name).ok_or_else(|| {
            let known: Vec<&str> = self.names().collect();
            format!(
                "no agent named {name:?} (the task's agent) runs on this worker; it runs: {}",
                if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                }
            )
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;
    use std::sync::Mutex;
    use turnq_core::{
        StreamVersion,
        session::{
            Appended, BoxFuture as StoreFuture, Entries, ProjectKey, SessionId, SessionKey,
            SessionListing, SessionSummary, Subpath,
        },
        task::TaskState,
        time,
    };

    /// An in-memory [`SessionStore`] for backend and runner tests: append (skipping known
    /// `uuid`s) and load keep the contract; the listings are not needed by backends.
    #[derive(Default)]
    pub(crate) struct MemorySessions {
        transcripts: Mutex<Vec<(SessionKey, Vec<Value>)>>,
    }

    /// A fresh, empty in-memory session store.
    pub(crate) fn sessions() -> Arc<dyn SessionStore> {
        Arc::new(MemorySessions::default())
    }

    impl SessionStore for MemorySessions {
        fn append<'a>(
            &'a self,
            key: &'a SessionKey,
            entries: Entries,
        ) -> StoreFuture<'a, turnq_core::error::Result<Appended>> {
            Box::pin(async move {
                let mut all = self.transcripts.lock().unwrap();
                let i = match all.iter().position(|(k, _)| k == key) {
                    Some(i) => i,
                    None => {
                        all.push((key.clone(), Vec::new()));
                        all.len() - 1
                    }
                };
                let transcript = &mut all[i].1;
                let mut appended = Appended::default();
                for entry in entries.into_vec() {
                    let uuid = entry.get("uuid").and_then(Value::as_str);
                    let known = uuid.is_some_and(|u| {
                        transcript
                            .iter()
                            .any(|e| e.get("uuid").and_then(Value::as_str) == Some(u))
                    });
                    if known {
                        appended.duplicates += 1;
                    } else {
                        transcript.push(entry);
                        appended.appended += 1;
                    }
                }
                Ok(appended)
            })
        }

        fn load<'a>(
            &'a self,
            key: &'a SessionKey,
        ) -> StoreFuture<'a, turnq_core::error::Result<Option<Vec<Value>>>> {
            Box::pin(async move {
                let all = self.transcripts.lock().unwrap();
                Ok(all.iter().find(|(k, _)| k == key).map(|(_, t)| t.clone()))
            })
        }

        fn list_sessions<'a>(
            &'a self,
            _project: &'a ProjectKey,
        ) -> StoreFuture<'a, turnq_core::error::Result<Vec<SessionListing>>> {
            Box::pin(async { Ok(Vec::new()) })
        }

        fn list_session_summaries<'a>(
            &'a self,
            _project: &'a ProjectKey,
        ) -> StoreFuture<'a, turnq_core::error::Result<Vec<SessionSummary>>> {
            Box::pin(async { Ok(Vec::new()) })
        }

        fn list_subkeys<'a>(
            &'a self,
            _project: &'a ProjectKey,
            _session: &'a SessionId,
        ) -> StoreFuture<'a, turnq_core::error::Result<Vec<Subpath>>> {
            Box::pin(async { Ok(Vec::new()) })
        }

        fn delete<'a>(
            &'a self,
            key: &'a SessionKey,
        ) -> StoreFuture<'a, turnq_core::error::Result<()>> {
            Box::pin(async move {
                self.transcripts.lock().unwrap().retain(|(k, _)| k != key);
                Ok(())
            })
        }
    }

    /// A running task with `input` at attempt 1 of 3, for backend and runner tests.
    pub(crate) fn task(input: Value) -> Task {
        let at = time::now();
        Task {
            id: TaskId::new(),
            project: "default".into(),
            queue: "default".into(),
            priority: 0,
            state: TaskState::Running,
            queued: false,
            input,
            input_truncated: false,
            output_summary: None,
            output_truncated: false,
            agent: "script".into(),
            model: None,
            backend: None,
            worktree_path: None,
            session_id: None,
            chat_id: None,
            mode_id: None,
            thinking_option_id: None,
            feature_values: None,
            parent_task_id: None,
            arena_id: None,
            repo: None,
            usage: Usage::default(),
            run_at: at,
            attempt: 1,
            max_attempts: 3,
            idempotency_key: None,
            queued_at: None,
            lease_until: Some(at),
            worker_id: Some("w".into()),
            last_error: None,
            version: StreamVersion(3),
            created_at: at,
            started_at: Some(at),
            ended_at: None,
            updated_at: at,
            request: None,
            response: None,
        }
    }

    /// A [`SubTasks`] for backend and runner tests: records what it was asked to create
    /// and gives each child a fresh id.
    #[derive(Debug, Default)]
    pub(crate) struct MemorySubTasks {
        pub(crate) spawned: Mutex<Vec<NewTaskRequest>>,
    }

    pub(crate) fn no_subtasks() -> Arc<dyn SubTasks> {
        Arc::new(MemorySubTasks::default())
    }

    impl SubTasks for MemorySubTasks {
        fn spawn<'a>(
            &'a self,
            _parent: &'a Task,
            children: Vec<NewTaskRequest>,
        ) -> BoxFuture<'a, Result<Vec<TaskId>, TurnError>> {
            let ids = children
                .iter()
                .map(|_| TaskId(uuid::Uuid::new_v4()))
                .collect();
            self.spawned.lock().unwrap().extend(children);
            Box::pin(async move { Ok(ids) })
        }
    }

    #[test]
    fn a_task_runs_on_the_backend_of_its_agent() {
        let mut backends = Backends::builtin();
        let mut other = unregistered_agent("scripted-2", "script");
        other.config = json!({"x": 1});
        backends.insert_agent(other, Arc::new(ScriptBackend));
        let mut t = task(json!("hi"));
        t.agent = "scripted-2".into();
        // The task's `backend` field does not pick the backend: its agent does.
        t.backend = Some("openai".into());
        let entry = backends.for_task(&t).unwrap();
        assert_eq!(entry.backend.name(), "script");
        assert_eq!(entry.agent.config, json!({"x": 1}));
        t.agent = "script".into();
        assert_eq!(backends.for_task(&t).unwrap().agent.name, "script");
        assert_eq!(
            backends.names().collect::<Vec<_>>(),
            ["script", "scripted-2"]
        );
    }

    #[test]
    fn an_unknown_agent_is_named_with_the_ones_this_worker_runs() {
        let mut t = task(json!("hi"));
        t.agent = "claude".into();
        let message = Backends::builtin().for_task(&t).err().unwrap();
        assert!(
            message.contains("\"claude\" (the task's agent)"),
            "{message}"
        );
        assert!(message.ends_with("it runs: script"), "{message}");
        let message = Backends::new().for_task(&t).err().unwrap();
        assert!(message.ends_with("it runs: none"), "{message}");
    }

    #[tokio::test]
    async fn a_closed_output_channel_is_ignored() {
        let (sink, rx) = OutputSink::channel(1);
        drop(rx);
        sink.send("text", "nobody listens").await;
    }
}

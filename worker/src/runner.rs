//! One turn: claim the task in Postgres, run its backend, stream its output in batches,
//! record how it ended.
//!
//! Invariants:
//! - Nothing runs without a claim: the job from Redis only says "try task X at attempt
//!   N"; the conditional claim in Postgres decides, so stale and duplicate deliveries
//!   do nothing.
//! - Every write names the attempt and this worker ([`TaskStore::record`]). The first
//!   one refused (`Fenced`: the task was cancelled or its lease taken over) cancels the
//!   turn and nothing more is written for it.
//! - Exactly one place maps a turn's result to its last event ([`ending_event`]); the
//!   class of a failure, never its message, picks it. A turn stopped by its owner
//!   writes nothing; one stopped by a timeout is retried; one stopped by shutdown is
//!   handed back (`task.released`).
//! - After every turn of a task in a session that ended in a result (completed,
//!   blocked, retryable or fatal failure; not a cancelled or stopped one), the agent
//!   session of (session, agent) records the turn's usage, the agent's config hash,
//!   the backend session id (the last `session` output chunk) and the status (`idle`
//!   after a result, `crashed` after a failure), before the task's last event is
//!   written: the session's next turn may start as soon as that event commits, and it
//!   resumes the backend session recorded here. Failing to record it is logged and
//!   never fails the task.
//! - The backend runs on a task of its own: a panic in it fails the attempt
//!   (retryably) instead of taking the worker down, and a backend that ignores its
//!   cancellation token is aborted after [`CANCEL_GRACE`].

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

use futures::{FutureExt, future::BoxFuture};
use rand::RngExt;
use sea_orm::DatabaseConnection;
use serde_json::json;
use tokio::{
    sync::OwnedSemaphorePermit,
    task::JoinError,
    time::{Instant, sleep, sleep_until},
};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use turnq_core::{
    Error, TaskId, WorkerId,
    agent::{AgentSessions, AgentStatus, Turn as AgentTurn, config_hash},
    delivery::Job,
    event::{
        Blocked, Completed, ErrorClass, Failed, Output, OutputChunk, Released, Retrying, TaskEvent,
        TaskFailure, Usage,
    },
    session::{PgSessionStore, SessionStore},
    task::Task,
    time::{self, Timestamp},
};

use crate::{
    WorkerConfig,
    backend::{AgentBackend, AgentEntry, Backends, OutputSink, Turn, TurnError, TurnOutcome},
    health::PostgresHealth,
    queue::Handled,
    writer::{GroupClaimer, GroupWriter},
};

/// The most chunks in one `task.output` event.
pub(crate) const MAX_CHUNKS_PER_EVENT: usize = 64;
/// Chunks a backend may stream ahead of the writer before `send` waits.
const OUTPUT_CHANNEL: usize = 256;
/// Chunks kept for a retry while Postgres refuses output; past this they are dropped
/// (the turn's end still gets written) rather than held without bound.
const MAX_PENDING_CHUNKS: usize = 10_000;
/// How long a cancelled backend may take to return before its task is aborted.
pub(crate) const CANCEL_GRACE: Duration = Duration::from_secs(5);
/// How long the last writes of a turn are retried while Postgres is unreachable. The
/// lease is not renewed meanwhile either, so waiting much longer gains nothing.
const WRITE_PATIENCE: Duration = Duration::from_secs(30);

/// The wait before the attempt after `attempt` fails retryably: 1 s doubling with each
/// attempt, capped at 10 minutes, then spread by ±20% (`unit` is uniform in 0..1) so
/// that tasks failing together do not retry in lockstep.
pub(crate) fn retry_backoff(attempt: i32, unit: f64) -> Duration {
    const CAP_SECS: f64 = 600.0;
    let exponent = attempt.saturating_sub(1).clamp(0, 30);
    let base = 2f64.powi(exponent).min(CAP_SECS);
    let factor = 0.8 + 0.4 * unit.clamp(0.0, 1.0);
    Duration::from_secs_f64(base * factor)
}

/// Why a turn was stopped from outside its backend. The first reason given wins.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StopReason {
    /// The turn ran past `--turn-timeout`: the attempt fails retryably.
    TimedOut,
    /// The worker's shutdown grace ran out: the task is handed back.
    Shutdown,
    /// The task is no longer this worker's (cancelled, lease taken over): write nothing.
    Lost,
}

/// The handle on one running turn: who may stop it, and why it was stopped.
#[derive(Debug)]
pub(crate) struct TurnControl {
    pub(crate) task: TaskId,
    pub(crate) attempt: i32,
    token: CancellationToken,
    reason: OnceLock<StopReason>,
}

impl TurnControl {
    pub(crate) fn new(task: TaskId, attempt: i32) -> Self {
        TurnControl {
            task,
            attempt,
            token: CancellationToken::new(),
            reason: OnceLock::new(),
        }
    }

    /// Stops the turn. The reason is recorded before the token fires, so whoever sees
    /// the cancellation also sees why.
    pub(crate) fn stop(&self, reason: StopReason) {
        let _ = self.reason.set(reason);
        self.token.cancel();
    }

    pub(crate) fn reason(&self) -> Option<StopReason> {
        self.reason.get().copied()
    }

    pub(crate) fn token(&self) -> &CancellationToken {
        &self.token
    }
}

/// The turns running in this process, so the heartbeat can renew their leases and
/// stop the ones that are no longer ours, and shutdown can stop the rest.
#[derive(Clone, Debug, Default)]
pub(crate) struct Turns {
    inner: Arc<Mutex<TurnMap>>,
}

/// Running turns by (task, attempt).
type TurnMap = HashMap<(TaskId, i32), Arc<TurnControl>>;

impl Turns {
    fn lock(&self) -> std::sync::MutexGuard<'_, TurnMap> {
        // A panic while holding this lock leaves the map itself intact (every
        // operation on it is a single insert, remove or clone), so keep using it.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers a claimed turn until the guard is dropped.
    pub(crate) fn register(&self, task: TaskId, attempt: i32) -> TurnGuard {
        let control = Arc::new(TurnControl::new(task, attempt));
        self.lock().insert((task, attempt), control.clone());
        TurnGuard {
            turns: self.clone(),
            control,
        }
    }

    pub(crate) fn snapshot(&self) -> Vec<Arc<TurnControl>> {
        self.lock().values().cloned().collect()
    }

    /// Stops every running turn of `task` (whatever its attempt); returns how many.
    pub(crate) fn stop_task(&self, task: TaskId, reason: StopReason) -> usize {
        let matching: Vec<Arc<TurnControl>> = self
            .lock()
            .iter()
            .filter(|((id, _), _)| *id == task)
            .map(|(_, control)| control.clone())
            .collect();
        for control in &matching {
            control.stop(reason);
        }
        matching.len()
    }

    /// Stops every running turn; returns how many there were.
    pub(crate) fn stop_all(&self, reason: StopReason) -> usize {
        let all = self.snapshot();
        for control in &all {
            control.stop(reason);
        }
        all.len()
    }
}

/// Keeps a turn registered in [`Turns`] while it runs.
pub(crate) struct TurnGuard {
    turns: Turns,
    control: Arc<TurnControl>,
}

impl TurnGuard {
    pub(crate) fn control(&self) -> &TurnControl {
        &self.control
    }
}

impl Drop for TurnGuard {
    fn drop(&mut self) {
        let key = (self.control.task, self.control.attempt);
        self.turns.lock().remove(&key);
    }
}

/// Where the events of one attempt go: Postgres in the worker, a list in tests.
pub(crate) trait Recorder: Send + Sync {
    fn record<'a>(&'a self, event: &'a TaskEvent) -> BoxFuture<'a, Result<(), Error>>;
}

/// Writes one attempt's events through the process' group commit ([`GroupWriter`]).
struct DbRecorder<'a> {
    writer: &'a GroupWriter,
    task: TaskId,
    attempt: i32,
}

impl Recorder for DbRecorder<'_> {
    fn record<'a>(&'a self, event: &'a TaskEvent) -> BoxFuture<'a, Result<(), Error>> {
        self.writer
            .record(self.task, self.attempt, event.clone())
            .boxed()
    }
}

/// The timing of a turn, from the worker's configuration.
#[derive(Clone, Debug)]
pub(crate) struct TurnSettings {
    pub(crate) worker: WorkerId,
    pub(crate) output_flush: Duration,
    pub(crate) turn_timeout: Duration,
    pub(crate) cancel_grace: Duration,
    pub(crate) write_patience: Duration,
}

/// Runs the jobs this worker receives.
pub(crate) struct Runner {
    db: DatabaseConnection,
    /// Every write of a running turn goes through it (group commit).
    writer: GroupWriter,
    /// Every claim goes through it (claims of concurrent jobs share a transaction).
    claimer: GroupClaimer,
    /// Handed to every turn; on the same connection pool as the task writes.
    sessions: Arc<dyn SessionStore>,
    health: Arc<PostgresHealth>,
    backends: Backends,
    settings: TurnSettings,
    turns: Turns,
}

impl Runner {
    pub(crate) fn new(
        db: DatabaseConnection,
        worker: WorkerId,
        config: &WorkerConfig,
        backends: Backends,
        health: Arc<PostgresHealth>,
    ) -> Self {
        let metadata = json!({"actor": "worker", "worker_id": worker.0});
        Runner {
            sessions: Arc::new(PgSessionStore::new(db.clone())),
            writer: GroupWriter::start(db.clone(), worker.clone(), metadata.clone()),
            claimer: GroupClaimer::start(
                db.clone(),
                worker.clone(),
                config.lease,
                metadata.clone(),
            ),
            db,
            health,
            backends,
            settings: TurnSettings {
                worker,
                output_flush: config.output_flush,
                turn_timeout: config.turn_timeout,
                cancel_grace: CANCEL_GRACE,
                write_patience: WRITE_PATIENCE,
            },
            turns: Turns::default(),
        }
    }

    pub(crate) fn turns(&self) -> &Turns {
        &self.turns
    }

    /// Handles one delivery: claims its tasks in one statement and runs their turns
    /// side by side, each holding one of `slots` (one per task of the job) until its turn
    /// ends. It never fails: whatever happened is recorded in Postgres, or a task is
    /// still queued there and is delivered again. When Postgres cannot be reached nothing
    /// was started: Postgres is marked down and the job is to be put back on its queue
    /// ([`Handled::PostgresUnavailable`]).
    pub(crate) async fn run_job(&self, job: Job, mut slots: Vec<OwnedSemaphorePermit>) -> Handled {
        let worker = &self.settings.worker;
        let wanted: Vec<(TaskId, i32)> = job.tasks.iter().map(|t| (t.task_id, t.attempt)).collect();
        let claimed = self.claimer.claim(wanted.clone()).await;
        let claimed = match claimed {
            Ok(claimed) => claimed,
            Err(e) if e.is_unavailable() => {
                // Logged once per outage by `health`; the job goes back to its queue.
                tracing::debug!(tasks = wanted.len(), worker_id = %worker,
                    "Postgres is unreachable, so the job's tasks cannot be claimed");
                self.health.down(&e);
                return Handled::PostgresUnavailable;
            }
            Err(e) => {
                tracing::error!(tasks = ?wanted, worker_id = %worker,
                    error = %error_chain(&e), "claiming the job's tasks failed");
                return Handled::Done;
            }
        };
        if claimed.len() < wanted.len() {
            tracing::debug!(claimed = claimed.len(), delivered = wanted.len(), worker_id = %worker,
                "some tasks were not claimed: their jobs are stale or duplicates (the task is no \
                 longer pending at that attempt), or another turn of their session is running \
                 (they stay queued and are delivered again)");
        }
        // The slots of tasks not claimed are free at once, not when the job's turns end.
        slots.truncate(claimed.len());
        let turns = claimed.into_iter().map(|task| {
            // A task's slot is freed when its own turn ends, not when the job's last does.
            let slot = slots.pop();
            async move { self.run_turn(task, slot).await }
        });
        futures::future::join_all(turns).await;
        Handled::Done
    }

    /// Runs the turn of a task this worker has just claimed, to its recorded end. Its
    /// `slot` is freed as soon as the backend has returned: recording the end needs no
    /// agent, and the next turn can start meanwhile.
    async fn run_turn(&self, task: Task, slot: Option<OwnedSemaphorePermit>) {
        let worker = &self.settings.worker;
        let started = Instant::now();
        let attempt = task.attempt;
        let guard = self.turns.register(task.id, attempt);
        let recorder = DbRecorder {
            writer: &self.writer,
            task: task.id,
            attempt,
        };
        // Every log line of the turn, however deep, names the task, attempt and worker.
        let span = tracing::info_span!("turn", task_id = %task.id, attempt, worker_id = %worker);
        let (backend_name, ending) = async {
            match self.backends.for_task(&task) {
                Ok(entry) => {
                    // The agent session is active while its turn runs.
                    self.record_agent_session(
                        &task,
                        entry,
                        None,
                        (AgentStatus::Active, Usage::default()),
                    )
                    .await;
                    let report = drive_turn_reporting(
                        &recorder,
                        entry.backend.clone(),
                        task.clone(),
                        self.sessions.clone(),
                        guard.control(),
                        &self.settings,
                        slot,
                        |result, backend_session_id| {
                            self.record_agent_session(&task, entry, backend_session_id, result)
                                .boxed()
                        },
                    )
                    .await;
                    (entry.backend.name(), report.outcome)
                }
                Err(message) => {
                    let event = TaskEvent::Failed(Failed {
                        attempt,
                        error: TaskFailure {
                            class: ErrorClass::Fatal,
                            message,
                        },
                        usage: Usage::default(),
                    });
                    let outcome = write_end(&recorder, event, "failed", &self.settings).await;
                    ("none", outcome)
                }
            }
        }
        .instrument(span)
        .await;
        tracing::info!(
            task_id = %task.id,
            attempt,
            worker_id = %worker,
            backend = backend_name,
            outcome = ending,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "turn ended"
        );
    }

    /// Records the turn in the agent session of (`task.session_id`, `task.agent`) when the
    /// task has a session: `active` when it starts, then `idle` or `crashed` with its
    /// usage when it ends in a result. Logs a failure, never returns one: the task's own
    /// record is what counts.
    async fn record_agent_session(
        &self,
        task: &Task,
        entry: &AgentEntry,
        backend_session_id: Option<String>,
        (status, usage): (AgentStatus, Usage),
    ) {
        let Some(session_id) = &task.session_id else {
            return;
        };
        let turn = AgentTurn {
            session_id: session_id.clone(),
            agent: entry.agent.name.clone(),
            backend: entry.agent.backend.clone(),
            backend_session_id,
            config_hash: config_hash(&entry.agent),
            usage,
            status,
            at: time::now(),
        };
        if let Err(e) = AgentSessions::record_turn(&self.db, turn).await {
            tracing::warn!(task_id = %task.id, session_id = %session_id, agent = %entry.agent.name,
                error = %error_chain(&e),
                "could not record the turn in its agent session; the task is recorded regardless");
        }
    }
}

/// What [`drive_turn_reporting`] tells its caller about a turn.
pub(crate) struct TurnReport {
    /// The outcome for the log (see [`drive_turn_reporting`]).
    pub(crate) outcome: &'static str,
    /// When the backend returned a result (not a cancellation): the agent session's
    /// status after it and the turn's usage.
    pub(crate) result: Option<(AgentStatus, Usage)>,
    /// The last provider session id the backend streamed (a `session` chunk).
    pub(crate) backend_session_id: Option<String>,
}

/// The agent session's status after a turn that returned `result`, and its usage;
/// `None` for a cancelled turn (whoever stopped it decides what happens next).
fn session_result(result: &Result<TurnOutcome, TurnError>) -> Option<(AgentStatus, Usage)> {
    match result {
        Ok(TurnOutcome::Completed { usage, .. } | TurnOutcome::Blocked { usage, .. }) => {
            Some((AgentStatus::Idle, *usage))
        }
        Err(TurnError::Retryable { usage, .. } | TurnError::Fatal { usage, .. }) => {
            Some((AgentStatus::Crashed, *usage))
        }
        Err(TurnError::Cancelled) => None,
    }
}

/// [`drive_turn_reporting`]'s outcome only (what the tests look at).
#[cfg(test)]
pub(crate) async fn drive_turn(
    recorder: &dyn Recorder,
    backend: Arc<dyn AgentBackend>,
    task: Task,
    sessions: Arc<dyn SessionStore>,
    control: &TurnControl,
    settings: &TurnSettings,
) -> &'static str {
    drive_turn_reporting(
        recorder,
        backend,
        task,
        sessions,
        control,
        settings,
        None,
        |_, _| async {}.boxed(),
    )
    .await
    .outcome
}

/// Runs `backend` on `task` to the end and records what happened. Reports the outcome
/// for the log: `completed`, `blocked`, `retrying`, `failed`, `released` (written),
/// `stopped` (stopped by its owner, nothing written), `fenced` (a write was refused),
/// or `unrecorded` (Postgres did not take the last write); and what the agent session
/// records. `on_result` gets the agent session's status, the usage and the backend
/// session id of a turn that returned a result, before the last event is written.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn drive_turn_reporting<'a>(
    recorder: &dyn Recorder,
    backend: Arc<dyn AgentBackend>,
    task: Task,
    sessions: Arc<dyn SessionStore>,
    control: &TurnControl,
    settings: &TurnSettings,
    slot: Option<OwnedSemaphorePermit>,
    on_result: impl FnOnce((AgentStatus, Usage), Option<String>) -> BoxFuture<'a, ()>,
) -> TurnReport {
    let name = backend.name();
    let deadline = Instant::now() + settings.turn_timeout;
    let (sink, mut rx) = OutputSink::channel(OUTPUT_CHANNEL);
    let turn = Turn {
        task: task.clone(),
        output: sink,
        cancel: control.token().clone(),
        deadline,
        sessions,
    };
    let mut running = tokio::spawn(backend.run(turn));
    let mut output = OutputWriter::new(task.attempt, settings.output_flush);
    let mut rx_open = true;
    // Once the turn is stopped the backend gets a grace period, then it is aborted.
    let mut abort_at: Option<Instant> = None;
    let mut aborted = false;

    let result = loop {
        let flush_at = output.due();
        tokio::select! {
            biased;
            joined = &mut running => break joined_result(joined, name),
            _ = control.token().cancelled(), if abort_at.is_none() => {
                abort_at = Some(Instant::now() + settings.cancel_grace);
            }
            _ = sleep_until(abort_at.unwrap_or(deadline)), if abort_at.is_some() && !aborted => {
                tracing::warn!(task_id = %task.id, attempt = task.attempt, backend = name,
                    "the backend ignored its cancellation; aborting it");
                running.abort();
                aborted = true;
            }
            _ = sleep_until(deadline), if control.reason().is_none() => {
                control.stop(StopReason::TimedOut);
            }
            chunk = rx.recv(), if rx_open => match chunk {
                Some(chunk) => {
                    if output.push(chunk) {
                        output.flush(recorder, control).await;
                    }
                }
                None => rx_open = false,
            },
            _ = sleep_until(flush_at.unwrap_or(deadline)), if flush_at.is_some() => {
                output.flush(recorder, control).await;
            }
        }
    };

    // The backend is done: its slot may run the next turn while this one is recorded.
    drop(slot);
    // Whatever it streamed last is still in the channel.
    rx.close();
    while let Ok(chunk) = rx.try_recv() {
        output.push(chunk);
    }
    if !output.fenced {
        output.flush_all(recorder, control, settings).await;
    }
    let mut report = TurnReport {
        outcome: "fenced",
        result: session_result(&result),
        backend_session_id: output.backend_session.take(),
    };
    // Before the task's last event: the next turn of the session may start the moment
    // that event commits, and must find this turn's backend session id.
    if let Some(result) = report.result {
        on_result(result, report.backend_session_id.clone()).await;
    }
    if output.fenced {
        return report;
    }
    let Some((event, outcome)) = ending_event(
        &task,
        &settings.worker,
        result,
        control.reason(),
        settings.turn_timeout,
        name,
        time::now(),
        rand::rng().random::<f64>(),
    ) else {
        report.outcome = "stopped";
        return report;
    };
    report.outcome = write_end(recorder, event, outcome, settings).await;
    report
}

/// Writes the last event of a turn, waiting out a short Postgres outage.
async fn write_end(
    recorder: &dyn Recorder,
    event: TaskEvent,
    outcome: &'static str,
    settings: &TurnSettings,
) -> &'static str {
    match record_patiently(recorder, &event, settings.write_patience).await {
        Ok(()) => outcome,
        Err(e @ Error::Fenced { .. }) => {
            tracing::info!(error = %e, "the end of the turn was refused: the task moved on without it");
            "fenced"
        }
        Err(e) => {
            tracing::error!(error = %error_chain(&e), event = event.kind(),
                "recording the end of the turn failed; the lease will run out and the task run again");
            "unrecorded"
        }
    }
}

/// Records `event`, retrying with backoff while Postgres is unreachable, for up to
/// `patience`. Any other error, including `Fenced`, is returned at once.
async fn record_patiently(
    recorder: &dyn Recorder,
    event: &TaskEvent,
    patience: Duration,
) -> Result<(), Error> {
    let give_up = Instant::now() + patience;
    let mut pause = Duration::from_millis(100);
    loop {
        match recorder.record(event).await {
            Err(e) if e.is_unavailable() && Instant::now() + pause < give_up => {
                tracing::warn!(error = %error_chain(&e), event = event.kind(),
                    retry_in_ms = pause.as_millis() as u64, "Postgres is unreachable; retrying the write");
                sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(2));
            }
            other => return other,
        }
    }
}

/// The backend's result, or what its task's panic or abort means.
fn joined_result(
    joined: Result<Result<TurnOutcome, TurnError>, JoinError>,
    backend: &str,
) -> Result<TurnOutcome, TurnError> {
    match joined {
        Ok(result) => result,
        Err(e) if e.is_panic() => {
            let payload = e.into_panic();
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a non-text panic payload".into());
            Err(TurnError::retryable(format!(
                "the {backend} backend panicked: {message}"
            )))
        }
        // Aborted by us after it ignored its cancellation.
        Err(_) => Err(TurnError::Cancelled),
    }
}

/// The last event of a turn and the outcome to log, or `None` when nothing may be
/// written (the task is no longer ours). `unit` (uniform in 0..1) jitters the backoff.
#[allow(clippy::too_many_arguments)]
pub(crate) fn ending_event(
    task: &Task,
    worker: &WorkerId,
    result: Result<TurnOutcome, TurnError>,
    stop: Option<StopReason>,
    turn_timeout: Duration,
    backend: &str,
    now: Timestamp,
    unit: f64,
) -> Option<(TaskEvent, &'static str)> {
    let attempt = task.attempt;
    if stop == Some(StopReason::Lost) {
        // Someone else owns the task now (or it was cancelled): any write is refused.
        return None;
    }
    let retry_or_fail = |message: String, usage: Usage| {
        let error = TaskFailure {
            class: ErrorClass::Retryable,
            message,
        };
        if attempt < task.max_attempts {
            let wait = chrono::TimeDelta::from_std(retry_backoff(attempt, unit))
                .unwrap_or(chrono::TimeDelta::MAX);
            let event = TaskEvent::Retrying(Retrying {
                attempt,
                error,
                run_at: time::truncate(now + wait),
                usage,
            });
            (event, "retrying")
        } else {
            let event = TaskEvent::Failed(Failed {
                attempt,
                error,
                usage,
            });
            (event, "failed")
        }
    };
    let ending = match result {
        Ok(TurnOutcome::Completed { summary, usage }) => (
            TaskEvent::Completed(Completed {
                attempt,
                output_summary: summary,
                usage,
            }),
            "completed",
        ),
        Ok(TurnOutcome::Blocked { reason, usage }) => (
            TaskEvent::Blocked(Blocked {
                attempt,
                reason,
                usage,
            }),
            "blocked",
        ),
        Err(TurnError::Retryable { message, usage }) => retry_or_fail(message, usage),
        Err(TurnError::Fatal { message, usage }) => (
            TaskEvent::Failed(Failed {
                attempt,
                error: TaskFailure {
                    class: ErrorClass::Fatal,
                    message,
                },
                usage,
            }),
            "failed",
        ),
        Err(TurnError::Cancelled) => match stop {
            Some(StopReason::TimedOut) => retry_or_fail(
                format!(
                    "turn timed out after {}",
                    humantime::format_duration(turn_timeout)
                ),
                Usage::default(),
            ),
            Some(StopReason::Shutdown) => (
                TaskEvent::Released(Released {
                    attempt,
                    worker_id: worker.0.clone(),
                    reason: "the worker shut down before the turn finished".into(),
                }),
                "released",
            ),
            Some(StopReason::Lost) => return None,
            // Nobody stopped it, yet it says it was cancelled: a backend bug. Treat it
            // as a retryable failure so the task does not sit until its lease expires.
            None => retry_or_fail(
                format!(
                    "the {backend} backend returned Cancelled although the turn was not cancelled"
                ),
                Usage::default(),
            ),
        },
    };
    Some(ending)
}

/// Batches a turn's output into `task.output` events: one per `every` (counted from
/// the first chunk of a batch) or per [`MAX_CHUNKS_PER_EVENT`] chunks, whichever comes
/// first. After a failed write the batch waits for the next interval instead of
/// hammering Postgres on every chunk.
struct OutputWriter {
    attempt: i32,
    every: Duration,
    chunks: Vec<OutputChunk>,
    due: Option<Instant>,
    backing_off: bool,
    fenced: bool,
    /// The last provider session id streamed (a `session` chunk, as the `command`
    /// backend emits), for the agent session.
    backend_session: Option<String>,
}

impl OutputWriter {
    fn new(attempt: i32, every: Duration) -> Self {
        OutputWriter {
            attempt,
            every,
            chunks: Vec::new(),
            due: None,
            backing_off: false,
            fenced: false,
            backend_session: None,
        }
    }

    /// Adds a chunk; true when the batch should be written now.
    fn push(&mut self, chunk: OutputChunk) -> bool {
        if chunk.stream == "session" && !chunk.text.is_empty() {
            self.backend_session = Some(chunk.text.clone());
        }
        if self.fenced {
            return false;
        }
        if self.chunks.is_empty() && self.due.is_none() {
            self.due = Some(Instant::now() + self.every);
        }
        self.chunks.push(chunk);
        self.chunks.len() >= MAX_CHUNKS_PER_EVENT && !self.backing_off
    }

    /// When the batch is due, if there is one.
    fn due(&self) -> Option<Instant> {
        if self.fenced { None } else { self.due }
    }

    /// Writes what is batched, in events of at most [`MAX_CHUNKS_PER_EVENT`]; on an
    /// error keeps the rest for the next interval.
    async fn flush(&mut self, recorder: &dyn Recorder, control: &TurnControl) {
        self.due = None;
        while !self.chunks.is_empty() && !self.fenced {
            let take = self.chunks.len().min(MAX_CHUNKS_PER_EVENT);
            let event = TaskEvent::Output(Output {
                attempt: self.attempt,
                chunks: self.chunks.drain(..take).collect(),
            });
            let written = recorder.record(&event).await;
            if !self.after_write(written, event, control) {
                return;
            }
        }
    }

    /// Writes everything left, waiting out a short Postgres outage.
    async fn flush_all(
        &mut self,
        recorder: &dyn Recorder,
        control: &TurnControl,
        settings: &TurnSettings,
    ) {
        self.due = None;
        while !self.chunks.is_empty() && !self.fenced {
            let take = self.chunks.len().min(MAX_CHUNKS_PER_EVENT);
            let event = TaskEvent::Output(Output {
                attempt: self.attempt,
                chunks: self.chunks.drain(..take).collect(),
            });
            let written = record_patiently(recorder, &event, settings.write_patience).await;
            if !self.after_write(written, event, control) {
                // Postgres is still down: drop the output so the end can be attempted.
                self.chunks.clear();
                return;
            }
        }
    }

    /// Handles the result of writing `event`; false when writing should stop for now.
    fn after_write(
        &mut self,
        written: Result<(), Error>,
        event: TaskEvent,
        control: &TurnControl,
    ) -> bool {
        match written {
            Ok(()) => {
                self.backing_off = false;
                true
            }
            Err(e @ Error::Fenced { .. }) => {
                tracing::info!(error = %e, "the task moved on (cancelled, or its lease taken over): stopping the turn");
                control.stop(StopReason::Lost);
                self.fenced = true;
                self.chunks.clear();
                false
            }
            Err(e) => {
                // Keep the chunks, in order, for the next interval.
                if let TaskEvent::Output(output) = event {
                    let rest = std::mem::replace(&mut self.chunks, output.chunks);
                    self.chunks.extend(rest);
                }
                if self.chunks.len() > MAX_PENDING_CHUNKS {
                    tracing::error!(error = %error_chain(&e), dropped = self.chunks.len(),
                        "writing output keeps failing; dropping the output held for it");
                    self.chunks.clear();
                } else {
                    tracing::warn!(error = %error_chain(&e), pending = self.chunks.len(),
                        "writing output failed; retrying at the next flush");
                }
                self.backing_off = true;
                if !self.chunks.is_empty() {
                    self.due = Some(Instant::now() + self.every);
                }
                false
            }
        }
    }
}

/// `e` and its causes, `: `-separated, for one log field.
pub(crate) use turnq_core::error::chain as error_chain;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{
        ScriptBackend,
        tests::{sessions, task},
    };
    use sea_orm::{DbErr, RuntimeErr};
    use serde_json::json;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Records events in memory; refuses writes as told.
    #[derive(Default)]
    struct Events {
        written: Mutex<Vec<TaskEvent>>,
        /// Refuse (Fenced) every write from this one on (0-based count of calls).
        fence_from: Option<usize>,
        /// Fail with "Postgres unreachable" this many times first.
        unavailable: AtomicUsize,
        calls: AtomicUsize,
    }

    impl Events {
        fn all(&self) -> Vec<TaskEvent> {
            self.written.lock().unwrap().clone()
        }
        fn kinds(&self) -> Vec<&'static str> {
            self.all().iter().map(TaskEvent::kind).collect()
        }
        fn output_batches(&self) -> Vec<Vec<String>> {
            self.all()
                .into_iter()
                .filter_map(|e| match e {
                    TaskEvent::Output(o) => Some(o.chunks.into_iter().map(|c| c.text).collect()),
                    _ => None,
                })
                .collect()
        }
        fn last(&self) -> TaskEvent {
            self.all().pop().expect("an event was written")
        }
    }

    impl Recorder for Events {
        fn record<'a>(&'a self, event: &'a TaskEvent) -> BoxFuture<'a, Result<(), Error>> {
            async move {
                let call = self.calls.fetch_add(1, Ordering::SeqCst);
                if self
                    .unavailable
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok()
                {
                    return Err(Error::Database(DbErr::Conn(RuntimeErr::Internal(
                        "connection refused".into(),
                    ))));
                }
                if self.fence_from.is_some_and(|from| call >= from) {
                    return Err(Error::Fenced {
                        task: TaskId::new(),
                        attempt: 1,
                        worker: "w".into(),
                    });
                }
                self.written.lock().unwrap().push(event.clone());
                Ok(())
            }
            .boxed()
        }
    }

    fn settings() -> TurnSettings {
        TurnSettings {
            worker: WorkerId("w-1".into()),
            output_flush: Duration::from_millis(100),
            turn_timeout: Duration::from_secs(60),
            cancel_grace: Duration::from_secs(5),
            write_patience: Duration::from_secs(30),
        }
    }

    async fn drive(events: &Events, task: Task, settings: &TurnSettings) -> &'static str {
        let control = TurnControl::new(task.id, task.attempt);
        drive_turn(
            events,
            Arc::new(ScriptBackend),
            task,
            sessions(),
            &control,
            settings,
        )
        .await
    }

    /// A backend defined by a closure, for behaviours the script backend does not have.
    struct FnBackend<F>(F);
    impl<F> AgentBackend for FnBackend<F>
    where
        F: Fn(Turn) -> BoxFuture<'static, Result<TurnOutcome, TurnError>> + Send + Sync,
    {
        fn name(&self) -> &'static str {
            "fn"
        }
        fn run(&self, turn: Turn) -> BoxFuture<'static, Result<TurnOutcome, TurnError>> {
            (self.0)(turn)
        }
    }

    #[test]
    fn backoff_doubles_per_attempt_is_capped_at_ten_minutes_and_jittered_by_a_fifth() {
        let mid = |attempt| retry_backoff(attempt, 0.5);
        assert_eq!(mid(1), Duration::from_secs(1));
        assert_eq!(mid(2), Duration::from_secs(2));
        assert_eq!(mid(5), Duration::from_secs(16));
        assert_eq!(mid(10), Duration::from_secs(512));
        assert_eq!(mid(11), Duration::from_secs(600));
        assert_eq!(mid(i32::MAX), Duration::from_secs(600));
        assert_eq!(mid(0), Duration::from_secs(1));
        assert_eq!(mid(-3), Duration::from_secs(1));
        assert_eq!(retry_backoff(1, 0.0), Duration::from_millis(800));
        assert_eq!(retry_backoff(1, 1.0), Duration::from_millis(1200));
        assert_eq!(retry_backoff(20, 1.0), Duration::from_secs(720));
        assert_eq!(retry_backoff(3, 7.0), Duration::from_secs_f64(4.8));
    }

    #[test]
    fn each_result_maps_to_its_event() {
        let t = task(json!("x"));
        let worker = WorkerId("w-1".into());
        let now = time::now();
        let usage = Usage {
            input_tokens: 1,
            output_tokens: 2,
            cost_usd: 0.5,
        };
        let end = |result, stop| {
            ending_event(
                &t,
                &worker,
                result,
                stop,
                Duration::from_secs(90),
                "script",
                now,
                0.5,
            )
        };

        let (event, outcome) = end(
            Ok(TurnOutcome::Completed {
                summary: "s".into(),
                usage,
            }),
            None,
        )
        .unwrap();
        assert_eq!(outcome, "completed");
        assert_eq!(
            event,
            TaskEvent::Completed(Completed {
                attempt: 1,
                output_summary: "s".into(),
                usage
            })
        );

        let (event, _) = end(
            Ok(TurnOutcome::Blocked {
                reason: "r".into(),
                usage,
            }),
            None,
        )
        .unwrap();
        assert_eq!(
            event,
            TaskEvent::Blocked(Blocked {
                attempt: 1,
                reason: "r".into(),
                usage
            })
        );

        let (event, outcome) = end(
            Err(TurnError::Fatal {
                message: "bad".into(),
                usage,
            }),
            None,
        )
        .unwrap();
        assert_eq!(outcome, "failed");
        let TaskEvent::Failed(failed) = event else {
            panic!("{event:?}")
        };
        assert_eq!(failed.error.class, ErrorClass::Fatal);
        assert_eq!(failed.usage, usage);

        let (event, outcome) = end(
            Err(TurnError::Retryable {
                message: "busy".into(),
                usage,
            }),
            None,
        )
        .unwrap();
        assert_eq!(outcome, "retrying");
        let TaskEvent::Retrying(retrying) = event else {
            panic!("{event:?}")
        };
        assert_eq!(retrying.error.message, "busy");
        assert_eq!(
            retrying.run_at,
            time::truncate(now + chrono::TimeDelta::seconds(1))
        );
        assert_eq!(retrying.usage, usage);

        // A completion that raced a shutdown or a timeout still counts.
        let (_, outcome) = end(
            Ok(TurnOutcome::Completed {
                summary: "s".into(),
                usage,
            }),
            Some(StopReason::Shutdown),
        )
        .unwrap();
        assert_eq!(outcome, "completed");
    }

    #[test]
    fn the_last_attempt_fails_instead_of_retrying() {
        let mut t = task(json!("x"));
        t.attempt = 3;
        t.max_attempts = 3;
        let (event, outcome) = ending_event(
            &t,
            &WorkerId("w".into()),
            Err(TurnError::retryable("busy")),
            None,
            Duration::from_secs(1),
            "script",
            time::now(),
            0.5,
        )
        .unwrap();
        assert_eq!(outcome, "failed");
        let TaskEvent::Failed(failed) = event else {
            panic!("{event:?}")
        };
        assert_eq!(failed.error.class, ErrorClass::Retryable);
        assert_eq!(failed.attempt, 3);
    }

    #[test]
    fn a_cancelled_turn_is_recorded_by_why_it_was_stopped() {
        let t = task(json!("x"));
        let worker = WorkerId("w-1".into());
        let end = |stop| {
            ending_event(
                &t,
                &worker,
                Err(TurnError::Cancelled),
                stop,
                Duration::from_secs(90),
                "script",
                time::now(),
                0.5,
            )
        };
        assert!(end(Some(StopReason::Lost)).is_none());

        let (event, outcome) = end(Some(StopReason::TimedOut)).unwrap();
        assert_eq!(outcome, "retrying");
        let TaskEvent::Retrying(retrying) = event else {
            panic!("{event:?}")
        };
        assert_eq!(retrying.error.message, "turn timed out after 1m 30s");

        let (event, outcome) = end(Some(StopReason::Shutdown)).unwrap();
        assert_eq!(outcome, "released");
        assert!(matches!(event, TaskEvent::Released(r) if r.worker_id == "w-1" && r.attempt == 1));

        let (event, _) = end(None).unwrap();
        let TaskEvent::Retrying(retrying) = event else {
            panic!("{event:?}")
        };
        assert!(
            retrying.error.message.contains("not cancelled"),
            "{}",
            retrying.error.message
        );

        // Whatever the backend returned, a lost task gets no write.
        let lost = ending_event(
            &t,
            &worker,
            Ok(TurnOutcome::Completed {
                summary: "s".into(),
                usage: Usage::default(),
            }),
            Some(StopReason::Lost),
            Duration::from_secs(1),
            "script",
            time::now(),
            0.5,
        );
        assert!(lost.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn output_is_batched_per_interval_and_flushed_before_the_end() {
        let events = Events::default();
        // Six chunks 30 ms apart: 100 ms batches hold chunks [a b c d], [e f].
        let t =
            task(json!({"script": {"latency_ms": 180, "chunks": ["a", "b", "c", "d", "e", "f"]}}));
        let outcome = drive(&events, t, &settings()).await;
        assert_eq!(outcome, "completed");
        assert_eq!(
            events.output_batches(),
            [vec!["a", "b", "c", "d"], vec!["e", "f"]]
        );
        assert_eq!(events.kinds().last(), Some(&"task.completed"));
    }

    #[tokio::test]
    async fn the_report_carries_the_last_backend_session_and_the_agent_status() {
        let usage = Usage {
            input_tokens: 7,
            output_tokens: 3,
            cost_usd: 0.5,
        };
        let run = |result: Result<TurnOutcome, TurnError>| {
            let backend = FnBackend(move |turn: Turn| {
                let result = result.clone();
                async move {
                    turn.output.send("session", "s-1").await;
                    turn.output.send("text", "hi").await;
                    turn.output.send("session", "s-2").await;
                    result
                }
                .boxed()
            });
            async move {
                let events = Events::default();
                let t = task(json!("hi"));
                let control = TurnControl::new(t.id, t.attempt);
                drive_turn_reporting(
                    &events,
                    Arc::new(backend),
                    t,
                    sessions(),
                    &control,
                    &settings(),
                    None,
                    |_, _| async {}.boxed(),
                )
                .await
            }
        };
        let done = run(Ok(TurnOutcome::Completed {
            summary: "ok".into(),
            usage,
        }))
        .await;
        assert_eq!(done.outcome, "completed");
        assert_eq!(done.backend_session_id.as_deref(), Some("s-2"));
        assert_eq!(done.result, Some((AgentStatus::Idle, usage)));
        let crashed = run(Err(TurnError::Fatal {
            message: "boom".into(),
            usage,
        }))
        .await;
        assert_eq!(crashed.result, Some((AgentStatus::Crashed, usage)));
        let retrying = run(Err(TurnError::retryable("busy"))).await;
        assert_eq!(
            retrying.result,
            Some((AgentStatus::Crashed, Usage::default()))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn output_is_written_every_64_chunks_without_waiting_for_the_interval() {
        let events = Events::default();
        let chunks: Vec<String> = (0..150).map(|i| i.to_string()).collect();
        let t = task(json!({"script": {"chunks": chunks}}));
        let started = Instant::now();
        assert_eq!(drive(&events, t, &settings()).await, "completed");
        let sizes: Vec<usize> = events.output_batches().iter().map(Vec::len).collect();
        assert_eq!(sizes, [64, 64, 22]);
        assert!(
            started.elapsed() < Duration::from_millis(100),
            "no interval was waited for"
        );
        let texts: Vec<String> = events.output_batches().concat();
        assert_eq!(texts, chunks);
    }

    #[tokio::test(start_paused = true)]
    async fn a_fenced_output_write_stops_the_turn_and_writes_nothing_more() {
        let events = Events {
            fence_from: Some(0),
            ..Default::default()
        };
        let t = task(json!({"script": {"latency_ms": 10_000, "chunks": ["a", "b", "c"]}}));
        let control = TurnControl::new(t.id, t.attempt);
        let started = Instant::now();
        let outcome = drive_turn(
            &events,
            Arc::new(ScriptBackend),
            t,
            sessions(),
            &control,
            &settings(),
        )
        .await;
        assert_eq!(outcome, "fenced");
        assert!(events.all().is_empty());
        assert_eq!(control.reason(), Some(StopReason::Lost));
        assert!(control.token().is_cancelled());
        // Stopped at the first flush (first chunk at 3.33 s, flushed 100 ms later),
        // not after the script's full 10 s.
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_fenced_end_is_reported_not_retried() {
        let events = Events {
            fence_from: Some(1),
            ..Default::default()
        };
        let outcome = drive(&events, task(json!("hello")), &settings()).await;
        assert_eq!(outcome, "fenced");
        assert_eq!(events.kinds(), ["task.output"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_turn_past_its_timeout_is_cancelled_and_retried() {
        let events = Events::default();
        let mut settings = settings();
        settings.turn_timeout = Duration::from_secs(2);
        let t = task(json!({"script": {"latency_ms": 60_000, "chunks": []}}));
        let started = Instant::now();
        assert_eq!(drive(&events, t, &settings).await, "retrying");
        assert_eq!(started.elapsed(), Duration::from_secs(2));
        let TaskEvent::Retrying(retrying) = events.last() else {
            panic!("{:?}", events.all())
        };
        assert_eq!(retrying.error.message, "turn timed out after 2s");
    }

    #[tokio::test(start_paused = true)]
    async fn a_turn_stopped_by_its_owner_writes_nothing() {
        let events = Events::default();
        let t = task(json!({"script": {"latency_ms": 60_000, "chunks": []}}));
        let control = Arc::new(TurnControl::new(t.id, t.attempt));
        let stopper = {
            let control = control.clone();
            tokio::spawn(async move {
                sleep(Duration::from_secs(1)).await;
                control.stop(StopReason::Lost);
            })
        };
        let outcome = drive_turn(
            &events,
            Arc::new(ScriptBackend),
            t,
            sessions(),
            &control,
            &settings(),
        )
        .await;
        stopper.await.unwrap();
        assert_eq!(outcome, "stopped");
        assert!(events.all().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_turn_stopped_by_shutdown_is_handed_back() {
        let events = Events::default();
        let t = task(json!({"script": {"latency_ms": 60_000, "chunks": ["partial", "rest"]}}));
        let control = Arc::new(TurnControl::new(t.id, t.attempt));
        let stopper = {
            let control = control.clone();
            tokio::spawn(async move {
                sleep(Duration::from_secs(40)).await;
                control.stop(StopReason::Shutdown);
            })
        };
        let outcome = drive_turn(
            &events,
            Arc::new(ScriptBackend),
            t,
            sessions(),
            &control,
            &settings(),
        )
        .await;
        stopper.await.unwrap();
        assert_eq!(outcome, "released");
        assert_eq!(events.output_batches(), [vec!["partial"]]);
        assert!(matches!(events.last(), TaskEvent::Released(_)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_backend_that_ignores_cancellation_is_aborted_after_the_grace() {
        let events = Events::default();
        let mut settings = settings();
        settings.turn_timeout = Duration::from_secs(1);
        let stubborn = FnBackend(|_turn: Turn| {
            async {
                sleep(Duration::from_secs(3600)).await;
                Ok(TurnOutcome::Completed {
                    summary: "late".into(),
                    usage: Usage::default(),
                })
            }
            .boxed()
        });
        let t = task(json!("x"));
        let control = TurnControl::new(t.id, t.attempt);
        let started = Instant::now();
        let outcome = drive_turn(
            &events,
            Arc::new(stubborn),
            t,
            sessions(),
            &control,
            &settings,
        )
        .await;
        assert_eq!(outcome, "retrying");
        assert_eq!(
            started.elapsed(),
            Duration::from_secs(1) + settings.cancel_grace
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_panicking_backend_fails_the_attempt_retryably() {
        let events = Events::default();
        let panicking = FnBackend(|_turn: Turn| async { panic!("boom") }.boxed());
        let t = task(json!("x"));
        let control = TurnControl::new(t.id, t.attempt);
        let outcome = drive_turn(
            &events,
            Arc::new(panicking),
            t,
            sessions(),
            &control,
            &settings(),
        )
        .await;
        assert_eq!(outcome, "retrying");
        let TaskEvent::Retrying(retrying) = events.last() else {
            panic!("{:?}", events.all())
        };
        assert_eq!(retrying.error.message, "the fn backend panicked: boom");
    }

    #[tokio::test(start_paused = true)]
    async fn the_end_of_a_turn_waits_out_a_short_postgres_outage() {
        let events = Events {
            unavailable: AtomicUsize::new(3),
            ..Default::default()
        };
        let outcome = drive(
            &events,
            task(json!({"script": {"chunks": []}})),
            &settings(),
        )
        .await;
        assert_eq!(outcome, "completed");
        assert_eq!(events.kinds(), ["task.completed"]);
        assert_eq!(events.calls.load(Ordering::SeqCst), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn output_that_fails_to_write_is_kept_for_the_next_flush() {
        let events = Events {
            unavailable: AtomicUsize::new(1),
            ..Default::default()
        };
        let t = task(json!({"script": {"latency_ms": 1000, "chunks": ["a", "b"]}}));
        assert_eq!(drive(&events, t, &settings()).await, "completed");
        assert_eq!(events.output_batches(), [vec!["a"], vec!["b"]]);
    }

    #[tokio::test]
    async fn a_claim_that_cannot_reach_postgres_marks_it_down_and_asks_for_a_hand_back() {
        // Nothing listens on port 1; the pool connects lazily, so the claim fails.
        let mut options = sea_orm::ConnectOptions::new("postgres://postgres@127.0.0.1:1/none");
        options
            .connect_lazy(true)
            .connect_timeout(Duration::from_millis(200))
            .acquire_timeout(Duration::from_millis(200))
            .sqlx_logging(false);
        let db = sea_orm::Database::connect(options).await.unwrap();
        let health = Arc::new(PostgresHealth::default());
        let runner = Runner::new(
            db,
            WorkerId("w-1".into()),
            &WorkerConfig::default(),
            Backends::builtin(),
            health.clone(),
        );
        let job = Job::one(TaskId::new(), 0);
        assert_eq!(
            runner.run_job(job, Vec::new()).await,
            Handled::PostgresUnavailable
        );
        assert!(!health.is_up());
        assert!(runner.turns().snapshot().is_empty(), "nothing was started");
    }

    #[tokio::test]
    async fn turns_are_registered_while_they_run_and_stoppable_together() {
        let turns = Turns::default();
        let a = turns.register(TaskId::new(), 1);
        let b = turns.register(TaskId::new(), 2);
        assert_eq!(turns.snapshot().len(), 2);
        assert_eq!(turns.stop_all(StopReason::Shutdown), 2);
        assert_eq!(a.control().reason(), Some(StopReason::Shutdown));
        // The first reason wins.
        b.control().stop(StopReason::Lost);
        assert_eq!(b.control().reason(), Some(StopReason::Shutdown));
        drop(a);
        assert_eq!(turns.snapshot().len(), 1);
        drop(b);
        assert!(turns.snapshot().is_empty());
    }

    #[test]
    fn stopping_a_task_stops_each_of_its_attempts_here_and_no_other_task() {
        let turns = Turns::default();
        let task = TaskId::new();
        let (a, b, other) = (
            turns.register(task, 1),
            turns.register(task, 2),
            turns.register(TaskId::new(), 1),
        );
        assert_eq!(turns.stop_task(task, StopReason::Lost), 2);
        assert_eq!(a.control().reason(), Some(StopReason::Lost));
        assert_eq!(b.control().reason(), Some(StopReason::Lost));
        assert_eq!(other.control().reason(), None);
        assert_eq!(turns.stop_task(TaskId::new(), StopReason::Lost), 0);
    }
}

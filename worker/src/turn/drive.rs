//! Driving one turn: run its backend on a task of its own, stream its output in
//! batches, enforce its deadline and cancellation, and record how it ended.

use std::{sync::Arc, time::Duration};

use futures::future::BoxFuture;
use rand::RngExt;
use tokio::{
    sync::OwnedSemaphorePermit,
    task::JoinError,
    time::{Instant, sleep_until},
};
use turnq_core::{agent::AgentStatus, event::Usage, session::SessionStore, task::Task, time};

use crate::{
    backend::{AgentBackend, OutputSink, Turn, TurnError, TurnOutcome},
    turn::{
        control::{StopReason, TurnControl},
        outcome::ending_event,
        output::OutputWriter,
        write::{Recorder, TurnSettings, write_end},
    },
};

/// Chunks a backend may stream ahead of the writer before `send` waits.
const OUTPUT_CHANNEL: usize = 256;
/// How long a cancelled backend may take to return before its task is aborted.
pub(crate) const CANCEL_GRACE: Duration = Duration::from_secs(5);

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
        |_, _| futures::FutureExt::boxed(async {}),
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
        subtasks: settings.subtasks.clone(),
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
    control.mark_ending();
    report.outcome = write_end(recorder, event, outcome, settings).await;
    report
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{
        ScriptBackend,
        tests::{sessions, task},
    };
    use futures::FutureExt;
    use sea_orm::{DbErr, RuntimeErr};
    use serde_json::json;
    use std::sync::{
        Mutex,
        atomic::{AtomicUsize, Ordering},
    };
    use tokio::time::sleep;
    use turnq_core::TaskId;
    use turnq_core::{Error, WorkerId, event::TaskEvent};

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
            subtasks: crate::backend::tests::no_subtasks(),
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
                    |_, _| futures::FutureExt::boxed(async {}),
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
}

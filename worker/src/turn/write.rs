//! How a turn writes: where its events go ([`Recorder`]: Postgres through the process'
//! group commit, or a list in tests), and how its last writes wait out a short Postgres
//! outage. Both the drive of a turn and its output batching write through here.

use std::{sync::Arc, time::Duration};

use futures::{FutureExt, future::BoxFuture};
use tokio::time::{Instant, sleep};
use turnq_core::{
    Error, TaskId, WorkerId, error::chain as error_chain, event::TaskEvent, retry::Backoff,
};

use crate::{backend::SubTasks, record::GroupWriter};

/// How long the last writes of a turn are retried while Postgres is unreachable. The
/// lease is not renewed meanwhile either, so waiting much longer gains nothing.
pub(crate) const WRITE_PATIENCE: Duration = Duration::from_secs(30);

/// Where the events of one attempt go: Postgres in the worker, a list in tests.
pub(crate) trait Recorder: Send + Sync {
    fn record<'a>(&'a self, event: &'a TaskEvent) -> BoxFuture<'a, Result<(), Error>>;
}

/// The timing of a turn, from the worker's configuration.
#[derive(Clone, Debug)]
pub(crate) struct TurnSettings {
    pub(crate) worker: WorkerId,
    pub(crate) output_flush: Duration,
    pub(crate) turn_timeout: Duration,
    pub(crate) cancel_grace: Duration,
    pub(crate) write_patience: Duration,
    /// The sub-task tool every turn is handed.
    pub(crate) subtasks: Arc<dyn SubTasks>,
}

/// Writes one attempt's events through the process' group commit ([`GroupWriter`]).
pub(crate) struct DbRecorder<'a> {
    pub(crate) writer: &'a GroupWriter,
    pub(crate) task: TaskId,
    pub(crate) attempt: i32,
}

impl Recorder for DbRecorder<'_> {
    fn record<'a>(&'a self, event: &'a TaskEvent) -> BoxFuture<'a, Result<(), Error>> {
        self.writer
            .record(self.task, self.attempt, event.clone())
            .boxed()
    }
}

/// Writes the last event of a turn, waiting out a short Postgres outage.
pub(crate) async fn write_end(
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

/// The waits between the retries of a turn's last writes: short, since its lease is
/// not renewed meanwhile either.
const WRITE_RETRY: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(2));

/// Records `event`, retrying with backoff while Postgres is unreachable, for up to
/// `patience`. Any other error, including `Fenced`, is returned at once.
pub(crate) async fn record_patiently(
    recorder: &dyn Recorder,
    event: &TaskEvent,
    patience: Duration,
) -> Result<(), Error> {
    let give_up = Instant::now() + patience;
    let mut backoff = Backoff::between(WRITE_RETRY.0, WRITE_RETRY.1);
    loop {
        match recorder.record(event).await {
            Err(e) if e.is_unavailable() => {
                let pause = backoff.next_delay();
                if Instant::now() + pause >= give_up {
                    return Err(e);
                }
                tracing::warn!(error = %error_chain(&e), event = event.kind(),
                    retry_in_ms = pause.as_millis() as u64, "Postgres is unreachable; retrying the write");
                sleep(pause).await;
            }
            other => return other,
        }
    }
}

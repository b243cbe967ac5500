//! What a consumer does with a job: take slots, hand the job to the runner, and put
//! back whatever it will not start.

use std::{convert::Infallible, sync::Arc};
use tokio_util::sync::CancellationToken;

use apalis::prelude::{Data, TaskSink};
use apalis_redis::{ConnectionManager, RedisStorage};
use futures::future::BoxFuture;
use tokio::sync::OwnedSemaphorePermit;
use turnq_core::delivery::Job;

use super::Shared;

/// What a consumer does with a job: claim its tasks and run their turns, each holding
/// one of the slots it is given (one per task) until its turn ends. It owns the outcome.
pub(crate) type JobHandler =
    Arc<dyn Fn(Job, Vec<OwnedSemaphorePermit>) -> BoxFuture<'static, Handled> + Send + Sync>;

/// What became of a job, as far as its queue is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Handled {
    /// The outcome is recorded in Postgres (or the task is still queued there, and is
    /// delivered again): acknowledge the job.
    Done,
    /// Postgres could not be reached, so nothing was started: put the job back on its
    /// queue (and acknowledge the delivery that brought it).
    PostgresUnavailable,
}

/// What the handler of one consumer needs.
pub(crate) struct QueueContext {
    pub(super) shared: Arc<Shared>,
    pub(super) queue: String,
    pub(super) conn: ConnectionManager,
    pub(super) config: apalis_redis::Config,
    /// Cancelled when the worker stops or this queue's consumer is retired: jobs then
    /// go back to the queue unstarted.
    pub(super) stop: CancellationToken,
}

impl QueueContext {
    /// Puts a job the worker will not start back on its queue, so another worker takes
    /// it now rather than after the dispatcher's re-delivery period.
    async fn hand_back(&self, job: Job) {
        let mut storage =
            RedisStorage::<Job>::new(self.conn.clone()).with_config(self.config.clone());
        match storage.push(job.clone()).await {
            Ok(()) => {
                tracing::debug!(tasks = job.tasks.len(), queue = %self.queue, "handed an unstarted job back")
            }
            Err(e) => tracing::warn!(tasks = ?job.tasks, queue = %self.queue, error = %e,
                "could not hand an unstarted job back to Redis; the dispatcher delivers it again later"),
        }
    }
}

/// The apalis handler. Always Ok: the outcome is in Postgres (or the task is still
/// queued there), and an error would make apalis retry behind turnq's back.
///
/// A job of several tasks takes as many slots as are free (waiting for one if none is)
/// and claims that many of its tasks together, then the next ones as slots free up; the
/// job is acknowledged when all its turns have ended. Its waiting tasks stay in this
/// worker's hand meanwhile (a packed job is at most `--dispatch-job-size` tasks).
/// Tasks not yet started when the worker stops or Postgres goes away go back to the
/// queue as one job.
pub(crate) async fn deliver(job: Job, context: Data<Arc<QueueContext>>) -> Result<(), Infallible> {
    let context: Arc<QueueContext> = (*context).clone();
    let shared = &context.shared;
    if !shared.gate_open() {
        // Fetched before the pause took effect.
        context.hand_back(job).await;
        return Ok(());
    }
    let mut rest = job.tasks;
    let mut handles = Vec::new();
    while !rest.is_empty() {
        let mut gate = shared.gate.clone();
        let shut = async move {
            // The guard `wait_for` returns is dropped at once: it is not `Send`. A gate
            // whose sender is gone stays as it was: open.
            if gate.wait_for(|open| !*open).await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        // As many slots as the job has tasks and the process has free (at least one),
        // taken together: the job's tasks are then claimed in one statement. Asking for
        // more than are free would make every other job wait behind this one (the
        // semaphore is fair); taking one and hoping for more left every job of a backlog
        // claiming its tasks one by one.
        let wanted = rest
            .len()
            .min(shared.slots.available_permits().max(1))
            .min(shared.settings.concurrency.max(1));
        let taken = tokio::select! {
            biased;
            _ = context.stop.cancelled() => None,
            _ = shut => None,
            slots = shared.slots.clone().acquire_many_owned(wanted as u32) => slots.ok(),
        };
        let Some(mut taken) = taken else {
            // Stopping, or Postgres went away, while these waited for a slot: they were
            // never started.
            context
                .hand_back(Job {
                    tasks: std::mem::take(&mut rest),
                })
                .await;
            break;
        };
        // One permit per task, so each turn frees its own slot when it ends.
        let mut slots = Vec::with_capacity(wanted);
        while let Some(one) = taken.split(1) {
            slots.push(one);
        }
        let chunk = Job {
            tasks: rest.drain(..slots.len()).collect(),
        };
        let handler = shared.handler.clone();
        let stop = context.stop.clone();
        let job_context = context.clone();
        // The turns run on a task of their own: if this consumer dies (and drops this
        // future), they still finish and record their results.
        handles.push(shared.jobs.spawn(async move {
            if stop.is_cancelled() || !job_context.shared.gate_open() {
                drop(slots);
                job_context.hand_back(chunk).await;
                return;
            }
            match handler(chunk.clone(), slots).await {
                Handled::Done => {}
                Handled::PostgresUnavailable => job_context.hand_back(chunk).await,
            }
        }));
    }
    for handled in handles {
        if let Err(e) = handled.await {
            tracing::error!(queue = %context.queue, error = %e, "handling a job panicked");
        }
    }
    Ok(())
}

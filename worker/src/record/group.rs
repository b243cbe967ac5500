//! Group commit: the claims of every job this process takes, and the writes of every
//! turn it runs, go to Postgres together.
//!
//! Claims: jobs that arrive while a claim transaction runs are claimed together in the
//! next one ([`GroupClaimer`], [`TaskStore::claim_many`]): one transaction and one commit
//! for many jobs, and no two of this process' claims contend for the same index pages.
//!
//! A turn's write (a batch of output, or the end of its attempt) is sent to one writer
//! task, which takes everything that queued up while its previous transaction ran and
//! commits it in ONE transaction ([`TaskStore::record_many`]): one commit for many
//! turns instead of one per write. A lone write goes out at once; writes only wait for
//! each other when they arrive faster than Postgres commits. Each write keeps its own
//! guard (state, attempt, worker) and its own answer, so fencing is per turn as before.

use std::{sync::Arc, time::Duration};

use sea_orm::{DatabaseConnection, DbErr, RuntimeErr};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use turnq_core::{
    Error, TaskId, WorkerId,
    event::TaskEvent,
    fault::fail_point,
    supervise::Supervisor,
    task::{Record, Task, TaskStore},
};

/// The most tasks claimed in one transaction.
const MAX_CLAIM: usize = 256;

/// A request to one of the group tasks, and where its own answer goes.
struct Asked<R, A> {
    request: R,
    reply: oneshot::Sender<Result<A, Error>>,
}

/// Sends `request` to the group task behind `tx` and waits for its answer.
async fn ask<R, A>(tx: &mpsc::Sender<Asked<R, A>>, request: R) -> Result<A, Error> {
    let (reply, answer) = oneshot::channel();
    if tx.send(Asked { request, reply }).await.is_err() {
        return Err(stopped());
    }
    answer.await.unwrap_or_else(|_| Err(stopped()))
}

/// Answers every request of a batch that failed because Postgres could not be
/// reached: nothing of it was committed.
fn unreachable_all<R, A>(batch: &mut Vec<Asked<R, A>>, e: &Error, what: &str) {
    let message = turnq_core::error::chain(e);
    tracing::debug!(requests = batch.len(), error = %message,
        "Postgres is unreachable; the batch of {what} was not committed");
    for asked in batch.drain(..) {
        let _ = asked.reply.send(Err(unavailable(message.clone())));
    }
}

type ClaimRequest = Asked<Vec<(TaskId, i32)>, Vec<Task>>;

/// The handle jobs claim through; cheap to clone.
#[derive(Clone)]
pub(crate) struct GroupClaimer {
    tx: mpsc::Sender<ClaimRequest>,
}

impl GroupClaimer {
    /// Starts the claimer task under `tasks`; it ends when the last handle is dropped.
    pub(crate) fn start(
        db: DatabaseConnection,
        worker: WorkerId,
        lease: Duration,
        metadata: Value,
        tasks: &Supervisor,
    ) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        tasks.spawn(
            "worker.claimer",
            claim_loop(db, worker, lease, Arc::new(metadata), rx),
        );
        GroupClaimer { tx }
    }

    /// Claims `tasks` (each at the attempt its job saw) together with whatever other jobs
    /// claim meanwhile; the answer lists the tasks claimed, in order. A connection error
    /// means nothing was claimed.
    pub(crate) async fn claim(&self, tasks: Vec<(TaskId, i32)>) -> Result<Vec<Task>, Error> {
        ask(&self.tx, tasks).await
    }
}

async fn claim_loop(
    db: DatabaseConnection,
    worker: WorkerId,
    lease: Duration,
    metadata: Arc<Value>,
    mut rx: mpsc::Receiver<ClaimRequest>,
) {
    let mut batch: Vec<ClaimRequest> = Vec::new();
    while let Some(first) = rx.recv().await {
        fail_point!("worker.claimer");
        let mut size = first.request.len();
        batch.push(first);
        while size < MAX_CLAIM {
            match rx.try_recv() {
                Ok(asked) => {
                    size += asked.request.len();
                    batch.push(asked);
                }
                Err(_) => break,
            }
        }
        let all: Vec<(TaskId, i32)> = batch.iter().flat_map(|a| a.request.clone()).collect();
        match TaskStore::claim_many(&db, &all, &worker, lease, &metadata).await {
            Ok(claimed) => {
                let mut claimed: Vec<Option<Task>> =
                    claimed.into_iter().map(|c| Some(c.task)).collect();
                for asked in batch.drain(..) {
                    let mine = asked
                        .request
                        .iter()
                        .filter_map(|(id, attempt)| {
                            // The claim of attempt n starts attempt n + 1.
                            claimed
                                .iter_mut()
                                .find(|t| {
                                    t.as_ref()
                                        .is_some_and(|t| t.id == *id && t.attempt == attempt + 1)
                                })
                                .and_then(Option::take)
                        })
                        .collect();
                    let _ = asked.reply.send(Ok(mine));
                }
            }
            Err(e) if e.is_unavailable() => unreachable_all(&mut batch, &e, "claims"),
            Err(e) => {
                // Refused as a whole: claim each job on its own, so only the one at
                // fault fails, with its own error.
                tracing::warn!(jobs = batch.len(), error = %turnq_core::error::chain(&e),
                    "a grouped claim was refused; claiming its jobs one by one");
                for asked in batch.drain(..) {
                    let result =
                        TaskStore::claim_many(&db, &asked.request, &worker, lease, &metadata)
                            .await
                            .map(|claimed| claimed.into_iter().map(|c| c.task).collect());
                    let _ = asked.reply.send(result);
                }
            }
        }
    }
}

/// The most writes committed in one transaction.
const MAX_GROUP: usize = 256;
/// Writes waiting for the writer at most; a turn that finds it full waits.
const QUEUE: usize = 4096;

type Pending = Asked<Record, ()>;

/// The handle turns write through; cheap to clone.
#[derive(Clone)]
pub(crate) struct GroupWriter {
    tx: mpsc::Sender<Pending>,
}

impl GroupWriter {
    /// Starts the writer task under `tasks`; it ends when the last handle is dropped.
    pub(crate) fn start(
        db: DatabaseConnection,
        worker: WorkerId,
        metadata: Value,
        tasks: &Supervisor,
    ) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        tasks.spawn("worker.writer", run(db, worker, Arc::new(metadata), rx));
        GroupWriter { tx }
    }

    /// Records `event` of `(task, attempt)`, committed together with whatever other
    /// turns write meanwhile. The answer is this write's own: `Fenced` when the task is
    /// no longer this worker's, a connection error when Postgres is unreachable.
    pub(crate) async fn record(
        &self,
        task: TaskId,
        attempt: i32,
        event: TaskEvent,
    ) -> Result<(), Error> {
        let record = Record {
            task,
            attempt,
            event,
        };
        ask(&self.tx, record).await
    }
}

/// The writer task is gone (the process is stopping, or the task died and the process
/// with it): the write did not happen.
fn stopped() -> Error {
    unavailable("the worker's Postgres writer has stopped".into())
}

/// An error that says Postgres could not be reached, for each write of a batch that
/// failed for that reason (the original error went to the log once).
fn unavailable(message: String) -> Error {
    Error::Database(DbErr::Conn(RuntimeErr::Internal(message)))
}

async fn run(
    db: DatabaseConnection,
    worker: WorkerId,
    metadata: Arc<Value>,
    mut rx: mpsc::Receiver<Pending>,
) {
    let mut batch: Vec<Pending> = Vec::with_capacity(MAX_GROUP);
    while rx.recv_many(&mut batch, MAX_GROUP).await > 0 {
        fail_point!("worker.writer");
        let records: Vec<Record> = batch.iter().map(|p| p.request.clone()).collect();
        match TaskStore::record_many(&db, &worker, &records, &metadata).await {
            Ok(results) => {
                for (pending, result) in batch.drain(..).zip(results) {
                    let _ = pending.reply.send(result.map(drop));
                }
            }
            Err(e) if e.is_unavailable() => unreachable_all(&mut batch, &e, "writes"),
            Err(e) => {
                // Postgres refused the batch as a whole: write each on its own, so only
                // the write at fault fails, with its own error.
                tracing::warn!(writes = batch.len(), error = %turnq_core::error::chain(&e),
                    "a group commit was refused; writing its records one by one");
                for pending in batch.drain(..) {
                    let Record {
                        task,
                        attempt,
                        event,
                    } = &pending.request;
                    let result = TaskStore::record(&db, *task, *attempt, &worker, event, &metadata)
                        .await
                        .map(drop);
                    let _ = pending.reply.send(result);
                }
            }
        }
    }
}

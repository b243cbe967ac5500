//! The long-lived tasks of a process, in one place, watched.
//!
//! A turnq process runs a handful of loops for its whole life: the API server, the
//! dispatcher and its listener, and in a worker the claimer, the writer, the heartbeat,
//! the cancellation listener, the Postgres probe, one Redis consumer per (queue, agent)
//! and its clean-up and wake-up subscription. If one of them panicked or returned while
//! the process went on, the process would be silently half-alive: results never
//! recorded, leases running out, tasks never dispatched, all while `/readyz` answers.
//!
//! So every such loop is spawned through a [`Supervisor`]. A task that panics, fails,
//! or ends before the process started stopping is a [`Death`]: it is logged once with
//! its cause, [`Supervisor::failure`] resolves, and the app stops the whole process with
//! a non-zero exit. Restarting the task in place is deliberately not done: none of these
//! loops can be shown to leave consistent state behind when it dies mid-way (a writer
//! that panicked owes answers to the turns waiting on it), while a fresh process is
//! always consistent — Postgres owns every task, its leases run out and the tasks run
//! again; a supervisor (systemd, Kubernetes) restarts the process.
//!
//! Per-job and per-turn tasks are not supervised here: they end by design, and a panic
//! in one fails only its own turn (see the worker's runner).

use std::{
    any::Any,
    collections::BTreeMap,
    fmt::Display,
    future::Future,
    panic::AssertUnwindSafe,
    sync::{Arc, Mutex, MutexGuard},
};

use futures::FutureExt;
use tokio::task::JoinHandle;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

/// A long-lived task that ended when it should not have.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Death {
    /// The task's name, e.g. `worker.writer`.
    pub task: String,
    /// What ended it: the panic message, the error chain, or that it returned early.
    pub cause: String,
}

impl Display for Death {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the long-lived task {} ended: {}", self.task, self.cause)
    }
}

/// Spawns and watches the long-lived tasks of a process; cheap to clone.
#[derive(Clone)]
pub struct Supervisor {
    inner: Arc<Inner>,
}

struct Inner {
    tracker: TaskTracker,
    /// Cancelled when the process starts stopping: tasks that end after it are expected
    /// to.
    stopping: CancellationToken,
    /// Cancelled at the first death.
    failed: CancellationToken,
    deaths: Mutex<Vec<Death>>,
    /// Running tasks by name, for readiness.
    running: Mutex<BTreeMap<String, usize>>,
}

impl Supervisor {
    /// A supervisor for a process that starts stopping when `stopping` is cancelled.
    pub fn new(stopping: CancellationToken) -> Supervisor {
        Supervisor {
            inner: Arc::new(Inner {
                tracker: TaskTracker::new(),
                stopping,
                failed: CancellationToken::new(),
                deaths: Mutex::default(),
                running: Mutex::default(),
            }),
        }
    }

    /// Cancelled when the process starts stopping.
    pub fn stopping(&self) -> &CancellationToken {
        &self.inner.stopping
    }

    /// Runs `task` until the process stops. It must not end before then: if it does,
    /// or panics, that is a death.
    pub fn spawn<F>(&self, name: impl Into<String>, task: F) -> JoinHandle<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.spawn_fallible(name, task.map(Ok::<(), std::convert::Infallible>))
    }

    /// [`Supervisor::spawn`] for a task that may also end once `done` is cancelled (a
    /// part retired while the process goes on: the consumer of an agent removed from
    /// the registry). Ending before that, failing or panicking is a death as for any.
    pub fn spawn_until<F>(
        &self,
        name: impl Into<String>,
        done: CancellationToken,
        task: F,
    ) -> JoinHandle<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.supervised(
            name.into(),
            Some(done),
            task.map(Ok::<(), std::convert::Infallible>),
        )
    }

    /// [`Supervisor::spawn`] for a task that can fail: an error is a death too, whenever
    /// it comes.
    pub fn spawn_fallible<F, E>(&self, name: impl Into<String>, task: F) -> JoinHandle<()>
    where
        F: Future<Output = Result<(), E>> + Send + 'static,
        E: std::error::Error + 'static,
    {
        self.supervised(name.into(), None, task)
    }

    fn supervised<F, E>(
        &self,
        name: String,
        done: Option<CancellationToken>,
        task: F,
    ) -> JoinHandle<()>
    where
        F: Future<Output = Result<(), E>> + Send + 'static,
        E: std::error::Error + 'static,
    {
        let inner = self.inner.clone();
        *lock(&inner.running).entry(name.clone()).or_default() += 1;
        self.inner.tracker.spawn(async move {
            // Counts the task out however it ends, aborted (dropped) included.
            let _running = Running {
                inner: inner.clone(),
                name: name.clone(),
            };
            // Unwind safety: a task that panicked is never polled again, and what it
            // shared is only read to shut the process down.
            let ended = AssertUnwindSafe(task).catch_unwind().await;
            let cause = match ended {
                Ok(Ok(()))
                    if inner.stopping.is_cancelled()
                        || done.as_ref().is_some_and(CancellationToken::is_cancelled) =>
                {
                    tracing::debug!(task = %name, "long-lived task stopped");
                    return;
                }
                Ok(Ok(())) => "it returned while the process was not stopping".to_owned(),
                Ok(Err(e)) => format!("it failed: {}", crate::error::chain(&e)),
                Err(panic) => format!("it panicked: {}", panic_message(panic.as_ref())),
            };
            let death = Death { task: name, cause };
            tracing::error!(task = %death.task, cause = %death.cause,
                "a long-lived task ended; stopping the process (its supervisor restarts it, and Postgres recovers the leases of its turns)");
            lock(&inner.deaths).push(death);
            inner.failed.cancel();
        })
    }

    /// Resolves at the first death, with it.
    pub async fn failure(&self) -> Death {
        self.inner.failed.cancelled().await;
        lock(&self.inner.deaths)
            .first()
            .cloned()
            .expect("`failed` is only cancelled after a death is recorded")
    }

    /// Every death so far.
    pub fn deaths(&self) -> Vec<Death> {
        lock(&self.inner.deaths).clone()
    }

    /// The tasks running now, by name, with how many of each.
    pub fn running(&self) -> BTreeMap<String, usize> {
        lock(&self.inner.running)
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(name, n)| (name.clone(), *n))
            .collect()
    }

    /// Waits until every task spawned so far (and any they spawn meanwhile) has ended.
    pub async fn wait(&self) {
        self.inner.tracker.close();
        self.inner.tracker.wait().await;
    }
}

/// Counts a running task out when dropped.
struct Running {
    inner: Arc<Inner>,
    name: String,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(n) = lock(&self.inner.running).get_mut(&self.name) {
            *n = n.saturating_sub(1);
        }
    }
}

/// The state behind these locks is counters and a list, consistent after any panic, so
/// a poisoned lock is taken as it is.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

fn panic_message(panic: &(dyn Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_task_is_a_death_named_with_its_message() {
        let supervisor = Supervisor::new(CancellationToken::new());
        supervisor.spawn("worker.writer", async { panic!("boom") });
        let death = supervisor.failure().await;
        assert_eq!(death.task, "worker.writer");
        assert_eq!(death.cause, "it panicked: boom");
        supervisor.wait().await;
        assert!(supervisor.running().is_empty());
    }

    #[tokio::test]
    async fn a_task_that_returns_before_stopping_is_a_death_and_after_it_is_not() {
        let stopping = CancellationToken::new();
        let supervisor = Supervisor::new(stopping.clone());
        let early = supervisor.spawn("early", async {});
        early.await.unwrap();
        assert_eq!(supervisor.deaths().len(), 1);

        let late = supervisor.spawn("late", {
            let stopping = stopping.clone();
            async move { stopping.cancelled().await }
        });
        assert_eq!(supervisor.running().get("late"), Some(&1));
        stopping.cancel();
        late.await.unwrap();
        assert_eq!(supervisor.deaths().len(), 1, "{:?}", supervisor.deaths());
    }

    #[tokio::test]
    async fn an_error_is_a_death_with_its_chain() {
        let supervisor = Supervisor::new(CancellationToken::new());
        supervisor.spawn_fallible("api", async {
            Err(std::io::Error::other("the listener closed"))
        });
        let death = supervisor.failure().await;
        assert_eq!(death.cause, "it failed: the listener closed");
    }
}

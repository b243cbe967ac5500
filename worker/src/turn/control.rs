//! The turns running in this process: who may stop each, and why it was stopped.
//!
//! Three parties stop turns from outside their backend: the heartbeat and the
//! cancellation listener (the task is no longer ours), the turn's own deadline, and
//! shutdown (its grace is over). The first reason given wins, and it is recorded before
//! the turn's token fires, so the turn's end is mapped by why it was stopped.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicBool, Ordering},
    },
};

use tokio_util::sync::CancellationToken;
use turnq_core::TaskId;

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
    /// The turn is writing its last event: once that commits the task is no longer
    /// running, and a renewal that misses it says nothing about who owns it.
    ending: AtomicBool,
}

impl TurnControl {
    pub(crate) fn new(task: TaskId, attempt: i32) -> Self {
        TurnControl {
            task,
            attempt,
            token: CancellationToken::new(),
            reason: OnceLock::new(),
            ending: AtomicBool::new(false),
        }
    }

    /// Marks the turn as writing its last event (set before that write is sent).
    pub(crate) fn mark_ending(&self) {
        self.ending.store(true, Ordering::SeqCst);
    }

    /// Whether the turn's last event may already be committed. The heartbeat leaves
    /// such a turn alone: a renewal that misses it is the turn's own end, not a loss,
    /// and if the end is refused after all, the write says so itself.
    pub(crate) fn is_ending(&self) -> bool {
        self.ending.load(Ordering::SeqCst)
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

#[cfg(test)]
mod tests {
    use super::*;

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

//! The worker's heartbeat: keep the registry row fresh and the leases of running tasks
//! alive, and stop turns whose task is no longer ours.
//!
//! A claim leases a task for `--lease`; without renewal a turn longer than that would
//! be taken over by lease recovery while it still runs. One statement per heartbeat
//! ([`TaskStore::extend_leases`]) renews every running turn of this worker, and it only
//! renews rows that are still `running` under this worker at the attempt we hold, so it
//! can never revive a task that was cancelled or re-queued. A registered turn whose row
//! was not renewed has been taken from us: its turn is stopped (and writes nothing).
//! Cancellations normally arrive sooner, pushed by Postgres (`cancel`); this renewal is
//! what catches the ones sent while that listener was disconnected, which is why the
//! listener asks for a beat at once (`renew_now`) after every (re)connection.
//!
//! A beat that fails is retried with a backoff (100 ms doubling up to `--heartbeat`)
//! rather than a whole interval later: when Postgres comes back, leases that may be
//! close to running out are renewed at once. A failure because Postgres is unreachable
//! marks it down in [`PostgresHealth`] (which logs the outage once); a beat that gets
//! through marks it up.

use std::{sync::Arc, time::Duration};

use sea_orm::DatabaseConnection;
use tokio::{
    sync::Notify,
    time::{Instant, sleep_until},
};
use tokio_util::sync::CancellationToken;
use turnq_core::{TaskId, WorkerId, task::TaskStore, worker::WorkerRegistry};

use crate::{
    health::PostgresHealth,
    runner::{StopReason, Turns, error_chain},
};

/// The first wait before retrying a failed beat; it doubles up to the heartbeat
/// interval.
const RETRY_FIRST: Duration = Duration::from_millis(100);

/// What the heartbeat needs.
pub(crate) struct Heartbeat {
    pub(crate) db: DatabaseConnection,
    pub(crate) worker: WorkerId,
    pub(crate) turns: Turns,
    /// `--heartbeat`.
    pub(crate) every: Duration,
    /// `--lease`.
    pub(crate) lease: Duration,
    pub(crate) health: Arc<PostgresHealth>,
    /// Beat at once (the cancellation listener has just (re)connected).
    pub(crate) renew_now: Arc<Notify>,
}

impl Heartbeat {
    /// Beats at once, then every `every` until `stop`, and whenever `renew_now` is
    /// signalled.
    pub(crate) async fn run(self, stop: CancellationToken) {
        let mut next = Instant::now();
        let mut retry = RETRY_FIRST;
        // Errors other than an outage (which `health` logs): once when they start and
        // once when they end, not on every beat.
        let mut failing = false;
        loop {
            tokio::select! {
                _ = sleep_until(next) => {}
                _ = self.renew_now.notified() => {}
                _ = stop.cancelled() => return,
            }
            match self.beat().await {
                Ok(()) => {
                    self.health.up();
                    if failing {
                        tracing::info!(worker_id = %self.worker, "heartbeats get through again");
                        failing = false;
                    }
                    retry = RETRY_FIRST;
                    next = Instant::now() + self.every;
                }
                Err(e) => {
                    if e.is_unavailable() {
                        self.health.down(&e);
                    } else if !failing {
                        tracing::warn!(worker_id = %self.worker, error = %error_chain(&e),
                            running = self.turns.snapshot().len(),
                            "heartbeat failed: leases are not being renewed until it gets through");
                        failing = true;
                    } else {
                        tracing::debug!(worker_id = %self.worker, error = %error_chain(&e), "heartbeat failed again");
                    }
                    next = Instant::now() + retry.min(self.every);
                    retry = (retry * 2).min(self.every);
                }
            }
        }
    }

    /// One beat: the registry heartbeat, the lease renewal, and stopping the turns
    /// that lost their task.
    pub(crate) async fn beat(&self) -> Result<(), turnq_core::Error> {
        let registry = WorkerRegistry::heartbeat(&self.db, &self.worker).await;

        // Snapshot before the update: a turn registers only after its claim committed,
        // so every turn in the snapshot is visible to the update, and a turn missing
        // from its result really is no longer ours.
        let running = self.turns.snapshot();
        let held: Vec<(TaskId, i32)> = running.iter().map(|c| (c.task, c.attempt)).collect();
        let renewed = TaskStore::extend_leases(&self.db, &self.worker, &held, self.lease).await;

        if let Ok(renewed) = &renewed {
            for control in &running {
                if !renewed.contains(&(control.task, control.attempt)) {
                    tracing::info!(task_id = %control.task, attempt = control.attempt, worker_id = %self.worker,
                        "the task is no longer this worker's (cancelled, or its lease was taken over): stopping its turn");
                    control.stop(StopReason::Lost);
                }
            }
        }
        registry.and(renewed.map(drop))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdb::TestDb;
    use sea_orm::{ConnectOptions, Database};
    use serde_json::json;
    use tokio::time::timeout;
    use turnq_core::{
        task::NewTaskRequest,
        time,
        worker::{WorkerInfo, WorkerRegistry},
    };

    async fn running_task(db: &DatabaseConnection, worker: &WorkerId, lease: Duration) -> TaskId {
        let new = NewTaskRequest {
            input: json!("hello"),
            ..Default::default()
        }
        .validate(time::now())
        .expect("a valid task");
        let meta = json!({"actor": "test"});
        let task = TaskStore::submit(db, new, &meta).await.unwrap().task;
        TaskStore::claim(db, task.id, task.attempt, worker, lease, &meta)
            .await
            .unwrap()
            .expect("the task is claimed");
        task.id
    }

    fn heartbeat(
        db: DatabaseConnection,
        worker: WorkerId,
        turns: Turns,
        every: Duration,
    ) -> Heartbeat {
        Heartbeat {
            db,
            worker,
            turns,
            every,
            lease: Duration::from_secs(60),
            health: Arc::new(PostgresHealth::default()),
            renew_now: Arc::new(Notify::new()),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_beat_renews_running_turns_and_stops_the_ones_no_longer_ours() {
        let test = TestDb::create().await;
        let db = test.db.clone();
        let worker = WorkerId::generate("test-host");
        WorkerRegistry::register(
            &db,
            &WorkerInfo {
                id: worker.clone(),
                host: "test-host".into(),
                pid: 1,
                queues: vec!["default".into()],
                concurrency: 1,
                version: "test".into(),
                agents: Vec::new(),
            },
        )
        .await
        .unwrap();
        let turns = Turns::default();
        let kept = running_task(&db, &worker, Duration::from_secs(1)).await;
        let cancelled = running_task(&db, &worker, Duration::from_secs(1)).await;
        let kept_turn = turns.register(kept, 1);
        let cancelled_turn = turns.register(cancelled, 1);
        // A stale registration (an attempt this worker no longer holds) is not renewed.
        let stale_turn = turns.register(kept, 7);
        TaskStore::cancel(&db, cancelled, None, &json!({"actor": "test"}))
            .await
            .unwrap();

        // An hour between beats: only `renew_now` makes the second one happen.
        let beat = heartbeat(
            db.clone(),
            worker.clone(),
            turns.clone(),
            Duration::from_secs(3600),
        );
        let renew_now = beat.renew_now.clone();
        beat.beat().await.unwrap();
        assert!(!kept_turn.control().token().is_cancelled());
        assert_eq!(cancelled_turn.control().reason(), Some(StopReason::Lost));
        assert_eq!(stale_turn.control().reason(), Some(StopReason::Lost));
        let lease_until = TaskStore::get(&db, kept)
            .await
            .unwrap()
            .lease_until
            .unwrap();
        assert!(
            lease_until > time::now() + chrono::TimeDelta::seconds(50),
            "the lease was extended to about a minute: {lease_until}"
        );

        let stop = CancellationToken::new();
        let beating = tokio::spawn(beat.run(stop.clone()));
        let later = running_task(&db, &worker, Duration::from_secs(60)).await;
        let later_turn = turns.register(later, 1);
        // Let the first beat of `run` pass, then cancel and ask for a renewal.
        tokio::time::sleep(Duration::from_millis(200)).await;
        TaskStore::cancel(&db, later, None, &json!({"actor": "test"}))
            .await
            .unwrap();
        renew_now.notify_one();
        timeout(
            Duration::from_secs(5),
            later_turn.control().token().cancelled(),
        )
        .await
        .expect("renew_now beats at once");
        assert!(!kept_turn.control().token().is_cancelled());
        stop.cancel();
        beating.await.unwrap();
        drop(test);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unreachable_postgres_is_marked_down_and_beats_keep_trying() {
        // Nothing listens on port 1; the pool connects lazily, so this fails per query.
        let mut options = ConnectOptions::new("postgres://postgres@127.0.0.1:1/none");
        options
            .connect_lazy(true)
            .connect_timeout(Duration::from_millis(200))
            .acquire_timeout(Duration::from_millis(200))
            .sqlx_logging(false);
        let db = Database::connect(options).await.unwrap();
        let turns = Turns::default();
        let _turn = turns.register(TaskId::new(), 1);
        let beat = heartbeat(db, WorkerId("w".into()), turns, Duration::from_secs(1));
        let health = beat.health.clone();
        let mut state = health.subscribe();
        let stop = CancellationToken::new();
        let beating = tokio::spawn(beat.run(stop.clone()));
        timeout(Duration::from_secs(10), state.wait_for(|up| !*up))
            .await
            .expect("the failed beat marks Postgres down")
            .unwrap();
        // It keeps beating (and failing) without ending or panicking.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(!beating.is_finished());
        assert!(!health.is_up());
        stop.cancel();
        beating.await.unwrap();
    }
}

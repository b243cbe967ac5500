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
use turnq_core::{
    TaskId, WorkerId, error::chain as error_chain, fault::fail_point, retry::Backoff,
    task::TaskStore, worker::WorkerRegistry,
};

use crate::{
    record::PostgresHealth,
    turn::control::{StopReason, Turns},
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
        let mut retry = Backoff::between(RETRY_FIRST, self.every);
        // Errors other than an outage (which `health` logs): once when they start and
        // once when they end, not on every beat.
        let mut failing = false;
        loop {
            tokio::select! {
                _ = sleep_until(next) => {}
                _ = self.renew_now.notified() => {}
                _ = stop.cancelled() => return,
            }
            fail_point!("worker.heartbeat");
            match self.beat().await {
                Ok(()) => {
                    self.health.up();
                    if failing {
                        tracing::info!(worker_id = %self.worker, "heartbeats get through again");
                        failing = false;
                    }
                    retry.reset();
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
                    next = Instant::now() + retry.next_delay();
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
                // A turn writing its end is not renewed once that end commits: that is
                // no loss, and not worth a word.
                if !renewed.contains(&(control.task, control.attempt)) && !control.is_ending() {
                    tracing::info!(task_id = %control.task, attempt = control.attempt, worker_id = %self.worker,
                        "the task is no longer this worker's (cancelled, or its lease was taken over): stopping its turn");
                    control.stop(StopReason::Lost);
                    metrics::counter!(turnq_core::metrics::WORKER_LEASES_LOST).increment(1);
                }
            }
        }
        registry.and(renewed.map(drop))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sea_orm::{ConnectOptions, Database};
    use serde_json::json;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use turnq_core::{
        event::{Completed, TaskEvent},
        task::NewTaskRequest,
        time,
        worker::{WorkerInfo, WorkerRegistry},
    };
    use turnq_testkit::{TestDb, eventually, within};

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
        let test = TestDb::new().await.unwrap();
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
        let later = running_task(&db, &worker, Duration::from_secs(60)).await;
        let later_turn = turns.register(later, 1);
        let before = last_heartbeat(&db, &worker).await;
        let beating = tokio::spawn(beat.run(stop.clone()));
        // The first beat of `run` renews `later` (still ours), and is the last one for an
        // hour: after it, only `renew_now` can find that `later` was cancelled.
        eventually("the first beat of run is recorded", || {
            let (db, worker, before) = (db.clone(), worker.clone(), before.clone());
            async move {
                let now = last_heartbeat(&db, &worker).await;
                if now > before {
                    Ok(())
                } else {
                    Err(format!("still {now}"))
                }
            }
        })
        .await
        .unwrap();
        assert!(!later_turn.control().token().is_cancelled());
        TaskStore::cancel(&db, later, None, &json!({"actor": "test"}))
            .await
            .unwrap();
        renew_now.notify_one();
        within(
            "renew_now beats at once",
            later_turn.control().token().cancelled(),
        )
        .await
        .unwrap();
        assert!(!kept_turn.control().token().is_cancelled());
        stop.cancel();
        beating.await.unwrap();
        drop(test);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_turn_whose_end_just_committed_is_not_taken_for_a_lost_one() {
        let test = TestDb::new().await.unwrap();
        let db = test.db.clone();
        let worker = WorkerId::generate("test-host");
        let turns = Turns::default();
        let (ended, lost) = (
            running_task(&db, &worker, Duration::from_secs(60)).await,
            running_task(&db, &worker, Duration::from_secs(60)).await,
        );
        let (ended_turn, lost_turn) = (turns.register(ended, 1), turns.register(lost, 1));
        // The turn sends its end and it commits before the turn leaves the registry.
        ended_turn.control().mark_ending();
        let done = TaskEvent::Completed(Completed {
            attempt: 1,
            output_summary: "done".into(),
            usage: Default::default(),
        });
        TaskStore::record(&db, ended, 1, &worker, &done, &json!({"actor": "test"}))
            .await
            .unwrap();
        TaskStore::cancel(&db, lost, None, &json!({"actor": "test"}))
            .await
            .unwrap();
        let beat = heartbeat(db.clone(), worker, turns, Duration::from_secs(3600));
        beat.beat().await.unwrap();
        assert_eq!(
            ended_turn.control().reason(),
            None,
            "its own end is no loss"
        );
        assert!(!ended_turn.control().token().is_cancelled());
        assert_eq!(lost_turn.control().reason(), Some(StopReason::Lost));
        drop(test);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unreachable_postgres_is_marked_down_and_beats_keep_trying() {
        // A "Postgres" that hangs up on every connection, counting them: each beat is a
        // connection attempt, so the count shows the heartbeat goes on.
        let server = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = server.local_addr().unwrap().port();
        let attempts = Arc::new(AtomicUsize::new(0));
        let counting = tokio::spawn({
            let attempts = attempts.clone();
            async move {
                while let Ok((socket, _)) = server.accept().await {
                    attempts.fetch_add(1, Ordering::SeqCst);
                    drop(socket);
                }
            }
        });
        let mut options = ConnectOptions::new(format!("postgres://postgres@127.0.0.1:{port}/none"));
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
        within(
            "the failed beat marks Postgres down",
            state.wait_for(|up| !*up),
        )
        .await
        .unwrap()
        .unwrap();
        // It keeps beating (and failing) without ending or panicking.
        let seen = attempts.load(Ordering::SeqCst);
        eventually("three more beats are tried", || {
            let n = attempts.load(Ordering::SeqCst);
            async move {
                if n >= seen + 3 {
                    Ok(())
                } else {
                    Err(format!("{n} attempts"))
                }
            }
        })
        .await
        .unwrap();
        assert!(!beating.is_finished());
        assert!(!health.is_up());
        stop.cancel();
        beating.await.unwrap();
        counting.abort();
    }

    async fn last_heartbeat(db: &DatabaseConnection, worker: &WorkerId) -> String {
        WorkerRegistry::list(db)
            .await
            .unwrap()
            .into_iter()
            .find(|w| w.id == worker.0)
            .map(|w| w.last_heartbeat_at.to_rfc3339())
            .unwrap_or_default()
    }
}

//! Cancellation pushed from Postgres: a running task cancelled on any host stops here
//! within a second instead of at the next heartbeat.
//!
//! Whoever cancels a running task records `task.cancelled` and, in the same
//! transaction, `pg_notify('task_cancelled', '<task id>')`
//! ([`turnq_core::task::CHANNEL_TASK_CANCELLED`]). This module LISTENs on that channel
//! on a connection of the worker's pool and stops the turn of any task named there
//! that this process runs ([`StopReason::Lost`]: it writes nothing, the cancellation is
//! already recorded). A cancelled task is final, so the id alone identifies every
//! attempt of it that could be running.
//!
//! A notification sent while the listener is disconnected is lost, so right after
//! every (re)connection the heartbeat is asked to renew the leases at once
//! (`renew_now`): renewal reports the turns whose task is no longer ours, and stops
//! them. The listener reconnects with a backoff after any error. Should its connection
//! die silently (no reset from the network), cancellations still arrive through the
//! heartbeat's renewal, one `--heartbeat` later.

use std::{str::FromStr, sync::Arc, time::Duration};

use sea_orm::sqlx::{PgPool, postgres::PgListener};
use tokio::{
    sync::Notify,
    time::{Instant, sleep},
};
use tokio_util::sync::CancellationToken;
use turnq_core::{TaskId, task::CHANNEL_TASK_CANCELLED};

use crate::runner::{StopReason, Turns};

/// Backoff between reconnections: doubling from the first to the second.
const RECONNECT_BACKOFF: (Duration, Duration) =
    (Duration::from_millis(100), Duration::from_secs(5));
/// A connection that lasted this long was healthy: the next failure starts the
/// backoff over.
const HEALTHY_CONNECTION: Duration = Duration::from_secs(30);

/// Stops the turns whose task is named in `payload`; returns how many it stopped.
pub(crate) fn on_cancelled(turns: &Turns, payload: &str) -> usize {
    let Ok(task) = TaskId::from_str(payload.trim()) else {
        tracing::debug!(
            payload,
            "ignoring a cancellation notification that names no task id"
        );
        return 0;
    };
    let stopped = turns.stop_task(task, StopReason::Lost);
    if stopped > 0 {
        tracing::info!(task_id = %task, "the task was cancelled: stopping its turn");
    }
    stopped
}

/// Listens for cancellations on a connection of `pool` until `stop`, stopping the
/// matching turns in `turns`, and signals `renew_now` after every (re)connection.
pub(crate) async fn listen(
    pool: PgPool,
    turns: Turns,
    renew_now: Arc<Notify>,
    stop: CancellationToken,
) {
    let (first, most) = RECONNECT_BACKOFF;
    let mut backoff = first;
    // Failures since the last good connection: the first is logged at info, the rest
    // at debug (a Postgres outage is logged where it is noticed, see `health`).
    let mut failures: u32 = 0;
    loop {
        let connected = tokio::select! {
            _ = stop.cancelled() => return,
            connected = subscribe(&pool) => connected,
        };
        let lost = match connected {
            Ok(mut listener) => {
                if failures > 0 {
                    tracing::info!("listening for cancellations again");
                    failures = 0;
                }
                // Anything cancelled while we were not listening is caught by this.
                renew_now.notify_one();
                let since = Instant::now();
                let lost = tokio::select! {
                    _ = stop.cancelled() => return,
                    lost = receive(&mut listener, &turns) => lost,
                };
                if since.elapsed() >= HEALTHY_CONNECTION {
                    backoff = first;
                }
                lost
            }
            Err(e) => e,
        };
        failures += 1;
        if failures == 1 {
            tracing::info!(error = %lost, retry_in_ms = backoff.as_millis() as u64,
                "lost the cancellation listener; reconnecting (meanwhile cancellations arrive with the heartbeat)");
        } else {
            tracing::debug!(error = %lost, failures, retry_in_ms = backoff.as_millis() as u64,
                "the cancellation listener could not reconnect yet");
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(most);
    }
}

/// A listener on its own connection of `pool`, subscribed to the channel.
async fn subscribe(pool: &PgPool) -> Result<PgListener, sea_orm::sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    // Reconnections go through `listen`, with a backoff and a renewal: a transparent
    // reconnect would hide the window in which notifications were lost.
    listener.eager_reconnect(false);
    listener.listen(CHANNEL_TASK_CANCELLED).await?;
    Ok(listener)
}

/// Handles notifications until the connection is lost; returns why.
async fn receive(listener: &mut PgListener, turns: &Turns) -> sea_orm::sqlx::Error {
    loop {
        match listener.try_recv().await {
            Ok(Some(notification)) => {
                on_cancelled(turns, notification.payload());
            }
            // The connection was lost (and is not re-established: `eager_reconnect`
            // is off).
            Ok(None) => {
                return sea_orm::sqlx::Error::Io(std::io::Error::new(
                    std::io::ErrorKind::ConnectionAborted,
                    "the listening connection was closed",
                ));
            }
            Err(e) => return e,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdb::TestDb;
    use serde_json::json;
    use tokio::time::timeout;
    use turnq_core::{
        WorkerId,
        task::{NewTaskRequest, TaskStore},
        time,
    };

    #[test]
    fn a_notification_stops_every_turn_of_its_task_and_nothing_else() {
        let turns = Turns::default();
        let task = TaskId::new();
        let a = turns.register(task, 1);
        let other = turns.register(TaskId::new(), 1);
        assert_eq!(on_cancelled(&turns, &task.to_string()), 1);
        assert_eq!(a.control().reason(), Some(StopReason::Lost));
        assert!(a.control().token().is_cancelled());
        assert!(!other.control().token().is_cancelled());
        // Not ours, or not a task id: nothing happens.
        assert_eq!(on_cancelled(&turns, &TaskId::new().to_string()), 0);
        assert_eq!(on_cancelled(&turns, "not-a-uuid"), 0);
        assert!(!other.control().token().is_cancelled());
    }

    /// A task submitted and claimed by `worker`, as the runner would have it.
    async fn running_task(db: &sea_orm::DatabaseConnection, worker: &WorkerId) -> TaskId {
        let request = NewTaskRequest {
            input: json!("hello"),
            ..Default::default()
        };
        let new = request.validate(time::now()).expect("a valid task");
        let meta = json!({"actor": "test"});
        let task = TaskStore::submit(db, new, &meta).await.unwrap().task;
        TaskStore::claim(
            db,
            task.id,
            task.attempt,
            worker,
            Duration::from_secs(30),
            &meta,
        )
        .await
        .unwrap()
        .expect("the task is claimed");
        task.id
    }

    /// Waits until the listener says it is (re)connected.
    async fn connected(renew_now: &Notify) {
        timeout(Duration::from_secs(20), renew_now.notified())
            .await
            .expect("the listener connects and asks for a renewal");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cancelled_running_task_stops_within_a_second_even_after_a_reconnect() {
        let test = TestDb::create().await;
        let db = test.db.clone();
        let worker = WorkerId(format!("w-{}", uuid::Uuid::new_v4().simple()));
        let turns = Turns::default();
        let renew_now = Arc::new(Notify::new());
        let stop = CancellationToken::new();
        let listening = tokio::spawn(listen(
            db.get_postgres_connection_pool().clone(),
            turns.clone(),
            renew_now.clone(),
            stop.clone(),
        ));
        connected(&renew_now).await;

        let meta = json!({"actor": "test"});
        let first = running_task(&db, &worker).await;
        let turn = turns.register(first, 1);
        let cancelled_at = Instant::now();
        TaskStore::cancel(&db, first, None, &meta).await.unwrap();
        timeout(Duration::from_secs(1), turn.control().token().cancelled())
            .await
            .expect("the turn is stopped within a second");
        tracing::debug!(elapsed = ?cancelled_at.elapsed());
        assert_eq!(turn.control().reason(), Some(StopReason::Lost));
        drop(turn);

        // Kill the listening connection from outside: the listener reconnects, asks
        // for a renewal, and cancellations reach it again.
        let killed = test
            .admin_rows(&format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE datname = '{}' AND query ILIKE 'LISTEN%'",
                test.name
            ))
            .await;
        assert_eq!(killed, 1, "the listening connection was found");
        connected(&renew_now).await;

        let second = running_task(&db, &worker).await;
        let turn = turns.register(second, 1);
        TaskStore::cancel(&db, second, None, &meta).await.unwrap();
        timeout(Duration::from_secs(1), turn.control().token().cancelled())
            .await
            .expect("after a reconnect, the turn is stopped within a second");
        drop(turn);

        stop.cancel();
        timeout(Duration::from_secs(10), listening)
            .await
            .expect("the listener stops on shutdown")
            .unwrap();
        drop(test);
    }
}

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
//! them. The listener ([`turnq_core::listen`]) reconnects with a backoff after any
//! error. Should its connection die silently (no reset from the network), cancellations
//! still arrive through the heartbeat's renewal, one `--heartbeat` later.

use std::{str::FromStr, sync::Arc};

use sea_orm::sqlx::PgPool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use turnq_core::{
    TaskId,
    fault::fail_point,
    listen::{Listener, Notice},
    task::CHANNEL_TASK_CANCELLED,
};

use crate::turn::control::{StopReason, Turns};

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
        metrics::counter!(turnq_core::metrics::WORKER_LEASES_LOST).increment(stopped as u64);
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
    let listener = Listener {
        what: "the cancellation listener",
        meanwhile: "cancellations arrive with the heartbeat meanwhile",
    };
    listener
        .run(
            &pool,
            &[CHANNEL_TASK_CANCELLED],
            &stop,
            |notice| match notice {
                Notice::Connected => {
                    fail_point!("worker.cancel-listener");
                    // Anything cancelled while we were not listening is caught by this.
                    renew_now.notify_one();
                }
                Notice::Notification { payload, .. } => {
                    on_cancelled(&turns, payload);
                }
            },
        )
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::time::Duration;
    use turnq_core::{
        WorkerId,
        task::{NewTaskRequest, TaskStore},
        time,
    };
    use turnq_testkit::{TestDb, within};

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
        within(
            "the listener connects and asks for a renewal",
            renew_now.notified(),
        )
        .await
        .unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cancelled_running_task_is_stopped_by_the_notification_even_after_a_reconnect() {
        // No heartbeat runs here: only the notification can stop the turn.
        let test = TestDb::new().await.unwrap();
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
        TaskStore::cancel(&db, first, None, &meta).await.unwrap();
        within(
            "the notification stops the turn",
            turn.control().token().cancelled(),
        )
        .await
        .unwrap();
        assert_eq!(turn.control().reason(), Some(StopReason::Lost));
        drop(turn);

        // Kill the listening connection from outside: the listener reconnects, asks
        // for a renewal, and cancellations reach it again.
        let killed = test
            .admin(&format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE datname = '{}' AND query ILIKE 'LISTEN%'",
                test.name
            ))
            .await
            .unwrap();
        assert_eq!(killed, 1, "the listening connection was found");
        connected(&renew_now).await;

        let second = running_task(&db, &worker).await;
        let turn = turns.register(second, 1);
        TaskStore::cancel(&db, second, None, &meta).await.unwrap();
        within(
            "after a reconnect, the notification stops the turn",
            turn.control().token().cancelled(),
        )
        .await
        .unwrap();
        drop(turn);

        stop.cancel();
        within("the listener stops on shutdown", listening)
            .await
            .unwrap()
            .unwrap();
        drop(test);
    }
}

//! The worker's heartbeat: keep the registry row fresh and the leases of running tasks
//! alive, and stop turns whose task is no longer ours.
//!
//! A claim leases a task for `--lease`; without renewal a turn longer than that would
//! be taken over by lease recovery while it still runs. One statement per heartbeat
//! renews every running turn of this worker, and it only renews rows that are still
//! `running` under this worker at the attempt we hold, so it can never revive a task
//! that was cancelled or re-queued. A registered turn whose row was not renewed has
//! been taken from us: its turn is stopped (and writes nothing), which is also how a
//! cancellation reaches a running turn within one heartbeat until a push channel
//! (LISTEN/NOTIFY) is added.
//!
//! Renewing is not an event: one event per task per heartbeat would dwarf the log, and
//! `replay --verify` leaves `lease_until` out of its comparison for this reason.
//!
//! why this writes the `tasks` entity itself: turnq-core has no lease-renewal method
//! yet. This is the one place the worker touches a table directly; it belongs in core
//! as `TaskStore::extend_leases(db, worker, &[(TaskId, attempt)], lease)`.

use std::{collections::HashSet, time::Duration};

use sea_orm::{
    ColumnTrait, Condition, DatabaseConnection, EntityTrait, QueryFilter, sea_query::Expr,
};
use tokio_util::sync::CancellationToken;
use turnq_core::{
    TaskId, WorkerId,
    entity::tasks::{self, Column},
    task::TaskState,
    time,
    worker::WorkerRegistry,
};

use crate::runner::{StopReason, Turns, error_chain};

/// Extends to now + `lease` the leases of `held` (task, attempt) pairs that are still
/// running under `worker`; returns the pairs that were extended.
async fn renew(
    db: &DatabaseConnection,
    worker: &WorkerId,
    held: &[(TaskId, i32)],
    lease: Duration,
) -> Result<HashSet<(TaskId, i32)>, turnq_core::Error> {
    if held.is_empty() {
        return Ok(HashSet::new());
    }
    let until = time::truncate(
        time::now() + chrono::TimeDelta::from_std(lease).unwrap_or(chrono::TimeDelta::MAX),
    );
    let pairs = held.iter().fold(Condition::any(), |any, (task, attempt)| {
        any.add(
            Condition::all()
                .add(Column::Id.eq(task.0))
                .add(Column::Attempt.eq(*attempt)),
        )
    });
    let rows = tasks::Entity::update_many()
        .col_expr(Column::LeaseUntil, Expr::value(Some(until)))
        .filter(Column::State.eq(TaskState::Running.as_str()))
        .filter(Column::WorkerId.eq(worker.0.as_str()))
        .filter(pairs)
        .exec_with_returning(db)
        .await?;
    Ok(rows
        .into_iter()
        .map(|row| (TaskId(row.id), row.attempt))
        .collect())
}

/// Beats every `every` until `stop`: registry heartbeat, lease renewal, and stopping
/// the turns that lost their task.
pub(crate) async fn heartbeat(
    db: DatabaseConnection,
    worker: WorkerId,
    turns: Turns,
    every: Duration,
    lease: Duration,
    stop: CancellationToken,
) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Log an outage once when it starts and once when it ends, not on every beat.
    let mut failing = false;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.cancelled() => return,
        }
        let registry = WorkerRegistry::heartbeat(&db, &worker).await;

        // Snapshot before the update: a turn registers only after its claim committed,
        // so every turn in the snapshot is visible to the update, and a turn missing
        // from its result really is no longer ours.
        let running = turns.snapshot();
        let held: Vec<(TaskId, i32)> = running.iter().map(|c| (c.task, c.attempt)).collect();
        let renewed = renew(&db, &worker, &held, lease).await;

        if let Ok(renewed) = &renewed {
            for control in &running {
                if !renewed.contains(&(control.task, control.attempt)) {
                    tracing::info!(task_id = %control.task, attempt = control.attempt, worker_id = %worker,
                        "the task is no longer this worker's (cancelled, or its lease was taken over): stopping its turn");
                    control.stop(StopReason::Lost);
                }
            }
        }
        match registry.and(renewed.map(drop)) {
            Ok(()) => {
                if failing {
                    tracing::info!(worker_id = %worker, "heartbeats reach Postgres again");
                    failing = false;
                }
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(worker_id = %worker, error = %error_chain(&e), running = held.len(),
                        "heartbeat failed: leases are not being renewed until Postgres answers");
                    failing = true;
                } else {
                    tracing::debug!(worker_id = %worker, error = %error_chain(&e), "heartbeat failed again");
                }
            }
        }
    }
}

//! Recovering tasks whose worker stopped renewing its lease.

use sea_orm::{
    ColumnTrait, Condition, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
    TransactionTrait,
    sea_query::{LockBehavior, LockType},
};
use serde_json::Value;
use uuid::Uuid;

use super::{CHANNEL_TASKS_NEW, TaskStore, notify, write};
use crate::{
    TaskId,
    entity::tasks::{self, Column},
    error::Result,
    event::{LeaseLost, TaskEvent},
    task::TaskState,
    time,
};

impl TaskStore {
    /// Recovers tasks whose lease expired (their worker died or lost Postgres): each is
    /// re-queued with `task.lease_lost`, or failed by it once its attempts are spent.
    /// At most `limit` per call; rows are taken with `SKIP LOCKED` so several
    /// dispatchers can sweep at once. Returns how many were recovered.
    pub async fn expire_leases(
        db: &DatabaseConnection,
        limit: u64,
        metadata: &Value,
    ) -> Result<usize> {
        let at = time::now();
        let txn = db.begin().await?;
        let expired: Vec<(Uuid, i32, i32, Option<String>)> = tasks::Entity::find()
            .select_only()
            .columns([
                Column::Id,
                Column::Attempt,
                Column::MaxAttempts,
                Column::WorkerId,
            ])
            .filter(Column::State.eq(TaskState::Running.as_str()))
            .filter(Column::LeaseUntil.lt(at))
            .order_by_asc(Column::LeaseUntil)
            .limit(limit)
            .lock_with_behavior(LockType::Update, LockBehavior::SkipLocked)
            .into_tuple()
            .all(&txn)
            .await?;
        let mut recovered = 0;
        for (id, attempt, max_attempts, worker_id) in expired {
            let event = TaskEvent::LeaseLost(LeaseLost {
                attempt,
                worker_id: worker_id.unwrap_or_default(),
                failed: attempt >= max_attempts,
            });
            let guard = Condition::all()
                .add(Column::State.eq(TaskState::Running.as_str()))
                .add(Column::Attempt.eq(attempt));
            if write(&txn, TaskId(id), guard, &event, metadata, at)
                .await?
                .is_some()
            {
                recovered += 1;
            }
        }
        if recovered > 0 {
            notify(&txn, CHANNEL_TASKS_NEW, "").await?;
        }
        txn.commit().await?;
        Ok(recovered)
    }
}

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
            .filter(Column::State.eq(TaskState::Running))
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
                .add(Column::State.eq(TaskState::Running))
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use anyhow::{Context, Result};
    use serde_json::json;
    use turnq_testkit::TestDb;

    use super::super::fixtures::{LEASE, completed, kinds, meta, running, submitted, worker};
    use super::*;
    use crate::{Error, task::Task};

    /// A task claimed by `by` with a lease that has run out by the time anyone looks.
    async fn expired(
        db: &DatabaseConnection,
        body: serde_json::Value,
        by: &crate::WorkerId,
    ) -> Result<Task> {
        let task = submitted(db, body).await?;
        Ok(
            TaskStore::claim(db, task.id, 0, by, Duration::ZERO, &meta())
                .await?
                .context("a fresh task is claimable")?
                .task,
        )
    }

    #[tokio::test]
    async fn an_expired_lease_puts_the_task_back_for_its_next_attempt() -> Result<()> {
        let t = TestDb::new().await?;
        let (a, b) = (worker("a"), worker("b"));
        let task = expired(&t.db, json!({"input": "x"}), &a).await?;
        assert_eq!(TaskStore::expire_leases(&t.db, 10, &meta()).await?, 1);
        let back = TaskStore::get(&t.db, task.id).await?;
        assert_eq!(back.state, TaskState::Pending);
        assert_eq!((back.attempt, back.lease_until), (1, None));
        assert_eq!(
            back.last_error.as_deref(),
            Some("the lease of worker a expired")
        );
        assert_eq!(
            kinds(&t.db, task.id).await?,
            ["task.submitted", "task.started", "task.lease_lost"]
        );
        let again = TaskStore::claim(&t.db, task.id, 1, &b, LEASE, &meta())
            .await?
            .context("claimable at attempt 1")?;
        assert_eq!(again.task.attempt, 2);
        assert!(
            matches!(
                TaskStore::record(&t.db, task.id, 1, &a, &completed(1), &meta()).await,
                Err(Error::Fenced { .. })
            ),
            "the worker whose lease ran out can write no more"
        );
        let done = TaskStore::record(&t.db, task.id, 2, &b, &completed(2), &meta()).await?;
        assert_eq!(
            (done.state, done.last_error),
            (TaskState::Completed, None),
            "a completed task keeps no error of an earlier attempt"
        );
        Ok(())
    }

    #[tokio::test]
    async fn an_expired_lease_fails_the_task_once_its_attempts_are_spent() -> Result<()> {
        let t = TestDb::new().await?;
        let task = expired(
            &t.db,
            json!({"input": "x", "max_attempts": 1}),
            &worker("a"),
        )
        .await?;
        assert_eq!(TaskStore::expire_leases(&t.db, 10, &meta()).await?, 1);
        let failed = TaskStore::get(&t.db, task.id).await?;
        assert_eq!(failed.state, TaskState::Failed);
        assert!(failed.ended_at.is_some());
        let lost = TaskStore::events(&t.db, task.id, crate::StreamVersion(2), 1).await?;
        assert_eq!(
            lost[0].data,
            json!({"attempt": 1, "worker_id": "a", "failed": true})
        );
        Ok(())
    }

    #[tokio::test]
    async fn a_sweep_takes_at_most_its_limit_and_leaves_live_leases_alone() -> Result<()> {
        let t = TestDb::new().await?;
        let a = worker("a");
        let live = running(&t.db, json!({"input": 0}), &a).await?;
        for i in 1..=3 {
            expired(&t.db, json!({"input": i}), &a).await?;
        }
        assert_eq!(TaskStore::expire_leases(&t.db, 2, &meta()).await?, 2);
        assert_eq!(TaskStore::expire_leases(&t.db, 2, &meta()).await?, 1);
        assert_eq!(TaskStore::expire_leases(&t.db, 2, &meta()).await?, 0);
        assert_eq!(
            TaskStore::get(&t.db, live.id).await?.state,
            TaskState::Running
        );
        Ok(())
    }
}

//! A person's transitions (cancel, retry, approve): checked against the state machine,
//! written on the condition that the task's stream has not moved since it was read.

use sea_orm::{ColumnTrait, Condition, DatabaseConnection, TransactionTrait};
use serde_json::Value;

use super::{CHANNEL_TASK_CANCELLED, CHANNEL_TASKS_NEW, TaskStore, notify, stream_of, write};
use crate::{
    Error, TaskId,
    entity::tasks::Column,
    error::Result,
    event::{Approved, Cancelled, Retried, TaskEvent},
    task::{Task, TaskState},
    time,
};

impl TaskStore {
    /// A person's transition (cancel, retry, approve): read the task, check the state
    /// machine, write on the condition that the stream has not moved since the read.
    async fn transition(
        db: &DatabaseConnection,
        id: TaskId,
        action: &'static str,
        metadata: &Value,
        make: impl Fn(&Task) -> TaskEvent,
    ) -> Result<Task> {
        // A worker's write can land between our read and our write (a heartbeat, a batch
        // of output); re-reading a few times rides over that without giving up.
        for _ in 0..5 {
            let task = Self::get(db, id).await?;
            let event = make(&task);
            if task.state.after(&event).is_none() {
                return Err(Error::IllegalTransition {
                    task: id,
                    from: task.state,
                    action,
                });
            }
            let txn = db.begin().await?;
            let guard = Condition::all().add(Column::Version.eq(task.version.0));
            if let Some(row) = write(&txn, id, guard, &event, metadata, time::now()).await? {
                if task.state == TaskState::Running && matches!(event, TaskEvent::Cancelled(_)) {
                    notify(&txn, CHANNEL_TASK_CANCELLED, &id.to_string()).await?;
                }
                if row.session_id.is_some() && task.state == TaskState::Running {
                    // The session's next turn may start now.
                    notify(&txn, CHANNEL_TASKS_NEW, "").await?;
                }
                txn.commit().await?;
                return Task::try_from(row);
            }
        }
        let task = Self::get(db, id).await?;
        Err(Error::VersionConflict {
            stream: stream_of(id).to_string(),
            expected: task.version,
            actual: task.version,
        })
    }

    /// Cancels a pending, running or blocked task.
    pub async fn cancel(
        db: &DatabaseConnection,
        id: TaskId,
        reason: Option<String>,
        metadata: &Value,
    ) -> Result<Task> {
        Self::transition(db, id, "cancelled", metadata, |_| {
            TaskEvent::Cancelled(Cancelled {
                reason: reason.clone(),
            })
        })
        .await
    }

    /// Re-opens a failed task, with at least one more attempt in its budget.
    pub async fn retry(db: &DatabaseConnection, id: TaskId, metadata: &Value) -> Result<Task> {
        Self::transition(db, id, "retried", metadata, |task| {
            TaskEvent::Retried(Retried {
                max_attempts: task.max_attempts.max(task.attempt + 1),
            })
        })
        .await
    }

    /// Re-opens a blocked task after a person answered it.
    pub async fn approve(
        db: &DatabaseConnection,
        id: TaskId,
        note: Option<String>,
        metadata: &Value,
    ) -> Result<Task> {
        Self::transition(db, id, "approved", metadata, |task| {
            TaskEvent::Approved(Approved {
                note: note.clone(),
                max_attempts: task.max_attempts.max(task.attempt + 1),
            })
        })
        .await
    }
}

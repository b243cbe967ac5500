//! A person's transitions (cancel, retry, approve): checked against the state machine,
//! written on the condition that the task's stream has not moved since it was read.

use sea_orm::{ColumnTrait, Condition, DatabaseConnection, TransactionTrait};
use serde_json::Value;

use super::{CHANNEL_TASK_CANCELLED, CHANNEL_TASKS_NEW, TaskStore, notify, stream_of, write};
use crate::{
    Error, TaskId,
    entity::tasks::Column,
    error::Result,
    event::{
        Approved, Cancelled, ErrorClass, Failed, Responded, Retried, TaskEvent, TaskFailure, Usage,
    },
    task::{ResponseRequest, Task, TaskState},
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
        make: impl Fn(&Task) -> Result<TaskEvent>,
    ) -> Result<Task> {
        // A worker's write can land between our read and our write (a heartbeat, a batch
        // of output); re-reading a few times rides over that without giving up.
        for _ in 0..5 {
            let task = Self::get(db, id).await?;
            let event = make(&task)?;
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
                return Ok(Task::from(row));
            }
        }
        let task = Self::get(db, id).await?;
        Err(Error::VersionConflict {
            stream: stream_of(id).to_string(),
            expected: task.version,
            actual: task.version,
        })
    }

    /// Fails a pending task that can never start: its claim at `attempt` (the job's
    /// view) was refused by Postgres for a reason that will not go away (`reason`). It
    /// then waits in the inbox for a person, instead of being delivered and refused
    /// again forever. `None` when the task has moved on meanwhile.
    pub async fn fail_unstartable(
        db: &DatabaseConnection,
        id: TaskId,
        attempt: i32,
        reason: &str,
        metadata: &Value,
    ) -> Result<Option<Task>> {
        let event = TaskEvent::Failed(Failed {
            attempt,
            error: TaskFailure {
                class: ErrorClass::Fatal,
                message: format!("the task cannot be started: {reason}"),
            },
            usage: Usage::default(),
        });
        let guard = Condition::all()
            .add(Column::State.eq(TaskState::Pending))
            .add(Column::Attempt.eq(attempt));
        let txn = db.begin().await?;
        let written = write(&txn, id, guard, &event, metadata, time::now()).await?;
        txn.commit().await?;
        Ok(written.map(Task::from))
    }

    /// Cancels a pending, running or blocked task, and then its unfinished sub-tasks.
    pub async fn cancel(
        db: &DatabaseConnection,
        id: TaskId,
        reason: Option<String>,
        metadata: &Value,
    ) -> Result<Task> {
        match Self::cancel_one(db, id, reason, metadata).await {
            Ok(task) => {
                Self::cancel_children(db, id, metadata).await?;
                Ok(task)
            }
            // Cancelled already: its cascade runs again (one cut short by a failure
            // finishes now), and the answer is still that it cannot be cancelled twice.
            Err(
                e @ Error::IllegalTransition {
                    from: TaskState::Cancelled,
                    ..
                },
            ) => {
                Self::cancel_children(db, id, metadata).await?;
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    /// Cancels one task, leaving its sub-tasks alone.
    pub(super) async fn cancel_one(
        db: &DatabaseConnection,
        id: TaskId,
        reason: Option<String>,
        metadata: &Value,
    ) -> Result<Task> {
        if let Some(reason) = &reason {
            crate::storable::no_nul("reason", reason)?;
        }
        Self::transition(db, id, "cancelled", metadata, |_| {
            Ok(TaskEvent::Cancelled(Cancelled {
                reason: reason.clone(),
            }))
        })
        .await
    }

    /// Re-opens a failed task, with at least one more attempt in its budget.
    pub async fn retry(db: &DatabaseConnection, id: TaskId, metadata: &Value) -> Result<Task> {
        Self::transition(db, id, "retried", metadata, |task| {
            Ok(TaskEvent::Retried(Retried {
                max_attempts: task.max_attempts.max(task.attempt + 1),
            }))
        })
        .await
    }

    /// Records a person's answer to a blocked task's request and re-opens the task: its
    /// next turn resumes with the answer. Refused (and nothing written) when the task
    /// is not blocked on a request a person answers, or the answer does not fit it.
    pub async fn respond(
        db: &DatabaseConnection,
        id: TaskId,
        answer: ResponseRequest,
        by: Option<String>,
        metadata: &Value,
    ) -> Result<Task> {
        let task = Self::get(db, id).await?;
        let Some(request) = task.open_request() else {
            return Err(Error::IllegalTransition {
                task: id,
                from: task.state,
                action: if task.state == TaskState::Blocked {
                    "answered: it asks nothing (approve it instead)"
                } else {
                    "answered"
                },
            });
        };
        let response = request.answer(answer, by)?;
        let event = TaskEvent::Responded(Responded {
            response,
            max_attempts: task.max_attempts.max(task.attempt + 1),
        });
        // On the version read: the answer is to the request read above, never to a
        // newer one (a block that came in between is answered by its own request).
        let txn = db.begin().await?;
        let guard = Condition::all().add(Column::Version.eq(task.version.0));
        let Some(row) = write(&txn, id, guard, &event, metadata, time::now()).await? else {
            let now = Self::get(db, id).await?;
            return Err(Error::VersionConflict {
                stream: stream_of(id).to_string(),
                expected: task.version,
                actual: now.version,
            });
        };
        // The dispatcher hands it to a worker now, not at its next poll.
        notify(&txn, CHANNEL_TASKS_NEW, "").await?;
        txn.commit().await?;
        Ok(Task::from(row))
    }

    /// Re-opens a blocked task after a person answered it.
    pub async fn approve(
        db: &DatabaseConnection,
        id: TaskId,
        note: Option<String>,
        metadata: &Value,
    ) -> Result<Task> {
        if let Some(note) = &note {
            crate::storable::no_nul("note", note)?;
        }
        Self::transition(db, id, "approved", metadata, |task| {
            // Checked on the task as the write will find it: one that blocked on a
            // request in the meantime is answered, not approved.
            if let Some(request) = task.open_request() {
                return Err(Error::Invalid(format!(
                    "task {id} waits on a {} request: answer it with POST /v1/tasks/{id}/respond",
                    request.kind.as_str()
                )));
            }
            Ok(TaskEvent::Approved(Approved {
                note: note.clone(),
                max_attempts: task.max_attempts.max(task.attempt + 1),
            }))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use anyhow::{Context, Result};
    use sea_orm::sqlx::postgres::PgListener;
    use serde_json::json;
    use turnq_testkit::{TestDb, within};

    use super::super::fixtures::{
        blocked, completed, counts, failed, kinds, meta, running, submitted, worker,
    };
    use super::*;

    #[tokio::test]
    async fn cancelling_a_pending_task_ends_it_with_its_reason() -> Result<()> {
        let t = TestDb::new().await?;
        let task = submitted(&t.db, json!({"input": "x"})).await?;
        let cancelled =
            TaskStore::cancel(&t.db, task.id, Some("not needed".into()), &meta()).await?;
        assert_eq!(cancelled.state, TaskState::Cancelled);
        assert!(cancelled.ended_at.is_some());
        assert_eq!(cancelled.version.0, 2);
        let events = TaskStore::events(&t.db, task.id, crate::StreamVersion(1), 10).await?;
        assert_eq!(events[0].kind, "task.cancelled");
        assert_eq!(events[0].data, json!({"reason": "not needed"}));
        Ok(())
    }

    #[tokio::test]
    async fn cancelling_a_running_task_tells_its_worker_on_commit() -> Result<()> {
        let t = TestDb::new().await?;
        let mut listener = PgListener::connect(&t.url).await?;
        listener.listen(CHANNEL_TASK_CANCELLED).await?;
        let task = running(&t.db, json!({"input": "x"}), &worker("w")).await?;
        TaskStore::cancel(&t.db, task.id, None, &meta()).await?;
        let note = within("the cancellation's NOTIFY", listener.recv()).await??;
        assert_eq!(note.payload(), task.id.to_string());
        Ok(())
    }

    #[tokio::test]
    async fn retrying_a_failed_task_reopens_it_with_one_more_attempt() -> Result<()> {
        let t = TestDb::new().await?;
        let w = worker("w");
        let task = running(&t.db, json!({"input": "x", "max_attempts": 1}), &w).await?;
        TaskStore::record(&t.db, task.id, 1, &w, &failed(1), &meta()).await?;
        let retried = TaskStore::retry(&t.db, task.id, &meta()).await?;
        assert_eq!(retried.state, TaskState::Pending);
        assert_eq!((retried.attempt, retried.max_attempts), (1, 2));
        assert_eq!((retried.ended_at, retried.queued_at), (None, None));
        assert_eq!(
            kinds(&t.db, task.id).await?.last().map(String::as_str),
            Some("task.retried")
        );
        Ok(())
    }

    #[tokio::test]
    async fn a_task_that_cannot_start_fails_once_with_its_reason() -> Result<()> {
        let t = TestDb::new().await?;
        let task = submitted(&t.db, json!({"input": "x"})).await?;
        // Handed to Redis, as a task whose claim was refused is.
        TaskStore::dispatch_due(&t.db, 10, std::time::Duration::ZERO, &meta(), |_| async {
            Ok(())
        })
        .await?;
        let failed = TaskStore::fail_unstartable(&t.db, task.id, 0, "index row too large", &meta())
            .await?
            .context("the pending task fails")?;
        assert_eq!(failed.state, TaskState::Failed);
        assert!(
            failed
                .last_error
                .as_deref()
                .is_some_and(|e| e.contains("cannot be started: index row too large")),
            "{failed:?}"
        );
        assert!(!failed.queued);
        assert_eq!(
            kinds(&t.db, task.id).await?,
            ["task.submitted", "task.queued", "task.failed"]
        );
        // Only from pending at the job's attempt: a second try changes nothing.
        assert!(
            TaskStore::fail_unstartable(&t.db, task.id, 0, "again", &meta())
                .await?
                .is_none()
        );
        Ok(())
    }

    #[tokio::test]
    async fn approving_a_blocked_task_reopens_it_with_a_note() -> Result<()> {
        let t = TestDb::new().await?;
        let w = worker("w");
        let task = running(&t.db, json!({"input": "x", "max_attempts": 1}), &w).await?;
        TaskStore::record(&t.db, task.id, 1, &w, &blocked(1), &meta()).await?;
        let approved = TaskStore::approve(&t.db, task.id, Some("go".into()), &meta()).await?;
        assert_eq!(approved.state, TaskState::Pending);
        assert_eq!(approved.max_attempts, 2, "room for one more attempt");
        let last = TaskStore::events(&t.db, task.id, crate::StreamVersion(3), 10).await?;
        assert_eq!(last[0].kind, "task.approved");
        assert_eq!(last[0].data, json!({"note": "go", "max_attempts": 2}));
        Ok(())
    }

    #[tokio::test]
    async fn an_illegal_transition_is_an_error_and_writes_nothing() -> Result<()> {
        let t = TestDb::new().await?;
        let w = worker("w");
        let pending = submitted(&t.db, json!({"input": "x"})).await?;
        let done = running(&t.db, json!({"input": "y"}), &w).await?;
        TaskStore::record(&t.db, done.id, 1, &w, &completed(1), &meta()).await?;
        let before = counts(&t.db).await?;

        let refusals = [
            (
                TaskStore::approve(&t.db, pending.id, None, &meta()).await,
                pending.id,
                TaskState::Pending,
                "approved",
            ),
            (
                TaskStore::retry(&t.db, pending.id, &meta()).await,
                pending.id,
                TaskState::Pending,
                "retried",
            ),
            (
                TaskStore::cancel(&t.db, done.id, None, &meta()).await,
                done.id,
                TaskState::Completed,
                "cancelled",
            ),
        ];
        for (outcome, id, state, verb) in refusals {
            let err = outcome.err().context("the transition must be refused")?;
            assert!(
                matches!(err, Error::IllegalTransition { task, from, action }
                    if task == id && from == state && action == verb),
                "{err:?}"
            );
        }
        assert_eq!(counts(&t.db).await?, before);
        assert_eq!(TaskStore::get(&t.db, pending.id).await?.version.0, 1);
        Ok(())
    }
}

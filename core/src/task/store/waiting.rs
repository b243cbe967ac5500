//! Blocked tasks that turnq answers itself: requests whose deadline passed (denied or
//! failed, as the request says) and parents whose sub-tasks have all ended (answered
//! with the children's outcomes). The dispatcher's sweep calls both; rows are taken
//! with `SKIP LOCKED` so several dispatchers can sweep at once, and every write is
//! conditional on the version read, so a person's answer landing first wins.

use sea_orm::{
    ColumnTrait, Condition, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
    TransactionTrait,
    sea_query::{Expr, LockBehavior, LockType},
};
use serde_json::Value;
use uuid::Uuid;

use super::{CHANNEL_TASKS_NEW, TaskStore, notify, write};
use crate::{
    TaskId,
    entity::tasks::{self, Column},
    error::Result,
    event::{ErrorClass, Failed, Responded, TaskEvent, TaskFailure, Usage},
    task::{ChildOutcome, HumanRequest, OnTimeout, Response, TaskState},
    time,
};

/// The most children a parent is answered with.
const MAX_CHILDREN: u64 = 1000;

type Row = (Uuid, i64, i32, i32, Option<Value>);

impl TaskStore {
    /// Ends requests whose deadline passed: `on_timeout: deny` answers no for the
    /// person (`task.responded`, `expired: true`), `fail` fails the task. At most
    /// `limit` per call; returns how many were ended.
    pub async fn expire_requests(
        db: &DatabaseConnection,
        limit: u64,
        metadata: &Value,
    ) -> Result<usize> {
        let at = time::now();
        let txn = db.begin().await?;
        let due: Vec<Row> = blocked_rows()
            .filter(Column::RequestDeadline.lt(at))
            .order_by_asc(Column::RequestDeadline)
            .limit(limit)
            .lock_with_behavior(LockType::Update, LockBehavior::SkipLocked)
            .into_tuple()
            .all(&txn)
            .await?;
        let mut writes = Vec::with_capacity(due.len());
        for (id, version, attempt, max_attempts, request) in due {
            let Some(request) =
                request.and_then(|r| serde_json::from_value::<HumanRequest>(r).ok())
            else {
                continue;
            };
            let event = match request.on_timeout {
                OnTimeout::Deny => TaskEvent::Responded(Responded {
                    response: request.expired(),
                    max_attempts: max_attempts.max(attempt + 1),
                }),
                OnTimeout::Fail => TaskEvent::Failed(Failed {
                    attempt,
                    error: TaskFailure {
                        class: ErrorClass::Fatal,
                        message: format!(
                            "nobody answered the {} request by its deadline",
                            request.kind.as_str()
                        ),
                    },
                    usage: Usage::default(),
                }),
            };
            writes.push((id, version, event));
        }
        write_all(txn, writes, metadata, at).await
    }

    /// Re-opens parents that wait for their sub-tasks once none of them is pending,
    /// running or blocked any more, answering each with its children's outcomes
    /// (completed, failed or cancelled: the parent decides what a failure means). At
    /// most `limit` parents per call; returns how many were re-opened.
    pub async fn resume_parents(
        db: &DatabaseConnection,
        limit: u64,
        metadata: &Value,
    ) -> Result<usize> {
        let at = time::now();
        let txn = db.begin().await?;
        let ready: Vec<Row> = blocked_rows()
            .filter(Expr::cust("request->>'kind' = 'children'"))
            .filter(Expr::cust(
                "NOT EXISTS (SELECT 1 FROM tasks c WHERE c.parent_task_id = tasks.id \
                 AND c.state IN ('pending', 'running', 'blocked'))",
            ))
            .limit(limit)
            .lock_with_behavior(LockType::Update, LockBehavior::SkipLocked)
            .into_tuple()
            .all(&txn)
            .await?;
        let mut writes = Vec::with_capacity(ready.len());
        for (id, version, attempt, max_attempts, _) in ready {
            let children = Self::children(&txn, TaskId(id), MAX_CHILDREN).await?;
            let response = Response {
                children: children
                    .into_iter()
                    .map(|child| ChildOutcome {
                        id: child.id.0,
                        state: child.state,
                        output_summary: child.output_summary,
                        error: child
                            .last_error
                            .filter(|_| child.state != TaskState::Completed),
                    })
                    .collect(),
                ..Response::default()
            };
            let event = TaskEvent::Responded(Responded {
                response,
                max_attempts: max_attempts.max(attempt + 1),
            });
            writes.push((id, version, event));
        }
        write_all(txn, writes, metadata, at).await
    }

    /// Cancels unfinished sub-tasks whose parent was cancelled in the last ten minutes:
    /// what a cancellation's own cascade left undone (the process stopped half-way, or a
    /// child was created just after it ran). At most `limit` per call; returns how many
    /// were cancelled.
    pub async fn cancel_orphans(
        db: &DatabaseConnection,
        limit: u64,
        metadata: &Value,
    ) -> Result<usize> {
        let orphans: Vec<(Uuid, Option<Uuid>)> = tasks::Entity::find()
            .select_only()
            .columns([Column::Id, Column::ParentTaskId])
            .filter(Column::State.is_in([
                TaskState::Pending,
                TaskState::Running,
                TaskState::Blocked,
            ]))
            // Parents cancelled in the last ten minutes (a range of the `ended_at` BRIN
            // index), then their children (`tasks_parent_idx`): the sweep runs every
            // second and must not read every open task of a large backlog.
            .filter(Expr::cust(
                "parent_task_id IN (SELECT p.id FROM tasks p WHERE p.state = 'cancelled' \
                 AND p.ended_at > now() - interval '10 minutes')",
            ))
            .limit(limit)
            .into_tuple()
            .all(db)
            .await?;
        let mut cancelled = 0;
        for (child, parent) in orphans {
            let reason = parent.map(|p| format!("its parent task {p} was cancelled"));
            match Self::cancel(db, TaskId(child), reason, metadata).await {
                Ok(_) => cancelled += 1,
                Err(crate::Error::IllegalTransition { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(cancelled)
    }

    /// Cancels the unfinished sub-tasks of `parent`, and theirs, after the parent was
    /// cancelled. A child that ends meanwhile is left as it ended.
    pub(super) async fn cancel_children(
        db: &DatabaseConnection,
        parent: TaskId,
        metadata: &Value,
    ) -> Result<()> {
        let mut stack = vec![parent];
        while let Some(parent) = stack.pop() {
            let open: Vec<Uuid> = tasks::Entity::find()
                .select_only()
                .column(Column::Id)
                .filter(Column::ParentTaskId.eq(parent.0))
                .filter(Column::State.is_in([
                    TaskState::Pending,
                    TaskState::Running,
                    TaskState::Blocked,
                ]))
                .into_tuple()
                .all(db)
                .await?;
            for child in open {
                let reason = format!("its parent task {parent} was cancelled");
                match Self::cancel_one(db, TaskId(child), Some(reason), metadata).await {
                    Ok(_) | Err(crate::Error::IllegalTransition { .. }) => {}
                    Err(e) => return Err(e),
                }
                stack.push(TaskId(child));
            }
        }
        Ok(())
    }
}

/// Writes each blocked task's event on the version read (a person's answer that
/// landed first wins), wakes the dispatcher when any was written, and commits. Returns
/// how many were written.
async fn write_all(
    txn: sea_orm::DatabaseTransaction,
    writes: Vec<(Uuid, i64, TaskEvent)>,
    metadata: &Value,
    at: crate::time::Timestamp,
) -> Result<usize> {
    let mut written = 0;
    for (id, version, event) in writes {
        if write(&txn, TaskId(id), on_version(version), &event, metadata, at)
            .await?
            .is_some()
        {
            written += 1;
        }
    }
    if written > 0 {
        notify(&txn, CHANNEL_TASKS_NEW, "").await?;
    }
    txn.commit().await?;
    Ok(written)
}

fn blocked_rows() -> sea_orm::Select<tasks::Entity> {
    tasks::Entity::find()
        .select_only()
        .columns([
            Column::Id,
            Column::Version,
            Column::Attempt,
            Column::MaxAttempts,
            Column::Request,
        ])
        .filter(Column::State.eq(TaskState::Blocked))
}

fn on_version(version: i64) -> Condition {
    Condition::all()
        .add(Column::State.eq(TaskState::Blocked))
        .add(Column::Version.eq(version))
}

#[cfg(test)]
mod tests {
    use anyhow::{Context, Result};
    use serde_json::json;
    use turnq_testkit::TestDb;

    use super::super::fixtures::{asking, completed, kinds, meta, running, submitted, worker};
    use super::*;
    use crate::task::{RequestKind, ResponseRequest};

    fn permission(deadline_in_ms: Option<i64>, on_timeout: OnTimeout) -> HumanRequest {
        HumanRequest {
            kind: RequestKind::Permission,
            prompt: "may I run rm?".into(),
            options: Vec::new(),
            tool: Some("bash".into()),
            tool_input: Some(json!({"cmd": "rm -rf build"})),
            deadline: deadline_in_ms
                .map(|ms| time::truncate(time::now() + chrono::TimeDelta::milliseconds(ms))),
            on_timeout,
        }
        .validated()
        .map_err(anyhow::Error::msg)
        .unwrap()
    }

    async fn blocked_on(t: &TestDb, request: HumanRequest) -> Result<crate::task::Task> {
        let w = worker("w");
        let task = running(&t.db, json!({"input": "x"}), &w).await?;
        TaskStore::record(&t.db, task.id, 1, &w, &asking(1, request), &meta()).await?;
        Ok(TaskStore::get(&t.db, task.id).await?)
    }

    #[tokio::test]
    async fn an_answer_reopens_the_task_and_stays_for_its_next_turn() -> Result<()> {
        let t = TestDb::new().await?;
        let task = blocked_on(&t, permission(Some(60_000), OnTimeout::Deny)).await?;
        assert!(task.open_request().is_some());
        let answer = ResponseRequest {
            choice: Some("allow".into()),
            text: Some("only in build/".into()),
            input: Some(json!({"cmd": "rm -rf build/tmp"})),
        };
        let answered =
            TaskStore::respond(&t.db, task.id, answer, Some("alice".into()), &meta()).await?;
        assert_eq!(answered.state, TaskState::Pending);
        assert_eq!(answered.max_attempts, 3);
        let response = answered.response.clone().context("the answer is kept")?;
        assert_eq!(response.choice.as_deref(), Some("allow"));
        assert_eq!(response.by.as_deref(), Some("alice"));
        assert!(answered.open_request().is_none());
        assert_eq!(
            answered.request.map(|r| r.kind),
            Some(RequestKind::Permission)
        );
        // Answered once: a second answer finds nothing open and writes nothing.
        let again = TaskStore::respond(&t.db, task.id, ResponseRequest::default(), None, &meta())
            .await
            .unwrap_err();
        assert!(
            matches!(again, crate::Error::IllegalTransition { .. }),
            "{again:?}"
        );
        assert_eq!(
            kinds(&t.db, task.id).await?.last().map(String::as_str),
            Some("task.responded")
        );
        Ok(())
    }

    #[tokio::test]
    async fn a_bad_answer_changes_nothing_and_a_bare_block_is_not_answered() -> Result<()> {
        let t = TestDb::new().await?;
        let task = blocked_on(&t, permission(None, OnTimeout::Deny)).await?;
        let bad = ResponseRequest {
            choice: Some("maybe".into()),
            ..ResponseRequest::default()
        };
        let err = TaskStore::respond(&t.db, task.id, bad, None, &meta())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("allow, deny"), "{err}");
        assert_eq!(TaskStore::get(&t.db, task.id).await?.version, task.version);
        // Approving a task that waits on a request is refused: it must be answered.
        let err = TaskStore::approve(&t.db, task.id, None, &meta())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("/respond"), "{err}");
        Ok(())
    }

    #[tokio::test]
    async fn a_request_past_its_deadline_is_denied_or_fails_as_it_says() -> Result<()> {
        let t = TestDb::new().await?;
        let deny = blocked_on(&t, permission(Some(-1), OnTimeout::Deny)).await?;
        let fail = blocked_on(&t, permission(Some(-1), OnTimeout::Fail)).await?;
        let later = blocked_on(&t, permission(Some(3_600_000), OnTimeout::Fail)).await?;
        assert_eq!(TaskStore::expire_requests(&t.db, 10, &meta()).await?, 2);

        let denied = TaskStore::get(&t.db, deny.id).await?;
        assert_eq!(denied.state, TaskState::Pending);
        let response = denied.response.context("turnq answered")?;
        assert!(response.expired);
        assert_eq!(response.choice.as_deref(), Some("deny"));

        let failed = TaskStore::get(&t.db, fail.id).await?;
        assert_eq!(failed.state, TaskState::Failed);
        assert!(
            failed
                .last_error
                .as_deref()
                .is_some_and(|e| e.contains("by its deadline")),
            "{failed:?}"
        );
        assert_eq!(
            TaskStore::get(&t.db, later.id).await?.state,
            TaskState::Blocked
        );
        assert_eq!(TaskStore::expire_requests(&t.db, 10, &meta()).await?, 0);
        Ok(())
    }

    #[tokio::test]
    async fn a_parent_resumes_with_its_childrens_outcomes_once_all_ended() -> Result<()> {
        let t = TestDb::new().await?;
        let w = worker("w");
        let parent = running(&t.db, json!({"input": "p"}), &w).await?;
        let children = TaskStore::submit_children(
            &t.db,
            &parent,
            vec![
                serde_json::from_value(json!({"input": "a"}))?,
                serde_json::from_value(json!({"input": "b"}))?,
            ],
            &meta(),
        )
        .await?;
        assert_eq!(children.len(), 2);
        assert!(
            children
                .iter()
                .all(|c| c.parent_task_id == Some(parent.id.0))
        );
        // The same children asked again (a turn run again after a crash): no new tasks.
        let again = TaskStore::submit_children(
            &t.db,
            &parent,
            vec![
                serde_json::from_value(json!({"input": "a"}))?,
                serde_json::from_value(json!({"input": "b"}))?,
            ],
            &meta(),
        )
        .await?;
        assert_eq!(
            again.iter().map(|c| c.id).collect::<Vec<_>>(),
            children.iter().map(|c| c.id).collect::<Vec<_>>()
        );
        let wait = HumanRequest {
            kind: RequestKind::Children,
            prompt: "waits for 2".into(),
            options: Vec::new(),
            tool: None,
            tool_input: None,
            deadline: None,
            on_timeout: OnTimeout::Fail,
        };
        TaskStore::record(&t.db, parent.id, 1, &w, &asking(1, wait), &meta()).await?;
        // A person cannot answer a wait on sub-tasks.
        let err = TaskStore::respond(&t.db, parent.id, ResponseRequest::default(), None, &meta())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("sub-tasks"), "{err}");

        // One child done, one still pending: the parent waits.
        let cw = worker("c");
        let first = &children[0];
        TaskStore::claim(
            &t.db,
            first.id,
            0,
            &cw,
            std::time::Duration::from_secs(60),
            &meta(),
        )
        .await?
        .context("claimed")?;
        TaskStore::record(&t.db, first.id, 1, &cw, &completed(1), &meta()).await?;
        assert_eq!(TaskStore::resume_parents(&t.db, 10, &meta()).await?, 0);

        TaskStore::cancel(&t.db, children[1].id, Some("not needed".into()), &meta()).await?;
        assert_eq!(TaskStore::resume_parents(&t.db, 10, &meta()).await?, 1);
        let resumed = TaskStore::get(&t.db, parent.id).await?;
        assert_eq!(resumed.state, TaskState::Pending);
        let outcomes = resumed
            .response
            .context("the children's outcomes")?
            .children;
        assert_eq!(outcomes.len(), 2);
        assert_eq!(outcomes[0].state, TaskState::Completed);
        assert_eq!(outcomes[0].output_summary.as_deref(), Some("done"));
        assert_eq!(outcomes[1].state, TaskState::Cancelled);
        Ok(())
    }

    #[tokio::test]
    async fn the_sweep_cancels_what_a_cancellation_left_open_and_a_dead_turn_spawns_nothing()
    -> Result<()> {
        let t = TestDb::new().await?;
        let parent = submitted(&t.db, json!({"input": "p"})).await?;
        let child = submitted(&t.db, json!({"input": "c", "parent_task_id": parent.id})).await?;
        // The parent alone, as a cascade cut short would leave it.
        TaskStore::cancel_one(&t.db, parent.id, None, &meta()).await?;
        assert_eq!(
            TaskStore::get(&t.db, child.id).await?.state,
            TaskState::Pending
        );
        assert_eq!(TaskStore::cancel_orphans(&t.db, 10, &meta()).await?, 1);
        assert_eq!(
            TaskStore::get(&t.db, child.id).await?.state,
            TaskState::Cancelled
        );
        assert_eq!(TaskStore::cancel_orphans(&t.db, 10, &meta()).await?, 0);

        // A turn no longer running creates no sub-tasks.
        let cancelled = TaskStore::get(&t.db, parent.id).await?;
        let err = TaskStore::submit_children(
            &t.db,
            &cancelled,
            vec![serde_json::from_value(json!({"input": "late"}))?],
            &meta(),
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains("no longer running"), "{err}");
        Ok(())
    }

    #[tokio::test]
    async fn cancelling_a_parent_cancels_its_unfinished_descendants() -> Result<()> {
        let t = TestDb::new().await?;
        let parent = submitted(&t.db, json!({"input": "p"})).await?;
        let child = submitted(&t.db, json!({"input": "c", "parent_task_id": parent.id})).await?;
        let grandchild =
            submitted(&t.db, json!({"input": "g", "parent_task_id": child.id})).await?;
        let w = worker("w");
        let done = running(
            &t.db,
            json!({"input": "d", "parent_task_id": parent.id}),
            &w,
        )
        .await?;
        TaskStore::record(&t.db, done.id, 1, &w, &completed(1), &meta()).await?;

        TaskStore::cancel(&t.db, parent.id, None, &meta()).await?;
        for id in [parent.id, child.id, grandchild.id] {
            assert_eq!(TaskStore::get(&t.db, id).await?.state, TaskState::Cancelled);
        }
        assert_eq!(
            TaskStore::get(&t.db, done.id).await?.state,
            TaskState::Completed
        );
        let events = TaskStore::events(&t.db, grandchild.id, crate::StreamVersion(1), 10).await?;
        assert_eq!(
            events[0].data["reason"],
            json!(format!("its parent task {} was cancelled", child.id))
        );
        Ok(())
    }
}

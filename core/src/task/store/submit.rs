//! Submissions: the row and its `task.submitted` in one transaction, idempotency keys
//! resolved to the task they named first.

use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, TransactionTrait};
use serde_json::Value;

use super::{TaskStore, event_row, is_unique_violation};
use crate::{
    Error, TaskId,
    entity::tasks::{self, Column},
    error::Result,
    event::{EventStore, TaskEvent},
    task::{NewTask, Task, projection},
    time,
};

/// The outcome of a submission.
#[derive(Debug)]
pub struct Submitted {
    pub task: Task,
    /// False when an `Idempotency-Key` matched an existing task, which is returned.
    pub created: bool,
}

impl TaskStore {
    /// Submits one task. See [`TaskStore::submit_batch`].
    pub async fn submit(
        db: &DatabaseConnection,
        task: NewTask,
        metadata: &Value,
    ) -> Result<Submitted> {
        let mut out = Self::submit_batch(db, vec![task], metadata).await?;
        out.pop()
            .ok_or_else(|| Error::Corrupt("a submission of one task returned none".into()))
    }

    /// Submits tasks in ONE transaction: every row and its `task.submitted` event, or
    /// nothing. A task whose idempotency key is already taken in its project is not
    /// created again; the existing task is returned in its place.
    pub async fn submit_batch(
        db: &DatabaseConnection,
        batch: Vec<NewTask>,
        metadata: &Value,
    ) -> Result<Vec<Submitted>> {
        // A concurrent submission may take a key between our look-up and our insert; the
        // unique index refuses it, and the second try finds the winner's task.
        match Self::try_submit_batch(db, &batch, metadata).await {
            Err(e) if is_unique_violation(&e) => Self::try_submit_batch(db, &batch, metadata).await,
            other => other,
        }
    }

    async fn try_submit_batch(
        db: &DatabaseConnection,
        batch: &[NewTask],
        metadata: &Value,
    ) -> Result<Vec<Submitted>> {
        let at = time::now();
        let txn = db.begin().await?;
        let keys: Vec<&str> = batch
            .iter()
            .filter_map(|t| t.idempotency_key.as_deref())
            .collect();
        let mut existing: Vec<tasks::Model> = if keys.is_empty() {
            Vec::new()
        } else {
            tasks::Entity::find()
                .filter(Column::IdempotencyKey.is_in(keys))
                .all(&txn)
                .await?
        };

        enum Slot {
            New(usize),
            Existing(Box<tasks::Model>),
        }
        let mut slots = Vec::with_capacity(batch.len());
        let mut rows = Vec::new();
        let mut events = Vec::new();
        let mut new_ids: Vec<(TaskId, &NewTask)> = Vec::new();
        for task in batch {
            let found = task.idempotency_key.as_deref().and_then(|key| {
                existing
                    .iter()
                    .find(|m| {
                        m.project == task.project && m.idempotency_key.as_deref() == Some(key)
                    })
                    .map(|m| Slot::Existing(Box::new(m.clone())))
                    .or_else(|| {
                        new_ids
                            .iter()
                            .position(|(_, t)| {
                                t.project == task.project
                                    && t.idempotency_key.as_deref() == Some(key)
                            })
                            .map(Slot::New)
                    })
            });
            match found {
                Some(Slot::New(i)) => slots.push(Slot::New(i)),
                Some(existing) => slots.push(existing),
                None => {
                    let id = TaskId::new();
                    rows.push(projection::new_row(id, task, at));
                    events.push(event_row(
                        id,
                        1,
                        &TaskEvent::Submitted(Box::new(task.clone())),
                        metadata,
                        at,
                    ));
                    slots.push(Slot::New(new_ids.len()));
                    new_ids.push((id, task));
                }
            }
        }
        // Split by size (see `db::MAX_STATEMENT_BYTES`): the input, plus the other
        // columns.
        let mut created = Vec::with_capacity(rows.len());
        let size = |row: &tasks::ActiveModel| match &row.input {
            sea_orm::ActiveValue::Set(input) => crate::db::json_bytes(input) + 300,
            _ => 300,
        };
        for chunk in crate::db::statement_chunks(rows, size) {
            created.extend(
                tasks::Entity::insert_many(chunk)
                    .exec_with_returning(&txn)
                    .await?,
            );
        }
        EventStore::insert(&txn, events).await?;
        txn.commit().await?;

        existing.clear();
        slots
            .into_iter()
            .map(|slot| {
                let (row, was_created) =
                    match slot {
                        Slot::Existing(row) => (*row, false),
                        Slot::New(i) => {
                            let id = new_ids[i].0;
                            let row = created.iter().find(|r| r.id == id.0).cloned().ok_or_else(
                                || Error::Corrupt(format!("inserted task {id} was not returned")),
                            )?;
                            (row, true)
                        }
                    };
                Ok(Submitted {
                    task: Task::try_from(row)?,
                    created: was_created,
                })
            })
            .collect::<Result<Vec<_>>>()
            .map(|mut out| {
                // A key repeated inside one batch names the task created by its first use.
                let mut seen = std::collections::HashSet::new();
                for s in &mut out {
                    if s.created && !seen.insert(s.task.id) {
                        s.created = false;
                    }
                }
                out
            })
    }
}

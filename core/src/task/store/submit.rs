//! Submissions: the row and its `task.submitted` in one transaction, idempotency keys
//! resolved to the task they named first.

use sea_orm::{
    ColumnTrait, DatabaseConnection, DatabaseTransaction, EntityTrait, QueryFilter, QuerySelect,
    TransactionTrait,
};
use serde_json::Value;

use super::{TaskStore, event_row, is_unique_violation};
use crate::{
    ArenaId, Error, TaskId,
    entity::tasks::{self, Column},
    error::Result,
    event::{EventStore, TaskEvent},
    task::{NewTask, NewTaskRequest, Task, projection},
    time,
};

/// The outcome of a submission.
#[derive(Debug)]
pub struct Submitted {
    pub task: Task,
    /// False when an `Idempotency-Key` matched an existing task, which is returned.
    pub created: bool,
}

/// The longest idempotency key of a whole batch, in bytes: its tasks' keys
/// (`{key}#{index}`, index < 1,000) must stay within a task key's 255.
pub const MAX_BATCH_KEY_BYTES: usize = 250;

/// The key of task `i` of a batch keyed `key`.
fn batch_key_of(key: &str, i: usize) -> String {
    format!("{key}#{i}")
}

impl TaskStore {
    /// Refuses a new task whose `parent_task_id` names no task, with a message naming it,
    /// before the insert would break `tasks_parent_task_id_fkey` (a 500 otherwise).
    /// Tasks are never deleted, so a parent seen here is still there at commit.
    ///
    /// And a new task with an `arena_id` other than `arena`'s: a task is part of an
    /// arena only as one of the contestants it is created with
    /// ([`crate::arena::ArenaStore::create`]).
    async fn check_references(
        txn: &DatabaseTransaction,
        new: &[(TaskId, &NewTask)],
        arena: Option<ArenaId>,
    ) -> Result<()> {
        if let Some(stray) = new
            .iter()
            .filter_map(|(_, t)| t.details.arena_id)
            .find(|id| Some(*id) != arena.map(|a| a.0))
        {
            return Err(Error::Invalid(format!(
                "arena_id {stray}: a task joins an arena only as one of its contestants, \
                 when the arena is created (POST /v1/arenas)"
            )));
        }
        let mut parents: Vec<uuid::Uuid> = new
            .iter()
            .filter_map(|(_, t)| t.details.parent_task_id)
            .collect();
        parents.sort_unstable();
        parents.dedup();
        if parents.is_empty() {
            return Ok(());
        }
        let found: Vec<uuid::Uuid> = tasks::Entity::find()
            .select_only()
            .column(Column::Id)
            .filter(Column::Id.is_in(parents.iter().copied()))
            .into_tuple()
            .all(txn)
            .await?;
        match parents.iter().find(|p| !found.contains(p)) {
            Some(missing) => Err(Error::Invalid(format!(
                "parent_task_id {missing} names no task"
            ))),
            None => Ok(()),
        }
    }

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
        match Self::try_submit_batch(db, &batch, metadata, None).await {
            Err(e) if is_unique_violation(&e) => {
                Self::try_submit_batch(db, &batch, metadata, None).await
            }
            other => other,
        }
    }

    /// Submits sub-tasks of `parent` (a backend's tool, through its worker): each in
    /// the parent's project, on the parent's queue and agent unless it names its own,
    /// with `parent_task_id` set. Idempotent per parent and content: a turn that runs
    /// again after a crash and asks for the same children gets the same tasks back,
    /// while a later turn asking for other children gets new ones.
    pub async fn submit_children(
        db: &DatabaseConnection,
        parent: &Task,
        children: Vec<NewTaskRequest>,
        metadata: &Value,
    ) -> Result<Vec<Task>> {
        use sha2::Digest;
        if children.is_empty() || children.len() > crate::task::MAX_BATCH {
            return Err(Error::Invalid(format!(
                "a turn may create 1 to {} sub-tasks at once, not {}",
                crate::task::MAX_BATCH,
                children.len()
            )));
        }
        // Only from the parent's live turn: a turn cancelled or taken over meanwhile
        // creates nothing (its children would run with nobody waiting for them).
        let live = tasks::Entity::find_by_id(parent.id.0)
            .filter(Column::State.eq(crate::task::TaskState::Running))
            .filter(Column::Attempt.eq(parent.attempt))
            .filter(Column::WorkerId.eq(parent.worker_id.clone()))
            .one(db)
            .await?;
        if live.is_none() {
            return Err(Error::Conflict(format!(
                "task {} is no longer running attempt {}: its sub-tasks were not created",
                parent.id, parent.attempt
            )));
        }
        let mut digest = sha2::Sha256::new();
        // The answer the turn resumed with is part of the key: a turn run again after a
        // crash gets its children back, a later turn asking for the same work again gets
        // new ones.
        digest.update(serde_json::to_vec(&parent.response).unwrap_or_default());
        let now = time::now();
        let mut batch = Vec::with_capacity(children.len());
        for (i, mut child) in children.into_iter().enumerate() {
            digest.update(serde_json::to_vec(&child).unwrap_or_default());
            child.project.get_or_insert_with(|| parent.project.clone());
            child.queue.get_or_insert_with(|| parent.queue.clone());
            child.agent.get_or_insert_with(|| parent.agent.clone());
            child.details.parent_task_id = Some(parent.id.0);
            let task = child
                .validate(now)
                .map_err(|e| Error::Invalid(format!("sub-task {i}: {e}")))?;
            batch.push(task);
        }
        crate::agent::AgentRegistry::ensure_known(db, batch.iter().map(|t| t.agent.as_str()))
            .await?;
        let key = format!(
            "subtasks:{}:{}",
            parent.id,
            hex::encode(&digest.finalize()[..8])
        );
        let submitted = Self::submit_batch_once(db, &key, batch, metadata).await?;
        Ok(submitted.into_iter().map(|s| s.task).collect())
    }

    /// Submits a batch under one idempotency key, so that sending it again (a client's
    /// retry after a lost answer) creates nothing new and returns the same tasks. Task
    /// `i` without a key of its own is keyed `{batch_key}#{i}`; a task with its own key
    /// keeps it. The same key with other tasks is refused ([`Error::IdempotencyKeyReused`]):
    /// a task that differs from the one first sent at its place, or a different number
    /// of tasks.
    pub async fn submit_batch_once(
        db: &DatabaseConnection,
        batch_key: &str,
        mut batch: Vec<NewTask>,
        metadata: &Value,
    ) -> Result<Vec<Submitted>> {
        if batch_key.is_empty() || batch_key.len() > MAX_BATCH_KEY_BYTES {
            return Err(Error::Invalid(format!(
                "a batch's idempotency key must be 1 to {MAX_BATCH_KEY_BYTES} bytes, not {}",
                batch_key.len()
            )));
        }
        let mut derived = vec![false; batch.len()];
        for (i, task) in batch.iter_mut().enumerate() {
            if task.idempotency_key.is_none() {
                task.idempotency_key = Some(batch_key_of(batch_key, i));
                derived[i] = true;
            }
        }
        let whole = Some((batch_key, derived.as_slice()));
        match Self::try_submit_batch(db, &batch, metadata, whole).await {
            Err(e) if is_unique_violation(&e) => {
                Self::try_submit_batch(db, &batch, metadata, whole).await
            }
            other => other,
        }
    }

    /// `whole`: the batch's own key and which tasks' keys derive from it
    /// ([`TaskStore::submit_batch_once`]).
    async fn try_submit_batch(
        db: &DatabaseConnection,
        batch: &[NewTask],
        metadata: &Value,
        whole: Option<(&str, &[bool])>,
    ) -> Result<Vec<Submitted>> {
        let txn = db.begin().await?;
        let submitted = Self::submit_batch_in(&txn, batch, metadata, whole, None).await?;
        txn.commit().await?;
        Ok(submitted)
    }

    /// Submits `batch` inside the caller's transaction `txn`: what
    /// [`TaskStore::submit_batch`] does, for a caller that writes rows of its own in the
    /// same transaction (an arena and its contestants). `arena`: the arena whose
    /// contestants these are (its row already inserted in `txn`); any other `arena_id`
    /// is refused. The caller commits, and retries on a unique violation if its tasks
    /// carry idempotency keys.
    pub(crate) async fn submit_batch_in(
        txn: &DatabaseTransaction,
        batch: &[NewTask],
        metadata: &Value,
        whole: Option<(&str, &[bool])>,
        arena: Option<ArenaId>,
    ) -> Result<Vec<Submitted>> {
        let at = time::now();
        // One past the batch's last task: found taken, the key was first sent with more.
        let beyond = whole.map(|(key, _)| batch_key_of(key, batch.len()));
        let keys: Vec<&str> = batch
            .iter()
            .filter_map(|t| t.idempotency_key.as_deref())
            .chain(beyond.as_deref())
            .collect();
        let mut existing: Vec<tasks::Model> = if keys.is_empty() {
            Vec::new()
        } else {
            tasks::Entity::find()
                .filter(Column::IdempotencyKey.is_in(keys))
                .all(txn)
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
            let reused = |id: TaskId, field: Option<&'static str>| match field {
                Some(field) => Err(Error::IdempotencyKeyReused {
                    key: task.idempotency_key.clone().unwrap_or_default(),
                    task: id,
                    field,
                }),
                None => Ok(()),
            };
            match found {
                Some(Slot::New(i)) => {
                    let (id, first) = new_ids[i];
                    reused(id, Asked::new(task).first_difference(&Asked::new(first)))?;
                    slots.push(Slot::New(i));
                }
                Some(Slot::Existing(row)) => {
                    let difference = Asked::new(task).first_difference(&Asked::stored(&row));
                    reused(TaskId(row.id), difference)?;
                    slots.push(Slot::Existing(row));
                }
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
        if let Some((key, derived)) = whole {
            // Refused when the key was first sent with more tasks, or with fewer (some of
            // its tasks' keys are taken, some are new).
            let more_before = existing
                .iter()
                .find(|m| {
                    m.idempotency_key.as_deref() == beyond.as_deref()
                        && batch.iter().any(|t| t.project == m.project)
                })
                .map(|m| m.id);
            let mut sent_before = None;
            let mut any_new = false;
            for (slot, _) in slots.iter().zip(derived).filter(|(_, d)| **d) {
                match slot {
                    Slot::Existing(row) => {
                        sent_before.get_or_insert(row.id);
                    }
                    Slot::New(_) => any_new = true,
                }
            }
            let clash = more_before.or(sent_before.filter(|_| any_new));
            if let Some(id) = clash {
                return Err(Error::IdempotencyKeyReused {
                    key: key.to_owned(),
                    task: TaskId(id),
                    field: "number of tasks",
                });
            }
        }
        Self::check_references(txn, &new_ids, arena).await?;
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
                    .exec_with_returning(txn)
                    .await?,
            );
        }
        EventStore::insert(txn, events).await?;

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
                    task: Task::from(row),
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

/// What a submission asked for, as an idempotency key names it: not what happened
/// since (run time, attempts, state).
#[derive(PartialEq)]
struct Asked<'a> {
    input: &'a Value,
    queue: &'a str,
    priority: i32,
    agent: &'a str,
    model: Option<&'a str>,
    backend: Option<&'a str>,
    worktree_path: Option<&'a str>,
    session_id: Option<&'a str>,
    chat_id: Option<&'a str>,
    mode_id: Option<&'a str>,
    thinking_option_id: Option<&'a str>,
    feature_values: Option<&'a Value>,
    parent_task_id: Option<uuid::Uuid>,
    arena_id: Option<uuid::Uuid>,
}

impl<'a> Asked<'a> {
    fn new(t: &'a NewTask) -> Self {
        let d = &t.details;
        Asked {
            input: &t.input,
            queue: &t.queue,
            priority: t.priority,
            agent: &t.agent,
            model: d.model.as_deref(),
            backend: d.backend.as_deref(),
            worktree_path: d.worktree_path.as_deref(),
            session_id: d.session_id.as_deref(),
            chat_id: d.chat_id.as_deref(),
            mode_id: d.mode_id.as_deref(),
            thinking_option_id: d.thinking_option_id.as_deref(),
            feature_values: d.feature_values.as_ref(),
            parent_task_id: d.parent_task_id,
            arena_id: d.arena_id,
        }
    }

    fn stored(m: &'a tasks::Model) -> Self {
        Asked {
            input: &m.input,
            queue: &m.queue,
            priority: m.priority,
            agent: &m.agent,
            model: m.model.as_deref(),
            backend: m.backend.as_deref(),
            worktree_path: m.worktree_path.as_deref(),
            session_id: m.session_id.as_deref(),
            chat_id: m.chat_id.as_deref(),
            mode_id: m.mode_id.as_deref(),
            thinking_option_id: m.thinking_option_id.as_deref(),
            feature_values: m.feature_values.as_ref(),
            parent_task_id: m.parent_task_id,
            arena_id: m.arena_id,
        }
    }

    /// The first field in which `self` and `other` differ, if any.
    fn first_difference(&self, other: &Asked) -> Option<&'static str> {
        [
            ("input", self.input == other.input),
            ("queue", self.queue == other.queue),
            ("priority", self.priority == other.priority),
            ("agent", self.agent == other.agent),
            ("model", self.model == other.model),
            ("backend", self.backend == other.backend),
            ("worktree_path", self.worktree_path == other.worktree_path),
            ("session_id", self.session_id == other.session_id),
            ("chat_id", self.chat_id == other.chat_id),
            ("mode_id", self.mode_id == other.mode_id),
            (
                "thinking_option_id",
                self.thinking_option_id == other.thinking_option_id,
            ),
            (
                "feature_values",
                self.feature_values == other.feature_values,
            ),
            (
                "parent_task_id",
                self.parent_task_id == other.parent_task_id,
            ),
            ("arena_id", self.arena_id == other.arena_id),
        ]
        .into_iter()
        .find(|(_, same)| !same)
        .map(|(field, _)| field)
    }
}

#[cfg(test)]
mod tests {
    use anyhow::Result;
    use serde_json::json;
    use turnq_testkit::TestDb;

    use super::super::fixtures::{counts, kinds, meta, new_task, row};
    use crate::{
        event::TaskEvent,
        task::{TaskState, TaskStore},
    };

    #[tokio::test]
    async fn a_submission_writes_a_pending_row_and_its_submitted_event() -> Result<()> {
        let t = TestDb::new().await?;
        let new = new_task(json!({"input": "hello", "agent": "a1", "priority": 7}));
        let submitted = TaskStore::submit(&t.db, new.clone(), &meta()).await?;
        assert!(submitted.created);
        let task = submitted.task;
        assert_eq!(
            (task.state, task.version.0, task.attempt, task.priority),
            (TaskState::Pending, 1, 0, 7)
        );
        assert_eq!(row(&t.db, task.id).await?.agent, "a1");
        let events = TaskStore::events(&t.db, task.id, crate::StreamVersion::NEW, 10).await?;
        assert_eq!(events.len(), 1);
        assert_eq!(
            TaskEvent::from_parts(&events[0].kind, &events[0].data).map_err(anyhow::Error::msg)?,
            TaskEvent::Submitted(Box::new(new)),
            "the event holds the whole validated submission"
        );
        assert_eq!(events[0].metadata, meta());
        Ok(())
    }

    #[tokio::test]
    async fn a_batch_that_breaks_a_rule_of_the_table_writes_nothing() -> Result<()> {
        let t = TestDb::new().await?;
        // Past validation, so only the CHECK constraint stops it: the first task and
        // both events must go with it.
        let mut bad = new_task(json!({"input": "x"}));
        bad.priority = 5000;
        let batch = vec![new_task(json!({"input": "fine"})), bad];
        assert!(
            TaskStore::submit_batch(&t.db, batch, &meta())
                .await
                .is_err()
        );
        assert_eq!(counts(&t.db).await?, (0, 0));
        Ok(())
    }

    #[tokio::test]
    async fn an_idempotency_key_returns_the_task_it_named_first() -> Result<()> {
        let t = TestDb::new().await?;
        let body = json!({"input": "once", "idempotency_key": "k1"});
        let first = TaskStore::submit(&t.db, new_task(body.clone()), &meta()).await?;
        let again = TaskStore::submit(&t.db, new_task(body), &meta()).await?;
        assert!(first.created && !again.created);
        assert_eq!(again.task.id, first.task.id);
        assert_eq!(kinds(&t.db, first.task.id).await?, ["task.submitted"]);
        assert_eq!(counts(&t.db).await?, (1, 1));
        Ok(())
    }

    #[tokio::test]
    async fn a_key_repeated_in_one_batch_names_its_first_task_and_keys_are_per_project()
    -> Result<()> {
        let t = TestDb::new().await?;
        let batch = vec![
            new_task(json!({"input": "a", "idempotency_key": "k"})),
            new_task(json!({"input": "a", "idempotency_key": "k"})),
            new_task(json!({"input": "c", "idempotency_key": "k", "project": "other"})),
        ];
        let out = TaskStore::submit_batch(&t.db, batch, &meta()).await?;
        let created: Vec<bool> = out.iter().map(|s| s.created).collect();
        assert_eq!(created, [true, false, true]);
        assert_eq!(out[0].task.id, out[1].task.id);
        assert_ne!(out[0].task.id, out[2].task.id);
        assert_eq!(counts(&t.db).await?, (2, 2));
        // The key again with other values, in a batch or against a stored task: the
        // whole batch is refused and nothing is written.
        for batch in [
            vec![
                new_task(json!({"input": "x", "idempotency_key": "k2"})),
                new_task(json!({"input": "y", "idempotency_key": "k2"})),
            ],
            vec![
                new_task(json!({"input": "new", "idempotency_key": "fresh"})),
                new_task(json!({"input": "a", "idempotency_key": "k", "priority": 5})),
            ],
        ] {
            assert!(matches!(
                TaskStore::submit_batch(&t.db, batch, &meta()).await,
                Err(crate::Error::IdempotencyKeyReused { .. })
            ));
        }
        assert_eq!(counts(&t.db).await?, (2, 2));
        Ok(())
    }
}

//! The task store: every write to a task is ONE conditional `UPDATE` of its row plus the
//! append of the event that explains it, in one transaction.
//!
//! The condition is what the writer believes: the stream version it read (API
//! transitions), or the state, attempt and worker it holds (workers). Zero rows updated
//! means someone else moved first, and the write is refused, so a stale worker can never
//! overwrite a newer attempt, and a cancelled task is never completed behind a person's
//! back. The row lock taken by the `UPDATE` serialises writers of one stream, which is
//! what keeps its versions gapless.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    time::Duration,
};

use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, DatabaseConnection, EntityTrait, QueryFilter,
    QueryOrder, QuerySelect, QueryTrait, SqlErr, Statement, TransactionTrait,
    sea_query::{Expr, Func, LockBehavior, LockType, Query},
};
use serde_json::Value;
use uuid::Uuid;

use crate::{
    Error, StreamVersion, TaskId, WorkerId,
    entity::tasks::{self, Column},
    error::Result,
    event::{
        Approved, Cancelled, EventStore, LeaseLost, NewEvent, Queued, RecordedEvent, Retried,
        Started, StreamRef, TaskEvent,
    },
    task::{NewTask, Task, TaskState, projection},
    time::{self, Timestamp},
};

/// The outcome of a submission.
#[derive(Debug)]
pub struct Submitted {
    pub task: Task,
    /// False when an `Idempotency-Key` matched an existing task, which is returned.
    pub created: bool,
}

/// Filters of `GET /v1/tasks`; every one given must match.
#[derive(Clone, Debug, Default)]
pub struct TaskFilter {
    pub states: Vec<TaskState>,
    pub agent: Option<String>,
    pub project: Option<String>,
    pub queue: Option<String>,
}

/// One page of tasks, newest first.
#[derive(Debug)]
pub struct TaskPage {
    pub tasks: Vec<Task>,
    /// Pass as `cursor` to get the next page; `None` on the last page.
    pub next_cursor: Option<TaskId>,
}

/// A task the dispatcher hands to Redis.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DueTask {
    pub id: TaskId,
    pub queue: String,
    /// The agent that runs it: workers consume one Redis queue per (queue, agent), so a
    /// task only reaches workers that run its agent.
    pub agent: String,
    /// The attempts made so far: the job carries it, and the claim only succeeds if the
    /// task is still at this attempt, so a stale or duplicate job is harmless.
    pub attempt: i32,
}

/// A task a worker has claimed: it holds the lease of attempt `task.attempt`.
#[derive(Debug)]
pub struct Claimed {
    pub task: Task,
}

/// One write of a running attempt, for [`TaskStore::record_many`].
#[derive(Clone, Debug)]
pub struct Record {
    pub task: TaskId,
    pub attempt: i32,
    pub event: TaskEvent,
}

pub fn stream_of(id: TaskId) -> StreamRef {
    StreamRef::new(TaskEvent::STREAM_TYPE, id.to_string())
}

fn event_row(
    id: TaskId,
    version: i64,
    event: &TaskEvent,
    metadata: &Value,
    at: Timestamp,
) -> crate::entity::events::ActiveModel {
    let (kind, data) = event.to_parts();
    EventStore::row(
        &stream_of(id),
        StreamVersion(version),
        NewEvent {
            kind: kind.into(),
            data,
            metadata: metadata.clone(),
        },
        at,
    )
}

/// Applies `event` to the task's row if `guard` holds, and appends it. `None` when the
/// guard did not hold (nothing was written).
async fn write<C: ConnectionTrait>(
    db: &C,
    id: TaskId,
    guard: Condition,
    event: &TaskEvent,
    metadata: &Value,
    at: Timestamp,
) -> Result<Option<tasks::Model>> {
    let updated = projection::update(event, at)
        .filter(Column::Id.eq(id.0))
        .filter(guard)
        .exec_with_returning(db)
        .await?;
    let Some(row) = updated.into_iter().next() else {
        return Ok(None);
    };
    EventStore::insert(db, vec![event_row(id, row.version, event, metadata, at)]).await?;
    Ok(Some(row))
}

/// What the hot paths read back from an `UPDATE` of tasks.
struct Changed {
    id: Uuid,
    version: i64,
    session_id: Option<String>,
    queue: String,
}

/// Runs `update` and returns the few columns of each changed row that the hot paths
/// need. Reading whole rows back (their JSON input included) was a large share of the
/// cost of a group commit.
async fn update_returning_keys<C: ConnectionTrait>(
    db: &C,
    update: sea_orm::UpdateMany<tasks::Entity>,
) -> Result<Vec<Changed>> {
    let mut statement = update.into_query();
    statement.returning(Query::returning().columns([
        Column::Id,
        Column::Version,
        Column::SessionId,
        Column::Queue,
    ]));
    db.query_all(&statement)
        .await?
        .iter()
        .map(|row| {
            Ok(Changed {
                id: row.try_get("", "id")?,
                version: row.try_get("", "version")?,
                session_id: row.try_get("", "session_id")?,
                queue: row.try_get("", "queue")?,
            })
        })
        .collect()
}

/// When a lease taken (or renewed) at `at` for `lease` runs out, at the precision the
/// database stores.
fn lease_end(at: Timestamp, lease: Duration) -> Timestamp {
    time::truncate(at + chrono::TimeDelta::from_std(lease).unwrap_or(chrono::TimeDelta::MAX))
}

fn worker_guard(attempt: i32, worker: &WorkerId) -> Condition {
    Condition::all()
        .add(Column::State.eq(TaskState::Running.as_str()))
        .add(Column::Attempt.eq(attempt))
        .add(Column::WorkerId.eq(worker.0.as_str()))
}

fn is_unique_violation(e: &Error) -> bool {
    matches!(e, Error::Database(db) if matches!(db.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))))
}

/// The channel the dispatcher LISTENs on: a task became due (inserted, or a session's
/// running turn ended so its next turn may start).
pub const CHANNEL_TASKS_NEW: &str = "tasks_new";
/// The channel workers LISTEN on: the payload is the id of a running task that was
/// cancelled, so its worker stops the turn at once instead of at its next write.
pub const CHANNEL_TASK_CANCELLED: &str = "task_cancelled";

/// `NOTIFY` inside the caller's transaction: delivered on commit, dropped on rollback.
async fn notify<C: ConnectionTrait>(db: &C, channel: &str, payload: &str) -> Result<()> {
    db.execute_raw(Statement::from_sql_and_values(
        db.get_database_backend(),
        "SELECT pg_notify($1, $2)",
        [channel.into(), payload.into()],
    ))
    .await?;
    Ok(())
}

/// A due task as the dispatcher reads it: (id, priority, run_at, queue, agent, attempt).
type DueRow = (Uuid, i32, Timestamp, String, String, i32);

/// Records of one [`TaskStore::record_many`] wave that one `UPDATE` applies: the attempt
/// they guard on, their (identical) column changes, and their indexes.
type WriteGroup = (i32, Vec<(Column, projection::Change)>, Vec<usize>);

/// Reads and writes tasks. Stateless: each method takes the connection to use.
pub struct TaskStore;

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

    pub async fn get<C: ConnectionTrait>(db: &C, id: TaskId) -> Result<Task> {
        tasks::Entity::find_by_id(id.0)
            .one(db)
            .await?
            .ok_or(Error::TaskNotFound(id))
            .and_then(Task::try_from)
    }

    /// Tasks newest first, `limit` at a time, after `cursor` (the last id of the previous
    /// page). Ids are UUIDv7, so id order is creation order.
    pub async fn list<C: ConnectionTrait>(
        db: &C,
        filter: &TaskFilter,
        cursor: Option<TaskId>,
        limit: u64,
    ) -> Result<TaskPage> {
        let mut query = tasks::Entity::find();
        if !filter.states.is_empty() {
            query = query.filter(Column::State.is_in(filter.states.iter().map(|s| s.as_str())));
        }
        if let Some(agent) = &filter.agent {
            query = query.filter(Column::Agent.eq(agent.as_str()));
        }
        if let Some(project) = &filter.project {
            query = query.filter(Column::Project.eq(project.as_str()));
        }
        if let Some(queue) = &filter.queue {
            query = query.filter(Column::Queue.eq(queue.as_str()));
        }
        if let Some(cursor) = cursor {
            query = query.filter(Column::Id.lt(cursor.0));
        }
        let mut rows = query
            .order_by_desc(Column::Id)
            .limit(limit + 1)
            .all(db)
            .await?;
        let more = rows.len() as u64 > limit;
        rows.truncate(limit as usize);
        let tasks = rows
            .into_iter()
            .map(Task::try_from)
            .collect::<Result<Vec<_>>>()?;
        let next_cursor = if more {
            tasks.last().map(|t| t.id)
        } else {
            None
        };
        Ok(TaskPage { tasks, next_cursor })
    }

    /// The task's events after `after`, oldest first.
    pub async fn events<C: ConnectionTrait>(
        db: &C,
        id: TaskId,
        after: StreamVersion,
        limit: u64,
    ) -> Result<Vec<RecordedEvent>> {
        let events = EventStore::read_stream(db, &stream_of(id), after, limit).await?;
        if events.is_empty() && after == StreamVersion::NEW {
            // Every task has its `task.submitted`; no events means no task.
            Self::get(db, id).await?;
        }
        Ok(events)
    }

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

    /// Hands due tasks to `push` (the delivery queue) and records `task.queued` for them,
    /// at most `limit` at a time, highest priority first.
    ///
    /// A task counts as due when it is pending, its `run_at` has come, and it was never
    /// queued, or was queued longer than `redeliver_after` ago without starting (its job
    /// was lost with Redis, or its worker vanished). The rows are taken with
    /// `FOR UPDATE SKIP LOCKED`, so several dispatchers share the work without
    /// overlapping, and `push` runs BEFORE the commit: a crash in between re-pushes
    /// (duplicates are harmless: the claim is conditional), never loses.
    pub async fn dispatch_due<F, Fut>(
        db: &DatabaseConnection,
        limit: u64,
        redeliver_after: Duration,
        metadata: &Value,
        push: F,
    ) -> Result<usize>
    where
        F: FnOnce(Vec<DueTask>) -> Fut,
        Fut: Future<Output = Result<(), Box<dyn std::error::Error + Send + Sync>>>,
    {
        let stale = time::now()
            - chrono::TimeDelta::from_std(redeliver_after).unwrap_or(chrono::TimeDelta::MAX);
        Self::dispatch_due_queued_before(db, limit, stale, &[], metadata, push).await
    }

    /// [`TaskStore::dispatch_due`] with the re-delivery cutoff given as a time: tasks
    /// queued before `stale` count as lost. A caller draining in several rounds keeps
    /// one cutoff for all of them, so what it re-pushed in one round is not re-pushed
    /// again in the next. Tasks of the (queue, agent) pairs in `skip` are left alone
    /// (their Redis queue is full).
    pub async fn dispatch_due_queued_before<F, Fut>(
        db: &DatabaseConnection,
        limit: u64,
        stale: Timestamp,
        skip: &[(String, String)],
        metadata: &Value,
        push: F,
    ) -> Result<usize>
    where
        F: FnOnce(Vec<DueTask>) -> Fut,
        Fut: Future<Output = Result<(), Box<dyn std::error::Error + Send + Sync>>>,
    {
        let at = time::now();
        let txn = db.begin().await?;
        // Two queries, each walking its own partial index in dispatch order and stopping
        // at `limit`: tasks never handed over (`tasks_dispatch_idx`), and tasks handed
        // over before `stale` (`tasks_queued_idx`, re-deliveries: rare). One query with
        // `queued_at IS NULL OR queued_at < stale` could use neither index, and would read
        // and sort the whole backlog every round.
        let mut due = Self::due(&txn, at, Column::QueuedAt.is_null(), stale, skip, limit).await?;
        let stale_ones =
            Self::due(&txn, at, Column::QueuedAt.lt(stale), stale, skip, limit).await?;
        if !stale_ones.is_empty() {
            due.extend(stale_ones);
            due.sort_by(|a, b| b.1.cmp(&a.1).then(a.2.cmp(&b.2)).then(a.0.cmp(&b.0)));
            due.truncate(limit as usize);
        }
        let due: Vec<(Uuid, String, String, i32)> = due
            .into_iter()
            .map(|(id, _, _, queue, agent, attempt)| (id, queue, agent, attempt))
            .collect();
        if due.is_empty() {
            return Ok(0);
        }
        let ids: Vec<Uuid> = due.iter().map(|(id, _, _, _)| *id).collect();
        push(
            due.into_iter()
                .map(|(id, queue, agent, attempt)| DueTask {
                    id: TaskId(id),
                    queue,
                    agent,
                    attempt,
                })
                .collect(),
        )
        .await
        .map_err(Error::Delivery)?;

        // `task.queued` changes the same columns whatever its queue, so one statement
        // updates every row; each event then names its own task's queue.
        let template = TaskEvent::Queued(Queued {
            queue: String::new(),
        });
        let rows = update_returning_keys(
            &txn,
            projection::update(&template, at).filter(Column::Id.is_in(ids)),
        )
        .await?;
        let events = rows
            .iter()
            .map(|row| {
                let event = TaskEvent::Queued(Queued {
                    queue: row.queue.clone(),
                });
                event_row(TaskId(row.id), row.version, &event, metadata, at)
            })
            .collect();
        EventStore::insert(&txn, events).await?;
        txn.commit().await?;
        Ok(rows.len())
    }

    /// Due pending tasks matching `which` (never queued, or queued before `stale`),
    /// highest priority first, locked with `SKIP LOCKED`: (id, priority, run_at, queue,
    /// agent, attempt).
    async fn due(
        txn: &sea_orm::DatabaseTransaction,
        at: Timestamp,
        which: sea_orm::sea_query::SimpleExpr,
        stale: Timestamp,
        skip: &[(String, String)],
        limit: u64,
    ) -> Result<Vec<DueRow>> {
        Ok(tasks::Entity::find()
            .select_only()
            .columns([
                Column::Id,
                Column::Priority,
                Column::RunAt,
                Column::Queue,
                Column::Agent,
                Column::Attempt,
            ])
            .filter(Column::State.eq(TaskState::Pending.as_str()))
            .filter(which)
            .filter(Column::RunAt.lte(at))
            // One turn per session at a time, in submission order: a task of a session
            // waits while an earlier task of it is running, handed to Redis, or still
            // pending. (The unique index `tasks_one_running_turn_per_session_uidx` makes a
            // second running turn impossible even if a stale job slips through.)
            .filter(Expr::cust_with_values(
                "(tasks.session_id IS NULL OR NOT EXISTS (
                    SELECT 1 FROM tasks AS other
                    WHERE other.project = tasks.project
                      AND other.session_id = tasks.session_id
                      AND other.id <> tasks.id
                      AND (other.state = 'running'
                           OR (other.state = 'pending' AND other.queued_at >= $1)
                           OR (other.state = 'pending' AND other.id < tasks.id))))",
                [stale],
            ))
            .filter(skip.iter().fold(Condition::all(), |all, (queue, agent)| {
                all.add(
                    Condition::any()
                        .add(Column::Queue.ne(queue.as_str()))
                        .add(Column::Agent.ne(agent.as_str())),
                )
            }))
            // The order of `tasks_dispatch_idx`, then the id (UUIDv7: submission order).
            .order_by_desc(Column::Priority)
            .order_by_asc(Column::RunAt)
            .order_by_asc(Column::CreatedAt)
            .order_by_asc(Column::Id)
            .limit(limit)
            .lock_with_behavior(LockType::Update, LockBehavior::SkipLocked)
            .into_tuple()
            .all(txn)
            .await?)
    }

    /// How many tasks wait in each (queue, agent) Redis queue: handed over at or after
    /// `since` and not yet started (tasks queued before `since` count as lost, and are
    /// pushed again). The dispatcher bounds each pair on its own, so a backlog of an agent
    /// no worker runs cannot hold back every other agent's work.
    pub async fn queued_by_pair<C: ConnectionTrait>(
        db: &C,
        since: Timestamp,
    ) -> Result<Vec<(String, String, i64)>> {
        Ok(tasks::Entity::find()
            .select_only()
            .column(Column::Queue)
            .column(Column::Agent)
            .expr(Func::count(Expr::col(Column::Id)))
            .filter(Column::State.eq(TaskState::Pending.as_str()))
            .filter(Column::QueuedAt.gte(since))
            .group_by(Column::Queue)
            .group_by(Column::Agent)
            .into_tuple()
            .all(db)
            .await?)
    }

    /// Claims the task for `worker` if it is still pending at `attempt` (the job's view).
    /// `None` means the job is stale or a duplicate (the task was cancelled, finished, or
    /// claimed by someone else): ack it and do nothing.
    pub async fn claim(
        db: &DatabaseConnection,
        id: TaskId,
        attempt: i32,
        worker: &WorkerId,
        lease: Duration,
        metadata: &Value,
    ) -> Result<Option<Claimed>> {
        let at = time::now();
        let event = TaskEvent::Started(Started {
            attempt: attempt + 1,
            worker_id: worker.0.clone(),
            lease_until: lease_end(at, lease),
        });
        let guard = Condition::all()
            .add(Column::State.eq(TaskState::Pending.as_str()))
            .add(Column::Attempt.eq(attempt));
        let txn = db.begin().await?;
        let row = match write(&txn, id, guard, &event, metadata, at).await {
            Ok(Some(row)) => row,
            Ok(None) => return Ok(None),
            // Another turn of the same session is running: this job is not ours to run
            // now. The task stays queued and is delivered again.
            Err(e) if is_unique_violation(&e) => {
                tracing::debug!(task_id = %id, "claim refused: another turn of the session is running");
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        txn.commit().await?;
        Ok(Some(Claimed {
            task: Task::try_from(row)?,
        }))
    }

    /// Claims several tasks for `worker` in ONE transaction: the batched form of
    /// [`TaskStore::claim`], with the same rule for each `(task, attempt)` of `jobs`.
    /// Returns the tasks claimed, in the order of `jobs`; a job that is stale or a
    /// duplicate is left out.
    ///
    /// The rows are locked in id order before they are updated, so two workers claiming
    /// overlapping batches (duplicate deliveries) wait for each other instead of
    /// deadlocking. If the batch would start a second running turn of a session (the
    /// unique index refuses the whole statement), the tasks are claimed one by one, so
    /// only the offending one is refused.
    pub async fn claim_many(
        db: &DatabaseConnection,
        jobs: &[(TaskId, i32)],
        worker: &WorkerId,
        lease: Duration,
        metadata: &Value,
    ) -> Result<Vec<Claimed>> {
        if let [(id, attempt)] = jobs {
            return Ok(Self::claim(db, *id, *attempt, worker, lease, metadata)
                .await?
                .into_iter()
                .collect());
        }
        match Self::try_claim_many(db, jobs, worker, lease, metadata).await {
            Err(e) if is_unique_violation(&e) => {
                let mut claimed = Vec::new();
                for (id, attempt) in jobs {
                    match Self::claim(db, *id, *attempt, worker, lease, metadata).await {
                        Ok(one) => claimed.extend(one),
                        // The ones claimed so far are committed: they must run, so they
                        // are returned; the rest stay queued and are delivered again.
                        Err(e) if !claimed.is_empty() => {
                            tracing::warn!(task_id = %id, error = %crate::error::chain(&e),
                                claimed = claimed.len(),
                                "claiming one by one stopped part-way; running what was claimed");
                            break;
                        }
                        Err(e) => return Err(e),
                    }
                }
                Ok(claimed)
            }
            other => other,
        }
    }

    async fn try_claim_many(
        db: &DatabaseConnection,
        jobs: &[(TaskId, i32)],
        worker: &WorkerId,
        lease: Duration,
        metadata: &Value,
    ) -> Result<Vec<Claimed>> {
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        let at = time::now();
        let lease_until = lease_end(at, lease);
        let txn = db.begin().await?;
        // Read first, lock second, and lock only the tasks that look claimable: a
        // duplicate delivery of a task running elsewhere must not lock its row, or this
        // claim and that worker's group commit could lock two rows in opposite orders.
        let read = |ids: Vec<Uuid>, lock: bool| {
            let mut query = tasks::Entity::find()
                .select_only()
                .columns([Column::Id, Column::State, Column::Attempt])
                .filter(Column::Id.is_in(ids))
                .order_by_asc(Column::Id);
            if lock {
                query = query.lock(LockType::Update);
            }
            query.into_tuple::<(Uuid, String, i32)>().all(&txn)
        };
        let wanted: HashSet<(Uuid, i32)> = jobs.iter().map(|(id, a)| (id.0, *a)).collect();
        let claimable = |rows: Vec<(Uuid, String, i32)>| -> Vec<Uuid> {
            rows.into_iter()
                .filter(|(id, state, attempt)| {
                    state == TaskState::Pending.as_str() && wanted.contains(&(*id, *attempt))
                })
                .map(|(id, _, _)| id)
                .collect()
        };
        let candidates = claimable(read(jobs.iter().map(|(id, _)| id.0).collect(), false).await?);
        // Locked (in id order, so claimers wait for each other instead of deadlocking)
        // until the commit, so the claim's condition (pending, at the job's attempt) is
        // checked again here and the UPDATE names the ids alone: with `state = 'pending'`
        // in its WHERE, the planner may AND the id lookup with a scan of every pending
        // task's index entry, the whole backlog on every claim.
        let locked = if candidates.is_empty() {
            Vec::new()
        } else {
            read(candidates, true).await?
        };
        let pending: HashMap<Uuid, i32> = locked
            .into_iter()
            .filter(|(_, state, _)| state == TaskState::Pending.as_str())
            .map(|(id, _, attempt)| (id, attempt))
            .collect();
        // One statement per attempt number (the event sets the attempt); a batch is
        // nearly always one.
        let mut by_attempt: BTreeMap<i32, Vec<Uuid>> = BTreeMap::new();
        for (id, attempt) in jobs {
            if pending.get(&id.0) == Some(attempt) {
                by_attempt.entry(*attempt).or_default().push(id.0);
            }
        }
        let mut rows = Vec::with_capacity(jobs.len());
        let mut events = Vec::with_capacity(jobs.len());
        for (attempt, ids) in by_attempt {
            let event = TaskEvent::Started(Started {
                attempt: attempt + 1,
                worker_id: worker.0.clone(),
                lease_until,
            });
            let updated = projection::update(&event, at)
                .filter(Column::Id.is_in(ids))
                .exec_with_returning(&txn)
                .await?;
            for row in updated {
                events.push(event_row(TaskId(row.id), row.version, &event, metadata, at));
                rows.push(row);
            }
        }
        EventStore::insert(&txn, events).await?;
        txn.commit().await?;
        let mut claimed = Vec::with_capacity(rows.len());
        for (id, _) in jobs {
            if let Some(i) = rows.iter().position(|row| row.id == id.0) {
                claimed.push(Claimed {
                    task: Task::try_from(rows.swap_remove(i))?,
                });
            }
        }
        Ok(claimed)
    }

    /// Records many events of running attempts in ONE transaction (group commit): the
    /// batched form of [`TaskStore::record`], with the same guard for each record.
    /// The answer has one result per record, in order: the task's stream version after
    /// it, or why it was refused ([`Error::Fenced`], [`Error::IllegalTransition`]). A
    /// database error fails the whole batch and writes nothing.
    ///
    /// Records of one task are applied in their order. Records whose column changes are
    /// identical (every `task.output`, or the same ending) share one `UPDATE`; the events
    /// go in with one multi-row insert.
    pub async fn record_many(
        db: &DatabaseConnection,
        worker: &WorkerId,
        records: &[Record],
        metadata: &Value,
    ) -> Result<Vec<Result<StreamVersion>>> {
        let at = time::now();
        let mut out: Vec<Option<Result<StreamVersion>>> = records.iter().map(|_| None).collect();
        // Wave n holds the n-th record of each task, so a task appears once per wave.
        let mut waves: Vec<Vec<usize>> = Vec::new();
        let mut per_task: HashMap<TaskId, usize> = HashMap::new();
        for (i, record) in records.iter().enumerate() {
            if TaskState::Running.after(&record.event).is_none() {
                out[i] = Some(Err(Error::IllegalTransition {
                    task: record.task,
                    from: TaskState::Running,
                    action: record.event.kind(),
                }));
                continue;
            }
            let wave = per_task.entry(record.task).or_default();
            if waves.len() <= *wave {
                waves.push(Vec::new());
            }
            waves[*wave].push(i);
            *wave += 1;
        }
        if waves.is_empty() {
            return Ok(out.into_iter().flatten().collect());
        }

        let txn = db.begin().await?;
        let mut events = Vec::with_capacity(records.len());
        let mut session_ended = false;
        for wave in waves {
            let mut groups: Vec<WriteGroup> = Vec::new();
            for i in wave {
                let record = &records[i];
                let changes = projection::changes(&record.event, at);
                match groups.iter_mut().find(|(attempt, group, _)| {
                    *attempt == record.attempt && projection::same_changes(group, &changes)
                }) {
                    Some((_, _, members)) => members.push(i),
                    None => groups.push((record.attempt, changes, vec![i])),
                }
            }
            for (attempt, _, members) in groups {
                let first = &records[members[0]];
                let updated = update_returning_keys(
                    &txn,
                    projection::update(&first.event, at)
                        .filter(Column::Id.is_in(members.iter().map(|&i| records[i].task.0)))
                        .filter(worker_guard(attempt, worker)),
                )
                .await?;
                for i in members {
                    let record = &records[i];
                    out[i] = Some(match updated.iter().find(|row| row.id == record.task.0) {
                        Some(row) => {
                            events.push(event_row(
                                record.task,
                                row.version,
                                &record.event,
                                metadata,
                                at,
                            ));
                            if row.session_id.is_some()
                                && !matches!(record.event, TaskEvent::Output(_))
                            {
                                session_ended = true;
                            }
                            Ok(StreamVersion(row.version))
                        }
                        None => Err(Error::Fenced {
                            task: record.task,
                            attempt: record.attempt,
                            worker: worker.0.clone(),
                        }),
                    });
                }
            }
        }
        EventStore::insert(&txn, events).await?;
        if session_ended {
            // A session's next turn may start now.
            notify(&txn, CHANNEL_TASKS_NEW, "").await?;
        }
        txn.commit().await?;
        Ok(out.into_iter().flatten().collect())
    }

    /// Records an event of a running attempt (`task.output`, or the attempt's end) on the
    /// condition that `worker` still owns `attempt`; otherwise [`Error::Fenced`].
    pub async fn record(
        db: &DatabaseConnection,
        id: TaskId,
        attempt: i32,
        worker: &WorkerId,
        event: &TaskEvent,
        metadata: &Value,
    ) -> Result<Task> {
        if TaskState::Running.after(event).is_none() {
            return Err(Error::IllegalTransition {
                task: id,
                from: TaskState::Running,
                action: event.kind(),
            });
        }
        let txn = db.begin().await?;
        let written = write(
            &txn,
            id,
            worker_guard(attempt, worker),
            event,
            metadata,
            time::now(),
        )
        .await?;
        let Some(row) = written else {
            return Err(Error::Fenced {
                task: id,
                attempt,
                worker: worker.0.clone(),
            });
        };
        if row.session_id.is_some() && !matches!(event, TaskEvent::Output(_)) {
            // The session's next turn may start now.
            notify(&txn, CHANNEL_TASKS_NEW, "").await?;
        }
        txn.commit().await?;
        Task::try_from(row)
    }

    /// Extends to now + `lease` the leases of the (task, attempt) pairs `worker` holds,
    /// in ONE statement, and returns the pairs it extended. A pair missing from the
    /// answer is no longer this worker's (cancelled, or taken over after its lease
    /// expired): its turn must stop. Only rows still running under this worker at that
    /// attempt are touched, so a renewal can never revive a task that moved on.
    ///
    /// Not an event: a renewal per task per heartbeat would dwarf the log, so the lease
    /// is runtime state, and `turnq replay --verify` leaves it out.
    pub async fn extend_leases<C: ConnectionTrait>(
        db: &C,
        worker: &WorkerId,
        held: &[(TaskId, i32)],
        lease: Duration,
    ) -> Result<HashSet<(TaskId, i32)>> {
        if held.is_empty() {
            return Ok(HashSet::new());
        }
        let until = lease_end(time::now(), lease);
        let pairs = held.iter().fold(Condition::any(), |any, (task, attempt)| {
            any.add(
                Condition::all()
                    .add(Column::Id.eq(task.0))
                    .add(Column::Attempt.eq(*attempt)),
            )
        });
        let rows: Vec<(Uuid, i32)> = tasks::Entity::update_many()
            .col_expr(Column::LeaseUntil, Expr::value(Some(until)))
            .filter(Column::State.eq(TaskState::Running.as_str()))
            .filter(Column::WorkerId.eq(worker.0.as_str()))
            .filter(pairs)
            .exec_with_returning(db)
            .await?
            .into_iter()
            .map(|row| (row.id, row.attempt))
            .collect();
        Ok(rows
            .into_iter()
            .map(|(id, attempt)| (TaskId(id), attempt))
            .collect())
    }

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

//! Queues as first-class objects: the queues tasks have used, what each holds, and
//! pausing one.
//!
//! A queue exists from its first task (a trigger on `tasks` adds it). Pausing it stops
//! the dispatcher from handing its tasks to Redis; what is already in Redis still runs.
//! Pausing and resuming are events of the queue's own stream (`queue.paused`,
//! `queue.resumed`), written with the row change in one transaction like every task
//! transition, so the log tells who paused what and when.
//!
//! The figures stay fast with millions of tasks: they are kept in memory from the event
//! log ([`QueueTally`], loaded once through a partial index of the open tasks and a BRIN
//! index of `ended_at`), so reading them reads no table. [`QueueStore::counted`] counts
//! them in Postgres instead, for checking the tally.

mod tally;

pub use tally::{DayUsage, QueueFigures, QueueTally};

use std::collections::BTreeMap;

use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait,
    FromQueryResult, QueryFilter, QueryOrder, QuerySelect, Set, TransactionTrait,
    sea_query::{Expr, ExprTrait, Func, SimpleExpr},
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{
    Error, StreamVersion,
    entity::{queues, tasks},
    error::Result,
    event::{EventStore, NewEvent, StreamRef},
    task::{TaskState, check_name},
    time::{self, Timestamp},
};

/// The stream type of queue events.
pub const STREAM_TYPE: &str = "queue";

/// The events of a queue's stream.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "data")]
pub enum QueueEvent {
    /// The dispatcher stops handing the queue's tasks to Redis.
    #[serde(rename = "queue.paused")]
    Paused {},
    /// The dispatcher hands the queue's tasks to Redis again.
    #[serde(rename = "queue.resumed")]
    Resumed {},
}

impl QueueEvent {
    pub fn kind(&self) -> &'static str {
        match self {
            QueueEvent::Paused {} => "queue.paused",
            QueueEvent::Resumed {} => "queue.resumed",
        }
    }
}

/// A queue.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Queue {
    pub name: String,
    pub paused: bool,
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub created_at: Timestamp,
}

impl From<queues::Model> for Queue {
    fn from(m: queues::Model) -> Self {
        Queue {
            name: m.name,
            paused: m.paused,
            created_at: m.created_at,
        }
    }
}

/// A queue and what it holds now.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct QueueStats {
    #[serde(flatten)]
    pub queue: Queue,
    #[serde(flatten)]
    pub figures: QueueFigures,
    /// Agents that tasks of this queue wait for and that no live worker serves on it:
    /// those tasks were pushed to Redis once and wait there for such a worker.
    pub unserved: Vec<UnservedAgent>,
}

/// Tasks waiting in a queue for an agent that no live worker runs on that queue.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct UnservedAgent {
    pub queue: String,
    pub agent: String,
    /// Pending tasks (queued or not) waiting for it.
    pub waiting: i64,
    /// `no worker serves agent X on queue Q: N tasks wait`.
    pub message: String,
}

impl QueueStats {
    /// The queue's figures, with the agents none of the `served` (queue, agent) pairs
    /// (`WorkerRegistry::served_pairs`) covers listed as unserved.
    pub fn new(
        queue: Queue,
        figures: QueueFigures,
        served: &std::collections::BTreeSet<(String, String)>,
    ) -> Self {
        let unserved = figures
            .waiting_by_agent
            .iter()
            .filter(|(agent, _)| !served.contains(&(queue.name.clone(), (*agent).clone())))
            .map(|(agent, waiting)| UnservedAgent {
                queue: queue.name.clone(),
                agent: agent.clone(),
                waiting: *waiting,
                message: format!(
                    "no worker serves agent {agent} on queue {}: {waiting} task{} wait{} for one",
                    queue.name,
                    if *waiting == 1 { "" } else { "s" },
                    if *waiting == 1 { "s" } else { "" },
                ),
            })
            .collect();
        QueueStats {
            queue,
            figures,
            unserved,
        }
    }
}

/// The backlog figures of one queue, from `tasks_queue_open_idx`.
#[derive(Debug, Default, FromQueryResult)]
struct Backlog {
    queue: String,
    pending: i64,
    queued: i64,
    running: i64,
    blocked: i64,
    failed: i64,
    failed_last_minute: i64,
    failed_last_hour: i64,
    oldest_due: Option<Timestamp>,
}

/// Completions of one queue in the last hour, through `tasks_ended_brin`.
#[derive(Debug, Default, FromQueryResult)]
struct Completions {
    queue: String,
    last_minute: i64,
    last_hour: i64,
}

/// `SUM(CASE WHEN cond THEN 1 ELSE 0 END)`, as a bigint.
fn count_if(cond: SimpleExpr) -> SimpleExpr {
    let sum: Expr = Func::sum(Expr::case(cond, 1i64).finally(0i64)).into();
    Expr::from(Func::coalesce([sum, Expr::val(0i64)])).cast_as("bigint")
}

/// Queues: listing with their figures, pausing and resuming.
pub struct QueueStore;

impl QueueStore {
    /// Every queue, by name.
    pub async fn list<C: ConnectionTrait>(db: &C) -> Result<Vec<Queue>> {
        Ok(queues::Entity::find()
            .order_by_asc(queues::Column::Name)
            .all(db)
            .await?
            .into_iter()
            .map(Queue::from)
            .collect())
    }

    /// One queue; `NotFound` when it does not exist.
    pub async fn get<C: ConnectionTrait>(db: &C, name: &str) -> Result<Queue> {
        Ok(Self::row(db, name).await?.into())
    }

    /// The names of the paused queues.
    pub async fn paused<C: ConnectionTrait>(db: &C) -> Result<Vec<String>> {
        Ok(queues::Entity::find()
            .select_only()
            .column(queues::Column::Name)
            .filter(queues::Column::Paused.eq(true))
            .into_tuple()
            .all(db)
            .await?)
    }

    /// Pauses `name` (recording `queue.paused`); pausing a paused queue changes
    /// nothing and records nothing.
    pub async fn pause(db: &DatabaseConnection, name: &str, metadata: &Value) -> Result<Queue> {
        Self::set_paused(db, name, true, metadata).await?;
        Self::get(db, name).await
    }

    /// Resumes `name` (recording `queue.resumed`); resuming a running queue changes
    /// nothing and records nothing.
    pub async fn resume(db: &DatabaseConnection, name: &str, metadata: &Value) -> Result<Queue> {
        Self::set_paused(db, name, false, metadata).await?;
        Self::get(db, name).await
    }

    async fn set_paused(
        db: &DatabaseConnection,
        name: &str,
        paused: bool,
        metadata: &Value,
    ) -> Result<()> {
        check_name("queue", name)?;
        let txn = db.begin().await?;
        // Locked, so two operators pausing at once append versions one after the other.
        let row = queues::Entity::find_by_id(name.to_owned())
            .lock_exclusive()
            .one(&txn)
            .await?
            .ok_or_else(|| unknown(name))?;
        if row.paused == paused {
            return Ok(());
        }
        let event = if paused {
            QueueEvent::Paused {}
        } else {
            QueueEvent::Resumed {}
        };
        let version = row.version + 1;
        let now = time::now();
        let mut active: queues::ActiveModel = row.into();
        active.paused = Set(paused);
        active.version = Set(version);
        active.updated_at = Set(now);
        active.update(&txn).await?;
        let data = match serde_json::to_value(&event) {
            Ok(Value::Object(mut o)) => o
                .remove("data")
                .unwrap_or(Value::Object(Default::default())),
            _ => Value::Object(Default::default()),
        };
        EventStore::insert(
            &txn,
            vec![EventStore::row(
                &StreamRef::new(STREAM_TYPE, name),
                StreamVersion(version),
                NewEvent {
                    kind: event.kind().into(),
                    data,
                    metadata: metadata.clone(),
                },
                now,
            )],
        )
        .await?;
        txn.commit().await?;
        Ok(())
    }

    async fn row<C: ConnectionTrait>(db: &C, name: &str) -> Result<queues::Model> {
        check_name("queue", name)?;
        queues::Entity::find_by_id(name.to_owned())
            .one(db)
            .await?
            .ok_or_else(|| unknown(name))
    }

    /// Every queue's figures counted in Postgres (through the same indexes the tally
    /// loads from): exact, and a read of the whole backlog, so for checking the tally,
    /// not for every request.
    pub async fn counted<C: ConnectionTrait>(db: &C) -> Result<Vec<QueueStats>> {
        let rows = queues::Entity::find()
            .order_by_asc(queues::Column::Name)
            .all(db)
            .await?;
        Self::with_figures(db, rows, None).await
    }

    /// The figures of `rows`' queues (of `only` when given: one queue).
    async fn with_figures<C: ConnectionTrait>(
        db: &C,
        rows: Vec<queues::Model>,
        only: Option<&str>,
    ) -> Result<Vec<QueueStats>> {
        let now = time::now();
        let minute_ago = now - chrono::TimeDelta::minutes(1);
        let hour_ago = now - chrono::TimeDelta::hours(1);
        use tasks::Column as C;
        let state = |s: TaskState| Expr::col(C::State).eq(s);
        let mut backlog = tasks::Entity::find()
            .select_only()
            .column(C::Queue)
            .expr_as(
                count_if(state(TaskState::Pending).and(Expr::col(C::QueuedAt).is_null())),
                "pending",
            )
            .expr_as(
                count_if(state(TaskState::Pending).and(Expr::col(C::QueuedAt).is_not_null())),
                "queued",
            )
            .expr_as(count_if(state(TaskState::Running)), "running")
            .expr_as(count_if(state(TaskState::Blocked)), "blocked")
            .expr_as(count_if(state(TaskState::Failed)), "failed")
            .expr_as(
                count_if(state(TaskState::Failed).and(Expr::col(C::EndedAt).gt(minute_ago))),
                "failed_last_minute",
            )
            .expr_as(
                count_if(state(TaskState::Failed).and(Expr::col(C::EndedAt).gt(hour_ago))),
                "failed_last_hour",
            )
            .expr_as(
                Func::min(
                    Expr::case(
                        state(TaskState::Pending).and(Expr::col(C::RunAt).lte(now)),
                        Expr::col(C::RunAt),
                    )
                    .finally(Expr::null()),
                ),
                "oldest_due",
            )
            // The predicate of `tasks_queue_open_idx`, so the planner can use it.
            .filter(C::State.is_in([
                TaskState::Pending,
                TaskState::Running,
                TaskState::Blocked,
                TaskState::Failed,
            ]))
            .group_by(C::Queue);
        let mut completions = tasks::Entity::find()
            .select_only()
            .column(C::Queue)
            .expr_as(
                count_if(Expr::col(C::EndedAt).gt(minute_ago)),
                "last_minute",
            )
            .expr_as(Func::count(Expr::col(C::Id)).cast_as("bigint"), "last_hour")
            .filter(C::EndedAt.gt(hour_ago))
            .filter(C::State.eq(TaskState::Completed))
            .group_by(C::Queue);
        let mut waiting = tasks::Entity::find()
            .select_only()
            .columns([C::Queue, C::Agent])
            .expr(Func::count(Expr::col(C::Id)).cast_as("bigint"))
            .filter(C::State.eq(TaskState::Pending))
            .group_by(C::Queue)
            .group_by(C::Agent);
        if let Some(name) = only {
            backlog = backlog.filter(C::Queue.eq(name));
            completions = completions.filter(C::Queue.eq(name));
            waiting = waiting.filter(C::Queue.eq(name));
        }
        let served = crate::worker::WorkerRegistry::served_pairs(db).await?;
        let mut waiting_by_agent: BTreeMap<String, BTreeMap<String, i64>> = BTreeMap::new();
        for (queue, agent, n) in waiting
            .into_tuple::<(String, String, i64)>()
            .all(db)
            .await?
        {
            waiting_by_agent.entry(queue).or_default().insert(agent, n);
        }
        let backlog: BTreeMap<String, Backlog> = backlog
            .into_model::<Backlog>()
            .all(db)
            .await?
            .into_iter()
            .map(|b| (b.queue.clone(), b))
            .collect();
        let completions: BTreeMap<String, Completions> = completions
            .into_model::<Completions>()
            .all(db)
            .await?
            .into_iter()
            .map(|c| (c.queue.clone(), c))
            .collect();
        Ok(rows
            .into_iter()
            .map(|row| {
                let b = backlog.get(&row.name);
                let c = completions.get(&row.name);
                let oldest = b
                    .and_then(|b| b.oldest_due)
                    .map(|due| Ord::max((now - due).num_milliseconds(), 0) as f64 / 1000.0)
                    .unwrap_or(0.0);
                let figures = QueueFigures {
                    pending: b.map_or(0, |b| b.pending),
                    queued: b.map_or(0, |b| b.queued),
                    running: b.map_or(0, |b| b.running),
                    blocked: b.map_or(0, |b| b.blocked),
                    failed: b.map_or(0, |b| b.failed),
                    oldest_pending_seconds: oldest,
                    completed_last_minute: c.map_or(0, |c| c.last_minute),
                    completed_last_hour: c.map_or(0, |c| c.last_hour),
                    failed_last_minute: b.map_or(0, |b| b.failed_last_minute),
                    failed_last_hour: b.map_or(0, |b| b.failed_last_hour),
                    waiting_by_agent: waiting_by_agent.remove(&row.name).unwrap_or_default(),
                };
                QueueStats::new(row.into(), figures, &served)
            })
            .collect())
    }
}

fn unknown(name: &str) -> Error {
    Error::NotFound(format!(
        "queue {name:?} does not exist: a queue exists once a task has been submitted to it"
    ))
}

//! The dispatcher's side: taking due tasks (in priority order, one turn per session at a
//! time) and recording that they were handed to Redis.

use std::{collections::BTreeSet, time::Duration};

use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, DatabaseConnection, EntityTrait, QueryFilter,
    QueryOrder, QuerySelect, TransactionTrait,
    sea_query::{Expr, ExprTrait, Func, LockBehavior, LockType, Query, SelectStatement},
};
use serde_json::Value;
use uuid::Uuid;

use super::{TaskStore, event_row, update_returning_keys};
use crate::{
    Error, TaskId,
    entity::{
        queues,
        tasks::{self, Column},
    },
    error::Result,
    event::{EventStore, Queued, TaskEvent},
    task::{TaskState, projection},
    time::{self, Timestamp},
};

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
    /// For a task naming a repository: the host its session's worktree lives on, where
    /// its turn should run while that host is alive.
    pub host: Option<String>,
}

/// A due task as the dispatcher reads it: (id, priority, run_at, queue, agent, attempt,
/// worktree host).
type DueRow = (Uuid, i32, Timestamp, String, String, i32, Option<String>);

impl TaskStore {
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
        Self::dispatch_due_queued_before(db, limit, stale, &[], None, metadata, push).await
    }

    /// [`TaskStore::dispatch_due`] with the re-delivery cutoff given as a time: tasks
    /// queued before `stale` count as lost. A caller draining in several rounds keeps
    /// one cutoff for all of them, so what it re-pushed in one round is not re-pushed
    /// again in the next. Tasks of the (queue, agent) pairs in `skip` are left alone
    /// (their Redis queue is full). With `redeliver_to`, only tasks of those pairs are
    /// pushed again (the pairs some live worker serves: a task no worker takes is pushed
    /// once and waits in Redis, instead of being pushed again and again).
    #[allow(clippy::too_many_arguments)]
    pub async fn dispatch_due_queued_before<F, Fut>(
        db: &DatabaseConnection,
        limit: u64,
        stale: Timestamp,
        skip: &[(String, String)],
        redeliver_to: Option<&BTreeSet<(String, String)>>,
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
        let stale_ones = match redeliver_to {
            Some(pairs) if pairs.is_empty() => Vec::new(),
            Some(pairs) => {
                let served = pairs.iter().fold(Condition::any(), |any, (queue, agent)| {
                    any.add(
                        Condition::all()
                            .add(Column::Queue.eq(queue.as_str()))
                            .add(Column::Agent.eq(agent.as_str())),
                    )
                });
                let which = Condition::all().add(Column::QueuedAt.lt(stale)).add(served);
                Self::due(&txn, at, which.into(), stale, skip, limit).await?
            }
            None => Self::due(&txn, at, Column::QueuedAt.lt(stale), stale, skip, limit).await?,
        };
        if !stale_ones.is_empty() {
            due.extend(stale_ones);
            due.sort_by(|a, b| b.1.cmp(&a.1).then(a.2.cmp(&b.2)).then(a.0.cmp(&b.0)));
            due.truncate(limit as usize);
        }
        if due.is_empty() {
            return Ok(0);
        }
        let ids: Vec<Uuid> = due.iter().map(|row| row.0).collect();
        push(
            due.into_iter()
                .map(|(id, _, _, queue, agent, attempt, host)| DueTask {
                    id: TaskId(id),
                    queue,
                    agent,
                    attempt,
                    host,
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
            // Only tasks naming a repository look their worktree up (CASE is lazy).
            .expr(Expr::cust(
                "CASE WHEN tasks.repo IS NULL THEN NULL ELSE (SELECT w.host FROM worktrees w \
                 WHERE w.project = tasks.project AND w.session_id = tasks.session_id \
                 AND w.status = 'active') END",
            ))
            .filter(Column::State.eq(TaskState::Pending))
            .filter(which)
            .filter(Column::RunAt.lte(at))
            // One turn per session at a time, in submission order: a task of a session
            // waits while an earlier task of it is running, handed to Redis, or still
            // pending. (The unique index `tasks_one_running_turn_per_session_uidx` makes a
            // second running turn impossible even if a stale job slips through.)
            .filter(
                Condition::any()
                    .add(Column::SessionId.is_null())
                    .add(Expr::not_exists(Self::turn_ahead(stale))),
            )
            // A paused queue is not dispatched (what it has in Redis still runs).
            .filter(
                Column::Queue.not_in_subquery(
                    Query::select()
                        .column(queues::Column::Name)
                        .from(queues::Entity)
                        .and_where(Expr::col(queues::Column::Paused).eq(true))
                        .take(),
                ),
            )
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

    /// The tasks of the same session that the outer `tasks` row must wait for: another
    /// task of its (project, session) that is running, handed to Redis at or after
    /// `stale`, or pending and submitted before it. A correlated sub-query, `tasks AS
    /// other`.
    fn turn_ahead(stale: Timestamp) -> SelectStatement {
        const OTHER: &str = "other";
        let other = |c: Column| Expr::col((OTHER, c));
        let this = |c: Column| Expr::col((tasks::Entity, c));
        let pending = || other(Column::State).eq(TaskState::Pending);
        Query::select()
            .column((OTHER, Column::Id))
            .from_as(tasks::Entity, OTHER)
            .and_where(other(Column::Project).eq(this(Column::Project)))
            .and_where(other(Column::SessionId).eq(this(Column::SessionId)))
            .and_where(other(Column::Id).ne(this(Column::Id)))
            .cond_where(
                Condition::any()
                    .add(other(Column::State).eq(TaskState::Running))
                    .add(pending().and(other(Column::QueuedAt).gte(stale)))
                    .add(pending().and(other(Column::Id).lt(this(Column::Id)))),
            )
            .take()
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
            .filter(Column::State.eq(TaskState::Pending))
            .filter(Column::QueuedAt.gte(since))
            .group_by(Column::Queue)
            .group_by(Column::Agent)
            .into_tuple()
            .all(db)
            .await?)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use anyhow::Result;
    use serde_json::json;
    use turnq_testkit::TestDb;

    use super::super::fixtures::{LEASE, completed, kinds, meta, row, submitted, worker};
    use super::*;
    use crate::task::Task;

    /// Dispatches up to `limit` due tasks, skipping `skip`, and returns what was pushed.
    async fn dispatch(
        db: &DatabaseConnection,
        limit: u64,
        stale: Timestamp,
        skip: &[(String, String)],
    ) -> Result<Vec<DueTask>> {
        redeliver(db, limit, stale, skip, None).await
    }

    /// [`dispatch`], re-delivering only to the pairs of `redeliver_to` when given.
    async fn redeliver(
        db: &DatabaseConnection,
        limit: u64,
        stale: Timestamp,
        skip: &[(String, String)],
        redeliver_to: Option<&BTreeSet<(String, String)>>,
    ) -> Result<Vec<DueTask>> {
        let pushed = Mutex::new(Vec::new());
        TaskStore::dispatch_due_queued_before(
            db,
            limit,
            stale,
            skip,
            redeliver_to,
            &meta(),
            |due| {
                pushed.lock().unwrap().extend(due);
                async { Ok(()) }
            },
        )
        .await?;
        Ok(pushed.into_inner().unwrap())
    }

    #[tokio::test]
    async fn a_lost_delivery_is_pushed_again_only_where_a_live_worker_serves_its_agent()
    -> Result<()> {
        let t = TestDb::new().await?;
        let served = submitted(&t.db, json!({"input": "a"})).await?;
        let unserved = submitted(&t.db, json!({"input": "b", "queue": "nobody"})).await?;
        // Both pushed once.
        assert_eq!(dispatch(&t.db, 10, never_stale(), &[]).await?.len(), 2);
        // Their deliveries count as lost; only the pair some worker serves gets one again.
        let pairs = BTreeSet::from([("default".to_owned(), "script".to_owned())]);
        let again = redeliver(&t.db, 10, time::now(), &[], Some(&pairs)).await?;
        assert_eq!(ids(&again), [served.id]);
        assert!(
            redeliver(&t.db, 10, time::now(), &[], Some(&BTreeSet::new()))
                .await?
                .is_empty()
        );
        // Without the restriction (Redis lost everything), both go again.
        let all = redeliver(&t.db, 10, time::now(), &[], None).await?;
        assert_eq!(all.len(), 2, "{:?} {:?}", ids(&all), unserved.id);
        Ok(())
    }

    /// A cutoff that counts no delivery as lost.
    fn never_stale() -> Timestamp {
        time::now() - chrono::TimeDelta::hours(1)
    }

    fn ids(due: &[DueTask]) -> Vec<TaskId> {
        due.iter().map(|d| d.id).collect()
    }

    #[tokio::test]
    async fn due_tasks_go_out_highest_priority_first_and_are_marked_queued() -> Result<()> {
        let t = TestDb::new().await?;
        let low = submitted(&t.db, json!({"input": 1, "priority": -1})).await?;
        let high = submitted(&t.db, json!({"input": 2, "priority": 9, "queue": "q"})).await?;
        let mid = submitted(&t.db, json!({"input": 3, "agent": "a2"})).await?;
        let later = submitted(
            &t.db,
            json!({"input": 4, "priority": 99, "run_at": "2999-01-01T00:00:00Z"}),
        )
        .await?;

        let due = dispatch(&t.db, 2, never_stale(), &[]).await?;
        assert_eq!(
            due,
            [
                DueTask {
                    id: high.id,
                    queue: "q".into(),
                    agent: "script".into(),
                    attempt: 0,
                    host: None,
                },
                DueTask {
                    id: mid.id,
                    queue: "default".into(),
                    agent: "a2".into(),
                    attempt: 0,
                    host: None,
                },
            ]
        );
        for task in [&high, &mid] {
            assert!(row(&t.db, task.id).await?.queued_at.is_some());
            assert_eq!(
                kinds(&t.db, task.id).await?,
                ["task.submitted", "task.queued"]
            );
        }
        let queued = TaskStore::events(&t.db, high.id, crate::StreamVersion(1), 1).await?;
        assert_eq!(queued[0].data, json!({"queue": "q"}));
        assert_eq!(
            ids(&dispatch(&t.db, 10, never_stale(), &[]).await?),
            [low.id]
        );
        assert!(
            row(&t.db, later.id).await?.queued_at.is_none(),
            "not due yet"
        );
        Ok(())
    }

    #[tokio::test]
    async fn a_queued_task_goes_out_again_only_once_its_delivery_counts_as_lost() -> Result<()> {
        let t = TestDb::new().await?;
        let task = submitted(&t.db, json!({"input": "x"})).await?;
        assert_eq!(
            ids(&dispatch(&t.db, 10, never_stale(), &[]).await?),
            [task.id]
        );
        assert!(dispatch(&t.db, 10, never_stale(), &[]).await?.is_empty());
        let lost = time::now() + chrono::TimeDelta::seconds(1);
        assert_eq!(ids(&dispatch(&t.db, 10, lost, &[]).await?), [task.id]);
        assert_eq!(
            kinds(&t.db, task.id).await?,
            ["task.submitted", "task.queued", "task.queued"]
        );
        Ok(())
    }

    #[tokio::test]
    async fn a_failed_hand_over_records_nothing() -> Result<()> {
        let t = TestDb::new().await?;
        let task = submitted(&t.db, json!({"input": "x"})).await?;
        let outcome = TaskStore::dispatch_due(&t.db, 10, LEASE, &meta(), |_| async {
            Err("Redis is down".into())
        })
        .await;
        assert!(matches!(outcome, Err(Error::Delivery(_))), "{outcome:?}");
        assert!(row(&t.db, task.id).await?.queued_at.is_none());
        assert_eq!(kinds(&t.db, task.id).await?, ["task.submitted"]);
        Ok(())
    }

    #[tokio::test]
    async fn tasks_of_a_skipped_queue_and_agent_pair_are_left_alone() -> Result<()> {
        let t = TestDb::new().await?;
        let full = submitted(&t.db, json!({"input": 1, "agent": "a"})).await?;
        let other_agent = submitted(&t.db, json!({"input": 2, "agent": "b"})).await?;
        let other_queue = submitted(&t.db, json!({"input": 3, "agent": "a", "queue": "q"})).await?;
        let skip = [("default".to_owned(), "a".to_owned())];
        let due = dispatch(&t.db, 10, never_stale(), &skip).await?;
        assert_eq!(ids(&due), [other_agent.id, other_queue.id]);
        assert!(row(&t.db, full.id).await?.queued_at.is_none());
        Ok(())
    }

    #[tokio::test]
    async fn a_later_turn_of_a_session_waits_until_the_earlier_one_ends() -> Result<()> {
        let t = TestDb::new().await?;
        let first = submitted(&t.db, json!({"input": 1, "session_id": "s"})).await?;
        let second = submitted(
            &t.db,
            json!({"input": 2, "session_id": "s", "priority": 50}),
        )
        .await?;
        let elsewhere = submitted(
            &t.db,
            json!({"input": 3, "session_id": "s", "project": "p2"}),
        )
        .await?;
        let stale = never_stale();
        let due = dispatch(&t.db, 10, stale, &[]).await?;
        assert_eq!(
            ids(&due),
            [first.id, elsewhere.id],
            "the later turn waits, whatever its priority"
        );
        // Handed over, then running: the later turn still waits.
        assert!(dispatch(&t.db, 10, stale, &[]).await?.is_empty());
        let w = worker("w");
        TaskStore::claim(&t.db, first.id, 0, &w, LEASE, &meta()).await?;
        assert!(dispatch(&t.db, 10, stale, &[]).await?.is_empty());
        TaskStore::record(&t.db, first.id, 1, &w, &completed(1), &meta()).await?;
        assert_eq!(ids(&dispatch(&t.db, 10, stale, &[]).await?), [second.id]);
        Ok(())
    }

    #[tokio::test]
    async fn queued_tasks_are_counted_per_queue_and_agent_since_a_time() -> Result<()> {
        let t = TestDb::new().await?;
        let before = time::now() - chrono::TimeDelta::seconds(1);
        for body in [
            json!({"input": 1, "agent": "a"}),
            json!({"input": 2, "agent": "a"}),
            json!({"input": 3, "agent": "b", "queue": "q"}),
        ] {
            submitted(&t.db, body).await?;
        }
        let unqueued: Task = submitted(&t.db, json!({"input": 4, "agent": "c"})).await?;
        dispatch(&t.db, 3, never_stale(), &[]).await?;
        let mut counts = TaskStore::queued_by_pair(&t.db, before).await?;
        counts.sort();
        assert_eq!(
            counts,
            [
                ("default".to_owned(), "a".to_owned(), 2),
                ("q".to_owned(), "b".to_owned(), 1)
            ]
        );
        assert!(row(&t.db, unqueued.id).await?.queued_at.is_none());
        let later = time::now() + chrono::TimeDelta::seconds(1);
        assert!(TaskStore::queued_by_pair(&t.db, later).await?.is_empty());
        Ok(())
    }
}

//! A worker's writes to the attempt it runs: claiming it, recording its events and
//! renewing its lease. Each is fenced: a claim by the state and attempt the job saw,
//! everything after it by state, attempt and worker.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    time::Duration,
};

use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, DatabaseConnection, EntityTrait, QueryFilter,
    QueryOrder, QuerySelect, QueryTrait, TransactionTrait,
    sea_query::{Expr, LockType},
};
use serde_json::Value;
use uuid::Uuid;

use super::{
    CHANNEL_TASKS_NEW, TaskStore, event_row, is_unique_violation, lease_end, notify,
    update_returning_keys, worker_guard, write,
};
use crate::{
    Error, StreamVersion, TaskId, WorkerId,
    entity::tasks::{self, Column},
    error::Result,
    event::{EventStore, Started, TaskEvent},
    task::{Task, TaskState, projection},
    time,
};

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

/// Records of one [`TaskStore::record_many`] wave that one `UPDATE` applies: the attempt
/// they guard on, their (identical) column changes, and their indexes.
type WriteGroup = (i32, Vec<(Column, projection::Change)>, Vec<usize>);

impl TaskStore {
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
            .add(Column::State.eq(TaskState::Pending))
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
            task: Task::from(row),
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
            query.into_tuple::<(Uuid, TaskState, i32)>().all(&txn)
        };
        let wanted: HashSet<(Uuid, i32)> = jobs.iter().map(|(id, a)| (id.0, *a)).collect();
        let claimable = |rows: Vec<(Uuid, TaskState, i32)>| -> Vec<Uuid> {
            rows.into_iter()
                .filter(|(id, state, attempt)| {
                    *state == TaskState::Pending && wanted.contains(&(*id, *attempt))
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
            .filter(|(_, state, _)| *state == TaskState::Pending)
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
                    task: Task::from(rows.swap_remove(i)),
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
        // Lock every row the batch may write first, in id order: the waves below write
        // them in several statements, and a lease renewal of the same worker (which
        // locks in id order too) running between two of them would otherwise hold one
        // row this transaction wants while waiting for one it holds.
        let ids: Vec<Uuid> = records.iter().map(|r| r.task.0).collect();
        tasks::Entity::find()
            .select_only()
            .column(Column::Id)
            .filter(Column::Id.is_in(ids))
            .filter(Column::State.eq(TaskState::Running))
            .filter(Column::WorkerId.eq(worker.0.as_str()))
            .order_by_asc(Column::Id)
            .lock(LockType::NoKeyUpdate)
            .into_tuple::<Uuid>()
            .all(&txn)
            .await?;
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
        Ok(Task::from(row))
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
        // The rows are locked in id order by the subquery (its sort runs below the
        // lock), the order every multi-row write of a worker's tasks locks in
        // (`claim_many`, `record_many`): a plain `UPDATE … WHERE id = … OR …` locks in
        // scan order and deadlocked against the worker's own group commit.
        let held_rows = tasks::Entity::find()
            .select_only()
            .column(Column::Id)
            .filter(Column::State.eq(TaskState::Running))
            .filter(Column::WorkerId.eq(worker.0.as_str()))
            .filter(pairs)
            .order_by_asc(Column::Id)
            .lock(LockType::NoKeyUpdate)
            .into_query();
        let rows: Vec<(Uuid, i32)> = tasks::Entity::update_many()
            .col_expr(Column::LeaseUntil, Expr::value(Some(until)))
            .filter(Column::Id.in_subquery(held_rows))
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
}

#[cfg(test)]
mod tests {
    use anyhow::{Context, Result};
    use serde_json::json;
    use turnq_testkit::TestDb;

    use super::super::fixtures::{LEASE, completed, kinds, meta, row, running, submitted, worker};
    use super::*;
    use crate::event::{Output, OutputChunk, Queued};

    fn output(attempt: i32, text: &str) -> TaskEvent {
        TaskEvent::Output(Output {
            attempt,
            chunks: vec![OutputChunk {
                stream: "text".into(),
                text: text.into(),
            }],
        })
    }

    #[tokio::test]
    async fn a_claim_succeeds_once_and_a_second_claim_of_the_attempt_does_nothing() -> Result<()> {
        let t = TestDb::new().await?;
        let task = submitted(&t.db, json!({"input": "x"})).await?;
        let (a, b) = (worker("a"), worker("b"));
        let claimed = TaskStore::claim(&t.db, task.id, 0, &a, LEASE, &meta())
            .await?
            .context("the first claim wins")?
            .task;
        assert_eq!(claimed.state, TaskState::Running);
        assert_eq!(claimed.attempt, 1);
        assert_eq!(claimed.worker_id.as_deref(), Some("a"));
        assert!(claimed.lease_until.is_some_and(|until| until > time::now()));

        assert!(
            TaskStore::claim(&t.db, task.id, 0, &b, LEASE, &meta())
                .await?
                .is_none()
        );
        assert!(
            TaskStore::claim(&t.db, task.id, 0, &a, LEASE, &meta())
                .await?
                .is_none()
        );
        assert_eq!(
            kinds(&t.db, task.id).await?,
            ["task.submitted", "task.started"]
        );
        assert_eq!(row(&t.db, task.id).await?.worker_id.as_deref(), Some("a"));
        Ok(())
    }

    #[tokio::test]
    async fn a_grouped_claim_takes_each_claimable_job_once_in_job_order() -> Result<()> {
        let t = TestDb::new().await?;
        let (a, b) = (worker("a"), worker("b"));
        let first = submitted(&t.db, json!({"input": 1})).await?;
        let second = submitted(&t.db, json!({"input": 2})).await?;
        let taken = running(&t.db, json!({"input": 3}), &b).await?;
        let jobs = [
            (second.id, 0),
            (taken.id, 0),
            (first.id, 5), // a stale attempt number
            (first.id, 0),
        ];
        let claimed = TaskStore::claim_many(&t.db, &jobs, &a, LEASE, &meta()).await?;
        let ids: Vec<TaskId> = claimed.iter().map(|c| c.task.id).collect();
        assert_eq!(ids, [second.id, first.id]);
        assert!(
            claimed
                .iter()
                .all(|c| c.task.worker_id.as_deref() == Some("a") && c.task.attempt == 1)
        );
        assert_eq!(row(&t.db, taken.id).await?.worker_id.as_deref(), Some("b"));
        assert!(
            TaskStore::claim_many(&t.db, &jobs, &a, LEASE, &meta())
                .await?
                .is_empty()
        );
        Ok(())
    }

    #[tokio::test]
    async fn a_record_is_fenced_by_attempt_and_worker() -> Result<()> {
        let t = TestDb::new().await?;
        let a = worker("a");
        let task = running(&t.db, json!({"input": "x"}), &a).await?;
        for (attempt, by) in [(1, worker("b")), (2, a.clone()), (0, a.clone())] {
            let outcome =
                TaskStore::record(&t.db, task.id, attempt, &by, &completed(attempt), &meta()).await;
            assert!(
                matches!(&outcome, Err(Error::Fenced { task: id, attempt: n, worker })
                    if *id == task.id && *n == attempt && *worker == by.0),
                "{outcome:?}"
            );
        }
        assert_eq!(
            kinds(&t.db, task.id).await?,
            ["task.submitted", "task.started"]
        );

        let during = TaskStore::record(&t.db, task.id, 1, &a, &output(1, "hi"), &meta()).await?;
        assert_eq!((during.state, during.version.0), (TaskState::Running, 3));
        let done = TaskStore::record(&t.db, task.id, 1, &a, &completed(1), &meta()).await?;
        assert_eq!(done.state, TaskState::Completed);
        assert_eq!(done.output_summary.as_deref(), Some("done"));
        assert!(
            matches!(
                TaskStore::record(&t.db, task.id, 1, &a, &output(1, "late"), &meta()).await,
                Err(Error::Fenced { .. })
            ),
            "nothing is written to an attempt after its end"
        );
        Ok(())
    }

    #[tokio::test]
    async fn a_record_the_state_machine_has_no_transition_for_is_illegal() -> Result<()> {
        let t = TestDb::new().await?;
        let a = worker("a");
        let task = running(&t.db, json!({"input": "x"}), &a).await?;
        let queued = TaskEvent::Queued(Queued { queue: "q".into() });
        let outcome = TaskStore::record(&t.db, task.id, 1, &a, &queued, &meta()).await;
        assert!(
            matches!(
                outcome,
                Err(Error::IllegalTransition {
                    from: TaskState::Running,
                    action: "task.queued",
                    ..
                })
            ),
            "{outcome:?}"
        );
        assert_eq!(TaskStore::get(&t.db, task.id).await?.version.0, 2);
        Ok(())
    }

    #[tokio::test]
    async fn a_group_commit_answers_each_record_under_its_own_guard_in_order() -> Result<()> {
        let t = TestDb::new().await?;
        let (a, b) = (worker("a"), worker("b"));
        let mine = running(&t.db, json!({"input": 1}), &a).await?;
        let theirs = running(&t.db, json!({"input": 2}), &b).await?;
        let records = [
            Record {
                task: mine.id,
                attempt: 1,
                event: output(1, "one"),
            },
            Record {
                task: theirs.id,
                attempt: 1,
                event: output(1, "not mine"),
            },
            Record {
                task: mine.id,
                attempt: 1,
                event: completed(1),
            },
            Record {
                task: mine.id,
                attempt: 1,
                event: TaskEvent::Queued(Queued { queue: "q".into() }),
            },
        ];
        let answers = TaskStore::record_many(&t.db, &a, &records, &meta()).await?;
        assert_eq!(answers.len(), 4);
        assert!(
            matches!(answers[0], Ok(StreamVersion(3))),
            "{:?}",
            answers[0]
        );
        assert!(
            matches!(answers[1], Err(Error::Fenced { .. })),
            "{:?}",
            answers[1]
        );
        assert!(
            matches!(answers[2], Ok(StreamVersion(4))),
            "{:?}",
            answers[2]
        );
        assert!(
            matches!(answers[3], Err(Error::IllegalTransition { .. })),
            "{:?}",
            answers[3]
        );
        assert_eq!(
            kinds(&t.db, mine.id).await?,
            [
                "task.submitted",
                "task.started",
                "task.output",
                "task.completed"
            ]
        );
        assert_eq!(
            kinds(&t.db, theirs.id).await?,
            ["task.submitted", "task.started"]
        );
        Ok(())
    }

    #[tokio::test]
    async fn a_renewal_extends_only_leases_still_running_under_that_worker_and_attempt()
    -> Result<()> {
        let t = TestDb::new().await?;
        let (a, b) = (worker("a"), worker("b"));
        let short = Duration::from_secs(60);
        let held = running(&t.db, json!({"input": 1}), &a).await?;
        let ended = running(&t.db, json!({"input": 2}), &a).await?;
        TaskStore::record(&t.db, ended.id, 1, &a, &completed(1), &meta()).await?;
        let others = running(&t.db, json!({"input": 3}), &b).await?;
        let lease = |id| row(&t.db, id);
        let others_lease = lease(others.id).await?.lease_until;
        let held_lease = lease(held.id).await?.lease_until;

        let asked = [(held.id, 1), (held.id, 7), (ended.id, 1), (others.id, 1)];
        let renewed = TaskStore::extend_leases(&t.db, &a, &asked, short).await?;
        assert_eq!(renewed, HashSet::from([(held.id, 1)]));
        let now_held = lease(held.id).await?.lease_until;
        assert!(
            now_held < held_lease,
            "renewed to now + 60 s, from now + 1 h"
        );
        assert_eq!(lease(others.id).await?.lease_until, others_lease);
        assert_eq!(lease(ended.id).await?.lease_until, None);
        assert_eq!(
            kinds(&t.db, held.id).await?,
            ["task.submitted", "task.started"],
            "a renewal is not an event"
        );
        assert!(
            TaskStore::extend_leases(&t.db, &a, &[], short)
                .await?
                .is_empty()
        );
        Ok(())
    }

    /// A worker renews its leases while its group commit writes the same tasks in
    /// several statements (one per attempt number here). Both lock in id order, so
    /// neither can hold a row the other waits for while waiting for one it holds; in
    /// scan order they deadlocked (Postgres then aborts one after `deadlock_timeout`).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lease_renewals_and_group_commits_of_the_same_tasks_never_deadlock() -> Result<()> {
        const TASKS: usize = 20;
        const ROUNDS: usize = 150;
        let t = TestDb::new().await?;
        let w = worker("w");
        let mut first = Vec::new();
        for i in 0..TASKS {
            first.push(running(&t.db, json!({"input": i}), &w).await?.id);
        }
        // The other half at attempt 2: claimed with a lease that runs out at once,
        // recovered, claimed again.
        let mut second = Vec::new();
        for i in 0..TASKS {
            let task = submitted(&t.db, json!({"input": i})).await?;
            TaskStore::claim(&t.db, task.id, 0, &w, Duration::ZERO, &meta())
                .await?
                .context("claimed")?;
            second.push(task.id);
        }
        while TaskStore::expire_leases(&t.db, 100, &meta()).await? > 0 {}
        for id in &second {
            TaskStore::claim(&t.db, *id, 1, &w, LEASE, &meta())
                .await?
                .context("claimed again")?;
        }
        let held: Vec<(TaskId, i32)> = first
            .iter()
            .map(|id| (*id, 1))
            .chain(second.iter().map(|id| (*id, 2)))
            .collect();

        let renewing = tokio::spawn({
            let (db, w, held) = (t.db.clone(), w.clone(), held.clone());
            async move {
                for _ in 0..ROUNDS {
                    let renewed = TaskStore::extend_leases(&db, &w, &held, LEASE).await?;
                    anyhow::ensure!(renewed.len() == held.len(), "all are still ours");
                }
                anyhow::Ok(())
            }
        });
        let writing = tokio::spawn({
            let (db, w) = (t.db.clone(), w.clone());
            async move {
                for round in 0..ROUNDS {
                    // Alternate which attempt's statement goes first, so whatever order
                    // the rows lie in, half the rounds write against the scan order.
                    let mut records: Vec<Record> = Vec::new();
                    for (ids, attempt) in [(&first, 1), (&second, 2)] {
                        records.extend(ids.iter().map(|id| Record {
                            task: *id,
                            attempt,
                            event: output(attempt, "x"),
                        }));
                    }
                    if round % 2 == 1 {
                        records.reverse();
                    }
                    for answer in TaskStore::record_many(&db, &w, &records, &meta()).await? {
                        answer?;
                    }
                }
                anyhow::Ok(())
            }
        });
        renewing.await??;
        writing.await??;
        Ok(())
    }
}

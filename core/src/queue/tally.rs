//! What each queue holds, kept in memory from the event log, so that reading it costs
//! nothing however many tasks there are (`GET /v1/queues`, the queue gauges of
//! `/metrics`, the UI's live counters).
//!
//! The tally is loaded once, in one snapshot: the open tasks (pending, queued, running,
//! blocked, failed) from the partial index `tasks_queue_open_idx`, what ended in the last
//! hour, and the cursor of the log at that snapshot. From then on the process' event
//! feed applies every event after that cursor, skipping the events of transactions the
//! snapshot already saw (the feed passes events only once every older transaction has
//! ended, so a few committed events can come after the loaded cursor although their
//! effect was loaded). Each transition moves one task between counts; memory grows with
//! the backlog (about 60 bytes an open task), never with the history.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};

use sea_orm::{
    AccessMode, ColumnTrait, ConnectionTrait, DatabaseConnection, DbBackend, EntityTrait,
    IsolationLevel, QueryFilter, QuerySelect, Statement, TransactionTrait,
};
use serde::Serialize;
use uuid::Uuid;

use crate::{
    Error,
    entity::tasks,
    error::Result,
    event::{Cursor, LiveEvent, LiveLog, TaskEvent},
    task::TaskState,
    time::{self, Timestamp},
};

/// Where an open task stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Open {
    /// Pending, not yet handed to Redis.
    Pending,
    /// Pending and handed to Redis.
    Queued,
    Running,
    Blocked,
    Failed,
}

#[derive(Clone, Debug)]
struct OpenTask {
    queue: String,
    state: Open,
    run_at: Timestamp,
}

/// Counts of events per minute over the last hour.
#[derive(Clone, Debug, Default)]
struct Minutes(VecDeque<(i64, i64)>);

impl Minutes {
    fn add(&mut self, at: Timestamp) {
        let minute = at.timestamp().div_euclid(60);
        match self.0.iter_mut().find(|(m, _)| *m == minute) {
            Some((_, n)) => *n += 1,
            None => {
                self.0.push_back((minute, 1));
                self.0.make_contiguous().sort_unstable();
            }
        }
        while self.0.len() > 62 {
            self.0.pop_front();
        }
    }

    /// Events in the last `minutes` minutes before `now` (the current one counted).
    fn since(&self, now: Timestamp, minutes: i64) -> i64 {
        let current = now.timestamp().div_euclid(60);
        self.0
            .iter()
            .filter(|(m, _)| *m > current - minutes && *m <= current)
            .map(|(_, n)| n)
            .sum()
    }
}

#[derive(Clone, Debug, Default)]
struct QueueCounts {
    pending: i64,
    queued: i64,
    running: i64,
    blocked: i64,
    failed: i64,
    /// Pending tasks (queued or not) by when they are due.
    due: BTreeSet<(Timestamp, Uuid)>,
    completed_at: Minutes,
    failed_at: Minutes,
}

impl QueueCounts {
    fn count(&mut self, state: Open) -> &mut i64 {
        match state {
            Open::Pending => &mut self.pending,
            Open::Queued => &mut self.queued,
            Open::Running => &mut self.running,
            Open::Blocked => &mut self.blocked,
            Open::Failed => &mut self.failed,
        }
    }
}

/// What a queue holds now.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct QueueFigures {
    /// Pending and not yet handed to Redis (due or scheduled for later).
    pub pending: i64,
    /// Pending and handed to Redis, waiting for a worker.
    pub queued: i64,
    pub running: i64,
    /// Waiting for a person.
    pub blocked: i64,
    /// Failed and not retried: in the inbox.
    pub failed: i64,
    /// How long the longest-due pending task has been due, in seconds (0 when none).
    pub oldest_pending_seconds: f64,
    /// Turns that completed their task in the last minute and hour.
    pub completed_last_minute: i64,
    pub completed_last_hour: i64,
    /// Failures recorded in the last minute and hour (a task retried by hand that fails
    /// again counts again).
    pub failed_last_minute: i64,
    pub failed_last_hour: i64,
}

/// The transactions a loaded snapshot saw: their events are in the tally already.
#[derive(Clone, Debug)]
struct Seen {
    xmin: u64,
    xmax: u64,
    in_progress: HashSet<u64>,
}

impl Seen {
    fn parse(snapshot: &str) -> Result<Seen> {
        let bad = || Error::Corrupt(format!("a snapshot that does not parse: {snapshot:?}"));
        let mut parts = snapshot.split(':');
        let xmin = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
        let xmax = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
        let in_progress = parts
            .next()
            .unwrap_or("")
            .split(',')
            .filter(|x| !x.is_empty())
            .map(|x| x.parse().map_err(|_| bad()))
            .collect::<Result<_>>()?;
        Ok(Seen {
            xmin,
            xmax,
            in_progress,
        })
    }

    fn saw(&self, xid: u64) -> bool {
        xid < self.xmin || (xid < self.xmax && !self.in_progress.contains(&xid))
    }
}

/// The figures of every queue, kept from the log.
#[derive(Clone, Debug, Default)]
pub struct QueueTally {
    open: HashMap<Uuid, OpenTask>,
    queues: BTreeMap<String, QueueCounts>,
    seen: Option<Seen>,
}

#[derive(Debug, sea_orm::FromQueryResult)]
struct OpenRow {
    id: Uuid,
    queue: String,
    state: TaskState,
    run_at: Timestamp,
    queued_at: Option<Timestamp>,
}

impl QueueTally {
    /// Loads the tally and the log's cursor from one snapshot: events after the cursor
    /// are for [`QueueTally::apply`].
    pub async fn load(db: &DatabaseConnection) -> Result<(QueueTally, Cursor)> {
        let txn = db
            .begin_with_config(
                Some(IsolationLevel::RepeatableRead),
                Some(AccessMode::ReadOnly),
            )
            .await?;
        let snapshot: String = txn
            .query_one_raw(Statement::from_string(
                DbBackend::Postgres,
                "SELECT pg_current_snapshot()::text AS s",
            ))
            .await?
            .ok_or_else(|| Error::Corrupt("pg_current_snapshot() returned no row".into()))?
            .try_get("", "s")?;
        let head = LiveLog::head(&txn).await?;
        use tasks::Column as C;
        let open: Vec<OpenRow> = tasks::Entity::find()
            .select_only()
            .columns([C::Id, C::Queue, C::State, C::RunAt, C::QueuedAt])
            .filter(C::State.is_in([
                TaskState::Pending,
                TaskState::Running,
                TaskState::Blocked,
                TaskState::Failed,
            ]))
            .into_model()
            .all(&txn)
            .await?;
        let hour_ago = time::now() - chrono::TimeDelta::hours(1);
        let ended: Vec<(String, TaskState, Option<Timestamp>)> = tasks::Entity::find()
            .select_only()
            .columns([C::Queue, C::State, C::EndedAt])
            .filter(C::EndedAt.gt(hour_ago))
            .filter(C::State.is_in([TaskState::Completed, TaskState::Failed]))
            .into_tuple()
            .all(&txn)
            .await?;
        txn.commit().await?;

        let mut tally = QueueTally {
            seen: Some(Seen::parse(&snapshot)?),
            ..Default::default()
        };
        for row in open {
            let state = match (row.state, row.queued_at) {
                (TaskState::Pending, None) => Open::Pending,
                (TaskState::Pending, Some(_)) => Open::Queued,
                (TaskState::Running, _) => Open::Running,
                (TaskState::Blocked, _) => Open::Blocked,
                _ => Open::Failed,
            };
            tally.enter(row.id, row.queue, state, row.run_at);
        }
        for (queue, state, at) in ended {
            let counts = tally.queues.entry(queue).or_default();
            let at = at.unwrap_or_else(time::now);
            match state {
                TaskState::Completed => counts.completed_at.add(at),
                _ => counts.failed_at.add(at),
            }
        }
        Ok((tally, head))
    }

    /// Applies one event of the log (passed on after the loaded cursor, in order).
    pub fn apply(&mut self, e: &LiveEvent) {
        if e.event.stream.stream_type != TaskEvent::STREAM_TYPE {
            return;
        }
        if self.seen.as_ref().is_some_and(|s| s.saw(e.cursor.xid)) {
            return;
        }
        let Ok(id) = Uuid::parse_str(&e.event.stream.id) else {
            return;
        };
        let at = e.event.recorded_at;
        let data = &e.event.data;
        let queue = || {
            e.queue
                .clone()
                .or_else(|| data["queue"].as_str().map(str::to_owned))
        };
        let run_at = || {
            data["run_at"]
                .as_str()
                .and_then(|r| chrono::DateTime::parse_from_rfc3339(r).ok())
                .map_or(at, |r| r.with_timezone(&chrono::Utc))
        };
        match e.event.kind.as_str() {
            "task.submitted" => {
                if let Some(queue) = queue() {
                    self.enter(id, queue, Open::Pending, run_at());
                }
            }
            "task.queued" => self.move_to(id, Open::Queued, None),
            "task.started" => self.move_to(id, Open::Running, None),
            "task.completed" => {
                if let Some(task) = self.leave(id) {
                    self.queues
                        .entry(task.queue)
                        .or_default()
                        .completed_at
                        .add(at);
                }
            }
            "task.failed" => self.fail(id, at),
            "task.lease_lost" if data["failed"] == true => self.fail(id, at),
            "task.retrying" => self.move_to(id, Open::Pending, Some(run_at())),
            "task.blocked" => self.move_to(id, Open::Blocked, None),
            "task.lease_lost" | "task.released" | "task.approved" | "task.retried" => {
                self.move_to(id, Open::Pending, Some(at))
            }
            "task.cancelled" => {
                self.leave(id);
            }
            _ => {}
        }
    }

    /// The figures of `queue` at `now`.
    pub fn figures(&self, queue: &str, now: Timestamp) -> QueueFigures {
        let Some(c) = self.queues.get(queue) else {
            return QueueFigures::default();
        };
        let oldest = c
            .due
            .first()
            .filter(|(due, _)| *due <= now)
            .map_or(0.0, |(due, _)| {
                (now - *due).num_milliseconds() as f64 / 1000.0
            });
        QueueFigures {
            pending: c.pending,
            queued: c.queued,
            running: c.running,
            blocked: c.blocked,
            failed: c.failed,
            oldest_pending_seconds: oldest,
            completed_last_minute: c.completed_at.since(now, 1),
            completed_last_hour: c.completed_at.since(now, 60),
            failed_last_minute: c.failed_at.since(now, 1),
            failed_last_hour: c.failed_at.since(now, 60),
        }
    }

    fn enter(&mut self, id: Uuid, queue: String, state: Open, run_at: Timestamp) {
        self.leave(id);
        let counts = self.queues.entry(queue.clone()).or_default();
        *counts.count(state) += 1;
        if matches!(state, Open::Pending | Open::Queued) {
            counts.due.insert((run_at, id));
        }
        self.open.insert(
            id,
            OpenTask {
                queue,
                state,
                run_at,
            },
        );
    }

    fn leave(&mut self, id: Uuid) -> Option<OpenTask> {
        let task = self.open.remove(&id)?;
        let counts = self.queues.entry(task.queue.clone()).or_default();
        *counts.count(task.state) -= 1;
        counts.due.remove(&(task.run_at, id));
        Some(task)
    }

    /// Moves a known open task to `state` (with a new due time when given).
    fn move_to(&mut self, id: Uuid, state: Open, run_at: Option<Timestamp>) {
        if let Some(task) = self.leave(id) {
            let run_at = run_at.unwrap_or(task.run_at);
            self.enter(id, task.queue, state, run_at);
        }
    }

    fn fail(&mut self, id: Uuid, at: Timestamp) {
        if let Some(task) = self.leave(id) {
            self.queues
                .entry(task.queue.clone())
                .or_default()
                .failed_at
                .add(at);
            self.enter(id, task.queue, Open::Failed, task.run_at);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        LogPosition, StreamVersion,
        event::{RecordedEvent, StreamRef},
    };
    use serde_json::{Value, json};

    fn event(id: Uuid, xid: u64, kind: &str, data: Value, at: Timestamp) -> LiveEvent {
        LiveEvent {
            cursor: Cursor {
                xid,
                position: xid as i64,
            },
            event: RecordedEvent {
                position: LogPosition(xid as i64),
                stream: StreamRef::new("task", id.to_string()),
                version: StreamVersion(1),
                kind: kind.into(),
                data,
                metadata: json!({}),
                recorded_at: at,
            },
            queue: Some("q".into()),
            project: None,
            session_id: None,
        }
    }

    #[test]
    fn each_transition_moves_one_task_between_counts() {
        let now = time::now();
        let mut t = QueueTally::default();
        let (a, b, c) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let due =
            json!({"queue": "q", "run_at": (now - chrono::TimeDelta::seconds(30)).to_rfc3339()});
        let later =
            json!({"queue": "q", "run_at": (now + chrono::TimeDelta::hours(1)).to_rfc3339()});
        for (id, data) in [(a, &due), (b, &due), (c, &later)] {
            t.apply(&event(id, 10, "task.submitted", data.clone(), now));
        }
        let f = t.figures("q", now);
        assert_eq!((f.pending, f.queued), (3, 0));
        assert!((29.0..31.0).contains(&f.oldest_pending_seconds), "{f:?}");

        t.apply(&event(a, 11, "task.queued", json!({}), now));
        t.apply(&event(a, 12, "task.started", json!({}), now));
        t.apply(&event(b, 13, "task.cancelled", json!({}), now));
        assert_eq!(t.figures("q", now).running, 1);
        assert_eq!(t.figures("q", now).pending, 1);
        // Only the scheduled task is pending: nothing is due.
        assert_eq!(t.figures("q", now).oldest_pending_seconds, 0.0);

        t.apply(&event(
            a,
            14,
            "task.retrying",
            json!({"run_at": now.to_rfc3339()}),
            now,
        ));
        t.apply(&event(a, 15, "task.started", json!({}), now));
        t.apply(&event(a, 16, "task.failed", json!({}), now));
        let f = t.figures("q", now);
        assert_eq!((f.running, f.failed, f.failed_last_minute), (0, 1, 1));
        t.apply(&event(a, 17, "task.retried", json!({}), now));
        t.apply(&event(a, 18, "task.started", json!({}), now));
        t.apply(&event(a, 19, "task.completed", json!({}), now));
        let f = t.figures("q", now);
        assert_eq!(
            (
                f.pending,
                f.queued,
                f.running,
                f.failed,
                f.completed_last_hour
            ),
            (1, 0, 0, 0, 1)
        );
    }

    #[test]
    fn events_the_loaded_snapshot_saw_are_not_applied_twice() {
        let now = time::now();
        let mut t = QueueTally {
            seen: Some(Seen::parse("100:105:101,103").unwrap()),
            ..Default::default()
        };
        let data = json!({"queue": "q", "run_at": now.to_rfc3339()});
        for xid in [99, 101, 102, 103, 104, 105] {
            t.apply(&event(
                Uuid::now_v7(),
                xid,
                "task.submitted",
                data.clone(),
                now,
            ));
        }
        // Seen: 99 (older than xmin), 102 and 104 (committed before the snapshot).
        assert_eq!(t.figures("q", now).pending, 3);
    }
}

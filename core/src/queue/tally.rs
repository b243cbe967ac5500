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
//!
//! It also keeps what the UI's overview shows beside the queues: completed and failed
//! per minute over the last hour, and the usage of the tasks created today (UTC), which
//! is `GET /v1/stats/usage?group_by=day` for today without reading today's tasks on
//! every request (a task's day is in its UUIDv7 id, so each event with usage knows
//! whether it counts).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque},
    sync::Arc,
};

use chrono::NaiveDate;
use sea_orm::{
    AccessMode, ColumnTrait, ConnectionTrait, DatabaseConnection, DbBackend, EntityTrait,
    IsolationLevel, QueryFilter, QuerySelect, Statement, TransactionTrait,
};
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use crate::{
    Error,
    entity::tasks,
    error::Result,
    event::{Cursor, LiveEvent, LiveLog, TaskEvent},
    stats::{GroupBy, MinuteCounts, UsageStats},
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
    agent: String,
    state: Open,
    run_at: Timestamp,
}

/// Counts of events per minute over the last hour, and per second over the last minute
/// (so "in the last minute" is the last 60 seconds, as Postgres counts it, not the
/// current minute of the clock).
#[derive(Clone, Debug, Default)]
struct Minutes(VecDeque<(i64, i64)>, VecDeque<(i64, i64)>);

/// Adds one to the bucket `at` of `buckets` (kept in order), keeping at most `keep`.
fn bump(buckets: &mut VecDeque<(i64, i64)>, at: i64, keep: usize) {
    match buckets.iter_mut().find(|(b, _)| *b == at) {
        Some((_, n)) => *n += 1,
        None => {
            buckets.push_back((at, 1));
            buckets.make_contiguous().sort_unstable();
        }
    }
    while buckets.len() > keep {
        buckets.pop_front();
    }
}

impl Minutes {
    fn add(&mut self, at: Timestamp) {
        bump(&mut self.0, at.timestamp().div_euclid(60), 62);
        bump(&mut self.1, at.timestamp(), 62);
    }

    /// Events in the last `minutes` minutes before `now`: the last 60 seconds for one
    /// minute, else whole minutes of the clock (the current one counted).
    fn since(&self, now: Timestamp, minutes: i64) -> i64 {
        if minutes == 1 {
            let second = now.timestamp();
            return self
                .1
                .iter()
                .filter(|(s, _)| *s > second - 60 && *s <= second)
                .map(|(_, n)| n)
                .sum();
        }
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
    /// Pending tasks (queued or not) by the agent they wait for.
    waiting_by_agent: BTreeMap<String, i64>,
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
    /// Pending tasks (queued or not) by the agent they wait for.
    #[serde(skip)]
    pub waiting_by_agent: BTreeMap<String, i64>,
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

/// The usage of the tasks created on one UTC day.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct DayUsage {
    pub day: NaiveDate,
    pub tasks: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cost_usd: f64,
}

/// The UTC day the task with this UUIDv7 id was created.
fn day_of(id: Uuid) -> Option<NaiveDate> {
    let (secs, _) = id.get_timestamp()?.to_unix();
    chrono::DateTime::from_timestamp(i64::try_from(secs).ok()?, 0).map(|t| t.date_naive())
}

/// The figures of every queue, kept from the log.
#[derive(Clone, Debug, Default)]
pub struct QueueTally {
    open: HashMap<Uuid, OpenTask>,
    queues: BTreeMap<String, QueueCounts>,
    seen: Option<Seen>,
    today: DayUsage,
    /// The running tasks and the worker running each (worker ids shared, not copied).
    running: HashMap<Uuid, Arc<str>>,
    worker_ids: HashMap<String, Arc<str>>,
}

#[derive(Debug, sea_orm::FromQueryResult)]
struct OpenRow {
    id: Uuid,
    queue: String,
    agent: String,
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
            .columns([C::Id, C::Queue, C::Agent, C::State, C::RunAt, C::QueuedAt])
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
        let running: Vec<(Uuid, Option<String>)> = tasks::Entity::find()
            .select_only()
            .columns([C::Id, C::WorkerId])
            .filter(C::State.eq(TaskState::Running))
            .into_tuple()
            .all(&txn)
            .await?;
        let day = time::now().date_naive();
        let midnight = day.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc();
        let today = UsageStats::group_by(&txn, GroupBy::Day, Some(midnight))
            .await?
            .into_iter()
            .fold(
                DayUsage {
                    day,
                    ..Default::default()
                },
                |mut sum, row| {
                    sum.tasks += row.tasks;
                    sum.input_tokens += row.input_tokens;
                    sum.output_tokens += row.output_tokens;
                    sum.cost_usd += row.cost_usd;
                    sum
                },
            );
        txn.commit().await?;

        let mut tally = QueueTally {
            seen: Some(Seen::parse(&snapshot)?),
            today,
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
            tally.enter(row.id, row.queue, row.agent, state, row.run_at);
        }
        for (id, worker) in running {
            if let Some(worker) = worker {
                tally.start(id, &worker);
            }
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
        self.count_usage(id, &e.event.kind, data);
        let run_at = || {
            data["run_at"]
                .as_str()
                .and_then(|r| chrono::DateTime::parse_from_rfc3339(r).ok())
                .map_or(at, |r| r.with_timezone(&chrono::Utc))
        };
        match e.event.kind.as_str() {
            "task.submitted" => {
                if let Some(queue) = queue() {
                    let agent = data["agent"]
                        .as_str()
                        .unwrap_or(crate::agent::BUILTIN_AGENT);
                    self.enter(id, queue, agent.to_owned(), Open::Pending, run_at());
                }
            }
            "task.queued" => self.move_to(id, Open::Queued, None),
            "task.started" => {
                self.move_to(id, Open::Running, None);
                if let Some(worker) = data["worker_id"].as_str() {
                    self.start(id, worker);
                }
            }
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
            "task.lease_lost" | "task.released" | "task.approved" | "task.retried"
            | "task.responded" => self.move_to(id, Open::Pending, Some(at)),
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
            waiting_by_agent: c
                .waiting_by_agent
                .iter()
                .filter(|(_, n)| **n > 0)
                .map(|(agent, n)| (agent.clone(), *n))
                .collect(),
        }
    }

    /// The running tasks of each worker, by worker id.
    pub fn running_by_worker(&self) -> BTreeMap<String, Vec<Uuid>> {
        let mut by: BTreeMap<String, Vec<Uuid>> = BTreeMap::new();
        for (id, worker) in &self.running {
            by.entry(worker.to_string()).or_default().push(*id);
        }
        for ids in by.values_mut() {
            ids.sort_unstable();
        }
        by
    }

    fn start(&mut self, id: Uuid, worker: &str) {
        let shared = match self.worker_ids.get(worker) {
            Some(shared) => shared.clone(),
            None => {
                let shared: Arc<str> = Arc::from(worker);
                self.worker_ids.insert(worker.to_owned(), shared.clone());
                shared
            }
        };
        self.running.insert(id, shared);
    }

    /// The usage of the tasks created on `now`'s day.
    pub fn usage_today(&self, now: Timestamp) -> DayUsage {
        let day = now.date_naive();
        if self.today.day == day {
            self.today.clone()
        } else {
            DayUsage {
                day,
                ..Default::default()
            }
        }
    }

    /// Completed and failed per minute over the hour before `now`, every queue together,
    /// oldest minute first; minutes in which nothing ended are absent.
    pub fn per_minute(&self, now: Timestamp) -> Vec<MinuteCounts> {
        let current = now.timestamp().div_euclid(60);
        let mut minutes: BTreeMap<i64, (i64, i64)> = BTreeMap::new();
        for counts in self.queues.values() {
            for (at, n) in counts.completed_at.0.iter() {
                minutes.entry(*at).or_default().0 += n;
            }
            for (at, n) in counts.failed_at.0.iter() {
                minutes.entry(*at).or_default().1 += n;
            }
        }
        minutes
            .into_iter()
            .filter(|(m, _)| *m > current - 60 && *m <= current)
            .filter_map(|(m, (completed, failed))| {
                Some(MinuteCounts {
                    minute: chrono::DateTime::from_timestamp(m * 60, 0)?,
                    completed,
                    failed,
                })
            })
            .collect()
    }

    /// Adds what `kind` tells of the usage of task `id`, when it was created on the day
    /// kept (moving to a later day when it is the first event of one).
    fn count_usage(&mut self, id: Uuid, kind: &str, data: &Value) {
        let submitted = kind == "task.submitted";
        let usage = data.get("usage").filter(|u| u.is_object());
        if !submitted && usage.is_none() {
            return;
        }
        let Some(day) = day_of(id) else {
            return;
        };
        if day > self.today.day {
            self.today = DayUsage {
                day,
                ..Default::default()
            };
        }
        if day != self.today.day {
            return;
        }
        if submitted {
            self.today.tasks += 1;
        }
        if let Some(u) = usage {
            self.today.input_tokens += u["input_tokens"].as_i64().unwrap_or(0);
            self.today.output_tokens += u["output_tokens"].as_i64().unwrap_or(0);
            self.today.cost_usd += u["cost_usd"].as_f64().unwrap_or(0.0);
        }
    }

    fn enter(&mut self, id: Uuid, queue: String, agent: String, state: Open, run_at: Timestamp) {
        self.leave(id);
        let counts = self.queues.entry(queue.clone()).or_default();
        *counts.count(state) += 1;
        if matches!(state, Open::Pending | Open::Queued) {
            counts.due.insert((run_at, id));
            *counts.waiting_by_agent.entry(agent.clone()).or_default() += 1;
        }
        self.open.insert(
            id,
            OpenTask {
                queue,
                agent,
                state,
                run_at,
            },
        );
    }

    fn leave(&mut self, id: Uuid) -> Option<OpenTask> {
        // Every transition out of a state ends the attempt that was running, if one was.
        self.running.remove(&id);
        let task = self.open.remove(&id)?;
        let counts = self.queues.entry(task.queue.clone()).or_default();
        *counts.count(task.state) -= 1;
        counts.due.remove(&(task.run_at, id));
        if matches!(task.state, Open::Pending | Open::Queued)
            && let Some(n) = counts.waiting_by_agent.get_mut(&task.agent)
        {
            *n -= 1;
            if *n <= 0 {
                counts.waiting_by_agent.remove(&task.agent);
            }
        }
        Some(task)
    }

    /// Moves a known open task to `state` (with a new due time when given).
    fn move_to(&mut self, id: Uuid, state: Open, run_at: Option<Timestamp>) {
        if let Some(task) = self.leave(id) {
            let run_at = run_at.unwrap_or(task.run_at);
            self.enter(id, task.queue, task.agent, state, run_at);
        }
    }

    fn fail(&mut self, id: Uuid, at: Timestamp) {
        if let Some(task) = self.leave(id) {
            self.queues
                .entry(task.queue.clone())
                .or_default()
                .failed_at
                .add(at);
            self.enter(id, task.queue, task.agent, Open::Failed, task.run_at);
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
    use serde_json::json;

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
        t.apply(&event(a, 19, "task.blocked", json!({}), now));
        assert_eq!(t.figures("q", now).blocked, 1);
        // An answer re-opens it.
        t.apply(&event(a, 20, "task.responded", json!({}), now));
        assert_eq!(
            (t.figures("q", now).blocked, t.figures("q", now).pending),
            (0, 2)
        );
        t.apply(&event(a, 21, "task.started", json!({}), now));
        t.apply(&event(a, 22, "task.completed", json!({}), now));
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
    fn usage_counts_for_the_day_its_task_was_created_and_a_new_day_starts_at_zero() {
        let mut tally = QueueTally::default();
        let now = time::now();
        let today = Uuid::now_v7();
        let usage = json!({"usage": {"input_tokens": 10, "output_tokens": 5, "cost_usd": 0.5}});
        tally.apply(&event(
            today,
            1,
            "task.submitted",
            json!({"queue": "q"}),
            now,
        ));
        tally.apply(&event(today, 2, "task.completed", usage.clone(), now));
        let seen = tally.usage_today(now);
        assert_eq!(
            (
                seen.tasks,
                seen.input_tokens,
                seen.output_tokens,
                seen.cost_usd
            ),
            (1, 10, 5, 0.5)
        );
        // A task of yesterday still finishing today does not count today.
        let yesterday = Uuid::new_v7(uuid::Timestamp::from_unix(
            uuid::NoContext,
            (now - chrono::TimeDelta::days(1)).timestamp() as u64,
            0,
        ));
        tally.apply(&event(yesterday, 3, "task.failed", usage.clone(), now));
        assert_eq!(tally.usage_today(now).input_tokens, 10);
        // Tomorrow starts from nothing.
        assert_eq!(tally.usage_today(now + chrono::TimeDelta::days(1)).tasks, 0);
        let minutes = tally.per_minute(now);
        assert_eq!(minutes.iter().map(|m| m.completed).sum::<i64>(), 1);
    }

    #[test]
    fn the_last_minute_is_the_last_sixty_seconds_across_a_minute_of_the_clock() {
        let mut minutes = Minutes::default();
        let at = chrono::DateTime::from_timestamp(120 * 60 - 1, 0).unwrap_or_default();
        minutes.add(at);
        let next_minute = at + chrono::TimeDelta::seconds(2);
        assert_eq!(minutes.since(next_minute, 1), 1);
        assert_eq!(minutes.since(at + chrono::TimeDelta::seconds(61), 1), 0);
        assert_eq!(minutes.since(next_minute, 60), 1);
    }

    #[test]
    fn a_started_task_runs_on_its_worker_until_its_attempt_ends() {
        let mut tally = QueueTally::default();
        let now = time::now();
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        for (id, xid) in [(a, 1), (b, 2)] {
            tally.apply(&event(
                id,
                xid,
                "task.submitted",
                json!({"queue": "q"}),
                now,
            ));
            tally.apply(&event(
                id,
                xid + 10,
                "task.started",
                json!({"worker_id": "w1"}),
                now,
            ));
        }
        tally.apply(&event(a, 30, "task.output", json!({}), now));
        assert_eq!(tally.running_by_worker()["w1"].len(), 2);
        tally.apply(&event(
            a,
            31,
            "task.lease_lost",
            json!({"failed": false}),
            now,
        ));
        tally.apply(&event(
            a,
            32,
            "task.started",
            json!({"worker_id": "w2"}),
            now,
        ));
        tally.apply(&event(b, 33, "task.completed", json!({}), now));
        let by = tally.running_by_worker();
        assert_eq!((by.get("w1"), by["w2"].as_slice()), (None, [a].as_slice()));
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

//! Faults of a fleet: the real `turnq worker` binary as separate processes (three or
//! more, on one Postgres and one Redis) with the API and dispatcher in-process, and
//! a few hundred script turns of random latency. Workers are killed (`kill -9`),
//! stopped (`SIGTERM`), Redis is flushed and restarted, running turns are cancelled;
//! every test then reads the event log and checks that no task was lost and that no
//! two attempts of one task ever ran at the same time.
//!
//! The random latencies come from a seeded generator; the seed is printed, and
//! `TURNQ_FLEET_SEED=<seed>` replays a run.

use std::{
    collections::{BTreeMap, HashSet},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder};
use serde_json::{Value, json};
use turnq_core::{
    Error, TaskId, WorkerId,
    entity::{events, tasks},
    event::{Completed, Output, OutputChunk, TaskEvent, Usage},
    task::{DueTask, NewTaskRequest, TaskState, TaskStore},
    time::Timestamp,
};

use turnq_tests::{PrivateRedis, TestApp, TestDb, WorkerProcess, count, eventually, turnq_bin};

/// Worker flags for the tests that lose workers: a lease short enough that a dead
/// worker's tasks are recovered within seconds, renewed twice a second.
const FAST_LEASES: [&str; 8] = [
    "--concurrency",
    "8",
    "--heartbeat",
    "500ms",
    "--lease",
    "3s",
    "--poll-interval",
    "20ms",
];

/// How many turns each test runs.
const TASKS: usize = 200;

/// The end states of an attempt: after one of them, and only then, another attempt may
/// start.
const ATTEMPT_ENDS: [&str; 6] = [
    "task.completed",
    "task.failed",
    "task.retrying",
    "task.blocked",
    "task.released",
    "task.lease_lost",
];

/// SplitMix64: a few lines instead of a dependency, and a seed that replays a run.
struct Rng(u64);

impl Rng {
    fn seeded() -> Rng {
        let seed = std::env::var("TURNQ_FLEET_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| uuid::Uuid::new_v4().as_u64_pair().0);
        eprintln!("fleet seed: {seed} (TURNQ_FLEET_SEED={seed} replays it)");
        Rng(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e3779b97f4a7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
        z ^ (z >> 31)
    }

    /// A number in `low..high`.
    fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.next() % (high - low)
    }
}

/// A script turn of `latency_ms`, streaming a few chunks over that time.
fn script(latency_ms: u64) -> Value {
    json!({"input": {"script": {"latency_ms": latency_ms, "chunks": ["think", "ing", " done"]}}})
}

/// `n` script turns of 50 to 800 ms each.
fn random_turns(rng: &mut Rng, n: usize) -> Vec<Value> {
    (0..n).map(|_| script(rng.between(50, 800))).collect()
}

/// `POST /v1/tasks/batch`; the ids in submission order.
async fn submit(app: &TestApp, tasks: Vec<Value>) -> Result<Vec<String>> {
    let n = tasks.len();
    let (status, body) = app
        .post("/v1/tasks/batch", &json!({"tasks": tasks}))
        .await?;
    ensure!(status == 201, "the batch answered {status}: {body}");
    let ids: Vec<String> = body["tasks"]
        .as_array()
        .context("the batch answer lists its tasks")?
        .iter()
        .filter_map(|t| t["id"].as_str().map(str::to_owned))
        .collect();
    ensure!(
        ids.len() == n,
        "{n} submitted, {} ids back: {body}",
        ids.len()
    );
    Ok(ids)
}

/// Starts `turnq worker` processes on hosts `host{first}` … `host{last}`.
fn start_fleet(
    app: &TestApp,
    hosts: std::ops::RangeInclusive<usize>,
    flags: &[&str],
) -> Result<Vec<WorkerProcess>> {
    hosts
        .map(|n| app.worker_process(&format!("host{n}"), flags))
        .collect()
}

/// The `tasks` rows, by id.
async fn task_rows(db: &DatabaseConnection) -> Result<BTreeMap<String, tasks::Model>> {
    Ok(tasks::Entity::find()
        .all(db)
        .await?
        .into_iter()
        .map(|t| (t.id.to_string(), t))
        .collect())
}

/// (task id, attempt, worker id) of every running task.
async fn running(db: &DatabaseConnection) -> Result<Vec<(String, i32, String)>> {
    Ok(tasks::Entity::find()
        .filter(tasks::Column::State.eq(TaskState::Running))
        .all(db)
        .await?
        .into_iter()
        .map(|t| (t.id.to_string(), t.attempt, t.worker_id.unwrap_or_default()))
        .collect())
}

/// How many of `ids` are in each state.
async fn states(db: &DatabaseConnection, ids: &[String]) -> Result<BTreeMap<String, usize>> {
    let rows = task_rows(db).await?;
    let mut by_state = BTreeMap::new();
    for id in ids {
        let state = rows.get(id).map_or("missing", |t| t.state.as_str());
        *by_state.entry(state.to_owned()).or_insert(0) += 1;
    }
    Ok(by_state)
}

/// Waits until every one of `ids` is completed; the error says how many are in which
/// state.
async fn wait_all_completed(app: &TestApp, ids: &[String]) -> Result<()> {
    eventually("every task completes", || async {
        let by_state = states(&app.db, ids).await?;
        let done = by_state.get("completed").copied().unwrap_or(0);
        ensure!(
            done == ids.len(),
            "{done} of {} completed; by state: {by_state:?}",
            ids.len()
        );
        Ok(())
    })
    .await
}

/// Waits until every one of `ids` has ended: completed, failed, blocked or cancelled.
async fn wait_all_ended(app: &TestApp, ids: &[String]) -> Result<()> {
    eventually("every task ends", || async {
        let by_state = states(&app.db, ids).await?;
        let open: usize = ["pending", "running", "missing"]
            .iter()
            .filter_map(|s| by_state.get(*s))
            .sum();
        ensure!(
            open == 0,
            "{open} of {} not ended; by state: {by_state:?}",
            ids.len()
        );
        Ok(())
    })
    .await
}

/// One event of a task's stream.
#[derive(Clone, Debug)]
struct LogEvent {
    version: i64,
    kind: String,
    data: Value,
    at: Timestamp,
}

impl LogEvent {
    fn attempt(&self) -> Option<i64> {
        self.data["attempt"].as_i64()
    }

    fn worker(&self) -> &str {
        self.data["worker_id"].as_str().unwrap_or("")
    }
}

/// Every task's stream from the event log, oldest first.
async fn event_log(db: &DatabaseConnection) -> Result<BTreeMap<String, Vec<LogEvent>>> {
    let rows = events::Entity::find()
        .filter(events::Column::StreamType.eq("task"))
        .order_by_asc(events::Column::StreamId)
        .order_by_asc(events::Column::Version)
        .all(db)
        .await?;
    let mut log: BTreeMap<String, Vec<LogEvent>> = BTreeMap::new();
    for row in rows {
        log.entry(row.stream_id).or_default().push(LogEvent {
            version: row.version,
            kind: row.kind,
            data: row.data,
            at: row.recorded_at,
        });
    }
    Ok(log)
}

/// Checks one task's stream: an attempt starts only after the previous one ended
/// (completed, failed, retrying, blocked, released, lease lost, or the task was
/// cancelled), later in time too; attempt numbers only grow; and nothing is written for
/// an attempt that is not the running one (a stale worker's write got through).
fn attempts_never_overlap(task: &str, stream: &[LogEvent]) -> Result<(), String> {
    // The attempt running now: (attempt, worker, started at).
    let mut open: Option<(i64, String, Timestamp)> = None;
    let mut last_attempt = 0;
    let mut last_end: Option<(Timestamp, String)> = None;
    for event in stream {
        let at = event.at;
        let here = format!("task {task} v{} {}", event.version, event.kind);
        match event.kind.as_str() {
            "task.started" => {
                let attempt = event.attempt().ok_or(format!("{here} has no attempt"))?;
                if let Some((running, worker, since)) = &open {
                    return Err(format!(
                        "{here}: attempt {attempt} started by {} at {at} while attempt {running} \
                         (worker {worker}, started {since}) had not ended",
                        event.worker()
                    ));
                }
                if attempt <= last_attempt {
                    return Err(format!(
                        "{here}: attempt {attempt} started after attempt {last_attempt}"
                    ));
                }
                if let Some((ended, kind)) = &last_end
                    && at < *ended
                {
                    return Err(format!(
                        "{here}: attempt {attempt} started at {at}, before the previous \
                         attempt's {kind} at {ended}"
                    ));
                }
                open = Some((attempt, event.worker().to_owned(), at));
                last_attempt = attempt;
            }
            "task.output" => match &open {
                Some((running, ..)) if event.attempt() == Some(*running) => {}
                _ => {
                    return Err(format!(
                        "{here}: output of attempt {:?} while {open:?} runs",
                        event.attempt()
                    ));
                }
            },
            kind if ATTEMPT_ENDS.contains(&kind) => match &open {
                Some((running, ..)) if event.attempt() == Some(*running) => {
                    open = None;
                    last_end = Some((at, event.kind.clone()));
                }
                _ => {
                    return Err(format!(
                        "{here}: end of attempt {:?} while {open:?} runs",
                        event.attempt()
                    ));
                }
            },
            "task.cancelled" => {
                open = None;
                last_end = Some((at, event.kind.clone()));
            }
            // Submitted, queued, approved, retried: only while nothing runs.
            _ => {
                if let Some((running, worker, _)) = &open {
                    return Err(format!(
                        "{here} while attempt {running} of worker {worker} runs"
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Checks every stream of the log with [`attempts_never_overlap`], and that each of
/// `ids` has one; the error lists the first violations.
fn assert_no_overlapping_attempts(
    log: &BTreeMap<String, Vec<LogEvent>>,
    ids: &[String],
) -> Result<()> {
    let mut violations: Vec<String> = ids
        .iter()
        .filter(|id| !log.contains_key(*id))
        .map(|id| format!("task {id} has no events"))
        .collect();
    violations.extend(
        log.iter()
            .filter_map(|(task, stream)| attempts_never_overlap(task, stream).err()),
    );
    if !violations.is_empty() {
        bail!(
            "{} tasks break the attempt rules; the first: {:#?}",
            violations.len(),
            &violations[..violations.len().min(10)]
        );
    }
    Ok(())
}

/// Events of `kind` in the log, with their task.
fn events_of<'a>(
    log: &'a BTreeMap<String, Vec<LogEvent>>,
    kind: &'a str,
) -> impl Iterator<Item = (&'a String, &'a LogEvent)> + 'a {
    log.iter()
        .flat_map(|(task, stream)| stream.iter().map(move |e| (task, e)))
        .filter(move |(_, e)| e.kind == kind)
}

/// The `task.started` recorded last, as (seconds after `since`, task, the kinds of its
/// stream): the turn that waited longest for a fault to be repaired, and how it was.
fn last_start(
    log: &BTreeMap<String, Vec<LogEvent>>,
    since: Timestamp,
) -> Option<(f64, String, Vec<String>)> {
    let (task, event) = events_of(log, "task.started").max_by_key(|(_, e)| e.at)?;
    let after = (event.at - since).num_milliseconds() as f64 / 1000.0;
    let kinds = log[task]
        .iter()
        .map(|e| e.kind.clone())
        .filter(|k| k != "task.output")
        .collect();
    Some((after, task.clone(), kinds))
}

mod cancel;
mod fencing;
mod redis;
mod workers;

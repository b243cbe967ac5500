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

use crate::harness::{PrivateRedis, TestApp, TestDb, WorkerProcess, count, eventually, turnq_bin};

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
async fn wait_all_completed(app: &TestApp, ids: &[String], timeout: Duration) -> Result<()> {
    eventually(timeout, || async {
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
async fn wait_all_ended(app: &TestApp, ids: &[String], timeout: Duration) -> Result<()> {
    eventually(timeout, || async {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_a_worker_mid_run_loses_nothing_and_never_overlaps_attempts() -> Result<()> {
    // Build the binary before any clock starts.
    turnq_bin()?;
    let body = Instant::now();
    let mut rng = Rng::seeded();
    let app = TestApp::spawn_without_workers().await?;
    let mut fleet = start_fleet(&app, 1..=3, &FAST_LEASES)?;
    let ids = submit(&app, random_turns(&mut rng, TASKS)).await?;

    // Mid-run: every worker is running turns.
    eventually(Duration::from_secs(30), || async {
        let running = running(&app.db).await?;
        for worker in &fleet {
            ensure!(
                running.iter().any(|(_, _, w)| worker.owns(w)),
                "{} runs nothing yet; running: {running:?}",
                worker.host
            );
        }
        Ok(())
    })
    .await?;
    let victim = &mut fleet[0];
    victim.process.kill_9()?;
    let killed_at = Instant::now();
    let killed_ts = turnq_core::time::now();
    // What the dead worker was running: nobody renews these leases any more.
    let orphans: Vec<(String, i32, String)> = running(&app.db)
        .await?
        .into_iter()
        .filter(|(_, _, w)| victim.owns(w))
        .collect();
    ensure!(
        !orphans.is_empty(),
        "{} ran turns a moment ago but none when killed",
        victim.host
    );

    // Lease 3 s + the dispatcher's sweep + a re-run: far less than this. A job the dead
    // worker had fetched but not claimed comes back after apalis' orphan detection
    // (2 s heartbeat x 4 missed = 8 s), which this bound covers too.
    wait_all_ended(&app, &ids, Duration::from_secs(25)).await?;
    let all_ended = killed_at.elapsed();

    let rows = task_rows(&app.db).await?;
    let log = event_log(&app.db).await?;
    assert_no_overlapping_attempts(&log, &ids)?;
    // Each task completed, or failed because its attempts were spent (only lost
    // leases can fail a turn here: the scripts succeed).
    for id in &ids {
        let task = &rows[id];
        let spent = task.state == TaskState::Failed && task.attempt >= task.max_attempts;
        ensure!(
            task.state == TaskState::Completed || spent,
            "task {id} ended {} at attempt {} of {}; its log: {:#?}",
            task.state,
            task.attempt,
            task.max_attempts,
            log.get(id)
        );
    }
    // The orphans were recovered through their lost lease, and ran again elsewhere.
    for (id, attempt, worker) in &orphans {
        let stream = &log[id];
        let end = stream
            .iter()
            .position(|e| {
                ATTEMPT_ENDS.contains(&e.kind.as_str()) && e.attempt() == Some(i64::from(*attempt))
            })
            .with_context(|| {
                format!(
                    "attempt {attempt} of task {id} on the killed {worker} never ended: {stream:#?}"
                )
            })?;
        let ended = &stream[end];
        if ended.kind != "task.lease_lost" {
            // A commit already on its way to Postgres when the process died still lands;
            // its time was taken in the worker, before the kill.
            ensure!(
                ended.at <= killed_ts,
                "attempt {attempt} of task {id} on the killed {worker} ended with {} at {}, \
                 after the kill at {killed_ts}: {stream:#?}",
                ended.kind,
                ended.at
            );
            continue;
        }
        ensure!(
            ended.worker() == worker,
            "task {id} lost the lease of {}, not of {worker}: {stream:#?}",
            ended.worker()
        );
        ensure!(
            stream[end..]
                .iter()
                .any(|e| e.kind == "task.started" && !victim.owns(e.worker())),
            "task {id} never ran again after losing its lease: {stream:#?}"
        );
    }
    eprintln!(
        "killed {} while it ran {} turns; all {} tasks ended {:.1}s later; by state: {:?}; \
         the last start (s after the kill, task, its events): {:?}; test body {:.1}s",
        victim.host,
        orphans.len(),
        ids.len(),
        all_ended.as_secs_f64(),
        states(&app.db, &ids).await?,
        last_start(&log, killed_ts),
        body.elapsed().as_secs_f64()
    );
    drop(fleet);
    app.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_all_workers_mid_run_then_new_ones_lose_nothing() -> Result<()> {
    turnq_bin()?;
    let body = Instant::now();
    let mut rng = Rng::seeded();
    let app = TestApp::spawn_without_workers().await?;
    let mut flags = FAST_LEASES.to_vec();
    flags.extend(["--shutdown-grace", "1s"]);
    let mut fleet = start_fleet(&app, 1..=3, &flags)?;
    // Every tenth turn takes 4 s, longer than the grace: stopping must hand it back.
    let turns: Vec<Value> = (0..TASKS)
        .map(|i| {
            if i % 10 == 0 {
                script(4000)
            } else {
                script(rng.between(50, 800))
            }
        })
        .collect();
    let ids = submit(&app, turns).await?;
    let long: HashSet<&String> = ids.iter().step_by(10).collect();

    eventually(Duration::from_secs(30), || async {
        let running = running(&app.db).await?;
        for worker in &fleet {
            ensure!(
                running
                    .iter()
                    .any(|(id, _, w)| worker.owns(w) && long.contains(id)),
                "{} runs no long turn yet; running: {running:?}",
                worker.host
            );
        }
        Ok(())
    })
    .await?;
    for worker in &fleet {
        worker.process.terminate()?;
    }
    let terminated_at = Instant::now();
    for worker in &mut fleet {
        // Grace 1 s, then the stopped turns' hand-back: seconds, not more.
        let status = worker.process.wait_exit(Duration::from_secs(20)).await?;
        ensure!(
            status.success(),
            "{} exited with {status} after SIGTERM",
            worker.host
        );
    }
    let stopped_in = terminated_at.elapsed();
    // Nothing is left running under a worker that is gone: each turn finished within
    // the grace or was handed back.
    let orphans = running(&app.db).await?;
    ensure!(
        orphans.is_empty(),
        "after every worker exited, {} tasks are still running: {orphans:?}",
        orphans.len()
    );
    let log = event_log(&app.db).await?;
    let released: Vec<(String, i64)> = events_of(&log, "task.released")
        .map(|(id, e)| (id.clone(), e.version))
        .collect();
    ensure!(
        !released.is_empty(),
        "no turn was handed back (task.released) although long turns ran at SIGTERM"
    );
    let old_fleet: Vec<String> = fleet.iter().map(WorkerProcess::id_prefix).collect();

    let new_fleet = start_fleet(&app, 4..=6, &FAST_LEASES)?;
    wait_all_completed(&app, &ids, Duration::from_secs(30)).await?;
    let log = event_log(&app.db).await?;
    assert_no_overlapping_attempts(&log, &ids)?;
    // The handed-back turns ran again, on the new workers, to completion.
    for (id, version) in &released {
        let stream = &log[id];
        ensure!(
            stream.iter().any(|e| e.version > *version
                && e.kind == "task.started"
                && new_fleet.iter().any(|w| w.owns(e.worker()))),
            "task {id} was released (v{version}) and never started on a new worker: {stream:#?}"
        );
        ensure!(
            !stream.iter().any(|e| e.version > *version
                && old_fleet.iter().any(|p| e.worker().starts_with(p.as_str()))),
            "a stopped worker wrote for task {id} after handing it back: {stream:#?}"
        );
    }
    eprintln!(
        "SIGTERM to 3 workers: they exited within {:.1}s, {} turns handed back; all {} tasks \
         completed on the new workers; test body {:.1}s",
        stopped_in.as_secs_f64(),
        released.len(),
        ids.len(),
        body.elapsed().as_secs_f64()
    );
    drop(new_fleet);
    app.stop().await;
    Ok(())
}

/// How many tasks are handed to Redis and not yet started.
async fn waiting_in_redis(db: &DatabaseConnection, ids: &[String]) -> Result<usize> {
    let rows = task_rows(db).await?;
    Ok(ids
        .iter()
        .filter(|id| {
            rows.get(*id)
                .is_some_and(|t| t.state == TaskState::Pending && t.queued_at.is_some())
        })
        .count())
}

/// Submits the turns, waits until some completed while many still wait in Redis, runs
/// `fault`, and checks that every task still completes, some of them re-pushed.
async fn redis_fault_mid_run_loses_nothing(redis: &mut PrivateRedis, fault: &str) -> Result<()> {
    turnq_bin()?;
    let body = Instant::now();
    let mut rng = Rng::seeded();
    let app = TestApp::spawn_without_workers_on(&redis.url()).await?;
    let fleet = start_fleet(&app, 1..=3, &FAST_LEASES)?;
    let ids = submit(&app, random_turns(&mut rng, TASKS)).await?;
    eventually(Duration::from_secs(30), || async {
        let by_state = states(&app.db, &ids).await?;
        let done = by_state.get("completed").copied().unwrap_or(0);
        ensure!(done >= 20, "{done} completed; by state: {by_state:?}");
        Ok(())
    })
    .await?;
    let waiting = waiting_in_redis(&app.db, &ids).await?;
    match fault {
        "flushall" => {
            let ok = redis.command("FLUSHALL").await?;
            ensure!(ok == "OK", "FLUSHALL answered {ok}");
        }
        "restart" => redis.restart().await?,
        other => bail!("unknown fault {other}"),
    }
    let faulted_at = Instant::now();
    let faulted_ts = turnq_core::time::now();
    ensure!(
        waiting >= 20,
        "only {waiting} tasks waited in Redis at the {fault}: too few to show anything"
    );

    // The harness' dispatcher re-pushes a queued task after --redeliver-after (5 min),
    // so completing within this bound takes noticing the lost data.
    wait_all_completed(&app, &ids, Duration::from_secs(30)).await?;
    let all_done = faulted_at.elapsed();
    let log = event_log(&app.db).await?;
    assert_no_overlapping_attempts(&log, &ids)?;
    let re_pushed = log
        .values()
        .filter(|s| s.iter().filter(|e| e.kind == "task.queued").count() > 1)
        .count();
    ensure!(
        re_pushed > 0,
        "all tasks completed, yet none was queued twice: were {waiting} jobs really lost?"
    );
    eprintln!(
        "{fault} while {waiting} tasks waited in Redis: {re_pushed} re-pushed, all {} completed \
         {:.1}s later; the last start (s after the fault, task, its events): {:?}; test body {:.1}s",
        ids.len(),
        all_done.as_secs_f64(),
        last_start(&log, faulted_ts),
        body.elapsed().as_secs_f64()
    );
    drop(fleet);
    app.stop().await;
    Ok(())
}

/// FLUSHALL on a Redis of the test's own: the shared one serves other tests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flushall_redis_mid_run_loses_nothing() -> Result<()> {
    let mut redis = PrivateRedis::start().await?;
    redis_fault_mid_run_loses_nothing(&mut redis, "flushall").await
}

/// A crash and restart of a Redis without persistence: connections break and the data
/// is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_redis_mid_run_loses_nothing() -> Result<()> {
    let mut redis = PrivateRedis::start().await?;
    redis_fault_mid_run_loses_nothing(&mut redis, "restart").await
}

/// How long after the last cancel every freed slot must run a new turn: the design's
/// one second for a cancellation to reach its worker and stop the backend, plus half a
/// second for the new task to be dispatched (NOTIFY, push) and fetched (20 ms polls) on
/// a busy CI machine.
const CANCEL_TO_START: Duration = Duration::from_millis(1500);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_20_running_tasks_stops_each_within_a_second() -> Result<()> {
    turnq_bin()?;
    let body = Instant::now();
    let app = TestApp::spawn_without_workers().await?;
    // A heartbeat far longer than the bound: only the cancellation notice, not the next
    // lease renewal, can stop a turn in time.
    let flags = [
        "--concurrency",
        "10",
        "--heartbeat",
        "5s",
        "--lease",
        "15s",
        "--poll-interval",
        "20ms",
    ];
    let fleet = start_fleet(&app, 1..=2, &flags)?;
    let chunks: Vec<String> = (0..600).map(|i| format!("chunk {i} ")).collect();
    let long: Vec<Value> = (0..20)
        .map(|_| json!({"input": {"script": {"latency_ms": 60000, "chunks": chunks}}}))
        .collect();
    let long = submit(&app, long).await?;
    eventually(Duration::from_secs(30), || async {
        let running = running(&app.db).await?;
        ensure!(
            running.len() == 20,
            "{} of 20 running: {running:?}",
            running.len()
        );
        Ok(())
    })
    .await?;

    for id in &long {
        let (status, body) = app
            .post(
                &format!("/v1/tasks/{id}/cancel"),
                &json!({"reason": "fault test"}),
            )
            .await?;
        ensure!(status == 200, "cancel of {id} answered {status}: {body}");
        ensure!(
            body["state"] == "cancelled",
            "cancel of {id} answered {body}"
        );
    }
    // Every slot is taken by a cancelled turn: these start only as those stop.
    let quick = submit(
        &app,
        (0..20)
            .map(|_| json!({"input": {"script": {"latency_ms": 10}}}))
            .collect(),
    )
    .await?;
    wait_all_completed(&app, &quick, Duration::from_secs(30)).await?;

    let log = event_log(&app.db).await?;
    let last_cancel = long
        .iter()
        .filter_map(|id| log[id].iter().find(|e| e.kind == "task.cancelled"))
        .map(|e| e.at)
        .max()
        .context("the cancelled tasks have task.cancelled")?;
    let mut delays: Vec<(i64, &String)> = quick
        .iter()
        .map(|id| {
            let started = log[id]
                .iter()
                .find(|e| e.kind == "task.started")
                .map(|e| e.at)
                .with_context(|| format!("quick task {id} completed without task.started"))?;
            Ok(((started - last_cancel).num_milliseconds(), id))
        })
        .collect::<Result<_>>()?;
    delays.sort();
    let worst = delays.last().map_or(0, |(ms, _)| *ms);
    ensure!(
        worst <= CANCEL_TO_START.as_millis() as i64,
        "the quick tasks started these many ms after the last cancel (bound {CANCEL_TO_START:?}): {delays:?}"
    );
    // The cancelled turns stayed cancelled, and their workers wrote nothing after it.
    for id in &long {
        let stream = &log[id];
        ensure!(
            stream.last().is_some_and(|e| e.kind == "task.cancelled"),
            "task {id} has events after its cancel: {:#?}",
            &stream[stream.len().saturating_sub(3)..]
        );
    }
    eprintln!(
        "20 cancels, then 20 quick tasks started {}..{} ms after the last cancel; test body {:.1}s",
        delays.first().map_or(0, |(ms, _)| *ms),
        worst,
        body.elapsed().as_secs_f64()
    );
    drop(fleet);
    app.stop().await;
    Ok(())
}

/// One dispatch round that hands over (and records) whatever is due.
async fn dispatch(db: &DatabaseConnection) -> Result<Vec<DueTask>> {
    let mut pushed = Vec::new();
    TaskStore::dispatch_due(db, 10, Duration::from_secs(300), &json!({}), |due| {
        pushed.extend(due);
        async { Ok::<(), Box<dyn std::error::Error + Send + Sync>>(()) }
    })
    .await?;
    Ok(pushed)
}

/// The fencing token at the core: after worker A's lease expired and worker B took the
/// task, A (a zombie that never noticed) can neither stream output nor complete it.
#[tokio::test]
async fn a_worker_whose_lease_was_stolen_cannot_complete() -> Result<()> {
    let test_db = TestDb::new().await?;
    let db = &test_db.db;
    let metadata = json!({});
    let task = NewTaskRequest {
        input: json!("x"),
        ..Default::default()
    }
    .validate(turnq_core::time::now())?;
    let id: TaskId = TaskStore::submit_batch(db, vec![task], &metadata).await?[0]
        .task
        .id;
    let worker_a = WorkerId("worker-a".into());
    let worker_b = WorkerId("worker-b".into());

    let due = dispatch(db).await?;
    ensure!(due.len() == 1 && due[0].id == id, "dispatched {due:?}");
    let a = TaskStore::claim(
        db,
        id,
        due[0].attempt,
        &worker_a,
        Duration::from_millis(1),
        &metadata,
    )
    .await?
    .context("A's claim of a pending task succeeds")?;
    let attempt_a = a.task.attempt;
    // The lease is 1 ms: the sweep recovers the task as soon as that is past.
    eventually(Duration::from_secs(5), || async {
        let recovered = TaskStore::expire_leases(db, 100, &metadata).await?;
        ensure!(recovered == 1, "the sweep recovered {recovered} tasks");
        Ok(())
    })
    .await?;
    let due = dispatch(db).await?;
    ensure!(
        due.len() == 1 && due[0].id == id,
        "after the lost lease the dispatcher handed over {due:?}"
    );
    let b = TaskStore::claim(
        db,
        id,
        due[0].attempt,
        &worker_b,
        Duration::from_secs(300),
        &metadata,
    )
    .await?
    .context("B's claim of the recovered task succeeds")?;
    let attempt_b = b.task.attempt;
    assert_eq!(attempt_b, attempt_a + 1, "B runs the next attempt");

    let events_before = count(db, "events").await?;
    let output = TaskEvent::Output(Output {
        attempt: attempt_a,
        chunks: vec![OutputChunk {
            stream: "text".into(),
            text: "stale".into(),
        }],
    });
    let completed = |attempt, summary: &str| {
        TaskEvent::Completed(Completed {
            attempt,
            output_summary: summary.into(),
            usage: Usage::default(),
        })
    };
    for event in [output, completed(attempt_a, "stale")] {
        let refused = TaskStore::record(db, id, attempt_a, &worker_a, &event, &metadata).await;
        match refused {
            Err(Error::Fenced {
                task,
                attempt,
                worker,
            }) if task == id && attempt == attempt_a && worker == worker_a.0 => {}
            other => bail!("A's {} was not fenced: {other:?}", event.kind()),
        }
    }
    assert_eq!(
        count(db, "events").await?,
        events_before,
        "a fenced write appends nothing"
    );
    let now = TaskStore::get(db, id).await?;
    assert_eq!(
        (now.state, now.attempt, now.worker_id.as_deref()),
        (TaskState::Running, attempt_b, Some("worker-b")),
        "the task is still B's"
    );

    let done = TaskStore::record(
        db,
        id,
        attempt_b,
        &worker_b,
        &completed(attempt_b, "fresh"),
        &metadata,
    )
    .await?;
    assert_eq!(done.state, TaskState::Completed);
    assert_eq!(done.output_summary.as_deref(), Some("fresh"));
    let kinds: Vec<String> = TaskStore::events(db, id, turnq_core::StreamVersion::NEW, 100)
        .await?
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(
        kinds,
        [
            "task.submitted",
            "task.queued",
            "task.started",
            "task.lease_lost",
            "task.queued",
            "task.started",
            "task.completed"
        ],
        "the log holds B's attempt and nothing of A's after its lease was lost"
    );
    Ok(())
}

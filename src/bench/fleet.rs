//! The fleet measured end to end, through the HTTP API: throughput of a bulk
//! submission, and the latency of a steady trickle.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter, QuerySelect};
use serde::Serialize;
use serde_json::{Value, json};
use turnq_core::{
    entity::{events, tasks},
    task::TaskState,
};

use super::{Stack, quantile, stack::QUEUE};

#[derive(Debug, Serialize)]
pub struct Throughput {
    pub tasks: usize,
    /// From the first submission to the last `task.completed`.
    pub seconds: f64,
    pub tasks_per_sec: f64,
    /// The submissions alone (the workers run meanwhile).
    pub submit_tasks_per_sec: f64,
    /// CPU time per task of Postgres, Redis and turnq's processes over the run.
    pub cpu: super::cpu::CpuPerTask,
}

#[derive(Debug, Serialize)]
pub struct Latency {
    pub tasks: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// A no-op turn: the `script` agent, zero latency, no output.
fn no_op() -> Value {
    json!({"queue": QUEUE, "agent": "script", "input": {"script": {"chunks": []}}})
}

/// Submits `n` tasks through `POST /v1/tasks/batch` (1,000 per call) and waits until
/// every one is completed.
pub async fn throughput(stack: &Stack, n: usize) -> Result<Throughput> {
    let before = completed(stack).await?;
    let cpu_before = super::cpu::CpuSample::take(&stack.turnq_pids());
    let started = Instant::now();
    let mut left = n;
    while left > 0 {
        let size = left.min(turnq_core::task::MAX_BATCH);
        let body = json!({"tasks": vec![no_op(); size]});
        let response = stack
            .post("/v1/tasks/batch")
            .json(&body)
            .send()
            .await
            .context("submitting a batch to the bench's API")?;
        anyhow::ensure!(
            response.status().is_success(),
            "the batch submission was refused: {} {}",
            response.status(),
            response.text().await.unwrap_or_default()
        );
        left -= size;
    }
    let submitted = started.elapsed().as_secs_f64();
    wait_completed(stack, before + n as u64, n).await?;
    let seconds = started.elapsed().as_secs_f64();
    let cpu = cpu_before.per_task(&super::cpu::CpuSample::take(&stack.turnq_pids()), n);
    Ok(Throughput {
        tasks: n,
        seconds,
        tasks_per_sec: n as f64 / seconds,
        submit_tasks_per_sec: n as f64 / submitted,
        cpu,
    })
}

/// Submits one task every 1/`rate` s for `length` through `POST /v1/tasks`, then
/// measures, per task, the time from just before its request was sent to its
/// `task.started` event (both clocks are this machine's).
pub async fn latency(stack: &Stack, rate: u32, length: Duration) -> Result<Latency> {
    // A warm-up at the same rate first, not measured: the connection pools grow to the
    // load (each new Postgres connection costs tens of milliseconds) and the statements
    // get prepared. The figures are the steady state a running deployment sees.
    trickle(stack, rate, WARM_UP).await?;
    trickle(stack, rate, length).await
}

/// How long the latency run submits, unmeasured, before it measures.
const WARM_UP: Duration = Duration::from_secs(2);

/// Submits at `rate` for `length` and measures submit → started.
async fn trickle(stack: &Stack, rate: u32, length: Duration) -> Result<Latency> {
    let before = completed(stack).await?;
    let n = (f64::from(rate) * length.as_secs_f64()).round().max(1.0) as usize;
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut requests = tokio::task::JoinSet::new();
    for _ in 0..n {
        ticker.tick().await;
        let request = stack.post("/v1/tasks").json(&no_op());
        requests.spawn(async move {
            let sent = turnq_core::time::now();
            let response = request.send().await?;
            let status = response.status();
            let body: Value = response.json().await?;
            anyhow::ensure!(
                status.is_success(),
                "a submission was refused: {status} {body}"
            );
            let id = body["id"]
                .as_str()
                .context("the submission's answer has no id")?
                .to_owned();
            anyhow::Ok((id, sent))
        });
    }
    let mut sent_at = HashMap::new();
    while let Some(joined) = requests.join_next().await {
        let (id, sent) = joined??;
        sent_at.insert(id, sent);
    }
    wait_completed(stack, before + n as u64, n).await?;

    let mut millis = Vec::with_capacity(n);
    let ids: Vec<String> = sent_at.keys().cloned().collect();
    for chunk in ids.chunks(1000) {
        let started: Vec<(String, turnq_core::time::Timestamp)> = events::Entity::find()
            .select_only()
            .column(events::Column::StreamId)
            .column(events::Column::RecordedAt)
            .filter(events::Column::StreamId.is_in(chunk.iter().cloned()))
            .filter(events::Column::Kind.eq("task.started"))
            .into_tuple()
            .all(&stack.db)
            .await?;
        for (id, at) in started {
            if let Some(sent) = sent_at.get(&id) {
                millis.push((at - *sent).num_microseconds().unwrap_or(i64::MAX) as f64 / 1000.0);
            }
        }
    }
    anyhow::ensure!(
        !millis.is_empty(),
        "no task.started event was found for the latency run's tasks"
    );
    millis.sort_by(f64::total_cmp);
    Ok(Latency {
        tasks: millis.len(),
        p50_ms: quantile(&millis, 0.5),
        p99_ms: quantile(&millis, 0.99),
        max_ms: quantile(&millis, 1.0),
    })
}

async fn completed(stack: &Stack) -> Result<u64> {
    Ok(tasks::Entity::find()
        .filter(tasks::Column::State.eq(TaskState::Completed))
        .count(&stack.db)
        .await?)
}

/// Waits until `target` tasks are completed; fails if progress stops for 30 s, or if
/// any task of the run failed. Every 20 ms it only asks whether any task is unfinished
/// (one index probe); the counts, which read every row, are taken once a second, so the
/// bench does not load Postgres with its own polling.
async fn wait_completed(stack: &Stack, target: u64, n: usize) -> Result<()> {
    let mut last = (0, Instant::now());
    let mut counted_at = Instant::now();
    loop {
        let unfinished = tasks::Entity::find()
            .select_only()
            .column(tasks::Column::Id)
            .filter(tasks::Column::State.is_in([TaskState::Pending, TaskState::Running]))
            .limit(1)
            .into_tuple::<uuid::Uuid>()
            .one(&stack.db)
            .await?;
        if unfinished.is_none() || counted_at.elapsed() >= Duration::from_secs(1) {
            counted_at = Instant::now();
            let done = completed(stack).await?;
            if done >= target {
                return Ok(());
            }
            let failed = tasks::Entity::find()
                .filter(tasks::Column::State.is_in([
                    TaskState::Failed,
                    TaskState::Blocked,
                    TaskState::Cancelled,
                ]))
                .count(&stack.db)
                .await?;
            anyhow::ensure!(
                failed == 0,
                "{failed} bench tasks did not complete (failed, blocked or cancelled): see the worker's log"
            );
            if done != last.0 {
                last = (done, Instant::now());
            }
            anyhow::ensure!(
                last.1.elapsed() < Duration::from_secs(30),
                "no task completed for 30 s ({done} of {n} done): are the workers running? (their log is on stderr)"
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

//! `turnq bench --scale`: the read side with a big history. It seeds the bench database
//! with `--scale-tasks` tasks (default 1M: mostly completed, a backlog of pending,
//! running, blocked and failed ones over ten queues, spread over the last day; one in
//! a hundred arenas of three of them) and
//! `--scale-events` events (default 10M: an even share per task), then times each read
//! endpoint an operator's tools call, and each page of the web UI, over HTTP, as a
//! client sees it: p50 and p99 of `SCALE_REQUESTS` calls each.
//!
//! Seeding writes rows with `INSERT … SELECT generate_series` (raw SQL: a bulk load
//! that the ORM has no statement for), within the constraints the schema enforces.

use std::time::Instant;

use anyhow::{Context, Result, ensure};
use sea_orm::ConnectionTrait;
use serde::Serialize;

use super::{Stack, quantile};

/// Calls per endpoint.
const SCALE_REQUESTS: usize = 50;

#[derive(Debug, Serialize)]
pub struct ScaleFigures {
    pub tasks: u64,
    pub events: u64,
    pub seed_seconds: f64,
    /// (endpoint, p50 ms, p99 ms).
    pub endpoints: Vec<(String, f64, f64)>,
}

/// Seeds the history and times the reads.
pub async fn run(stack: &Stack, tasks: u64, events: u64) -> Result<ScaleFigures> {
    ensure!(tasks >= 100, "--scale-tasks must be at least 100");
    let per_task = (events / tasks).max(1);
    let started = Instant::now();
    seed(stack, tasks, per_task).await?;
    let seed_seconds = started.elapsed().as_secs_f64();
    let sample: String = stack
        .db
        .query_one_raw(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Postgres,
            "SELECT id::text AS id FROM tasks ORDER BY id DESC OFFSET 1000 LIMIT 1",
        ))
        .await?
        .context("a seeded task")?
        .try_get("", "id")?;
    let arena = arena_id_sql(&format!("{}", tasks / ARENA_EVERY / 2));
    let arena: String = stack
        .db
        .query_one_raw(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Postgres,
            format!("SELECT {arena}::text AS id"),
        ))
        .await?
        .context("a seeded arena")?
        .try_get("", "id")?;
    let endpoints = [
        "/v1/queues".to_owned(),
        "/metrics".to_owned(),
        "/v1/tasks?limit=50".to_owned(),
        "/v1/tasks?state=failed&limit=50".to_owned(),
        "/v1/tasks?queue=q3&state=completed&limit=50".to_owned(),
        "/v1/inbox".to_owned(),
        "/v1/workers".to_owned(),
        format!("/v1/tasks/{sample}"),
        format!("/v1/tasks/{sample}/events"),
        "/v1/stats/usage?group_by=agent".to_owned(),
        "/v1/arenas".to_owned(),
        "/v1/arenas?project=p3".to_owned(),
        format!("/v1/arenas/{arena}"),
        // The UI's pages (signed in through the cookie).
        "/".to_owned(),
        "/tasks".to_owned(),
        "/tasks?state=failed".to_owned(),
        "/tasks?queue=q3&state=completed".to_owned(),
        "/tasks?project=p7&agent=script".to_owned(),
        "/tasks?q=seeded+task+999".to_owned(),
        format!("/tasks/{sample}"),
        "/inbox".to_owned(),
        "/workers".to_owned(),
        "/agents".to_owned(),
        "/sessions".to_owned(),
        "/arenas".to_owned(),
        format!("/arenas/{arena}"),
    ];
    let mut figures = Vec::new();
    for path in endpoints {
        let mut ms = Vec::with_capacity(SCALE_REQUESTS);
        for _ in 0..SCALE_REQUESTS {
            let t = Instant::now();
            let response = stack
                .get(&path)
                .header("cookie", format!("turnq_token={}", stack.token))
                .send()
                .await?;
            let status = response.status();
            response.bytes().await?;
            ensure!(status.is_success(), "GET {path} answered {status}");
            ms.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        ms.sort_by(f64::total_cmp);
        figures.push((path, quantile(&ms, 0.5), quantile(&ms, 0.99)));
    }
    Ok(ScaleFigures {
        tasks,
        events: tasks * per_task,
        seed_seconds,
        endpoints: figures,
    })
}

/// `tasks` tasks over ten queues and the last day, `per_task` events each.
/// One arena per this many seeded tasks: its first three are the arena's contestants.
const ARENA_EVERY: u64 = 100;

/// The id of seeded arena `g` (an SQL expression of `g`).
fn arena_id_sql(g: &str) -> String {
    format!("('00000000-0000-7000-a000-' || lpad(to_hex({g}), 12, '0'))::uuid")
}

async fn seed(stack: &Stack, tasks: u64, per_task: u64) -> Result<()> {
    eprintln!(
        "bench: seeding {tasks} tasks and {} events...",
        tasks * per_task
    );
    // States by i mod 100: 90 completed, 4 pending, 2 failed, 1 running, 1 blocked,
    // 2 cancelled. Ids are UUIDv7-like (time-ordered) so listings page as in life.
    // Arena `g` holds tasks 100g, 100g+1 and 100g+2, and was created with them.
    let arena_of_task = arena_id_sql(&format!("i / {ARENA_EVERY}"));
    let arena = arena_id_sql("g");
    let statements = [
        format!(
            "INSERT INTO arenas (id, project, queue, input, contestants, created_at) \
             SELECT {arena}, 'p' || (g % 20), 'q' || (g % 10), \
               jsonb_build_object('prompt', 'seeded arena ' || g), \
               '[{{\"agent\": \"script\"}}, {{\"agent\": \"script\"}}, {{\"agent\": \"script\"}}]', \
               now() - (({tasks} - g * {ARENA_EVERY}) * interval '1 day' / {tasks}) \
             FROM generate_series(0, {tasks} / {ARENA_EVERY}) AS g"
        ),
        format!(
            "INSERT INTO tasks (id, project, queue, priority, state, input, agent, run_at, \
               attempt, max_attempts, lease_until, worker_id, version, created_at, started_at, \
               ended_at, updated_at, output_summary, input_tokens, output_tokens, cost_usd, \
               arena_id) \
             SELECT \
               (lpad(to_hex((extract(epoch from c) * 1000)::bigint), 12, '0') || '7' \
                 || lpad(to_hex(i % 4096), 3, '0') || '8' || lpad(to_hex(i), 15, '0'))::uuid, \
               'p' || (i % 20), 'q' || (i % 10), 0, s, \
               jsonb_build_object('prompt', 'seeded task ' || i), 'script', c, \
               CASE WHEN s = 'pending' THEN 0 ELSE 1 END, 3, \
               CASE WHEN s = 'running' THEN now() + interval '1 hour' END, \
               CASE WHEN s = 'running' THEN 'bench-seed' END, {per_task}, c, \
               CASE WHEN s <> 'pending' THEN c END, \
               CASE WHEN s IN ('completed', 'failed', 'cancelled') THEN c + interval '1 second' END, \
               c, CASE WHEN s = 'completed' THEN 'done' END, 100, 20, 0.001, \
               CASE WHEN i % {ARENA_EVERY} < 3 THEN {arena_of_task} END \
             FROM ( \
               SELECT i, now() - (({tasks} - i) * interval '1 day' / {tasks}) AS c, \
                 CASE WHEN i % 100 < 90 THEN 'completed' WHEN i % 100 < 94 THEN 'pending' \
                   WHEN i % 100 < 96 THEN 'failed' WHEN i % 100 < 97 THEN 'running' \
                   WHEN i % 100 < 98 THEN 'blocked' ELSE 'cancelled' END AS s \
               FROM generate_series(1, {tasks}) AS i) AS seed"
        ),
        format!(
            "INSERT INTO events (stream_type, stream_id, version, kind, data, metadata, recorded_at) \
             SELECT 'task', t.id::text, v, \
               CASE WHEN v = 1 THEN 'task.submitted' ELSE 'task.output' END, \
               jsonb_build_object('attempt', 1, 'chunks', jsonb_build_array( \
                 jsonb_build_object('stream', 'text', 'text', 'seeded output ' || v))), \
               '{{\"actor\": \"bench\"}}', t.created_at \
             FROM tasks t, generate_series(1, {per_task}) AS v"
        ),
        "VACUUM ANALYZE arenas".to_owned(),
        "VACUUM ANALYZE tasks".to_owned(),
        "VACUUM ANALYZE events".to_owned(),
    ];
    for sql in statements {
        stack
            .db
            .execute_unprepared(&sql)
            .await
            .with_context(|| format!("seeding: {}", &sql[..sql.len().min(60)]))?;
    }
    Ok(())
}

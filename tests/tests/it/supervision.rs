//! A process never goes on half-alive: when any of its long-lived tasks dies, the
//! whole process stops with a non-zero exit, naming the task (`turnq_core::supervise`).
//! Each kind of task is made to panic through its fault point (`--failpoints`) in the
//! real `turnq up`, which runs all of them: API, dispatcher and a worker pool.

use std::process::Stdio;

use anyhow::{Context, Result, ensure};
use serde_json::json;
use turnq_core::{
    supervise::Supervisor,
    task::{NewTaskRequest, TaskStore},
};
use turnq_tests::{TestDb, TestRedis, turnq_bin, within};

/// Runs `turnq up` with the fault point `point` set to panic, after submitting a task
/// when `with_a_task` (the claimer and the writer only act on one); returns its exit
/// code and stderr once it has exited on its own.
async fn up_with_a_panicking(point: &str, with_a_task: bool) -> Result<(Option<i32>, String)> {
    let db = TestDb::new().await?;
    let redis = TestRedis::new();
    if with_a_task {
        let task = NewTaskRequest {
            input: json!({"script": {"chunks": ["a"]}}),
            ..Default::default()
        }
        .validate(turnq_core::time::now())?;
        TaskStore::submit(&db.db, task, &json!({"actor": "test"})).await?;
    }
    let token_file = std::env::temp_dir().join(format!("turnq-token-{}", db.name));
    let child = tokio::process::Command::new(turnq_bin()?)
        .args(["up", "--listen", "127.0.0.1:0", "--poll-interval", "20ms"])
        .args(["--failpoints", &format!("{point}=panic")])
        .env("DATABASE_URL", &db.url)
        .env("REDIS_URL", &redis.url)
        .env("TURNQ_REDIS_PREFIX", &redis.prefix)
        .env("TURNQ_TOKEN_FILE", &token_file)
        .env("TURNQ_DATABASE_MAX_CONNECTIONS", "8")
        .env("RUST_LOG", "warn")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("starting turnq up")?;
    let output = within(
        format!("turnq up stops after {point} panics"),
        child.wait_with_output(),
    )
    .await??;
    let _ = std::fs::remove_file(&token_file);
    Ok((
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    ))
}

/// The process exited with status 1 and said which task ended and why.
async fn dies_naming(point: &str, task: &str, with_a_task: bool) -> Result<()> {
    let (code, stderr) = up_with_a_panicking(point, with_a_task).await?;
    ensure!(code == Some(1), "exit code {code:?}; stderr:\n{stderr}");
    let said = format!("the long-lived task {task} ended: it panicked");
    ensure!(
        stderr.contains(&said),
        "stderr does not say {said:?}:\n{stderr}"
    );
    Ok(())
}

#[tokio::test]
async fn a_panicking_dispatcher_stops_the_process() -> Result<()> {
    dies_naming("dispatcher.round", "dispatcher", false).await
}

#[tokio::test]
async fn a_panicking_dispatcher_listener_stops_the_process() -> Result<()> {
    dies_naming("dispatcher.listener", "dispatcher.listener", false).await
}

#[tokio::test]
async fn a_panicking_heartbeat_stops_the_process() -> Result<()> {
    dies_naming("worker.heartbeat", "worker.heartbeat", false).await
}

#[tokio::test]
async fn a_panicking_cancellation_listener_stops_the_process() -> Result<()> {
    dies_naming("worker.cancel-listener", "worker.cancel-listener", false).await
}

#[tokio::test]
async fn a_panicking_postgres_probe_stops_the_process() -> Result<()> {
    dies_naming("worker.postgres-probe", "worker.postgres-probe", false).await
}

#[tokio::test]
async fn a_panicking_queue_consumer_stops_the_process() -> Result<()> {
    dies_naming("worker.consumer", "worker.consumer default:script", false).await
}

#[tokio::test]
async fn a_panicking_redis_cleanup_stops_the_process() -> Result<()> {
    dies_naming("worker.redis-cleanup", "worker.redis-cleanup", false).await
}

#[tokio::test]
async fn a_panicking_wake_listener_stops_the_process() -> Result<()> {
    dies_naming("worker.wake-listener", "worker.wake-listener", false).await
}

#[tokio::test]
async fn a_panicking_claimer_stops_the_process() -> Result<()> {
    dies_naming("worker.claimer", "worker.claimer", true).await
}

#[tokio::test]
async fn a_panicking_writer_stops_the_process() -> Result<()> {
    dies_naming("worker.writer", "worker.writer", true).await
}

#[tokio::test]
async fn readyz_answers_503_naming_a_dead_task_and_lists_the_live_ones_otherwise() -> Result<()> {
    let db = TestDb::new().await?;
    let stop = tokio_util::sync::CancellationToken::new();
    let serve = |tasks: Supervisor| {
        let (db, stop) = (db.db.clone(), stop.clone());
        async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let addr = listener.local_addr()?;
            let config = turnq_api::ApiConfig::default();
            let feed = turnq_api::AppState::start_feed(&db, &config, &tasks);
            let state = turnq_api::AppState::supervised(db, config, tasks, feed);
            tokio::spawn(turnq_api::serve(listener, state, stop));
            anyhow::Ok(format!("http://{addr}/readyz"))
        }
    };

    let healthy = Supervisor::new(stop.clone());
    healthy.spawn("dispatcher", {
        let stop = stop.clone();
        async move { stop.cancelled().await }
    });
    let response = reqwest::get(serve(healthy).await?).await?;
    ensure!(response.status() == 200, "{:?}", response.status());
    let body: serde_json::Value = response.json().await?;
    ensure!(body["tasks"]["dispatcher"] == 1, "{body}");

    let dying = Supervisor::new(stop.clone());
    dying.spawn("dispatcher", async { panic!("injected") });
    within("the dispatcher dies", dying.failure()).await?;
    let response = reqwest::get(serve(dying).await?).await?;
    ensure!(response.status() == 503, "{:?}", response.status());
    let body: serde_json::Value = response.json().await?;
    let message = body["error"]["message"].as_str().unwrap_or_default();
    ensure!(
        message.contains("dispatcher ended: it panicked: injected"),
        "{body}"
    );
    stop.cancel();
    Ok(())
}

//! Request ids: every response carries `x-request-id`, kept from the request or made;
//! the error envelope quotes it; the access log line names it.

use std::process::Stdio;

use anyhow::{Context, Result, ensure};
use turnq_tests::{TestApp, eventually, free_port, turnq_bin, within};

#[tokio::test]
async fn every_response_carries_a_request_id_and_errors_quote_it() -> Result<()> {
    let app = TestApp::spawn_without_workers().await?;
    let made = app.http.get(app.url("/v1/tasks")).send().await?;
    let id = made
        .headers()
        .get("x-request-id")
        .context("a made request id")?
        .to_str()?
        .to_owned();
    ensure!(uuid::Uuid::parse_str(&id).is_ok(), "a UUID: {id}");

    let kept = app
        .http
        .get(app.url("/v1/tasks/not-a-uuid"))
        .header("x-request-id", "client-chosen-42")
        .send()
        .await?;
    ensure!(kept.status() == 400);
    ensure!(
        kept.headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            == Some("client-chosen-42")
    );
    let body: serde_json::Value = kept.json().await?;
    ensure!(body["error"]["request_id"] == "client-chosen-42", "{body}");

    // Router-level refusals too.
    let missing = app.http.get(app.url("/v1/nowhere")).send().await?;
    let header = missing
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body: serde_json::Value = missing.json().await?;
    ensure!(
        header.is_some() && body["error"]["request_id"].as_str() == header.as_deref(),
        "{body}"
    );
    app.stop().await
}

#[tokio::test]
async fn the_access_log_line_names_the_request_id() -> Result<()> {
    let app = TestApp::spawn_without_workers().await?;
    let port = free_port()?;
    let mut api = tokio::process::Command::new(turnq_bin()?)
        .args(["api", "--listen", &format!("127.0.0.1:{port}")])
        .env("DATABASE_URL", &app.test_db.url)
        .env("REDIS_URL", &app.redis.url)
        .env("TURNQ_REDIS_PREFIX", &app.redis.prefix)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let url = format!("http://127.0.0.1:{port}/healthz");
    eventually("the API answers", || async {
        reqwest::Client::new()
            .get(&url)
            .header("x-request-id", "find-me-in-the-log")
            .send()
            .await
            .map(drop)
    })
    .await?;
    api.start_kill()?;
    let output = within("the API exits", api.wait_with_output()).await??;
    let log = String::from_utf8_lossy(&output.stderr);
    ensure!(
        log.lines()
            .any(|l| l.contains("request_id=find-me-in-the-log") && l.contains("status=200")),
        "no access log line with the id:\n{log}"
    );
    app.stop().await
}

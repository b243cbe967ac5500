//! `/metrics`: Prometheus text from the API and from a worker's `--metrics-listen`,
//! counting what happened, and passing `promtool check metrics`.

use std::process::Stdio;

use anyhow::{Context, Result, bail, ensure};
use serde_json::json;
use tokio::io::AsyncWriteExt;
use turnq_tests::{TestApp, eventually, free_port, within};

/// `promtool check metrics` on `text`: the problems it reports, if any.
async fn promtool(text: &str) -> Result<()> {
    let mut child = tokio::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("these tests need promtool (Debian: apt-get install prometheus)")?;
    let mut stdin = child.stdin.take().context("promtool's stdin")?;
    stdin.write_all(text.as_bytes()).await?;
    drop(stdin);
    let output = within("promtool checks the metrics", child.wait_with_output()).await??;
    if !output.status.success() {
        bail!(
            "promtool check metrics failed:\n{}{}\n--- the metrics:\n{text}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

/// The value of the sample whose line starts with `series` (name and labels).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_serves_what_happened_and_what_postgres_holds_and_promtool_accepts_it() -> Result<()>
{
    let app = TestApp::spawn().await?;
    for input in ["a", "b"] {
        let task = app
            .submit(json!({"input": input, "queue": "default"}))
            .await?;
        app.wait_for_state(task["id"].as_str().context("id")?, "completed")
            .await?;
    }
    app.submit(json!({"input": "later", "run_at": "2999-01-01T00:00:00Z"}))
        .await?;
    // No token: scrapers get in like the health probes.
    let scrape = || async {
        let response = reqwest::get(app.url("/metrics")).await?;
        ensure!(response.status() == 200, "{}", response.status());
        let kind = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        ensure!(kind.starts_with("text/plain"), "{kind}");
        anyhow::Ok(response.text().await?)
    };
    let text = eventually("the counters show both completions", || async {
        let text = scrape().await?;
        let done = sample(
            &text,
            r#"turnq_tasks_completed_total{queue="default",agent="script"}"#,
        );
        ensure!(done == Some(2.0), "completed: {done:?}");
        // The queue gauges come from the event feed's tally, which may not have applied
        // the last submission at the first scrape (the feed follows the log, and a busy
        // cluster's snapshot holds it back); that reading is then kept for
        // GAUGES_FRESH_FOR. Wait for the reading that includes it.
        let pending = sample(
            &text,
            r#"turnq_queue_tasks{queue="default",state="pending"}"#,
        );
        ensure!(pending == Some(1.0), "pending: {pending:?}");
        anyhow::Ok(text)
    })
    .await?;
    for (series, want) in [
        (
            r#"turnq_tasks_submitted_total{queue="default",agent="script"}"#,
            3.0,
        ),
        (
            r#"turnq_tasks_started_total{queue="default",agent="script"}"#,
            2.0,
        ),
        (r#"turnq_queue_tasks{queue="default",state="pending"}"#, 1.0),
        (r#"turnq_queue_tasks{queue="default",state="running"}"#, 0.0),
        (r#"turnq_queue_paused{queue="default"}"#, 0.0),
        (r#"turnq_workers{state="live"}"#, 1.0),
        (
            r#"turnq_task_pickup_seconds_count{queue="default",agent="script"}"#,
            2.0,
        ),
    ] {
        ensure!(
            sample(&text, series) == Some(want),
            "{series} is {:?}, not {want}:\n{text}",
            sample(&text, series)
        );
    }
    ensure!(
        text.contains("# HELP turnq_turn_duration_seconds"),
        "{text}"
    );
    promtool(&text).await?;
    app.stop().await
}

#[tokio::test]
async fn a_worker_process_serves_its_metrics_on_metrics_listen() -> Result<()> {
    let app = TestApp::spawn_without_workers().await?;
    let port = free_port()?;
    let _worker = app.worker_process(
        "host-m",
        &["--metrics-listen", &format!("127.0.0.1:{port}")],
    )?;
    let task = app.submit(json!({"input": "counted"})).await?;
    app.wait_for_state(task["id"].as_str().context("id")?, "completed")
        .await?;
    let url = format!("http://127.0.0.1:{port}/metrics");
    let text = eventually("the worker's metrics count the turn", || async {
        let text = reqwest::get(&url).await?.text().await?;
        let done = sample(
            &text,
            r#"turnq_tasks_completed_total{queue="default",agent="script"}"#,
        );
        ensure!(done == Some(1.0), "completed: {done:?}");
        anyhow::Ok(text)
    })
    .await?;
    ensure!(
        sample(&text, "turnq_worker_turns_running") == Some(0.0),
        "{text}"
    );
    ensure!(
        sample(&text, r#"turnq_worker_claims_total{result="claimed"}"#) == Some(1.0),
        "{text}"
    );
    promtool(&text).await?;
    app.stop().await
}

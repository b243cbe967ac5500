//! `turnq replay --verify`, through the real binary.

use std::process::Command;

use anyhow::Result;
use sea_orm::ConnectionTrait;
use serde_json::{Value, json};

use turnq_tests::{TestApp, eventually, turnq_bin};

fn replay(app: &TestApp, verify: bool) -> Result<(i32, String)> {
    let mut command = Command::new(turnq_bin()?);
    command
        .arg("replay")
        .env("DATABASE_URL", &app.test_db.url)
        .env("RUST_LOG", "warn");
    if verify {
        command.arg("--verify");
    }
    let output = command.output()?;
    Ok((
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    ))
}

#[tokio::test]
async fn replay_verify_finds_no_drift_after_a_run_and_reports_a_tampered_row() -> Result<()> {
    let app = TestApp::spawn().await?;
    let tasks: Vec<Value> = (0..30)
        .map(|i| match i % 3 {
            0 => json!({"input": format!("t{i}")}),
            1 => json!({"input": {"script": {"outcome": "fail", "chunks": ["a", "b"]}}}),
            _ => json!({"input": {"script": {"fail_attempts": 1, "output_tokens": 5, "cost_usd": 0.1}}}),
        })
        .collect();
    let (status, _) = app
        .post("/v1/tasks/batch", &json!({"tasks": tasks}))
        .await?;
    assert_eq!(status, 201);
    eventually("every task has ended", || async {
        let (_, page) = app.get("/v1/tasks?state=pending,running&limit=100").await?;
        let n = page["tasks"].as_array().map_or(0, Vec::len);
        anyhow::ensure!(n == 0, "{n} tasks still pending or running");
        Ok(())
    })
    .await?;
    let cancelled = app
        .submit(json!({"input": "x", "run_at": "2999-01-01T00:00:00Z"}))
        .await?;
    let id = cancelled["id"].as_str().unwrap();
    app.post(&format!("/v1/tasks/{id}/cancel"), &Value::Null)
        .await?;

    let (code, out) = replay(&app, true)?;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("no drift"), "{out}");

    // Change a row behind the store's back.
    app.db
        .execute_unprepared(&format!(
            "UPDATE tasks SET output_summary = 'forged', cost_usd = 99 WHERE id = '{id}'"
        ))
        .await?;
    let (code, out) = replay(&app, true)?;
    assert_eq!(code, 2, "{out}");
    assert!(out.contains(id) && out.contains("forged"), "{out}");
    assert!(out.contains("cost_usd"), "{out}");

    // Without --verify the projection is rebuilt from the log.
    let (code, out) = replay(&app, false)?;
    assert_eq!(code, 0, "{out}");
    let (code, out) = replay(&app, true)?;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("no drift"), "{out}");
    assert!(app.task(id).await?["output_summary"].is_null());
    app.stop().await?;
    Ok(())
}

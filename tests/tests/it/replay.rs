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

#[tokio::test]
async fn stray_events_are_refused_by_the_log_and_any_that_got_in_are_each_reported() -> Result<()> {
    let app = TestApp::spawn().await?;
    let task = app.submit(json!({"input": "fine"})).await?;
    let id = task["id"].as_str().unwrap().to_owned();
    app.wait_for_state(&id, "completed").await?;
    let insert = |stream_type: &str, stream_id: &str, version: i64, kind: &str, data: &str| {
        format!(
            "INSERT INTO events (stream_type, stream_id, version, kind, data) \
             VALUES ('{stream_type}', '{stream_id}', {version}, '{kind}', '{data}')"
        )
    };
    // What the log refuses outright: a task stream id that is no UUID, a kind this
    // version does not write (for a task or a queue).
    for (sql, constraint) in [
        (
            insert("task", "not-a-uuid", 1, "task.submitted", "{}"),
            "events_task_stream_id_is_uuid",
        ),
        (
            insert("task", &id, 90, "task.exploded", "{}"),
            "events_kind_known",
        ),
        (
            insert("queue", "default", 90, "queue.deleted", "{}"),
            "events_kind_known",
        ),
    ] {
        let refused = app
            .db
            .execute_unprepared(&sql)
            .await
            .unwrap_err()
            .to_string();
        assert!(refused.contains(constraint), "{sql}: {refused}");
    }
    // Well-formed rows whose data is not the event they claim to be get in: each is
    // reported with its position, and the rest is still verified.
    app.db
        .execute_unprepared(&insert(
            "task",
            &id,
            90,
            "task.completed",
            r#"{"nonsense": 1}"#,
        ))
        .await?;
    app.db
        .execute_unprepared(&insert("task", &id, 91, "task.output", r#"{"chunks": 7}"#))
        .await?;
    let positions: Vec<i64> = app
        .db
        .query_all_raw(sea_orm::Statement::from_string(
            sea_orm::DatabaseBackend::Postgres,
            format!("SELECT position FROM events WHERE stream_id = '{id}' AND version >= 90 ORDER BY position"),
        ))
        .await?
        .iter()
        .map(|row| row.try_get::<i64>("", "position"))
        .collect::<Result<_, _>>()?;
    assert_eq!(positions.len(), 2);
    // And a tampered row, which the rest of the verification still finds.
    app.db
        .execute_unprepared(&format!(
            "UPDATE tasks SET output_summary = 'forged' WHERE id = '{id}'"
        ))
        .await?;

    let (code, out) = replay(&app, true)?;
    assert_eq!(code, 2, "{out}");
    for position in &positions {
        assert!(
            out.contains(&format!("bad event at position {position}")),
            "{out}"
        );
    }
    assert!(out.contains("forged"), "the rest was verified: {out}");

    // A rebuild refuses, says why and how, and writes nothing.
    let (code, out) = replay(&app, false)?;
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("--skip-bad-events"), "{out}");
    assert_eq!(app.task(&id).await?["output_summary"], "forged");
    // Told to, it rebuilds without them.
    let output = Command::new(turnq_bin()?)
        .args(["replay", "--skip-bad-events"])
        .env("DATABASE_URL", &app.test_db.url)
        .env("RUST_LOG", "warn")
        .output()?;
    let out = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{out}");
    assert!(out.contains("2 unreadable events skipped"), "{out}");
    assert_ne!(app.task(&id).await?["output_summary"], "forged");
    app.stop().await?;
    Ok(())
}

#[tokio::test]
async fn the_log_allows_every_kind_this_version_writes() -> Result<()> {
    let app = TestApp::spawn_without_workers().await?;
    let stream = turnq_core::TaskId::new().to_string();
    for (version, kind) in turnq_core::event::TaskEvent::KINDS.iter().enumerate() {
        app.db
            .execute_unprepared(&format!(
                "INSERT INTO events (stream_type, stream_id, version, kind, data) \
                 VALUES ('task', '{stream}', {}, '{kind}', '{{}}')",
                version + 1
            ))
            .await?;
    }
    app.stop().await?;
    Ok(())
}

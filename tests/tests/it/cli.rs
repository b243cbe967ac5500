//! The `turnq` command line against a running app: `submit --wait`, `task
//! list|show|cancel|retry|follow`, `token create|list|revoke`, `migrate status`, and
//! errors that name what is wrong.

use std::process::Command;

use anyhow::{Context, Result};
use serde_json::{Value, json};

use turnq_tests::{TestApp, turnq_bin};

fn turnq(app: &TestApp, args: &[&str]) -> Result<(i32, String, String)> {
    app.cli(args)
}

#[tokio::test(flavor = "multi_thread")]
async fn submit_wait_prints_the_events_until_completed() -> Result<()> {
    let app = TestApp::spawn().await?;
    let (code, out, err) = tokio::task::block_in_place(|| {
        turnq(
            &app,
            &[
                "submit",
                "--wait",
                "--json",
                r#"{"script":{"chunks":["a","b"]}}"#,
            ],
        )
    })?;
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    for kind in [
        "task.submitted",
        "task.queued",
        "task.started",
        "task.output",
        "task.completed",
    ] {
        assert!(out.contains(kind), "{kind} missing from:\n{out}");
    }
    // A failing task exits non-zero.
    let (code, out, _) = tokio::task::block_in_place(|| {
        turnq(
            &app,
            &[
                "submit",
                "--wait",
                "--json",
                r#"{"script":{"outcome":"fail"}}"#,
            ],
        )
    })?;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("task.failed"), "{out}");
    app.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_prints_the_stream_of_a_filter_as_it_comes() -> Result<()> {
    use tokio::io::AsyncBufReadExt;
    let app = TestApp::spawn().await?;
    let task = app
        .submit(serde_json::json!({"input": {"script": {"chunks": ["x"]}}, "queue": "default"}))
        .await?;
    let id = task["id"].as_str().context("id")?.to_owned();
    // Another task's events must not show.
    app.submit(serde_json::json!({"input": "other"})).await?;
    let mut watch = tokio::process::Command::new(turnq_bin()?)
        .args(["watch", "--task", &id, "--after", "0-0", "--json"])
        .env("TURNQ_API_URL", &app.base)
        .env("TURNQ_TOKEN", app.token())
        .env("TURNQ_TOKEN_FILE", "/nonexistent/turnq-token")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut lines = tokio::io::BufReader::new(watch.stdout.take().context("stdout")?).lines();
    let mut kinds = Vec::new();
    while kinds.last().map(String::as_str) != Some("task.completed") {
        let line = turnq_tests::within("watch prints the next event", lines.next_line())
            .await??
            .context("watch ended")?;
        let event: serde_json::Value = serde_json::from_str(&line)?;
        assert_eq!(event["stream"]["id"], id.as_str(), "{line}");
        assert!(event["cursor"].is_string(), "{line}");
        kinds.push(event["kind"].as_str().unwrap_or("?").to_owned());
    }
    assert_eq!(
        kinds,
        [
            "task.submitted",
            "task.queued",
            "task.started",
            "task.output",
            "task.completed"
        ]
    );
    watch.start_kill()?;
    app.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn cli_errors_say_what_is_wrong_and_tokens_print_once() -> Result<()> {
    let app = TestApp::spawn_without_workers().await?;
    let (code, _, err) =
        tokio::task::block_in_place(|| turnq(&app, &["submit", "--json", "{not json"]))?;
    assert_ne!(code, 0);
    assert!(err.contains("not valid JSON"), "{err}");

    let (code, _, err) = tokio::task::block_in_place(|| {
        turnq(&app, &["submit", "--api-url", "http://127.0.0.1:9", "hi"])
    })?;
    assert_ne!(code, 0);
    assert!(
        err.contains("cannot reach the turnq API at http://127.0.0.1:9"),
        "{err}"
    );

    let (code, _, err) = tokio::task::block_in_place(|| {
        turnq(
            &app,
            &["submit", "--json", r#"{"script":{}}"#, "--priority", "5000"],
        )
    })?;
    assert_ne!(code, 0);
    assert!(err.contains("priority 5000 is out of range"), "{err}");

    let (code, token, _) = tokio::task::block_in_place(|| {
        turnq(
            &app,
            &["token", "create", "--name", "ci", "--scope", "submit,read"],
        )
    })?;
    assert_eq!(code, 0);
    let token = token.trim();
    assert!(token.starts_with("tq_") && token.len() == 67, "{token}");
    assert!(
        turnq_core::auth::TokenStore::authenticate(&app.db, token)
            .await?
            .is_some_and(|t| t.name == "ci")
    );

    let (code, out, _) = tokio::task::block_in_place(|| turnq(&app, &["migrate", "status"]))?;
    assert_eq!(code, 0);
    assert!(
        out.lines().all(|line| line.starts_with("applied")),
        "every migration is applied:\n{out}"
    );

    let (code, _, err) = tokio::task::block_in_place(|| {
        Command::new(turnq_bin()?)
            .args(["replay", "--verify"])
            .env("DATABASE_URL", "postgres://postgres@127.0.0.1:1/nowhere")
            .output()
            .map(|o| {
                (
                    o.status.code().unwrap_or(-1),
                    String::new(),
                    String::from_utf8_lossy(&o.stderr).into_owned(),
                )
            })
            .map_err(anyhow::Error::from)
    })?;
    assert_ne!(code, 0);
    assert!(
        err.contains("cannot connect to Postgres at postgres://postgres@127.0.0.1:1/nowhere"),
        "{err}"
    );
    app.stop().await?;
    Ok(())
}

/// Databases and Redis keys `turnq bench` names as its own.
async fn bench_leftovers() -> Result<(i64, usize)> {
    let url: turnq_core::db::DatabaseUrl = turnq_tests::admin_database_url()
        .parse()
        .map_err(anyhow::Error::msg)?;
    let admin = turnq_core::db::connect(&url, 1).await?;
    let row = sea_orm::ConnectionTrait::query_one_raw(
        &admin,
        sea_orm::Statement::from_string(
            sea_orm::DbBackend::Postgres,
            "SELECT count(*) FROM pg_database WHERE datname LIKE 'turnq\\_bench\\_%'",
        ),
    )
    .await?
    .ok_or_else(|| anyhow::anyhow!("count returned no row"))?;
    let databases: i64 = row.try_get_by_index(0)?;
    admin.close().await?;
    let keys =
        turnq_testkit::redis::keys_matching(&turnq_tests::redis_url(), "turnq-bench-*").await?;
    Ok((databases, keys.len()))
}

#[tokio::test(flavor = "multi_thread")]
async fn bench_reports_every_figure_and_removes_what_it_made() -> Result<()> {
    let before = bench_leftovers().await?;
    let output = tokio::task::block_in_place(|| {
        Command::new(turnq_bin()?)
            .args([
                "bench",
                "--tasks",
                "200",
                "--concurrency",
                "8",
                "--rate",
                "50",
                "--latency-for",
                "1s",
                "--session-entries",
                "300",
                "--load-entries",
                "200",
            ])
            .env("RUST_LOG", "warn")
            .output()
            .map_err(anyhow::Error::from)
    })?;
    let (out, err) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    assert!(output.status.success(), "stdout: {out}\nstderr: {err}");
    assert!(out.contains("e2e / baseline"), "the table: {out}");
    let json: serde_json::Value = serde_json::from_str(
        out.lines()
            .last()
            .ok_or_else(|| anyhow::anyhow!("no output"))?,
    )?;
    assert!(
        json["baseline"]["jobs_per_sec"].as_f64() > Some(0.0),
        "{json}"
    );
    assert_eq!(json["e2e"]["tasks"], 200);
    assert!(json["e2e"]["tasks_per_sec"].as_f64() > Some(0.0), "{json}");
    assert!(json["ratio_to_baseline"].as_f64() > Some(0.0), "{json}");
    assert_eq!(json["latency"]["tasks"], 50, "the warm-up is not measured");
    let (p50, p99) = (
        json["latency"]["p50_ms"].as_f64().unwrap_or(-1.0),
        json["latency"]["p99_ms"].as_f64().unwrap_or(-1.0),
    );
    assert!(0.0 < p50 && p50 <= p99, "{json}");
    assert_eq!(json["session"]["appended"], 300);
    assert_eq!(json["session"]["loaded"], 200);
    assert!(json["replay"]["events"].as_u64() > Some(0), "{json}");
    assert!(json["peak_rss_mib"].as_f64() > Some(0.0), "{json}");
    assert_eq!(
        json["worker_peak_rss_mib"].as_array().map(Vec::len),
        Some(1)
    );
    let after = bench_leftovers().await?;
    assert!(
        after.0 <= before.0 && after.1 <= before.1,
        "the bench left databases or Redis keys behind: before {before:?}, after {after:?}"
    );
    Ok(())
}

#[test]
fn bench_refuses_settings_that_measure_nothing() -> Result<()> {
    for (flag, value, says) in [
        ("--tasks", "0", "--tasks must be at least 1"),
        ("--workers", "0", "--workers must be at least 1"),
        ("--rate", "0", "--rate must be at least 1"),
        (
            "--latency-for",
            "0s",
            "--latency-for must be longer than zero",
        ),
        ("--skip", "everything", "invalid value 'everything'"),
    ] {
        let output = Command::new(turnq_bin()?)
            .args(["bench", flag, value])
            .output()?;
        let err = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{flag} {value} was accepted");
        assert!(err.contains(says), "{flag} {value}: {err}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn logs_written_to_a_file_or_pipe_carry_no_colour_codes() -> Result<()> {
    let app = TestApp::spawn_without_workers().await?;
    let (code, _, err) = tokio::task::block_in_place(|| {
        Command::new(turnq_bin()?)
            .args(["migrate", "up"])
            .env("DATABASE_URL", &app.test_db.url)
            .env("RUST_LOG", "info")
            .output()
            .map(|o| {
                (
                    o.status.code().unwrap_or(-1),
                    (),
                    String::from_utf8_lossy(&o.stderr).into_owned(),
                )
            })
            .map_err(anyhow::Error::from)
    })?;
    assert_eq!(code, 0, "{err}");
    assert!(
        !err.trim().is_empty(),
        "the command logged nothing to look at"
    );
    assert!(
        !err.contains('\u{1b}'),
        "ANSI escapes in a piped log: {err:?}"
    );
    app.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_are_listed_with_their_last_use_and_a_revocation_takes_effect_at_once() -> Result<()>
{
    // A cache that would trust a token for an hour: only the revocation's notification
    // can make the API refuse it within this test.
    let app = TestApp::spawn_with_api(turnq_api::ApiConfig {
        token_cache_ttl: std::time::Duration::from_secs(3600),
        ..Default::default()
    })
    .await?;
    let (secret, _) =
        turnq_core::auth::TokenStore::create(&app.db, "ci-bot", &[turnq_core::auth::Scope::Read])
            .await?;
    let get = |token: String| {
        let url = app.url("/v1/tasks");
        async move {
            let response = reqwest::Client::new()
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .map_err(|e| e.to_string())?;
            Ok::<u16, String>(response.status().as_u16())
        }
    };
    assert_eq!(get(secret.expose().to_owned()).await, Ok(200));

    let (code, out, err) = tokio::task::block_in_place(|| turnq(&app, &["token", "list"]))?;
    assert_eq!(code, 0, "{err}");
    let line = out
        .lines()
        .find(|l| l.contains("ci-bot"))
        .unwrap_or_default()
        .to_owned();
    assert!(line.contains("read"), "{out}");
    assert!(!line.contains("never"), "its use was recorded: {out}");
    assert!(!out.contains(secret.expose()), "the secret is never shown");

    let (code, _, err) =
        tokio::task::block_in_place(|| turnq(&app, &["token", "revoke", "ci-bot"]))?;
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("revoked token \"ci-bot\""), "{err}");
    turnq_testkit::eventually("the API refuses the revoked token", || {
        let get = get(secret.expose().to_owned());
        async move {
            match get.await? {
                401 => Ok(()),
                status => Err(format!("still {status}")),
            }
        }
    })
    .await?;
    let listed = turnq_core::auth::TokenStore::list(&app.db, true).await?;
    let revoked = listed.iter().find(|t| t.name == "ci-bot").unwrap();
    assert!(revoked.revoked_at.is_some() && revoked.last_used_at.is_some());

    // Listed only with --revoked now; revoking again or an unknown token says why.
    let (_, out, _) = tokio::task::block_in_place(|| turnq(&app, &["token", "list"]))?;
    assert!(!out.contains("ci-bot"), "{out}");
    let (_, out, _) = tokio::task::block_in_place(|| turnq(&app, &["token", "list", "--revoked"]))?;
    assert!(out.contains("ci-bot") && out.contains("REVOKED"), "{out}");
    let id = revoked.id.to_string();
    let (code, _, err) =
        tokio::task::block_in_place(|| turnq(&app, &["token", "revoke", id.as_str()]))?;
    assert_ne!(code, 0);
    assert!(err.contains("already revoked"), "{err}");
    let (code, _, err) =
        tokio::task::block_in_place(|| turnq(&app, &["token", "revoke", "nobody"]))?;
    assert_ne!(code, 0);
    assert!(err.contains("no token \"nobody\""), "{err}");
    // Two live tokens of one name: revoke by id.
    for _ in 0..2 {
        turnq_core::auth::TokenStore::create(&app.db, "twin", &[turnq_core::auth::Scope::Read])
            .await?;
    }
    let (code, _, err) = tokio::task::block_in_place(|| turnq(&app, &["token", "revoke", "twin"]))?;
    assert_ne!(code, 0);
    assert!(err.contains("2 tokens are named \"twin\""), "{err}");
    app.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn tasks_are_listed_shown_cancelled_retried_and_followed_from_the_command_line() -> Result<()>
{
    let app = TestApp::spawn().await?;
    let failing = app
        .submit(json!({"input": {"script": {"outcome": "fail", "message": "boom"}}, "max_attempts": 1, "project": "cli"}))
        .await?;
    let failing = failing["id"].as_str().unwrap().to_owned();
    app.wait_for_state(&failing, "failed").await?;
    let later = app
        .submit(json!({"input": "much later", "run_at": "2999-01-01T00:00:00Z"}))
        .await?;
    let later = later["id"].as_str().unwrap().to_owned();

    let run = |args: Vec<String>| {
        let app = &app;
        tokio::task::block_in_place(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            turnq(app, &args)
        })
    };
    let args = |s: &[&str]| s.iter().map(|a| (*a).to_owned()).collect::<Vec<_>>();

    let (code, out, err) = run(args(&["task", "list"]))?;
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("ID"), "{out}");
    assert!(out.contains(&failing) && out.contains(&later), "{out}");
    assert!(out.contains("much later"), "{out}");
    let (code, out, _) = run(args(&[
        "task",
        "list",
        "--state",
        "failed",
        "--project",
        "cli",
    ]))?;
    assert_eq!(code, 0);
    assert!(out.contains(&failing) && !out.contains(&later), "{out}");
    let (_, out, _) = run(args(&["task", "list", "--json", "--limit", "1"]))?;
    let page: Value = serde_json::from_str(&out)?;
    assert_eq!(page["tasks"].as_array().map(Vec::len), Some(1), "{out}");

    let (code, out, err) = run(args(&["task", "show", &failing, "--events"]))?;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("state") && out.contains("failed"), "{out}");
    assert!(out.contains("boom"), "the error is shown: {out}");
    assert!(
        out.contains("task.submitted") && out.contains("task.failed"),
        "{out}"
    );

    let (code, out, err) = run(args(&["task", "cancel", &later, "--reason", "not needed"]))?;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("cancelled"), "{out}");
    assert_eq!(app.task(&later).await?["state"], "cancelled");
    // Refusals say what the API said.
    let (code, _, err) = run(args(&["task", "cancel", &later]))?;
    assert_ne!(code, 0);
    assert!(err.contains("409") && err.contains("cancelled"), "{err}");
    let (code, _, err) = run(args(&["task", "show", "nope"]))?;
    assert_ne!(code, 0);
    assert!(err.contains("not a UUID"), "{err}");

    // Retry makes it run again (and fail again); follow prints its events to the end.
    let (code, out, err) = run(args(&["task", "retry", &failing]))?;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("pending"), "{out}");
    let (code, out, _) = run(args(&["task", "follow", &failing, "--timeout", "60s"]))?;
    assert_eq!(code, 1, "it failed again: {out}");
    assert!(
        out.contains("task.retried") && out.trim_end().ends_with('}'),
        "{out}"
    );
    assert!(
        out.lines()
            .last()
            .unwrap_or_default()
            .contains("task.failed"),
        "{out}"
    );
    app.stop().await?;
    Ok(())
}

//! The `turnq` command line against a running app: `submit --wait`, `token create`,
//! `migrate status`, and errors that name what is wrong.

use std::process::Command;

use anyhow::Result;

use crate::harness::{TestApp, turnq_bin};

fn turnq(app: &TestApp, args: &[&str]) -> Result<(i32, String, String)> {
    let output = Command::new(turnq_bin()?)
        .args(args)
        .env("DATABASE_URL", app.test_db.url.expose())
        .env("TURNQ_API_URL", &app.base)
        .env("TURNQ_TOKEN", app.token())
        .env("TURNQ_TOKEN_FILE", "/nonexistent/turnq-token")
        .env("RUST_LOG", "warn")
        .output()?;
    Ok((
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    ))
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
    app.stop().await;
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
    app.stop().await;
    Ok(())
}

//! Reviewing a session's workspace over plain HTTP: what the session and task pages
//! show of a coding turn's changes, and the actions' refusals (no CSRF value, a reader,
//! nothing selected, a change already decided, a worktree this process cannot reach,
//! a restore without its confirmation), each changing nothing.

use std::path::PathBuf;

use anyhow::{Context, Result};
use serde_json::{Value, json};
use turnq_core::auth::Scope;
use turnq_tests::{
    TestApp,
    repos::{Scratch, app_with_worker, coding, git},
};

use super::{csrf, page, post_form, sign_in, token};

const SESSION: &str = "/sessions/default/r1";
const ACTIONS: &str = "/ui/sessions/default/r1/changes";

async fn pending(app: &TestApp) -> Result<Vec<Value>> {
    let (_, body) = app
        .get("/v1/sessions/default/r1/changes?status=pending")
        .await?;
    Ok(body["changes"].as_array().context("changes")?.clone())
}

fn id_of(changes: &[Value], path: &str) -> Result<String> {
    Ok(changes
        .iter()
        .find(|c| c["path"] == path)
        .and_then(|c| c["id"].as_str())
        .with_context(|| format!("no change to {path}"))?
        .to_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn changes_are_decided_from_the_session_page_and_refusals_change_nothing() -> Result<()> {
    let scratch = Scratch::new()?;
    let repo = scratch.repo("demo")?;
    let app = app_with_worker(&scratch, "box-a").await?;
    let turn = app
        .submit(coding(
            &repo,
            "r1",
            json!({"a.txt": "a\n", "src/lib.rs": "pub fn answer() -> u32 { 42 }\n"}),
        ))
        .await?;
    let turn = turn["id"].as_str().context("id")?.to_owned();
    app.wait_for_state(&turn, "completed").await?;
    let main = git(&repo, &["rev-parse", "main"])?;
    let changes = pending(&app).await?;
    let (a, lib) = (id_of(&changes, "a.txt")?, id_of(&changes, "src/lib.rs")?);

    let cookie = sign_in(&app, app.token()).await?;
    let (status, html) = page(&app, &cookie, SESSION).await?;
    assert_eq!(status, 200);
    for shows in [
        "id=\"workspace\"",
        "box-a",
        &format!("value=\"{a}\""),
        "pub fn answer() -&gt; u32 { 42 }",
        "class=\"l del\"",
        "Apply all (2)",
        "/restore",
    ] {
        assert!(html.contains(shows), "the session page lacks {shows}");
    }
    let (_, task_page) = page(&app, &cookie, &format!("/tasks/{turn}")).await?;
    assert!(
        task_page.contains("2 file changes proposed")
            && task_page.contains("/sessions/default/r1#workspace"),
        "the task page counts its changes and links the workspace"
    );
    let value = csrf(&html)?;
    let apply = format!("{ACTIONS}/apply");

    // No CSRF value; a reader; nothing selected; an id that is no UUID; no such action.
    let forged = post_form(&app, &cookie, &apply, &[("id", &a)]).await?;
    assert_eq!(forged.status(), 403);
    let reader = token(&app, "reader", &[Scope::Read]).await?;
    let reader = sign_in(&app, &reader).await?;
    let (_, reader_page) = page(&app, &reader, SESSION).await?;
    assert!(
        !reader_page.contains("name=\"id\"")
            && !reader_page.contains("/ui/sessions/")
            && !reader_page.contains("/restore"),
        "a reader sees the diffs without a form"
    );
    let refused = post_form(
        &app,
        &reader,
        &apply,
        &[("csrf", &csrf(&reader_page)?), ("id", &a)],
    )
    .await?;
    assert_eq!(refused.status(), 403);
    assert!(refused.text().await?.contains("lacks the `submit` scope"));
    let none = post_form(&app, &cookie, &apply, &[("csrf", &value)]).await?;
    assert_eq!(none.status(), 400);
    let text = none.text().await?;
    assert!(text.contains("no change was selected"), "{text}");
    assert!(
        text.contains("href=\"/sessions/default/r1#workspace\""),
        "the error page links back to the session"
    );
    let bad = post_form(&app, &cookie, &apply, &[("csrf", &value), ("id", "x")]).await?;
    assert_eq!(bad.status(), 400);
    let unknown = post_form(
        &app,
        &cookie,
        &format!("{ACTIONS}/merge"),
        &[("csrf", &value), ("id", &a)],
    )
    .await?;
    assert_eq!(unknown.status(), 404);
    assert_eq!(pending(&app).await?.len(), 2, "nothing was decided");
    assert_eq!(git(&repo, &["rev-parse", "main"])?, main);

    // A worktree this process cannot reach: applying is refused and named; the page
    // says so too.
    let (_, worktrees) = app.get("/v1/sessions/default/r1/worktree").await?;
    let path = PathBuf::from(worktrees["active"]["path"].as_str().context("path")?);
    let away = path.with_extension("away");
    std::fs::rename(&path, &away)?;
    let unreachable = post_form(&app, &cookie, &apply, &[("csrf", &value), ("id", &a)]).await;
    let (_, unreachable_page) = page(&app, &cookie, SESSION).await?;
    std::fs::rename(&away, &path)?;
    let unreachable = unreachable?;
    assert_eq!(unreachable.status(), 409);
    assert!(unreachable.text().await?.contains("cannot reach"));
    assert!(unreachable_page.contains("cannot reach the worktree"));
    assert_eq!(pending(&app).await?.len(), 2);

    // Apply one: back to the session, a commit on main, decided by the viewer's token.
    let applied = post_form(&app, &cookie, &apply, &[("csrf", &value), ("id", &a)]).await?;
    assert_eq!(applied.status(), 303);
    assert_eq!(
        applied.headers()["location"],
        "/sessions/default/r1#workspace"
    );
    assert_eq!(git(&repo, &["show", "main:a.txt"])?, "a");
    let (_, body) = app
        .get("/v1/sessions/default/r1/changes?status=applied")
        .await?;
    assert_eq!(body["changes"][0]["decided_by"], "test", "{body}");

    // The decided change again, for any decision: refused, nothing moves.
    let after = git(&repo, &["rev-parse", "main"])?;
    for action in ["apply", "reject", "revert"] {
        let again = post_form(
            &app,
            &cookie,
            &format!("{ACTIONS}/{action}"),
            &[("csrf", &value), ("id", &a)],
        )
        .await?;
        assert_eq!(again.status(), 400, "{action}");
        let text = again.text().await?;
        assert!(text.contains("applied, not pending"), "{action}: {text}");
    }
    assert_eq!(git(&repo, &["rev-parse", "main"])?, after);
    assert_eq!(pending(&app).await?.len(), 1);

    // Reject the other; the page lists both as decided, the form is gone.
    let rejected = post_form(
        &app,
        &cookie,
        &format!("{ACTIONS}/reject"),
        &[("csrf", &value), ("id", &lib)],
    )
    .await?;
    assert_eq!(rejected.status(), 303);
    let (_, html) = page(&app, &cookie, SESSION).await?;
    assert!(html.contains("No change waits for a decision."));
    assert!(html.contains("badge change-applied") && html.contains("badge change-rejected"));
    assert_eq!(git(&repo, &["rev-parse", "main"])?, after);
    app.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_checkpoint_is_restored_from_the_ui_only_once_confirmed() -> Result<()> {
    let scratch = Scratch::new()?;
    let repo = scratch.repo("demo")?;
    let app = app_with_worker(&scratch, "box-a").await?;
    let turn = app
        .submit(coding(&repo, "r1", json!({"a.txt": "a\n"})))
        .await?;
    app.wait_for_state(turn["id"].as_str().context("id")?, "completed")
        .await?;
    let (_, list) = app.get("/v1/sessions/default/r1/checkpoints").await?;
    let checkpoint = list["checkpoints"][0]["id"]
        .as_str()
        .context("a checkpoint")?
        .to_owned();
    let (_, worktrees) = app.get("/v1/sessions/default/r1/worktree").await?;
    let path = PathBuf::from(worktrees["active"]["path"].as_str().context("path")?);
    let restore = format!("/ui/checkpoints/{checkpoint}/restore");

    let cookie = sign_in(&app, app.token()).await?;
    let (_, html) = page(&app, &cookie, SESSION).await?;
    let value = csrf(&html)?;
    // Without a CSRF value: refused. Without the confirmation: a page that asks.
    let forged = post_form(&app, &cookie, &restore, &[("confirm", "yes")]).await?;
    assert_eq!(forged.status(), 403);
    let asks = post_form(&app, &cookie, &restore, &[("csrf", &value)]).await?;
    assert_eq!(asks.status(), 200);
    let text = asks.text().await?;
    assert!(
        text.contains("Restore session") && text.contains("name=\"confirm\" value=\"yes\""),
        "{text}"
    );
    assert!(path.join("a.txt").exists(), "nothing was restored yet");

    let done = post_form(
        &app,
        &cookie,
        &restore,
        &[("csrf", &value), ("confirm", "yes")],
    )
    .await?;
    assert_eq!(done.status(), 303);
    assert_eq!(done.headers()["location"], "/sessions/default/r1#workspace");
    assert!(
        !path.join("a.txt").exists(),
        "the files are back as before the turn"
    );

    let missing = post_form(
        &app,
        &cookie,
        "/ui/checkpoints/00000000-0000-0000-0000-000000000000/restore",
        &[("csrf", &value), ("confirm", "yes")],
    )
    .await?;
    assert_eq!(missing.status(), 404);
    app.stop().await
}

//! The UI in a real headless Chromium: sign in, watch tasks appear and finish live,
//! follow a long task's output, cancel it, retry a failure from the inbox, bulk retry a
//! filter, read-only access, the keyboard, answering requests, and reviewing a coding
//! turn's changes in a real git repository. Screenshots of every page land in
//! `$TURNQ_TEST_ARTEFACTS` (with `TURNQ_UPDATE_SNAPSHOTS=1`, the README's two are
//! refreshed in `docs/screenshots/`).

use anyhow::{Context, Result};
use serde_json::{Value, json};
use turnq_core::auth::Scope;
use turnq_tests::{
    TestApp,
    browser::{Browser, ENTER},
    repos::{Scratch, app_with_worker, coding, git},
};

use super::token;

fn id_of(task: &Value) -> String {
    task["id"].as_str().unwrap_or_default().to_owned()
}

async fn sign_in(browser: &Browser, app: &TestApp, token: &str) -> Result<()> {
    browser.goto(&app.url("/signin")).await?;
    let field = browser.wait_for("#token").await?;
    browser.type_into(&field, token).await?;
    browser
        .click(&browser.wait_for("form.signin button").await?)
        .await?;
    browser.wait_for("#live-state").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_operator_watches_and_acts_in_a_real_browser() -> Result<()> {
    let app = TestApp::spawn().await?;
    let browser = Browser::start().await?;
    // Something to look at.
    for i in 0..4 {
        let t = app
            .submit(json!({"input": {"prompt": format!("Refactor module {i}"),
                "script": {"chunks": ["reading…\n", "editing…\n", "done\n"], "input_tokens": 900, "output_tokens": 120, "cost_usd": 0.012}},
                "project": "demo", "session_id": format!("s-{i}")}))
            .await?;
        app.wait_for_state(&id_of(&t), "completed").await?;
    }

    // A transcript for the first session (the script agent writes none of its own).
    let (status, _) = app
        .post(
            "/v1/sessions/demo/s-0/entries",
            &json!({"entries": [
                {"type": "user", "uuid": "00000000-0000-4000-8000-0000000000a1", "message": {"role": "user", "content": "Refactor module 0"}},
                {"type": "assistant", "uuid": "00000000-0000-4000-8000-0000000000a2", "message": {"role": "assistant", "content": [
                    {"type": "text", "text": "I will read the module first."},
                    {"type": "tool_use", "id": "t1", "name": "Read", "input": {"path": "src/module0.rs"}}]}},
                {"type": "user", "uuid": "00000000-0000-4000-8000-0000000000a3", "message": {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "t1", "content": "fn module0() {}"}]}},
                {"type": "assistant", "uuid": "00000000-0000-4000-8000-0000000000a4", "message": {"role": "assistant", "content": "Done: split it in two."}},
            ]}),
        )
        .await?;
    assert_eq!(status, 204);

    // Sign in; the overview.
    sign_in(&browser, &app, app.token()).await?;
    browser.wait_for_text("#queues", "default").await?;
    browser.wait_for_text("#live-state", "live").await?;
    browser.screenshot("overview").await?;

    // A submitted task appears in the list and completes, without a reload.
    browser.goto(&app.url("/tasks")).await?;
    browser.wait_for_text("#live-state", "live").await?;
    browser
        .execute("window.__same_page = true; return null")
        .await?;
    let slow = app
        .submit(json!({"input": {"prompt": "appear live", "script": {"latency_ms": 1500, "chunks": ["a", "b"]}}}))
        .await?;
    let row = format!("tr[data-href=\"/tasks/{}\"]", id_of(&slow));
    browser.wait_for(&row).await?;
    browser
        .wait_for_text(&format!("{row} .badge"), "completed")
        .await?;
    assert_eq!(
        browser
            .execute("return window.__same_page === true")
            .await?,
        json!(true),
        "the list updated in place, not by a reload"
    );
    browser.screenshot("tasks").await?;

    // A long task's output streams onto its page; then it is cancelled from there.
    let chunks: Vec<String> = (0..300).map(|i| format!("line {i}\n")).collect();
    let long = app
        .submit(json!({"input": {"prompt": "a long turn", "script": {"latency_ms": 600_000, "chunks": chunks}}}))
        .await?;
    let long_id = id_of(&long);
    browser.goto(&app.url(&format!("/tasks/{long_id}"))).await?;
    browser.wait_for_text("#live-state", "live").await?;
    browser
        .execute("window.__same_page = true; return null")
        .await?;
    browser.wait_for_text("#output", "line 2").await?;
    browser.wait_for_text("#fields .badge", "running").await?;
    assert_eq!(
        browser
            .execute("return window.__same_page === true")
            .await?,
        json!(true)
    );
    browser
        .execute("document.getElementById('output').scrollIntoView(); return null")
        .await?;
    browser.screenshot("task-running").await?;
    browser
        .click(&browser.wait_for("form[action$=\"/cancel\"] button").await?)
        .await?;
    browser.accept_dialog().await?;
    browser.wait_for_text("#fields .badge", "cancelled").await?;
    app.wait_for_state(&long_id, "cancelled").await?;

    // A failure: found in the inbox, retried there, and it runs again (and succeeds).
    let flaky = app
        .submit(json!({"input": {"prompt": "flaky deploy", "script": {"fail_attempts": 1, "message": "cluster unreachable", "chunks": ["deployed"]}}, "max_attempts": 1}))
        .await?;
    let flaky_id = id_of(&flaky);
    app.wait_for_state(&flaky_id, "failed").await?;
    browser.goto(&app.url("/inbox")).await?;
    browser
        .wait_for_text("#inbox", "cluster unreachable")
        .await?;
    browser.screenshot("inbox").await?;
    let retry = format!("form[action=\"/ui/tasks/{flaky_id}/retry\"] button");
    browser.click(&browser.wait_for(&retry).await?).await?;
    browser.wait_for_text("#fields .badge", "completed").await?;
    browser.screenshot("task").await?;

    // Bulk retry of everything matching a filter, after a confirmation with the count.
    let mut failed = Vec::new();
    for _ in 0..3 {
        let t = app
            .submit(json!({"input": {"script": {"outcome": "fail", "message": "bad config"}}, "project": "bulk", "max_attempts": 1}))
            .await?;
        failed.push(id_of(&t));
    }
    for id in &failed {
        app.wait_for_state(id, "failed").await?;
    }
    browser
        .goto(&app.url("/tasks?project=bulk&state=failed"))
        .await?;
    browser
        .click(&browser.wait_for("button[value=\"retry-all\"]").await?)
        .await?;
    browser.wait_for_text("#matching", "3 tasks").await?;
    browser.screenshot("bulk-confirm").await?;
    browser
        .click(&browser.wait_for(".confirm button.danger").await?)
        .await?;
    browser.wait_for_text("h1", "Retry: 3 of 3 tasks").await?;
    for id in &failed {
        assert!(
            app.event_kinds(id)
                .await?
                .contains(&"task.retried".to_owned())
        );
    }

    // The other pages, for the record.
    for (path, name, shows) in [
        ("/workers", "workers", "live"),
        ("/sessions?project=demo", "sessions", "s-0"),
        (
            "/sessions/demo/s-0",
            "session",
            "I will read the module first.",
        ),
        ("/agents", "agents", "Agents"),
    ] {
        browser.goto(&app.url(path)).await?;
        browser.wait_for_text("main", shows).await?;
        browser.screenshot(name).await?;
    }

    // A phone's width.
    browser
        .post_raw("/window/rect", json!({"width": 390, "height": 844}))
        .await?;
    browser.goto(&app.url("/")).await?;
    browser.wait_for_text("#queues", "default").await?;
    browser.screenshot("overview-phone").await?;
    browser
        .post_raw("/window/rect", json!({"width": 1360, "height": 1000}))
        .await?;
    // The theme toggle: system → light → dark, kept across pages.
    let toggle = browser.wait_for("#theme").await?;
    browser.click(&toggle).await?;
    browser.click(&toggle).await?;
    browser.goto(&app.url("/")).await?;
    browser.wait_for_text("#queues", "default").await?;
    assert_eq!(
        browser
            .execute("return document.documentElement.dataset.theme")
            .await?,
        json!("dark")
    );
    browser.screenshot("overview-dark").await?;
    browser.click(&browser.wait_for("#theme").await?).await?;

    // The keyboard: `/` focuses the search; an id there opens the task.
    browser.goto(&app.url("/")).await?;
    browser.wait_for("#find").await?;
    browser.press("/").await?;
    browser.press(&format!("{flaky_id}{ENTER}")).await?;
    turnq_tests::eventually("the search opens the task", || async {
        match browser.url().await {
            Ok(url) if url.ends_with(&format!("/tasks/{flaky_id}")) => Ok(()),
            Ok(url) => Err(format!("at {url}")),
            Err(e) => Err(e.to_string()),
        }
    })
    .await?;
    // `g i` goes to the inbox.
    browser.press("gi").await?;
    browser.wait_for_text("h1", "Inbox").await?;

    // Sign out; a read-only token sees the same pages without an action.
    browser
        .click(&browser.wait_for("form[action=\"/signout\"] button").await?)
        .await?;
    browser.wait_for("#token").await?;
    let reader = token(&app, "reader", &[Scope::Read]).await?;
    sign_in(&browser, &app, &reader).await?;
    browser
        .goto(&app.url(&format!("/tasks/{}", failed[0])))
        .await?;
    browser.wait_for_text("#fields", "bulk").await?;
    assert!(
        browser.find_all("form[action^=\"/ui/\"]").await?.is_empty(),
        "a reader sees no action"
    );
    browser.screenshot("read-only").await?;

    if std::env::var_os("TURNQ_UPDATE_SNAPSHOTS").is_some() {
        let docs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/screenshots");
        std::fs::create_dir_all(&docs)?;
        let shots = turnq_tests::browser::artefacts()?;
        for (shot, name) in [("overview", "overview"), ("task-running", "task")] {
            std::fs::copy(
                shots.join(format!("{shot}.png")),
                docs.join(format!("{name}.png")),
            )?;
        }
    }
    drop(browser);
    app.stop().await
}

/// The answer a script turn completed with (its summary is the answer's JSON).
fn answer_of(task: &Value) -> Result<Value> {
    Ok(serde_json::from_str(
        task["output_summary"].as_str().unwrap_or_default(),
    )?)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_person_answers_what_turns_ask_in_a_real_browser() -> Result<()> {
    let app = TestApp::spawn().await?;
    let browser = Browser::start().await?;
    let permission = app
        .submit(json!({"input": {"prompt": "Clean the build folder", "script": {"chunks": ["thinking"], "request": {
            "kind": "permission", "prompt": "May I delete the build folder?", "tool": "bash",
            "tool_input": {"cmd": "rm -rf build", "cwd": "/srv/app"}, "timeout_ms": 600_000}}},
            "project": "demo"}))
        .await?;
    let question = app
        .submit(json!({"input": {"prompt": "Add a cache", "script": {"request": {
            "kind": "question", "prompt": "Which store should the cache use?",
            "options": ["redis", "memcached", "in-process"], "timeout_ms": 3_600_000, "on_timeout": "fail"}}},
            "project": "demo"}))
        .await?;
    let (permission, question) = (id_of(&permission), id_of(&question));
    app.wait_for_state(&permission, "blocked").await?;
    app.wait_for_state(&question, "blocked").await?;

    // The inbox shows each request with the form that fits it.
    sign_in(&browser, &app, app.token()).await?;
    browser.goto(&app.url("/inbox")).await?;
    browser.wait_for_text("#live-state", "live").await?;
    let form = |id: &str| format!("form[action=\"/ui/tasks/{id}/respond\"]");
    let input = browser
        .wait_for(&format!("{} textarea[name=input]", form(&permission)))
        .await?;
    browser
        .wait_for(&format!("{} button[value=memcached]", form(&question)))
        .await?;
    browser.wait_for_text("#inbox", "then: deny").await?;
    browser.screenshot("inbox-request").await?;

    // Edit the tool input, then allow it: the turn resumes with the edited input.
    browser.clear(&input).await?;
    browser
        .type_into(&input, r#"{"cmd": "rm -rf build/tmp", "cwd": "/srv/app"}"#)
        .await?;
    browser
        .click(
            &browser
                .wait_for(&format!("{} button[value=allow]", form(&permission)))
                .await?,
        )
        .await?;
    let done = app.wait_for_state(&permission, "completed").await?;
    assert_eq!(
        answer_of(&done)?,
        json!({"choice": "allow", "by": "test", "input": {"cmd": "rm -rf build/tmp", "cwd": "/srv/app"}}),
        "{done}"
    );
    assert!(
        browser.url().await?.ends_with("/inbox"),
        "back to the inbox"
    );

    // A question, from its own page, with a comment.
    browser
        .goto(&app.url(&format!("/tasks/{question}")))
        .await?;
    let comment = browser
        .wait_for(&format!("{} textarea[name=text]", form(&question)))
        .await?;
    browser.type_into(&comment, "keep it simple").await?;
    browser
        .click(
            &browser
                .wait_for(&format!("{} button[value=in-process]", form(&question)))
                .await?,
        )
        .await?;
    let done = app.wait_for_state(&question, "completed").await?;
    assert_eq!(
        answer_of(&done)?,
        json!({"choice": "in-process", "text": "keep it simple", "by": "test"})
    );
    browser.wait_for_text("#request", "in-process").await?;
    browser.wait_for_text("#request", "keep it simple").await?;
    browser.screenshot("task-answered").await?;

    // A parent and its tree: a child that has children of its own, one that asks for a
    // plan's approval, one that fails and one that just works.
    let parent = app
        .submit(json!({"input": {"prompt": "Ship the release", "script": {"on_child_failure": "continue", "spawn": [
            {"input": {"prompt": "Build the artefacts", "script": {"spawn": [
                {"input": "Build for linux"}, {"input": "Build for macOS"}]}}},
            {"input": {"prompt": "Write the release notes", "script": {"request": {"kind": "plan",
                "prompt": "1. List the merged changes\n2. Group them by area\n3. Draft the notes"}}}},
            {"input": {"prompt": "Upload to the mirror", "script": {"outcome": "fail", "message": "mirror unreachable"}}, "max_attempts": 1},
            {"input": "Tag the commit"}]}},
            "project": "demo"}))
        .await?;
    let parent = id_of(&parent);
    let plan = turnq_tests::eventually("the plan child asks and the build child ends", || async {
        let (_, tree) = app
            .get(&format!("/v1/tasks/{parent}/tree"))
            .await
            .map_err(|e| e.to_string())?;
        let tasks = tree["tasks"].as_array().cloned().unwrap_or_default();
        let states: Vec<&str> = tasks.iter().filter_map(|t| t["state"].as_str()).collect();
        let plan = tasks
            .iter()
            .find(|t| t["request"]["kind"] == "plan" && t["state"] == "blocked");
        match plan {
            Some(plan)
                if tasks.len() == 7
                    && states.iter().filter(|s| **s == "completed").count() == 4 =>
            {
                Ok(id_of(plan))
            }
            _ => Err(format!("states: {states:?}")),
        }
    })
    .await?;
    browser.goto(&app.url(&format!("/tasks/{parent}"))).await?;
    browser.wait_for_text("#tree", "Build for macOS").await?;
    browser
        .wait_for_text("#request", "Waits for its 4 sub-tasks")
        .await?;
    browser.screenshot("task-tree").await?;

    // The child links its parent; approving its plan lets the whole tree end.
    browser.goto(&app.url(&format!("/tasks/{plan}"))).await?;
    browser
        .wait_for(&format!("#fields a[href=\"/tasks/{parent}\"]"))
        .await?;
    browser.screenshot("task-plan").await?;
    browser
        .click(
            &browser
                .wait_for(&format!("{} button[value=approve]", form(&plan)))
                .await?,
        )
        .await?;
    app.wait_for_state(&plan, "completed").await?;
    app.wait_for_state(&parent, "completed").await?;
    browser.goto(&app.url(&format!("/tasks/{parent}"))).await?;
    browser
        .wait_for_text("#request", "Its 4 sub-tasks ended")
        .await?;
    browser.screenshot("task-tree-done").await?;

    if std::env::var_os("TURNQ_UPDATE_SNAPSHOTS").is_some() {
        let docs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/screenshots");
        std::fs::create_dir_all(&docs)?;
        let shots = turnq_tests::browser::artefacts()?;
        for name in ["inbox-request", "task-tree"] {
            std::fs::copy(
                shots.join(format!("{name}.png")),
                docs.join(format!("{name}.png")),
            )?;
        }
    }
    drop(browser);
    app.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn an_operator_compares_an_arena_side_by_side_and_picks_its_winner() -> Result<()> {
    let app = TestApp::spawn().await?;
    // Two agents of the script backend under other names, as a fleet would register
    // real ones; the worker follows the registry.
    for (name, label) in [("claude-code", "Claude Code"), ("codex", "Codex")] {
        let response = app
            .http
            .put(app.url(&format!("/v1/agents/{name}")))
            .json(&json!({"backend": "script", "label": label}))
            .send()
            .await?;
        assert!(response.status().is_success(), "{}", response.status());
    }
    let input = json!({
        "prompt": "checkout_applies_discount fails one run in five. Find out why and fix it.",
        "script": {
            "latency_ms": 900, "input_tokens": 18400, "output_tokens": 2100, "cost_usd": 0.084,
            "chunks": ["The discount is applied after tax when two promotions race. ",
                       "Made the promotion lookup deterministic and added a regression test."],
            "by_model": {
                "gpt-5-codex": {"latency_ms": 2400, "input_tokens": 31200, "output_tokens": 5600, "cost_usd": 0.21,
                    "chunks": ["Rewrote the cart's pricing pipeline so tax is computed last; ",
                               "the flaky test passes 200 runs in a row."]},
                "fast": {"latency_ms": 400, "input_tokens": 6100, "output_tokens": 640, "cost_usd": 0.006,
                    "chunks": ["Added a retry around the test. It passes now."]},
            }
        }
    });
    let arena = app
        .create_arena(json!({"input": input, "project": "shop", "contestants": [
            {"agent": "claude-code", "model": "sonnet-4.5"},
            {"agent": "codex", "model": "gpt-5-codex"},
            {"agent": "script", "model": "fast"},
        ]}))
        .await?;
    let id = arena["id"].as_str().unwrap_or_default().to_owned();
    app.wait_for_arena_to_end(&id).await?;

    let browser = Browser::start().await?;
    sign_in(&browser, &app, app.token()).await?;
    browser.goto(&app.url("/arenas")).await?;
    browser.wait_for_text("#arenas", "claude-code").await?;
    browser.screenshot("arenas").await?;
    browser.goto(&app.url(&format!("/arenas/{id}"))).await?;
    browser.wait_for_text("#contestants", "gpt-5-codex").await?;
    browser.wait_for_text("#live-state", "live").await?;
    browser.screenshot("arena").await?;

    // Pick the first contestant; the page comes back decided.
    let pick = format!("#contestants form[action=\"/ui/arenas/{id}/winner\"] button");
    browser.click(&browser.wait_for(&pick).await?).await?;
    browser.accept_dialog().await?;
    browser.wait_for_text("#decision", "picked by test").await?;
    assert!(
        browser.find_all(&pick).await?.is_empty(),
        "a decided arena offers no more picks"
    );
    browser.screenshot("arena-decided").await?;
    let decided = app.arena(&id).await?;
    assert_eq!(decided["contestants"][0]["winner"], true, "{decided}");

    if std::env::var_os("TURNQ_UPDATE_SNAPSHOTS").is_some() {
        let docs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/screenshots");
        std::fs::create_dir_all(&docs)?;
        std::fs::copy(
            turnq_tests::browser::artefacts()?.join("arena.png"),
            docs.join("arena.png"),
        )?;
    }
    drop(browser);
    app.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_person_reviews_a_coding_turns_changes_in_a_real_browser() -> Result<()> {
    let scratch = Scratch::new()?;
    let repo = scratch.repo("demo")?;
    let app = app_with_worker(&scratch, "box-a").await?;
    let turn = app
        .submit(coding(
            &repo,
            "s1",
            json!({
                "src/lib.rs": "/// The answer, at last.\npub fn answer() -> u32 {\n    42\n}\n",
                "NOTES.md": "# Notes\n\n- the answer is 42 now\n- see src/lib.rs\n",
            }),
        ))
        .await?;
    let turn = id_of(&turn);
    app.wait_for_state(&turn, "completed").await?;
    // A second turn, for a second checkpoint (it changes nothing new).
    let again = app
        .submit(coding(
            &repo,
            "s1",
            json!({"NOTES.md": "# Notes\n\n- the answer is 42 now\n- see src/lib.rs\n"}),
        ))
        .await?;
    app.wait_for_state(&id_of(&again), "completed").await?;

    let browser = Browser::start().await?;
    sign_in(&browser, &app, app.token()).await?;

    // The task links its changes to the session's workspace.
    browser.goto(&app.url(&format!("/tasks/{turn}"))).await?;
    let link = browser.wait_for("#changes a").await?;
    browser
        .wait_for_text("#changes", "2 file changes proposed")
        .await?;
    browser.click(&link).await?;

    // The session page shows the worktree, each change as a diff, and the checkpoints.
    browser.wait_for_text("#workspace", "box-a").await?;
    let file = |path: &str| format!("#workspace li.change[data-path=\"{path}\"]");
    browser
        .wait_for_text(&format!("{} .diff .l.add", file("NOTES.md")), "# Notes")
        .await?;
    browser
        .wait_for_text(
            &format!("{} .diff .l.del", file("src/lib.rs")),
            "pub fn answer() -> u32 { 41 }",
        )
        .await?;
    browser
        .wait_for_text(&format!("{} .badge", file("src/lib.rs")), "edit")
        .await?;
    assert_eq!(
        browser
            .find_all("#workspace table.checkpoints tbody tr")
            .await?
            .len(),
        2,
        "one checkpoint before each turn"
    );
    // The whole page from its top, taller than the window, for the docs; and dark.
    browser
        .post_raw("/window/rect", json!({"width": 1360, "height": 1500}))
        .await?;
    browser.goto(&app.url("/sessions/default/s1")).await?;
    browser.wait_for_text("#workspace", "NOTES.md").await?;
    browser.screenshot("session-review").await?;
    browser
        .execute("document.documentElement.dataset.theme = 'dark'; return null")
        .await?;
    browser.screenshot("session-review-dark").await?;
    browser
        .post_raw("/window/rect", json!({"width": 1360, "height": 1000}))
        .await?;
    browser
        .goto(&app.url("/sessions/default/s1#workspace"))
        .await?;

    // Apply one change: a commit on main holds it, and the page says it is applied.
    browser
        .click(
            &browser
                .wait_for(&format!("{} input[name=id]", file("NOTES.md")))
                .await?,
        )
        .await?;
    browser
        .click(
            &browser
                .wait_for("#review button[formaction$=\"/apply\"]:not([name])")
                .await?,
        )
        .await?;
    browser
        .wait_for_text("#workspace table.decided", "applied")
        .await?;
    assert_eq!(
        git(&repo, &["show", "main:NOTES.md"])?,
        "# Notes\n\n- the answer is 42 now\n- see src/lib.rs"
    );
    let commit = git(&repo, &["rev-parse", "main"])?;
    browser
        .wait_for_text("#workspace table.decided", &commit[..10])
        .await?;
    assert!(
        browser
            .url()
            .await?
            .ends_with("/sessions/default/s1#workspace")
    );
    browser.screenshot("session-review-applied").await?;

    // Reject the other: it is decided, and main does not have it.
    browser
        .click(
            &browser
                .wait_for(&format!("{} input[name=id]", file("src/lib.rs")))
                .await?,
        )
        .await?;
    browser
        .click(
            &browser
                .wait_for("#review button[formaction$=\"/reject\"]")
                .await?,
        )
        .await?;
    browser
        .wait_for_text("#workspace", "No change waits for a decision.")
        .await?;
    browser
        .wait_for_text("#workspace table.decided", "rejected")
        .await?;
    assert_eq!(
        git(&repo, &["show", "main:src/lib.rs"])?,
        "pub fn answer() -> u32 { 41 }"
    );
    assert_eq!(git(&repo, &["rev-parse", "main"])?, commit, "no new commit");

    // Restore the oldest checkpoint, after a page that says what that does: the
    // worktree's files are back as before the first turn.
    let (_, worktrees) = app.get("/v1/sessions/default/s1/worktree").await?;
    let path = std::path::PathBuf::from(worktrees["active"]["path"].as_str().context("path")?);
    assert!(path.join("NOTES.md").exists());
    let restores = browser
        .find_all("#workspace form[action$=\"/restore\"] button")
        .await?;
    browser
        .click(restores.last().context("a restore button")?)
        .await?;
    browser
        .wait_for_text(".confirm h1", "Restore session")
        .await?;
    browser.screenshot("restore-confirm").await?;
    browser
        .click(&browser.wait_for(".confirm button.danger").await?)
        .await?;
    browser.wait_for_text("#workspace", "Checkpoints").await?;
    assert!(
        !path.join("NOTES.md").exists(),
        "restored to before the first turn"
    );
    assert_eq!(
        std::fs::read_to_string(path.join("src/lib.rs"))?,
        "pub fn answer() -> u32 { 41 }\n"
    );

    if std::env::var_os("TURNQ_UPDATE_SNAPSHOTS").is_some() {
        let docs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/screenshots");
        std::fs::create_dir_all(&docs)?;
        let shots = turnq_tests::browser::artefacts()?;
        std::fs::copy(
            shots.join("session-review.png"),
            docs.join("session-review.png"),
        )?;
    }
    drop(browser);
    app.stop().await
}

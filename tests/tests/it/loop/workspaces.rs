//! Coding-agent tasks in real git repositories made by the tests: worktrees, pending
//! changes (apply, reject, revert, supersede), the path guard, checkpoints, and a
//! session moving hosts.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};
use turnq_tests::{
    TestApp,
    repos::{Scratch, app_with_worker, coding, git},
};

async fn run(app: &TestApp, body: Value, state: &str) -> Result<Value> {
    let task = app.submit(body).await?;
    app.wait_for_state(task["id"].as_str().context("id")?, state)
        .await
}

async fn changes(app: &TestApp, session: &str, status: &str) -> Result<Vec<Value>> {
    let (code, body) = app
        .get(&format!(
            "/v1/sessions/default/{session}/changes?status={status}"
        ))
        .await?;
    ensure!(code == 200, "{code} {body}");
    Ok(body["changes"].as_array().context("changes")?.clone())
}

fn by_path<'a>(changes: &'a [Value], path: &str) -> Result<&'a Value> {
    changes
        .iter()
        .find(|c| c["path"] == path)
        .with_context(|| format!("no change to {path}: {changes:?}"))
}

#[tokio::test]
async fn a_coding_turn_proposes_changes_that_a_person_applies_rejects_or_reverts() -> Result<()> {
    let scratch = Scratch::new()?;
    let repo = scratch.repo("demo")?;
    let app = app_with_worker(&scratch, "box-a").await?;
    run(
        &app,
        coding(
            &repo,
            "s1",
            json!({"src/lib.rs": "pub fn answer() -> u32 { 42 }\n", "NOTES.md": "hi\n",
                   "README.md": null, "docs/plan.md": "plan\n"}),
        ),
        "completed",
    )
    .await?;

    let (_, worktrees) = app.get("/v1/sessions/default/s1/worktree").await?;
    let active = &worktrees["active"];
    ensure!(
        active["host"] == "box-a" && active["target_branch"] == "main",
        "{worktrees}"
    );
    let path = PathBuf::from(active["path"].as_str().context("path")?);
    ensure!(path.starts_with(scratch.worktrees("box-a")), "{path:?}");
    // The repository's own checkout is untouched by the turn.
    ensure!(!repo.join("NOTES.md").exists() && repo.join("README.md").exists());

    let pending = changes(&app, "s1", "pending").await?;
    ensure!(pending.len() == 4, "{pending:?}");
    ensure!(by_path(&pending, "NOTES.md")?["operation"] == "create");
    ensure!(by_path(&pending, "README.md")?["operation"] == "delete");
    let edit = by_path(&pending, "src/lib.rs")?;
    ensure!(edit["operation"] == "edit", "{edit}");
    let diff = edit["diff"].as_str().context("diff")?;
    ensure!(
        diff.contains("-pub fn answer() -> u32 { 41 }")
            && diff.contains("+pub fn answer() -> u32 { 42 }"),
        "{diff}"
    );

    let ids = |paths: &[&str]| -> Result<Value> {
        Ok(json!(
            paths
                .iter()
                .map(|p| by_path(&pending, p).map(|c| c["id"].clone()))
                .collect::<Result<Vec<_>>>()?
        ))
    };
    let (code, applied) = app
        .post(
            "/v1/sessions/default/s1/changes/apply",
            &json!({"ids": ids(&["src/lib.rs", "NOTES.md"])?}),
        )
        .await?;
    ensure!(code == 200, "{code} {applied}");
    let commit = applied["commit_sha"].as_str().context("commit")?;
    ensure!(git(&repo, &["rev-parse", "main"])? == commit);
    ensure!(git(&repo, &["show", "main:NOTES.md"])? == "hi");
    // main is checked out in the repository: its files came along, and it is clean.
    ensure!(applied["checkout_updated"] == true, "{applied}");
    ensure!(std::fs::read_to_string(repo.join("NOTES.md"))? == "hi\n");
    ensure!(git(&repo, &["status", "--porcelain"])?.is_empty());

    let (code, rejected) = app
        .post(
            "/v1/sessions/default/s1/changes/reject",
            &json!({"ids": ids(&["README.md"])?}),
        )
        .await?;
    ensure!(
        code == 200 && rejected["changes"][0]["status"] == "rejected",
        "{code} {rejected}"
    );
    let (code, reverted) = app
        .post(
            "/v1/sessions/default/s1/changes/revert",
            &json!({"ids": ids(&["docs/plan.md"])?}),
        )
        .await?;
    ensure!(code == 200, "{code} {reverted}");
    ensure!(
        !path.join("docs/plan.md").exists(),
        "the created file is gone from the worktree"
    );

    // Everything is decided: nothing pending; a decision on a decided change is refused.
    ensure!(changes(&app, "s1", "pending").await?.is_empty());
    let (code, body) = app
        .post(
            "/v1/sessions/default/s1/changes/apply",
            &json!({"ids": ids(&["NOTES.md"])?}),
        )
        .await?;
    ensure!(
        code == 400 && body.to_string().contains("not pending"),
        "{code} {body}"
    );
    let (code, body) = app
        .post("/v1/sessions/default/s1/changes/apply", &Value::Null)
        .await?;
    ensure!(
        code == 400 && body.to_string().contains("no pending changes"),
        "{code} {body}"
    );
    // A later turn proposes what it changed, not again what was applied or rejected.
    run(
        &app,
        coding(&repo, "s1", json!({"later.txt": "x\n"})),
        "completed",
    )
    .await?;
    let later = changes(&app, "s1", "pending").await?;
    ensure!(
        later.len() == 1 && later[0]["path"] == "later.txt",
        "{later:?}"
    );
    app.stop().await
}

#[tokio::test]
async fn a_later_turns_change_to_a_file_supersedes_the_earlier_one() -> Result<()> {
    let scratch = Scratch::new()?;
    let repo = scratch.repo("demo")?;
    let app = app_with_worker(&scratch, "box-a").await?;
    run(
        &app,
        coding(&repo, "s2", json!({"a.txt": "1\n", "b.txt": "b\n"})),
        "completed",
    )
    .await?;
    run(
        &app,
        coding(&repo, "s2", json!({"a.txt": "2\n"})),
        "completed",
    )
    .await?;
    let pending = changes(&app, "s2", "pending").await?;
    ensure!(pending.len() == 2, "{pending:?}");
    ensure!(
        by_path(&pending, "a.txt")?["diff"]
            .as_str()
            .is_some_and(|d| d.contains("+2"))
    );
    let superseded = changes(&app, "s2", "superseded").await?;
    ensure!(
        superseded.len() == 1 && superseded[0]["path"] == "a.txt",
        "{superseded:?}"
    );
    // A conflicting apply: main moved under the change. Nothing is applied.
    std::fs::write(repo.join("a.txt"), "theirs\n")?;
    git(&repo, &["add", "a.txt"])?;
    git(&repo, &["commit", "-q", "-m", "theirs"])?;
    let before = git(&repo, &["rev-parse", "main"])?;
    let id = by_path(&pending, "a.txt")?["id"].clone();
    let (code, body) = app
        .post(
            "/v1/sessions/default/s2/changes/apply",
            &json!({"ids": [id]}),
        )
        .await?;
    ensure!(
        code == 409 && body.to_string().contains("a.txt"),
        "{code} {body}"
    );
    ensure!(git(&repo, &["rev-parse", "main"])? == before);
    ensure!(changes(&app, "s2", "pending").await?.len() == 2);
    app.stop().await
}

#[tokio::test]
async fn the_path_guard_refuses_every_way_out_of_the_worktree() -> Result<()> {
    let scratch = Scratch::new()?;
    let repo = scratch.repo("demo")?;
    // A committed symbolic link pointing out of the repository.
    std::os::unix::fs::symlink(&scratch.dir, repo.join("out"))?;
    git(&repo, &["add", "out"])?;
    git(&repo, &["commit", "-q", "-m", "link"])?;
    let app = app_with_worker(&scratch, "box-a").await?;
    let refusals = [
        ("../escape.txt", ".."),
        ("/tmp/abs.txt", "absolute"),
        (".git/config", ".git"),
        ("out/escape.txt", "symbolic link"),
        (".env", "secret"),
        ("config/.env.production", "secret"),
        ("id_rsa", "secret"),
        ("certs/server.pem", "secret"),
        ("tls.key", "secret"),
    ];
    for (i, (path, rule)) in refusals.iter().enumerate() {
        let failed = run(
            &app,
            coding(&repo, &format!("g{i}"), json!({*path: "x"})),
            "failed",
        )
        .await?;
        let error = failed["last_error"].as_str().unwrap_or_default();
        ensure!(
            error.contains("refused the path") && error.contains(rule),
            "{path}: {error}"
        );
    }
    ensure!(!scratch.dir.join("escape.txt").exists() && !Path::new("/tmp/abs.txt").exists());
    // A NUL byte never reaches a worker: the submission is refused.
    let (code, body) = app
        .post(
            "/v1/tasks",
            &coding(&repo, "g-nul", json!({"a\u{0}b": "x"})),
        )
        .await?;
    ensure!(
        code == 400 && body.to_string().contains("U+0000"),
        "{code} {body}"
    );
    // A task's own `worktree_path` is not a worktree: the script writes nowhere.
    let outside = scratch.dir.join("not-a-worktree");
    std::fs::create_dir_all(&outside)?;
    let failed = run(
        &app,
        json!({"worktree_path": outside.display().to_string(),
               "input": {"script": {"files": {"planted.txt": "x"}}}}),
        "failed",
    )
    .await?;
    ensure!(
        failed["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("has no worktree")),
        "{failed}"
    );
    ensure!(!outside.join("planted.txt").exists());
    // A session works in one repository.
    let other = scratch.repo("other")?;
    run(
        &app,
        coding(&repo, "one-repo", json!({"a": "1\n"})),
        "completed",
    )
    .await?;
    let failed = run(
        &app,
        coding(&other, "one-repo", json!({"a": "2\n"})),
        "failed",
    )
    .await?;
    ensure!(
        failed["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("a session works in one repository")),
        "{failed}"
    );
    // Allowed look-alikes.
    run(
        &app,
        coding(
            &repo,
            "g-ok",
            json!({".env.example": "A=1\n", "id_rsa.pub": "k\n"}),
        ),
        "completed",
    )
    .await?;
    ensure!(changes(&app, "g-ok", "pending").await?.len() == 2);

    // A repository outside the worker's roots, and one without a session.
    let elsewhere = std::env::temp_dir()
        .canonicalize()?
        .join(format!("turnq-outside-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&elsewhere)?;
    git(&elsewhere, &["init", "-q", "-b", "main"])?;
    let failed = run(
        &app,
        coding(&elsewhere, "g-out", json!({"a": "x"})),
        "failed",
    )
    .await;
    let _ = std::fs::remove_dir_all(&elsewhere);
    let failed = failed?;
    ensure!(
        failed["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("outside the allowed repository roots")),
        "{failed}"
    );
    let (code, body) = app
        .post(
            "/v1/tasks",
            &json!({"repo": repo.display().to_string(), "input": "x"}),
        )
        .await?;
    ensure!(
        code == 400 && body.to_string().contains("needs a session_id"),
        "{code} {body}"
    );
    app.stop().await
}

#[tokio::test]
async fn a_checkpoint_restore_rewinds_the_files_and_the_transcript() -> Result<()> {
    let scratch = Scratch::new()?;
    let repo = scratch.repo("demo")?;
    let app = app_with_worker(&scratch, "box-a").await?;
    let entries = "/v1/sessions/default/s3/entries";
    run(
        &app,
        coding(&repo, "s3", json!({"a.txt": "v1\n"})),
        "completed",
    )
    .await?;
    app.post(
        entries,
        &json!({"entries": [{"uuid": "u1", "text": "turn 1"}]}),
    )
    .await?;
    run(
        &app,
        coding(&repo, "s3", json!({"a.txt": "v2\n", "b.txt": "b\n"})),
        "completed",
    )
    .await?;
    app.post(
        entries,
        &json!({"entries": [{"uuid": "u2", "text": "turn 2"}]}),
    )
    .await?;

    let (_, list) = app.get("/v1/sessions/default/s3/checkpoints").await?;
    let checkpoints = list["checkpoints"].as_array().context("checkpoints")?;
    ensure!(checkpoints.len() == 2, "one before each turn: {list}");
    // Newest first: the one before the second turn.
    let before_second = checkpoints[0]["id"].as_str().context("id")?;
    let (code, restored) = app
        .post(
            &format!("/v1/checkpoints/{before_second}/restore"),
            &Value::Null,
        )
        .await?;
    ensure!(
        code == 200 && restored["entries_hidden"] == 1,
        "{code} {restored}"
    );

    let (_, worktrees) = app.get("/v1/sessions/default/s3/worktree").await?;
    let path = PathBuf::from(worktrees["active"]["path"].as_str().context("path")?);
    ensure!(std::fs::read_to_string(path.join("a.txt"))? == "v1\n");
    ensure!(
        !path.join("b.txt").exists(),
        "a file made after the checkpoint is gone"
    );
    let (_, loaded) = app.get(entries).await?;
    let texts: Vec<&str> = loaded["entries"]
        .as_array()
        .context("entries")?
        .iter()
        .filter_map(|e| e["text"].as_str())
        .collect();
    ensure!(texts == ["turn 1"], "the transcript is rewound: {loaded}");
    // The log keeps everything: the rewound entry is hidden, not deleted.
    ensure!(turnq_tests::count(&app.db, "session_entries").await? == 2);
    let (code, _) = app
        .post(
            "/v1/checkpoints/00000000-0000-0000-0000-000000000000/restore",
            &Value::Null,
        )
        .await?;
    ensure!(code == 404);
    app.stop().await
}

#[tokio::test]
async fn a_session_moves_to_another_host_when_its_host_is_gone() -> Result<()> {
    let scratch = Scratch::new()?;
    let repo = scratch.repo("demo")?;
    let mut app = TestApp::spawn_without_workers().await?;
    let roots = scratch.roots();
    let (wt_a, wt_b) = (scratch.worktrees("a"), scratch.worktrees("b"));
    let host_a = app
        .start_stoppable_worker(&[
            "--host",
            "a",
            "--repo-roots",
            &roots,
            "--worktree-dir",
            &wt_a,
        ])
        .await?;
    run(
        &app,
        coding(&repo, "s4", json!({"first.txt": "1\n"})),
        "completed",
    )
    .await?;
    host_a.stop().await?;

    app.start_worker(&[
        "--host",
        "b",
        "--repo-roots",
        &roots,
        "--worktree-dir",
        &wt_b,
    ])
    .await?;
    run(
        &app,
        coding(&repo, "s4", json!({"second.txt": "2\n"})),
        "completed",
    )
    .await?;
    let (_, worktrees) = app.get("/v1/sessions/default/s4/worktree").await?;
    let active = &worktrees["active"];
    ensure!(active["host"] == "b", "{worktrees}");
    let archived = worktrees["archived"].as_array().context("archived")?;
    ensure!(
        archived.len() == 1 && archived[0]["host"] == "a",
        "{worktrees}"
    );
    ensure!(
        active["branch"] == archived[0]["branch"],
        "re-created from its branch"
    );
    let path = PathBuf::from(active["path"].as_str().context("path")?);
    ensure!(path.starts_with(&wt_b));
    // The first turn's work came along through the branch.
    ensure!(std::fs::read_to_string(path.join("first.txt"))? == "1\n");
    ensure!(std::fs::read_to_string(path.join("second.txt"))? == "2\n");
    let pending = changes(&app, "s4", "pending").await?;
    ensure!(pending.len() == 2, "{pending:?}");
    app.stop().await
}

#[tokio::test]
async fn a_sessions_turns_stay_on_the_host_of_its_worktree_while_it_is_alive() -> Result<()> {
    let scratch = Scratch::new()?;
    let repo = scratch.repo("demo")?;
    let mut app = TestApp::spawn_without_workers().await?;
    let roots = scratch.roots();
    for host in ["a", "b"] {
        let worktrees = scratch.worktrees(host);
        app.start_worker(&[
            "--host",
            host,
            "--repo-roots",
            &roots,
            "--worktree-dir",
            &worktrees,
        ])
        .await?;
    }
    let first = run(
        &app,
        coding(&repo, "s5", json!({"f0.txt": "0\n"})),
        "completed",
    )
    .await?;
    let (_, worktrees) = app.get("/v1/sessions/default/s5/worktree").await?;
    let host = worktrees["active"]["host"]
        .as_str()
        .context("host")?
        .to_owned();
    let on_host = |task: &Value| {
        task["worker_id"]
            .as_str()
            .is_some_and(|w| w.starts_with(&format!("{host}-")))
    };
    ensure!(on_host(&first), "{first}");
    for i in 1..8 {
        let task = run(
            &app,
            coding(&repo, "s5", json!({format!("f{i}.txt"): "x\n"})),
            "completed",
        )
        .await?;
        ensure!(
            on_host(&task),
            "turn {i} ran on {} instead of host {host}",
            task["worker_id"]
        );
    }
    let (_, worktrees) = app.get("/v1/sessions/default/s5/worktree").await?;
    ensure!(
        worktrees["archived"] == json!([]),
        "never re-created: {worktrees}"
    );
    app.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_person_answers_and_reviews_from_the_command_line() -> Result<()> {
    let scratch = Scratch::new()?;
    let repo = scratch.repo("demo")?;
    let app = app_with_worker(&scratch, "box-a").await?;
    let cli = |args: &[&str]| tokio::task::block_in_place(|| app.cli(args));
    let repo_path = repo.display().to_string();
    // A coding turn that asks before it writes.
    let task = app
        .submit(json!({"repo": repo_path, "session_id": "cli",
            "input": {"script": {"files": {"lib.rs": "fn main() {}\n"},
                                 "request": {"kind": "permission", "prompt": "write lib.rs?"}}}}))
        .await?;
    let id = task["id"].as_str().context("id")?;
    app.wait_for_state(id, "blocked").await?;
    let (code, out, err) = cli(&["task", "respond", id, "--choice", "maybe"])?;
    ensure!(
        code != 0 && err.contains("not one of the request's options"),
        "{code} {out} {err}"
    );
    let (code, out, err) = cli(&[
        "task",
        "respond",
        id,
        "--choice",
        "allow",
        "--input",
        "{\"x\": 1}",
    ])?;
    ensure!(code == 0 && out.contains("pending"), "{code} {out} {err}");
    app.wait_for_state(id, "completed").await?;

    let (code, out, err) = cli(&["session", "changes", "cli", "--status", "pending", "--diff"])?;
    ensure!(
        code == 0 && out.contains("create") && out.contains("+fn main() {}"),
        "{code} {out} {err}"
    );
    let (code, out, err) = cli(&["session", "apply", "cli", "--message", "from the CLI"])?;
    ensure!(
        code == 0 && out.contains("applied 1 change(s) onto main"),
        "{code} {out} {err}"
    );
    ensure!(git(&repo, &["log", "-1", "--format=%s", "main"])? == "from the CLI");
    let (code, out, err) = cli(&["session", "checkpoints", "cli"])?;
    ensure!(
        code == 0 && out.lines().count() == 2,
        "a checkpoint before each turn: {out} {err}"
    );
    let (code, out, err) = cli(&["session", "archive", "cli"])?;
    ensure!(
        code == 0 && out.starts_with("archived"),
        "{code} {out} {err}"
    );
    let (code, _, err) = cli(&["session", "worktree", "cli"])?;
    ensure!(code == 0 && err.contains("no active worktree"), "{err}");
    app.stop().await
}

#[tokio::test]
async fn an_arenas_winner_has_its_changes_applied_and_the_others_rejected() -> Result<()> {
    let scratch = Scratch::new()?;
    let repo = scratch.repo("demo")?;
    let app = app_with_worker(&scratch, "box-a").await?;
    let input = json!({"script": {"files": {"src/lib.rs": "pub fn answer() -> u32 { 42 }\n"},
        "by_model": {"b": {"files": {"src/lib.rs": "pub fn answer() -> u32 { 40 + 2 }\n"}}}}});
    let (code, arena) = app
        .post(
            "/v1/arenas",
            &json!({"input": input, "repo": repo.display().to_string(),
            "contestants": [{"agent": "script", "model": "a"}, {"agent": "script", "model": "b"}]}),
        )
        .await?;
    ensure!(code == 201, "{code} {arena}");
    let id = arena["id"].as_str().context("id")?.to_owned();
    let arena = turnq_tests::eventually("both contestants end", || async {
        let (_, arena) = app.get(&format!("/v1/arenas/{id}")).await?;
        ensure!(arena["ended"] == true, "{arena}");
        anyhow::Ok(arena)
    })
    .await?;
    let contestants = arena["contestants"].as_array().context("contestants")?;
    for c in contestants {
        ensure!(
            c["state"] == "completed" && c["changes"]["pending"] == 1,
            "{c}"
        );
    }
    // Each worked in a worktree of its own, on a branch of its own.
    let sessions: Vec<&str> = contestants
        .iter()
        .filter_map(|c| c["session_id"].as_str())
        .collect();
    let mut branches = Vec::new();
    for session in &sessions {
        let (_, w) = app
            .get(&format!("/v1/sessions/default/{session}/worktree"))
            .await?;
        branches.push(w["active"]["branch"].as_str().context("branch")?.to_owned());
    }
    ensure!(branches[0] != branches[1], "{branches:?}");

    let winner = &contestants[1];
    let (code, decided) = app
        .post(
            &format!("/v1/arenas/{id}/winner"),
            &json!({"task_id": winner["task_id"], "reject_others": true}),
        )
        .await?;
    ensure!(code == 200, "{code} {decided}");
    ensure!(
        decided["contestants"][0]["changes"]["rejected"] == 1,
        "{decided}"
    );
    ensure!(
        decided["contestants"][1]["changes"]["pending"] == 1,
        "{decided}"
    );
    let (code, applied) = app
        .post(
            &format!("/v1/sessions/default/{}/changes/apply", sessions[1]),
            &Value::Null,
        )
        .await?;
    ensure!(code == 200, "{code} {applied}");
    ensure!(git(&repo, &["show", "main:src/lib.rs"])?.contains("40 + 2"));
    app.stop().await
}

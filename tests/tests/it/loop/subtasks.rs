//! A parent creates sub-tasks, waits for them without holding a worker slot, and decides
//! what their outcomes mean; cancelling it cancels them.

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};
use turnq_tests::{TestApp, eventually};

fn parent(children: Value, on_child_failure: &str) -> Value {
    json!({"input": {"script": {"spawn": children, "on_child_failure": on_child_failure}}})
}

/// The sub-tasks of `id`, through the tree (which starts with `id` itself).
async fn children(app: &TestApp, id: &str) -> Result<Vec<Value>> {
    let (status, body) = app.get(&format!("/v1/tasks/{id}/tree")).await?;
    ensure!(status == 200, "{status} {body}");
    let tasks = body["tasks"].as_array().context("tasks")?;
    ensure!(tasks[0]["id"] == id && body["truncated"] == false, "{body}");
    Ok(tasks[1..].to_vec())
}

#[tokio::test]
async fn a_parent_waits_for_its_children_and_gets_their_outputs() -> Result<()> {
    // One slot: the parent must free it while it waits, or its children never run.
    let mut app = TestApp::spawn_without_workers().await?;
    app.start_worker(&["--concurrency", "1"]).await?;
    let task = app
        .submit(parent(
            json!([{"input": "first"}, {"input": "second"}]),
            "fail",
        ))
        .await?;
    let id = task["id"].as_str().context("id")?;
    let done = app.wait_for_state(id, "completed").await?;
    ensure!(done["output_summary"] == "first; second", "{done}");
    let kids = children(&app, id).await?;
    ensure!(kids.len() == 2, "{kids:?}");
    ensure!(
        kids.iter()
            .all(|k| k["state"] == "completed" && k["parent_task_id"] == id)
    );
    let kinds = app.event_kinds(id).await?;
    ensure!(kinds.contains(&"task.responded".to_owned()), "{kinds:?}");
    app.stop().await
}

#[tokio::test]
async fn a_childs_failure_is_reported_to_the_parent_which_decides() -> Result<()> {
    let app = TestApp::spawn().await?;
    let failing = json!([
        {"input": "fine"},
        {"input": {"script": {"outcome": "fail", "message": "no disk"}}, "max_attempts": 1}
    ]);
    let strict = app.submit(parent(failing.clone(), "fail")).await?;
    let lenient = app.submit(parent(failing, "continue")).await?;
    let strict = strict["id"].as_str().context("id")?;
    let lenient = lenient["id"].as_str().context("id")?;
    let failed = app.wait_for_state(strict, "failed").await?;
    ensure!(
        failed["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("ended failed") && e.contains("no disk")),
        "{failed}"
    );
    let done = app.wait_for_state(lenient, "completed").await?;
    ensure!(done["output_summary"] == "fine; ", "{done}");
    app.stop().await
}

#[tokio::test]
async fn cancelling_a_parent_cancels_its_unfinished_children() -> Result<()> {
    let app = TestApp::spawn().await?;
    let slow = json!({"input": {"script": {"latency_ms": 600000}}});
    let task = app
        .submit(parent(json!([slow.clone(), slow]), "fail"))
        .await?;
    let id = task["id"].as_str().context("id")?;
    app.wait_for_state(id, "blocked").await?;
    eventually("both children run", || async {
        let kids = children(&app, id).await?;
        ensure!(
            kids.len() == 2 && kids.iter().all(|k| k["state"] == "running"),
            "{kids:?}"
        );
        anyhow::Ok(())
    })
    .await?;
    let (status, body) = app
        .post(&format!("/v1/tasks/{id}/cancel"), &Value::Null)
        .await?;
    ensure!(status == 200, "{status} {body}");
    for kid in children(&app, id).await? {
        ensure!(kid["state"] == "cancelled", "{kid}");
    }
    app.stop().await
}

#[tokio::test]
async fn a_bad_sub_task_fails_the_parent_with_what_is_wrong() -> Result<()> {
    let app = TestApp::spawn().await?;
    let task = app
        .submit(parent(json!([{"input": "x", "agent": "nobody"}]), "fail"))
        .await?;
    let id = task["id"].as_str().context("id")?;
    let failed = app.wait_for_state(id, "failed").await?;
    ensure!(
        failed["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("creating sub-tasks") && e.contains("nobody")),
        "{failed}"
    );
    ensure!(children(&app, id).await?.is_empty(), "no child was created");
    app.stop().await
}

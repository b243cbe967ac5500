//! A turn asks a person; the answer resumes it.

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};
use turnq_tests::TestApp;

fn asking(request: Value) -> Value {
    json!({"input": {"script": {"chunks": ["thinking"], "request": request}}})
}

async fn respond(app: &TestApp, id: &str, body: Value) -> Result<(u16, Value)> {
    app.post(&format!("/v1/tasks/{id}/respond"), &body).await
}

#[tokio::test]
async fn each_kind_of_request_blocks_the_turn_and_its_answer_resumes_it() -> Result<()> {
    let app = TestApp::spawn().await?;
    let cases = [
        (
            json!({"kind": "permission", "prompt": "run `rm -rf build`?", "tool": "bash",
                   "tool_input": {"cmd": "rm -rf build"}}),
            json!({"choice": "allow", "input": {"cmd": "rm -rf build/tmp"}}),
            json!(["allow", "deny"]),
        ),
        (
            json!({"kind": "question", "prompt": "which colour?", "options": ["red", "blue"]}),
            json!({"choice": "blue"}),
            json!(["red", "blue"]),
        ),
        (
            json!({"kind": "plan", "prompt": "1. read\n2. write"}),
            json!({"choice": "approve", "text": "keep it short"}),
            json!(["approve", "reject"]),
        ),
        (
            json!({"kind": "text", "prompt": "what is the project called?"}),
            json!({"text": "turnq"}),
            Value::Null,
        ),
    ];
    let mut ids = Vec::new();
    for (request, _, _) in &cases {
        let task = app.submit(asking(request.clone())).await?;
        ids.push(task["id"].as_str().context("id")?.to_owned());
    }
    for (id, (request, answer, options)) in ids.iter().zip(&cases) {
        let task = app.wait_for_state(id, "blocked").await?;
        ensure!(task["request"]["kind"] == request["kind"], "{task}");
        ensure!(task["request"]["prompt"] == request["prompt"], "{task}");
        if !options.is_null() {
            ensure!(task["request"]["options"] == *options, "{task}");
        }
        // The worker slot is free: the task holds no lease while it waits.
        ensure!(
            task["lease_until"].is_null() && task["worker_id"].is_string(),
            "{task}"
        );
        let (_, inbox) = app.get("/v1/inbox").await?;
        ensure!(
            inbox["tasks"]
                .as_array()
                .context("inbox")?
                .iter()
                .any(|t| t["id"] == *id && t["request"]["kind"] == request["kind"]),
            "the blocked task shows in the inbox with its request: {inbox}"
        );

        let (status, answered) = respond(&app, id, answer.clone()).await?;
        ensure!(status == 200, "{status} {answered}");
        ensure!(answered["state"] == "pending", "{answered}");
        let done = app.wait_for_state(id, "completed").await?;
        // The script completes with the answer it resumed with (its JSON).
        let resumed: Value =
            serde_json::from_str(done["output_summary"].as_str().context("summary")?)?;
        for key in ["choice", "text", "input"] {
            ensure!(resumed[key] == answer[key], "{key}: {resumed} vs {answer}");
        }
        ensure!(
            resumed["by"].is_string(),
            "the answer names who gave it: {resumed}"
        );
        ensure!(
            app.event_kinds(id)
                .await?
                .iter()
                .filter(|k| *k == "task.started")
                .count()
                == 2,
            "two turns: the ask and the resume"
        );
    }
    app.stop().await
}

#[tokio::test]
async fn an_answer_that_does_not_fit_is_refused_and_changes_nothing() -> Result<()> {
    let app = TestApp::spawn().await?;
    let task = app
        .submit(asking(
            json!({"kind": "question", "prompt": "which?", "options": ["a", "b"]}),
        ))
        .await?;
    let id = task["id"].as_str().context("id")?;
    let blocked = app.wait_for_state(id, "blocked").await?;
    let refusals = [
        (json!({"choice": "c"}), 400, "not one of"),
        (json!({}), 400, "wants a choice"),
        (
            json!({"choice": "a", "input": {"x": 1}}),
            400,
            "only a permission",
        ),
        (
            json!({"choice": "a", "colour": "red"}),
            422,
            "unknown field",
        ),
        (
            json!({"choice": "a", "text": "nul \u{0000}"}),
            400,
            "U+0000",
        ),
        (json!("a"), 422, "invalid type"),
    ];
    for (body, status, says) in refusals {
        let (got, answer) = respond(&app, id, body.clone()).await?;
        ensure!(got == status, "{body}: {got} {answer}");
        ensure!(answer.to_string().contains(says), "{body}: {answer}");
    }
    ensure!(
        app.task(id).await?["version"] == blocked["version"],
        "nothing was written"
    );

    // A task that asks nothing cannot be answered; an unknown task is a 404.
    let bare = app
        .submit(json!({"input": {"script": {"outcome": "block"}}}))
        .await?;
    let bare = bare["id"].as_str().context("id")?;
    app.wait_for_state(bare, "blocked").await?;
    let (status, body) = respond(&app, bare, json!({"choice": "a"})).await?;
    ensure!(
        status == 409 && body.to_string().contains("approve"),
        "{status} {body}"
    );
    let (status, _) = respond(&app, "00000000-0000-0000-0000-000000000000", json!({})).await?;
    ensure!(status == 404, "{status}");
    // Approving a task that waits on a request is refused: it must be answered.
    let (status, body) = app
        .post(&format!("/v1/tasks/{id}/approve"), &Value::Null)
        .await?;
    ensure!(
        status == 400 && body.to_string().contains("respond"),
        "{status} {body}"
    );

    // Answered once; the second answer finds nothing open.
    let (status, _) = respond(&app, id, json!({"choice": "a"})).await?;
    ensure!(status == 200);
    let (status, body) = respond(&app, id, json!({"choice": "b"})).await?;
    ensure!(status == 409, "{status} {body}");
    app.stop().await
}

#[tokio::test]
async fn an_unanswered_request_is_denied_or_failed_at_its_deadline() -> Result<()> {
    let app = TestApp::spawn().await?;
    let deny = app
        .submit(asking(
            json!({"kind": "permission", "prompt": "may I?", "timeout_ms": 200}),
        ))
        .await?;
    let fail = app
        .submit(asking(
            json!({"kind": "text", "prompt": "name?", "timeout_ms": 200, "on_timeout": "fail"}),
        ))
        .await?;
    let deny = deny["id"].as_str().context("id")?;
    let fail = fail["id"].as_str().context("id")?;

    let denied = app.wait_for_state(deny, "completed").await?;
    let answer: Value =
        serde_json::from_str(denied["output_summary"].as_str().context("summary")?)?;
    ensure!(
        answer == json!({"choice": "deny", "expired": true}),
        "{answer}"
    );
    let failed = app.wait_for_state(fail, "failed").await?;
    ensure!(
        failed["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("by its deadline")),
        "{failed}"
    );
    let kinds = app.event_kinds(fail).await?;
    ensure!(
        kinds.ends_with(&["task.blocked".to_owned(), "task.failed".to_owned()]),
        "{kinds:?}"
    );
    app.stop().await
}

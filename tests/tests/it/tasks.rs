//! The vertical slice through the API: submit, run, read, transition, refuse.

use anyhow::Result;
use serde_json::{Value, json};

use turnq_tests::{TestApp, eventually};

#[tokio::test]
async fn submitted_task_runs_to_completed_through_the_whole_pipeline() -> Result<()> {
    let app = TestApp::spawn().await?;
    let task = app
        .submit(json!({"input": {"script": {"chunks": ["hel", "lo"], "input_tokens": 7, "output_tokens": 3, "cost_usd": 0.25}}}))
        .await?;
    assert_eq!(task["state"], "pending");
    let id = task["id"].as_str().unwrap().to_owned();

    let done = app.wait_for_state(&id, "completed").await?;
    assert_eq!(done["output_summary"], "hello");
    assert_eq!(
        done["usage"],
        json!({"input_tokens": 7, "output_tokens": 3, "cost_usd": 0.25})
    );
    assert_eq!(done["attempt"], 1);

    let kinds = app.event_kinds(&id).await?;
    let without_output: Vec<&str> = kinds
        .iter()
        .map(String::as_str)
        .filter(|k| *k != "task.output")
        .collect();
    assert_eq!(
        without_output,
        [
            "task.submitted",
            "task.queued",
            "task.started",
            "task.completed"
        ]
    );
    assert!(kinds.contains(&"task.output".to_owned()), "{kinds:?}");

    // Versions are gapless and in order.
    let (_, events) = app.get(&format!("/v1/tasks/{id}/events")).await?;
    let versions: Vec<i64> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["version"].as_i64().unwrap())
        .collect();
    assert_eq!(versions, (1..=versions.len() as i64).collect::<Vec<_>>());
    app.stop().await?;
    Ok(())
}

#[tokio::test]
async fn a_batch_of_500_all_complete() -> Result<()> {
    let app = TestApp::spawn().await?;
    let tasks: Vec<Value> = (0..500)
        .map(|i| json!({"input": format!("task {i}")}))
        .collect();
    let (status, body) = app
        .post("/v1/tasks/batch", &json!({"tasks": tasks}))
        .await?;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["created"], 500);
    eventually("all 500 complete", || async {
        let (_, page) = app.get("/v1/tasks?state=completed&limit=500").await?;
        let n = page["tasks"].as_array().map_or(0, Vec::len);
        anyhow::ensure!(n == 500, "{n} of 500 completed");
        Ok(())
    })
    .await?;
    app.stop().await?;
    Ok(())
}

#[tokio::test]
async fn same_idempotency_key_returns_the_same_task() -> Result<()> {
    let app = TestApp::spawn_without_workers().await?;
    let first = app
        .http
        .post(app.url("/v1/tasks"))
        .header("Idempotency-Key", "order-42")
        .json(&json!({"input": "once"}))
        .send()
        .await?;
    assert_eq!(first.status(), 201);
    let first: Value = first.json().await?;
    let again = app
        .http
        .post(app.url("/v1/tasks"))
        .header("Idempotency-Key", "order-42")
        .json(&json!({"input": "once"}))
        .send()
        .await?;
    assert_eq!(
        again.status(),
        200,
        "the same submission again is the same task"
    );
    let again: Value = again.json().await?;
    assert_eq!(first["id"], again["id"]);
    // The same key with other values would drop them silently: refused instead.
    let before = app.counts().await?;
    let second = app
        .http
        .post(app.url("/v1/tasks"))
        .header("Idempotency-Key", "order-42")
        .json(&json!({"input": "twice"}))
        .send()
        .await?;
    assert_eq!(second.status(), 409);
    let second: Value = second.json().await?;
    assert_eq!(
        second["error"]["code"], "idempotency_key_reused",
        "{second}"
    );
    let message = second["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(first["id"].as_str().unwrap_or("?"))
            && message.contains("different input"),
        "{message}"
    );
    // The key in the body works the same, and a batch reuses it too.
    let (status, body) = app
        .post("/v1/tasks/batch", &json!({"tasks": [{"input": "once", "idempotency_key": "order-42"}, {"input": "y", "idempotency_key": "new"}, {"input": "y", "idempotency_key": "new"}]}))
        .await?;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["created"], 1);
    assert_eq!(body["tasks"][0]["id"], first["id"]);
    assert_eq!(body["tasks"][1]["id"], body["tasks"][2]["id"]);
    // A batch that reuses a key with other values is refused as a whole.
    let (status, body) = app
        .post("/v1/tasks/batch", &json!({"tasks": [{"input": "a", "idempotency_key": "k2"}, {"input": "b", "idempotency_key": "k2"}]}))
        .await?;
    assert_eq!(status, 409, "{body}");
    assert_eq!(
        app.counts().await?.0,
        before.0 + 1,
        "only the batch's new task \"y\" was written"
    );
    // Another project may use the same key for its own task.
    let other = app
        .submit(json!({"input": "x", "idempotency_key": "order-42", "project": "other"}))
        .await?;
    assert_ne!(other["id"], first["id"]);
    assert_eq!(app.counts().await?.0, 3);
    app.stop().await?;
    Ok(())
}

#[tokio::test]
async fn a_batch_with_an_idempotency_key_is_created_once_whatever_the_retries() -> Result<()> {
    let app = TestApp::spawn_without_workers().await?;
    let send = |key: &'static str, body: Value| {
        let app = &app;
        async move {
            let response = app
                .http
                .post(app.url("/v1/tasks/batch"))
                .header("Idempotency-Key", key)
                .json(&body)
                .send()
                .await?;
            let status = response.status().as_u16();
            anyhow::Ok((status, response.json::<Value>().await?))
        }
    };
    let batch = json!({"tasks": [{"input": "a"}, {"input": "b", "idempotency_key": "own"}, {"input": "c"}]});
    let (status, first) = send("nightly-7", batch.clone()).await?;
    assert_eq!(status, 201, "{first}");
    assert_eq!(first["created"], 3);
    let ids = |body: &Value| -> Vec<Value> {
        body["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["id"].clone())
            .collect()
    };
    // The client never saw the answer and sends it again: nothing new, the same tasks.
    let (status, again) = send("nightly-7", batch.clone()).await?;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["created"], 0);
    assert_eq!(ids(&again), ids(&first));
    assert_eq!(app.counts().await?.0, 3);

    // The same key with other tasks is refused, whole, and writes nothing.
    for (other, field) in [
        (
            json!({"tasks": [{"input": "a"}, {"input": "b", "idempotency_key": "own"}, {"input": "C"}]}),
            "input",
        ),
        (
            json!({"tasks": [{"input": "a"}, {"input": "b", "idempotency_key": "own"}, {"input": "c"}, {"input": "d"}]}),
            "number of tasks",
        ),
        (
            json!({"tasks": [{"input": "a"}, {"input": "b", "idempotency_key": "own"}]}),
            "number of tasks",
        ),
    ] {
        let (status, body) = send("nightly-7", other.clone()).await?;
        assert_eq!(status, 409, "{other}: {body}");
        assert_eq!(body["error"]["code"], "idempotency_key_reused", "{body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("nightly-7") && message.contains(field),
            "{message}"
        );
        assert_eq!(app.counts().await?.0, 3, "{other} wrote nothing");
    }
    // Another key is another batch.
    let (status, body) = send("nightly-8", json!({"tasks": [{"input": "a"}]})).await?;
    assert_eq!((status, body["created"].clone()), (201, json!(1)), "{body}");
    // A key too long to derive task keys from is refused up front.
    let long: &'static str = Box::leak("k".repeat(251).into_boxed_str());
    let (status, body) = send(long, batch).await?;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("250"),
        "{body}"
    );
    app.stop().await?;
    Ok(())
}

#[tokio::test]
async fn lists_and_batch_answers_carry_previews_of_large_inputs_and_the_task_has_them_whole()
-> Result<()> {
    let app = TestApp::spawn_without_workers().await?;
    let big = json!({"prompt": "é".repeat(100_000), "files": ["a.rs"]});
    let large = app.submit(json!({"input": big.clone()})).await?;
    let small = app.submit(json!({"input": "short"})).await?;
    let (status, page) = app.get("/v1/tasks").await?;
    assert_eq!(status, 200, "{page}");
    let listed = |id: &Value| -> Value {
        page["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["id"] == *id)
            .cloned()
            .unwrap_or_default()
    };
    let (l, s) = (listed(&large["id"]), listed(&small["id"]));
    assert_eq!(l["input_truncated"], true, "{l}");
    let preview = l["input"].as_str().expect("a preview string");
    assert_eq!(preview.chars().count(), 1000);
    assert!(
        preview.starts_with(r#"{"files": ["a.rs"], "prompt": "éé"#),
        "{preview}"
    );
    assert_eq!(s["input"], "short");
    assert!(s.get("input_truncated").is_none(), "{s}");
    // The task itself has it whole.
    assert_eq!(app.task(large["id"].as_str().unwrap()).await?["input"], big);

    // A batch's answer does not echo large inputs either.
    let (status, body) = app
        .post(
            "/v1/tasks/batch",
            &json!({"tasks": [{"input": big.clone()}, {"input": "tiny"}]}),
        )
        .await?;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["tasks"][0]["input_truncated"], true);
    assert_eq!(
        body["tasks"][0]["input"].as_str().unwrap().chars().count(),
        1000
    );
    assert_eq!(body["tasks"][1]["input"], "tiny");
    let id = body["tasks"][0]["id"].as_str().unwrap();
    assert_eq!(app.task(id).await?["input"], big);
    app.stop().await?;
    Ok(())
}

#[tokio::test]
async fn illegal_transitions_are_409_and_write_nothing() -> Result<()> {
    let app = TestApp::spawn().await?;
    let task = app.submit(json!({"input": "hi"})).await?;
    let id = task["id"].as_str().unwrap().to_owned();
    app.wait_for_state(&id, "completed").await?;
    let before = app.counts().await?;
    for action in ["retry", "cancel", "approve"] {
        let (status, body) = app
            .post(&format!("/v1/tasks/{id}/{action}"), &Value::Null)
            .await?;
        assert_eq!(status, 409, "{action}: {body}");
        assert_eq!(body["error"]["code"], "illegal_transition", "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("completed"),
            "{body}"
        );
    }
    assert_eq!(app.counts().await?, before);
    app.stop().await?;
    Ok(())
}

#[tokio::test]
async fn pending_task_cancels_and_never_runs() -> Result<()> {
    let app = TestApp::spawn_without_workers().await?;
    let task = app.submit(json!({"input": "never"})).await?;
    let id = task["id"].as_str().unwrap().to_owned();
    let (status, body) = app
        .post(
            &format!("/v1/tasks/{id}/cancel"),
            &json!({"reason": "changed my mind"}),
        )
        .await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["state"], "cancelled");
    let mut app = app;
    app.start_worker(&[]).await?;
    // A task submitted after it runs on the same queue: once it has completed, the
    // worker has taken whatever job the dispatcher pushed before the cancel (queues
    // are taken in order), and that job must have done nothing.
    let later = app.submit(json!({"input": "later"})).await?;
    app.wait_for_state(later["id"].as_str().unwrap(), "completed")
        .await?;
    assert_eq!(app.task(&id).await?["state"], "cancelled");
    let kinds = app.event_kinds(&id).await?;
    assert!(!kinds.contains(&"task.started".to_owned()), "{kinds:?}");
    app.stop().await?;
    Ok(())
}

#[tokio::test]
async fn failed_task_shows_in_the_inbox_and_retries_by_hand() -> Result<()> {
    let app = TestApp::spawn().await?;
    let task = app
        .submit(json!({"input": {"script": {"outcome": "fail", "message": "bad tool"}}}))
        .await?;
    let id = task["id"].as_str().unwrap().to_owned();
    let failed = app.wait_for_state(&id, "failed").await?;
    assert_eq!(failed["last_error"], "bad tool");
    let (_, inbox) = app.get("/v1/inbox").await?;
    assert_eq!(inbox["tasks"][0]["id"], id.as_str());

    let (status, body) = app
        .post(&format!("/v1/tasks/{id}/retry"), &Value::Null)
        .await?;
    assert_eq!(status, 200, "{body}");
    // It fails again (the script says so), on a second attempt.
    eventually("the retry fails on a second attempt", || async {
        let t = app.task(&id).await?;
        anyhow::ensure!(t["state"] == "failed" && t["attempt"] == 2, "{t}");
        Ok(())
    })
    .await?;
    app.stop().await?;
    Ok(())
}

#[tokio::test]
async fn retryable_failures_retry_then_succeed() -> Result<()> {
    let app = TestApp::spawn().await?;
    let task = app
        .submit(json!({"input": {"script": {"fail_attempts": 1}}, "max_attempts": 3}))
        .await?;
    let id = task["id"].as_str().unwrap().to_owned();
    let done = app.wait_for_state(&id, "completed").await?;
    assert_eq!(done["attempt"], 2);
    let kinds = app.event_kinds(&id).await?;
    assert!(kinds.contains(&"task.retrying".to_owned()), "{kinds:?}");
    app.stop().await?;
    Ok(())
}

#[tokio::test]
async fn blocked_task_waits_in_the_inbox_until_approved() -> Result<()> {
    let app = TestApp::spawn().await?;
    let task = app
        .submit(json!({"input": {"script": {"outcome": "block", "message": "may I push?"}}, "max_attempts": 1}))
        .await?;
    let id = task["id"].as_str().unwrap().to_owned();
    let blocked = app.wait_for_state(&id, "blocked").await?;
    assert_eq!(blocked["output_summary"], "may I push?");
    let (status, body) = app
        .post(&format!("/v1/tasks/{id}/approve"), &json!({"note": "yes"}))
        .await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["state"], "pending");
    assert_eq!(body["max_attempts"], 2);
    app.stop().await?;
    Ok(())
}

/// Every bad request is a 4xx in the envelope and leaves the tables as they were.
#[tokio::test]
async fn bad_input_is_a_4xx_in_the_envelope_and_writes_nothing() -> Result<()> {
    let app = TestApp::spawn_without_workers().await?;
    let before = app.counts().await?;
    let big = "x".repeat(1024 * 1024 + 10);
    let too_many: Vec<Value> = (0..1001).map(|_| json!({"input": "x"})).collect();
    let one_bad: Vec<Value> = vec![
        json!({"input": "ok"}),
        json!({"input": "ok", "priority": 99999}),
    ];
    let posts: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "/v1/tasks",
            b"{not json".to_vec(),
            "parse the request body as JSON",
        ),
        ("/v1/tasks", b"{}".to_vec(), "input is required"),
        (
            "/v1/tasks",
            br#"{"input": ""}"#.to_vec(),
            "must not be empty",
        ),
        (
            "/v1/tasks",
            br#"{"input": null}"#.to_vec(),
            "input is required",
        ),
        (
            "/v1/tasks",
            serde_json::to_vec(&json!({"input": big}))?,
            "1 MiB",
        ),
        (
            "/v1/tasks",
            br#"{"input": "x", "queue": "no spaces"}"#.to_vec(),
            "queue",
        ),
        (
            "/v1/tasks",
            br#"{"input": "x", "prority": 1}"#.to_vec(),
            "prority",
        ),
        (
            "/v1/tasks",
            br#"{"input": "x", "max_attempts": "three"}"#.to_vec(),
            "max_attempts",
        ),
        (
            "/v1/tasks",
            br#"{"input": "x", "agent": "ghost"}"#.to_vec(),
            "agent \"ghost\" is not registered; the agents are: script",
        ),
        (
            "/v1/tasks/batch",
            serde_json::to_vec(
                &json!({"tasks": [{"input": "x"}, {"input": "y", "agent": "ghost"}]}),
            )?,
            "agent \"ghost\" is not registered",
        ),
        (
            "/v1/tasks",
            br#"{"input": "x", "run_at": "tomorrow"}"#.to_vec(),
            "\"tomorrow\" is not an RFC 3339 time such as 2026-12-03T14:00:00Z",
        ),
        (
            "/v1/tasks/batch",
            serde_json::to_vec(&json!({"tasks": too_many}))?,
            "limit is 1000",
        ),
        (
            "/v1/tasks/batch",
            serde_json::to_vec(&json!({"tasks": []}))?,
            "no tasks",
        ),
        (
            "/v1/tasks/batch",
            serde_json::to_vec(&json!({"tasks": one_bad}))?,
            "tasks[1]",
        ),
    ];
    for (path, body, needle) in posts {
        let (status, answer) = app.post_raw(path, body, "application/json").await?;
        assert!((400..500).contains(&status), "{needle}: {status} {answer}");
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(answer["error"]["code"].is_string(), "{needle}: {answer}");
        assert!(message.contains(needle), "wanted {needle:?} in {message:?}");
    }
    let (status, answer) = app
        .post_raw("/v1/tasks", b"{}".to_vec(), "text/plain")
        .await?;
    assert_eq!(status, 415, "{answer}");

    let gets = [
        ("/v1/tasks/not-a-uuid", 400, "not a UUID"),
        ("/v1/tasks/not-a-uuid/events", 400, "not a UUID"),
        (
            "/v1/tasks/0190a0a0-0000-7000-8000-000000000000",
            404,
            "does not exist",
        ),
        ("/v1/tasks?state=done", 400, "unknown task state"),
        ("/v1/tasks?colour=red", 400, "colour"),
        ("/v1/tasks?limit=0", 400, "limit"),
        ("/v1/tasks?cursor=nope", 400, "cursor"),
    ];
    for (path, want, needle) in gets {
        let (status, answer) = app.get(path).await?;
        assert_eq!(status, want, "{path}: {answer}");
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(needle),
            "{path}: wanted {needle:?} in {message:?}"
        );
    }
    let (status, answer) = app
        .post("/v1/tasks/not-a-uuid/cancel", &Value::Null)
        .await?;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(app.counts().await?, before);
    app.stop().await?;
    Ok(())
}

#[tokio::test]
async fn list_filters_and_paginates_with_a_cursor() -> Result<()> {
    let app = TestApp::spawn_without_workers().await?;
    let tasks: Vec<Value> = (0..5)
        .map(|i| json!({"input": format!("t{i}"), "queue": if i % 2 == 0 { "even" } else { "odd" }, "agent": "script"}))
        .collect();
    let (status, _) = app
        .post("/v1/tasks/batch", &json!({"tasks": tasks}))
        .await?;
    assert_eq!(status, 201);
    let (_, page1) = app.get("/v1/tasks?queue=even&limit=2").await?;
    assert_eq!(page1["tasks"].as_array().unwrap().len(), 2);
    let cursor = page1["next_cursor"]
        .as_str()
        .expect("a next page")
        .to_owned();
    let (_, page2) = app
        .get(&format!("/v1/tasks?queue=even&limit=2&cursor={cursor}"))
        .await?;
    assert_eq!(page2["tasks"].as_array().unwrap().len(), 1);
    assert!(page2["next_cursor"].is_null());
    let (_, odd) = app
        .get("/v1/tasks?queue=odd&state=pending,running&agent=script&project=default")
        .await?;
    assert_eq!(odd["tasks"].as_array().unwrap().len(), 2);
    app.stop().await?;
    Ok(())
}

#[tokio::test]
async fn health_endpoints_answer() -> Result<()> {
    let app = TestApp::spawn_without_workers().await?;
    assert_eq!(app.get("/healthz").await?.0, 200);
    assert_eq!(app.get("/readyz").await?.0, 200);
    app.stop().await?;
    Ok(())
}

#[tokio::test]
async fn a_task_postgres_refuses_to_start_for_good_fails_with_the_reason_instead_of_looping()
-> Result<()> {
    let app = TestApp::spawn().await?;
    // What an index row too large for its btree does to a claim (SQLSTATE 54000),
    // for the tasks marked `poison`.
    sea_orm::ConnectionTrait::execute_unprepared(
        &app.db,
        r#"
CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.state = 'running' AND NEW.input ? 'poison' THEN
    RAISE EXCEPTION 'index row size 9000 exceeds btree version 4 maximum 2704'
      USING ERRCODE = '54000';
  END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER refuse_poison BEFORE UPDATE ON tasks FOR EACH ROW EXECUTE FUNCTION refuse_poison();
"#,
    )
    .await?;
    let (status, body) = app
        .post(
            "/v1/tasks/batch",
            &json!({"tasks": [{"input": {"poison": true}}, {"input": "fine"}, {"input": "fine too"}]}),
        )
        .await?;
    assert_eq!(status, 201, "{body}");
    let ids: Vec<String> = body["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_owned())
        .collect();
    let failed = app.wait_for_state(&ids[0], "failed").await?;
    let error = failed["last_error"].as_str().unwrap_or_default();
    assert!(
        error.contains("cannot be started") && error.contains("index row size"),
        "{failed}"
    );
    for id in &ids[1..] {
        app.wait_for_state(id, "completed").await?;
    }
    let (_, inbox) = app.get("/v1/inbox").await?;
    assert!(
        inbox["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["id"] == ids[0]),
        "{inbox}"
    );
    assert_eq!(
        app.event_kinds(&ids[0]).await?,
        ["task.submitted", "task.queued", "task.failed"]
    );
    app.stop().await?;
    Ok(())
}

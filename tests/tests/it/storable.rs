//! Values Postgres cannot store are refused before anything is written: a 400 in the
//! error envelope that names the field and the limit, never a 500. Each of these was a
//! 500 that fuzzing the API from its document (`.ci/fuzz-api`) reaches.

use anyhow::{Result, ensure};
use serde_json::{Value, json};
use turnq_tests::{TestApp, count};

/// Row counts of every table a refused request must leave alone.
async fn written(app: &TestApp) -> Result<Vec<i64>> {
    let mut counts = Vec::new();
    for table in ["tasks", "events", "agents", "session_entries", "queues"] {
        counts.push(count(&app.db, table).await?);
    }
    Ok(counts)
}

/// Waits until the dispatcher has handed task `id` to Redis: it writes a `task.queued`
/// event on its own time, which a count of what a refused request wrote must not see.
async fn queued(app: &TestApp, id: &str) -> Result<()> {
    turnq_tests::eventually(format!("task {id} is queued"), || async {
        let task = app.task(id).await.map_err(|e| e.to_string())?;
        if task["queued"] == true {
            Ok(())
        } else {
            Err(format!("{task}"))
        }
    })
    .await
}

/// `(status, body)` is a 400 in the envelope whose message contains `needle`.
fn refused(what: &str, (status, body): &(u16, Value), needle: &str) -> Result<()> {
    ensure!(*status == 400, "{what}: answered {status}: {body}");
    ensure!(
        body["error"]["code"] == "invalid_request"
            && body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains(needle))
            && body["error"]["request_id"].is_string(),
        "{what}: wanted a message with {needle:?}: {body}"
    );
    Ok(())
}

async fn put(app: &TestApp, path: &str, body: &Value) -> Result<(u16, Value)> {
    let response = app.http.put(app.url(path)).json(body).send().await?;
    Ok((response.status().as_u16(), response.json().await?))
}

#[tokio::test]
async fn a_nul_character_anywhere_it_would_be_stored_or_compared_is_a_400() -> Result<()> {
    let app = TestApp::spawn_without_workers().await?;
    let task = app.submit(json!({"input": "hello"})).await?;
    let id = task["id"].as_str().unwrap_or_default().to_owned();
    queued(&app, &id).await?;
    let before = written(&app).await?;

    let nul = "a\u{0}b";
    let cases = [
        (
            "nested in the input",
            app.post("/v1/tasks", &json!({"input": {"x": [nul]}}))
                .await?,
            "input contains the character U+0000",
        ),
        (
            "in a key of the input",
            app.post("/v1/tasks", &json!({"input": {nul: 1}})).await?,
            "input contains the character U+0000",
        ),
        (
            "in feature_values",
            app.post(
                "/v1/tasks",
                &json!({"input": "x", "feature_values": {"f": nul}}),
            )
            .await?,
            "feature_values contains the character U+0000",
        ),
        (
            "in a batch",
            app.post(
                "/v1/tasks/batch",
                &json!({"tasks": [{"input": "ok"}, {"input": nul}]}),
            )
            .await?,
            "tasks[1]: input contains the character U+0000",
        ),
        (
            "in a cancel reason",
            app.post(&format!("/v1/tasks/{id}/cancel"), &json!({"reason": nul}))
                .await?,
            "reason contains the character U+0000",
        ),
        (
            "in an approval note",
            app.post(&format!("/v1/tasks/{id}/approve"), &json!({"note": nul}))
                .await?,
            "note contains the character U+0000",
        ),
        (
            "in an agent's label",
            put(
                &app,
                "/v1/agents/a",
                &json!({"backend": "script", "label": nul}),
            )
            .await?,
            "label contains the character U+0000",
        ),
        (
            "in an agent's config",
            put(
                &app,
                "/v1/agents/a",
                &json!({"backend": "script", "config": {"k": nul}}),
            )
            .await?,
            "config contains the character U+0000",
        ),
        (
            "in an agent name looked up",
            app.get("/v1/agents/a%00b").await?,
            "agent name contains the character U+0000",
        ),
        (
            "in a session entry",
            app.post(
                "/v1/sessions/p/s/entries",
                &json!({"entries": [{"text": nul}]}),
            )
            .await?,
            "entries[0] contains the character U+0000",
        ),
    ];
    for (what, answer, needle) in &cases {
        refused(what, answer, needle)?;
    }
    for filter in ["project", "agent", "queue"] {
        let answer = app.get(&format!("/v1/tasks?{filter}=%00")).await?;
        refused(
            &format!("?{filter}=%00"),
            &answer,
            &format!("{filter} contains the character U+0000"),
        )?;
    }
    ensure!(written(&app).await? == before, "a refused request wrote");
    ensure!(app.task(&id).await?["state"] == "pending");
    app.stop().await
}

#[tokio::test]
async fn index_keys_are_limited_in_bytes_not_characters() -> Result<()> {
    let app = TestApp::spawn_without_workers().await?;
    let before = written(&app).await?;
    // Within the 4,096 bytes a text may have, but more than a btree index entry holds
    // (random, so Postgres cannot compress it below that): the unique index on
    // (project, idempotency_key) failed with a 500.
    let wide_project: String = (0..125)
        .map(|_| uuid::Uuid::new_v4().simple().to_string())
        .collect();
    // Within 256 characters, but 1,024 bytes.
    let emoji_key = "😀".repeat(256);
    let cases = [
        (
            "a 4,000-character project with an idempotency key",
            app.post(
                "/v1/tasks",
                &json!({"input": "x", "project": wide_project, "idempotency_key": "k"}),
            )
            .await?,
            "project is 4000 bytes long in UTF-8; the limit is 1024 bytes",
        ),
        (
            "a long session_id",
            app.post(
                "/v1/tasks",
                &json!({"input": "x", "session_id": "s".repeat(3000)}),
            )
            .await?,
            "session_id is 3000 bytes long in UTF-8; the limit is 1024 bytes",
        ),
        (
            "a session project key of 256 four-byte characters",
            app.post(
                &format!("/v1/sessions/{emoji_key}/s/entries"),
                &json!({"entries": [{"uuid": "u1"}]}),
            )
            .await?,
            "project key is 1024 bytes long in UTF-8; the limit is 512 bytes",
        ),
        (
            "a session id of 256 four-byte characters",
            app.get(&format!("/v1/sessions/p/{emoji_key}/entries"))
                .await?,
            "session id is 1024 bytes long in UTF-8; the limit is 512 bytes",
        ),
        (
            "a long session entry uuid",
            app.post(
                "/v1/sessions/p/s/entries",
                &json!({"entries": [{"uuid": "u1"}, {"uuid": "u".repeat(3000)}]}),
            )
            .await?,
            "entries[1].uuid is 3000 bytes long in UTF-8; the limit is 256 bytes",
        ),
    ];
    for (what, answer, needle) in &cases {
        refused(what, answer, needle)?;
    }
    ensure!(written(&app).await? == before, "a refused request wrote");

    // At the limits, with text that does not compress, everything is stored.
    let incompressible = |bytes: usize| -> String {
        (0..)
            .map(|i: u32| char::from_u32(0x4e00 + (i * 7919) % 20000).unwrap_or('x'))
            .take(bytes / 3)
            .collect()
    };
    let (status, task) = app
        .post(
            "/v1/tasks",
            &json!({"input": "x", "project": incompressible(1024),
                "idempotency_key": "k".repeat(255), "session_id": incompressible(1024)}),
        )
        .await?;
    ensure!(status == 201, "{status}: {task}");
    let key = (
        incompressible(512),
        incompressible(512),
        incompressible(1024),
    );
    let path = format!("/v1/sessions/{}/{}/entries?subpath={}", key.0, key.1, key.2);
    let (status, body) = app
        .post(&path, &json!({"entries": [{"uuid": "u".repeat(256)}]}))
        .await?;
    ensure!(status == 204, "{status}: {body}");
    let (status, body) = app.get(&path).await?;
    ensure!(status == 200 && body["entries"][0]["uuid"].as_str().map(str::len) == Some(256));
    app.stop().await
}

#[tokio::test]
async fn numbers_at_the_edge_of_a_double_read_back_as_they_were_written() -> Result<()> {
    let app = TestApp::spawn_without_workers().await?;
    // jsonb gives f64::MAX back as 309 digits, which serde_json's default parser rounded
    // past the largest double: every read of the row was a 500.
    let edge = json!({"max": f64::MAX, "min": -f64::MAX, "tiny": 5e-324, "big": 1e300});
    let task = app.submit(json!({"input": edge})).await?;
    let id = task["id"].as_str().unwrap_or_default();
    ensure!(app.task(id).await?["input"] == edge);
    // Lists read the input through Postgres too; small enough to be listed whole
    // (larger inputs are listed as previews).
    let small = json!({"max": f64::MAX});
    app.submit(json!({"input": small})).await?;
    let (status, page) = app.get("/v1/tasks").await?;
    ensure!(
        status == 200 && page["tasks"][0]["input"] == small,
        "{page}"
    );
    ensure!(page["tasks"][1]["input_truncated"] == true, "{page}");

    let (status, body) = app
        .post("/v1/sessions/p/s/entries", &json!({"entries": [edge]}))
        .await?;
    ensure!(status == 204, "{status}: {body}");
    let (status, body) = app.get("/v1/sessions/p/s/entries").await?;
    ensure!(status == 200 && body["entries"][0] == edge, "{body}");
    app.stop().await
}

#[tokio::test]
async fn a_parent_task_id_that_names_no_task_is_a_400() -> Result<()> {
    let app = TestApp::spawn_without_workers().await?;
    let parent = app.submit(json!({"input": "parent"})).await?;
    queued(&app, parent["id"].as_str().unwrap_or_default()).await?;
    let before = written(&app).await?;
    let nobody = uuid::Uuid::now_v7();
    // Found by fuzzing: the foreign key refused the insert, a 500.
    let answer = app
        .post("/v1/tasks", &json!({"input": {}, "parent_task_id": nobody}))
        .await?;
    refused(
        "single",
        &answer,
        &format!("parent_task_id {nobody} names no task"),
    )?;
    let answer = app
        .post(
            "/v1/tasks/batch",
            &json!({"tasks": [{"input": "a", "parent_task_id": parent["id"]},
                {"input": "b", "parent_task_id": nobody}]}),
        )
        .await?;
    refused(
        "batch",
        &answer,
        &format!("parent_task_id {nobody} names no task"),
    )?;
    ensure!(written(&app).await? == before, "a refused request wrote");
    let (status, child) = app
        .post(
            "/v1/tasks",
            &json!({"input": "child", "parent_task_id": parent["id"]}),
        )
        .await?;
    ensure!(
        status == 201 && child["parent_task_id"] == parent["id"],
        "{status}: {child}"
    );
    app.stop().await
}

//! `/v1/arenas`: one task given to several agents at once, run by a real worker,
//! compared side by side, and the winner picked once; bad arenas refused whole.

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};
use turnq_core::{
    StreamVersion,
    auth::{Scope, TokenStore},
    event::{EventStore, StreamRef},
};
use turnq_tests::{TestApp, count};

/// One input for every contestant; the script backend runs each model its own way.
fn race_input() -> Value {
    json!({"prompt": "Fix the flaky test", "script": {
    "chunks": ["patched ", "the test"], "input_tokens": 100, "output_tokens": 10, "cost_usd": 0.01,
    "by_model": {
        "slow": {"latency_ms": 300, "chunks": ["rewrote ", "the test"], "output_tokens": 40, "cost_usd": 0.04},
        "broken": {"outcome": "fail", "message": "could not reproduce", "input_tokens": 80, "output_tokens": 0, "cost_usd": 0.002},
    }}})
}

fn ids(arena: &Value) -> Result<Vec<String>> {
    arena["contestants"]
        .as_array()
        .context("contestants is an array")?
        .iter()
        .map(|c| {
            c["task_id"]
                .as_str()
                .map(str::to_owned)
                .context("task_id is a string")
        })
        .collect()
}

/// Rows of (arenas, tasks, events).
async fn rows(app: &TestApp) -> Result<(i64, i64, i64)> {
    let (tasks, events) = app.counts().await?;
    Ok((count(&app.db, "arenas").await?, tasks, events))
}

#[tokio::test(flavor = "multi_thread")]
async fn an_arena_runs_its_contestants_side_by_side_and_a_person_picks_the_winner_once()
-> Result<()> {
    let app = TestApp::spawn().await?;
    let created = app
        .create_arena(json!({"input": race_input(), "project": "race", "max_attempts": 1,
            "contestants": [{"agent": "script"}, {"agent": "script", "model": "slow"}, {"agent": "script", "model": "broken"}]}))
        .await?;
    let id = created["id"].as_str().context("id")?.to_owned();
    ensure!(
        created["project"] == "race"
            && created["ended"] == false
            && created["winner_task_id"].is_null(),
        "{created}"
    );
    let tasks = ids(&created)?;
    ensure!(tasks.len() == 3, "{created}");

    let arena = app.wait_for_arena_to_end(&id).await?;
    let c = arena["contestants"].as_array().context("contestants")?;
    let states: Vec<&str> = c.iter().filter_map(|c| c["state"].as_str()).collect();
    ensure!(states == ["completed", "completed", "failed"], "{arena}");
    let models: Vec<&Value> = c.iter().map(|c| &c["model"]).collect();
    ensure!(
        models == [&Value::Null, &json!("slow"), &json!("broken")],
        "{arena}"
    );
    ensure!(
        c[0]["usage"] == json!({"input_tokens": 100, "output_tokens": 10, "cost_usd": 0.01})
            && c[1]["usage"] == json!({"input_tokens": 100, "output_tokens": 40, "cost_usd": 0.04})
            && c[2]["usage"] == json!({"input_tokens": 80, "output_tokens": 0, "cost_usd": 0.002}),
        "each contestant's own usage, a failed one's too: {arena}"
    );
    ensure!(
        c[0]["output_summary"] == "patched the test"
            && c[1]["output_summary"] == "rewrote the test",
        "{arena}"
    );
    ensure!(
        c[2]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("could not reproduce")),
        "{arena}"
    );
    for contestant in c {
        ensure!(contestant["duration_ms"].is_i64(), "{contestant}");
        ensure!(
            contestant["changes"]
                == json!({"pending": 0, "applied": 0, "rejected": 0, "reverted": 0}),
            "{contestant}"
        );
        ensure!(contestant["winner"] == false, "{contestant}");
    }
    // The slow model's latency is its own: the others did not wait for it.
    ensure!(
        c[1]["duration_ms"].as_i64().unwrap_or(0) >= 300,
        "the slow contestant took its latency: {arena}"
    );
    for (i, task) in tasks.iter().enumerate() {
        let t = app.task(task).await?;
        ensure!(t["arena_id"] == id.as_str(), "{t}");
        ensure!(
            t["session_id"] == format!("arena-{id}-{i}"),
            "each has a session of its own: {t}"
        );
        ensure!(t["input"] == race_input() && t["project"] == "race", "{t}");
    }

    // Refused picks write nothing.
    let outsider = app.submit(json!({"input": "not in the race"})).await?;
    // Ended, so that nothing else writes while the refusals are counted.
    app.wait_for_state(outsider["id"].as_str().context("id")?, "completed")
        .await?;
    let before = rows(&app).await?;
    let winner = format!("/v1/arenas/{id}/winner");
    for (task, status, says) in [
        (outsider["id"].clone(), 400, "is not a contestant of arena"),
        (
            json!(tasks[2]),
            400,
            "is failed: only a contestant that completed can win",
        ),
    ] {
        let (got, body) = app.post(&winner, &json!({"task_id": task})).await?;
        ensure!(got == status, "{got} {body}");
        ensure!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains(says)),
            "{body}"
        );
    }
    ensure!(rows(&app).await? == before, "a refused pick writes nothing");

    let (status, decided) = app.post(&winner, &json!({"task_id": tasks[1]})).await?;
    ensure!(status == 200, "{status} {decided}");
    ensure!(
        decided["winner_task_id"] == tasks[1].as_str()
            && decided["decided_by"] == "test"
            && decided["decided_at"].is_string(),
        "the token's name decided: {decided}"
    );
    let winners: Vec<&Value> = decided["contestants"]
        .as_array()
        .context("contestants")?
        .iter()
        .map(|c| &c["winner"])
        .collect();
    ensure!(
        winners == [&json!(false), &json!(true), &json!(false)],
        "{decided}"
    );

    let after = rows(&app).await?;
    let (status, again) = app.post(&winner, &json!({"task_id": tasks[0]})).await?;
    ensure!(
        status == 409 && again["error"]["code"] == "arena_decided",
        "{status} {again}"
    );
    ensure!(
        again["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains(&tasks[1]) && m.contains("test picked")),
        "it says who won and who picked: {again}"
    );
    ensure!(rows(&app).await? == after);

    let kinds: Vec<String> = EventStore::read_stream(
        &app.db,
        &StreamRef::new("arena", id.as_str()),
        StreamVersion::NEW,
        10,
    )
    .await?
    .into_iter()
    .map(|e| e.kind)
    .collect();
    ensure!(
        kinds == ["arena.created", "arena.winner_picked"],
        "{kinds:?}"
    );

    let (status, list) = app.get("/v1/arenas?project=race").await?;
    ensure!(status == 200, "{status} {list}");
    let listed = list["arenas"].as_array().context("arenas")?;
    ensure!(
        listed.len() == 1 && listed[0]["id"] == id.as_str(),
        "{list}"
    );
    ensure!(listed[0]["winner_task_id"] == tasks[1].as_str(), "{list}");
    let (_, other) = app.get("/v1/arenas?project=elsewhere").await?;
    ensure!(other["arenas"] == json!([]), "{other}");
    app.stop().await
}

#[tokio::test]
async fn bad_arenas_are_refused_whole_with_a_message_and_write_nothing() -> Result<()> {
    let app = TestApp::spawn_without_workers().await?;
    let two = json!([{"agent": "script"}, {"agent": "script"}]);
    let many = |n: usize| Value::Array((0..n).map(|_| json!({"agent": "script"})).collect());
    let cases = [
        (
            json!({"input": "x", "contestants": many(1)}),
            "2 to 16 contestants; this one has 1",
        ),
        (
            json!({"input": "x", "contestants": many(17)}),
            "this one has 17",
        ),
        (
            json!({"input": "x", "contestants": [{"agent": "script"}, {"agent": "ghost"}]}),
            "agent \"ghost\" is not registered",
        ),
        (
            json!({"input": "  ", "contestants": two}),
            "input must not be empty",
        ),
        (
            json!({"input": {"a": "\u{0}"}, "contestants": two}),
            "U+0000",
        ),
        (
            json!({"input": "x", "contestants": two, "colour": "red"}),
            "unknown field `colour`",
        ),
        (
            json!({"input": "x", "contestants": [{"agent": "script", "modle": "m"}, {"agent": "script"}]}),
            "contestants[0]: unknown field `modle`",
        ),
        (
            json!({"input": "x", "contestants": [{"agent": "script"}, {"model": "m"}]}),
            "contestants[1]: agent is required",
        ),
        (
            json!({"input": "x", "contestants": two, "priority": 5000}),
            "priority 5000 is out of range",
        ),
        (
            json!({"input": "x", "contestants": two, "reop": "/src/app"}),
            "unknown field `reop`",
        ),
        (
            json!({"input": "x", "contestants": two, "repo": "src/app"}),
            "must be an absolute path",
        ),
    ];
    let before = rows(&app).await?;
    for (body, says) in cases {
        let (status, answer) = app.post("/v1/arenas", &body).await?;
        ensure!(status == 400, "{body}: {status} {answer}");
        ensure!(answer["error"]["code"] == "invalid_request", "{answer}");
        ensure!(
            answer["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains(says)),
            "{body}: {answer} lacks {says:?}"
        );
    }
    // A task does not join an arena by naming it.
    let (status, answer) = app
        .post(
            "/v1/tasks",
            &json!({"input": "x", "arena_id": uuid::Uuid::now_v7()}),
        )
        .await?;
    ensure!(status == 400, "{status} {answer}");
    ensure!(rows(&app).await? == before, "nothing was written");

    // Unknown and malformed ids, bad list limits.
    let nobody = uuid::Uuid::now_v7();
    for (path, status) in [
        (format!("/v1/arenas/{nobody}"), 404),
        ("/v1/arenas/not-a-uuid".to_owned(), 400),
        ("/v1/arenas?limit=0".to_owned(), 400),
        ("/v1/arenas?limit=201".to_owned(), 400),
        ("/v1/arenas?colour=red".to_owned(), 400),
        ("/v1/arenas?project=a%00b".to_owned(), 400),
    ] {
        let (got, body) = app.get(&path).await?;
        ensure!(got == status, "{path}: {got} {body}");
    }
    let (status, body) = app
        .post(
            &format!("/v1/arenas/{nobody}/winner"),
            &json!({"task_id": nobody}),
        )
        .await?;
    ensure!(status == 404, "{status} {body}");

    // Creating and deciding need `submit`; reading needs `read`.
    let (reader, _) = TokenStore::create(&app.db, "reader", &[Scope::Read]).await?;
    let as_reader = reqwest::Client::new()
        .post(app.url("/v1/arenas"))
        .bearer_auth(reader.expose())
        .json(&json!({"input": "x", "contestants": two}))
        .send()
        .await?;
    ensure!(as_reader.status() == 403, "{}", as_reader.status());
    let listed = reqwest::Client::new()
        .get(app.url("/v1/arenas"))
        .bearer_auth(reader.expose())
        .send()
        .await?;
    ensure!(listed.status() == 200, "{}", listed.status());
    ensure!(rows(&app).await? == before);
    app.stop().await
}

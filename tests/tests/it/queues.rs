//! `/v1/queues`: queues exist from their first task, show what they hold, and a paused
//! queue holds its tasks until it is resumed.

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};
use turnq_core::{
    StreamVersion,
    auth::{Scope, TokenStore},
    event::{EventStore, StreamRef},
};
use turnq_tests::{TestApp, eventually};

async fn queue(app: &TestApp, name: &str) -> Result<Value> {
    let (status, body) = app.get(&format!("/v1/queues/{name}")).await?;
    ensure!(status == 200, "GET /v1/queues/{name}: {status} {body}");
    Ok(body)
}

#[tokio::test]
async fn a_queue_exists_from_its_first_task_and_counts_what_it_holds() -> Result<()> {
    let mut app = TestApp::spawn_without_workers().await?;
    let (_, before) = app.get("/v1/queues").await?;
    ensure!(before["queues"] == json!([]), "{before}");

    app.submit(json!({"input": "a", "queue": "mail"})).await?;
    app.submit(json!({"input": "b", "queue": "mail", "run_at": "2999-01-01T00:00:00Z"}))
        .await?;
    app.submit(json!({"input": {"script": {"outcome": "block"}}, "queue": "mail"}))
        .await?;
    app.submit(
        json!({"input": {"script": {"outcome": "fail"}}, "queue": "mail", "max_attempts": 1}),
    )
    .await?;
    // Without a worker: the due tasks are handed to Redis, the scheduled one waits.
    eventually("three tasks are queued", || async {
        let q = queue(&app, "mail").await?;
        ensure!(q["queued"] == 3 && q["pending"] == 1, "{q}");
        anyhow::Ok(())
    })
    .await?;
    let (_, list) = app.get("/v1/queues").await?;
    let names: Vec<&str> = list["queues"]
        .as_array()
        .context("queues")?
        .iter()
        .filter_map(|q| q["name"].as_str())
        .collect();
    ensure!(names == ["mail"], "{list}");

    app.start_worker(&["--queues", "mail"]).await?;
    let q = eventually("the due tasks ran", || async {
        let q = queue(&app, "mail").await?;
        ensure!(
            q["completed_last_hour"] == 1 && q["blocked"] == 1 && q["failed"] == 1,
            "{q}"
        );
        anyhow::Ok(q)
    })
    .await?;
    ensure!(
        q["pending"] == 1
            && q["queued"] == 0
            && q["running"] == 0
            && q["completed_last_minute"] == 1
            && q["failed_last_minute"] == 1
            && q["failed_last_hour"] == 1
            && q["paused"] == false,
        "{q}"
    );
    // The scheduled task is not due: it makes nothing "oldest pending".
    ensure!(q["oldest_pending_seconds"] == 0.0, "{q}");
    app.stop().await
}

#[tokio::test]
async fn a_paused_queue_holds_its_tasks_until_resumed_while_other_queues_run() -> Result<()> {
    let mut app = TestApp::spawn_without_workers().await?;
    // A task already handed to Redis before the pause still runs.
    let early = app
        .submit(json!({"input": "early", "queue": "slow"}))
        .await?;
    let early = early["id"].as_str().context("id")?.to_owned();
    eventually("the early task is queued", || async {
        let t = app.task(&early).await?;
        ensure!(t["queued"] == true, "{t}");
        anyhow::Ok(())
    })
    .await?;
    let (status, paused) = app.post("/v1/queues/slow/pause", &Value::Null).await?;
    ensure!(
        status == 200 && paused["paused"] == true,
        "{status} {paused}"
    );

    let held = app
        .submit(json!({"input": "held", "queue": "slow"}))
        .await?;
    let held = held["id"].as_str().context("id")?.to_owned();
    app.start_worker(&["--queues", "slow,fast"]).await?;
    // The control: a task of another queue, submitted after the held one, runs to the
    // end on the same worker; the dispatcher has looked at the held one meanwhile.
    let control = app
        .submit(json!({"input": "control", "queue": "fast"}))
        .await?;
    app.wait_for_state(control["id"].as_str().context("id")?, "completed")
        .await?;
    app.wait_for_state(&early, "completed").await?;
    let t = app.task(&held).await?;
    ensure!(
        t["state"] == "pending" && t["queued"] == false,
        "a task of a paused queue is not dispatched: {t}"
    );

    let (status, resumed) = app.post("/v1/queues/slow/resume", &Value::Null).await?;
    ensure!(
        status == 200 && resumed["paused"] == false,
        "{status} {resumed}"
    );
    app.wait_for_state(&held, "completed").await?;

    // Each change is an event of the queue's stream; repeating one records nothing.
    let (status, _) = app.post("/v1/queues/slow/resume", &Value::Null).await?;
    ensure!(status == 200);
    let kinds: Vec<String> = EventStore::read_stream(
        &app.db,
        &StreamRef::new("queue", "slow"),
        StreamVersion::NEW,
        100,
    )
    .await?
    .into_iter()
    .map(|e| e.kind)
    .collect();
    ensure!(kinds == ["queue.paused", "queue.resumed"], "{kinds:?}");
    app.stop().await
}

#[tokio::test]
async fn pausing_needs_admin_and_a_queue_that_exists() -> Result<()> {
    let app = TestApp::spawn_without_workers().await?;
    app.submit(json!({"input": "a"})).await?;
    let (status, body) = app.post("/v1/queues/nope/pause", &Value::Null).await?;
    ensure!(status == 404, "{status} {body}");
    ensure!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("does not exist")),
        "{body}"
    );
    let (status, body) = app.get("/v1/queues/bad%20name").await?;
    ensure!(status == 400, "{status} {body}");
    let (reader, _) = TokenStore::create(&app.db, "reader", &[Scope::Read]).await?;
    let as_reader = reqwest::Client::new()
        .post(app.url("/v1/queues/default/pause"))
        .bearer_auth(reader.expose())
        .send()
        .await?;
    ensure!(as_reader.status() == 403, "{}", as_reader.status());
    let listed = reqwest::Client::new()
        .get(app.url("/v1/queues"))
        .bearer_auth(reader.expose())
        .send()
        .await?;
    ensure!(listed.status() == 200, "{}", listed.status());
    ensure!(queue(&app, "default").await?["paused"] == false);
    app.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_figures_kept_from_the_log_agree_with_postgres_after_every_kind_of_transition()
-> Result<()> {
    use turnq_core::queue::QueueStore;
    let mut app = TestApp::spawn_without_workers().await?;
    let inputs = [
        json!({"input": "ok", "queue": "mix"}),
        json!({"input": {"script": {"outcome": "fail"}}, "queue": "mix", "max_attempts": 1}),
        json!({"input": {"script": {"outcome": "block"}}, "queue": "mix"}),
        json!({"input": {"script": {"fail_attempts": 1}}, "queue": "mix", "max_attempts": 3}),
        json!({"input": "later", "queue": "mix", "run_at": "2999-01-01T00:00:00Z"}),
        json!({"input": "cancelled", "queue": "mix", "run_at": "2999-01-01T00:00:00Z"}),
        json!({"input": "other", "queue": "else"}),
    ];
    let mut ids = Vec::new();
    for body in inputs {
        ids.push(
            app.submit(body).await?["id"]
                .as_str()
                .context("id")?
                .to_owned(),
        );
    }
    app.post(&format!("/v1/tasks/{}/cancel", ids[5]), &Value::Null)
        .await?;
    app.start_worker(&["--queues", "mix,else"]).await?;
    app.wait_for_state(&ids[1], "failed").await?;
    app.wait_for_state(&ids[2], "blocked").await?;
    app.wait_for_state(&ids[3], "completed").await?;
    // A person's transitions too: retry the failed one, approve the blocked one.
    app.post(&format!("/v1/tasks/{}/retry", ids[1]), &Value::Null)
        .await?;
    app.post(&format!("/v1/tasks/{}/approve", ids[2]), &Value::Null)
        .await?;
    app.wait_for_state(&ids[1], "failed").await?;
    app.wait_for_state(&ids[2], "blocked").await?;
    app.wait_for_state(&ids[6], "completed").await?;
    eventually("the tally agrees with Postgres", || async {
        let counted = QueueStore::counted(&app.db).await?;
        for want in counted {
            let got = queue(&app, &want.queue.name).await?;
            let f = &want.figures;
            for (field, value) in [
                ("pending", f.pending),
                ("queued", f.queued),
                ("running", f.running),
                ("blocked", f.blocked),
                ("failed", f.failed),
                ("completed_last_hour", f.completed_last_hour),
            ] {
                ensure!(
                    got[field] == value,
                    "{} {field}: the tally says {}, Postgres {value}",
                    want.queue.name,
                    got[field]
                );
            }
        }
        // Failures are counted as they happen: the task retried by hand failed twice.
        let mix = queue(&app, "mix").await?;
        ensure!(mix["failed_last_hour"] == 2, "{mix}");
        anyhow::Ok(())
    })
    .await?;
    app.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn tasks_waiting_for_an_agent_no_live_worker_serves_are_shown_in_the_queue_and_the_inbox()
-> Result<()> {
    // One worker pool: the `script` agent on the `default` queue.
    let app = TestApp::spawn().await?;
    // A registered agent that no worker runs (it was registered after they started).
    let response = app
        .http
        .put(app.url("/v1/agents/gpt9"))
        .json(&json!({"backend": "command", "config": {"program": "gpt9-cli"}}))
        .send()
        .await?;
    assert_eq!(response.status(), 201, "{}", response.text().await?);
    app.submit(json!({"input": "for gpt9", "agent": "gpt9"}))
        .await?;
    app.submit(json!({"input": "also for gpt9", "agent": "gpt9"}))
        .await?;
    // And a served agent on a queue no worker consumes.
    app.submit(json!({"input": "lonely", "queue": "nightly"}))
        .await?;
    let served = app.submit(json!({"input": "runs"})).await?;
    app.wait_for_state(served["id"].as_str().unwrap(), "completed")
        .await?;

    eventually("the queues say who is not served", || async {
        let default = queue(&app, "default").await?;
        let nightly = queue(&app, "nightly").await?;
        let ok = default["unserved"]
            == json!([{"queue": "default", "agent": "gpt9", "waiting": 2,
                       "message": "no worker serves agent gpt9 on queue default: 2 tasks wait for one"}])
            && nightly["unserved"][0]["agent"] == "script"
            && nightly["unserved"][0]["waiting"] == 1;
        anyhow::ensure!(ok, "default: {default}\nnightly: {nightly}");
        Ok(())
    })
    .await?;
    let (status, inbox) = app.get("/v1/inbox").await?;
    assert_eq!(status, 200, "{inbox}");
    let agents: Vec<(&str, &str)> = inbox["unserved"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| (u["queue"].as_str().unwrap(), u["agent"].as_str().unwrap()))
        .collect();
    assert_eq!(
        agents,
        [("default", "gpt9"), ("nightly", "script")],
        "{inbox}"
    );
    // The UI's inbox says it too.
    let page = app
        .http
        .get(app.url("/inbox"))
        .header("Cookie", format!("turnq_token={}", app.token()))
        .send()
        .await?
        .text()
        .await?;
    assert!(
        page.contains("No worker serves agent gpt9 on queue default"),
        "{page}"
    );
    app.stop().await
}

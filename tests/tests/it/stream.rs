//! `GET /v1/events/stream`: every event exactly once, in commit order, through late
//! commits, reconnects at any point, a slow client, and a `kill -9` of the API.

use std::collections::BTreeMap;

use anyhow::{Context, Result, ensure};
use futures::StreamExt;
use sea_orm::{ConnectionTrait, DatabaseConnection, TransactionTrait};
use serde_json::json;
use turnq::client::{EventStream, StreamEvent};
use turnq_core::{
    event::{Cursor, LiveLog},
    task::{NewTaskRequest, TaskStore},
};
use turnq_tests::{TestApp, eventually, free_port, within};

/// Appends one event to stream `test:{id}` on `db` (inside whatever transaction `db`
/// is), as any writer of the log does.
async fn append(db: &impl ConnectionTrait, id: &str) -> Result<()> {
    db.execute_unprepared(&format!(
        "INSERT INTO events (stream_type, stream_id, version, kind, data, metadata, recorded_at) \
         VALUES ('test', '{id}', 1, 'test.appended', '{{}}', '{{}}', now())"
    ))
    .await?;
    Ok(())
}

fn client(app: &TestApp, filters: &[(&str, &str)]) -> EventStream {
    EventStream {
        base: app.base.clone(),
        token: app.token().to_owned(),
        filters: filters
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    }
}

/// The stream id of an event of the stream.
fn stream_id(event: &StreamEvent) -> String {
    event.data["stream"]["id"]
        .as_str()
        .unwrap_or("?")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lower_position_committed_later_is_passed_on_once_and_in_order_through_every_reconnect()
-> Result<()> {
    let app = TestApp::spawn_without_workers().await?;
    let start = LiveLog::head(&app.db).await?.to_string();
    let stream = client(&app, &[("kind", "test.")]);
    let http = reqwest::Client::new();
    // A live client, following from before anything is written.
    let mut live = stream.connect(&http, Some(&start)).await?;

    // t1 writes first (lowest xid and position) and commits last; t3 writes third and
    // commits third; t2 and t4 commit at once.
    let t1 = app.db.begin().await?;
    append(&t1, "e1").await?;
    let t2 = app.db.begin().await?;
    append(&t2, "e2").await?;
    t2.commit().await?;
    let t3 = app.db.begin().await?;
    append(&t3, "e3").await?;
    let t4 = app.db.begin().await?;
    append(&t4, "e4").await?;
    t4.commit().await?;
    t3.commit().await?;
    // e2 and e4 are committed; e1 is not. Nothing may be passed on before e1: its
    // transaction is older than theirs. The live client reads on once t1 commits, and
    // its first event must be e1.
    t1.commit().await?;
    let mut seen = Vec::new();
    while seen.len() < 4 {
        let event = within("the live client reads the next event", live.next())
            .await?
            .context("the stream ended")??;
        seen.push(stream_id(&event));
    }
    ensure!(seen == ["e1", "e2", "e3", "e4"], "live: {seen:?}");

    // A client that reconnects after every event, with Last-Event-ID, sees each once.
    let mut from = start.clone();
    let mut resumed = Vec::new();
    while resumed.len() < 4 {
        let mut one = stream.connect(&http, Some(&from)).await?;
        let event = within("a reconnected client reads an event", one.next())
            .await?
            .context("the stream ended")??;
        from = event.id.clone();
        resumed.push(stream_id(&event));
    }
    ensure!(resumed == seen, "reconnecting: {resumed:?}");
    app.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_pick_the_events_of_a_task_a_queue_a_project_a_session_and_kinds() -> Result<()> {
    let app = TestApp::spawn().await?;
    let start = LiveLog::head(&app.db).await?.to_string();
    let a = app
        .submit(json!({"input": "a", "queue": "qa", "project": "pa", "session_id": "s1"}))
        .await?;
    let b = app
        .submit(json!({"input": "b", "queue": "default", "project": "pb"}))
        .await?;
    let (a, b) = (a["id"].as_str().unwrap(), b["id"].as_str().unwrap());
    let mut app = app;
    app.start_worker(&["--queues", "default,qa"]).await?;
    app.wait_for_state(a, "completed").await?;
    app.wait_for_state(b, "completed").await?;

    let http = reqwest::Client::new();
    // Reads what a filter passes from `start` up to the completion of both tasks.
    let read = |filters: Vec<(&'static str, String)>| {
        let stream = EventStream {
            base: app.base.clone(),
            token: app.token().to_owned(),
            filters: filters
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
        };
        let (http, start) = (http.clone(), start.clone());
        async move {
            let mut events = stream.connect(&http, Some(&start)).await?;
            let mut kinds = Vec::new();
            loop {
                let event = within("the next event", events.next())
                    .await?
                    .context("the stream ended")??;
                let done = event.kind == "task.completed";
                kinds.push((stream_id(&event), event.kind, event.data));
                if done {
                    return anyhow::Ok(kinds);
                }
            }
        }
    };
    let of_a = read(vec![("task", a.to_owned())]).await?;
    ensure!(of_a.iter().all(|(id, ..)| id == a), "{of_a:?}");
    let kinds: Vec<&str> = of_a.iter().map(|(_, k, _)| k.as_str()).collect();
    ensure!(
        kinds.starts_with(&["task.submitted", "task.queued", "task.started"]),
        "{kinds:?}"
    );
    let (_, _, last) = of_a.last().unwrap();
    ensure!(
        last["queue"] == "qa" && last["project"] == "pa" && last["session_id"] == "s1",
        "the event carries its task's queue, project and session: {last}"
    );
    for (filters, want) in [
        (vec![("queue", "qa".to_owned())], a),
        (vec![("project", "pb".to_owned())], b),
        (
            vec![("project", "pa".to_owned()), ("session", "s1".to_owned())],
            a,
        ),
    ] {
        let got = read(filters.clone()).await?;
        ensure!(
            got.iter().all(|(id, ..)| id == want),
            "{filters:?}: {got:?}"
        );
    }
    let completed = read(vec![("kind", "task.completed".to_owned())]).await?;
    ensure!(completed.len() == 1, "{completed:?}");
    let prefixed = read(vec![("kind", "task.".to_owned())]).await?;
    ensure!(
        prefixed.iter().all(|(_, k, _)| k.starts_with("task.")),
        "{prefixed:?}"
    );
    app.stop().await
}

#[tokio::test]
async fn bad_filters_cursors_and_tokens_are_refused() -> Result<()> {
    let app = TestApp::spawn_without_workers().await?;
    for (query, needle) in [
        ("after=12", "not a stream cursor"),
        ("after=a-b", "not a stream cursor"),
        ("task=nope", "not a task id"),
        ("queue=a%20b", "queue"),
        ("kind=Task!", "not an event kind"),
        ("project=", "1 to 4096 characters"),
        ("project=%00", "without NUL"),
        ("colour=red", "unknown field"),
    ] {
        let (status, body) = app.get(&format!("/v1/events/stream?{query}")).await?;
        ensure!(status == 400, "{query}: {status} {body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        ensure!(message.contains(needle), "{query}: {body}");
    }
    let response = app
        .http
        .get(app.url("/v1/events/stream"))
        .header("Last-Event-ID", "yesterday")
        .send()
        .await?;
    ensure!(response.status() == 400, "{}", response.status());
    let anonymous = reqwest::get(app.url("/v1/events/stream")).await?;
    ensure!(anonymous.status() == 401, "{}", anonymous.status());
    app.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_falls_behind_is_told_where_to_reconnect_and_loses_nothing() -> Result<()> {
    let app = TestApp::spawn_with_api(turnq_api::ApiConfig {
        stream_buffer: 16,
        ..Default::default()
    })
    .await?;
    let start = LiveLog::head(&app.db).await?.to_string();
    let stream = client(&app, &[("kind", "test.")]);
    let http = reqwest::Client::new();
    let mut slow = stream.connect(&http, Some(&start)).await?;
    // Far more than the socket buffers hold, while the client reads nothing: the feed
    // runs past the client by more than its 16 events.
    app.db
        .execute_unprepared(
            "INSERT INTO events (stream_type, stream_id, version, kind, data, metadata, recorded_at) \
             SELECT 'test', 'bulk-' || lpad(i::text, 3, '0'), 1, 'test.appended', \
                    jsonb_build_object('pad', repeat('x', 65536)), '{}', now() \
             FROM generate_series(0, 399) AS i",
        )
        .await?;
    let mut got = Vec::new();
    let reconnect = loop {
        let event = within("the slow client reads on", slow.next())
            .await?
            .context("the stream ended without a reconnect event")??;
        if event.kind == "reconnect" {
            break event;
        }
        got.push(stream_id(&event));
    };
    let from = reconnect.data["reconnect_from"]
        .as_str()
        .context("reconnect_from")?
        .to_owned();
    ensure!(reconnect.id == from, "{reconnect:?}");
    ensure!(
        within("the stream ends after reconnect", slow.next())
            .await?
            .is_none(),
        "the stream ends after telling the client to reconnect"
    );
    ensure!(got.len() < 400, "it fell behind: {} events came", got.len());
    // Resuming from there brings the rest, each once.
    let mut rest = stream.connect(&http, Some(&from)).await?;
    while got.len() < 400 {
        let event = within("the resumed client reads on", rest.next())
            .await?
            .context("the stream ended")??;
        got.push(stream_id(&event));
    }
    let want: Vec<String> = (0..400).map(|i| format!("bulk-{i:03}")).collect();
    ensure!(got == want, "in order, each once");
    app.stop().await
}

/// Every event in the log after `start`, as (stream type, stream id, version).
async fn log_after(db: &DatabaseConnection, start: Cursor) -> Result<Vec<(String, String, i64)>> {
    let mut all = Vec::new();
    let mut after = start;
    loop {
        let page = LiveLog::after(db, after, None, None, 1000).await?;
        let Some(last) = page.last() else {
            return Ok(all);
        };
        after = last.cursor;
        all.extend(page.into_iter().map(|e| {
            (
                e.event.stream.stream_type,
                e.event.stream.id,
                e.event.version.0,
            )
        }));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_sees_every_event_once_through_random_reconnects_and_a_kill_9_of_the_api()
-> Result<()> {
    turnq_tests::turnq_bin()?;
    let app = TestApp::spawn_without_workers().await?;
    let start = LiveLog::head(&app.db).await?;
    let port = free_port()?;
    let mut api = app.api_process(port, &[])?;
    let worker = app.worker_process("host-1", &["--concurrency", "16"])?;
    let stream = EventStream {
        base: format!("http://127.0.0.1:{port}"),
        token: app.token().to_owned(),
        filters: Vec::new(),
    };

    // The client: reads a few events per connection (a pseudo-random number), then
    // drops it and reconnects from the last one; when the API is away, it retries.
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel::<StreamEvent>();
    let reader = tokio::spawn({
        let stream = stream.clone();
        let start = start.to_string();
        async move {
            let http = reqwest::Client::new();
            let mut from = start;
            let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
            loop {
                let Ok(mut events) = stream.connect(&http, Some(&from)).await else {
                    tokio::task::yield_now().await;
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    continue;
                };
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let take = 1 + (seed >> 59) as usize;
                for _ in 0..take {
                    match events.next().await {
                        Some(Ok(event)) if event.kind == "reconnect" => {
                            if let Some(f) = event.data["reconnect_from"].as_str() {
                                from = f.to_owned();
                            }
                            break;
                        }
                        Some(Ok(event)) => {
                            from = event.id.clone();
                            if seen_tx.send(event).is_err() {
                                return;
                            }
                        }
                        Some(Err(_)) | None => break,
                    }
                }
            }
        }
    });

    let submit = |n: usize| {
        let db = app.db.clone();
        async move {
            for i in 0..n {
                let task = NewTaskRequest {
                    input: json!({"script": {"chunks": [format!("c{i}"), "d"]}}),
                    ..Default::default()
                }
                .validate(turnq_core::time::now())?;
                TaskStore::submit(&db, task, &json!({"actor": "test"})).await?;
            }
            anyhow::Ok(())
        }
    };
    let t0 = std::time::Instant::now();
    submit(60).await?;
    let mut received: Vec<StreamEvent> = Vec::new();
    // Mid-run: the client has seen some events; kill the API under it.
    eventually("the client receives events", || {
        while let Ok(e) = seen_rx.try_recv() {
            received.push(e);
        }
        let n = received.len();
        async move {
            if n >= 50 {
                Ok(())
            } else {
                Err(format!("{n} events"))
            }
        }
    })
    .await?;
    api.kill_9()?;
    submit(60).await?;
    api = app.api_process(port, &[])?;
    submit(60).await?;

    // Everything the log holds after `start`, once all tasks have ended, must reach the
    // client exactly once.
    eventually("every task completes", || async {
        let (_, body) = app.get("/v1/tasks?state=pending,running&limit=1").await?;
        let open = body["tasks"].as_array().map_or(0, Vec::len);
        ensure!(open == 0, "tasks still open");
        anyhow::Ok(())
    })
    .await?;
    let want = log_after(&app.db, start).await?;
    eventually("the client has caught up with the log", || {
        while let Ok(e) = seen_rx.try_recv() {
            received.push(e);
        }
        let n = received.len();
        let w = want.len();
        async move {
            if n >= w {
                Ok(())
            } else {
                Err(format!("{n} of {w} events"))
            }
        }
    })
    .await?;
    eprintln!(
        "{} events, each received once across reconnects and a kill -9 of the API, {:.1}s",
        received.len(),
        t0.elapsed().as_secs_f64()
    );
    reader.abort();
    let mut counts: BTreeMap<(String, String, i64), usize> = BTreeMap::new();
    for e in &received {
        let key = (
            e.data["stream"]["type"].as_str().unwrap_or("?").to_owned(),
            e.data["stream"]["id"].as_str().unwrap_or("?").to_owned(),
            e.data["version"].as_i64().unwrap_or(-1),
        );
        *counts.entry(key).or_default() += 1;
    }
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    ensure!(twice.is_empty(), "received more than once: {twice:?}");
    let missing: Vec<_> = want.iter().filter(|k| !counts.contains_key(*k)).collect();
    ensure!(missing.is_empty(), "never received: {missing:?}");
    // Events committed after `want` was read (a late write of the fleet) may have
    // arrived too: each one received must be in the log as it is now.
    let now: std::collections::BTreeSet<_> = log_after(&app.db, start).await?.into_iter().collect();
    let phantoms: Vec<_> = counts.keys().filter(|k| !now.contains(*k)).collect();
    let late: Vec<_> = counts.keys().filter(|k| !want.contains(*k)).collect();
    if !late.is_empty() {
        eprintln!("committed after the log was read, received too: {late:?}");
    }
    ensure!(
        phantoms.is_empty(),
        "received events the log does not hold: {phantoms:?}"
    );
    // In order: cursors only grow.
    let cursors: Vec<Cursor> = received
        .iter()
        .map(|e| e.id.parse().map_err(anyhow::Error::msg))
        .collect::<Result<_>>()?;
    ensure!(cursors.windows(2).all(|w| w[0] < w[1]), "cursors go back");
    drop(api);
    drop(worker);
    app.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_transaction_in_another_database_does_not_hold_the_stream_back() -> Result<()> {
    let app = TestApp::spawn_without_workers().await?;
    // Another database on the same server (an analytics job, another application):
    // a transaction there takes a transaction id and stays open for the whole test.
    let other = turnq_tests::TestDb::new().await?;
    let long = other.db.begin().await?;
    long.execute_unprepared("SELECT pg_current_xact_id()")
        .await?;

    let start = LiveLog::head(&app.db).await?.to_string();
    let task = app
        .submit(json!({"input": "while another database is busy"}))
        .await?;
    let id = task["id"].as_str().context("id")?.to_owned();
    let http = reqwest::Client::new();
    let mut events = client(&app, &[("task", id.as_str())])
        .connect(&http, Some(&start))
        .await?;
    let first = within("the task's events reach the client", events.next())
        .await?
        .context("the stream ended")??;
    ensure!(first.kind == "task.submitted", "{first:?}");
    long.rollback().await?;
    app.stop().await
}

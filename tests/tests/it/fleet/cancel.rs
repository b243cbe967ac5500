//! Cancelling running turns: each is stopped through the notification, and its slot runs the next turn.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_20_running_tasks_stops_each_through_the_notification() -> Result<()> {
    turnq_bin()?;
    let body = Instant::now();
    let app = TestApp::spawn_without_workers().await?;
    // A heartbeat far longer than the test's patience: only the cancellation notice,
    // not a lease renewal, can stop a turn before the test gives up.
    let flags = [
        "--concurrency",
        "10",
        "--heartbeat",
        "1h",
        "--lease",
        "2h",
        "--poll-interval",
        "20ms",
    ];
    let fleet = start_fleet(&app, 1..=2, &flags)?;
    let chunks: Vec<String> = (0..600).map(|i| format!("chunk {i} ")).collect();
    let long: Vec<Value> = (0..20)
        // An hour long: if one stopped, it was the cancellation that stopped it.
        .map(|_| json!({"input": {"script": {"latency_ms": 3_600_000, "chunks": chunks}}}))
        .collect();
    let long = submit(&app, long).await?;
    eventually("the 20 long turns run", || async {
        let running = running(&app.db).await?;
        ensure!(
            running.len() == 20,
            "{} of 20 running: {running:?}",
            running.len()
        );
        Ok(())
    })
    .await?;

    for id in &long {
        let (status, body) = app
            .post(
                &format!("/v1/tasks/{id}/cancel"),
                &json!({"reason": "fault test"}),
            )
            .await?;
        ensure!(status == 200, "cancel of {id} answered {status}: {body}");
        ensure!(
            body["state"] == "cancelled",
            "cancel of {id} answered {body}"
        );
    }
    // Every slot is taken by a cancelled turn: these start only as those stop.
    let quick = submit(
        &app,
        (0..20)
            .map(|_| json!({"input": {"script": {"latency_ms": 10}}}))
            .collect(),
    )
    .await?;
    wait_all_completed(&app, &quick).await?;

    let log = event_log(&app.db).await?;
    let last_cancel = long
        .iter()
        .filter_map(|id| log[id].iter().find(|e| e.kind == "task.cancelled"))
        .map(|e| e.at)
        .max()
        .context("the cancelled tasks have task.cancelled")?;
    let mut delays: Vec<(i64, &String)> = quick
        .iter()
        .map(|id| {
            let started = log[id]
                .iter()
                .find(|e| e.kind == "task.started")
                .map(|e| e.at)
                .with_context(|| format!("quick task {id} completed without task.started"))?;
            Ok(((started - last_cancel).num_milliseconds(), id))
        })
        .collect::<Result<_>>()?;
    delays.sort();
    let worst = delays.last().map_or(0, |(ms, _)| *ms);
    // The cancelled turns stayed cancelled, and their workers wrote nothing after it.
    for id in &long {
        let stream = &log[id];
        ensure!(
            stream.last().is_some_and(|e| e.kind == "task.cancelled"),
            "task {id} has events after its cancel: {:#?}",
            &stream[stream.len().saturating_sub(3)..]
        );
    }
    eprintln!(
        "20 cancels, then 20 quick tasks started {}..{} ms after the last cancel; test body {:.1}s",
        delays.first().map_or(0, |(ms, _)| *ms),
        worst,
        body.elapsed().as_secs_f64()
    );
    drop(fleet);
    app.stop().await?;
    Ok(())
}

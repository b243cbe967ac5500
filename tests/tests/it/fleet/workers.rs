//! Workers lost mid-run: `kill -9` of one, `SIGTERM` of all; nothing is lost and no two attempts of a task overlap.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_a_worker_mid_run_loses_nothing_and_never_overlaps_attempts() -> Result<()> {
    // Build the binary before any clock starts.
    turnq_bin()?;
    let body = Instant::now();
    let mut rng = Rng::seeded();
    let app = TestApp::spawn_without_workers().await?;
    let mut fleet = start_fleet(&app, 1..=3, &FAST_LEASES)?;
    let ids = submit(&app, random_turns(&mut rng, TASKS)).await?;

    // Mid-run: every worker is running turns.
    eventually("every worker runs turns", || async {
        let running = running(&app.db).await?;
        for worker in &fleet {
            ensure!(
                running.iter().any(|(_, _, w)| worker.owns(w)),
                "{} runs nothing yet; running: {running:?}",
                worker.host
            );
        }
        Ok(())
    })
    .await?;
    let victim = &mut fleet[0];
    victim.process.kill_9()?;
    let killed_at = Instant::now();
    let killed_ts = turnq_core::time::now();
    // What the dead worker was running: nobody renews these leases any more.
    let orphans: Vec<(String, i32, String)> = running(&app.db)
        .await?
        .into_iter()
        .filter(|(_, _, w)| victim.owns(w))
        .collect();
    ensure!(
        !orphans.is_empty(),
        "{} ran turns a moment ago but none when killed",
        victim.host
    );

    // Lease 3 s + the dispatcher's sweep + a re-run. A job the dead worker had fetched
    // but not claimed comes back after apalis' orphan detection (2 s heartbeat x 4
    // missed = 8 s). How long it took is printed below, not asserted.
    wait_all_ended(&app, &ids).await?;
    let all_ended = killed_at.elapsed();

    let rows = task_rows(&app.db).await?;
    let log = event_log(&app.db).await?;
    assert_no_overlapping_attempts(&log, &ids)?;
    // Each task completed, or failed because its attempts were spent (only lost
    // leases can fail a turn here: the scripts succeed).
    for id in &ids {
        let task = &rows[id];
        let spent = task.state == TaskState::Failed && task.attempt >= task.max_attempts;
        ensure!(
            task.state == TaskState::Completed || spent,
            "task {id} ended {} at attempt {} of {}; its log: {:#?}",
            task.state,
            task.attempt,
            task.max_attempts,
            log.get(id)
        );
    }
    // The orphans were recovered through their lost lease, and ran again elsewhere.
    for (id, attempt, worker) in &orphans {
        let stream = &log[id];
        let end = stream
            .iter()
            .position(|e| {
                ATTEMPT_ENDS.contains(&e.kind.as_str()) && e.attempt() == Some(i64::from(*attempt))
            })
            .with_context(|| {
                format!(
                    "attempt {attempt} of task {id} on the killed {worker} never ended: {stream:#?}"
                )
            })?;
        let ended = &stream[end];
        if ended.kind != "task.lease_lost" {
            // A commit already on its way to Postgres when the process died still lands;
            // its time was taken in the worker, before the kill.
            ensure!(
                ended.at <= killed_ts,
                "attempt {attempt} of task {id} on the killed {worker} ended with {} at {}, \
                 after the kill at {killed_ts}: {stream:#?}",
                ended.kind,
                ended.at
            );
            continue;
        }
        ensure!(
            ended.worker() == worker,
            "task {id} lost the lease of {}, not of {worker}: {stream:#?}",
            ended.worker()
        );
        ensure!(
            stream[end..]
                .iter()
                .any(|e| e.kind == "task.started" && !victim.owns(e.worker())),
            "task {id} never ran again after losing its lease: {stream:#?}"
        );
    }
    eprintln!(
        "killed {} while it ran {} turns; all {} tasks ended {:.1}s later; by state: {:?}; \
         the last start (s after the kill, task, its events): {:?}; test body {:.1}s",
        victim.host,
        orphans.len(),
        ids.len(),
        all_ended.as_secs_f64(),
        states(&app.db, &ids).await?,
        last_start(&log, killed_ts),
        body.elapsed().as_secs_f64()
    );
    drop(fleet);
    app.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_all_workers_mid_run_then_new_ones_lose_nothing() -> Result<()> {
    turnq_bin()?;
    let body = Instant::now();
    let mut rng = Rng::seeded();
    let app = TestApp::spawn_without_workers().await?;
    let mut flags = FAST_LEASES.to_vec();
    flags.extend(["--shutdown-grace", "1s"]);
    let mut fleet = start_fleet(&app, 1..=3, &flags)?;
    // Every tenth turn takes 4 s, longer than the grace: stopping must hand it back.
    let turns: Vec<Value> = (0..TASKS)
        .map(|i| {
            if i % 10 == 0 {
                script(4000)
            } else {
                script(rng.between(50, 800))
            }
        })
        .collect();
    let ids = submit(&app, turns).await?;
    let long: HashSet<&String> = ids.iter().step_by(10).collect();

    eventually("every worker runs turns, some of them long", || async {
        let running = running(&app.db).await?;
        for worker in &fleet {
            ensure!(
                running
                    .iter()
                    .any(|(id, _, w)| worker.owns(w) && long.contains(id)),
                "{} runs no long turn yet; running: {running:?}",
                worker.host
            );
        }
        Ok(())
    })
    .await?;
    for worker in &fleet {
        worker.process.terminate()?;
    }
    let terminated_at = Instant::now();
    for worker in &mut fleet {
        // Grace 1 s, then the stopped turns' hand-back: seconds, not more.
        let status = worker.process.wait_exit().await?;
        ensure!(
            status.success(),
            "{} exited with {status} after SIGTERM",
            worker.host
        );
    }
    let stopped_in = terminated_at.elapsed();
    // Nothing is left running under a worker that is gone: each turn finished within
    // the grace or was handed back.
    let orphans = running(&app.db).await?;
    ensure!(
        orphans.is_empty(),
        "after every worker exited, {} tasks are still running: {orphans:?}",
        orphans.len()
    );
    let log = event_log(&app.db).await?;
    let released: Vec<(String, i64)> = events_of(&log, "task.released")
        .map(|(id, e)| (id.clone(), e.version))
        .collect();
    ensure!(
        !released.is_empty(),
        "no turn was handed back (task.released) although long turns ran at SIGTERM"
    );
    let old_fleet: Vec<String> = fleet.iter().map(WorkerProcess::id_prefix).collect();

    let new_fleet = start_fleet(&app, 4..=6, &FAST_LEASES)?;
    wait_all_completed(&app, &ids).await?;
    let log = event_log(&app.db).await?;
    assert_no_overlapping_attempts(&log, &ids)?;
    // The handed-back turns ran again, on the new workers, to completion.
    for (id, version) in &released {
        let stream = &log[id];
        ensure!(
            stream.iter().any(|e| e.version > *version
                && e.kind == "task.started"
                && new_fleet.iter().any(|w| w.owns(e.worker()))),
            "task {id} was released (v{version}) and never started on a new worker: {stream:#?}"
        );
        ensure!(
            !stream.iter().any(|e| e.version > *version
                && old_fleet.iter().any(|p| e.worker().starts_with(p.as_str()))),
            "a stopped worker wrote for task {id} after handing it back: {stream:#?}"
        );
    }
    eprintln!(
        "SIGTERM to 3 workers: they exited within {:.1}s, {} turns handed back; all {} tasks \
         completed on the new workers; test body {:.1}s",
        stopped_in.as_secs_f64(),
        released.len(),
        ids.len(),
        body.elapsed().as_secs_f64()
    );
    drop(new_fleet);
    app.stop().await?;
    Ok(())
}

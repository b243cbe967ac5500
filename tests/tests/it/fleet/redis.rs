//! Redis losing its data mid-run (FLUSHALL, a restart without persistence): every task still completes.

use super::*;

/// How many tasks are handed to Redis and not yet started.
async fn waiting_in_redis(db: &DatabaseConnection, ids: &[String]) -> Result<usize> {
    let rows = task_rows(db).await?;
    Ok(ids
        .iter()
        .filter(|id| {
            rows.get(*id)
                .is_some_and(|t| t.state == TaskState::Pending && t.queued_at.is_some())
        })
        .count())
}

/// Submits the turns, waits until some completed while many still wait in Redis, runs
/// `fault`, and checks that every task still completes, some of them re-pushed.
async fn redis_fault_mid_run_loses_nothing(redis: &mut PrivateRedis, fault: &str) -> Result<()> {
    turnq_bin()?;
    let body = Instant::now();
    let mut rng = Rng::seeded();
    let app = TestApp::spawn_without_workers_on(&redis.url()).await?;
    let fleet = start_fleet(&app, 1..=3, &FAST_LEASES)?;
    let ids = submit(&app, random_turns(&mut rng, TASKS)).await?;
    eventually("some tasks complete before the fault", || async {
        let by_state = states(&app.db, &ids).await?;
        let done = by_state.get("completed").copied().unwrap_or(0);
        ensure!(done >= 20, "{done} completed; by state: {by_state:?}");
        Ok(())
    })
    .await?;
    let waiting = waiting_in_redis(&app.db, &ids).await?;
    match fault {
        "flushall" => {
            let ok = redis.command("FLUSHALL").await?;
            ensure!(ok == "OK", "FLUSHALL answered {ok}");
        }
        "restart" => redis.restart().await?,
        other => bail!("unknown fault {other}"),
    }
    let faulted_at = Instant::now();
    let faulted_ts = turnq_core::time::now();
    ensure!(
        waiting >= 20,
        "only {waiting} tasks waited in Redis at the {fault}: too few to show anything"
    );

    // The harness' dispatcher re-pushes a queued task after --redeliver-after (5 min),
    // so completing within this bound takes noticing the lost data.
    wait_all_completed(&app, &ids).await?;
    let all_done = faulted_at.elapsed();
    let log = event_log(&app.db).await?;
    assert_no_overlapping_attempts(&log, &ids)?;
    let re_pushed = log
        .values()
        .filter(|s| s.iter().filter(|e| e.kind == "task.queued").count() > 1)
        .count();
    ensure!(
        re_pushed > 0,
        "all tasks completed, yet none was queued twice: were {waiting} jobs really lost?"
    );
    eprintln!(
        "{fault} while {waiting} tasks waited in Redis: {re_pushed} re-pushed, all {} completed \
         {:.1}s later; the last start (s after the fault, task, its events): {:?}; test body {:.1}s",
        ids.len(),
        all_done.as_secs_f64(),
        last_start(&log, faulted_ts),
        body.elapsed().as_secs_f64()
    );
    drop(fleet);
    app.stop().await?;
    Ok(())
}

/// FLUSHALL on a Redis of the test's own: the shared one serves other tests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flushall_redis_mid_run_loses_nothing() -> Result<()> {
    let mut redis = PrivateRedis::start().await?;
    redis_fault_mid_run_loses_nothing(&mut redis, "flushall").await
}

/// A crash and restart of a Redis without persistence: connections break and the data
/// is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_redis_mid_run_loses_nothing() -> Result<()> {
    let mut redis = PrivateRedis::start().await?;
    redis_fault_mid_run_loses_nothing(&mut redis, "restart").await
}

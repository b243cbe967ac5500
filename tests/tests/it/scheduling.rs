//! What the dispatcher takes, and in what order: priorities, schedules, one turn per
//! session. Driven through the task store against a real database, so the order is exact.

use std::{sync::Mutex, time::Duration};

use anyhow::Result;
use serde_json::{Value, json};
use turnq_core::{
    WorkerId,
    event::{Completed, TaskEvent, Usage},
    task::{DueTask, NewTaskRequest, TaskStore},
    time,
};

use turnq_tests::TestDb;

fn task(body: Value) -> Result<turnq_core::task::NewTask> {
    let request: NewTaskRequest = serde_json::from_value(body)?;
    Ok(request.validate(time::now())?)
}

/// Dispatches up to `limit` tasks and returns what was pushed, in push order.
async fn dispatch(t: &TestDb, limit: u64) -> Result<Vec<DueTask>> {
    let pushed = Mutex::new(Vec::new());
    TaskStore::dispatch_due(&t.db, limit, Duration::from_secs(300), &json!({}), |due| {
        pushed.lock().unwrap().extend(due);
        async { Ok(()) }
    })
    .await?;
    Ok(pushed.into_inner().unwrap())
}

#[tokio::test]
async fn higher_priority_is_dispatched_first_and_future_run_at_waits() -> Result<()> {
    let t = TestDb::new().await?;
    let batch = vec![
        task(json!({"input": "low", "priority": -5}))?,
        task(json!({"input": "high", "priority": 10}))?,
        task(json!({"input": "later", "priority": 100, "run_at": "2999-01-01T00:00:00Z"}))?,
        task(json!({"input": "normal"}))?,
    ];
    let submitted = TaskStore::submit_batch(&t.db, batch, &json!({})).await?;
    let ids: Vec<_> = submitted.iter().map(|s| s.task.id).collect();
    let mut order = Vec::new();
    for _ in 0..4 {
        order.extend(dispatch(&t, 1).await?.into_iter().map(|d| d.id));
    }
    assert_eq!(
        order,
        [ids[1], ids[3], ids[0]],
        "high, normal, low; the scheduled one waits"
    );
    Ok(())
}

#[tokio::test]
async fn turns_of_one_session_run_one_at_a_time_in_order() -> Result<()> {
    let t = TestDb::new().await?;
    let batch = vec![
        task(json!({"input": "turn 1", "session_id": "s1"}))?,
        task(json!({"input": "turn 2", "session_id": "s1", "priority": 50}))?,
        task(json!({"input": "other session", "session_id": "s2"}))?,
        task(json!({"input": "same id, other project", "session_id": "s1", "project": "p2"}))?,
    ];
    let submitted = TaskStore::submit_batch(&t.db, batch, &json!({})).await?;
    let ids: Vec<_> = submitted.iter().map(|s| s.task.id).collect();

    let first: Vec<_> = dispatch(&t, 10).await?.into_iter().map(|d| d.id).collect();
    assert!(
        first.contains(&ids[0]) && first.contains(&ids[2]) && first.contains(&ids[3]),
        "{first:?}"
    );
    assert!(
        !first.contains(&ids[1]),
        "turn 2 must wait for turn 1, whatever its priority"
    );

    // Turn 1 runs: turn 2 still waits.
    let worker = WorkerId("w1".into());
    let claimed = TaskStore::claim(
        &t.db,
        ids[0],
        0,
        &worker,
        Duration::from_secs(60),
        &json!({}),
    )
    .await?;
    let turn1 = claimed.expect("turn 1 is claimable").task;
    assert!(dispatch(&t, 10).await?.is_empty());

    // Forcing redelivery of everything queued still holds turn 2 back...
    let pushed = Mutex::new(Vec::new());
    TaskStore::dispatch_due(&t.db, 10, Duration::ZERO, &json!({}), |due| {
        pushed.lock().unwrap().extend(due.into_iter().map(|d| d.id));
        async { Ok(()) }
    })
    .await?;
    assert!(
        !pushed.into_inner().unwrap().contains(&ids[1]),
        "turn 2 is held back"
    );
    // ...and even a stray job for it cannot start it while turn 1 runs.
    let sneak = TaskStore::claim(
        &t.db,
        ids[1],
        0,
        &WorkerId("w2".into()),
        Duration::from_secs(60),
        &json!({}),
    )
    .await?;
    assert!(
        sneak.is_none(),
        "a second running turn of a session is refused"
    );

    // Turn 1 ends: turn 2 is dispatched.
    let done = TaskEvent::Completed(Completed {
        attempt: turn1.attempt,
        output_summary: "ok".into(),
        usage: Usage::default(),
    });
    TaskStore::record(&t.db, ids[0], turn1.attempt, &worker, &done, &json!({})).await?;
    let next: Vec<_> = dispatch(&t, 10).await?.into_iter().map(|d| d.id).collect();
    assert_eq!(next, [ids[1]]);
    Ok(())
}

#[tokio::test]
async fn a_full_queue_of_one_agent_does_not_hold_back_other_agents() -> Result<()> {
    let t = TestDb::new().await?;
    let batch = vec![
        task(json!({"input": "a", "agent": "ghost"}))?,
        task(json!({"input": "b", "agent": "ghost"}))?,
        task(json!({"input": "c", "agent": "script"}))?,
    ];
    let submitted = TaskStore::submit_batch(&t.db, batch, &json!({})).await?;
    let ids: Vec<_> = submitted.iter().map(|s| s.task.id).collect();
    let since = time::now() - chrono::TimeDelta::minutes(5);

    // Two ghost tasks are handed over; nobody runs the ghost agent, so they stay queued.
    let pushed = Mutex::new(Vec::new());
    let skip_none: Vec<(String, String)> = Vec::new();
    TaskStore::dispatch_due_queued_before(&t.db, 2, since, &skip_none, None, &json!({}), |due| {
        pushed
            .lock()
            .unwrap()
            .extend(due.into_iter().map(|d| (d.id, d.agent)));
        async { Ok(()) }
    })
    .await?;
    assert_eq!(pushed.into_inner().unwrap().len(), 2);
    let counts = TaskStore::queued_by_pair(&t.db, since).await?;
    assert!(
        counts
            .iter()
            .any(|(q, a, n)| q == "default" && a == "ghost" && *n == 2),
        "{counts:?}"
    );

    // With the ghost queue full, the script task is still dispatched.
    let full = vec![("default".to_owned(), "ghost".to_owned())];
    let pushed = Mutex::new(Vec::new());
    TaskStore::dispatch_due_queued_before(&t.db, 10, since, &full, None, &json!({}), |due| {
        pushed
            .lock()
            .unwrap()
            .extend(due.into_iter().map(|d| (d.id, d.agent)));
        async { Ok(()) }
    })
    .await?;
    let pushed = pushed.into_inner().unwrap();
    let script_only: Vec<_> = pushed.iter().map(|(id, _)| *id).collect();
    // The first two went to ghost; the third (script) must be the one pushed now.
    assert!(script_only.contains(&ids[2]), "{pushed:?}");
    assert!(
        pushed.iter().all(|(_, agent)| agent == "script"),
        "{pushed:?}"
    );
    Ok(())
}

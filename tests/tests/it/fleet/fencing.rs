//! The fencing token at the core: a worker whose lease was taken over can write nothing.

use super::*;

/// One dispatch round that hands over (and records) whatever is due.
async fn dispatch(db: &DatabaseConnection) -> Result<Vec<DueTask>> {
    let mut pushed = Vec::new();
    TaskStore::dispatch_due(db, 10, Duration::from_secs(300), &json!({}), |due| {
        pushed.extend(due);
        async { Ok::<(), Box<dyn std::error::Error + Send + Sync>>(()) }
    })
    .await?;
    Ok(pushed)
}

/// The fencing token at the core: after worker A's lease expired and worker B took the
/// task, A (a zombie that never noticed) can neither stream output nor complete it.
#[tokio::test]
async fn a_worker_whose_lease_was_stolen_cannot_complete() -> Result<()> {
    let test_db = TestDb::new().await?;
    let db = &test_db.db;
    let metadata = json!({});
    let task = NewTaskRequest {
        input: json!("x"),
        ..Default::default()
    }
    .validate(turnq_core::time::now())?;
    let id: TaskId = TaskStore::submit_batch(db, vec![task], &metadata).await?[0]
        .task
        .id;
    let worker_a = WorkerId("worker-a".into());
    let worker_b = WorkerId("worker-b".into());

    let due = dispatch(db).await?;
    ensure!(due.len() == 1 && due[0].id == id, "dispatched {due:?}");
    let a = TaskStore::claim(
        db,
        id,
        due[0].attempt,
        &worker_a,
        Duration::from_millis(1),
        &metadata,
    )
    .await?
    .context("A's claim of a pending task succeeds")?;
    let attempt_a = a.task.attempt;
    // The lease is 1 ms: the sweep recovers the task as soon as that is past.
    eventually("the sweep recovers the expired lease", || async {
        let recovered = TaskStore::expire_leases(db, 100, &metadata).await?;
        ensure!(recovered == 1, "the sweep recovered {recovered} tasks");
        Ok(())
    })
    .await?;
    let due = dispatch(db).await?;
    ensure!(
        due.len() == 1 && due[0].id == id,
        "after the lost lease the dispatcher handed over {due:?}"
    );
    let b = TaskStore::claim(
        db,
        id,
        due[0].attempt,
        &worker_b,
        Duration::from_secs(300),
        &metadata,
    )
    .await?
    .context("B's claim of the recovered task succeeds")?;
    let attempt_b = b.task.attempt;
    assert_eq!(attempt_b, attempt_a + 1, "B runs the next attempt");

    let events_before = count(db, "events").await?;
    let output = TaskEvent::Output(Output {
        attempt: attempt_a,
        chunks: vec![OutputChunk {
            stream: "text".into(),
            text: "stale".into(),
        }],
    });
    let completed = |attempt, summary: &str| {
        TaskEvent::Completed(Completed {
            attempt,
            output_summary: summary.into(),
            usage: Usage::default(),
        })
    };
    for event in [output, completed(attempt_a, "stale")] {
        let refused = TaskStore::record(db, id, attempt_a, &worker_a, &event, &metadata).await;
        match refused {
            Err(Error::Fenced {
                task,
                attempt,
                worker,
            }) if task == id && attempt == attempt_a && worker == worker_a.0 => {}
            other => bail!("A's {} was not fenced: {other:?}", event.kind()),
        }
    }
    assert_eq!(
        count(db, "events").await?,
        events_before,
        "a fenced write appends nothing"
    );
    let now = TaskStore::get(db, id).await?;
    assert_eq!(
        (now.state, now.attempt, now.worker_id.as_deref()),
        (TaskState::Running, attempt_b, Some("worker-b")),
        "the task is still B's"
    );

    let done = TaskStore::record(
        db,
        id,
        attempt_b,
        &worker_b,
        &completed(attempt_b, "fresh"),
        &metadata,
    )
    .await?;
    assert_eq!(done.state, TaskState::Completed);
    assert_eq!(done.output_summary.as_deref(), Some("fresh"));
    let kinds: Vec<String> = TaskStore::events(db, id, turnq_core::StreamVersion::NEW, 100)
        .await?
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(
        kinds,
        [
            "task.submitted",
            "task.queued",
            "task.started",
            "task.lease_lost",
            "task.queued",
            "task.started",
            "task.completed"
        ],
        "the log holds B's attempt and nothing of A's after its lease was lost"
    );
    Ok(())
}

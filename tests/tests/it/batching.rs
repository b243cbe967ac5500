//! The batched paths of the hot path, each against the rule of its one-task form: a
//! grouped claim claims exactly what one claim per job would, and a group commit
//! writes exactly what one write per record would, refusing the same records.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder};
use serde_json::json;
use turnq_core::{
    Error, TaskId, WorkerId,
    entity::events,
    event::{Completed, Output, OutputChunk, Retried, TaskEvent, Usage},
    task::{NewTaskRequest, Record, TaskDetails, TaskState, TaskStore},
    time,
};

use turnq_tests::TestDb;

const LEASE: Duration = Duration::from_secs(60);

/// Submits one task per entry (`Some(session)` puts it in that session) and hands them
/// all to a no-op delivery, as the dispatcher would.
async fn queued(db: &DatabaseConnection, sessions: &[Option<&str>]) -> Result<Vec<TaskId>> {
    let batch = sessions
        .iter()
        .map(|session| {
            let request = NewTaskRequest {
                input: json!("x"),
                details: TaskDetails {
                    session_id: session.map(str::to_owned),
                    ..Default::default()
                },
                ..Default::default()
            };
            Ok(request.validate(time::now())?)
        })
        .collect::<Result<Vec<_>>>()?;
    let ids: Vec<TaskId> = TaskStore::submit_batch(db, batch, &json!({}))
        .await?
        .into_iter()
        .map(|s| s.task.id)
        .collect();
    TaskStore::dispatch_due(db, 100, LEASE, &json!({}), |_| async { Ok(()) }).await?;
    Ok(ids)
}

async fn kinds(db: &DatabaseConnection, id: TaskId) -> Result<Vec<(i64, String)>> {
    Ok(events::Entity::find()
        .filter(events::Column::StreamId.eq(id.to_string()))
        .order_by_asc(events::Column::Version)
        .all(db)
        .await?
        .into_iter()
        .map(|e| (e.version, e.kind))
        .collect())
}

fn completed(attempt: i32) -> TaskEvent {
    TaskEvent::Completed(Completed {
        attempt,
        output_summary: "done".into(),
        usage: Usage {
            input_tokens: 3,
            output_tokens: 4,
            cost_usd: 0.5,
        },
    })
}

fn output(attempt: i32, text: &str) -> TaskEvent {
    TaskEvent::Output(Output {
        attempt,
        chunks: vec![OutputChunk {
            stream: "text".into(),
            text: text.into(),
        }],
    })
}

#[tokio::test]
async fn a_grouped_claim_takes_only_pending_tasks_at_the_jobs_attempt_each_once() -> Result<()> {
    let test_db = TestDb::new().await?;
    let db = &test_db.db;
    let ids = queued(db, &[None, None, None, None, None]).await?;
    TaskStore::cancel(db, ids[2], None, &json!({})).await?;
    let worker = WorkerId("w".into());
    let jobs = [
        (ids[0], 0),
        (ids[1], 0),
        (ids[2], 0), // cancelled
        (ids[3], 5), // a job from another attempt
        (ids[0], 0), // a duplicate delivery
        (ids[4], 0),
    ];
    let claimed = TaskStore::claim_many(db, &jobs, &worker, LEASE, &json!({})).await?;
    let claimed_ids: Vec<TaskId> = claimed.iter().map(|c| c.task.id).collect();
    assert_eq!(
        claimed_ids,
        vec![ids[0], ids[1], ids[4]],
        "in the jobs' order"
    );
    for c in &claimed {
        assert_eq!(c.task.state, TaskState::Running);
        assert_eq!(c.task.attempt, 1);
        let events = kinds(db, c.task.id).await?;
        let started = events.iter().filter(|(_, k)| k == "task.started").count();
        ensure!(
            started == 1,
            "one task.started for {}: {events:?}",
            c.task.id
        );
    }
    assert_eq!(
        TaskStore::get(db, ids[2]).await?.state,
        TaskState::Cancelled
    );
    assert_eq!(TaskStore::get(db, ids[3]).await?.state, TaskState::Pending);

    // Claiming the same jobs again claims nothing: they are all taken or gone.
    let again = TaskStore::claim_many(db, &jobs, &worker, LEASE, &json!({})).await?;
    ensure!(again.is_empty(), "claimed twice: {again:?}");
    let drift = turnq_core::projection::verify(db).await?.drift;
    ensure!(drift.is_empty(), "the projection drifted: {drift:?}");
    Ok(())
}

#[tokio::test]
async fn a_grouped_claim_of_two_turns_of_one_session_starts_only_one() -> Result<()> {
    let test_db = TestDb::new().await?;
    let db = &test_db.db;
    let ids = queued(db, &[Some("s1"), Some("s1"), None]).await?;
    // The dispatcher holds the second turn back; a stale or forged job must not slip it
    // in next to the first.
    let jobs = [(ids[0], 0), (ids[1], 0), (ids[2], 0)];
    let claimed =
        TaskStore::claim_many(db, &jobs, &WorkerId("w".into()), LEASE, &json!({})).await?;
    let claimed_ids: Vec<TaskId> = claimed.iter().map(|c| c.task.id).collect();
    assert_eq!(claimed_ids, vec![ids[0], ids[2]]);
    assert_eq!(TaskStore::get(db, ids[1]).await?.state, TaskState::Pending);
    Ok(())
}

#[tokio::test]
async fn a_group_commit_applies_each_record_under_its_own_guard_in_order() -> Result<()> {
    let test_db = TestDb::new().await?;
    let db = &test_db.db;
    let ids = queued(db, &[None, None, None, None]).await?;
    let (a, b) = (WorkerId("a".into()), WorkerId("b".into()));
    let meta = json!({});
    let jobs: Vec<(TaskId, i32)> = ids[..3].iter().map(|id| (*id, 0)).collect();
    TaskStore::claim_many(db, &jobs, &a, LEASE, &meta).await?;
    TaskStore::claim(db, ids[3], 0, &b, LEASE, &meta)
        .await?
        .context("b claims the last task")?;
    let events_before = turnq_tests::count(db, "events").await?;

    let record = |task: TaskId, attempt: i32, event: TaskEvent| Record {
        task,
        attempt,
        event,
    };
    let records = vec![
        record(ids[0], 1, output(1, "one")),
        record(ids[1], 1, completed(1)),
        record(ids[0], 1, output(1, "two")),
        record(ids[0], 1, completed(1)),
        record(ids[2], 2, completed(2)), // not the attempt a holds
        record(ids[3], 1, completed(1)), // b's task
        record(ids[2], 1, TaskEvent::Retried(Retried { max_attempts: 5 })), // not a worker's event
        record(ids[2], 1, output(1, "three")),
    ];
    let results = TaskStore::record_many(db, &a, &records, &meta).await?;
    assert_eq!(results.len(), records.len(), "one answer per record");
    for i in [0, 1, 2, 3, 7] {
        ensure!(results[i].is_ok(), "record {i} refused: {:?}", results[i]);
    }
    for i in [4, 5] {
        ensure!(
            matches!(results[i], Err(Error::Fenced { .. })),
            "record {i} was not fenced: {:?}",
            results[i]
        );
    }
    ensure!(
        matches!(results[6], Err(Error::IllegalTransition { .. })),
        "record 6: {:?}",
        results[6]
    );

    // Task 0: its three records in order, versions without gaps.
    let kinds0: Vec<(i64, String)> = kinds(db, ids[0]).await?;
    let tail: Vec<&str> = kinds0[3..].iter().map(|(_, k)| k.as_str()).collect();
    assert_eq!(tail, ["task.output", "task.output", "task.completed"]);
    let versions: Vec<i64> = kinds0.iter().map(|(v, _)| *v).collect();
    assert_eq!(versions, (1..=versions.len() as i64).collect::<Vec<_>>());
    let t0 = TaskStore::get(db, ids[0]).await?;
    assert_eq!((t0.state, t0.version.0), (TaskState::Completed, 6));
    assert_eq!(
        TaskStore::get(db, ids[1]).await?.state,
        TaskState::Completed
    );
    assert_eq!(TaskStore::get(db, ids[2]).await?.state, TaskState::Running);
    let t3 = TaskStore::get(db, ids[3]).await?;
    assert_eq!(t3.state, TaskState::Running, "b's task is untouched");
    assert_eq!(t3.worker_id.as_deref(), Some("b"));
    assert_eq!(
        turnq_tests::count(db, "events").await? - events_before,
        5,
        "exactly the accepted records are in the log"
    );
    let drift = turnq_core::projection::verify(db).await?.drift;
    ensure!(drift.is_empty(), "the projection drifted: {drift:?}");
    Ok(())
}

//! The event log refuses to change, and appends are optimistic.

use anyhow::Result;
use sea_orm::ConnectionTrait;
use serde_json::json;
use turnq_core::{
    Error, StreamVersion,
    event::{EventStore, NewEvent, StreamRef},
};

use turnq_tests::{TestDb, count};

fn event(kind: &str) -> NewEvent {
    NewEvent {
        kind: kind.into(),
        data: json!({"n": 1}),
        metadata: json!({"actor": "test"}),
    }
}

#[tokio::test]
async fn the_database_refuses_update_delete_and_truncate_of_events() -> Result<()> {
    let t = TestDb::new().await?;
    let stream = StreamRef::new("test", "s1");
    EventStore::append(
        &t.db,
        &stream,
        StreamVersion::NEW,
        vec![event("test.happened")],
    )
    .await?;
    for sql in [
        "UPDATE events SET kind = 'test.rewritten'",
        "DELETE FROM events",
        "TRUNCATE events",
    ] {
        let err =
            t.db.execute_unprepared(sql)
                .await
                .expect_err(sql)
                .to_string();
        assert!(err.contains("append-only"), "{sql}: {err}");
    }
    let (_, stored) = (
        (),
        EventStore::read_stream(&t.db, &stream, StreamVersion::NEW, 10).await?,
    );
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].kind, "test.happened");
    Ok(())
}

#[tokio::test]
async fn an_append_with_a_stale_expected_version_fails_and_writes_nothing() -> Result<()> {
    let t = TestDb::new().await?;
    let stream = StreamRef::new("test", "s2");
    let first = EventStore::append(
        &t.db,
        &stream,
        StreamVersion::NEW,
        vec![event("test.one"), event("test.two")],
    )
    .await?;
    assert_eq!(
        first.iter().map(|e| e.version.0).collect::<Vec<_>>(),
        [1, 2]
    );
    let before = count(&t.db, "events").await?;
    for stale in [StreamVersion(0), StreamVersion(1), StreamVersion(5)] {
        let err = EventStore::append(&t.db, &stream, stale, vec![event("test.late")])
            .await
            .expect_err("a stale append must fail");
        match err {
            Error::VersionConflict {
                expected, actual, ..
            } => {
                assert_eq!((expected, actual), (stale, StreamVersion(2)));
            }
            other => panic!("expected a version conflict, got {other:?}"),
        }
    }
    assert_eq!(count(&t.db, "events").await?, before);
    // The right version still appends.
    EventStore::append(&t.db, &stream, StreamVersion(2), vec![event("test.three")]).await?;
    assert_eq!(
        EventStore::stream_version(&t.db, &stream).await?,
        StreamVersion(3)
    );
    Ok(())
}

#[tokio::test]
async fn concurrent_appends_at_one_version_let_exactly_one_win() -> Result<()> {
    let t = TestDb::new().await?;
    let stream = StreamRef::new("test", "race");
    let attempts = (0..8).map(|_| {
        let db = t.db.clone();
        let stream = stream.clone();
        tokio::spawn(async move {
            EventStore::append(&db, &stream, StreamVersion::NEW, vec![event("test.race")]).await
        })
    });
    let mut wins = 0;
    for attempt in attempts {
        match attempt.await? {
            Ok(_) => wins += 1,
            Err(Error::VersionConflict { .. }) => {}
            Err(other) => panic!("unexpected error {other:?}"),
        }
    }
    assert_eq!(wins, 1);
    assert_eq!(count(&t.db, "events").await?, 1);
    Ok(())
}

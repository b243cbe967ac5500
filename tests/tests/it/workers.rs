//! `GET /v1/workers`: each worker's state from its heartbeat, and long-gone workers left
//! out of the default listing.

use anyhow::Result;
use sea_orm::ConnectionTrait;
use turnq_core::{
    WorkerId,
    worker::{WorkerInfo, WorkerRegistry},
};
use turnq_tests::TestApp;

async fn register(app: &TestApp, id: &str) -> Result<()> {
    WorkerRegistry::register(
        &app.db,
        &WorkerInfo {
            id: WorkerId(id.into()),
            host: "h".into(),
            pid: 1,
            queues: vec!["default".into()],
            concurrency: 1,
            version: "test".into(),
            agents: Vec::new(),
        },
    )
    .await?;
    Ok(())
}

/// Moves a worker's last heartbeat `ago` into the past, as if it had gone silent then.
async fn silent_for(app: &TestApp, id: &str, ago: &str) -> Result<()> {
    app.db
        .execute_unprepared(&format!(
            "UPDATE workers SET last_heartbeat_at = now() - interval '{ago}' WHERE id = '{id}'"
        ))
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_worker_is_stale_a_stopped_one_says_so_and_long_gone_ones_drop_out() -> Result<()>
{
    let app = TestApp::spawn_without_workers().await?;
    for id in ["w-live", "w-killed", "w-stopped", "w-gone"] {
        register(&app, id).await?;
    }
    silent_for(&app, "w-killed", "2 minutes").await?;
    WorkerRegistry::stopped(&app.db, &WorkerId("w-stopped".into())).await?;
    silent_for(&app, "w-gone", "2 hours").await?;

    let (status, body) = app.get("/v1/workers").await?;
    assert_eq!(status, 200, "{body}");
    let states: Vec<(String, String)> = body["workers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|w| {
            (
                w["id"].as_str().unwrap_or_default().to_owned(),
                w["state"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    for (id, state) in [
        ("w-live", "live"),
        ("w-killed", "stale"),
        ("w-stopped", "stopped"),
    ] {
        assert!(
            states.contains(&(id.to_owned(), state.to_owned())),
            "{id} should be {state}: {states:?}"
        );
    }
    assert!(
        !states.iter().any(|(id, _)| id == "w-gone"),
        "a worker silent for an hour is left out by default: {states:?}"
    );
    let (_, all) = app.get("/v1/workers?all=true").await?;
    assert!(
        all.to_string().contains("w-gone"),
        "all=true lists it: {all}"
    );
    let (status, bad) = app.get("/v1/workers?all=maybe").await?;
    assert_eq!(status, 400, "{bad}");
    app.stop().await
}

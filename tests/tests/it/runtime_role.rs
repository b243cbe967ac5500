//! The runtime role of docs/runtime-role.sql: the whole fleet runs as it, and it cannot
//! change, delete or unguard the event log.

use anyhow::{Context, Result, ensure};
use sea_orm::{ConnectionTrait, Database};
use serde_json::json;
use turnq_testkit::TestDb;
use turnq_tests::TestApp;

#[tokio::test(flavor = "multi_thread")]
async fn the_fleet_runs_as_the_runtime_role_which_cannot_touch_the_event_log() -> Result<()> {
    let test_db = TestDb::new().await?;
    let role = format!(
        "turnq_rt_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    // postgres://USER@HOST:PORT/DATABASE
    let (_, server_and_db) = test_db.url.split_once('@').context("a URL with a user")?;
    let (server, _) = server_and_db
        .rsplit_once('/')
        .context("a URL with a database")?;
    let url = format!("postgres://{role}@{server_and_db}");
    let admin_url = format!("postgres://postgres@{server}/postgres");
    test_db.admin(&format!("CREATE ROLE {role} LOGIN")).await?;
    let grants = include_str!("../../../docs/runtime-role.sql").replace("turnq_app", &role);
    test_db.db.execute_unprepared(&grants).await?;

    let outcome = async {
        let app = TestApp::spawn_in_as(test_db, &url).await?;
        let task = app.submit(json!({"input": "as the runtime role"})).await?;
        let id = task["id"].as_str().context("id")?;
        app.wait_for_state(id, "completed").await?;

        let as_role = Database::connect(&url).await?;
        for (sql, why) in [
            ("ALTER TABLE events DISABLE TRIGGER USER", "must be owner"),
            ("UPDATE events SET kind = kind", "permission denied"),
            ("DELETE FROM events", "permission denied"),
            ("TRUNCATE events", "permission denied"),
            ("DELETE FROM seaql_migrations", "permission denied"),
        ] {
            let refused = as_role
                .execute_unprepared(sql)
                .await
                .err()
                .with_context(|| format!("{sql} was allowed"))?;
            ensure!(refused.to_string().contains(why), "{sql}: {refused}");
        }
        as_role.close().await?;
        app.stop().await
    }
    .await;
    // Roles outlive databases: drop it whatever happened (its grants went with the
    // test's database).
    let admin = Database::connect(&admin_url).await?;
    admin
        .execute_unprepared(&format!("DROP ROLE IF EXISTS {role}"))
        .await?;
    admin.close().await?;
    outcome
}

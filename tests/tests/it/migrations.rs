//! The migrations apply to an empty database, roll back completely, and apply again.
//!
//! Runs against a throwaway database of its own, so it neither needs nor disturbs any other
//! test's schema, and proves every `down` really undoes its `up` (a second `up` would fail on
//! anything left behind that is not guarded by IF NOT EXISTS, and the absence check catches
//! what is).

use anyhow::{Context, Result, ensure};
use migration::MigratorTrait;
use sea_orm::{ConnectionTrait, Database, DatabaseConnection, Statement};

const SERVER_URL: &str = "postgres://postgres@127.0.0.1:5432";

/// Every relation the migrations create in `public`, with the type information_schema reports.
const RELATIONS: [(&str, &str); 13] = [
    ("events", "BASE TABLE"),
    ("tasks", "BASE TABLE"),
    ("workers", "BASE TABLE"),
    ("agents", "BASE TABLE"),
    ("agent_sessions", "BASE TABLE"),
    ("session_entries", "BASE TABLE"),
    ("worktrees", "BASE TABLE"),
    ("checkpoints", "BASE TABLE"),
    ("pending_changes", "BASE TABLE"),
    ("api_tokens", "BASE TABLE"),
    ("session_summaries", "BASE TABLE"),
    ("arenas", "BASE TABLE"),
    ("human_inbox", "VIEW"),
];

/// The schema's relations present in `public`, as (name, information_schema table_type).
async fn schema_relations(db: &DatabaseConnection) -> Result<Vec<(String, String)>> {
    let names = RELATIONS
        .iter()
        .map(|(name, _)| format!("'{name}'"))
        .collect::<Vec<_>>()
        .join(", ");
    let rows = db
        .query_all_raw(Statement::from_string(
            db.get_database_backend(),
            format!(
                "SELECT table_name::text AS name, table_type::text AS kind \
                 FROM information_schema.tables \
                 WHERE table_schema = 'public' AND table_name IN ({names}) \
                 ORDER BY table_name"
            ),
        ))
        .await?;
    rows.iter()
        .map(|row| Ok((row.try_get("", "name")?, row.try_get("", "kind")?)))
        .collect()
}

/// Columns added to an existing table by a later migration, as (table, column).
const ADDED_COLUMNS: [(&str, &str); 1] = [("workers", "agents")];

async fn assert_all_present(db: &DatabaseConnection) -> Result<()> {
    for (table, column) in ADDED_COLUMNS {
        let found = db
            .query_one_raw(Statement::from_sql_and_values(
                db.get_database_backend(),
                "SELECT 1 AS n FROM information_schema.columns \
                 WHERE table_schema = 'public' AND table_name = $1 AND column_name = $2",
                [table.into(), column.into()],
            ))
            .await?;
        ensure!(found.is_some(), "{table}.{column} missing after up");
    }
    let found = schema_relations(db).await?;
    for (name, kind) in RELATIONS {
        ensure!(
            found.iter().any(|(n, k)| n == name && k == kind),
            "{name} ({kind}) missing after up; found {found:?}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn migrations_run_up_down_up() -> Result<()> {
    let server = Database::connect(format!("{SERVER_URL}/postgres"))
        .await
        .context("connecting to the local Postgres server")?;
    let name = format!("turnq_migtest_{}", uuid::Uuid::new_v4().simple());
    server
        .execute_unprepared(&format!("CREATE DATABASE {name}"))
        .await?;

    // Run the checks in their own block so the database is dropped whatever they return.
    let outcome = async {
        let db = Database::connect(format!("{SERVER_URL}/{name}")).await?;
        let checks = async {
            migration::Migrator::up(&db, None)
                .await
                .context("first up")?;
            assert_all_present(&db).await?;

            migration::Migrator::down(&db, None).await.context("down")?;
            let left = schema_relations(&db).await?;
            ensure!(left.is_empty(), "left behind after down: {left:?}");

            migration::Migrator::up(&db, None)
                .await
                .context("second up")?;
            assert_all_present(&db).await
        }
        .await;
        db.close().await?;
        checks
    }
    .await;

    let dropped = server
        .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .await;
    server.close().await?;
    outcome?;
    dropped?;
    Ok(())
}

/// Whether `tasks_arena_id_fkey` exists and is validated.
async fn arena_key_validated(db: &DatabaseConnection) -> Result<Option<bool>> {
    let row = db
        .query_one_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT convalidated FROM pg_constraint \
             WHERE conname = 'tasks_arena_id_fkey' AND conrelid = 'tasks'::regclass",
        ))
        .await?;
    Ok(row
        .map(|r| r.try_get::<bool>("", "convalidated"))
        .transpose()?)
}

/// A task row as the old schema allowed it: `arena_id` naming no arena.
const TASK_WITH_ARENA: &str = "INSERT INTO tasks (id, project, arena_id, queue, state, input, agent, \
    run_at, max_attempts, version, created_at, updated_at) \
    VALUES (gen_random_uuid(), 'p', gen_random_uuid(), 'default', 'pending', '\"x\"', 'script', \
    now(), 3, 1, now(), now())";

#[tokio::test]
async fn the_arena_key_of_tasks_is_checked_for_new_rows_and_validated_when_old_ones_allow()
-> Result<()> {
    let server = Database::connect(format!("{SERVER_URL}/postgres"))
        .await
        .context("connecting to the local Postgres server")?;
    let names = [
        format!("turnq_migtest_{}", uuid::Uuid::new_v4().simple()),
        format!("turnq_migtest_{}", uuid::Uuid::new_v4().simple()),
    ];
    for name in &names {
        server
            .execute_unprepared(&format!("CREATE DATABASE {name}"))
            .await?;
    }
    let outcome = async {
        // A database whose tasks hold an arena id from before arenas existed.
        let old = Database::connect(format!("{SERVER_URL}/{}", names[0])).await?;
        let clean = Database::connect(format!("{SERVER_URL}/{}", names[1])).await?;
        let checks = async {
            // Every migration before the arenas one.
            let before = migration::Migrator::migrations()
                .iter()
                .position(|m| m.name().ends_with("create_arenas"))
                .context("the arenas migration")? as u32;
            migration::Migrator::up(&old, Some(before)).await?;
            old.execute_unprepared(TASK_WITH_ARENA).await?;
            migration::Migrator::up(&old, None)
                .await
                .context("the arenas migration runs over a task naming no arena")?;
            ensure!(
                arena_key_validated(&old).await? == Some(false),
                "the key is added NOT VALID when a row breaks it"
            );
            ensure!(
                old.execute_unprepared(TASK_WITH_ARENA).await.is_err(),
                "a new task naming no arena is refused"
            );
            migration::Migrator::up(&clean, None).await?;
            ensure!(
                arena_key_validated(&clean).await? == Some(true),
                "the key is validated when no row breaks it"
            );
            Ok(())
        }
        .await;
        old.close().await?;
        clean.close().await?;
        checks
    }
    .await;
    for name in &names {
        server
            .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .await?;
    }
    server.close().await?;
    outcome
}

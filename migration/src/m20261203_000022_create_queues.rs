//! Queues as first-class objects: `queues` (name, paused, created), one row per queue
//! name any task has used, so an operator can list them and pause one.
//!
//! A statement-level trigger on `tasks` adds the queues of each INSERT (from its
//! transition table, `ON CONFLICT DO NOTHING`), so a queue exists from its first task
//! whoever inserts it, and the submit path pays one index probe per distinct queue of a
//! statement, not per row. The queues of tasks already there are added once, here.
//!
//! `version` is the version of the queue's event stream (`queue.paused`,
//! `queue.resumed`): pausing is recorded in the log like every other fact.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                r#"
CREATE TABLE IF NOT EXISTS queues (
  name text PRIMARY KEY CHECK (name ~ '^[A-Za-z0-9_.-]{1,64}$'),
  paused boolean NOT NULL DEFAULT false,
  version bigint NOT NULL DEFAULT 0 CHECK (version >= 0),
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now()
);

INSERT INTO queues (name) SELECT DISTINCT queue FROM tasks ON CONFLICT DO NOTHING;

CREATE OR REPLACE FUNCTION turnq_tasks_add_queues() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO queues (name) SELECT DISTINCT queue FROM new_tasks ON CONFLICT DO NOTHING;
  RETURN NULL;
END $$;

DROP TRIGGER IF EXISTS tasks_add_queues ON tasks;
CREATE TRIGGER tasks_add_queues AFTER INSERT ON tasks
  REFERENCING NEW TABLE AS new_tasks
  FOR EACH STATEMENT EXECUTE FUNCTION turnq_tasks_add_queues();
"#,
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                r#"
DROP TRIGGER IF EXISTS tasks_add_queues ON tasks;
DROP FUNCTION IF EXISTS turnq_tasks_add_queues();
DROP TABLE IF EXISTS queues;
"#,
            )
            .await?;
        Ok(())
    }
}

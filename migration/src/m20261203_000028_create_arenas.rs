//! Creates `arenas`: one task given to several agents at once (one contestant task per
//! agent), and the winner a person picked among those that completed.
//!
//! An arena's facts are events of its own stream (`arena`, the arena's id):
//! `arena.created` with the row and its contestant tasks, `arena.winner_picked` with the
//! decision; `events_kind_known` (migrations 26, 27) lets streams of types other than
//! `task` and `queue` through with any well-formed kind.
//!
//! - `arenas_project_created_idx` and `arenas_created_idx`: the newest arenas, of one
//!   project or of all.
//! - `tasks.arena_id` has been there since the first schema with nothing behind it, so
//!   a task may hold an arena id that names nothing. The foreign key to `arenas` is
//!   added `NOT VALID` (new and changed rows are checked, the old ones are not), and
//!   validated at once when no row breaks it.
//! - `tasks_arena_idx`: an arena's contestants; `pending_changes_task_idx`: the changes
//!   each contestant proposed. Partial, so tasks outside arenas and changes without a
//!   task cost nothing.
//! - `arenas_decided_chk`: a winner comes with who picked it and when.

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
CREATE TABLE IF NOT EXISTS arenas (
  id uuid PRIMARY KEY,
  project text NOT NULL,
  queue text NOT NULL CHECK (queue ~ '^[A-Za-z0-9_.-]{1,64}$'),
  input jsonb NOT NULL,
  contestants jsonb NOT NULL CHECK (jsonb_typeof(contestants) = 'array'),
  winner_task_id uuid REFERENCES tasks (id),
  decided_by text,
  decided_at timestamptz,
  created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
  CONSTRAINT arenas_decided_chk CHECK (
    (winner_task_id IS NULL AND decided_by IS NULL AND decided_at IS NULL)
    OR (winner_task_id IS NOT NULL AND decided_by IS NOT NULL AND decided_at IS NOT NULL))
);
CREATE INDEX IF NOT EXISTS arenas_project_created_idx ON arenas (project, created_at);
CREATE INDEX IF NOT EXISTS arenas_created_idx ON arenas (created_at);
CREATE INDEX IF NOT EXISTS tasks_arena_idx ON tasks (arena_id) WHERE arena_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS pending_changes_task_idx ON pending_changes (task_id)
  WHERE task_id IS NOT NULL;

DO $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_constraint
                 WHERE conname = 'tasks_arena_id_fkey' AND conrelid = 'tasks'::regclass) THEN
    ALTER TABLE tasks ADD CONSTRAINT tasks_arena_id_fkey
      FOREIGN KEY (arena_id) REFERENCES arenas (id) NOT VALID;
  END IF;
  IF NOT EXISTS (SELECT 1 FROM tasks t
                 WHERE t.arena_id IS NOT NULL
                   AND NOT EXISTS (SELECT 1 FROM arenas a WHERE a.id = t.arena_id)) THEN
    ALTER TABLE tasks VALIDATE CONSTRAINT tasks_arena_id_fkey;
  END IF;
END $$;
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
ALTER TABLE tasks DROP CONSTRAINT IF EXISTS tasks_arena_id_fkey;
DROP INDEX IF EXISTS pending_changes_task_idx;
DROP INDEX IF EXISTS tasks_arena_idx;
DROP TABLE IF EXISTS arenas;
"#,
            )
            .await?;
        Ok(())
    }
}

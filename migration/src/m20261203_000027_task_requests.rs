//! Requests from a running turn (docs/people-in-the-loop.md): a blocked task keeps what
//! it asks (`request`), the answer its next turn resumes with (`response`), and when the
//! request ends unanswered (`request_deadline`, copied out of `request` so the sweep
//! finds due ones by index). `task.responded` joins the kinds a task stream may hold.

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
ALTER TABLE tasks
  ADD COLUMN request jsonb,
  ADD COLUMN response jsonb,
  ADD COLUMN request_deadline timestamptz,
  ADD CONSTRAINT tasks_request_deadline_chk
    CHECK (state = 'blocked' OR request_deadline IS NULL);
CREATE INDEX tasks_request_deadline_idx ON tasks (request_deadline)
  WHERE state = 'blocked' AND request_deadline IS NOT NULL;
CREATE INDEX tasks_waiting_children_idx ON tasks (id)
  WHERE state = 'blocked' AND request->>'kind' = 'children';
ALTER TABLE events DROP CONSTRAINT events_kind_known;
ALTER TABLE events ADD CONSTRAINT events_kind_known
  CHECK (CASE stream_type
           WHEN 'task' THEN kind IN ('task.submitted', 'task.queued', 'task.started',
             'task.output', 'task.completed', 'task.retrying', 'task.failed', 'task.blocked',
             'task.lease_lost', 'task.released', 'task.cancelled', 'task.approved',
             'task.retried', 'task.responded')
           WHEN 'queue' THEN kind IN ('queue.paused', 'queue.resumed')
           ELSE true
         END) NOT VALID;
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
ALTER TABLE events DROP CONSTRAINT events_kind_known;
ALTER TABLE events ADD CONSTRAINT events_kind_known
  CHECK (CASE stream_type
           WHEN 'task' THEN kind IN ('task.submitted', 'task.queued', 'task.started',
             'task.output', 'task.completed', 'task.retrying', 'task.failed', 'task.blocked',
             'task.lease_lost', 'task.released', 'task.cancelled', 'task.approved',
             'task.retried')
           WHEN 'queue' THEN kind IN ('queue.paused', 'queue.resumed')
           ELSE true
         END) NOT VALID;
DROP INDEX IF EXISTS tasks_waiting_children_idx;
DROP INDEX IF EXISTS tasks_request_deadline_idx;
ALTER TABLE tasks DROP CONSTRAINT IF EXISTS tasks_request_deadline_chk,
  DROP COLUMN IF EXISTS request, DROP COLUMN IF EXISTS response,
  DROP COLUMN IF EXISTS request_deadline;
"#,
            )
            .await?;
        Ok(())
    }
}

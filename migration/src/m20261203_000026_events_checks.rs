//! What may go into turnq's own streams of the event log, checked by Postgres on every
//! insert: a task stream's id is a UUID, and the kind of a task or queue event is one
//! this version of turnq writes. A stray `INSERT` (a person at psql, a script) is
//! refused instead of leaving an event no reader can fold. Streams of other types (the
//! event store is general; tests and extensions use their own) keep only the kind's
//! format check of migration 1.
//!
//! `NOT VALID`: rows already in the log are not checked (a log that already holds a bad
//! event must still migrate); `turnq replay --verify` reports those. A version of turnq
//! that adds a kind widens `events_kind_known` in its own migration.

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
ALTER TABLE events ADD CONSTRAINT events_task_stream_id_is_uuid
  CHECK (stream_type <> 'task'
         OR stream_id ~ '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$') NOT VALID;
ALTER TABLE events ADD CONSTRAINT events_kind_known
  CHECK (CASE stream_type
           WHEN 'task' THEN kind IN ('task.submitted', 'task.queued', 'task.started',
             'task.output', 'task.completed', 'task.retrying', 'task.failed', 'task.blocked',
             'task.lease_lost', 'task.released', 'task.cancelled', 'task.approved',
             'task.retried')
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
ALTER TABLE events DROP CONSTRAINT IF EXISTS events_kind_known;
ALTER TABLE events DROP CONSTRAINT IF EXISTS events_task_stream_id_is_uuid;
"#,
            )
            .await?;
        Ok(())
    }
}

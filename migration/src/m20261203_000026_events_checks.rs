//! What may go into the event log, checked by Postgres on every insert: a stream type
//! turnq knows, a task stream's id that is a UUID, and a kind this version of turnq
//! writes for that stream type. A stray `INSERT` (a person at psql, a script) is refused
//! instead of leaving an event no reader can fold.
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
ALTER TABLE events ADD CONSTRAINT events_stream_type_known
  CHECK (stream_type IN ('task', 'queue')) NOT VALID;
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
           ELSE false
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
ALTER TABLE events DROP CONSTRAINT IF EXISTS events_stream_type_known;
"#,
            )
            .await?;
        Ok(())
    }
}

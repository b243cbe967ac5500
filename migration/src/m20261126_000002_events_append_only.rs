//! Makes `events` append-only in the database itself: UPDATE, DELETE and TRUNCATE raise.
//!
//! The log is the source of truth, so rewriting it must be impossible even for code (or a
//! person at psql) that bypasses the application; a trigger is the one guard every client
//! goes through. TRUNCATE needs its own statement-level trigger because row triggers do not
//! fire for it.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // Triggers have no IF NOT EXISTS before Postgres 14, so drop-then-create keeps a
        // re-run safe; the migration runs in one transaction, so there is no unguarded gap.
        manager
            .get_connection()
            .execute_unprepared(
                r#"
CREATE OR REPLACE FUNCTION turnq_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'the event log is append-only: % on events is not allowed', TG_OP
    USING ERRCODE = 'restrict_violation';
END $$;

DROP TRIGGER IF EXISTS events_no_update_delete ON events;
CREATE TRIGGER events_no_update_delete BEFORE UPDATE OR DELETE ON events
  FOR EACH ROW EXECUTE FUNCTION turnq_events_append_only();

DROP TRIGGER IF EXISTS events_no_truncate ON events;
CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON events
  FOR EACH STATEMENT EXECUTE FUNCTION turnq_events_append_only();
"#,
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // Triggers first: the function cannot be dropped while they still use it.
        manager
            .get_connection()
            .execute_unprepared(
                r#"
DROP TRIGGER IF EXISTS events_no_truncate ON events;
DROP TRIGGER IF EXISTS events_no_update_delete ON events;
DROP FUNCTION IF EXISTS turnq_events_append_only();
"#,
            )
            .await?;
        Ok(())
    }
}

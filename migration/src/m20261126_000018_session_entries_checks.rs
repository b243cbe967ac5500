//! CHECK constraints on `session_entries` that mirror the session store's validation, so
//! a row the store would refuse cannot exist even when written by hand: every entry is a
//! JSON object, the project key and session id are 1 to 256 characters, and the subpath
//! (`''` = the main transcript) at most 512.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // No ADD CONSTRAINT IF NOT EXISTS in Postgres: drop-then-add keeps a re-run safe,
        // and the migration's transaction closes the gap.
        manager
            .get_connection()
            .execute_unprepared(
                r#"
ALTER TABLE session_entries
  DROP CONSTRAINT IF EXISTS session_entries_entry_is_object,
  DROP CONSTRAINT IF EXISTS session_entries_key_lengths;
ALTER TABLE session_entries
  ADD CONSTRAINT session_entries_entry_is_object CHECK (jsonb_typeof(entry) = 'object'),
  ADD CONSTRAINT session_entries_key_lengths CHECK (
    char_length(project_key) BETWEEN 1 AND 256
    AND char_length(session_id) BETWEEN 1 AND 256
    AND char_length(subpath) <= 512
  );
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
ALTER TABLE session_entries
  DROP CONSTRAINT IF EXISTS session_entries_entry_is_object,
  DROP CONSTRAINT IF EXISTS session_entries_key_lengths;
"#,
            )
            .await?;
        Ok(())
    }
}

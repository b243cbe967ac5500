//! Creates `session_entries`, a generic append-only transcript store (one JSON entry per
//! row), and a trigger that rejects UPDATE so a transcript cannot be rewritten after the
//! fact. DELETE stays allowed: the store's `delete()` removes whole transcripts.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum SessionEntries {
    Table,
    Id,
    ProjectKey,
    SessionId,
    Subpath,
    Entry,
    CreatedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(SessionEntries::Table)
                    .if_not_exists()
                    // bigserial rather than the builder's auto_increment (an identity column
                    // on Postgres), to match the spec exactly.
                    .col(
                        ColumnDef::new(SessionEntries::Id)
                            .custom("bigserial")
                            .not_null()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(SessionEntries::ProjectKey).text().not_null())
                    .col(ColumnDef::new(SessionEntries::SessionId).text().not_null())
                    // '' rather than NULL for the main transcript, so the key index and
                    // equality lookups need no NULL handling.
                    .col(
                        ColumnDef::new(SessionEntries::Subpath)
                            .text()
                            .not_null()
                            .default(""),
                    )
                    .col(
                        ColumnDef::new(SessionEntries::Entry)
                            .json_binary()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(SessionEntries::CreatedAt)
                            .timestamp_with_time_zone()
                            .not_null()
                            .default(Expr::cust("clock_timestamp()")),
                    )
                    .to_owned(),
            )
            .await?;

        // Reading a transcript is "all entries of this key, in insertion order"; id last
        // makes that one ordered index range scan.
        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name("session_entries_key_idx")
                    .table(SessionEntries::Table)
                    .col(SessionEntries::ProjectKey)
                    .col(SessionEntries::SessionId)
                    .col(SessionEntries::Subpath)
                    .col(SessionEntries::Id)
                    .to_owned(),
            )
            .await?;

        // Drop-then-create keeps a re-run safe (no IF NOT EXISTS for triggers before
        // Postgres 14); the migration's transaction closes the gap.
        manager
            .get_connection()
            .execute_unprepared(
                r#"
CREATE OR REPLACE FUNCTION turnq_session_entries_no_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'session entries are append-only: UPDATE is not allowed' USING ERRCODE = 'restrict_violation';
END $$;

DROP TRIGGER IF EXISTS session_entries_no_update ON session_entries;
CREATE TRIGGER session_entries_no_update BEFORE UPDATE ON session_entries
  FOR EACH ROW EXECUTE FUNCTION turnq_session_entries_no_update();
"#,
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // Trigger before function (the function cannot go while used), table last.
        manager
            .get_connection()
            .execute_unprepared(
                r#"
DROP TRIGGER IF EXISTS session_entries_no_update ON session_entries;
DROP FUNCTION IF EXISTS turnq_session_entries_no_update();
"#,
            )
            .await?;
        manager
            .drop_table(
                Table::drop()
                    .table(SessionEntries::Table)
                    .if_exists()
                    .to_owned(),
            )
            .await
    }
}

//! A unique index on the `uuid` of session entries, per transcript, so that re-delivered
//! entries are skipped by the database itself (`INSERT … ON CONFLICT DO NOTHING`) and two
//! concurrent appends of the same entry cannot both land.
//!
//! Partial: only entries whose `uuid` is a JSON string take part. Entries without one
//! (titles, tags, mode markers in the Claude Agent SDK's transcripts) are always appended,
//! and a `uuid` of another JSON type is treated the same way, since its text form would
//! depend on how Postgres prints numbers and objects.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum SessionEntries {
    Table,
    ProjectKey,
    SessionId,
    Subpath,
}

const INDEX: &str = "session_entries_uuid_uidx";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // The session store's insert names these exact expressions as its ON CONFLICT
        // target; Postgres only infers this index if they match.
        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .unique()
                    .name(INDEX)
                    .table(SessionEntries::Table)
                    .col(SessionEntries::ProjectKey)
                    .col(SessionEntries::SessionId)
                    .col(SessionEntries::Subpath)
                    .col(Expr::cust("entry->>'uuid'"))
                    .and_where(Expr::cust("jsonb_typeof(entry->'uuid') = 'string'"))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(Index::drop().if_exists().name(INDEX).to_owned())
            .await
    }
}

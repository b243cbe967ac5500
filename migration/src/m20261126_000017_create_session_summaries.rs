//! Creates `session_summaries`: one row per session (main transcript only) with the time
//! of its last write and a JSON summary (first prompt, titles, last entry, counts). The
//! session store updates it in the same transaction as the append it summarises, so
//! listing a project's sessions reads one small row per session instead of every entry.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum SessionSummaries {
    Table,
    ProjectKey,
    SessionId,
    Mtime,
    Data,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(SessionSummaries::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(SessionSummaries::ProjectKey)
                            .text()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(SessionSummaries::SessionId)
                            .text()
                            .not_null(),
                    )
                    // Unix epoch milliseconds: the unit the SDK's `mtime` uses, so the
                    // API passes it through without conversion.
                    .col(
                        ColumnDef::new(SessionSummaries::Mtime)
                            .big_integer()
                            .not_null()
                            .check(Expr::cust("mtime >= 0")),
                    )
                    .col(
                        ColumnDef::new(SessionSummaries::Data)
                            .json_binary()
                            .not_null()
                            .default(Expr::cust("'{}'::jsonb"))
                            .check(Expr::cust("jsonb_typeof(data) = 'object'")),
                    )
                    .primary_key(
                        Index::create()
                            .col(SessionSummaries::ProjectKey)
                            .col(SessionSummaries::SessionId),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(
                Table::drop()
                    .table(SessionSummaries::Table)
                    .if_exists()
                    .to_owned(),
            )
            .await
    }
}

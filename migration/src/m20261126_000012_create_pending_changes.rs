//! Creates `pending_changes`: file edits an agent proposed that wait for review, so they can
//! be applied, rejected or reverted one by one instead of landing wholesale.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum PendingChanges {
    Table,
    Id,
    SessionId,
    TaskId,
    FilePath,
    Operation,
    Diff,
    Status,
    Agent,
    CreatedAt,
}

#[derive(DeriveIden)]
enum Tasks {
    Table,
    Id,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(PendingChanges::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(PendingChanges::Id)
                            .uuid()
                            .not_null()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(PendingChanges::SessionId).text().not_null())
                    .col(ColumnDef::new(PendingChanges::TaskId).uuid().null())
                    .col(ColumnDef::new(PendingChanges::FilePath).text().not_null())
                    .col(
                        ColumnDef::new(PendingChanges::Operation)
                            .text()
                            .not_null()
                            .check(Expr::cust("operation IN ('create','edit','delete')")),
                    )
                    .col(ColumnDef::new(PendingChanges::Diff).text().not_null())
                    .col(
                        ColumnDef::new(PendingChanges::Status)
                            .text()
                            .not_null()
                            .default("pending")
                            .check(Expr::cust(
                                "status IN ('pending','applied','rejected','reverted')",
                            )),
                    )
                    .col(ColumnDef::new(PendingChanges::Agent).text().null())
                    .col(
                        ColumnDef::new(PendingChanges::CreatedAt)
                            .timestamp_with_time_zone()
                            .not_null()
                            .default(Expr::cust("clock_timestamp()")),
                    )
                    // Named as Postgres would name an inline REFERENCES. SET NULL: a change
                    // under review outlives the task that proposed it.
                    .foreign_key(
                        ForeignKey::create()
                            .name("pending_changes_task_id_fkey")
                            .from(PendingChanges::Table, PendingChanges::TaskId)
                            .to(Tasks::Table, Tasks::Id)
                            .on_delete(ForeignKeyAction::SetNull),
                    )
                    .to_owned(),
            )
            .await?;

        // Review lists a session's changes in the order they were proposed.
        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name("pending_changes_session_idx")
                    .table(PendingChanges::Table)
                    .col(PendingChanges::SessionId)
                    .col(PendingChanges::CreatedAt)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(
                Table::drop()
                    .table(PendingChanges::Table)
                    .if_exists()
                    .to_owned(),
            )
            .await
    }
}

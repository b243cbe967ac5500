//! Creates `checkpoints`: commits taken of a chat's worktree at a message, so the user can
//! roll the code back to any point of the conversation.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Checkpoints {
    Table,
    Id,
    ChatId,
    SessionId,
    WorktreeId,
    MessageId,
    CommitSha,
    Label,
    CreatedAt,
}

#[derive(DeriveIden)]
enum Worktrees {
    Table,
    Id,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Checkpoints::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(Checkpoints::Id)
                            .uuid()
                            .not_null()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(Checkpoints::ChatId).text().not_null())
                    .col(ColumnDef::new(Checkpoints::SessionId).text().null())
                    .col(ColumnDef::new(Checkpoints::WorktreeId).uuid().null())
                    .col(ColumnDef::new(Checkpoints::MessageId).text().null())
                    .col(ColumnDef::new(Checkpoints::CommitSha).text().not_null())
                    .col(ColumnDef::new(Checkpoints::Label).text().null())
                    .col(
                        ColumnDef::new(Checkpoints::CreatedAt)
                            .timestamp_with_time_zone()
                            .not_null()
                            .default(Expr::cust("clock_timestamp()")),
                    )
                    // Named as Postgres would name an inline REFERENCES. SET NULL: the commit
                    // sha still identifies the checkpoint after its worktree row is gone.
                    .foreign_key(
                        ForeignKey::create()
                            .name("checkpoints_worktree_id_fkey")
                            .from(Checkpoints::Table, Checkpoints::WorktreeId)
                            .to(Worktrees::Table, Worktrees::Id)
                            .on_delete(ForeignKeyAction::SetNull),
                    )
                    .to_owned(),
            )
            .await?;

        // A chat's checkpoints are always listed in time order.
        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name("checkpoints_chat_created_idx")
                    .table(Checkpoints::Table)
                    .col(Checkpoints::ChatId)
                    .col(Checkpoints::CreatedAt)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(
                Table::drop()
                    .table(Checkpoints::Table)
                    .if_exists()
                    .to_owned(),
            )
            .await
    }
}

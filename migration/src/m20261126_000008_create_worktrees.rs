//! Creates `worktrees`, the git worktrees handed to agent sessions, so a path is never given
//! to two live sessions and archived ones stay on record.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Worktrees {
    Table,
    Id,
    SessionId,
    Project,
    Path,
    Branch,
    BaseCommit,
    Slug,
    Status,
    CreatedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Worktrees::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(Worktrees::Id)
                            .uuid()
                            .not_null()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(Worktrees::SessionId).text().null())
                    .col(ColumnDef::new(Worktrees::Project).text().null())
                    .col(ColumnDef::new(Worktrees::Path).text().not_null())
                    .col(ColumnDef::new(Worktrees::Branch).text().null())
                    .col(ColumnDef::new(Worktrees::BaseCommit).text().null())
                    .col(ColumnDef::new(Worktrees::Slug).text().null())
                    .col(
                        ColumnDef::new(Worktrees::Status)
                            .text()
                            .not_null()
                            .default("active")
                            .check(Expr::cust("status IN ('active','archived')")),
                    )
                    .col(
                        ColumnDef::new(Worktrees::CreatedAt)
                            .timestamp_with_time_zone()
                            .not_null()
                            .default(Expr::cust("clock_timestamp()")),
                    )
                    .to_owned(),
            )
            .await?;

        // One live worktree per path; archived rows may repeat a path that was reused.
        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name("worktrees_active_path_uidx")
                    .table(Worktrees::Table)
                    .unique()
                    .col(Worktrees::Path)
                    .and_where(Expr::col(Worktrees::Status).eq("active"))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(Worktrees::Table).if_exists().to_owned())
            .await
    }
}

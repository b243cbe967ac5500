//! An index of the tasks handed to Redis and not yet started. The dispatcher counts them
//! every round to keep what waits in Redis bounded, and re-pushes those queued too long;
//! both scans stay small with this partial index however large `tasks` grows.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Tasks {
    Table,
    QueuedAt,
}

const INDEX: &str = "tasks_queued_idx";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name(INDEX)
                    .table(Tasks::Table)
                    .col(Tasks::QueuedAt)
                    .and_where(Expr::cust("state = 'pending' AND queued_at IS NOT NULL"))
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

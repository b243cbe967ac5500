//! At most one running turn per agent session: two turns of one session at once would
//! interleave their writes to its transcript. The dispatcher already holds a session's
//! later turns back while one runs; this unique index makes a second running turn
//! impossible even when a stale or duplicate job slips past it (the claim then fails and
//! the task stays queued).

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Tasks {
    Table,
    Project,
    SessionId,
}

const INDEX: &str = "tasks_one_running_turn_per_session_uidx";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name(INDEX)
                    .table(Tasks::Table)
                    .col(Tasks::Project)
                    .col(Tasks::SessionId)
                    .unique()
                    .and_where(Expr::cust("state = 'running' AND session_id IS NOT NULL"))
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

//! Creates `agent_sessions`: per (session, agent), the backend's own session id, the
//! worktree it runs in and its running usage, so a conversation can resume on any worker.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum AgentSessions {
    Table,
    SessionId,
    Agent,
    Backend,
    BackendSessionId,
    WorktreeId,
    Status,
    ConfigHash,
    InputTokens,
    OutputTokens,
    CostUsd,
    LastActiveAt,
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
                    .table(AgentSessions::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(AgentSessions::SessionId).text().not_null())
                    .col(ColumnDef::new(AgentSessions::Agent).text().not_null())
                    .col(ColumnDef::new(AgentSessions::Backend).text().not_null())
                    .col(
                        ColumnDef::new(AgentSessions::BackendSessionId)
                            .text()
                            .null(),
                    )
                    .col(ColumnDef::new(AgentSessions::WorktreeId).uuid().null())
                    .col(
                        ColumnDef::new(AgentSessions::Status)
                            .text()
                            .not_null()
                            .default("idle")
                            .check(Expr::cust("status IN ('idle','active','crashed','closed')")),
                    )
                    // Lets a worker notice the agent's config changed and start a fresh
                    // backend session instead of resuming a stale one.
                    .col(ColumnDef::new(AgentSessions::ConfigHash).text().null())
                    .col(
                        ColumnDef::new(AgentSessions::InputTokens)
                            .big_integer()
                            .not_null()
                            .default(0)
                            .check(Expr::cust("input_tokens >= 0")),
                    )
                    .col(
                        ColumnDef::new(AgentSessions::OutputTokens)
                            .big_integer()
                            .not_null()
                            .default(0)
                            .check(Expr::cust("output_tokens >= 0")),
                    )
                    .col(
                        ColumnDef::new(AgentSessions::CostUsd)
                            .double()
                            .not_null()
                            .default(0)
                            .check(Expr::cust("cost_usd >= 0")),
                    )
                    .col(
                        ColumnDef::new(AgentSessions::LastActiveAt)
                            .timestamp_with_time_zone()
                            .null(),
                    )
                    .col(
                        ColumnDef::new(AgentSessions::CreatedAt)
                            .timestamp_with_time_zone()
                            .not_null()
                            .default(Expr::cust("clock_timestamp()")),
                    )
                    // One backend session per agent within a turnq session: several agents
                    // can take part in one conversation, each with its own backend state.
                    .primary_key(
                        Index::create()
                            .col(AgentSessions::SessionId)
                            .col(AgentSessions::Agent),
                    )
                    // Named as Postgres would name an inline REFERENCES. SET NULL: removing a
                    // worktree must not erase the session's usage history.
                    .foreign_key(
                        ForeignKey::create()
                            .name("agent_sessions_worktree_id_fkey")
                            .from(AgentSessions::Table, AgentSessions::WorktreeId)
                            .to(Worktrees::Table, Worktrees::Id)
                            .on_delete(ForeignKeyAction::SetNull),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(
                Table::drop()
                    .table(AgentSessions::Table)
                    .if_exists()
                    .to_owned(),
            )
            .await
    }
}

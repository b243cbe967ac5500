//! Creates `workers`, one row per worker process start, so operators (and lease sweeps) can
//! see which processes are alive from their heartbeats.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Workers {
    Table,
    Id,
    Host,
    Pid,
    Queues,
    Concurrency,
    Version,
    StartedAt,
    LastHeartbeatAt,
    StoppedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Workers::Table)
                    .if_not_exists()
                    // Unique per process start, not per host: a restarted worker is a new
                    // row, so a dead process's leases are never mistaken for the new one's.
                    .col(ColumnDef::new(Workers::Id).text().not_null().primary_key())
                    .col(ColumnDef::new(Workers::Host).text().not_null())
                    .col(ColumnDef::new(Workers::Pid).integer().not_null())
                    // JSON array of queue names.
                    .col(ColumnDef::new(Workers::Queues).json_binary().not_null())
                    .col(
                        ColumnDef::new(Workers::Concurrency)
                            .integer()
                            .not_null()
                            .check(Expr::cust("concurrency >= 1")),
                    )
                    .col(ColumnDef::new(Workers::Version).text().not_null())
                    .col(
                        ColumnDef::new(Workers::StartedAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(Workers::LastHeartbeatAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(Workers::StoppedAt)
                            .timestamp_with_time_zone()
                            .null(),
                    )
                    .to_owned(),
            )
            .await?;

        // Liveness listings and stale-worker sweeps read the freshest heartbeats first.
        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name("workers_heartbeat_idx")
                    .table(Workers::Table)
                    .col((Workers::LastHeartbeatAt, IndexOrder::Desc))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(Workers::Table).if_exists().to_owned())
            .await
    }
}

//! Creates `events`, the append-only event log that is the source of truth for every stream
//! (tasks included); the other tables are projections that can be rebuilt from it.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Events {
    Table,
    Position,
    StreamType,
    StreamId,
    Version,
    Kind,
    Data,
    Metadata,
    RecordedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Events::Table)
                    .if_not_exists()
                    // bigserial rather than the builder's auto_increment, which emits an
                    // identity column on Postgres; the spec (and readers of `position`) want
                    // a plain sequence-backed bigint.
                    .col(
                        ColumnDef::new(Events::Position)
                            .custom("bigserial")
                            .not_null()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(Events::StreamType).text().not_null())
                    .col(ColumnDef::new(Events::StreamId).text().not_null())
                    .col(ColumnDef::new(Events::Version).big_integer().not_null())
                    .col(ColumnDef::new(Events::Kind).text().not_null())
                    .col(ColumnDef::new(Events::Data).json_binary().not_null())
                    .col(
                        ColumnDef::new(Events::Metadata)
                            .json_binary()
                            .not_null()
                            .default(Expr::cust("'{}'::jsonb")),
                    )
                    // clock_timestamp(), not now(): now() is frozen at transaction start, so
                    // events appended by one long transaction would all share a timestamp.
                    .col(
                        ColumnDef::new(Events::RecordedAt)
                            .timestamp_with_time_zone()
                            .not_null()
                            .default(Expr::cust("clock_timestamp()")),
                    )
                    // Optimistic concurrency: two writers appending the same version of a
                    // stream collide here instead of both succeeding.
                    .index(
                        Index::create()
                            .name("events_stream_version_key")
                            .unique()
                            .col(Events::StreamType)
                            .col(Events::StreamId)
                            .col(Events::Version),
                    )
                    .check(("events_version_chk", Expr::cust("version >= 1")))
                    // Kinds are dotted lower-case names ("task.created") so they can be
                    // matched by prefix; reject anything else before it is in the log forever.
                    .check((
                        "events_kind_chk",
                        Expr::cust(r"kind ~ '^[a-z_]+(\.[a-z_]+)+$'"),
                    ))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(Events::Table).if_exists().to_owned())
            .await
    }
}

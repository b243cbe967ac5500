//! Creates `agents`, the registry of agent CLIs a worker can run (the seed's
//! `available_agents`, generalised): what backend drives each one and what probing found.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Agents {
    Table,
    Name,
    Label,
    Backend,
    Config,
    InstallPath,
    Version,
    Models,
    Capabilities,
    Commands,
    LastProbedAt,
    CreatedAt,
    UpdatedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Agents::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(Agents::Name).text().not_null().primary_key())
                    .col(ColumnDef::new(Agents::Label).text().null())
                    .col(ColumnDef::new(Agents::Backend).text().not_null())
                    .col(
                        ColumnDef::new(Agents::Config)
                            .json_binary()
                            .not_null()
                            .default(Expr::cust("'{}'::jsonb")),
                    )
                    .col(ColumnDef::new(Agents::InstallPath).text().null())
                    .col(ColumnDef::new(Agents::Version).text().null())
                    // Probe results default to empty rather than NULL, so readers never need
                    // to tell "not probed" from "probed, found nothing"; last_probed_at does.
                    .col(
                        ColumnDef::new(Agents::Models)
                            .json_binary()
                            .not_null()
                            .default(Expr::cust("'[]'::jsonb")),
                    )
                    .col(
                        ColumnDef::new(Agents::Capabilities)
                            .json_binary()
                            .not_null()
                            .default(Expr::cust("'{}'::jsonb")),
                    )
                    .col(
                        ColumnDef::new(Agents::Commands)
                            .json_binary()
                            .not_null()
                            .default(Expr::cust("'[]'::jsonb")),
                    )
                    .col(
                        ColumnDef::new(Agents::LastProbedAt)
                            .timestamp_with_time_zone()
                            .null(),
                    )
                    .col(
                        ColumnDef::new(Agents::CreatedAt)
                            .timestamp_with_time_zone()
                            .not_null()
                            .default(Expr::cust("clock_timestamp()")),
                    )
                    .col(
                        ColumnDef::new(Agents::UpdatedAt)
                            .timestamp_with_time_zone()
                            .not_null()
                            .default(Expr::cust("clock_timestamp()")),
                    )
                    // Same shape as queue names: agent names end up in queue names and paths.
                    .check((
                        "agents_name_chk",
                        Expr::cust("name ~ '^[A-Za-z0-9_.-]{1,64}$'"),
                    ))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(Agents::Table).if_exists().to_owned())
            .await
    }
}

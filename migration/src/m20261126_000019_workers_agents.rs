//! Adds `workers.agents`: the agents a worker process runs (built from their config and,
//! under `turnq worker`, probed), as a JSON array of `{"name","backend","version"}`, so
//! the registry says which worker takes which agent's work. Rows written before it get
//! `[]`: the agents of a worker that registered earlier are not known.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Workers {
    Table,
    Agents,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Workers::Table)
                    .add_column_if_not_exists(
                        ColumnDef::new(Workers::Agents)
                            .json_binary()
                            .not_null()
                            .default(Expr::cust("'[]'::jsonb"))
                            .check(Expr::cust("jsonb_typeof(agents) = 'array'")),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // Dropping the column drops its CHECK with it.
        manager
            .alter_table(
                Table::alter()
                    .table(Workers::Table)
                    .drop_column_if_exists(Workers::Agents)
                    .to_owned(),
            )
            .await
    }
}

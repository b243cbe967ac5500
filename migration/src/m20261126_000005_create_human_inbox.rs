//! Creates the `human_inbox` view: the tasks that need a person (blocked or failed).
//!
//! A view rather than a table, so the inbox can never disagree with `tasks`. Note that
//! `SELECT *` is expanded when the view is created: columns added to `tasks` later only
//! appear here if a later migration recreates the view.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // sea-query has no view builder.
        manager
            .get_connection()
            .execute_unprepared(
                "CREATE OR REPLACE VIEW human_inbox AS \
                 SELECT * FROM tasks WHERE state IN ('blocked', 'failed')",
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared("DROP VIEW IF EXISTS human_inbox")
            .await?;
        Ok(())
    }
}

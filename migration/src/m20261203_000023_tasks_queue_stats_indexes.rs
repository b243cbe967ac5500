//! Indexes for per-queue figures (`GET /v1/queues`, `/metrics`) that stay fast with
//! millions of tasks, at almost no cost to the hot path.
//!
//! - `tasks_queue_open_idx`: (queue, state, run_at) with `queued_at` and `ended_at`,
//!   partial to the states a queue's backlog is made of (pending, running, blocked,
//!   failed). Counting them is an index-only scan over the backlog, never the history,
//!   and a task that completes leaves it (a partial index gets no entry for a row its
//!   predicate excludes, so completing costs no insert here).
//! - `tasks_ended_brin`: a BRIN index of `ended_at`. Ended rows are written at the end of
//!   the heap roughly in time order, so "ended in the last hour" reads only the last
//!   block ranges; a BRIN index is a few pages and costs the writes nothing.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                r#"
CREATE INDEX IF NOT EXISTS tasks_queue_open_idx ON tasks (queue, state, run_at)
  INCLUDE (queued_at, ended_at)
  WHERE state IN ('pending', 'running', 'blocked', 'failed');
CREATE INDEX IF NOT EXISTS tasks_ended_brin ON tasks USING brin (ended_at)
  WITH (autosummarize = on);
"#,
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                r#"
DROP INDEX IF EXISTS tasks_ended_brin;
DROP INDEX IF EXISTS tasks_queue_open_idx;
"#,
            )
            .await?;
        Ok(())
    }
}

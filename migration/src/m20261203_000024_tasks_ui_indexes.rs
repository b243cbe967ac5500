//! Indexes for the UI's task page and session page, partial so that the tasks without
//! a parent or a session (most of them) cost nothing.
//!
//! - `tasks_parent_idx`: a task's sub-tasks.
//! - `tasks_session_idx`: a session's turns, newest first.
//!
//! And a completed task no longer keeps the `last_error` of an earlier attempt (the
//! projection now clears it on `task.completed`): the rows completed before are brought
//! in line, so `turnq replay --verify` finds them as a rebuild would.

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
CREATE INDEX IF NOT EXISTS tasks_parent_idx ON tasks (parent_task_id, id)
  WHERE parent_task_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS tasks_session_idx ON tasks (project, session_id, id DESC)
  WHERE session_id IS NOT NULL;
UPDATE tasks SET last_error = NULL WHERE state = 'completed' AND last_error IS NOT NULL;
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
DROP INDEX IF EXISTS tasks_session_idx;
DROP INDEX IF EXISTS tasks_parent_idx;
"#,
            )
            .await?;
        Ok(())
    }
}

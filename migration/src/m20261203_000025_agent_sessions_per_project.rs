//! Agent sessions belong to a project: the key of `agent_sessions` becomes (project,
//! session id, agent), as tasks name a session within their project.
//!
//! Keyed by (session id, agent) alone, two projects that happened to use the same
//! session id shared one agent session: one project's turn resumed the other's backend
//! conversation, and deleting a session in one project closed the other's. Existing
//! rows take the project of the newest task of their session and agent (`default` if
//! none is left).

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
ALTER TABLE agent_sessions ADD COLUMN project text NOT NULL DEFAULT 'default';
UPDATE agent_sessions a SET project = t.project
  FROM (SELECT DISTINCT ON (session_id, agent) session_id, agent, project
          FROM tasks WHERE session_id IS NOT NULL
         ORDER BY session_id, agent, created_at DESC) t
 WHERE a.session_id = t.session_id AND a.agent = t.agent;
ALTER TABLE agent_sessions ALTER COLUMN project DROP DEFAULT;
ALTER TABLE agent_sessions DROP CONSTRAINT agent_sessions_pkey;
ALTER TABLE agent_sessions ADD CONSTRAINT agent_sessions_pkey PRIMARY KEY (project, session_id, agent);
"#,
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // Back to one row per (session id, agent): the most recently active one wins.
        manager
            .get_connection()
            .execute_unprepared(
                r#"
DELETE FROM agent_sessions a USING agent_sessions b
 WHERE a.session_id = b.session_id AND a.agent = b.agent
   AND (a.last_active_at, a.project) < (b.last_active_at, b.project);
ALTER TABLE agent_sessions DROP CONSTRAINT agent_sessions_pkey;
ALTER TABLE agent_sessions ADD CONSTRAINT agent_sessions_pkey PRIMARY KEY (session_id, agent);
ALTER TABLE agent_sessions DROP COLUMN project;
"#,
            )
            .await?;
        Ok(())
    }
}

//! Agent workspaces (docs/people-in-the-loop.md): a task may name a project repository
//! (`tasks.repo`); its session gets a git worktree on one host (`worktrees.host`, one
//! active per session); each turn's changes become pending changes, one pending row per
//! file (a later turn's change supersedes the earlier one); checkpoints remember the
//! session transcript's last entry, and a restore hides the entries written after it
//! (`session_rewinds`: the transcript itself is never edited).

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
ALTER TABLE tasks ADD COLUMN repo text;
ALTER TABLE worktrees
  ADD COLUMN repo text,
  ADD COLUMN host text,
  ADD COLUMN archived_at timestamptz;
CREATE UNIQUE INDEX worktrees_active_session_uidx ON worktrees (project, session_id)
  WHERE status = 'active';
ALTER TABLE pending_changes
  ADD COLUMN project text,
  ADD COLUMN worktree_id uuid REFERENCES worktrees (id) ON DELETE SET NULL,
  ADD COLUMN decided_by text,
  ADD COLUMN decided_at timestamptz,
  ADD COLUMN commit_sha text,
  DROP CONSTRAINT pending_changes_status_check,
  ADD CONSTRAINT pending_changes_status_check
    CHECK (status IN ('pending', 'applied', 'rejected', 'reverted', 'superseded'));
CREATE UNIQUE INDEX pending_changes_one_pending_per_file
  ON pending_changes (worktree_id, file_path) WHERE status = 'pending';
ALTER TABLE checkpoints
  ADD COLUMN project text,
  ADD COLUMN task_id uuid REFERENCES tasks (id) ON DELETE SET NULL,
  ADD COLUMN entry_id bigint;
CREATE INDEX checkpoints_worktree_idx ON checkpoints (worktree_id, created_at);
CREATE TABLE session_rewinds (
  id bigserial PRIMARY KEY,
  project_key text NOT NULL,
  session_id text NOT NULL,
  hide_after bigint NOT NULL,
  hide_through bigint NOT NULL,
  checkpoint_id uuid REFERENCES checkpoints (id) ON DELETE SET NULL,
  created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
  CHECK (hide_after < hide_through)
);
CREATE INDEX session_rewinds_session_idx ON session_rewinds (project_key, session_id);
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
DROP TABLE IF EXISTS session_rewinds;
DROP INDEX IF EXISTS checkpoints_worktree_idx;
ALTER TABLE checkpoints DROP COLUMN IF EXISTS project, DROP COLUMN IF EXISTS task_id,
  DROP COLUMN IF EXISTS entry_id;
DROP INDEX IF EXISTS pending_changes_one_pending_per_file;
DELETE FROM pending_changes WHERE status = 'superseded';
ALTER TABLE pending_changes
  DROP CONSTRAINT pending_changes_status_check,
  ADD CONSTRAINT pending_changes_status_check
    CHECK (status IN ('pending', 'applied', 'rejected', 'reverted')),
  DROP COLUMN IF EXISTS project, DROP COLUMN IF EXISTS worktree_id,
  DROP COLUMN IF EXISTS decided_by, DROP COLUMN IF EXISTS decided_at,
  DROP COLUMN IF EXISTS commit_sha;
DROP INDEX IF EXISTS worktrees_active_session_uidx;
ALTER TABLE worktrees DROP COLUMN IF EXISTS repo, DROP COLUMN IF EXISTS host,
  DROP COLUMN IF EXISTS archived_at;
ALTER TABLE tasks DROP COLUMN IF EXISTS repo;
"#,
            )
            .await?;
        Ok(())
    }
}

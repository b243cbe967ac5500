//! Pending changes: one row per file a session's turns changed in its worktree, waiting
//! for a person (one `pending` row per file and worktree).

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "pending_changes")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub session_id: String,
    pub task_id: Option<Uuid>,
    pub file_path: String,
    pub operation: String,
    pub diff: String,
    pub status: String,
    pub agent: Option<String>,
    pub created_at: DateTimeUtc,
    pub project: Option<String>,
    pub worktree_id: Option<Uuid>,
    pub decided_by: Option<String>,
    pub decided_at: Option<DateTimeUtc>,
    pub commit_sha: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

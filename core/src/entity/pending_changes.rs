//! Pending changes: file edits an agent proposed, waiting for review. Only counted here
//! (per task and status, for arenas); the workspace library computes them.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "pending_changes")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub session_id: String,
    pub task_id: Option<Uuid>,
    pub file_path: String,
    /// `create`, `edit` or `delete`.
    pub operation: String,
    pub diff: String,
    /// `pending`, `applied`, `rejected` or `reverted`.
    pub status: String,
    pub agent: Option<String>,
    pub created_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

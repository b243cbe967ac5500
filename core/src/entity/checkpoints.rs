//! Checkpoints: a worktree's files before a turn (a commit under a private ref) and the
//! session transcript's last entry then.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "checkpoints")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    /// The session id (the seed's chat).
    pub chat_id: String,
    pub session_id: Option<String>,
    pub worktree_id: Option<Uuid>,
    pub message_id: Option<String>,
    pub commit_sha: String,
    pub label: Option<String>,
    pub created_at: DateTimeUtc,
    pub project: Option<String>,
    pub task_id: Option<Uuid>,
    /// The id of the session's last transcript entry when the checkpoint was made.
    pub entry_id: Option<i64>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

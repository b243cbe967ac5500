//! Worktrees: the git worktree of a session, on one host (`host`), one active per
//! (project, session).

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "worktrees")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub session_id: Option<String>,
    pub project: Option<String>,
    pub path: String,
    pub branch: Option<String>,
    pub base_commit: Option<String>,
    /// The branch pending changes are applied onto (the repository's branch when the
    /// worktree was made).
    pub slug: Option<String>,
    pub status: String,
    pub created_at: DateTimeUtc,
    pub repo: Option<String>,
    pub host: Option<String>,
    pub archived_at: Option<DateTimeUtc>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

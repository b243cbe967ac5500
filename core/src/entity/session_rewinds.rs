//! Session rewinds: a checkpoint restore hides the transcript entries written after the
//! checkpoint (ids in `hide_after < id <= hide_through`) from `load`; the entries stay.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "session_rewinds")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub project_key: String,
    pub session_id: String,
    pub hide_after: i64,
    pub hide_through: i64,
    pub checkpoint_id: Option<Uuid>,
    pub created_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

//! One summary per session (main transcript only), kept up to date by the session
//! store's `append` in the same transaction: a projection of `session_entries`.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "session_summaries")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub project_key: String,
    #[sea_orm(primary_key, auto_increment = false)]
    pub session_id: String,
    /// The last write to the main transcript, in Unix epoch milliseconds.
    pub mtime: i64,
    pub data: Json,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

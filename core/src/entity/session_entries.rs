//! The append-only transcript store: one JSON entry per row, `subpath` `''` for the main
//! transcript. The database refuses UPDATE; rows leave only through the session store's
//! `delete`.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "session_entries")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub project_key: String,
    pub session_id: String,
    pub subpath: String,
    pub entry: Json,
    pub created_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

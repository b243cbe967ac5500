//! The append-only event log. The database refuses UPDATE, DELETE and TRUNCATE on it.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "events")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub position: i64,
    pub stream_type: String,
    pub stream_id: String,
    pub version: i64,
    pub kind: String,
    pub data: Json,
    pub metadata: Json,
    pub recorded_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

//! The agent registry: one row per agent CLI a worker can run.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "agents")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub name: String,
    pub label: Option<String>,
    pub backend: String,
    pub config: Json,
    pub install_path: Option<String>,
    pub version: Option<String>,
    pub models: Json,
    pub capabilities: Json,
    pub commands: Json,
    pub last_probed_at: Option<DateTimeUtc>,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

//! The `tasks` projection: the current state of every task, folded from its events.

use sea_orm::entity::prelude::*;

use crate::task::TaskState;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "tasks")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub project: String,
    pub parent_task_id: Option<Uuid>,
    pub arena_id: Option<Uuid>,
    pub queue: String,
    pub priority: i32,
    pub state: TaskState,
    pub input: Json,
    pub output_summary: Option<String>,
    pub agent: String,
    pub model: Option<String>,
    pub backend: Option<String>,
    pub worktree_path: Option<String>,
    pub session_id: Option<String>,
    pub chat_id: Option<String>,
    pub mode_id: Option<String>,
    pub thinking_option_id: Option<String>,
    pub feature_values: Option<Json>,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cost_usd: f64,
    pub run_at: DateTimeUtc,
    pub attempt: i32,
    pub max_attempts: i32,
    pub idempotency_key: Option<String>,
    pub queued_at: Option<DateTimeUtc>,
    pub lease_until: Option<DateTimeUtc>,
    pub worker_id: Option<String>,
    pub last_error: Option<String>,
    pub version: i64,
    pub created_at: DateTimeUtc,
    pub started_at: Option<DateTimeUtc>,
    pub ended_at: Option<DateTimeUtc>,
    pub updated_at: DateTimeUtc,
    pub request: Option<Json>,
    pub response: Option<Json>,
    pub request_deadline: Option<DateTimeUtc>,
    pub repo: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

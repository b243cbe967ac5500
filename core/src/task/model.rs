//! The task as readers see it: the JSON of `GET /v1/tasks/{id}`.

use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use crate::{StreamVersion, TaskId, entity::tasks, event::Usage, task::TaskState, time::Timestamp};

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Task {
    pub id: TaskId,
    pub project: String,
    pub queue: String,
    pub priority: i32,
    pub state: TaskState,
    /// True while the task is pending and handed to Redis, waiting for a worker.
    pub queued: bool,
    pub input: Value,
    pub output_summary: Option<String>,
    pub agent: String,
    pub model: Option<String>,
    pub backend: Option<String>,
    pub worktree_path: Option<String>,
    pub session_id: Option<String>,
    pub chat_id: Option<String>,
    pub mode_id: Option<String>,
    pub thinking_option_id: Option<String>,
    pub feature_values: Option<Value>,
    pub parent_task_id: Option<Uuid>,
    pub arena_id: Option<Uuid>,
    pub usage: Usage,
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub run_at: Timestamp,
    pub attempt: i32,
    pub max_attempts: i32,
    pub idempotency_key: Option<String>,
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime))]
    pub queued_at: Option<Timestamp>,
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime))]
    pub lease_until: Option<Timestamp>,
    pub worker_id: Option<String>,
    pub last_error: Option<String>,
    /// The version of the task's event stream.
    pub version: StreamVersion,
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub created_at: Timestamp,
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime))]
    pub started_at: Option<Timestamp>,
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime))]
    pub ended_at: Option<Timestamp>,
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub updated_at: Timestamp,
}

impl From<tasks::Model> for Task {
    fn from(m: tasks::Model) -> Self {
        Task {
            id: TaskId(m.id),
            project: m.project,
            queue: m.queue,
            priority: m.priority,
            state: m.state,
            queued: m.queued_at.is_some(),
            input: m.input,
            output_summary: m.output_summary,
            agent: m.agent,
            model: m.model,
            backend: m.backend,
            worktree_path: m.worktree_path,
            session_id: m.session_id,
            chat_id: m.chat_id,
            mode_id: m.mode_id,
            thinking_option_id: m.thinking_option_id,
            feature_values: m.feature_values,
            parent_task_id: m.parent_task_id,
            arena_id: m.arena_id,
            usage: Usage {
                input_tokens: m.input_tokens,
                output_tokens: m.output_tokens,
                cost_usd: m.cost_usd,
            },
            run_at: m.run_at,
            attempt: m.attempt,
            max_attempts: m.max_attempts,
            idempotency_key: m.idempotency_key,
            queued_at: m.queued_at,
            lease_until: m.lease_until,
            worker_id: m.worker_id,
            last_error: m.last_error,
            version: StreamVersion(m.version),
            created_at: m.created_at,
            started_at: m.started_at,
            ended_at: m.ended_at,
            updated_at: m.updated_at,
        }
    }
}

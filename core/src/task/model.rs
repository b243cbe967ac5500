//! The task as readers see it: the JSON of `GET /v1/tasks/{id}`.

use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use crate::{
    StreamVersion, TaskId,
    entity::tasks,
    event::Usage,
    task::{HumanRequest, Response, TaskState},
    time::Timestamp,
};

/// An input larger than this (its JSON text, in bytes) is shown as a preview in lists.
pub const LISTED_INPUT_BYTES: usize = 1024;

/// How many characters a preview keeps.
pub const PREVIEW_CHARS: usize = 1000;

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
    /// The task's input. In lists (and the answer of a batch) an input whose JSON text
    /// is over [`LISTED_INPUT_BYTES`] is replaced by the first [`PREVIEW_CHARS`]
    /// characters of that text, as a string, and `input_truncated` is true: the whole
    /// input is in `GET /v1/tasks/{id}`.
    pub input: Value,
    /// `input` is a preview, not the input.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub input_truncated: bool,
    /// In lists, cut to [`PREVIEW_CHARS`] characters (then `output_truncated` is true).
    pub output_summary: Option<String>,
    /// `output_summary` was cut.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub output_truncated: bool,
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
    /// The project repository whose worktree the task's turns run in.
    pub repo: Option<String>,
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
    /// What the task's latest turn asked of a person (kept after the answer, so the
    /// next turn knows what was answered). Absent when no turn asked anything.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request: Option<HumanRequest>,
    /// The answer to `request`, which the next turn resumes with.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response: Option<Response>,
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
            input_truncated: false,
            output_summary: m.output_summary,
            output_truncated: false,
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
            repo: m.repo,
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
            // Written only from the typed values of events, so they read back; a row
            // edited by hand into another shape shows as no request rather than failing
            // every read of the task.
            request: m.request.and_then(|v| serde_json::from_value(v).ok()),
            response: m.response.and_then(|v| serde_json::from_value(v).ok()),
        }
    }
}

impl Task {
    /// The request the task waits on: blocked with a request not answered yet.
    pub fn open_request(&self) -> Option<&HumanRequest> {
        if self.state == TaskState::Blocked {
            self.request.as_ref()
        } else {
            None
        }
    }

    /// The task as lists show it: an input over [`LISTED_INPUT_BYTES`] and an output
    /// summary over [`PREVIEW_CHARS`] replaced by previews. The list query applies the
    /// same rule in Postgres (so a list never reads whole inputs), measuring Postgres'
    /// text of the jsonb (`{"a": 1}`, keys in jsonb's order) where this measures
    /// compact JSON: an input within a few bytes of the limit may be whole in one and a
    /// preview in the other.
    pub fn listed(mut self) -> Task {
        let text = self.input.to_string();
        if text.len() > LISTED_INPUT_BYTES {
            self.input = Value::String(text.chars().take(PREVIEW_CHARS).collect());
            self.input_truncated = true;
        }
        if let Some(summary) = &mut self.output_summary
            && let Some((cut, _)) = summary.char_indices().nth(PREVIEW_CHARS)
        {
            summary.truncate(cut);
            self.output_truncated = true;
        }
        self
    }
}

//! Event kinds and the event store.
//!
//! The kinds and their JSON are a public contract (the API, the SSE stream and exported
//! logs use them), documented in `docs/events.md`. Each kind is dotted lowercase and
//! doubles as the serde tag; the `data` column holds the rest of the object. Changing a
//! kind's JSON means a new kind or a new optional field, never a silent reshape.

pub mod feed;
mod store;

pub use feed::{Cursor, EventFeed, LiveEvent, LiveFilter, LiveLog};
pub use store::{EventStore, NewEvent, RecordedEvent, StreamRef};

use serde::{Deserialize, Serialize};

use crate::{
    task::{HumanRequest, NewTask, Response},
    time::Timestamp,
};

/// Token counts and money spent by one attempt of a turn.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    #[serde(default)]
    pub input_tokens: i64,
    #[serde(default)]
    pub output_tokens: i64,
    #[serde(default)]
    pub cost_usd: f64,
}

/// Why an attempt did not succeed. The class, never the message text, picks what
/// happens next.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ErrorClass {
    /// Worth another attempt (a timeout, a rate limit, a crashed agent process).
    Retryable,
    /// Another attempt would fail the same way (bad input, unknown agent).
    Fatal,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskFailure {
    pub class: ErrorClass,
    pub message: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Queued {
    pub queue: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Started {
    pub attempt: i32,
    pub worker_id: String,
    pub lease_until: Timestamp,
}

/// A batch of streamed output from a running turn: several chunks in one event, so a
/// chatty agent costs one commit per flush interval, not one per token.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Output {
    pub attempt: i32,
    pub chunks: Vec<OutputChunk>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OutputChunk {
    /// `text`, `reasoning`, `tool_call`, `tool_result`, …
    pub stream: String,
    pub text: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Completed {
    pub attempt: i32,
    pub output_summary: String,
    pub usage: Usage,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Retrying {
    pub attempt: i32,
    pub error: TaskFailure,
    /// When the next attempt may start (exponential backoff with jitter).
    pub run_at: Timestamp,
    pub usage: Usage,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Failed {
    pub attempt: i32,
    pub error: TaskFailure,
    pub usage: Usage,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Blocked {
    pub attempt: i32,
    /// What the agent asks of a person, in words.
    pub reason: String,
    pub usage: Usage,
    /// The request a person answers with `POST /v1/tasks/{id}/respond` (its kind,
    /// options and deadline); absent for a bare block, which is approved instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<HumanRequest>,
}

/// The answer to a blocked task's request: by a person, by turnq for a person once the
/// deadline passed (`expired`), or by turnq when every sub-task ended. The task runs
/// again, at least one more attempt in its budget, and its turn resumes with the
/// answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Responded {
    pub response: Response,
    pub max_attempts: i32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LeaseLost {
    pub attempt: i32,
    pub worker_id: String,
    /// True when no attempts are left: the task fails instead of running again.
    pub failed: bool,
}

/// A worker handed a task back without finishing it (graceful shutdown). It runs again
/// at once, and the unfinished attempt does not count against the budget: the
/// projection raises `max_attempts` by one, while `attempt` stays monotonic so that
/// every write can still be fenced by attempt number.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Released {
    pub attempt: i32,
    pub worker_id: String,
    pub reason: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Cancelled {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Approved {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// The attempt budget after approval: at least one more than the attempts made,
    /// so the approved task can run again.
    pub max_attempts: i32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Retried {
    /// The attempt budget after the retry: at least one more than the attempts made.
    pub max_attempts: i32,
}

/// Every fact about a task.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind")]
pub enum TaskEvent {
    #[serde(rename = "task.submitted")]
    Submitted(Box<NewTask>),
    #[serde(rename = "task.queued")]
    Queued(Queued),
    #[serde(rename = "task.started")]
    Started(Started),
    #[serde(rename = "task.output")]
    Output(Output),
    #[serde(rename = "task.completed")]
    Completed(Completed),
    #[serde(rename = "task.retrying")]
    Retrying(Retrying),
    #[serde(rename = "task.failed")]
    Failed(Failed),
    #[serde(rename = "task.blocked")]
    Blocked(Blocked),
    #[serde(rename = "task.lease_lost")]
    LeaseLost(LeaseLost),
    #[serde(rename = "task.released")]
    Released(Released),
    #[serde(rename = "task.cancelled")]
    Cancelled(Cancelled),
    #[serde(rename = "task.approved")]
    Approved(Approved),
    #[serde(rename = "task.retried")]
    Retried(Retried),
    #[serde(rename = "task.responded")]
    Responded(Responded),
}

impl TaskEvent {
    pub const STREAM_TYPE: &'static str = "task";

    /// Every kind of task event, as `kind()` names them. The `events_kind_known` check
    /// of the database (migration 26) allows exactly these: a new kind needs a migration
    /// that widens it (a test compares the two).
    pub const KINDS: [&'static str; 14] = [
        "task.submitted",
        "task.queued",
        "task.started",
        "task.output",
        "task.completed",
        "task.retrying",
        "task.failed",
        "task.blocked",
        "task.lease_lost",
        "task.released",
        "task.cancelled",
        "task.approved",
        "task.retried",
        "task.responded",
    ];

    pub fn kind(&self) -> &'static str {
        match self {
            TaskEvent::Submitted(_) => "task.submitted",
            TaskEvent::Queued(_) => "task.queued",
            TaskEvent::Started(_) => "task.started",
            TaskEvent::Output(_) => "task.output",
            TaskEvent::Completed(_) => "task.completed",
            TaskEvent::Retrying(_) => "task.retrying",
            TaskEvent::Failed(_) => "task.failed",
            TaskEvent::Blocked(_) => "task.blocked",
            TaskEvent::LeaseLost(_) => "task.lease_lost",
            TaskEvent::Released(_) => "task.released",
            TaskEvent::Cancelled(_) => "task.cancelled",
            TaskEvent::Approved(_) => "task.approved",
            TaskEvent::Retried(_) => "task.retried",
            TaskEvent::Responded(_) => "task.responded",
        }
    }

    /// Splits the event into its kind and its data (the JSON object without `kind`), as
    /// the `events` table stores them.
    pub fn to_parts(&self) -> (&'static str, serde_json::Value) {
        let mut value = serde_json::to_value(self)
            .unwrap_or_else(|e| unreachable!("task events always serialise: {e}"));
        if let Some(object) = value.as_object_mut() {
            object.remove("kind");
        }
        (self.kind(), value)
    }

    /// The inverse of [`TaskEvent::to_parts`].
    pub fn from_parts(kind: &str, data: &serde_json::Value) -> Result<TaskEvent, String> {
        let mut object = data
            .as_object()
            .cloned()
            .ok_or_else(|| format!("event data of {kind} is not a JSON object"))?;
        object.insert("kind".into(), serde_json::Value::String(kind.into()));
        serde_json::from_value(serde_json::Value::Object(object))
            .map_err(|e| format!("event {kind} does not parse: {e}"))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn kinds_lists_every_kind_of_task_event() {
        let mut kinds: Vec<&str> = one_of_each_kind().iter().map(|e| e.kind()).collect();
        let mut listed = TaskEvent::KINDS.to_vec();
        kinds.sort_unstable();
        listed.sort_unstable();
        assert_eq!(kinds, listed);
    }
    use crate::task::NewTaskRequest;

    /// One event of every kind, for tests that walk all kinds.
    pub(crate) fn one_of_each_kind() -> Vec<TaskEvent> {
        let at = crate::time::now();
        let usage = Usage::default();
        let failure = TaskFailure {
            class: ErrorClass::Retryable,
            message: "boom".into(),
        };
        let spec = NewTaskRequest {
            input: serde_json::json!("hello"),
            ..Default::default()
        }
        .validate(at)
        .expect("the sample submission is valid");
        vec![
            TaskEvent::Submitted(Box::new(spec)),
            TaskEvent::Queued(Queued { queue: "q".into() }),
            TaskEvent::Started(Started {
                attempt: 1,
                worker_id: "w".into(),
                lease_until: at,
            }),
            TaskEvent::Output(Output {
                attempt: 1,
                chunks: vec![],
            }),
            TaskEvent::Completed(Completed {
                attempt: 1,
                output_summary: "ok".into(),
                usage,
            }),
            TaskEvent::Retrying(Retrying {
                attempt: 1,
                error: failure.clone(),
                run_at: at,
                usage,
            }),
            TaskEvent::Failed(Failed {
                attempt: 1,
                error: failure,
                usage,
            }),
            TaskEvent::Blocked(Blocked {
                attempt: 1,
                reason: "why".into(),
                usage,
                request: None,
            }),
            TaskEvent::LeaseLost(LeaseLost {
                attempt: 1,
                worker_id: "w".into(),
                failed: false,
            }),
            TaskEvent::Released(Released {
                attempt: 1,
                worker_id: "w".into(),
                reason: "shutdown".into(),
            }),
            TaskEvent::Cancelled(Cancelled { reason: None }),
            TaskEvent::Approved(Approved {
                note: None,
                max_attempts: 2,
            }),
            TaskEvent::Retried(Retried { max_attempts: 2 }),
            TaskEvent::Responded(Responded {
                response: Response::default(),
                max_attempts: 2,
            }),
        ]
    }

    #[test]
    fn every_kind_round_trips_through_its_stored_parts() {
        for event in one_of_each_kind() {
            let (kind, data) = event.to_parts();
            assert!(data.get("kind").is_none());
            assert_eq!(TaskEvent::from_parts(kind, &data).unwrap(), event);
        }
    }

    #[test]
    fn unknown_kind_is_an_error_not_a_panic() {
        let err = TaskEvent::from_parts("task.exploded", &serde_json::json!({})).unwrap_err();
        assert!(err.contains("task.exploded"), "{err}");
    }
}

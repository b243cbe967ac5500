//! The domain error. It knows no HTTP: the API maps it to statuses in one place.

use crate::{ArenaId, StreamVersion, TaskId, task::TaskState};

/// Everything that can go wrong in the domain, each variant naming the condition.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The input of a request breaks a rule; the message says which.
    #[error("{0}")]
    Invalid(String),

    #[error("task {0} does not exist")]
    TaskNotFound(TaskId),

    /// Something other than a task that the request names does not exist; the message
    /// says what.
    #[error("{0}")]
    NotFound(String),

    /// The task's state machine has no such transition.
    #[error("task {task} is {from}: it cannot be {action}")]
    IllegalTransition {
        task: TaskId,
        from: TaskState,
        action: &'static str,
    },

    /// An idempotency key already names a task submitted with different values: the new
    /// submission would silently be dropped, so it is refused instead (as Stripe does).
    #[error(
        "idempotency key {key:?} already names task {task}, submitted with a different \
         {field}: use a new key for a different task"
    )]
    IdempotencyKeyReused {
        key: String,
        task: crate::TaskId,
        field: &'static str,
    },

    /// An arena's winner is picked once: this one was picked already.
    #[error("arena {arena} is already decided: {by} picked task {winner} as its winner")]
    ArenaDecided {
        arena: ArenaId,
        winner: TaskId,
        by: String,
    },

    /// Someone else appended to the stream first.
    #[error("stream {stream} is at version {actual}, not the expected {expected}")]
    VersionConflict {
        stream: String,
        expected: StreamVersion,
        actual: StreamVersion,
    },

    /// A worker wrote for an attempt it no longer owns (its lease was lost, the task was
    /// cancelled or another attempt started): the write was refused.
    #[error("task {task} attempt {attempt} is no longer owned by worker {worker}")]
    Fenced {
        task: TaskId,
        attempt: i32,
        worker: String,
    },

    /// The request does not fit what is there now (a turn of the session is running,
    /// say); the message says what and what to do.
    #[error("{0}")]
    Conflict(String),

    /// A stored event or row could not be read back as the domain type.
    #[error("corrupt stored data: {0}")]
    Corrupt(String),

    /// Handing tasks to the delivery queue failed; nothing was recorded.
    #[error("handing tasks to the delivery queue failed")]
    Delivery(#[source] Box<dyn std::error::Error + Send + Sync>),

    #[error("database error")]
    Database(#[source] sea_orm::DbErr),
}

impl From<sea_orm::DbErr> for Error {
    fn from(e: sea_orm::DbErr) -> Self {
        Error::Database(e)
    }
}

impl Error {
    /// True when the cause is that Postgres could not be reached (as opposed to a query
    /// it refused): callers answer 503 and retry later.
    /// Postgres refused the statement for a reason that will not go away by trying
    /// again ([`crate::db::is_permanent_refusal`]).
    pub fn is_permanent_refusal(&self) -> bool {
        match self {
            Error::Database(e) => crate::db::is_permanent_refusal(e),
            _ => false,
        }
    }

    pub fn is_unavailable(&self) -> bool {
        match self {
            Error::Database(e) => crate::db::is_connection_error(e),
            _ => false,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What kind of JSON value `v` is, for messages that say what was given instead
/// ("config must be a JSON object, not an array").
pub(crate) fn json_kind(v: &serde_json::Value) -> &'static str {
    use serde_json::Value;
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// An error and its sources on one line (`outer: cause: root cause`), for logs: the
/// outer message never repeats its cause, so the chain is logged once, here.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

//! What a submitter may ask for. [`NewTaskRequest`] is the wire shape; [`NewTask`] is the
//! validated value, the only one the store accepts, and the data of `task.submitted`.
//! Both carry the seed's optional descriptive fields as one [`TaskDetails`], flattened,
//! so the JSON of either is one flat object.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::{
    Error,
    error::Result,
    storable::{self, INDEX_KEY_BUDGET},
    time::Timestamp,
};

/// The largest task input, as serialised JSON.
pub const MAX_INPUT_BYTES: usize = 1024 * 1024;
/// The most tasks in one batch submission.
pub const MAX_BATCH: usize = 1000;

const DEFAULT_PROJECT: &str = "default";
const DEFAULT_QUEUE: &str = "default";
const DEFAULT_AGENT: &str = "script";
const DEFAULT_MAX_ATTEMPTS: i32 = 3;
const MAX_TEXT: usize = 4096;
/// The longest `project` and `session_id`, in UTF-8 bytes: each is part of an index
/// key (`tasks_project_idempotency_key_uidx`, `tasks_session_idx`, the key of
/// `agent_sessions`), which counts bytes, not characters (see [`crate::storable`]).
pub const MAX_KEY_BYTES: usize = 1024;
/// The longest idempotency key, in UTF-8 bytes.
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 255;

// (project, idempotency_key) and (session_id, agent) are index keys.
const _: () = assert!(MAX_KEY_BYTES + MAX_IDEMPOTENCY_KEY_BYTES <= INDEX_KEY_BUDGET);
const _: () = assert!(MAX_KEY_BYTES + MAX_NAME_CHARS <= INDEX_KEY_BUDGET);

/// A task as a submitter sends it. Unknown fields are refused (by
/// `NewTaskRequest::validate`), so a typo (`"prority"`) is an error instead of a
/// silently ignored wish.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct NewTaskRequest {
    /// What the agent gets: a prompt string, or any JSON value the agent understands
    /// (not null, not blank; at most 1 MiB as JSON).
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub input: Value,
    /// Default `default`; at most 1,024 bytes of UTF-8 (it is part of an index key).
    pub project: Option<String>,
    /// Default `default`.
    #[cfg_attr(feature = "openapi", schema(pattern = "^[A-Za-z0-9_.-]{1,64}$"))]
    pub queue: Option<String>,
    /// -1000 to 1000, higher runs first; default 0.
    #[cfg_attr(feature = "openapi", schema(minimum = -1000, maximum = 1000))]
    pub priority: Option<i32>,
    /// Default `script`.
    #[cfg_attr(feature = "openapi", schema(pattern = "^[A-Za-z0-9_.-]{1,64}$"))]
    pub agent: Option<String>,
    #[serde(flatten, deserialize_with = "TaskDetails::deserialize_named")]
    pub details: TaskDetails,
    /// Do not start before this time.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime))]
    #[serde(
        default,
        deserialize_with = "crate::time::deserialize_optional_rfc3339"
    )]
    pub run_at: Option<Timestamp>,
    /// 1 to 100; default 3.
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 100))]
    pub max_attempts: Option<i32>,
    /// Names the task within its project: a second submission with the same key gets the
    /// first task back. At most 255 bytes.
    pub idempotency_key: Option<String>,
    /// Whatever else the submission held: refused by [`NewTaskRequest::validate`]. serde's
    /// `deny_unknown_fields` cannot do it, because it does not work together with
    /// `flatten`; this map, flattened after [`TaskDetails`], gets exactly the fields that
    /// no other field took.
    #[serde(flatten)]
    #[cfg_attr(feature = "openapi", schema(ignore))]
    pub unknown: BTreeMap<String, Value>,
}

/// A validated submission.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NewTask {
    pub input: Value,
    pub project: String,
    pub queue: String,
    pub priority: i32,
    pub agent: String,
    #[serde(flatten, deserialize_with = "TaskDetails::deserialize_named")]
    pub details: TaskDetails,
    pub run_at: Timestamp,
    pub max_attempts: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

/// The seed's optional, descriptive fields of a task: which model and backend run it,
/// in which worktree, in which conversation (session, chat, mode, thinking option,
/// feature values), and where it comes from (parent task, arena). One type for the
/// wire shape, the validated submission and the `task.submitted` event, each of which
/// flattens it; an absent field is left out of their JSON, as it always was.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TaskDetails {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(pattern = "^[A-Za-z0-9_.-]{1,64}$"))]
    pub backend: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worktree_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chat_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thinking_option_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feature_values: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_task_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arena_id: Option<Uuid>,
    /// A project repository (an absolute path of a git repository on the worker host,
    /// under one of the worker's `--repo-roots`): the task's session gets a git
    /// worktree of it, its turns run there, and their changes become pending changes.
    /// Needs a `session_id` (the worktree belongs to the session).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repo: Option<String>,
}

/// The longest repository path, in bytes.
const MAX_REPO_BYTES: usize = 4096;

impl TaskDetails {
    /// Checks every rule; the message names the field.
    pub fn validate(self) -> Result<TaskDetails> {
        if let Some(backend) = &self.backend {
            check_name("backend", backend)?;
        }
        if let Some(values) = &self.feature_values {
            if !values.is_object() {
                return Err(invalid("feature_values must be a JSON object".into()));
            }
            storable::json_without_nul("feature_values", values)?;
        }
        let session_id = check_text("session_id", self.session_id)?;
        if let Some(session_id) = &session_id {
            storable::within_bytes("session_id", session_id, MAX_KEY_BYTES)?;
        }
        let repo = check_text("repo", self.repo)?;
        if let Some(repo) = &repo {
            storable::within_bytes("repo", repo, MAX_REPO_BYTES)?;
            if !repo.starts_with('/') {
                return Err(invalid(format!(
                    "repo {repo:?} must be an absolute path of a git repository on the worker host"
                )));
            }
            if session_id.is_none() {
                return Err(invalid(
                    "a task with a repo needs a session_id: its worktree belongs to the session"
                        .into(),
                ));
            }
        }
        Ok(TaskDetails {
            repo,
            model: check_text("model", self.model)?,
            backend: self.backend,
            worktree_path: check_text("worktree_path", self.worktree_path)?,
            session_id,
            chat_id: check_text("chat_id", self.chat_id)?,
            mode_id: check_text("mode_id", self.mode_id)?,
            thinking_option_id: check_text("thinking_option_id", self.thinking_option_id)?,
            feature_values: self.feature_values,
            parent_task_id: self.parent_task_id,
            arena_id: self.arena_id,
        })
    }

    /// Deserialises the flattened details so that an error names its field
    /// (`model: invalid type: …`). serde hands a flattened struct the fields it buffered
    /// and reports an error inside it without the field's name; `serde_path_to_error`
    /// puts it back.
    fn deserialize_named<'de, D: Deserializer<'de>>(d: D) -> Result<TaskDetails, D::Error> {
        serde_path_to_error::deserialize(d)
            .map_err(|e| serde::de::Error::custom(format_args!("{}: {}", e.path(), e.inner())))
    }
}

fn invalid(message: String) -> Error {
    Error::Invalid(message)
}

/// The longest name of a queue, agent or backend (ASCII, so also its bytes).
const MAX_NAME_CHARS: usize = 64;

/// The name rule of queues, agents and backends (`[A-Za-z0-9_.-]{1,64}`: they appear in
/// Redis keys); `field` names the value in the message.
pub fn check_name(field: &str, value: &str) -> Result<()> {
    if value.is_empty() {
        return Err(invalid(format!("{field} must not be empty")));
    }
    let chars = value.chars().count();
    if chars > MAX_NAME_CHARS {
        return Err(invalid(format!(
            "{field} is {chars} characters long; the limit is {MAX_NAME_CHARS}"
        )));
    }
    if let Some(c) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        return Err(invalid(format!(
            "{field} {value:?} contains {c:?}; only A-Z, a-z, 0-9, '_', '.' and '-' are allowed"
        )));
    }
    Ok(())
}

fn check_text(field: &str, value: Option<String>) -> Result<Option<String>> {
    match value {
        None => Ok(None),
        Some(v) if v.trim().is_empty() => Err(invalid(format!("{field} must not be empty"))),
        Some(v) if v.len() > MAX_TEXT => Err(invalid(format!(
            "{field} is {} bytes long; the limit is {MAX_TEXT}",
            v.len()
        ))),
        Some(v) if v.chars().any(char::is_control) => Err(invalid(format!(
            "{field} must not contain control characters"
        ))),
        Some(v) => Ok(Some(v)),
    }
}

impl NewTaskRequest {
    /// Checks every rule and fills in the defaults. `now` is the default `run_at`.
    pub fn validate(self, now: Timestamp) -> Result<NewTask> {
        if !self.unknown.is_empty() {
            let names: Vec<String> = self.unknown.keys().map(|k| format!("`{k}`")).collect();
            return Err(invalid(format!(
                "unknown field{} {}: a task has no such field (a typo?)",
                if names.len() == 1 { "" } else { "s" },
                names.join(", ")
            )));
        }
        match &self.input {
            Value::Null => return Err(invalid("input is required".into())),
            Value::String(s) if s.trim().is_empty() => {
                return Err(invalid("input must not be empty".into()));
            }
            _ => {}
        }
        storable::json_without_nul("input", &self.input)?;
        let input_len = serde_json::to_vec(&self.input)
            .map(|v| v.len())
            .unwrap_or(0);
        if input_len > MAX_INPUT_BYTES {
            return Err(invalid(format!(
                "input is {input_len} bytes; the limit is {MAX_INPUT_BYTES} bytes (1 MiB)"
            )));
        }
        let project =
            check_text("project", self.project)?.unwrap_or_else(|| DEFAULT_PROJECT.into());
        storable::within_bytes("project", &project, MAX_KEY_BYTES)?;
        let queue = self.queue.unwrap_or_else(|| DEFAULT_QUEUE.into());
        check_name("queue", &queue)?;
        let agent = self.agent.unwrap_or_else(|| DEFAULT_AGENT.into());
        check_name("agent", &agent)?;
        let priority = self.priority.unwrap_or(0);
        if !(-1000..=1000).contains(&priority) {
            return Err(invalid(format!(
                "priority {priority} is out of range: use -1000 to 1000 (higher runs first)"
            )));
        }
        let max_attempts = self.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS);
        if !(1..=100).contains(&max_attempts) {
            return Err(invalid(format!(
                "max_attempts {max_attempts} is out of range: use 1 to 100"
            )));
        }
        let details = self.details.validate()?;
        let idempotency_key = check_text("idempotency_key", self.idempotency_key)?;
        if let Some(key) = &idempotency_key {
            storable::within_bytes("idempotency_key", key, MAX_IDEMPOTENCY_KEY_BYTES)?;
        }
        Ok(NewTask {
            input: self.input,
            project,
            queue,
            priority,
            agent,
            details,
            run_at: crate::time::truncate(self.run_at.unwrap_or(now)),
            max_attempts,
            idempotency_key,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn request(input: Value) -> NewTaskRequest {
        NewTaskRequest {
            input,
            ..Default::default()
        }
    }

    #[test]
    fn defaults_fill_in_what_was_not_given() {
        let now = crate::time::now();
        let task = request(json!("hi")).validate(now).unwrap();
        assert_eq!(
            (
                task.project.as_str(),
                task.queue.as_str(),
                task.agent.as_str()
            ),
            ("default", "default", "script")
        );
        assert_eq!((task.priority, task.max_attempts, task.run_at), (0, 3, now));
    }

    #[test]
    fn missing_empty_and_oversized_input_are_refused() {
        let now = crate::time::now();
        for (input, needle) in [
            (Value::Null, "input is required"),
            (json!("   "), "must not be empty"),
            (json!("x".repeat(MAX_INPUT_BYTES)), "the limit is"),
        ] {
            let err = request(input).validate(now).unwrap_err().to_string();
            assert!(err.contains(needle), "{err}");
        }
    }

    #[test]
    fn bad_names_ranges_and_shapes_are_refused() {
        let now = crate::time::now();
        let cases = [
            (
                NewTaskRequest {
                    queue: Some("a b".into()),
                    ..request(json!(1))
                },
                "queue",
            ),
            (
                NewTaskRequest {
                    agent: Some(String::new()),
                    ..request(json!(1))
                },
                "agent",
            ),
            (
                NewTaskRequest {
                    priority: Some(5000),
                    ..request(json!(1))
                },
                "priority",
            ),
            (
                NewTaskRequest {
                    max_attempts: Some(0),
                    ..request(json!(1))
                },
                "max_attempts",
            ),
            (
                NewTaskRequest {
                    details: TaskDetails {
                        feature_values: Some(json!([1])),
                        ..Default::default()
                    },
                    ..request(json!(1))
                },
                "feature_values",
            ),
            (
                NewTaskRequest {
                    project: Some("\u{7}".into()),
                    ..request(json!(1))
                },
                "project",
            ),
        ];
        for (req, field) in cases {
            let err = req.validate(now).unwrap_err().to_string();
            assert!(err.contains(field), "{field}: {err}");
        }
    }

    #[test]
    fn nul_characters_and_index_keys_too_long_in_bytes_are_refused() {
        let now = crate::time::now();
        let cases = [
            (
                request(json!({"a": ["x\u{0}"]})),
                "input contains the character U+0000",
            ),
            (
                NewTaskRequest {
                    details: TaskDetails {
                        feature_values: Some(json!({"f": "\u{0}"})),
                        ..Default::default()
                    },
                    ..request(json!(1))
                },
                "feature_values contains the character U+0000",
            ),
            (
                NewTaskRequest {
                    // Under the 4,096 bytes a text may have, over what an index holds.
                    project: Some("p".repeat(4000)),
                    idempotency_key: Some("k".into()),
                    ..request(json!(1))
                },
                "project is 4000 bytes long in UTF-8; the limit is 1024 bytes",
            ),
            (
                NewTaskRequest {
                    details: TaskDetails {
                        session_id: Some("s".repeat(MAX_KEY_BYTES + 1)),
                        ..Default::default()
                    },
                    ..request(json!(1))
                },
                "session_id is 1025 bytes long",
            ),
        ];
        for (req, needle) in cases {
            let err = req.validate(now).unwrap_err().to_string();
            assert!(err.starts_with(needle), "{needle}: {err}");
        }
    }

    #[test]
    fn unknown_fields_are_refused() {
        let request: NewTaskRequest = serde_json::from_value(
            json!({"input": "x", "model": "m", "prority": 3, "colour": "red"}),
        )
        .unwrap();
        // serde hands the flattened details their own fields first; only the rest is
        // unknown.
        assert_eq!(request.details.model.as_deref(), Some("m"));
        assert_eq!(
            request.unknown.keys().collect::<Vec<_>>(),
            ["colour", "prority"]
        );
        let err = request
            .validate(crate::time::now())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`prority`") && err.contains("`colour`"),
            "{err}"
        );
    }

    #[test]
    fn a_wrong_type_in_a_detail_names_the_field() {
        let err = serde_json::from_value::<NewTaskRequest>(json!({"input": "x", "chat_id": 5}))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("chat_id: invalid type"), "{err}");
    }

    /// The `task.submitted` data of a full and of a minimal submission, as the flat
    /// `NewTask` of before wrote them, byte for byte.
    const FULL: &str = r#"{"input":{"prompt":"hi"},"project":"p","queue":"q","priority":5,"agent":"a","model":"m","backend":"b","worktree_path":"/w","session_id":"s","chat_id":"c","mode_id":"mo","thinking_option_id":"t","feature_values":{"f":true},"parent_task_id":"0190a0a0-0000-7000-8000-000000000001","arena_id":"0190a0a0-0000-7000-8000-000000000002","run_at":"2026-01-02T03:04:05.123456Z","max_attempts":4,"idempotency_key":"k"}"#;
    const MINIMAL: &str = r#"{"input":"x","project":"default","queue":"default","priority":0,"agent":"script","run_at":"2026-01-02T03:04:05.123456Z","max_attempts":3}"#;

    #[test]
    fn a_validated_submission_serialises_as_it_always_did() {
        let at: Timestamp = "2026-01-02T03:04:05.123456Z".parse().unwrap();
        let full: NewTaskRequest = serde_json::from_str(FULL).unwrap();
        let minimal = request(json!("x"));
        assert_eq!(
            serde_json::to_string(&full.validate(at).unwrap()).unwrap(),
            FULL
        );
        assert_eq!(
            serde_json::to_string(&minimal.validate(at).unwrap()).unwrap(),
            MINIMAL
        );
    }

    #[test]
    fn submissions_logged_before_still_read_back() {
        for logged in [FULL, MINIMAL] {
            let task: NewTask = serde_json::from_str(logged).unwrap();
            assert_eq!(serde_json::to_string(&task).unwrap(), logged);
        }
        let task: NewTask = serde_json::from_str(FULL).unwrap();
        assert_eq!(task.details.session_id.as_deref(), Some("s"));
        // As the log stores it: the kind apart, the data as jsonb gives it back.
        let data: Value = serde_json::from_str(FULL).unwrap();
        assert_eq!(
            crate::event::TaskEvent::from_parts("task.submitted", &data).unwrap(),
            crate::event::TaskEvent::Submitted(Box::new(task))
        );
        // A field this version does not know is ignored, as before.
        let mut newer: serde_json::Map<String, Value> = serde_json::from_str(MINIMAL).unwrap();
        newer.insert("added_later".into(), json!(1));
        assert!(serde_json::from_value::<NewTask>(Value::Object(newer)).is_ok());
    }
}

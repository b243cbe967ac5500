//! Arenas: one task given to several agents at once, compared side by side, and the
//! winner a person picks.
//!
//! An arena is its input and its contestants (an agent each, and optionally a model).
//! Creating it submits one ordinary task per contestant, in the same transaction as the
//! arena's row and its `arena.created` event: every task has the arena's input, project
//! and queue, `arena_id` set, and a session of its own (`arena-{arena id}-{i}`), so the
//! contestants never share a transcript or wait for each other's turns. Each runs like
//! any task; the arena only reads them back (state, output, usage, the changes each
//! proposed). Once a contestant has completed, a person may pick it as the winner:
//! `arena.winner_picked`, written with the row in one transaction, conditional on no
//! winner yet, so an arena is decided once.
//!
//! Only [`ArenaStore::create`] makes a task part of an arena: a submission naming an
//! `arena_id` of its own is refused, so an arena's contestants are exactly the tasks it
//! was created with.
//!
//! Events: stream type [`STREAM_TYPE`], stream id the arena's id, kinds `arena.created`
//! (version 1) and `arena.winner_picked` (version 2); their JSON is in
//! `docs/events.md`.

mod store;

pub use store::{ArenaStore, MAX_LIST};

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::{
    ArenaId, Error, TaskId,
    error::Result,
    event::Usage,
    task::{NewTask, NewTaskRequest, TaskDetails, TaskState},
    time::Timestamp,
};

/// The stream type of arena events.
pub const STREAM_TYPE: &str = "arena";
/// The fewest contestants of an arena: one is not a comparison.
pub const MIN_CONTESTANTS: usize = 2;
/// The most contestants of an arena.
pub const MAX_CONTESTANTS: usize = 16;

/// The session of contestant `i` of arena `id`: one per contestant, so contestants
/// never share a transcript, and never wait for each other (a session runs one turn at
/// a time).
pub fn contestant_session(id: ArenaId, i: usize) -> String {
    format!("arena-{id}-{i}")
}

/// The events of an arena's stream.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind")]
pub enum ArenaEvent {
    #[serde(rename = "arena.created")]
    Created(Box<ArenaCreated>),
    #[serde(rename = "arena.winner_picked")]
    WinnerPicked(WinnerPicked),
}

/// The data of `arena.created`: the arena as validated, and its contestants' tasks in
/// the contestants' order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ArenaCreated {
    pub project: String,
    pub queue: String,
    pub input: Value,
    pub priority: i32,
    pub max_attempts: i32,
    pub contestants: Vec<Contestant>,
    pub task_ids: Vec<TaskId>,
    /// The repository every contestant works in (a worktree each).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repo: Option<String>,
}

/// The data of `arena.winner_picked`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WinnerPicked {
    pub task_id: TaskId,
    /// Who picked it: the name of their token.
    pub by: String,
}

impl ArenaEvent {
    pub fn kind(&self) -> &'static str {
        match self {
            ArenaEvent::Created(_) => "arena.created",
            ArenaEvent::WinnerPicked(_) => "arena.winner_picked",
        }
    }

    /// The event's kind and its data (the JSON object without `kind`), as the `events`
    /// table stores them.
    pub fn to_parts(&self) -> (&'static str, Value) {
        let mut value = serde_json::to_value(self)
            .unwrap_or_else(|e| unreachable!("arena events always serialise: {e}"));
        if let Some(object) = value.as_object_mut() {
            object.remove("kind");
        }
        (self.kind(), value)
    }

    /// The inverse of [`ArenaEvent::to_parts`].
    pub fn from_parts(kind: &str, data: &Value) -> std::result::Result<ArenaEvent, String> {
        let mut object = data
            .as_object()
            .cloned()
            .ok_or_else(|| format!("event data of {kind} is not a JSON object"))?;
        object.insert("kind".into(), Value::String(kind.into()));
        serde_json::from_value(Value::Object(object))
            .map_err(|e| format!("event {kind} does not parse: {e}"))
    }
}

/// One contestant as a submitter sends it.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct ContestantRequest {
    /// The agent that runs this contestant's task: `script` or a registered agent.
    #[cfg_attr(
        feature = "openapi",
        schema(required = true, nullable = false, pattern = "^[A-Za-z0-9_.-]{1,64}$")
    )]
    pub agent: Option<String>,
    /// The model the agent should use, if it takes one.
    pub model: Option<String>,
    /// Any other field: refused by [`NewArenaRequest::validate`] (see
    /// `NewTaskRequest::unknown` for why not `deny_unknown_fields`).
    #[serde(flatten)]
    #[cfg_attr(feature = "openapi", schema(ignore))]
    pub unknown: BTreeMap<String, Value>,
}

/// An arena as a submitter sends it: `POST /v1/arenas`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct NewArenaRequest {
    /// What every contestant gets, as a task's input: a prompt string or any JSON value
    /// the agents understand (not null, not blank; at most 1 MiB as JSON).
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub input: Value,
    /// 2 to 16 contestants; the same agent may run more than once (another model, or
    /// the same one again to see how much it varies).
    #[serde(default)]
    #[cfg_attr(
        feature = "openapi",
        schema(required = true, min_items = 2, max_items = 16)
    )]
    pub contestants: Vec<ContestantRequest>,
    /// Default `default`; the contestants' tasks are in it.
    pub project: Option<String>,
    /// Default `default`; the contestants' tasks run on it.
    #[cfg_attr(feature = "openapi", schema(pattern = "^[A-Za-z0-9_.-]{1,64}$"))]
    pub queue: Option<String>,
    /// Each contestant's task's priority: -1000 to 1000, default 0.
    #[cfg_attr(feature = "openapi", schema(minimum = -1000, maximum = 1000))]
    pub priority: Option<i32>,
    /// Each contestant's task's attempts: 1 to 100, default 3.
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 100))]
    pub max_attempts: Option<i32>,
    /// A git repository on the worker hosts: each contestant works in a worktree of its
    /// own (its session's), so their changes can be compared, the winner's applied and
    /// the others' rejected.
    pub repo: Option<String>,
    /// Any other field: refused by [`NewArenaRequest::validate`].
    #[serde(flatten)]
    #[cfg_attr(feature = "openapi", schema(ignore))]
    pub unknown: BTreeMap<String, Value>,
}

/// A validated contestant: what the arena's `contestants` column and its
/// `arena.created` event hold.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Contestant {
    pub agent: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

/// A validated arena: its id, and the task of each contestant, in order.
#[derive(Clone, Debug)]
pub struct NewArena {
    id: ArenaId,
    created: ArenaCreated,
    tasks: Vec<NewTask>,
}

impl NewArena {
    pub fn id(&self) -> ArenaId {
        self.id
    }

    pub fn contestants(&self) -> &[Contestant] {
        &self.created.contestants
    }

    /// The task of each contestant, in the contestants' order.
    pub fn tasks(&self) -> &[NewTask] {
        &self.tasks
    }
}

fn unknown_fields(what: &str, unknown: &BTreeMap<String, Value>) -> Option<String> {
    if unknown.is_empty() {
        return None;
    }
    let names: Vec<String> = unknown.keys().map(|k| format!("`{k}`")).collect();
    Some(format!(
        "unknown field{} {}: {what} has no such field (a typo?)",
        if names.len() == 1 { "" } else { "s" },
        names.join(", ")
    ))
}

impl NewArenaRequest {
    /// Checks every rule and fills in the defaults: the shared fields by the rules of a
    /// task's, then each contestant's task by every rule of a task
    /// ([`NewTaskRequest::validate`]), its message naming the contestant.
    pub fn validate(self, now: Timestamp) -> Result<NewArena> {
        if let Some(message) = unknown_fields("an arena", &self.unknown) {
            return Err(Error::Invalid(message));
        }
        let n = self.contestants.len();
        if !(MIN_CONTESTANTS..=MAX_CONTESTANTS).contains(&n) {
            return Err(Error::Invalid(format!(
                "an arena needs {MIN_CONTESTANTS} to {MAX_CONTESTANTS} contestants; this one has {n}"
            )));
        }
        // The fields every contestant shares, once, so that their errors name no
        // contestant.
        let shared = NewTaskRequest {
            input: self.input,
            project: self.project,
            queue: self.queue,
            priority: self.priority,
            max_attempts: self.max_attempts,
            ..Default::default()
        }
        .validate(now)?;
        let id = ArenaId::new();
        let mut contestants = Vec::with_capacity(n);
        let mut tasks = Vec::with_capacity(n);
        for (i, c) in self.contestants.into_iter().enumerate() {
            let at = |message: String| Error::Invalid(format!("contestants[{i}]: {message}"));
            if let Some(message) = unknown_fields("a contestant (`agent`, `model`)", &c.unknown) {
                return Err(at(message));
            }
            let Some(agent) = c.agent else {
                return Err(at("agent is required".into()));
            };
            let task = NewTaskRequest {
                input: shared.input.clone(),
                project: Some(shared.project.clone()),
                queue: Some(shared.queue.clone()),
                priority: Some(shared.priority),
                max_attempts: Some(shared.max_attempts),
                agent: Some(agent),
                details: TaskDetails {
                    model: c.model,
                    session_id: Some(contestant_session(id, i)),
                    arena_id: Some(id.0),
                    repo: self.repo.clone(),
                    ..Default::default()
                },
                run_at: Some(shared.run_at),
                ..Default::default()
            }
            .validate(now)
            .map_err(|e| at(e.to_string()))?;
            contestants.push(Contestant {
                agent: task.agent.clone(),
                model: task.details.model.clone(),
            });
            tasks.push(task);
        }
        Ok(NewArena {
            id,
            created: ArenaCreated {
                project: shared.project,
                queue: shared.queue,
                input: shared.input,
                priority: shared.priority,
                max_attempts: shared.max_attempts,
                contestants,
                // Known once the tasks are given ids, in the store.
                task_ids: Vec::new(),
                repo: self.repo,
            },
            tasks,
        })
    }
}

/// A person's pick: `POST /v1/arenas/{id}/winner`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WinnerRequest {
    /// The contestant's task; it must have completed.
    pub task_id: Uuid,
    /// Also reject the other contestants' pending changes (the winner's stay pending,
    /// to be applied with `POST /v1/sessions/{project}/{session}/changes/apply`).
    #[serde(default)]
    pub reject_others: bool,
}

/// How many of the changes a contestant proposed (`pending_changes`) are in each
/// status.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ChangeCounts {
    pub pending: i64,
    pub applied: i64,
    pub rejected: i64,
    pub reverted: i64,
}

impl ChangeCounts {
    pub fn total(&self) -> i64 {
        self.pending + self.applied + self.rejected + self.reverted
    }
}

/// One contestant as the arena shows it: its task, how it went, and what it cost.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ContestantView {
    pub task_id: TaskId,
    pub agent: String,
    pub model: Option<String>,
    pub state: TaskState,
    /// In lists, cut to 1,000 characters (then `output_truncated` is true).
    pub output_summary: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub output_truncated: bool,
    pub last_error: Option<String>,
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime))]
    pub started_at: Option<Timestamp>,
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime))]
    pub ended_at: Option<Timestamp>,
    /// From its (last) start to its end; absent until it has ended.
    pub duration_ms: Option<i64>,
    /// Every attempt's, added up.
    pub usage: Usage,
    pub changes: ChangeCounts,
    /// A person picked this contestant as the arena's winner.
    pub winner: bool,
    /// The contestant's session (`arena-{arena}-{i}`): its transcript, and with a
    /// repository its worktree and changes (`/v1/sessions/{project}/{session}/changes`).
    pub session_id: Option<String>,
}

/// An arena and its contestants, in the order they were submitted.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ArenaView {
    pub id: ArenaId,
    pub project: String,
    pub queue: String,
    /// In lists, an input over 1 KiB (as JSON text) is a preview string of its first
    /// 1,000 characters and `input_truncated` is true; `GET /v1/arenas/{id}` has it
    /// whole.
    pub input: Value,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub input_truncated: bool,
    pub contestants: Vec<ContestantView>,
    /// Every contestant's task has ended (completed, failed or cancelled).
    pub ended: bool,
    pub winner_task_id: Option<TaskId>,
    /// Who picked the winner: the name of their token.
    pub decided_by: Option<String>,
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime))]
    pub decided_at: Option<Timestamp>,
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub created_at: Timestamp,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn request(body: Value) -> Result<NewArena> {
        serde_json::from_value::<NewArenaRequest>(body)
            .map_err(|e| Error::Invalid(e.to_string()))?
            .validate(crate::time::now())
    }

    fn contestants(n: usize) -> Value {
        Value::Array((0..n).map(|_| json!({"agent": "script"})).collect())
    }

    #[test]
    fn each_contestant_gets_a_task_of_its_own_in_its_own_session() {
        let arena = request(json!({
            "input": {"prompt": "fix the bug"}, "project": "p", "queue": "q", "priority": 5,
            "contestants": [{"agent": "script"}, {"agent": "claude", "model": "opus"}],
        }))
        .unwrap();
        let id = arena.id();
        assert_eq!(arena.tasks().len(), 2);
        for (i, task) in arena.tasks().iter().enumerate() {
            assert_eq!(task.input, json!({"prompt": "fix the bug"}));
            assert_eq!((task.project.as_str(), task.queue.as_str()), ("p", "q"));
            assert_eq!((task.priority, task.max_attempts), (5, 3));
            assert_eq!(task.details.arena_id, Some(id.0));
            assert_eq!(
                task.details.session_id.as_deref(),
                Some(format!("arena-{id}-{i}").as_str())
            );
        }
        assert_eq!(arena.tasks()[1].agent, "claude");
        assert_eq!(arena.tasks()[1].details.model.as_deref(), Some("opus"));
        assert_eq!(
            serde_json::to_value(arena.contestants()).unwrap(),
            json!([{"agent": "script"}, {"agent": "claude", "model": "opus"}])
        );
    }

    #[test]
    fn bad_arenas_say_what_is_wrong() {
        let cases = [
            (
                json!({"input": "x", "contestants": contestants(1)}),
                "2 to 16 contestants; this one has 1",
            ),
            (
                json!({"input": "x", "contestants": contestants(17)}),
                "this one has 17",
            ),
            (json!({"input": "x"}), "this one has 0"),
            (
                json!({"input": " ", "contestants": contestants(2)}),
                "input must not be empty",
            ),
            (json!({"contestants": contestants(2)}), "input is required"),
            (
                json!({"input": "x", "contestants": contestants(2), "prority": 1}),
                "unknown field `prority`: an arena has no such field",
            ),
            (
                json!({"input": "x", "contestants": contestants(2), "priority": 5000}),
                "priority 5000 is out of range",
            ),
            (
                json!({"input": "x", "contestants": contestants(2), "queue": "a b"}),
                "queue \"a b\"",
            ),
            (
                json!({"input": "x", "contestants": [{"agent": "script"}, {"model": "m"}]}),
                "contestants[1]: agent is required",
            ),
            (
                json!({"input": "x", "contestants": [{"agent": "script"}, {"agent": "a b"}]}),
                "contestants[1]: agent \"a b\" contains ' '",
            ),
            (
                json!({"input": "x", "contestants": [{"agent": "script", "model": " "}, {"agent": "script"}]}),
                "contestants[0]: model must not be empty",
            ),
            (
                json!({"input": "x", "contestants": [{"agent": "script", "modle": "m"}, {"agent": "script"}]}),
                "contestants[0]: unknown field `modle`",
            ),
        ];
        for (body, expected) in cases {
            let err = request(body.clone()).unwrap_err().to_string();
            assert!(err.contains(expected), "{body}: {err:?} lacks {expected:?}");
        }
    }

    #[test]
    fn events_round_trip_through_their_stored_parts() {
        let created = ArenaEvent::Created(Box::new(ArenaCreated {
            project: "p".into(),
            queue: "q".into(),
            input: json!("x"),
            priority: 0,
            max_attempts: 3,
            contestants: vec![Contestant {
                agent: "a".into(),
                model: None,
            }],
            task_ids: vec![TaskId::new()],
            repo: Some("/srv/repos/shop".into()),
        }));
        let picked = ArenaEvent::WinnerPicked(WinnerPicked {
            task_id: TaskId::new(),
            by: "alice".into(),
        });
        for event in [created, picked] {
            let (kind, data) = event.to_parts();
            assert!(data.get("kind").is_none());
            assert_eq!(ArenaEvent::from_parts(kind, &data).unwrap(), event);
        }
    }
}

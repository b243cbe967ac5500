//! The task state machine. `docs/state-machine.md` draws it; the `tasks_*_chk` CHECK
//! constraints in the database enforce the same rules on the rows.

use sea_orm::{DeriveActiveEnum, EnumIter};
use serde::{Deserialize, Serialize};
use std::{fmt, str::FromStr};

use crate::event::TaskEvent;

/// Where a task is in its life.
///
/// Also the type of `tasks.state`: a `text` column whose CHECK (`tasks_state_chk`)
/// allows exactly these names, so queries compare the column with a `TaskState`, never
/// with a name spelled out. The name is the same in JSON, in the column and in
/// `TaskState::as_str`; a test holds the three together.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, EnumIter, DeriveActiveEnum,
)]
#[serde(rename_all = "lowercase")]
#[sea_orm(rs_type = "String", db_type = "Text", rename_all = "lowercase")]
pub enum TaskState {
    /// Waiting to run: submitted, retrying after a failure (once `run_at` is due),
    /// approved after a block, or retried by hand. `queued_at` says whether the
    /// dispatcher has handed it to Redis yet.
    Pending,
    /// Claimed by a worker, which holds a lease on it and runs the turn now.
    Running,
    /// The turn finished and produced its output. Final.
    Completed,
    /// The turn failed for good: a fatal error, or retryable errors until
    /// `max_attempts` were spent. Shows in the human inbox; a manual retry re-opens it.
    Failed,
    /// The agent waits for a person. Shows in the human inbox; approval re-opens it.
    Blocked,
    /// Cancelled by a person before it finished. Final.
    Cancelled,
}

impl TaskState {
    pub const ALL: [TaskState; 6] = [
        TaskState::Pending,
        TaskState::Running,
        TaskState::Completed,
        TaskState::Failed,
        TaskState::Blocked,
        TaskState::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Pending => "pending",
            TaskState::Running => "running",
            TaskState::Completed => "completed",
            TaskState::Failed => "failed",
            TaskState::Blocked => "blocked",
            TaskState::Cancelled => "cancelled",
        }
    }

    /// No event moves a task out of a final state.
    pub fn is_final(self) -> bool {
        matches!(self, TaskState::Completed | TaskState::Cancelled)
    }

    /// The state after `event`, or `None` when the machine has no such transition.
    /// This is the one transition function: the stores call it before every write
    /// and the projection rebuild calls it for every event it folds.
    pub fn after(self, event: &TaskEvent) -> Option<TaskState> {
        use TaskEvent as E;
        use TaskState::*;
        match (self, event) {
            (_, E::Submitted(_)) => None,
            (Pending, E::Queued(_)) => Some(Pending),
            (Pending, E::Started(_)) => Some(Running),
            (Running, E::Output(_)) => Some(Running),
            (Running, E::Completed(_)) => Some(Completed),
            (Running, E::Retrying(_)) => Some(Pending),
            // Running: the turn failed.
            // Pending: it can never start (its claim is refused by Postgres for a
            // reason that will not go away). Blocked: its request's deadline passed
            // and the request says to fail.
            (Pending | Running | Blocked, E::Failed(_)) => Some(Failed),
            (Running, E::Blocked(_)) => Some(Blocked),
            (Running, E::LeaseLost(e)) => Some(if e.failed { Failed } else { Pending }),
            (Running, E::Released(_)) => Some(Pending),
            (Pending | Running | Blocked, E::Cancelled(_)) => Some(Cancelled),
            (Blocked, E::Approved(_) | E::Responded(_)) => Some(Pending),
            (Failed, E::Retried(_)) => Some(Pending),
            _ => None,
        }
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TaskState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TaskState::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown task state {s:?}: expected one of {}",
                    TaskState::ALL.map(TaskState::as_str).join(", ")
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::tests::one_of_each_kind;

    /// Every (state, event) pair, against the table in docs/state-machine.md.
    #[test]
    fn every_state_and_event_pair_follows_the_documented_table() {
        use TaskState::*;
        for state in TaskState::ALL {
            for event in one_of_each_kind() {
                let expected = match (state, event.kind()) {
                    (Pending, "task.queued") => Some(Pending),
                    (Pending, "task.started") => Some(Running),
                    (Running, "task.output") => Some(Running),
                    (Running, "task.completed") => Some(Completed),
                    (Running, "task.retrying") => Some(Pending),
                    (Pending | Running | Blocked, "task.failed") => Some(Failed),
                    (Running, "task.blocked") => Some(Blocked),
                    (Running, "task.lease_lost") => Some(Pending),
                    (Running, "task.released") => Some(Pending),
                    (Pending | Running | Blocked, "task.cancelled") => Some(Cancelled),
                    (Blocked, "task.approved" | "task.responded") => Some(Pending),
                    (Failed, "task.retried") => Some(Pending),
                    _ => None,
                };
                assert_eq!(state.after(&event), expected, "{state} + {}", event.kind());
            }
        }
    }

    #[test]
    fn final_states_accept_no_event() {
        for state in [TaskState::Completed, TaskState::Cancelled] {
            assert!(state.is_final());
            for event in one_of_each_kind() {
                assert_eq!(state.after(&event), None, "{state} + {}", event.kind());
            }
        }
    }

    /// The name of a state in JSON (the API, `TaskFilter`), in `tasks.state` and in
    /// messages is one name.
    #[test]
    fn each_state_has_one_name_in_json_in_the_column_and_in_text() {
        use sea_orm::{ActiveEnum, Iterable};
        assert_eq!(TaskState::iter().collect::<Vec<_>>(), TaskState::ALL);
        for state in TaskState::ALL {
            assert_eq!(serde_json::to_value(state).unwrap(), state.as_str());
            assert_eq!(state.to_value(), state.as_str());
            assert_eq!(
                TaskState::try_from_value(&state.as_str().into()).unwrap(),
                state
            );
            assert_eq!(state.to_string(), state.as_str());
        }
    }

    #[test]
    fn states_round_trip_through_their_names() {
        for state in TaskState::ALL {
            assert_eq!(state.as_str().parse::<TaskState>(), Ok(state));
        }
        assert!(
            "done"
                .parse::<TaskState>()
                .unwrap_err()
                .contains("expected one of")
        );
    }
}

//! What the dispatcher hands to workers, and where. Plain data: the Redis client lives in
//! the API (which pushes) and the worker (which consumes), never here.
//!
//! Every task goes onto the apalis queue of its (queue, agent) pair,
//! [`RedisNames::agent_queue`] (`{prefix}:q:{queue}:{agent}`); a worker consumes the pairs
//! of its `--queues` and of the agents it runs (and probed successfully at start).

use serde::{Deserialize, Serialize};

use crate::TaskId;

/// One delivery: the tasks it carries, each at the attempt it had when pushed. It
/// carries no task data: the worker reads the tasks from Postgres when it claims them,
/// so Redis never holds anything that is not also there.
///
/// Usually one task. When a backlog builds up, the dispatcher packs several tasks of one
/// (queue, agent) pair into a job, so Redis handles one job (push, fetch, acknowledge)
/// per several tasks and the worker claims them in one statement; an idle fleet still
/// gets each task in a job of its own, at once.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "JobWire")]
pub struct Job {
    pub tasks: Vec<JobTask>,
}

/// What a job may look like in Redis: jobs pushed by turnq before jobs carried several
/// tasks were one task's fields, and may still wait in a queue across an upgrade.
#[derive(Deserialize)]
#[serde(untagged)]
enum JobWire {
    Tasks { tasks: Vec<JobTask> },
    One(JobTask),
}

impl From<JobWire> for Job {
    fn from(wire: JobWire) -> Job {
        match wire {
            JobWire::Tasks { tasks } => Job { tasks },
            JobWire::One(task) => Job { tasks: vec![task] },
        }
    }
}

/// One task of a [`Job`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct JobTask {
    pub task_id: TaskId,
    /// The attempts the task had made when it was pushed. The claim succeeds only if the
    /// task is still pending at this attempt, so a stale or duplicate job does nothing.
    pub attempt: i32,
}

impl Job {
    /// A job of one task.
    pub fn one(task_id: TaskId, attempt: i32) -> Job {
        Job {
            tasks: vec![JobTask { task_id, attempt }],
        }
    }
}

/// Names of everything turnq keeps in Redis, all under one prefix, so several
/// deployments (or test runs) share a Redis without seeing each other's keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisNames {
    prefix: String,
}

/// The agent name of a (queue, agent) pair pinned to `host`: the Redis queue from which
/// only that host's workers take the tasks whose session's worktree lives there. `@`
/// never appears in an agent's own name, so a pinned pair never meets a real agent.
pub fn pinned_agent(agent: &str, host: &str) -> String {
    format!("{agent}@{host}")
}

impl RedisNames {
    pub fn new(prefix: impl Into<String>) -> Self {
        RedisNames {
            prefix: prefix.into(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The apalis queue of the tasks of `agent` in the turnq queue `queue`:
    /// `{prefix}:q:{queue}:{agent}`. Delivery is by (queue, agent) so that a worker only
    /// receives work for the agents it runs. Queue and agent names are
    /// `[A-Za-z0-9_.-]{1,64}` (no `:`), so no two pairs share a name.
    pub fn agent_queue(&self, queue: &str, agent: &str) -> String {
        format!("{}:q:{queue}:{agent}", self.prefix)
    }

    /// The pub/sub channel the dispatcher publishes on after it pushes jobs for (`queue`,
    /// `agent`): workers consuming that queue fetch at once instead of at their next poll.
    pub fn wake_channel(&self, queue: &str, agent: &str) -> String {
        format!("{}:wake:{queue}:{agent}", self.prefix)
    }

    /// A random value the dispatcher writes once and checks every round: when it is gone
    /// or changed, Redis lost its data (flushed, or restarted without persistence) and
    /// every task Postgres says is queued is pushed again.
    pub fn epoch(&self) -> String {
        format!("{}:epoch", self.prefix)
    }

    /// The pattern that matches every key under the prefix (for SCAN).
    pub fn pattern(&self) -> String {
        format!("{}:*", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_read_both_the_packed_and_the_older_one_task_form() {
        let id = TaskId::new();
        let packed = serde_json::to_value(Job::one(id, 2)).unwrap();
        assert_eq!(
            packed,
            serde_json::json!({"tasks": [{"task_id": id, "attempt": 2}]})
        );
        let back: Job = serde_json::from_value(packed).unwrap();
        assert_eq!(back, Job::one(id, 2));
        let older: Job =
            serde_json::from_value(serde_json::json!({"task_id": id, "attempt": 2})).unwrap();
        assert_eq!(older, Job::one(id, 2));
        assert!(serde_json::from_value::<Job>(serde_json::json!({"tasks": "x"})).is_err());
    }
}

//! What the dispatcher hands to workers, and where. Plain data: the Redis client lives in
//! the API (which pushes) and the worker (which consumes), never here.
//!
//! Every task goes onto the apalis queue of its (queue, agent) pair,
//! [`RedisNames::agent_queue`] (`{prefix}:q:{queue}:{agent}`); a worker consumes the pairs
//! of its `--queues` and of the agents it runs (and probed successfully at start).

use serde::{Deserialize, Serialize};

use crate::TaskId;

/// One delivery of a task. It carries no task data: the worker reads the task from
/// Postgres when it claims it, so Redis never holds anything that is not also there.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    pub task_id: TaskId,
    /// The attempts the task had made when it was pushed. The claim succeeds only if the
    /// task is still pending at this attempt, so a stale or duplicate job does nothing.
    pub attempt: i32,
}

/// Names of everything turnq keeps in Redis, all under one prefix, so several
/// deployments (or test runs) share a Redis without seeing each other's keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisNames {
    prefix: String,
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

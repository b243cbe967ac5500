//! The Postgres [`SubTasks`]: creates a turn's sub-tasks through the core's task store.
//! Kept apart from the backends, which never know Postgres.

use futures::{FutureExt, future::BoxFuture};
use sea_orm::DatabaseConnection;
use serde_json::json;
use turnq_core::{
    Error, TaskId,
    task::{NewTaskRequest, Task, TaskStore},
};

use super::{SubTasks, TurnError};

/// Sub-tasks written to Postgres, as the parent's worker.
#[derive(Clone, Debug)]
pub struct PgSubTasks {
    db: DatabaseConnection,
}

impl PgSubTasks {
    pub fn new(db: DatabaseConnection) -> Self {
        PgSubTasks { db }
    }
}

impl SubTasks for PgSubTasks {
    fn spawn<'a>(
        &'a self,
        parent: &'a Task,
        children: Vec<NewTaskRequest>,
    ) -> BoxFuture<'a, Result<Vec<TaskId>, TurnError>> {
        async move {
            let metadata = json!({"actor": "worker", "parent_task_id": parent.id});
            match TaskStore::submit_children(&self.db, parent, children, &metadata).await {
                Ok(tasks) => Ok(tasks.into_iter().map(|t| t.id).collect()),
                // A child that breaks a rule fails the same way every time.
                Err(
                    e @ (Error::Invalid(_)
                    | Error::NotFound(_)
                    | Error::IdempotencyKeyReused { .. }),
                ) => Err(TurnError::fatal(format!("creating sub-tasks: {e}"))),
                Err(e) => Err(TurnError::retryable(format!(
                    "creating sub-tasks: {}",
                    turnq_core::error::chain(&e)
                ))),
            }
        }
        .boxed()
    }
}

//! Reading tasks and their events.

use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};

use super::{TaskStore, stream_of};
use crate::{
    Error, StreamVersion, TaskId,
    entity::tasks::{self, Column},
    error::Result,
    event::{EventStore, RecordedEvent},
    task::{Task, TaskState},
};

/// Filters of `GET /v1/tasks`; every one given must match.
#[derive(Clone, Debug, Default)]
pub struct TaskFilter {
    pub states: Vec<TaskState>,
    pub agent: Option<String>,
    pub project: Option<String>,
    pub queue: Option<String>,
}

/// One page of tasks, newest first.
#[derive(Debug)]
pub struct TaskPage {
    pub tasks: Vec<Task>,
    /// Pass as `cursor` to get the next page; `None` on the last page.
    pub next_cursor: Option<TaskId>,
}

impl TaskStore {
    pub async fn get<C: ConnectionTrait>(db: &C, id: TaskId) -> Result<Task> {
        tasks::Entity::find_by_id(id.0)
            .one(db)
            .await?
            .ok_or(Error::TaskNotFound(id))
            .and_then(Task::try_from)
    }

    /// Tasks newest first, `limit` at a time, after `cursor` (the last id of the previous
    /// page). Ids are UUIDv7, so id order is creation order.
    pub async fn list<C: ConnectionTrait>(
        db: &C,
        filter: &TaskFilter,
        cursor: Option<TaskId>,
        limit: u64,
    ) -> Result<TaskPage> {
        let mut query = tasks::Entity::find();
        if !filter.states.is_empty() {
            query = query.filter(Column::State.is_in(filter.states.iter().map(|s| s.as_str())));
        }
        if let Some(agent) = &filter.agent {
            query = query.filter(Column::Agent.eq(agent.as_str()));
        }
        if let Some(project) = &filter.project {
            query = query.filter(Column::Project.eq(project.as_str()));
        }
        if let Some(queue) = &filter.queue {
            query = query.filter(Column::Queue.eq(queue.as_str()));
        }
        if let Some(cursor) = cursor {
            query = query.filter(Column::Id.lt(cursor.0));
        }
        let mut rows = query
            .order_by_desc(Column::Id)
            .limit(limit + 1)
            .all(db)
            .await?;
        let more = rows.len() as u64 > limit;
        rows.truncate(limit as usize);
        let tasks = rows
            .into_iter()
            .map(Task::try_from)
            .collect::<Result<Vec<_>>>()?;
        let next_cursor = if more {
            tasks.last().map(|t| t.id)
        } else {
            None
        };
        Ok(TaskPage { tasks, next_cursor })
    }

    /// The task's events after `after`, oldest first.
    pub async fn events<C: ConnectionTrait>(
        db: &C,
        id: TaskId,
        after: StreamVersion,
        limit: u64,
    ) -> Result<Vec<RecordedEvent>> {
        let events = EventStore::read_stream(db, &stream_of(id), after, limit).await?;
        if events.is_empty() && after == StreamVersion::NEW {
            // Every task has its `task.submitted`; no events means no task.
            Self::get(db, id).await?;
        }
        Ok(events)
    }
}

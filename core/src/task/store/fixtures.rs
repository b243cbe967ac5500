//! What the store's tests share: tasks in a given state, made through the store itself
//! (never by writing rows behind its back), and ways to look at what it wrote.

use std::time::Duration;

use anyhow::{Context, Result};
use sea_orm::{DatabaseConnection, EntityTrait, PaginatorTrait};
use serde_json::{Value, json};

use super::TaskStore;
use crate::{
    StreamVersion, TaskId, WorkerId,
    entity::{events, tasks},
    event::{Blocked, Completed, Failed, TaskEvent, TaskFailure, Usage},
    task::{NewTask, NewTaskRequest, Task},
    time,
};

/// A lease long enough that no test sees it run out unless it asks for that.
pub(super) const LEASE: Duration = Duration::from_secs(3600);

pub(super) fn meta() -> Value {
    json!({"actor": "test"})
}

pub(super) fn worker(name: &str) -> WorkerId {
    WorkerId(name.into())
}

/// A validated submission from its JSON, as the API would get it.
pub(super) fn new_task(body: Value) -> NewTask {
    serde_json::from_value::<NewTaskRequest>(body)
        .expect("the test's submission parses")
        .validate(time::now())
        .expect("the test's submission is valid")
}

pub(super) async fn submitted(db: &DatabaseConnection, body: Value) -> Result<Task> {
    Ok(TaskStore::submit(db, new_task(body), &meta()).await?.task)
}

/// A task submitted and claimed by `by`, at attempt 1.
pub(super) async fn running(db: &DatabaseConnection, body: Value, by: &WorkerId) -> Result<Task> {
    let task = submitted(db, body).await?;
    let claimed = TaskStore::claim(db, task.id, task.attempt, by, LEASE, &meta())
        .await?
        .context("a fresh task is claimable")?;
    Ok(claimed.task)
}

pub(super) fn usage() -> Usage {
    Usage::default()
}

pub(super) fn completed(attempt: i32) -> TaskEvent {
    TaskEvent::Completed(Completed {
        attempt,
        output_summary: "done".into(),
        usage: usage(),
    })
}

pub(super) fn failed(attempt: i32) -> TaskEvent {
    TaskEvent::Failed(Failed {
        attempt,
        error: TaskFailure {
            class: crate::event::ErrorClass::Fatal,
            message: "boom".into(),
        },
        usage: usage(),
    })
}

pub(super) fn blocked(attempt: i32) -> TaskEvent {
    TaskEvent::Blocked(Blocked {
        attempt,
        reason: "may I?".into(),
        usage: usage(),
        request: None,
    })
}

/// A block on `request`.
pub(super) fn asking(attempt: i32, request: crate::task::HumanRequest) -> TaskEvent {
    TaskEvent::Blocked(Blocked {
        attempt,
        reason: request.prompt.clone(),
        usage: usage(),
        request: Some(request),
    })
}

/// The kinds of the task's events, oldest first.
pub(super) async fn kinds(db: &DatabaseConnection, id: TaskId) -> Result<Vec<String>> {
    Ok(TaskStore::events(db, id, StreamVersion::NEW, 1000)
        .await?
        .into_iter()
        .map(|e| e.kind)
        .collect())
}

/// The task's row as stored.
pub(super) async fn row(db: &DatabaseConnection, id: TaskId) -> Result<tasks::Model> {
    tasks::Entity::find_by_id(id.0)
        .one(db)
        .await?
        .with_context(|| format!("task {id} has a row"))
}

/// How many rows `tasks` and `events` hold.
pub(super) async fn counts(db: &DatabaseConnection) -> Result<(u64, u64)> {
    Ok((
        tasks::Entity::find().count(db).await?,
        events::Entity::find().count(db).await?,
    ))
}

//! The task store: every write to a task is ONE conditional `UPDATE` of its row plus the
//! append of the event that explains it, in one transaction.
//!
//! The condition is what the writer believes: the stream version it read (API
//! transitions), or the state, attempt and worker it holds (workers). Zero rows updated
//! means someone else moved first, and the write is refused, so a stale worker can never
//! overwrite a newer attempt, and a cancelled task is never completed behind a person's
//! back. The row lock taken by the `UPDATE` serialises writers of one stream, which is
//! what keeps its versions gapless.
//!
//! # Layout
//!
//! The methods of [`TaskStore`] live by who calls them:
//! - `submit`: [`TaskStore::submit`] and [`TaskStore::submit_batch`] (the API).
//! - `read`: [`TaskStore::get`], [`TaskStore::list`] and [`TaskStore::events`].
//! - `transition`: a person's transitions, [`TaskStore::cancel`], [`TaskStore::retry`],
//!   [`TaskStore::approve`] and [`TaskStore::respond`], fenced by the stream version.
//! - `dispatch`: handing due tasks to Redis ([`TaskStore::dispatch_due`]) and counting
//!   what waits there ([`TaskStore::queued_by_pair`]).
//! - `attempt`: a worker's writes to the attempt it runs: claims, records and lease
//!   renewals, fenced by state, attempt and worker.
//! - `recovery`: re-queueing or failing tasks whose lease expired
//!   ([`TaskStore::expire_leases`]).
//! - `waiting`: blocked tasks turnq answers itself: requests past their deadline
//!   ([`TaskStore::expire_requests`]), parents whose sub-tasks all ended
//!   ([`TaskStore::resume_parents`]), and the sub-tasks of a cancelled parent.
//!
//! This file holds what they share: the guarded write, the event row, the lease end and
//! the `NOTIFY` channels.

mod attempt;
mod dispatch;
mod read;
mod recovery;
mod submit;
mod transition;
mod waiting;

use std::time::Duration;

use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, QueryFilter, QueryTrait, SqlErr, sea_query::Query,
};
use serde_json::Value;
use uuid::Uuid;

use crate::{
    Error, StreamVersion, TaskId, WorkerId,
    entity::tasks::{self, Column},
    error::Result,
    event::{EventStore, NewEvent, StreamRef, TaskEvent},
    task::{TaskState, projection},
    time::{self, Timestamp},
};

pub use attempt::{Claimed, Record};
pub use dispatch::DueTask;
pub use read::{SEARCH_WINDOW, TaskFilter, TaskPage};
pub use submit::{MAX_BATCH_KEY_BYTES, Submitted};

fn stream_of(id: TaskId) -> StreamRef {
    StreamRef::new(TaskEvent::STREAM_TYPE, id.to_string())
}

fn event_row(
    id: TaskId,
    version: i64,
    event: &TaskEvent,
    metadata: &Value,
    at: Timestamp,
) -> crate::entity::events::ActiveModel {
    let (kind, data) = event.to_parts();
    EventStore::row(
        &stream_of(id),
        StreamVersion(version),
        NewEvent {
            kind: kind.into(),
            data,
            metadata: metadata.clone(),
        },
        at,
    )
}

/// Applies `event` to the task's row if `guard` holds, and appends it. `None` when the
/// guard did not hold (nothing was written).
async fn write<C: ConnectionTrait>(
    db: &C,
    id: TaskId,
    guard: Condition,
    event: &TaskEvent,
    metadata: &Value,
    at: Timestamp,
) -> Result<Option<tasks::Model>> {
    let updated = projection::update(event, at)
        .filter(Column::Id.eq(id.0))
        .filter(guard)
        .exec_with_returning(db)
        .await?;
    let Some(row) = updated.into_iter().next() else {
        return Ok(None);
    };
    EventStore::insert(db, vec![event_row(id, row.version, event, metadata, at)]).await?;
    Ok(Some(row))
}

/// What the hot paths read back from an `UPDATE` of tasks.
struct Changed {
    id: Uuid,
    version: i64,
    session_id: Option<String>,
    queue: String,
}

/// Runs `update` and returns the few columns of each changed row that the hot paths
/// need. Reading whole rows back (their JSON input included) was a large share of the
/// cost of a group commit.
async fn update_returning_keys<C: ConnectionTrait>(
    db: &C,
    update: sea_orm::UpdateMany<tasks::Entity>,
) -> Result<Vec<Changed>> {
    let mut statement = update.into_query();
    statement.returning(Query::returning().columns([
        Column::Id,
        Column::Version,
        Column::SessionId,
        Column::Queue,
    ]));
    db.query_all(&statement)
        .await?
        .iter()
        .map(|row| {
            Ok(Changed {
                id: row.try_get("", "id")?,
                version: row.try_get("", "version")?,
                session_id: row.try_get("", "session_id")?,
                queue: row.try_get("", "queue")?,
            })
        })
        .collect()
}

/// When a lease taken (or renewed) at `at` for `lease` runs out, at the precision the
/// database stores.
fn lease_end(at: Timestamp, lease: Duration) -> Timestamp {
    time::truncate(at + chrono::TimeDelta::from_std(lease).unwrap_or(chrono::TimeDelta::MAX))
}

fn worker_guard(attempt: i32, worker: &WorkerId) -> Condition {
    Condition::all()
        .add(Column::State.eq(TaskState::Running))
        .add(Column::Attempt.eq(attempt))
        .add(Column::WorkerId.eq(worker.0.as_str()))
}

fn is_unique_violation(e: &Error) -> bool {
    matches!(e, Error::Database(db) if matches!(db.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))))
}

/// The channel the dispatcher LISTENs on: a task became due (inserted, or a session's
/// running turn ended so its next turn may start).
pub const CHANNEL_TASKS_NEW: &str = "tasks_new";
/// The channel workers LISTEN on: the payload is the id of a running task that was
/// cancelled, so its worker stops the turn at once instead of at its next write.
pub const CHANNEL_TASK_CANCELLED: &str = "task_cancelled";

use crate::listen::notify;

/// Reads and writes tasks. Stateless: each method takes the connection to use.
pub struct TaskStore;

#[cfg(test)]
mod fixtures;

//! How each task event changes its row in `tasks`: defined once, used twice.
//!
//! The live path turns the changes into one conditional `UPDATE` (so a write never
//! reads the row first); `turnq replay` applies the same changes to rows in memory.
//! Because both use [`changes`], the projection cannot drift from the log unless
//! someone writes `tasks` behind the store's back, which `replay --verify` reports.

use sea_orm::{
    ActiveModelTrait, ActiveValue, EntityTrait, Set, UpdateMany, Value,
    sea_query::{Expr, ExprTrait},
};

use crate::{
    TaskId,
    entity::tasks::{self, Column},
    event::{TaskEvent, Usage},
    task::{NewTask, TaskState},
    time::Timestamp,
};

/// One column change.
#[derive(Debug, PartialEq)]
pub(crate) enum Change {
    Set(Value),
    AddI64(i64),
    AddI32(i32),
    AddF64(f64),
}

fn set(column: Column, value: impl Into<Value>) -> (Column, Change) {
    (column, Change::Set(value.into()))
}

fn state(state: TaskState) -> (Column, Change) {
    set(Column::State, state)
}

fn null_time(column: Column) -> (Column, Change) {
    set(column, Option::<Timestamp>::None)
}

fn usage(usage: &Usage) -> [(Column, Change); 3] {
    [
        (Column::InputTokens, Change::AddI64(usage.input_tokens)),
        (Column::OutputTokens, Change::AddI64(usage.output_tokens)),
        (Column::CostUsd, Change::AddF64(usage.cost_usd)),
    ]
}

fn json(value: &impl serde::Serialize) -> serde_json::Value {
    serde_json::to_value(value).unwrap_or_else(|e| unreachable!("requests always serialise: {e}"))
}

/// The row a submission creates (stream version 1).
pub(crate) fn new_row(id: TaskId, task: &NewTask, at: Timestamp) -> tasks::ActiveModel {
    let details = task.details.clone();
    tasks::ActiveModel {
        id: Set(id.0),
        project: Set(task.project.clone()),
        parent_task_id: Set(details.parent_task_id),
        arena_id: Set(details.arena_id),
        queue: Set(task.queue.clone()),
        priority: Set(task.priority),
        state: Set(TaskState::Pending),
        input: Set(task.input.clone()),
        output_summary: Set(None),
        agent: Set(task.agent.clone()),
        model: Set(details.model),
        backend: Set(details.backend),
        worktree_path: Set(details.worktree_path),
        session_id: Set(details.session_id),
        chat_id: Set(details.chat_id),
        mode_id: Set(details.mode_id),
        thinking_option_id: Set(details.thinking_option_id),
        feature_values: Set(details.feature_values),
        input_tokens: Set(0),
        output_tokens: Set(0),
        cost_usd: Set(0.0),
        run_at: Set(task.run_at),
        attempt: Set(0),
        max_attempts: Set(task.max_attempts),
        idempotency_key: Set(task.idempotency_key.clone()),
        queued_at: Set(None),
        lease_until: Set(None),
        worker_id: Set(None),
        last_error: Set(None),
        version: Set(1),
        created_at: Set(at),
        started_at: Set(None),
        ended_at: Set(None),
        updated_at: Set(at),
        request: Set(None),
        response: Set(None),
        request_deadline: Set(None),
        repo: Set(details.repo),
    }
}

/// The column changes of every event but `task.submitted` (which creates the row).
/// `version` and `updated_at` change with every event and are not listed here.
pub(crate) fn changes(event: &TaskEvent, at: Timestamp) -> Vec<(Column, Change)> {
    use TaskEvent as E;
    let mut out = Vec::new();
    match event {
        E::Submitted(_) | E::Output(_) => {}
        E::Queued(_) => out.push(set(Column::QueuedAt, Some(at))),
        E::Started(e) => out.extend([
            state(TaskState::Running),
            set(Column::Attempt, e.attempt),
            set(Column::WorkerId, Some(e.worker_id.clone())),
            set(Column::LeaseUntil, Some(e.lease_until)),
            set(Column::StartedAt, Some(at)),
            null_time(Column::QueuedAt),
        ]),
        E::Completed(e) => {
            out.extend([
                state(TaskState::Completed),
                set(Column::OutputSummary, Some(e.output_summary.clone())),
                // An earlier attempt's error is not this task's outcome any more.
                set(Column::LastError, None::<String>),
                set(Column::EndedAt, Some(at)),
                null_time(Column::LeaseUntil),
            ]);
            out.extend(usage(&e.usage));
        }
        E::Retrying(e) => {
            out.extend([
                state(TaskState::Pending),
                set(Column::RunAt, e.run_at),
                set(Column::LastError, Some(e.error.message.clone())),
                null_time(Column::LeaseUntil),
            ]);
            out.extend(usage(&e.usage));
        }
        E::Failed(e) => {
            out.extend([
                state(TaskState::Failed),
                set(Column::LastError, Some(e.error.message.clone())),
                set(Column::EndedAt, Some(at)),
                null_time(Column::LeaseUntil),
                // A pending task that cannot start fails while handed to Redis.
                null_time(Column::QueuedAt),
                // A blocked one whose request's deadline passed.
                null_time(Column::RequestDeadline),
            ]);
            out.extend(usage(&e.usage));
        }
        E::Blocked(e) => {
            out.extend([
                state(TaskState::Blocked),
                set(Column::OutputSummary, Some(e.reason.clone())),
                null_time(Column::LeaseUntil),
                set(Column::Request, e.request.as_ref().map(json)),
                set(Column::Response, None::<serde_json::Value>),
                set(
                    Column::RequestDeadline,
                    e.request.as_ref().and_then(|r| r.deadline),
                ),
            ]);
            out.extend(usage(&e.usage));
        }
        E::LeaseLost(e) => {
            out.extend([
                set(
                    Column::LastError,
                    Some(format!("the lease of worker {} expired", e.worker_id)),
                ),
                null_time(Column::LeaseUntil),
            ]);
            if e.failed {
                out.extend([state(TaskState::Failed), set(Column::EndedAt, Some(at))]);
            } else {
                out.extend([state(TaskState::Pending), set(Column::RunAt, at)]);
            }
        }
        E::Released(_) => out.extend([
            state(TaskState::Pending),
            set(Column::RunAt, at),
            null_time(Column::LeaseUntil),
            (Column::MaxAttempts, Change::AddI32(1)),
        ]),
        E::Cancelled(_) => out.extend([
            state(TaskState::Cancelled),
            set(Column::EndedAt, Some(at)),
            null_time(Column::LeaseUntil),
            null_time(Column::QueuedAt),
            null_time(Column::RequestDeadline),
        ]),
        E::Approved(e) => out.extend([
            state(TaskState::Pending),
            set(Column::MaxAttempts, e.max_attempts),
            set(Column::RunAt, at),
            null_time(Column::QueuedAt),
            null_time(Column::RequestDeadline),
        ]),
        E::Responded(e) => out.extend([
            state(TaskState::Pending),
            set(Column::MaxAttempts, e.max_attempts),
            set(Column::RunAt, at),
            null_time(Column::QueuedAt),
            null_time(Column::RequestDeadline),
            set(Column::Response, Some(json(&e.response))),
        ]),
        E::Retried(e) => out.extend([
            state(TaskState::Pending),
            set(Column::MaxAttempts, e.max_attempts),
            set(Column::RunAt, at),
            null_time(Column::EndedAt),
            null_time(Column::QueuedAt),
        ]),
    }
    out
}

/// True when two change lists set the same columns to the same values, so one
/// `UPDATE` applies either to any set of rows.
pub(crate) fn same_changes(a: &[(Column, Change)], b: &[(Column, Change)]) -> bool {
    use sea_orm::IdenStatic;
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|((ca, xa), (cb, xb))| ca.as_str() == cb.as_str() && xa == xb)
}

/// The live path: `event`'s changes as one `UPDATE` (filters are the caller's).
pub(crate) fn update(event: &TaskEvent, at: Timestamp) -> UpdateMany<tasks::Entity> {
    let mut query = tasks::Entity::update_many()
        .col_expr(Column::Version, Expr::col(Column::Version).add(1))
        .col_expr(Column::UpdatedAt, Expr::val(at));
    for (column, change) in changes(event, at) {
        let expr = match change {
            Change::Set(value) => Expr::val(value),
            Change::AddI64(n) => Expr::col(column).add(n),
            Change::AddI32(n) => Expr::col(column).add(n),
            Change::AddF64(n) => Expr::col(column).add(n),
        };
        query = query.col_expr(column, expr);
    }
    query
}

/// The replay path: `event`'s changes applied to a row in memory.
pub(crate) fn apply(row: &mut tasks::ActiveModel, event: &TaskEvent, version: i64, at: Timestamp) {
    for (column, change) in changes(event, at) {
        let value = match (change, current(row, column)) {
            (Change::Set(value), _) => value,
            (Change::AddI64(n), Value::BigInt(Some(v))) => Value::BigInt(Some(v + n)),
            (Change::AddI32(n), Value::Int(Some(v))) => Value::Int(Some(v + n)),
            (Change::AddF64(n), Value::Double(Some(v))) => Value::Double(Some(v + n)),
            // Every numeric column of `tasks` is NOT NULL; a row built by `new_row` has
            // them all set, so an addition always finds a number.
            (_, other) => other,
        };
        row.set(column, value);
    }
    row.set(Column::Version, version.into());
    row.set(Column::UpdatedAt, at.into());
}

fn current(row: &tasks::ActiveModel, column: Column) -> Value {
    match row.get(column) {
        ActiveValue::Set(v) | ActiveValue::Unchanged(v) => v,
        ActiveValue::NotSet => Value::Int(None),
    }
}

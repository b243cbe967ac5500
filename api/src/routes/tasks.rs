//! `/v1/tasks`: submit, read, list, and the transitions a person makes.

use axum::{
    Json,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode},
};
use serde::Deserialize;
use serde_json::{Value, json};
use turnq_core::{
    StreamVersion, TaskId, metrics as names,
    task::{MAX_BATCH, NewTask, NewTaskRequest, Task, TaskFilter, TaskState, TaskStore},
    time,
};

use crate::{
    ApiError, AppState,
    extract::{self, Query, TaskPath},
};

const IDEMPOTENCY_HEADER: &str = "idempotency-key";
const DEFAULT_PAGE: u64 = 50;
const MAX_PAGE: u64 = 500;

fn metadata() -> Value {
    json!({"actor": "api"})
}

/// Counts `task` in the counter `name`, labelled by its queue and agent.
pub(crate) fn count(name: &'static str, task: &Task) {
    metrics::counter!(name, "queue" => task.queue.clone(), "agent" => task.agent.clone())
        .increment(1);
}

/// The `Idempotency-Key` header, which names the task like the body's
/// `idempotency_key`; giving both with different values is an error.
fn idempotency_key(headers: &HeaderMap, body: &mut NewTaskRequest) -> Result<(), ApiError> {
    let Some(value) = headers.get(IDEMPOTENCY_HEADER) else {
        return Ok(());
    };
    let header = value
        .to_str()
        .map_err(|_| ApiError::bad_request("the Idempotency-Key header is not visible ASCII"))?
        .to_owned();
    match &body.idempotency_key {
        Some(key) if *key != header => Err(ApiError::bad_request(
            "the Idempotency-Key header and the body's idempotency_key differ",
        )),
        _ => {
            body.idempotency_key = Some(header);
            Ok(())
        }
    }
}

/// `POST /v1/tasks`: 201 with the new task, or 200 with the existing one when the
/// idempotency key was used before.
pub(super) async fn submit(
    State(state): State<AppState>,
    headers: HeaderMap,
    extract::Json(mut body): extract::Json<NewTaskRequest>,
) -> Result<(StatusCode, Json<Task>), ApiError> {
    idempotency_key(&headers, &mut body)?;
    let task = body.validate(time::now())?;
    let submitted = TaskStore::submit(state.db(), task, &metadata()).await?;
    if submitted.created {
        count(names::TASKS_SUBMITTED, &submitted.task);
    }
    let status = if submitted.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(submitted.task)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct BatchRequest {
    tasks: Vec<NewTaskRequest>,
}

/// `POST /v1/tasks/batch`: up to 1,000 tasks in one transaction, all or nothing.
pub(super) async fn submit_batch(
    State(state): State<AppState>,
    extract::Json(body): extract::Json<BatchRequest>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    if body.tasks.is_empty() {
        return Err(ApiError::bad_request("the batch has no tasks"));
    }
    if body.tasks.len() > MAX_BATCH {
        return Err(ApiError::bad_request(format!(
            "the batch has {} tasks; the limit is {MAX_BATCH}",
            body.tasks.len()
        )));
    }
    let now = time::now();
    let tasks = body
        .tasks
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            t.validate(now)
                .map_err(|e| ApiError::bad_request(format!("tasks[{i}]: {e}")))
        })
        .collect::<Result<Vec<NewTask>, _>>()?;
    let submitted = TaskStore::submit_batch(state.db(), tasks, &metadata()).await?;
    for s in submitted.iter().filter(|s| s.created) {
        count(names::TASKS_SUBMITTED, &s.task);
    }
    let created = submitted.iter().filter(|s| s.created).count();
    let tasks: Vec<Task> = submitted.into_iter().map(|s| s.task).collect();
    Ok((
        StatusCode::CREATED,
        Json(json!({ "created": created, "tasks": tasks })),
    ))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct ListQuery {
    /// One state or several, comma-separated.
    state: Option<String>,
    agent: Option<String>,
    project: Option<String>,
    queue: Option<String>,
    cursor: Option<String>,
    limit: Option<u64>,
}

fn page_limit(limit: Option<u64>) -> Result<u64, ApiError> {
    match limit.unwrap_or(DEFAULT_PAGE) {
        n @ 1..=MAX_PAGE => Ok(n),
        n => Err(ApiError::bad_request(format!(
            "limit {n} is out of range: use 1 to {MAX_PAGE}"
        ))),
    }
}

fn cursor(raw: Option<&str>) -> Result<Option<TaskId>, ApiError> {
    raw.map(|c| {
        c.parse::<TaskId>()
            .map_err(|_| ApiError::bad_request(format!("cursor {c:?} is not one this API gave")))
    })
    .transpose()
}

/// One page of tasks matching `filter`, as `{"tasks": [...], "next_cursor": ...}`.
async fn page(
    state: &AppState,
    filter: &TaskFilter,
    raw_cursor: Option<&str>,
    limit: Option<u64>,
) -> Result<Json<Value>, ApiError> {
    let page = TaskStore::list(state.db(), filter, cursor(raw_cursor)?, page_limit(limit)?).await?;
    Ok(Json(
        json!({ "tasks": page.tasks, "next_cursor": page.next_cursor }),
    ))
}

/// `GET /v1/tasks`: newest first, filtered, a page at a time.
pub(super) async fn list(
    State(state): State<AppState>,
    Query(query): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    let states = match &query.state {
        None => Vec::new(),
        Some(raw) => raw
            .split(',')
            .map(|s| s.trim().parse::<TaskState>().map_err(ApiError::bad_request))
            .collect::<Result<_, _>>()?,
    };
    let filter = TaskFilter {
        states,
        agent: query.agent,
        project: query.project,
        queue: query.queue,
        ..Default::default()
    };
    page(&state, &filter, query.cursor.as_deref(), query.limit).await
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct PageQuery {
    cursor: Option<String>,
    limit: Option<u64>,
}

/// `GET /v1/inbox`: the tasks that wait for a person (blocked or failed).
pub(super) async fn inbox(
    State(state): State<AppState>,
    Query(query): Query<PageQuery>,
) -> Result<Json<Value>, ApiError> {
    let filter = TaskFilter {
        states: vec![TaskState::Blocked, TaskState::Failed],
        ..Default::default()
    };
    page(&state, &filter, query.cursor.as_deref(), query.limit).await
}

/// `GET /v1/tasks/{id}`
pub(super) async fn get(
    State(state): State<AppState>,
    TaskPath(id): TaskPath,
) -> Result<Json<Task>, ApiError> {
    Ok(Json(TaskStore::get(state.db(), id).await?))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct EventsQuery {
    /// Only events with a version above this one.
    after: Option<i64>,
    limit: Option<u64>,
}

/// `GET /v1/tasks/{id}/events`: the task's stream, oldest first.
pub(super) async fn events(
    State(state): State<AppState>,
    TaskPath(id): TaskPath,
    Query(query): Query<EventsQuery>,
) -> Result<Json<Value>, ApiError> {
    let after = StreamVersion(query.after.unwrap_or(0).max(0));
    let limit = match query.limit.unwrap_or(1000) {
        n @ 1..=10_000 => n,
        n => {
            return Err(ApiError::bad_request(format!(
                "limit {n} is out of range: use 1 to 10000"
            )));
        }
    };
    let events = TaskStore::events(state.db(), id, after, limit).await?;
    Ok(Json(json!({ "events": events })))
}

/// An optional JSON body: empty (or `null`) is fine, anything else must parse.
fn optional_body<T: for<'de> Deserialize<'de> + Default>(body: &Bytes) -> Result<T, ApiError> {
    let trimmed = body.trim_ascii();
    if trimmed.is_empty() || trimmed == b"null" {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!(
            "the request body is not valid JSON for this route: {e}"
        ))
    })
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct ReasonBody {
    reason: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct NoteBody {
    note: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct EmptyBody {}

/// `POST /v1/tasks/{id}/cancel` with an optional `{"reason": "…"}`.
pub(super) async fn cancel(
    State(state): State<AppState>,
    TaskPath(id): TaskPath,
    body: Bytes,
) -> Result<Json<Task>, ApiError> {
    let ReasonBody { reason } = optional_body(&body)?;
    let task = TaskStore::cancel(state.db(), id, reason, &metadata()).await?;
    count(names::TASKS_CANCELLED, &task);
    Ok(Json(task))
}

/// `POST /v1/tasks/{id}/retry`: a failed task runs again.
pub(super) async fn retry(
    State(state): State<AppState>,
    TaskPath(id): TaskPath,
    body: Bytes,
) -> Result<Json<Task>, ApiError> {
    let EmptyBody {} = optional_body(&body)?;
    let task = TaskStore::retry(state.db(), id, &metadata()).await?;
    metrics::counter!(names::TASKS_RETRIED, "queue" => task.queue.clone(),
        "agent" => task.agent.clone(), "by" => "person")
    .increment(1);
    Ok(Json(task))
}

/// `POST /v1/tasks/{id}/approve` with an optional `{"note": "…"}`: a blocked task
/// runs again.
pub(super) async fn approve(
    State(state): State<AppState>,
    TaskPath(id): TaskPath,
    body: Bytes,
) -> Result<Json<Task>, ApiError> {
    let NoteBody { note } = optional_body(&body)?;
    Ok(Json(
        TaskStore::approve(state.db(), id, note, &metadata()).await?,
    ))
}

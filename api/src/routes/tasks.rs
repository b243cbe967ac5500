//! `/v1/tasks`: submit, read, list, and the transitions a person makes.

use axum::{
    Json,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode},
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use turnq_core::{
    StreamVersion, TaskId,
    agent::AgentRegistry,
    event::RecordedEvent,
    metrics as names,
    queue::UnservedAgent,
    task::{
        MAX_BATCH, NewTask, NewTaskRequest, ResponseRequest, Task, TaskFilter, TaskPage, TaskState,
        TaskStore,
    },
    time,
};
use utoipa::{IntoParams, ToSchema};

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

/// Counts `task` as retried by a person (through the API or the UI).
pub(crate) fn count_retry_by_person(task: &Task) {
    metrics::counter!(names::TASKS_RETRIED, "queue" => task.queue.clone(),
        "agent" => task.agent.clone(), "by" => "person")
    .increment(1);
}

/// Counts `task` in the counter `name`, labelled by its queue and agent.
pub(crate) fn count(name: &'static str, task: &Task) {
    metrics::counter!(name, "queue" => task.queue.clone(), "agent" => task.agent.clone())
        .increment(1);
}

/// The `Idempotency-Key` header, if given; it must be visible ASCII.
fn idempotency_header(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    headers
        .get(IDEMPOTENCY_HEADER)
        .map(|value| {
            value.to_str().map(str::to_owned).map_err(|_| {
                ApiError::bad_request("the Idempotency-Key header is not visible ASCII")
            })
        })
        .transpose()
}

/// The `Idempotency-Key` header, which names the task like the body's
/// `idempotency_key`; giving both with different values is an error.
fn idempotency_key(headers: &HeaderMap, body: &mut NewTaskRequest) -> Result<(), ApiError> {
    let Some(header) = idempotency_header(headers)? else {
        return Ok(());
    };
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
#[utoipa::path(
    post,
    path = "/v1/tasks",
    tag = "tasks",
    operation_id = "submit_task",
    summary = "Submit a task",
    description = "Scope `submit`. 201 with the new task; 200 with the existing task when \
        its idempotency key (the body's `idempotency_key` or the `Idempotency-Key` header) \
        was used before with the same values; 409 `idempotency_key_reused` when it was used \
        with other values. A bad field is a 400 that names it, and writes nothing.",
    params(("Idempotency-Key" = Option<String>, Header,
        description = "Names the task like the body's `idempotency_key` (visible ASCII); both given must agree.")),
    request_body = NewTaskRequest,
    security(("bearer" = ["submit"])),
    responses(
        (status = 201, description = "The new task.", body = Task),
        (status = 200, description = "The task submitted before with this idempotency key.", body = Task),
        (status = 400, response = crate::openapi::responses::BadRequest),
        (status = 401, response = crate::openapi::responses::Unauthorized),
        (status = 403, response = crate::openapi::responses::Forbidden),
        (status = 409, response = crate::openapi::responses::Conflict),
        (status = 413, response = crate::openapi::responses::PayloadTooLarge),
        (status = 415, response = crate::openapi::responses::UnsupportedMediaType),
        (status = 422, response = crate::openapi::responses::Unprocessable),
        (status = 500, response = crate::openapi::responses::Internal),
        (status = 503, response = crate::openapi::responses::Unavailable),
    ),
)]
pub(super) async fn submit(
    State(state): State<AppState>,
    headers: HeaderMap,
    extract::Json(mut body): extract::Json<NewTaskRequest>,
) -> Result<(StatusCode, Json<Task>), ApiError> {
    idempotency_key(&headers, &mut body)?;
    let task = body.validate(time::now())?;
    AgentRegistry::ensure_known(state.db(), [task.agent.as_str()]).await?;
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

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct BatchRequest {
    /// 1 to 1,000 tasks.
    tasks: Vec<NewTaskRequest>,
}

/// What a batch submission did.
#[derive(Serialize, ToSchema)]
pub(super) struct BatchSubmitted {
    /// How many of the tasks are new (the others had an idempotency key used before).
    created: usize,
    /// Every task of the batch, in the batch's order, as lists show them (large inputs
    /// as previews: `input_truncated`).
    tasks: Vec<Task>,
}

/// `POST /v1/tasks/batch`: up to 1,000 tasks in one transaction, all or nothing.
#[utoipa::path(
    post,
    path = "/v1/tasks/batch",
    tag = "tasks",
    operation_id = "submit_batch",
    summary = "Submit up to 1,000 tasks, all or nothing",
    description = "Scope `submit`. One transaction: a bad task (named by its index) refuses the batch. \
        With an `Idempotency-Key` header the batch is idempotent as a whole: sent again, it creates \
        nothing and answers 200 with the same tasks; the same key with other tasks is a 409 \
        `idempotency_key_reused`.",
    request_body = BatchRequest,
    params(("Idempotency-Key" = Option<String>, Header,
        description = "Names the batch (1 to 250 visible ASCII characters). Task `i` without a key of its own is keyed `{key}#{i}`.")),
    security(("bearer" = ["submit"])),
    responses(
        (status = 201, description = "The batch was stored.", body = BatchSubmitted),
        (status = 200, description = "Nothing new: every task was submitted before with the same values (a retried batch).", body = BatchSubmitted),
        (status = 400, response = crate::openapi::responses::BadRequest),
        (status = 401, response = crate::openapi::responses::Unauthorized),
        (status = 403, response = crate::openapi::responses::Forbidden),
        (status = 409, response = crate::openapi::responses::Conflict),
        (status = 413, response = crate::openapi::responses::PayloadTooLarge),
        (status = 415, response = crate::openapi::responses::UnsupportedMediaType),
        (status = 422, response = crate::openapi::responses::Unprocessable),
        (status = 500, response = crate::openapi::responses::Internal),
        (status = 503, response = crate::openapi::responses::Unavailable),
    ),
)]
pub(super) async fn submit_batch(
    State(state): State<AppState>,
    headers: HeaderMap,
    extract::Json(body): extract::Json<BatchRequest>,
) -> Result<(StatusCode, Json<BatchSubmitted>), ApiError> {
    // Its length is checked with the batch (`TaskStore::submit_batch_once`).
    let batch_key = idempotency_header(&headers)?;
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
    AgentRegistry::ensure_known(state.db(), tasks.iter().map(|t| t.agent.as_str())).await?;
    let submitted = match &batch_key {
        Some(key) => TaskStore::submit_batch_once(state.db(), key, tasks, &metadata()).await?,
        None => TaskStore::submit_batch(state.db(), tasks, &metadata()).await?,
    };
    for s in submitted.iter().filter(|s| s.created) {
        count(names::TASKS_SUBMITTED, &s.task);
    }
    let created = submitted.iter().filter(|s| s.created).count();
    // As lists show them: a batch of large inputs is not echoed back whole.
    let tasks: Vec<Task> = submitted.into_iter().map(|s| s.task.listed()).collect();
    // Nothing new: the batch (or each of its tasks) was sent before.
    let status = if created == 0 {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(BatchSubmitted { created, tasks })))
}

#[derive(Deserialize, Default, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct ListQuery {
    /// One state or several, comma-separated (`pending,running`).
    state: Option<String>,
    /// Only the tasks of this agent.
    agent: Option<String>,
    /// Only the tasks of this project.
    project: Option<String>,
    /// Only the tasks of this queue.
    queue: Option<String>,
    /// The `next_cursor` of the previous page.
    cursor: Option<String>,
    /// Tasks per page: 1 to 500, default 50.
    #[param(minimum = 1, maximum = 500)]
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
) -> Result<Json<TaskPage>, ApiError> {
    let page = TaskStore::list(state.db(), filter, cursor(raw_cursor)?, page_limit(limit)?).await?;
    Ok(Json(page))
}

/// `GET /v1/tasks`: newest first, filtered, a page at a time.
#[utoipa::path(
    get,
    path = "/v1/tasks",
    tag = "tasks",
    operation_id = "list_tasks",
    summary = "List tasks, newest first",
    description = "Scope `read`. A page at a time: pass `next_cursor` as `cursor` for the next. \
        An input over 1 KiB (as JSON text) is listed as a preview string of its first 1,000 \
        characters with `input_truncated: true`, an output summary over 1,000 characters is cut \
        (`output_truncated: true`): `GET /v1/tasks/{id}` has them whole.",
    params(ListQuery),
    security(("bearer" = ["read"])),
    responses(
        (status = 200, description = "One page of tasks.", body = TaskPage),
        (status = 400, response = crate::openapi::responses::BadRequest),
        (status = 401, response = crate::openapi::responses::Unauthorized),
        (status = 403, response = crate::openapi::responses::Forbidden),
        (status = 500, response = crate::openapi::responses::Internal),
        (status = 503, response = crate::openapi::responses::Unavailable),
    ),
)]
pub(super) async fn list(
    State(state): State<AppState>,
    Query(query): Query<ListQuery>,
) -> Result<Json<TaskPage>, ApiError> {
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

#[derive(Deserialize, Default, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct PageQuery {
    /// The `next_cursor` of the previous page.
    cursor: Option<String>,
    /// Tasks per page: 1 to 500, default 50.
    #[param(minimum = 1, maximum = 500)]
    limit: Option<u64>,
}

/// `GET /v1/inbox`: the tasks that wait for a person (blocked or failed).
#[utoipa::path(
    get,
    path = "/v1/inbox",
    tag = "tasks",
    operation_id = "inbox",
    summary = "The tasks waiting for a person (blocked or failed)",
    description = "Scope `read`. Inputs and output summaries as in the task list (previews when large).",
    params(PageQuery),
    security(("bearer" = ["read"])),
    responses(
        (status = 200, description = "One page of tasks, and the agents nobody serves.", body = Inbox),
        (status = 400, response = crate::openapi::responses::BadRequest),
        (status = 401, response = crate::openapi::responses::Unauthorized),
        (status = 403, response = crate::openapi::responses::Forbidden),
        (status = 500, response = crate::openapi::responses::Internal),
        (status = 503, response = crate::openapi::responses::Unavailable),
    ),
)]
pub(super) async fn inbox(
    State(state): State<AppState>,
    Query(query): Query<PageQuery>,
) -> Result<Json<Inbox>, ApiError> {
    let filter = TaskFilter {
        states: vec![TaskState::Blocked, TaskState::Failed],
        ..Default::default()
    };
    let Json(page) = page(&state, &filter, query.cursor.as_deref(), query.limit).await?;
    let unserved = super::queues::unserved(&state).await?;
    Ok(Json(Inbox { page, unserved }))
}

/// What waits for a person.
#[derive(Serialize, ToSchema)]
pub(super) struct Inbox {
    /// Blocked and failed tasks, newest first.
    #[serde(flatten)]
    page: TaskPage,
    /// Tasks waiting for an agent that no live worker serves on their queue: someone
    /// must start one (`turnq worker --queues Q --agents A`).
    unserved: Vec<UnservedAgent>,
}

/// `GET /v1/tasks/{id}`
#[utoipa::path(
    get,
    path = "/v1/tasks/{id}",
    tag = "tasks",
    operation_id = "get_task",
    summary = "One task",
    description = "Scope `read`.",
    params(("id" = uuid::Uuid, Path, description = "The task's id.")),
    security(("bearer" = ["read"])),
    responses(
        (status = 200, description = "The task.", body = Task),
        (status = 400, response = crate::openapi::responses::BadRequest),
        (status = 401, response = crate::openapi::responses::Unauthorized),
        (status = 403, response = crate::openapi::responses::Forbidden),
        (status = 404, response = crate::openapi::responses::NotFound),
        (status = 500, response = crate::openapi::responses::Internal),
        (status = 503, response = crate::openapi::responses::Unavailable),
    ),
)]
pub(super) async fn get(
    State(state): State<AppState>,
    TaskPath(id): TaskPath,
) -> Result<Json<Task>, ApiError> {
    Ok(Json(TaskStore::get(state.db(), id).await?))
}

#[derive(Deserialize, Default, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct EventsQuery {
    /// Only events with a version above this one (default 0: all).
    after: Option<i64>,
    /// Events at most: 1 to 10,000, default 1,000.
    #[param(minimum = 1, maximum = 10000)]
    limit: Option<u64>,
}

/// The events of a task's stream.
#[derive(Serialize, ToSchema)]
pub(super) struct TaskEvents {
    /// Oldest first; `data` is the event's JSON as `docs/events.md` gives it.
    events: Vec<RecordedEvent>,
}

/// `GET /v1/tasks/{id}/events`: the task's stream, oldest first.
#[utoipa::path(
    get,
    path = "/v1/tasks/{id}/events",
    tag = "tasks",
    operation_id = "task_events",
    summary = "The events of a task, oldest first",
    description = "Scope `read`.",
    params(("id" = uuid::Uuid, Path, description = "The task's id."), EventsQuery),
    security(("bearer" = ["read"])),
    responses(
        (status = 200, description = "The task's events.", body = TaskEvents),
        (status = 400, response = crate::openapi::responses::BadRequest),
        (status = 401, response = crate::openapi::responses::Unauthorized),
        (status = 403, response = crate::openapi::responses::Forbidden),
        (status = 404, response = crate::openapi::responses::NotFound),
        (status = 500, response = crate::openapi::responses::Internal),
        (status = 503, response = crate::openapi::responses::Unavailable),
    ),
)]
pub(super) async fn events(
    State(state): State<AppState>,
    TaskPath(id): TaskPath,
    Query(query): Query<EventsQuery>,
) -> Result<Json<TaskEvents>, ApiError> {
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
    Ok(Json(TaskEvents { events }))
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

#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ReasonBody {
    /// Why the task is cancelled (kept in its `task.cancelled` event).
    reason: Option<String>,
}

#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct NoteBody {
    /// What the person decided (kept in its `task.approved` event).
    note: Option<String>,
}

#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct EmptyBody {}

/// The error responses of the transitions a person makes on a task.
macro_rules! transition_path {
    ($method:ident, $path:literal, $id:literal, $summary:literal, $scope:literal, $body:ty, $item:item) => {
        #[utoipa::path(
            $method,
            path = $path,
            tag = "tasks",
            operation_id = $id,
            summary = $summary,
            description = concat!("Scope `", $scope, "`. The body is optional (empty or `null` is fine). \
                409 when the task's state does not allow it."),
            params(("id" = uuid::Uuid, Path, description = "The task's id.")),
            request_body(content = Option<$body>, content_type = "application/json"),
            security(("bearer" = [$scope])),
            responses(
                (status = 200, description = "The task after the transition.", body = Task),
                (status = 400, response = crate::openapi::responses::BadRequest),
                (status = 401, response = crate::openapi::responses::Unauthorized),
                (status = 403, response = crate::openapi::responses::Forbidden),
                (status = 404, response = crate::openapi::responses::NotFound),
                (status = 409, response = crate::openapi::responses::Conflict),
                (status = 413, response = crate::openapi::responses::PayloadTooLarge),
                (status = 500, response = crate::openapi::responses::Internal),
                (status = 503, response = crate::openapi::responses::Unavailable),
            ),
        )]
        $item
    };
}

transition_path!(
    post,
    "/v1/tasks/{id}/cancel",
    "cancel_task",
    "Cancel a task",
    "submit",
    ReasonBody,
    /// `POST /v1/tasks/{id}/cancel` with an optional `{"reason": "…"}`.
    pub(super) async fn cancel(
        State(state): State<AppState>,
        TaskPath(id): TaskPath,
        extract::Body(body): extract::Body,
    ) -> Result<Json<Task>, ApiError> {
        let ReasonBody { reason } = optional_body(&body)?;
        let task = TaskStore::cancel(state.db(), id, reason, &metadata()).await?;
        count(names::TASKS_CANCELLED, &task);
        Ok(Json(task))
    }
);

transition_path!(
    post,
    "/v1/tasks/{id}/retry",
    "retry_task",
    "Run a failed task again",
    "admin",
    EmptyBody,
    /// `POST /v1/tasks/{id}/retry`: a failed task runs again.
    pub(super) async fn retry(
        State(state): State<AppState>,
        TaskPath(id): TaskPath,
        extract::Body(body): extract::Body,
    ) -> Result<Json<Task>, ApiError> {
        let EmptyBody {} = optional_body(&body)?;
        let task = TaskStore::retry(state.db(), id, &metadata()).await?;
        count_retry_by_person(&task);
        Ok(Json(task))
    }
);

transition_path!(
    post,
    "/v1/tasks/{id}/approve",
    "approve_task",
    "Let a blocked task run again",
    "admin",
    NoteBody,
    /// `POST /v1/tasks/{id}/approve` with an optional `{"note": "…"}`: a blocked task
    /// runs again.
    pub(super) async fn approve(
        State(state): State<AppState>,
        TaskPath(id): TaskPath,
        extract::Body(body): extract::Body,
    ) -> Result<Json<Task>, ApiError> {
        let NoteBody { note } = optional_body(&body)?;
        Ok(Json(
            TaskStore::approve(state.db(), id, note, &metadata()).await?,
        ))
    }
);

#[utoipa::path(
    post,
    path = "/v1/tasks/{id}/respond",
    tag = "tasks",
    operation_id = "respond_to_task",
    summary = "Answer what a blocked task asks",
    description = "Scope `submit`. Answers the task's open request (see the task's \
        `request`: its kind, options and deadline): `choice` one of its options, `text` a \
        free-text answer or comment, `input` an edited tool input (permission requests \
        only). The answer is recorded as `task.responded` and the task runs again; its \
        next turn resumes with the answer. 400 when the answer does not fit the request, \
        409 when the task waits on no request a person answers.",
    params(("id" = uuid::Uuid, Path, description = "The task's id.")),
    request_body(content = ResponseRequest, content_type = "application/json"),
    security(("bearer" = ["submit"])),
    responses(
        (status = 200, description = "The task after the answer.", body = Task),
        (status = 400, response = crate::openapi::responses::BadRequest),
        (status = 401, response = crate::openapi::responses::Unauthorized),
        (status = 403, response = crate::openapi::responses::Forbidden),
        (status = 404, response = crate::openapi::responses::NotFound),
        (status = 409, response = crate::openapi::responses::Conflict),
        (status = 413, response = crate::openapi::responses::PayloadTooLarge),
        (status = 415, response = crate::openapi::responses::UnsupportedMediaType),
        (status = 422, response = crate::openapi::responses::Unprocessable),
        (status = 500, response = crate::openapi::responses::Internal),
        (status = 503, response = crate::openapi::responses::Unavailable),
    ),
)]
/// `POST /v1/tasks/{id}/respond`: a person answers a blocked task's request.
pub(super) async fn respond(
    State(state): State<AppState>,
    TaskPath(id): TaskPath,
    caller: Option<axum::Extension<crate::auth::Caller>>,
    extract::Json(body): extract::Json<ResponseRequest>,
) -> Result<Json<Task>, ApiError> {
    let by = caller.map(|axum::Extension(c)| c.0);
    Ok(Json(
        TaskStore::respond(state.db(), id, body, by, &metadata()).await?,
    ))
}

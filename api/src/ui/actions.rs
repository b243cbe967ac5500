//! The UI's actions: POST forms that check the viewer's scope as the JSON routes do,
//! change state through the same `turnq-core` stores (each change an event), and
//! redirect back (post/redirect/get), so they work without JavaScript. Decisions on a
//! session's workspace go through [`crate::workspace_ops`], as the JSON routes' do.

use axum::{
    body::Bytes,
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Redirect, Response},
};
use maud::html;
use serde_json::{Map, Value, json};
use turnq_core::{
    ArenaId, TaskId,
    agent::AgentRegistry,
    arena::ArenaStore,
    auth::Scope,
    metrics as names,
    queue::QueueStore,
    session::{ProjectKey, SessionId},
    task::{NewTaskRequest, RequestKind, ResponseRequest, Task, TaskFilter, TaskState, TaskStore},
    time,
    workspace::WorkspaceStore,
};
use uuid::Uuid;

use super::{
    error::PageError,
    layout,
    pages::tasks::{filter_from, filter_pairs},
    request::{self, Back},
    review,
    viewer::Viewer,
};
use crate::{
    AppState,
    routes::{count_retry_by_person, count_task},
    workspace_ops,
};

/// The most tasks one bulk action changes; more matching ones need another run.
const BULK_MAX: u64 = 10_000;

fn metadata(viewer: &Viewer) -> Value {
    json!({"actor": "ui", "token": viewer.token.name})
}

/// `raw` as an id, or a 400 naming `what` ("task id", "checkpoint id", …).
fn parse_id<T: std::str::FromStr>(what: &str, raw: &str) -> Result<T, PageError> {
    raw.parse().map_err(|_| {
        PageError::new(
            StatusCode::BAD_REQUEST,
            format!("{what} {raw:?} is not a UUID"),
        )
    })
}

/// `POST /ui/tasks/{id}/{action}`: cancel, retry, approve, or again (a new task with
/// the same input).
pub(super) async fn on_task(
    State(state): State<AppState>,
    viewer: Viewer,
    Path((id, action)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, PageError> {
    let id: TaskId = parse_id("task id", &id)?;
    let scope = match action.as_str() {
        "cancel" | "again" => Scope::Submit,
        "retry" | "approve" => Scope::Admin,
        other => {
            return Err(PageError::new(
                StatusCode::NOT_FOUND,
                format!("there is no task action {other:?}: use cancel, retry, approve or again"),
            ));
        }
    };
    let form = viewer.form(&headers, &body, scope)?;
    let db = state.db();
    let meta = metadata(&viewer);
    let task = match action.as_str() {
        "cancel" => {
            let task = TaskStore::cancel(db, id, form.value("reason"), &meta).await?;
            count_task(names::TASKS_CANCELLED, &task);
            task
        }
        "retry" => {
            let task = TaskStore::retry(db, id, &meta).await?;
            count_retry_by_person(&task);
            task
        }
        "approve" => TaskStore::approve(db, id, form.value("note"), &meta).await?,
        _ => {
            let old = TaskStore::get(db, id).await?;
            submit_request(&state, again(&old), &meta).await?
        }
    };
    Ok(Redirect::to(&format!("/tasks/{}", task.id)).into_response())
}

/// `POST /ui/tasks/{id}/respond`: a person answers a blocked task's request (the forms
/// of [`request::open`]): `choice` (the button pressed), `text` (an answer or a
/// comment), `input` (a permission's tool input, maybe edited), `version` (the task's
/// version the form was made from) and `back` (`inbox` or `task`: where to go after).
/// Nothing changes when the form is stale, the edited input is not JSON, or the answer
/// does not fit the request: the error page says which.
pub(super) async fn respond(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, PageError> {
    let id: TaskId = parse_id("task id", &id)?;
    let form = viewer.form(&headers, &body, Scope::Submit)?;
    let back = match form.get("back") {
        Some("inbox") => Back::Inbox,
        _ => Back::Task,
    };
    let task_page = format!("/tasks/{id}");
    let refuse = |status, message: String| {
        PageError::new(status, message).with_back(&task_page, "Back to the task")
    };
    let task = TaskStore::get(state.db(), id).await?;
    if let Some(read) = form.value("version")
        && read != task.version.0.to_string()
    {
        return Err(refuse(
            StatusCode::CONFLICT,
            format!(
                "the task changed since this form was shown (it is {} now): nothing was answered; \
                 look at it again and answer what it asks now",
                task.state
            ),
        ));
    }
    let choice = form.value("choice");
    let edited = match (task.open_request(), form.get("input")) {
        // A refusal runs nothing, so its input is not read: a half-edited one must not
        // stand in the way of saying no.
        (Some(r), Some(raw)) if r.kind == RequestKind::Permission => {
            if choice.as_deref() == Some(request::DENY) || raw.trim().is_empty() {
                None
            } else {
                let input = serde_json::from_str::<Value>(raw).map_err(|e| {
                    refuse(
                        StatusCode::BAD_REQUEST,
                        format!("the edited tool input is not JSON ({e}): nothing was answered"),
                    )
                })?;
                // Unchanged is no edit: the agent is told to use another input only
                // when there is one.
                (r.tool_input.as_ref() != Some(&input)).then_some(input)
            }
        }
        _ => None,
    };
    let answer = ResponseRequest {
        choice,
        text: form.value("text"),
        input: edited,
    };
    let by = Some(viewer.token.name.clone());
    TaskStore::respond(state.db(), id, answer, by, &metadata(&viewer))
        .await
        .map_err(|e| match PageError::from(e) {
            PageError {
                status, message, ..
            } if status.is_client_error() => {
                refuse(status, format!("{message}: nothing was answered"))
            }
            other => other,
        })?;
    Ok(Redirect::to(match back {
        Back::Inbox => "/inbox",
        Back::Task => &task_page,
    })
    .into_response())
}

/// A new submission with what `task` was submitted with (not its idempotency key, run
/// time or lineage).
fn again(task: &Task) -> Value {
    let mut body = Map::new();
    body.insert("input".into(), task.input.clone());
    body.insert("project".into(), json!(task.project));
    body.insert("queue".into(), json!(task.queue));
    body.insert("priority".into(), json!(task.priority));
    body.insert("agent".into(), json!(task.agent));
    body.insert("max_attempts".into(), json!(task.max_attempts));
    for (name, value) in [
        ("model", &task.model),
        ("backend", &task.backend),
        ("session_id", &task.session_id),
        ("chat_id", &task.chat_id),
        ("mode_id", &task.mode_id),
        ("thinking_option_id", &task.thinking_option_id),
    ] {
        if let Some(v) = value {
            body.insert(name.into(), json!(v));
        }
    }
    if let Some(fv) = &task.feature_values {
        body.insert("feature_values".into(), fv.clone());
    }
    Value::Object(body)
}

/// Validates and submits `body` (the JSON of `POST /v1/tasks`).
async fn submit_request(state: &AppState, body: Value, meta: &Value) -> Result<Task, PageError> {
    let request: NewTaskRequest = serde_json::from_value(body).map_err(|e| {
        PageError::new(
            StatusCode::BAD_REQUEST,
            format!("the submission is not valid: {e}"),
        )
    })?;
    let task = request.validate(time::now())?;
    AgentRegistry::ensure_known(state.db(), [task.agent.as_str()]).await?;
    let submitted = TaskStore::submit(state.db(), task, meta).await?;
    if submitted.created {
        count_task(names::TASKS_SUBMITTED, &submitted.task);
    }
    Ok(submitted.task)
}

/// `POST /ui/tasks`: the submit form (agent, queue, project, session, input: JSON when
/// it parses as JSON, else the text itself).
pub(super) async fn submit(
    State(state): State<AppState>,
    viewer: Viewer,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, PageError> {
    let form = viewer.form(&headers, &body, Scope::Submit)?;
    let raw = form.get("input").unwrap_or_default();
    if raw.trim().is_empty() {
        return Err(PageError::new(
            StatusCode::BAD_REQUEST,
            "the input is empty: say what the agent should do",
        ));
    }
    let input =
        serde_json::from_str::<Value>(raw).unwrap_or_else(|_| Value::String(raw.to_owned()));
    let mut request = Map::new();
    request.insert("input".into(), input);
    for field in ["agent", "queue", "project", "session_id"] {
        if let Some(v) = form.value(field) {
            request.insert(field.into(), json!(v));
        }
    }
    let task = submit_request(&state, Value::Object(request), &metadata(&viewer)).await?;
    Ok(Redirect::to(&format!("/tasks/{}", task.id)).into_response())
}

/// `POST /ui/queues/{name}/{pause|resume}`.
pub(super) async fn on_queue(
    State(state): State<AppState>,
    viewer: Viewer,
    Path((name, action)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, PageError> {
    viewer.form(&headers, &body, Scope::Admin)?;
    let meta = metadata(&viewer);
    match action.as_str() {
        "pause" => QueueStore::pause(state.db(), &name, &meta).await?,
        "resume" => QueueStore::resume(state.db(), &name, &meta).await?,
        other => {
            return Err(PageError::new(
                StatusCode::NOT_FOUND,
                format!("there is no queue action {other:?}: use pause or resume"),
            ));
        }
    };
    Ok(Redirect::to("/").into_response())
}

/// `POST /ui/arenas/{id}/winner` with `task_id`: the viewer picks the arena's winner,
/// recorded under their token's name, as `POST /v1/arenas/{id}/winner` does.
pub(super) async fn pick_winner(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, PageError> {
    let form = viewer.form(&headers, &body, Scope::Submit)?;
    let id: ArenaId = parse_id("arena id", &id)?;
    let raw = form.get("task_id").unwrap_or_default();
    let task: TaskId = raw.parse().map_err(|_| {
        PageError::new(
            StatusCode::BAD_REQUEST,
            format!("task_id {raw:?} is not a UUID: pick a contestant on the arena's page"),
        )
    })?;
    ArenaStore::pick_winner(state.db(), id, task, &viewer.token.name, &metadata(&viewer)).await?;
    Ok(Redirect::to(&format!("/arenas/{id}")).into_response())
}

/// What a bulk action does to one task.
#[derive(Clone, Copy, PartialEq)]
enum Bulk {
    Retry,
    Cancel,
}

impl Bulk {
    fn verb(self) -> &'static str {
        match self {
            Bulk::Retry => "Retry",
            Bulk::Cancel => "Cancel",
        }
    }

    /// The states it applies to: retrying re-opens failed tasks; cancelling stops the
    /// ones that have not ended.
    fn states(self) -> &'static [TaskState] {
        match self {
            Bulk::Retry => &[TaskState::Failed],
            Bulk::Cancel => &[TaskState::Pending, TaskState::Running, TaskState::Blocked],
        }
    }

    fn scope(self) -> Scope {
        match self {
            Bulk::Retry => Scope::Admin,
            Bulk::Cancel => Scope::Submit,
        }
    }

    /// `filter` narrowed to the states this action applies to.
    fn narrow(self, mut filter: TaskFilter) -> TaskFilter {
        filter.states = if filter.states.is_empty() {
            self.states().to_vec()
        } else {
            filter
                .states
                .into_iter()
                .filter(|s| self.states().contains(s))
                .collect()
        };
        filter
    }
}

/// `POST /ui/tasks/bulk`: `action` = `retry-selected` / `cancel-selected` (the `id`
/// checkboxes), or `retry-all` / `cancel-all` (every task matching the filter fields,
/// after a confirmation page that says how many).
pub(super) async fn bulk(
    State(state): State<AppState>,
    viewer: Viewer,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, PageError> {
    // The scope is checked per action below; `read` here lets the form be parsed.
    let form = viewer.form(&headers, &body, Scope::Read)?;
    let raw_action = form.get("action").unwrap_or_default().to_owned();
    let (bulk, all) = match raw_action.as_str() {
        "retry-selected" => (Bulk::Retry, false),
        "cancel-selected" => (Bulk::Cancel, false),
        "retry-all" => (Bulk::Retry, true),
        "cancel-all" => (Bulk::Cancel, true),
        other => {
            return Err(PageError::new(
                StatusCode::BAD_REQUEST,
                format!(
                    "bulk action {other:?} is not one of retry-selected, cancel-selected, retry-all, cancel-all"
                ),
            ));
        }
    };
    viewer.form(&headers, &body, bulk.scope())?;
    let pairs = filter_pairs(&form);
    let borrowed: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let back = layout::link("/tasks", &borrowed);
    let ids: Vec<TaskId> = if all {
        let filter = bulk.narrow(filter_from(&form)?);
        if form.get("confirm") != Some("yes") {
            let matching = if filter.states.is_empty() {
                0
            } else {
                TaskStore::count_up_to(state.db(), &filter, BULK_MAX + 1).await?
            };
            return Ok(
                confirm_page(&viewer, bulk, &raw_action, &pairs, matching, &back).into_response(),
            );
        }
        if filter.states.is_empty() {
            Vec::new()
        } else {
            TaskStore::ids_matching(state.db(), &filter, BULK_MAX).await?
        }
    } else {
        form.all("id")
            .map(|raw| parse_id::<TaskId>("task id", raw))
            .collect::<Result<_, _>>()?
    };
    if ids.is_empty() {
        return Err(PageError::new(
            StatusCode::BAD_REQUEST,
            "no task was selected: tick the tasks to act on, or use the \"all matching\" buttons",
        ));
    }
    let meta = metadata(&viewer);
    let (mut done, mut skipped) = (0u64, Vec::new());
    for id in &ids {
        let result = match bulk {
            Bulk::Retry => TaskStore::retry(state.db(), *id, &meta).await,
            Bulk::Cancel => TaskStore::cancel(state.db(), *id, None, &meta).await,
        };
        match result {
            Ok(task) => {
                done += 1;
                match bulk {
                    Bulk::Retry => count_retry_by_person(&task),
                    Bulk::Cancel => count_task(names::TASKS_CANCELLED, &task),
                }
            }
            // A task that moved on meanwhile (completed, already retried) is reported,
            // not an error of the whole action.
            Err(
                e @ (turnq_core::Error::IllegalTransition { .. }
                | turnq_core::Error::TaskNotFound(_)),
            ) => {
                skipped.push((*id, e.to_string()));
            }
            Err(e) => return Err(e.into()),
        }
    }
    let body = html! {
        div.result {
            h1 { (bulk.verb()) ": " (done) " of " (ids.len()) " tasks" }
            @if !skipped.is_empty() {
                p { (skipped.len()) " could not be changed:" }
                ul { @for (id, why) in skipped.iter().take(50) {
                    li { a href=(format!("/tasks/{id}")) { (layout::short_id(&id.to_string())) } " " (why) }
                } }
            }
            @if all && ids.len() as u64 == BULK_MAX {
                p.problem { "This action stops at " (layout::count(BULK_MAX as i64)) " tasks; run it again for the rest." }
            }
            p { a href=(back) { "Back to the tasks" } }
        }
    };
    Ok(layout::page("Bulk action", &viewer, layout::Nav::Tasks, None, body).into_response())
}

fn confirm_page(
    viewer: &Viewer,
    bulk: Bulk,
    action: &str,
    pairs: &[(&'static str, String)],
    matching: u64,
    back: &str,
) -> maud::Markup {
    let shown = if matching > BULK_MAX {
        format!("more than {}", layout::count(BULK_MAX as i64))
    } else {
        layout::count(matching as i64)
    };
    let body = html! {
        div.confirm {
            h1 { (bulk.verb()) " every task matching this filter?" }
            ul.filter-summary {
                @for (field, value) in pairs { li { strong { (field) } ": " code { (value) } } }
                @if pairs.is_empty() { li { "no filter: every task" } }
            }
            p.big #matching data-matching=(matching) {
                (shown) " " @if matching == 1 { "task" } @else { "tasks" }
                " can be " @if bulk == Bulk::Retry { "retried (failed ones)" } @else { "cancelled (pending, running or blocked ones)" } "."
            }
            @if matching > BULK_MAX {
                p.problem { "One run changes the newest " (layout::count(BULK_MAX as i64)) "; run it again for the rest." }
            }
            @if matching > 0 {
                form method="post" action="/ui/tasks/bulk" {
                    (layout::csrf(viewer))
                    @for (field, value) in pairs { input type="hidden" name=(field) value=(value); }
                    input type="hidden" name="action" value=(action);
                    input type="hidden" name="confirm" value="yes";
                    button.danger type="submit" { "Yes, " (bulk.verb().to_lowercase()) " " (shown) " tasks" }
                    " "
                    a href=(back) { "No, go back" }
                }
            } @else {
                p { a href=(back) { "Back to the tasks" } }
            }
        }
    };
    layout::page("Confirm", viewer, layout::Nav::Tasks, None, body)
}

/// `POST /ui/sessions/{project}/{session}/changes/{apply|reject|revert}`: the ticked
/// pending changes (`id`, repeated), or every pending one with `all=yes` (the "Apply
/// all" button), decided by the viewer through [`workspace_ops`], as the JSON route
/// would. Back to the session's workspace; an apply whose commit landed but left the
/// repository's checkout behind says so on a page of its own first.
pub(super) async fn on_changes(
    State(state): State<AppState>,
    viewer: Viewer,
    Path((project, session, action)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, PageError> {
    let project = ProjectKey::new(project)?;
    let session = SessionId::new(session)?;
    let back = format!(
        "{}#workspace",
        review::session_href(project.as_str(), session.as_str())
    );
    let refuse = |e: PageError| e.with_back(&back, "Back to the session");
    let (verb, done) = match action.as_str() {
        "apply" => ("apply", "applied"),
        "reject" => ("reject", "rejected"),
        "revert" => ("revert", "reverted"),
        other => {
            return Err(refuse(PageError::new(
                StatusCode::NOT_FOUND,
                format!("there is no change action {other:?}: use apply, reject or revert"),
            )));
        }
    };
    let form = viewer
        .form(&headers, &body, Scope::Submit)
        .map_err(refuse)?;
    let ids = form
        .all("id")
        .map(|raw| parse_id::<Uuid>("change id", raw).map_err(refuse))
        .collect::<Result<Vec<_>, _>>()?;
    let all = form.get("all") == Some("yes");
    if ids.is_empty() && !all {
        return Err(refuse(PageError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "no change was selected: tick the changes to {verb}{}; nothing was {done}",
                if verb == "apply" {
                    ", or use \"Apply all\""
                } else {
                    ""
                }
            ),
        )));
    }
    let chosen = (!all).then_some(ids.as_slice());
    let by = Some(viewer.token.name.as_str());
    let (project, session) = (project.as_str(), session.as_str());
    let decided = match verb {
        "apply" => workspace_ops::apply(&state, project, session, chosen, None, by).await,
        "reject" => workspace_ops::reject(&state, project, session, chosen, by).await,
        _ => workspace_ops::revert(&state, project, session, chosen, by).await,
    }
    .map_err(|e| refuse(e.into()))?;
    let Some(warning) = decided.warning else {
        return Ok(Redirect::to(&back).into_response());
    };
    // The commit is on the branch, but the person's checkout did not follow: they must
    // know before they go on working there.
    let body = html! {
        div.result {
            h1 { "Applied " (decided.changes.len()) " change" @if decided.changes.len() != 1 { "s" } }
            p {
                "Commit " @if let Some(sha) = &decided.commit_sha { (review::short_sha(sha)) }
                " is on " code { (decided.branch.as_deref().unwrap_or_default()) } "."
            }
            p.alert { strong { "The repository's checkout was not updated: " } (warning) }
            p { a href=(back) { "Back to the session" } }
        }
    };
    Ok(layout::page("Applied", &viewer, layout::Nav::Sessions, None, body).into_response())
}

/// `POST /ui/checkpoints/{id}/restore`: first a page saying what a restore does (files
/// back, transcript rewound, the agent's conversation started afresh); with
/// `confirm=yes` (its button) the restore itself, through [`workspace_ops::restore`],
/// then back to the session's workspace.
pub(super) async fn restore(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, PageError> {
    let id: Uuid = parse_id("checkpoint id", &id)?;
    let checkpoint = WorkspaceStore::checkpoint(state.db(), id).await?;
    let session_page = review::session_href(&checkpoint.project, &checkpoint.session_id);
    let back = format!("{session_page}#workspace");
    let refuse = |e: PageError| e.with_back(&back, "Back to the session");
    let form = viewer
        .form(&headers, &body, Scope::Submit)
        .map_err(refuse)?;
    if form.get("confirm") != Some("yes") {
        let action = format!("/ui/checkpoints/{id}/restore");
        let body = html! {
            div.confirm {
                h1 { "Restore session " code { (checkpoint.session_id) } " to this checkpoint?" }
                dl.grid2 {
                    dt { "Checkpoint" } dd { (review::checkpoint_label(&checkpoint)) }
                    dt { "Taken" } dd { (layout::time(&checkpoint.created_at)) }
                    dt { "Commit" } dd { (review::short_sha(&checkpoint.commit_sha)) }
                    @if let Some(task) = checkpoint.task_id {
                        dt { "Before task" } dd { a href=(format!("/tasks/{task}")) { (layout::short_id(&task.to_string())) } }
                    }
                }
                ul {
                    li { "The worktree's files go back to what they were then; files written since are removed." }
                    li { "The session's transcript is rewound to then (later entries are hidden, not deleted)." }
                    li { "The agent's conversation is closed: its next turn starts afresh from the rewound transcript." }
                    li { "Commits already applied onto the project branch stay." }
                }
                form method="post" action=(action) {
                    (layout::csrf(&viewer))
                    input type="hidden" name="confirm" value="yes";
                    button.danger type="submit" { "Yes, restore" }
                    " "
                    a href=(back) { "No, go back" }
                }
            }
        };
        return Ok(
            layout::page("Confirm", &viewer, layout::Nav::Sessions, None, body).into_response(),
        );
    }
    let by = Some(viewer.token.name.as_str());
    workspace_ops::restore(&state, id, by)
        .await
        .map_err(|e| refuse(e.into()))?;
    Ok(Redirect::to(&back).into_response())
}

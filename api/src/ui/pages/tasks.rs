//! `/tasks`: every task, filtered (state, queue, agent, project, session, time range,
//! text in the input), a page at a time; jump to a task by id; bulk retry and cancel;
//! the submit form.

use axum::{
    extract::{RawQuery, State},
    http::StatusCode,
    response::{IntoResponse, Redirect, Response},
};
use chrono::{NaiveDateTime, TimeZone, Utc};
use maud::{Markup, html};
use turnq_core::{
    TaskId,
    agent::AgentRegistry,
    auth::Scope,
    task::{SEARCH_WINDOW, Task, TaskFilter, TaskState, TaskStore},
    time::Timestamp,
};

use super::input_preview;
use crate::{
    AppState,
    ui::{
        error::PageError,
        layout::{self, Nav},
        viewer::{Form, Viewer},
    },
};

const PAGE: u64 = 50;

/// The filter fields of the tasks page, as given: they travel in links, in the bulk
/// form, and back into the filter form.
pub(crate) const FILTER_FIELDS: [&str; 8] = [
    "state", "queue", "agent", "project", "session", "from", "to", "q",
];

/// `text` as a time: RFC 3339, or what a `datetime-local` field sends (taken as UTC).
fn parse_time(field: &str, text: &str) -> Result<Timestamp, PageError> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&Utc));
    }
    for format in ["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(text, format) {
            return Ok(Utc.from_utc_datetime(&t));
        }
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return Ok(Utc.from_utc_datetime(&d.and_hms_opt(0, 0, 0).unwrap_or_default()));
    }
    Err(PageError::new(
        StatusCode::BAD_REQUEST,
        format!("{field} {text:?} is not a time: use 2026-12-03T14:00 (UTC) or RFC 3339"),
    ))
}

/// The filter the fields of `form` describe.
pub(crate) fn filter_from(form: &Form) -> Result<TaskFilter, PageError> {
    let states = form
        .all("state")
        .flat_map(|s| s.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<TaskState>()
                .map_err(|e| PageError::new(StatusCode::BAD_REQUEST, e))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let time = |field: &str| form.value(field).map(|t| parse_time(field, &t)).transpose();
    Ok(TaskFilter {
        states,
        queue: form.value("queue"),
        agent: form.value("agent"),
        project: form.value("project"),
        session: form.value("session"),
        created_from: time("from")?,
        created_to: time("to")?,
        text: form.value("q"),
    })
}

/// The filter fields of `form` that are set, to carry into links and forms.
pub(crate) fn filter_pairs(form: &Form) -> Vec<(&'static str, String)> {
    FILTER_FIELDS
        .iter()
        .filter_map(|f| {
            let values: Vec<&str> = form.all(f).filter(|v| !v.trim().is_empty()).collect();
            (!values.is_empty()).then(|| (*f, values.join(",")))
        })
        .collect()
}

pub(crate) async fn page(
    State(state): State<AppState>,
    viewer: Viewer,
    RawQuery(query): RawQuery,
) -> Result<Response, PageError> {
    let form = Form::from_query(query.as_deref());
    // The search box doubles as "go to task": an id goes straight to its page.
    if let Some(q) = form.value("q")
        && let Ok(id) = q.parse::<TaskId>()
    {
        return Ok(Redirect::to(&format!("/tasks/{id}")).into_response());
    }
    let filter = filter_from(&form)?;
    let cursor = form
        .value("cursor")
        .map(|c| {
            c.parse::<TaskId>().map_err(|_| {
                PageError::new(
                    StatusCode::BAD_REQUEST,
                    format!("cursor {c:?} is not a task id"),
                )
            })
        })
        .transpose()?;
    let page = TaskStore::list(state.db(), &filter, cursor, PAGE).await?;
    let pairs = filter_pairs(&form);
    let agents = AgentRegistry::list(state.db()).await?;
    let body = render(
        &viewer,
        &form,
        &pairs,
        &page.tasks,
        page.next_cursor,
        &agents,
    );
    let stream = stream_query(&form);
    Ok(layout::page("Tasks", &viewer, Nav::Tasks, Some(&stream), body).into_response())
}

/// The event stream that can change this list: the filter's queue or project narrow
/// it; output events change no row.
fn stream_query(form: &Form) -> String {
    let mut pairs = vec![("kind", "task.".to_owned())];
    for field in ["queue", "project"] {
        if let Some(v) = form.value(field) {
            pairs.push((field, v));
        }
    }
    let borrowed: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
    layout::link("", &borrowed)
}

fn render(
    viewer: &Viewer,
    form: &Form,
    pairs: &[(&'static str, String)],
    tasks: &[Task],
    next: Option<TaskId>,
    agents: &[turnq_core::agent::Agent],
) -> Markup {
    let can_submit = viewer.can(Scope::Submit);
    let can_admin = viewer.can(Scope::Admin);
    let state_value = pairs
        .iter()
        .find(|(f, _)| *f == "state")
        .map(|(_, v)| v.as_str())
        .unwrap_or("");
    let borrowed: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut next_pairs = borrowed.clone();
    let next_id = next.map(|n| n.to_string()).unwrap_or_default();
    next_pairs.push(("cursor", &next_id));
    html! {
        h1 { "Tasks" }
        form.filters method="get" action="/tasks" {
            label { "State"
                select name="state" {
                    option value="" selected[state_value.is_empty()] { "any" }
                    @for s in TaskState::ALL {
                        option value=(s.as_str()) selected[state_value == s.as_str()] { (s.as_str()) }
                    }
                    option value="blocked,failed" selected[state_value == "blocked,failed"] { "blocked or failed" }
                }
            }
            @for (field, label) in [("queue", "Queue"), ("agent", "Agent"), ("project", "Project"), ("session", "Session")] {
                label { (label) input type="text" name=(field) value=[form.get(field)]; }
            }
            label { "From (UTC)" input type="datetime-local" name="from" value=[form.get("from")]; }
            label { "To (UTC)" input type="datetime-local" name="to" value=[form.get("to")]; }
            label.wide { "Input contains"
                input type="search" name="q" value=[form.get("q")]
                    title=(format!("Searches the input of the most recent {} tasks; a task id opens that task", layout::count(SEARCH_WINDOW as i64)));
            }
            button type="submit" { "Filter" }
            @if !pairs.is_empty() { a.clear href="/tasks" { "Clear" } }
        }
        @if form.value("q").is_some() {
            p.hint { "Text search reads the most recent " (layout::count(SEARCH_WINDOW as i64)) " tasks." }
        }
        form #bulk method="post" action="/ui/tasks/bulk" {
            (layout::csrf(viewer))
            @for (field, value) in pairs {
                input type="hidden" name=(field) value=(value);
            }
            div data-live="list" #list {
                @if tasks.is_empty() {
                    @if pairs.is_empty() {
                        (layout::empty("No tasks yet.", html! {
                            p { "Submit one below, or from a shell:" }
                            pre { "turnq submit --agent script '{\"steps\": 3}'" }
                        }))
                    } @else {
                        (layout::empty("No task matches this filter.", html! { p { a href="/tasks" { "Show every task" } } }))
                    }
                } @else {
                    div.scroll { table.grid.tasks {
                        thead { tr {
                            @if can_submit { th { input type="checkbox" data-select-all aria-label="Select every task on this page"; } }
                            th { "Task" } th { "State" } th { "Queue" } th { "Agent" } th { "Project" }
                            th { "Input" } th.n { "Attempt" } th { "Created" } th { "Ended" }
                        } }
                        tbody {
                            @for t in tasks {
                                tr data-row data-href=(format!("/tasks/{}", t.id)) {
                                    @if can_submit { td { input type="checkbox" name="id" value=(t.id) aria-label="Select"; } }
                                    td { a href=(format!("/tasks/{}", t.id)) { (layout::short_id(&t.id.to_string())) } }
                                    td { (layout::state_badge(t.state)) @if t.queued && t.state == TaskState::Pending { " " span.muted { "queued" } } }
                                    td { (t.queue) }
                                    td { (t.agent) }
                                    td { (t.project) }
                                    td.input { (input_preview(&t.input, 80)) }
                                    td.n { (t.attempt) "/" (t.max_attempts) }
                                    td { (layout::time(&t.created_at)) }
                                    td { (layout::maybe_time(t.ended_at.as_ref())) }
                                }
                            }
                        }
                    } }
                }
            }
            div.pager {
                @if next.is_some() {
                    a href=(layout::link("/tasks", &next_pairs)) rel="next" { "Older tasks →" }
                }
            }
            @if can_submit && !tasks.is_empty() {
                div.bulk {
                    span { "Selected tasks: " }
                    @if can_admin { button type="submit" name="action" value="retry-selected" data-confirm="Retry the {n} selected tasks?" { "Retry" } }
                    button type="submit" name="action" value="cancel-selected" data-confirm="Cancel the {n} selected tasks?" { "Cancel" }
                    span { " All matching this filter: " }
                    @if can_admin { button type="submit" name="action" value="retry-all" { "Retry all…" } }
                    button type="submit" name="action" value="cancel-all" { "Cancel all…" }
                }
            }
        }
        @if can_submit {
            details #submit open[tasks.is_empty()] {
                summary { "Submit a task" }
                form.submit method="post" action="/ui/tasks" {
                    (layout::csrf(viewer))
                    label { "Agent"
                        select name="agent" {
                            option value="script" { "script (built in)" }
                            @for a in agents { option value=(a.name) { (a.name) } }
                        }
                    }
                    label { "Queue" input type="text" name="queue" placeholder="default"; }
                    label { "Project" input type="text" name="project" placeholder="default"; }
                    label { "Session" input type="text" name="session_id" placeholder="none"; }
                    label.wide { "Input (text, or JSON)"
                        textarea name="input" rows="4" required placeholder="{\"steps\": 3}" {}
                    }
                    button type="submit" { "Submit" }
                }
            }
        }
    }
}

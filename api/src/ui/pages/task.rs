//! `/tasks/{id}`: a task's whole story: what it asks a person (with the form to answer)
//! or how it was answered, every field, its sub-tasks and theirs, its attempts, the
//! event timeline (failures only on demand, runs of output collapsed), its output live
//! while it runs, the changes its turns proposed in its session's worktree (counted,
//! linked to the session's workspace), and the session transcript it belongs to.

use axum::extract::{RawQuery, State};
use maud::{Markup, html};
use serde_json::Value;
use turnq_core::{
    StreamVersion,
    auth::Scope,
    event::RecordedEvent,
    session::{ProjectKey, SessionId, SessionKey, SessionStore},
    task::{RequestKind, Task, TaskState, TaskStore},
    time::Timestamp,
    workspace::{PendingChange, WorkspaceStore},
};

use super::sessions::transcript_entries;
use crate::{
    AppState,
    extract::TaskPath,
    ui::{
        error::PageError,
        layout::{self, Nav},
        pages::{input_preview, overview::enc},
        request::{self, Back},
        viewer::{Form, Viewer},
    },
};

/// The most events a page shows; a longer history is cut at the start, with a link to
/// the JSON of the whole log.
const MAX_EVENTS: u64 = 5_000;
/// The most sub-tasks (at every depth) the tree shows.
const MAX_TREE: usize = 200;
/// The kinds the "failures" filter keeps.
const FAILURE_KINDS: [&str; 6] = [
    "task.failed",
    "task.retrying",
    "task.lease_lost",
    "task.released",
    "task.blocked",
    "task.cancelled",
];

/// One attempt, from its `task.started` to the event that ended it.
struct Attempt<'a> {
    number: i64,
    worker: String,
    started: &'a Timestamp,
    ended: Option<(&'a str, &'a Timestamp)>,
    usage: Option<&'a Value>,
    error: Option<String>,
}

fn attempts(events: &[RecordedEvent]) -> Vec<Attempt<'_>> {
    let mut out: Vec<Attempt> = Vec::new();
    for e in events {
        if e.kind == "task.started" {
            out.push(Attempt {
                number: e.data["attempt"].as_i64().unwrap_or(0),
                worker: e.data["worker_id"].as_str().unwrap_or("?").to_owned(),
                started: &e.recorded_at,
                ended: None,
                usage: None,
                error: None,
            });
            continue;
        }
        let ends = matches!(
            e.kind.as_str(),
            "task.completed"
                | "task.retrying"
                | "task.failed"
                | "task.blocked"
                | "task.lease_lost"
                | "task.released"
                | "task.cancelled"
        );
        if let Some(last) = out.last_mut().filter(|a| a.ended.is_none() && ends) {
            last.ended = Some((e.kind.as_str(), &e.recorded_at));
            last.usage = e.data.get("usage");
            last.error = e.data["error"]["message"]
                .as_str()
                .or(e.data["reason"].as_str())
                .map(str::to_owned);
        }
    }
    out
}

/// The text of an output event's chunks.
fn output_text(e: &RecordedEvent) -> String {
    e.data["chunks"]
        .as_array()
        .map(|chunks| {
            chunks
                .iter()
                .filter_map(|c| c["text"].as_str())
                .collect::<String>()
        })
        .unwrap_or_default()
}

pub(crate) async fn page(
    State(state): State<AppState>,
    viewer: Viewer,
    TaskPath(id): TaskPath,
    RawQuery(query): RawQuery,
) -> Result<Markup, PageError> {
    let form = Form::from_query(query.as_deref());
    let stream = layout::stream(&state, &[("task", &id.to_string())]);
    let task = TaskStore::get(state.db(), id).await?;
    // The newest events when there are more than a page holds.
    let from = StreamVersion((task.version.0 - MAX_EVENTS as i64).max(0));
    let events = TaskStore::events(state.db(), id, from, MAX_EVENTS).await?;
    let (tree, tree_truncated) = TaskStore::tree(state.db(), id, MAX_TREE).await?;
    let transcript = match &task.session_id {
        Some(session) => match (ProjectKey::new(&task.project), SessionId::new(session)) {
            (Ok(p), Ok(s)) => state.sessions().load(&SessionKey::main(p, s)).await?,
            _ => None,
        },
        None => None,
    };
    let changes = match &task.session_id {
        Some(_) => WorkspaceStore::changes_of_task(state.db(), id.0).await?,
        None => Vec::new(),
    };
    let failures_only = form.get("events") == Some("failures");
    let body = render(
        &viewer,
        &task,
        &events,
        &Tree {
            tasks: &tree[1..],
            truncated: tree_truncated,
        },
        &changes,
        transcript.as_deref(),
        failures_only,
    );
    Ok(layout::page(
        &format!("Task {}", task.id),
        &viewer,
        Nav::Tasks,
        Some(&stream),
        body,
    ))
}

fn render(
    viewer: &Viewer,
    task: &Task,
    events: &[RecordedEvent],
    tree: &Tree,
    changes: &[PendingChange],
    transcript: Option<&[Value]>,
    failures_only: bool,
) -> Markup {
    let id = task.id.to_string();
    let children: Vec<Task> = tree.children_of(task.id).cloned().collect();
    let output: String = events
        .iter()
        .filter(|e| e.kind == "task.output")
        .map(output_text)
        .collect();
    let attempts = attempts(events);
    // The fields show the task row (its version); the output shows the events read
    // after it, which may already be newer: each is deduplicated against its own.
    let last_version = events.last().map(|e| e.version.0).unwrap_or(0);
    html! {
        div.title-row {
            h1 { "Task " code.id { (id) } }
            div.actions data-live="actions" #actions { (actions(viewer, task)) }
        }
        section data-live="request" #request {
            @if let Some(asked) = task.open_request() {
                h2 { @if asked.kind == RequestKind::Children { "Waits for its sub-tasks" } @else { "Waits for you" } }
                (request::open(viewer, task, asked, &children, Back::Task))
            } @else if let Some(asked) = &task.request {
                h2 { @if asked.kind == RequestKind::Children { "Waited for its sub-tasks" } @else { "Asked" } }
                (request::answered(asked, task.response.as_ref()))
            }
        }
        @if !tree.tasks.is_empty() {
            section data-live="tree" #tree {
                h2 { "Sub-tasks" }
                (subtree(tree, task.id))
                @if tree.truncated {
                    p.hint { "Only the first " (MAX_TREE) " are shown, level by level; open a sub-task to see the ones below it." }
                }
            }
        }
        section.fields data-live="fields" #fields data-version=(task.version.0) {
            dl.grid2 {
                dt { "State" } dd { (layout::state_badge(task.state))
                    @if task.queued && task.state == TaskState::Pending { " " span.muted { "handed to Redis" } } }
                dt { "Queue" } dd { a href=(layout::link("/tasks", &[("queue", &task.queue)])) { (task.queue) } }
                dt { "Agent" } dd { a href=(layout::link("/tasks", &[("agent", &task.agent)])) { (task.agent) } }
                dt { "Project" } dd { a href=(layout::link("/tasks", &[("project", &task.project)])) { (task.project) } }
                dt { "Session" } dd {
                    @if let Some(s) = &task.session_id {
                        a href=(format!("/sessions/{}/{}", enc(&task.project), enc(s))) { (s) }
                    } @else { span.muted { "none" } }
                }
                @if let (Some(s), false) = (&task.session_id, changes.is_empty()) {
                    dt { "Changes" } dd #changes {
                        a href=(format!("/sessions/{}/{}#workspace", enc(&task.project), enc(s))) {
                            (changes.len()) " file change" @if changes.len() != 1 { "s" } " proposed"
                        }
                        " " span.muted { "(" (change_summary(changes)) ")" }
                    }
                }
                dt { "Priority" } dd { (task.priority) }
                dt { "Attempt" } dd { (task.attempt) " of " (task.max_attempts) }
                dt { "Worker" } dd { @if let Some(w) = &task.worker_id { (w) } @else { span.muted { "–" } } }
                dt { "Usage" } dd { (layout::count(task.usage.input_tokens)) " in / " (layout::count(task.usage.output_tokens)) " out tokens, $" (format!("{:.4}", task.usage.cost_usd)) }
                dt { "Created" } dd { (layout::time(&task.created_at)) }
                dt { "Run at" } dd { (layout::time(&task.run_at)) }
                dt { "Started" } dd { (layout::maybe_time(task.started_at.as_ref())) }
                dt { "Ended" } dd { (layout::maybe_time(task.ended_at.as_ref())) }
                dt { "Lease until" } dd { (layout::maybe_time(task.lease_until.as_ref())) }
                @for (name, value) in [("Model", &task.model), ("Backend", &task.backend), ("Worktree", &task.worktree_path),
                    ("Chat", &task.chat_id), ("Mode", &task.mode_id), ("Thinking", &task.thinking_option_id),
                    ("Idempotency key", &task.idempotency_key)] {
                    @if let Some(v) = value { dt { (name) } dd { (v) } }
                }
                @if let Some(parent) = task.parent_task_id {
                    dt { "Parent" } dd { "sub-task of " a href=(format!("/tasks/{parent}")) { (layout::short_id(&parent.to_string())) } }
                }
                @if let Some(arena) = task.arena_id {
                    dt { "Arena" } dd { a href=(format!("/arenas/{arena}")) { (layout::short_id(&arena.to_string())) } " " span.muted { "compare it with the other contestants" } }
                }
                @if !tree.tasks.is_empty() {
                    dt { "Sub-tasks" } dd { a href="#tree" { (children.len()) " direct, " (tree.tasks.len()) @if tree.truncated { "+" } " in all" } }
                }
            }
            @if let Some(error) = task.last_error.as_ref().filter(|_| task.state != TaskState::Completed) {
                p.problem { strong { "Last error: " } (error) }
            }
            @if let Some(summary) = &task.output_summary {
                @if task.state != TaskState::Blocked {
                    h2 { "Result" } pre.output { (summary) }
                } @else if task.open_request().is_none() {
                    // A bare block's summary is why it waits; a request shows its own.
                    h2 { "Waits for" } pre.output { (summary) }
                }
            }
        }
        section {
            h2 { "Input" }
            (layout::json(&task.input))
            @if let Some(fv) = &task.feature_values { h3 { "Feature values" } (layout::json(fv)) }
        }
        section {
            h2 { "Output" @if task.state == TaskState::Running { " " span.badge.state-running { "live" } } }
            pre.output #output data-output data-task=(id) data-version=(last_version) {
                (output)
            }
            @if output.is_empty() { p.muted #no-output { "No output yet." } }
        }
        section data-live="attempts" #attempts {
            h2 { "Attempts" }
            @if attempts.is_empty() {
                p.muted { "It has not started yet." }
            } @else {
                div.scroll { table.grid {
                    thead { tr { th.n { "#" } th { "Worker" } th { "Started" } th { "Duration" } th { "Ended by" } th { "Usage" } th { "Error" } } }
                    tbody {
                        @for a in &attempts {
                            tr {
                                td.n { (a.number) }
                                td { (a.worker) }
                                td { (layout::time(a.started)) }
                                td { @if let Some((_, end)) = a.ended { (layout::span((*end - *a.started).num_milliseconds() as f64 / 1000.0)) } @else { "running" } }
                                td { @if let Some((kind, _)) = a.ended { code { (kind) } } @else { span.muted { "–" } } }
                                td { @if let Some(u) = a.usage {
                                    (u["input_tokens"].as_i64().unwrap_or(0) + u["output_tokens"].as_i64().unwrap_or(0)) " tokens, $"
                                    (format!("{:.4}", u["cost_usd"].as_f64().unwrap_or(0.0))) } }
                                td.error { @if let Some(e) = &a.error { (e) } }
                            }
                        }
                    }
                } }
            }
        }
        section data-live="timeline" #timeline {
            h2 { "Events" }
            p.tabs {
                @if failures_only {
                    a href=(format!("/tasks/{id}")) { "All" } " · " strong { "Failures" }
                } @else {
                    strong { "All" } " · " a href=(format!("/tasks/{id}?events=failures")) { "Failures" }
                }
                " · " a href=(format!("/v1/tasks/{id}/events")) { "JSON" }
            }
            @if events.first().is_some_and(|e| e.version.0 > 1) {
                p.hint { "The first " (events[0].version.0 - 1) " events are left out; the JSON link has them all." }
            }
            (timeline(events, failures_only))
        }
        @if let Some(entries) = transcript {
            section {
                h2 { "Session transcript" }
                details {
                    summary { (entries.len()) " entries of session " (task.session_id.as_deref().unwrap_or_default()) }
                    (transcript_entries(entries))
                }
            }
        }
    }
}

/// How a task's changes stand: "1 pending, 2 applied".
fn change_summary(changes: &[PendingChange]) -> String {
    ["pending", "applied", "rejected", "reverted", "superseded"]
        .iter()
        .filter_map(|status| {
            let n = changes.iter().filter(|c| c.status == *status).count();
            (n > 0).then(|| format!("{n} {status}"))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The actions `viewer` may take on `task` in its state.
fn actions(viewer: &Viewer, task: &Task) -> Markup {
    let id = task.id;
    html! {
        @if viewer.can(Scope::Submit) && matches!(task.state, TaskState::Pending | TaskState::Running | TaskState::Blocked) {
            (layout::button(viewer, &format!("/ui/tasks/{id}/cancel"), "Cancel", "danger", Some("Cancel this task?")))
        }
        @if viewer.can(Scope::Admin) && task.state == TaskState::Failed {
            (layout::button(viewer, &format!("/ui/tasks/{id}/retry"), "Retry", "primary", None))
        }
        @if viewer.can(Scope::Admin) && task.state == TaskState::Blocked && task.open_request().is_none() {
            (layout::button(viewer, &format!("/ui/tasks/{id}/approve"), "Approve", "primary", None))
        }
        @if viewer.can(Scope::Submit) {
            (layout::button(viewer, &format!("/ui/tasks/{id}/again"), "Run again", "", Some("Submit a new task with the same input?")))
        }
    }
}

/// The tasks below a task, level by level as [`TaskStore::tree`] reads them.
struct Tree<'a> {
    tasks: &'a [Task],
    truncated: bool,
}

impl Tree<'_> {
    fn children_of(&self, parent: turnq_core::TaskId) -> impl Iterator<Item = &Task> {
        self.tasks
            .iter()
            .filter(move |t| t.parent_task_id == Some(parent.0))
    }
}

/// The sub-tasks of `parent` and theirs, as nested lists.
fn subtree(tree: &Tree, parent: turnq_core::TaskId) -> Markup {
    let children: Vec<&Task> = tree.children_of(parent).collect();
    if children.is_empty() {
        return layout::nothing();
    }
    html! {
        ul.tree {
            @for t in children {
                li {
                    div.node {
                        (layout::state_badge(t.state)) " "
                        a href=(format!("/tasks/{}", t.id)) { (layout::short_id(&t.id.to_string())) } " "
                        span.preview { (input_preview(&t.input, 100)) }
                        @if let Some(asked) = t.open_request() {
                            " " span class=(format!("tag kind-{}", asked.kind.as_str())) {
                                @if asked.kind == RequestKind::Children { "waits for sub-tasks" } @else { "asks: " (asked.kind.as_str()) }
                            }
                        }
                        " " span.muted { (t.agent) " · " (layout::maybe_time(t.ended_at.as_ref().or(Some(&t.updated_at)))) }
                        @if t.state == TaskState::Failed {
                            @if let Some(error) = &t.last_error { " " span.bad { (input_preview(&Value::String(error.clone()), 100)) } }
                        }
                    }
                    (subtree(tree, t.id))
                }
            }
        }
    }
}

/// The events, oldest first, runs of output events folded into one line.
fn timeline(events: &[RecordedEvent], failures_only: bool) -> Markup {
    let shown: Vec<&RecordedEvent> = events
        .iter()
        .filter(|e| !failures_only || FAILURE_KINDS.contains(&e.kind.as_str()))
        .collect();
    let mut groups: Vec<Vec<&RecordedEvent>> = Vec::new();
    for e in shown {
        match groups.last_mut() {
            Some(run) if e.kind == "task.output" && run[0].kind == "task.output" => run.push(e),
            _ => groups.push(vec![e]),
        }
    }
    html! {
        @if groups.is_empty() {
            p.muted { @if failures_only { "No failures." } @else { "No events." } }
        }
        ol.timeline {
            @for run in &groups {
                @if run[0].kind == "task.output" {
                    li.output-run {
                        details {
                            summary {
                                span.v { "v" (run[0].version.0) "–" (run[run.len() - 1].version.0) }
                                " " code { "task.output" } " × " (run.len())
                                " " (layout::time(&run[0].recorded_at))
                            }
                            pre.output { @for e in run { (output_text(e)) } }
                        }
                    }
                } @else {
                    @let e = run[0];
                    li class=(format!("kind-{}", e.kind.replace('.', "-"))) {
                        span.v { "v" (e.version.0) }
                        " " code { (e.kind) } " " (layout::time(&e.recorded_at))
                        @if let Some(actor) = e.metadata["actor"].as_str() { " " span.muted { "by " (actor) } }
                        @if e.data.as_object().is_some_and(|o| !o.is_empty()) && e.kind != "task.submitted" {
                            details.data { summary { "data" } (layout::json(&e.data)) }
                        }
                    }
                }
            }
        }
    }
}

//! `/sessions`: per project, its sessions; a session's turns (the tasks that ran in
//! it, with their usage and cost), its workspace when its tasks name a repository (the
//! worktree, pending changes to review, checkpoints: [`crate::ui::review`]) and its
//! transcript, rendered as a conversation.

use std::collections::HashMap;

use axum::extract::{Path, RawQuery, State};
use maud::{Markup, html};
use serde_json::Value;
use turnq_core::{
    session::{ProjectKey, SessionId, SessionKey, SessionStore},
    stats::{UsageRow, UsageStats},
    task::{TaskFilter, TaskStore},
    workspace::WorkspaceStore,
};

use super::input_preview;
use crate::{
    AppState,
    ui::{
        error::PageError,
        layout::{self, Nav},
        pages::overview::enc,
        review::{self, Workspace},
        viewer::{Form, Viewer},
    },
    workspace_ops,
};

/// The most projects and turns a page lists.
const MAX_PROJECTS: u64 = 500;
const MAX_TURNS: u64 = 200;

/// `/sessions[?project=P]`: the projects, or one project's sessions.
pub(crate) async fn list(
    State(state): State<AppState>,
    viewer: Viewer,
    RawQuery(query): RawQuery,
) -> Result<Markup, PageError> {
    let form = Form::from_query(query.as_deref());
    let project = form.value("project");
    let body = match &project {
        None => {
            let projects = state.sessions().projects(MAX_PROJECTS).await?;
            html! {
                h1 { "Sessions" }
                @if projects.is_empty() {
                    (layout::empty("No session has a transcript yet.", html! {
                        p { "Tasks submitted with a " code { "session_id" } " keep their conversation here." }
                    }))
                } @else {
                    p.hint { "Projects with session transcripts:" }
                    ul.plain { @for p in &projects {
                        li data-row data-href=(layout::link("/sessions", &[("project", p)])) { a href=(layout::link("/sessions", &[("project", p)])) { (p) } }
                    } }
                }
            }
        }
        Some(project) => {
            let key = ProjectKey::new(project.clone())?;
            let summaries = state.sessions().list_session_summaries(&key).await?;
            let usage: HashMap<String, UsageRow> = UsageStats::sessions_of(state.db(), project)
                .await?
                .into_iter()
                .map(|row| (row.key.clone(), row))
                .collect();
            // Sessions whose turns wrote no transcript (most agents but the SDK's) are
            // listed too, after the ones with one.
            let without_transcript: Vec<&UsageRow> = usage
                .values()
                .filter(|u| !summaries.iter().any(|s| s.session_id == u.key))
                .collect();
            html! {
                h1 { "Sessions of " code { (project) } }
                p { a href="/sessions" { "← all projects" } }
                @if summaries.is_empty() && without_transcript.is_empty() {
                    (layout::empty("This project has no session.", html! {
                        p { "Tasks submitted with a " code { "session_id" } " are its turns." }
                    }))
                } @else {
                    div.scroll { table.grid {
                        thead { tr { th { "Session" } th { "Title" } th.n { "Entries" } th.n { "Turns" }
                            th.n { "Tokens" } th.n { "Cost" } th { "Last written" } } }
                        tbody {
                            @for s in &summaries {
                                @let href = format!("/sessions/{}/{}", enc(project), enc(&s.session_id));
                                @let title = ["custom_title", "ai_title", "summary_hint", "first_prompt"].iter()
                                    .find_map(|k| s.data[*k].as_str()).unwrap_or("");
                                tr data-row data-href=(href) {
                                    td { a href=(href) { code { (s.session_id) } } }
                                    td { (title) }
                                    td.n { (s.data["entry_count"].as_i64().unwrap_or(0)) }
                                    (usage_cells(usage.get(&s.session_id)))
                                    td { @if let Some(t) = chrono::DateTime::from_timestamp_millis(s.mtime) { (layout::time(&t)) } }
                                }
                            }
                            @for u in &without_transcript {
                                @let href = format!("/sessions/{}/{}", enc(project), enc(&u.key));
                                tr data-row data-href=(href) {
                                    td { a href=(href) { code { (u.key) } } }
                                    td.muted { "no transcript" }
                                    td.n { "0" }
                                    (usage_cells(Some(u)))
                                    td { span.muted { "–" } }
                                }
                            }
                        }
                    } }
                }
            }
        }
    };
    Ok(layout::page("Sessions", &viewer, Nav::Sessions, None, body))
}

/// Turns, tokens and cost of a session's usage row.
fn usage_cells(usage: Option<&UsageRow>) -> Markup {
    match usage {
        Some(u) => html! {
            td.n { (layout::count(u.tasks)) }
            td.n { (layout::count(u.input_tokens + u.output_tokens)) }
            td.n { "$" (format!("{:.4}", u.cost_usd)) }
        },
        None => html! { td.n { "0" } td.n { "0" } td.n { "$0" } },
    }
}

/// `/sessions/{project}/{session}`: the session's turns, workspace and transcript.
pub(crate) async fn transcript(
    State(state): State<AppState>,
    viewer: Viewer,
    Path((project, session)): Path<(String, String)>,
) -> Result<Markup, PageError> {
    let key = SessionKey::main(
        ProjectKey::new(project.clone())?,
        SessionId::new(session.clone())?,
    );
    let entries = state.sessions().load(&key).await?.unwrap_or_default();
    let turns = TaskStore::list(
        state.db(),
        &TaskFilter {
            project: Some(project.clone()),
            session: Some(session.clone()),
            ..Default::default()
        },
        None,
        MAX_TURNS,
    )
    .await?;
    let (tokens, cost) = turns.tasks.iter().fold((0, 0.0), |(t, c), task| {
        (
            t + task.usage.input_tokens + task.usage.output_tokens,
            c + task.usage.cost_usd,
        )
    });
    let worktrees = WorkspaceStore::of_session(state.db(), &project, &session).await?;
    let (changes, checkpoints) = if worktrees.is_empty() {
        (Vec::new(), Vec::new())
    } else {
        (
            WorkspaceStore::changes(state.db(), &project, &session, None).await?,
            WorkspaceStore::checkpoints(state.db(), &project, &session).await?,
        )
    };
    let reachable = worktrees
        .iter()
        .find(|w| w.status == "active")
        .is_some_and(|w| workspace_ops::reachable(w).is_ok());
    let stream = layout::stream(&state, &[("project", &project), ("session", &session)]);
    let body = html! {
        h1 { "Session " code { (session) } }
        p { "Project " a href=(layout::link("/sessions", &[("project", &project)])) { code { (project) } } }
        section data-live="turns" #turns {
            h2 { "Turns" }
            @if turns.tasks.is_empty() {
                p.muted { "No task has run in this session." }
            } @else {
                p { (turns.tasks.len()) " turns, " (layout::count(tokens)) " tokens, $" (format!("{cost:.4}")) }
                div.scroll { table.grid {
                    thead { tr { th { "Task" } th { "State" } th { "Agent" } th { "Input" } th.n { "Tokens" } th.n { "Cost" } th { "Created" } } }
                    tbody { @for t in &turns.tasks {
                        tr data-row data-href=(format!("/tasks/{}", t.id)) {
                            td { a href=(format!("/tasks/{}", t.id)) { (layout::short_id(&t.id.to_string())) } }
                            td { (layout::state_badge(t.state)) }
                            td { (t.agent) }
                            td.input { (input_preview(&t.input, 80)) }
                            td.n { (layout::count(t.usage.input_tokens + t.usage.output_tokens)) }
                            td.n { "$" (format!("{:.4}", t.usage.cost_usd)) }
                            td { (layout::time(&t.created_at)) }
                        }
                    } }
                } }
            }
        }
        @if !worktrees.is_empty() {
            section data-live="workspace" #workspace {
                (review::section(&viewer, &Workspace {
                    project: &project,
                    session: &session,
                    worktrees: &worktrees,
                    changes: &changes,
                    checkpoints: &checkpoints,
                    reachable,
                }))
            }
        }
        section data-live="transcript" #transcript {
            h2 { "Transcript" }
            @if entries.is_empty() {
                p.muted { "Nothing was written to this session's transcript." }
            } @else {
                (transcript_entries(&entries))
            }
        }
    };
    Ok(layout::page(
        "Session",
        &viewer,
        Nav::Sessions,
        Some(&stream),
        body,
    ))
}

/// A transcript (Claude Agent SDK entries) as a conversation: who said what, tool calls
/// and their results folded, anything else as a small line with its JSON.
pub(crate) fn transcript_entries(entries: &[Value]) -> Markup {
    html! {
        ol.transcript {
            @for entry in entries {
                @let kind = entry["type"].as_str().unwrap_or("entry");
                @match kind {
                    "user" | "assistant" => {
                        li class=(format!("turn {kind}")) {
                            div.who { (kind) @if let Some(t) = entry["timestamp"].as_str() { " " span.muted { (t) } } }
                            (message(&entry["message"]["content"]))
                        }
                    }
                    _ => {
                        li.turn.other {
                            details { summary { code { (kind) } } (layout::json(entry)) }
                        }
                    }
                }
            }
        }
    }
}

/// A message's content: a string, or blocks of text, thinking, tool calls and results.
fn message(content: &Value) -> Markup {
    match content {
        Value::String(text) => html! { div.text { (text) } },
        Value::Array(blocks) => html! {
            @for block in blocks {
                @match block["type"].as_str().unwrap_or("") {
                    "text" => { div.text { (block["text"].as_str().unwrap_or_default()) } }
                    "thinking" => { details.thinking { summary { "thinking" } div.text { (block["thinking"].as_str().unwrap_or_default()) } } }
                    "tool_use" => {
                        details.tool-call {
                            summary { "tool call " code { (block["name"].as_str().unwrap_or("?")) } }
                            (layout::json(&block["input"]))
                        }
                    }
                    "tool_result" => {
                        details.tool-result {
                            summary { "tool result" @if block["is_error"].as_bool() == Some(true) { " " span.bad { "(error)" } } }
                            @match &block["content"] {
                                Value::String(s) => { pre.output { (s) } }
                                Value::Array(parts) => { pre.output { @for p in parts { (p["text"].as_str().unwrap_or_default()) } } }
                                other => { (layout::json(other)) }
                            }
                        }
                    }
                    _ => { (layout::json(block)) }
                }
            }
        },
        Value::Null => layout::nothing(),
        other => layout::json(other),
    }
}

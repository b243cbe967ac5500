//! `/arenas` and `/arenas/{id}`: the newest arenas, and one arena's contestants side by
//! side (a column each: agent, model, state, time, tokens, cost, output, changes), with
//! "Pick as winner" on each completed contestant until the arena is decided.

use axum::{
    extract::{RawQuery, State},
    http::StatusCode,
};
use maud::{Markup, html};
use turnq_core::{
    ArenaId,
    arena::{ArenaStore, ArenaView, ContestantView},
    auth::Scope,
    task::TaskState,
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

/// The most arenas the list shows.
const PAGE: u64 = 50;

pub(crate) async fn list(
    State(state): State<AppState>,
    viewer: Viewer,
    RawQuery(query): RawQuery,
) -> Result<Markup, PageError> {
    let form = Form::from_query(query.as_deref());
    let project = form.value("project");
    let arenas = ArenaStore::list(state.db(), project.as_deref(), PAGE).await?;
    let mut pairs = vec![("kind", "task.")];
    if let Some(p) = &project {
        pairs.push(("project", p));
    }
    let stream = layout::stream(&state, &pairs);
    let body = html! {
        h1 { "Arenas" }
        p.hint { "One task given to several agents at once; compare them and pick the winner." }
        form.filters method="get" action="/arenas" {
            label { "Project" input type="text" name="project" value=[project.as_deref()]; }
            button type="submit" { "Filter" }
            @if project.is_some() { a.clear href="/arenas" { "Clear" } }
        }
        div data-live="arenas" #arenas {
            @if arenas.is_empty() {
                (layout::empty(if project.is_some() { "No arena in this project." } else { "No arena yet." }, html! {
                    p { "Create one through the API (scope " code { "submit" } "):" }
                    pre { "curl -H \"Authorization: Bearer $TOKEN\" -H 'content-type: application/json' \\\n  -d '{\"input\": \"Fix the flaky test\", \"contestants\": [{\"agent\": \"script\"}, {\"agent\": \"script\", \"model\": \"fast\"}]}' \\\n  http://127.0.0.1:8080/v1/arenas" }
                }))
            } @else {
                div.scroll { table.grid {
                    thead { tr { th { "Arena" } th { "Project" } th { "Input" } th { "Contestants" } th { "Winner" } th { "Created" } } }
                    tbody {
                        @for a in &arenas {
                            tr data-row data-href=(format!("/arenas/{}", a.id)) {
                                td { a href=(format!("/arenas/{}", a.id)) { (layout::short_id(&a.id.to_string())) } }
                                td { (a.project) }
                                td.input { (input_preview(&a.input, 80)) }
                                td { @for c in &a.contestants {
                                    span class=(format!("tag state-{}", c.state.as_str())) title=(c.state.as_str()) { (label(c)) } " "
                                } }
                                td { @match a.contestants.iter().find(|c| c.winner) {
                                    Some(w) => { span.badge.winner { "★ " (label(w)) } }
                                    None if a.ended => { span.muted { "to pick" } }
                                    None => { span.muted { "running" } }
                                } }
                                td { (layout::time(&a.created_at)) }
                            }
                        }
                    }
                } }
            }
        }
    };
    Ok(layout::page(
        "Arenas",
        &viewer,
        Nav::Arenas,
        Some(&stream),
        body,
    ))
}

/// A contestant's time, precise enough to compare: `850 ms`, `2.4 s`, `3 min 5 s`.
fn duration(ms: i64) -> String {
    match ms {
        ..1_000 => format!("{ms} ms"),
        1_000..60_000 => format!("{:.1} s", ms as f64 / 1000.0),
        _ => format!("{} min {} s", ms / 60_000, (ms % 60_000) / 1000),
    }
}

/// `agent` or `agent · model`.
fn label(c: &ContestantView) -> String {
    match &c.model {
        Some(model) => format!("{} · {model}", c.agent),
        None => c.agent.clone(),
    }
}

pub(crate) async fn page(
    State(state): State<AppState>,
    viewer: Viewer,
    axum::extract::Path(raw): axum::extract::Path<String>,
) -> Result<Markup, PageError> {
    let id: ArenaId = raw.parse().map_err(|_| {
        PageError::new(
            StatusCode::BAD_REQUEST,
            format!("arena id {raw:?} is not a UUID"),
        )
    })?;
    let arena = ArenaStore::get(state.db(), id).await?;
    let stream = layout::stream(&state, &[("kind", "task."), ("project", &arena.project)]);
    Ok(layout::page(
        &format!("Arena {id}"),
        &viewer,
        Nav::Arenas,
        Some(&stream),
        render(&viewer, &arena),
    ))
}

/// The fastest and the cheapest of the contestants that completed, when at least two
/// did: what a comparison looks for first.
fn best(arena: &ArenaView) -> (Option<usize>, Option<usize>) {
    let done: Vec<(usize, &ContestantView)> = arena
        .contestants
        .iter()
        .enumerate()
        .filter(|(_, c)| c.state == TaskState::Completed)
        .collect();
    if done.len() < 2 {
        return (None, None);
    }
    let fastest = done
        .iter()
        .filter_map(|(i, c)| c.duration_ms.map(|ms| (ms, *i)))
        .min()
        .map(|(_, i)| i);
    let cheapest = done
        .iter()
        .min_by(|(_, a), (_, b)| a.usage.cost_usd.total_cmp(&b.usage.cost_usd))
        .filter(|(_, c)| c.usage.cost_usd > 0.0)
        .map(|(i, _)| *i);
    (fastest, cheapest)
}

fn render(viewer: &Viewer, arena: &ArenaView) -> Markup {
    let (fastest, cheapest) = best(arena);
    let can_pick = viewer.can(Scope::Submit) && arena.winner_task_id.is_none();
    html! {
        div.title-row {
            h1 { "Arena " code.id { (arena.id) } }
        }
        section.fields data-live="decision" #decision {
            dl.grid2 {
                dt { "Task" } dd { (input_preview(&arena.input, 400)) }
                dt { "Project" } dd { a href=(layout::link("/arenas", &[("project", &arena.project)])) { (arena.project) } }
                dt { "Queue" } dd { a href=(layout::link("/tasks", &[("queue", &arena.queue)])) { (arena.queue) } }
                dt { "Created" } dd { (layout::time(&arena.created_at)) }
                dt { "Contestants" } dd { (arena.contestants.len())
                    @if arena.ended { " · all ended" } @else { " · " (arena.contestants.iter().filter(|c| c.ended_at.is_none()).count()) " still to end" } }
                dt { "Winner" } dd {
                    @match (arena.contestants.iter().find(|c| c.winner), &arena.decided_by) {
                        (Some(w), Some(by)) => {
                            span.badge.winner { "★ " (label(w)) } " picked by " strong { (by) } " "
                            (layout::maybe_time(arena.decided_at.as_ref()))
                        }
                        _ if arena.ended => { span.muted { "not picked yet: compare them below" } }
                        _ => { span.muted { "not picked yet" } }
                    }
                }
            }
        }
        div.arena data-live="contestants" #contestants {
            @for (i, c) in arena.contestants.iter().enumerate() {
                section class=(if c.winner { "contestant card winner" } else { "contestant card" }) {
                    header {
                        h2 { span.muted { "#" (i + 1) " " } (c.agent) }
                        @if c.winner { span.badge.winner { "★ winner" } }
                    }
                    p.model { @if let Some(m) = &c.model { span.tag { (m) } } @else { span.muted { "default model" } } }
                    p { (layout::state_badge(c.state))
                        @if fastest == Some(i) { " " span.tag.best { "fastest" } }
                        @if cheapest == Some(i) { " " span.tag.best { "cheapest" } } }
                    dl.figures {
                        dt { "Time" } dd {
                            @match (c.duration_ms, c.started_at) {
                                (Some(ms), _) => { (duration(ms)) }
                                (None, Some(started)) => { "running since " (layout::time(&started)) }
                                (None, None) => { span.muted { "not started" } }
                            }
                        }
                        dt { "Tokens" } dd { (layout::count(c.usage.input_tokens)) " in · " (layout::count(c.usage.output_tokens)) " out" }
                        dt { "Cost" } dd { "$" (format!("{:.4}", c.usage.cost_usd)) }
                        dt { "Changes" } dd title=(format!("pending {}, applied {}, rejected {}, reverted {}",
                            c.changes.pending, c.changes.applied, c.changes.rejected, c.changes.reverted)) {
                            (c.changes.total()) @if c.changes.total() > 0 { span.muted { " (" (c.changes.pending) " pending)" } }
                        }
                    }
                    @if let Some(summary) = &c.output_summary {
                        pre.output { (summary) }
                    } @else if c.state != TaskState::Completed {
                        p.muted { "No output yet." }
                    }
                    @if let Some(error) = c.last_error.as_ref().filter(|_| c.state != TaskState::Completed) {
                        p.problem { (error) }
                    }
                    footer {
                        a href=(format!("/tasks/{}", c.task_id)) { "Task " (layout::short_id(&c.task_id.to_string())) " →" }
                        @if can_pick && c.state == TaskState::Completed {
                            form.inline method="post" action=(format!("/ui/arenas/{}/winner", arena.id))
                                data-confirm=(format!("Pick {} as the winner? An arena is decided once.", label(c))) {
                                (layout::csrf(viewer))
                                input type="hidden" name="task_id" value=(c.task_id);
                                button.primary type="submit" { "Pick as winner" }
                            }
                        }
                    }
                }
            }
        }
        section {
            details.input {
                summary { "The whole input, as every contestant got it" }
                (layout::json(&arena.input))
            }
        }
    }
}

//! `/`: what the operator opens first: every queue's backlog, the last hour's
//! throughput, the fleet, and today's spend.

use axum::extract::State;

use maud::{Markup, html};
use turnq_core::{
    auth::Scope,
    queue::QueueStore,
    time,
    worker::{WorkerRegistry, WorkerState},
};

use crate::{
    AppState,
    metrics::WORKER_DEAD_AFTER,
    ui::{
        chart,
        error::PageError,
        layout::{self, Nav},
        viewer::Viewer,
    },
};

pub(crate) async fn page(
    State(state): State<AppState>,
    viewer: Viewer,
) -> Result<Markup, PageError> {
    let db = state.db();
    let now = time::now();
    let queues = QueueStore::list(db).await?;
    let figures: Vec<_> = queues
        .into_iter()
        .map(|q| {
            let f = state.feed().and_then(|feed| feed.queue_figures(&q.name));
            (q, f)
        })
        .collect();
    let feed = state.feed();
    let throughput = feed.and_then(|f| f.per_minute());
    let today = feed.and_then(|f| f.usage_today());
    let workers = WorkerRegistry::list(db).await?;
    let live = workers
        .iter()
        .filter(|w| w.state == WorkerState::Live)
        .count();
    let dead = workers
        .iter()
        .filter(|w| w.state == WorkerState::Stale)
        .count();
    let admin = viewer.can(Scope::Admin);
    let body = html! {
        h1 { "Overview" }
        section.cards data-live="cards" #cards {
            div.card { h2 { "Workers" }
                p.big { (live) " live" }
                @if dead > 0 { p.bad { (dead) " not heard from in " (layout::span(WORKER_DEAD_AFTER.as_secs_f64())) } }
                p { a href="/workers" { "See the fleet" } } }
            div.card { h2 { "Today (UTC)" }
                @if let Some(u) = &today {
                    p.big { (layout::count(u.input_tokens + u.output_tokens)) " tokens" }
                    p { "$" (format!("{:.2}", u.cost_usd)) " over " (layout::count(u.tasks)) " tasks" }
                } @else { p.muted { "loading…" } } }
            div.card.wide { h2 { "Throughput, last hour" }
                @if let Some(minutes) = &throughput { (chart::throughput(now, minutes)) } @else { p.muted { "loading…" } } }
        }
        section data-live="queues" #queues {
            h2 { "Queues" }
            @if figures.is_empty() {
                (layout::empty("No task has been submitted yet, so there are no queues.", html! {
                    p { "Submit one from the " a href="/tasks#submit" { "tasks page" } ", or:" }
                    pre { "turnq submit --agent script --queue default '{\"steps\": 3}'" }
                }))
            } @else {
                div.scroll { table.grid {
                    thead { tr {
                        th { "Queue" } th.n { "Pending" } th.n { "Queued" } th.n { "Running" }
                        th.n { "Blocked" } th.n { "Failed" } th.n { "Done, 1 h" } th.n { "Failed, 1 h" }
                        th { "Oldest pending" } th { "Dispatch" }
                    } }
                    tbody {
                        @for (queue, f) in &figures {
                            tr data-row {
                                td { a href=(layout::link("/tasks", &[("queue", &queue.name)])) { (queue.name) } }
                                @if let Some(f) = f {
                                    td.n { a href=(layout::link("/tasks", &[("queue", &queue.name), ("state", "pending")])) { (layout::count(f.pending)) } }
                                    td.n { (layout::count(f.queued)) }
                                    td.n { a href=(layout::link("/tasks", &[("queue", &queue.name), ("state", "running")])) { (layout::count(f.running)) } }
                                    td.n { a href=(layout::link("/tasks", &[("queue", &queue.name), ("state", "blocked")])) { (layout::count(f.blocked)) } }
                                    td.n class=[(f.failed > 0).then_some("bad")] { a href=(layout::link("/tasks", &[("queue", &queue.name), ("state", "failed")])) { (layout::count(f.failed)) } }
                                    td.n { (layout::count(f.completed_last_hour)) }
                                    td.n { (layout::count(f.failed_last_hour)) }
                                    td { @if f.oldest_pending_seconds > 0.0 { (layout::span(f.oldest_pending_seconds)) } @else { span.muted { "–" } } }
                                } @else {
                                    td colspan="8" .muted { "figures loading…" }
                                }
                                td {
                                    @if queue.paused { span.badge.paused { "paused" } } @else { span.badge.ok { "running" } }
                                    @if admin {
                                        " "
                                        @if queue.paused {
                                            (layout::button(&viewer, &format!("/ui/queues/{}/resume", enc(&queue.name)), "Resume", "small", None))
                                        } @else {
                                            (layout::button(&viewer, &format!("/ui/queues/{}/pause", enc(&queue.name)), "Pause", "small",
                                                Some(&format!("Pause queue {}? Tasks already handed to Redis still run.", queue.name))))
                                        }
                                    }
                                }
                            }
                        }
                    }
                } }
            }
        }
    };
    Ok(layout::page(
        "Overview",
        &viewer,
        Nav::Overview,
        Some("?kind=task."),
        body,
    ))
}

/// `s` as one path segment.
pub(crate) fn enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

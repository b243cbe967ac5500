//! `/workers`: the fleet: each worker's host, pid, version, queues, agents, load and
//! last heartbeat, with the tasks it runs; dead and stopped workers greyed out.

use axum::extract::State;
use maud::{Markup, html};
use turnq_core::worker::WorkerRegistry;

use crate::{
    AppState,
    ui::{
        error::PageError,
        layout::{self, Nav},
        viewer::Viewer,
    },
};

/// The most running tasks the page links per worker.
const MAX_LISTED: usize = 50;

pub(crate) async fn page(
    State(state): State<AppState>,
    viewer: Viewer,
) -> Result<Markup, PageError> {
    let workers = WorkerRegistry::recent(state.db(), crate::routes::WORKERS_LISTED_FOR).await?;
    // From the event feed's tally: no table is read, however many turns run.
    let running = state.feed().and_then(|f| f.running_by_worker());
    let stream = layout::stream(&state, &[("kind", "task.")]);
    let body = html! {
        h1 { "Workers" }
        div data-live="workers" #workers {
            @if workers.is_empty() {
                (layout::empty("No worker has registered yet.", html! {
                    p { "Start one on any host that reaches Postgres and Redis:" }
                    pre { "turnq worker --queues default" }
                }))
            } @else {
                div.scroll { table.grid {
                    thead { tr { th { "Worker" } th { "Status" } th { "Host" } th.n { "Pid" } th { "Version" }
                        th { "Queues" } th { "Agents" } th { "Load" } th { "Last heartbeat" } th { "Running" } } }
                    tbody {
                        @for w in &workers {
                            @let status = w.state.as_str();
                            @let tasks = running.as_ref().and_then(|r| r.get(&w.id)).map(Vec::as_slice).unwrap_or_default();
                            tr data-row class=[(status != "live").then_some("gone")] {
                                td { code { (w.id) } }
                                td { span class=(format!("badge worker-{status}")) { (status) } }
                                td { (w.host) }
                                td.n { (w.pid) }
                                td { (w.version) }
                                td { @for q in w.queues.as_array().into_iter().flatten() { span.tag { (q.as_str().unwrap_or_default()) } " " } }
                                td { @for a in &w.agents { span.tag title=(format!("{} {}", a.backend, a.version.as_deref().unwrap_or("unprobed"))) { (a.name) } " " } }
                                td { (tasks.len()) " / " (w.concurrency)
                                    meter min="0" max=(w.concurrency.max(1)) value=(tasks.len()) {} }
                                td { (layout::time(&w.last_heartbeat_at)) }
                                td { @for id in tasks.iter().take(MAX_LISTED) { a href=(format!("/tasks/{id}")) { (layout::short_id(&id.to_string())) } " " }
                                    @if tasks.len() > MAX_LISTED { span.muted { "and " (tasks.len() - MAX_LISTED) " more" } } }
                            }
                        }
                    }
                } }
            }
        }
    };
    Ok(layout::page(
        "Workers",
        &viewer,
        Nav::Workers,
        Some(&stream),
        body,
    ))
}

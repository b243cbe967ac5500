//! `/workers`: the fleet: each worker's host, pid, version, queues, agents, load and
//! last heartbeat, with the tasks it runs; dead and stopped workers greyed out.

use std::collections::HashMap;

use axum::extract::State;
use chrono::TimeDelta;
use maud::{Markup, html};
use turnq_core::{
    TaskId,
    task::TaskStore,
    time,
    worker::WorkerRegistry,
};

use crate::{
    AppState,
    metrics::WORKER_DEAD_AFTER,
    ui::{
        layout::{self, Nav, PageError},
        signin::Viewer,
    },
};

/// The most running tasks the page lists.
const MAX_RUNNING: u64 = 1_000;

pub(crate) async fn page(
    State(state): State<AppState>,
    viewer: Viewer,
) -> Result<Markup, PageError> {
    let workers = WorkerRegistry::list(state.db()).await?;
    let running = TaskStore::running_by_worker(state.db(), MAX_RUNNING).await?;
    let mut by_worker: HashMap<&str, Vec<TaskId>> = HashMap::new();
    for (id, worker) in &running {
        if let Some(w) = worker {
            by_worker.entry(w.as_str()).or_default().push(*id);
        }
    }
    let dead_before = time::now() - TimeDelta::from_std(WORKER_DEAD_AFTER).unwrap_or_default();
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
                            @let status = if w.stopped_at.is_some() { "stopped" } else if w.last_heartbeat_at < dead_before { "dead" } else { "live" };
                            @let tasks = by_worker.get(w.id.as_str()).map(Vec::as_slice).unwrap_or_default();
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
                                td { @for id in tasks { a href=(format!("/tasks/{id}")) { (layout::short_id(&id.to_string())) } " " } }
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

//! `/agents`: the registry, and each agent's backend and probed version on each worker.

use axum::extract::State;
use maud::{Markup, html};
use turnq_core::{agent::AgentRegistry, worker::WorkerRegistry};

use crate::{
    AppState,
    ui::{
        error::PageError,
        layout::{self, Nav},
        viewer::Viewer,
    },
};

pub(crate) async fn page(
    State(state): State<AppState>,
    viewer: Viewer,
) -> Result<Markup, PageError> {
    let agents = AgentRegistry::list(state.db()).await?;
    let workers = WorkerRegistry::list(state.db()).await?;
    let live: Vec<_> = workers.iter().filter(|w| w.stopped_at.is_none()).collect();
    let body = html! {
        h1 { "Agents" }
        p.hint { "The built-in " code { "script" } " agent needs no registration. Register others with "
            code { "turnq agent put NAME --backend command|openai …" } "." }
        @if agents.is_empty() {
            (layout::empty("No agent is registered.", html! { pre { "turnq agent put claude --backend command --config '{\"program\": \"claude\"}'" } }))
        } @else {
            div.scroll { table.grid {
                thead { tr { th { "Agent" } th { "Backend" } th { "Models" } th { "Registry version" } th { "Last probed" } th { "On workers" } } }
                tbody {
                    @for a in &agents {
                        tr data-row {
                            td { strong { (a.name) } @if let Some(l) = &a.label { br; span.muted { (l) } } }
                            td { code { (a.backend) } }
                            td { @for m in a.models.as_array().into_iter().flatten() { span.tag { (m.as_str().unwrap_or_default()) } " " } }
                            td { (a.version.as_deref().unwrap_or("–")) }
                            td { (layout::maybe_time(a.last_probed_at.as_ref())) }
                            td {
                                @for w in &live {
                                    @for wa in w.agents.iter().filter(|wa| wa.name == a.name) {
                                        div { code { (w.host) } " " (wa.backend) " " (wa.version.as_deref().unwrap_or("unprobed")) }
                                    }
                                }
                            }
                        }
                    }
                }
            } }
        }
    };
    Ok(layout::page("Agents", &viewer, Nav::Agents, None, body))
}

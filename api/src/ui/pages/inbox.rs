//! `/inbox`: the tasks that wait for a person: blocked ones (what they wait for) and
//! failed ones (why), each with its actions.

use axum::extract::{RawQuery, State};
use maud::{Markup, html};
use turnq_core::{
    TaskId,
    auth::Scope,
    task::{TaskFilter, TaskState, TaskStore},
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

pub(crate) async fn page(
    State(state): State<AppState>,
    viewer: Viewer,
    RawQuery(query): RawQuery,
) -> Result<Markup, PageError> {
    let form = Form::from_query(query.as_deref());
    let cursor = form.value("cursor").and_then(|c| c.parse::<TaskId>().ok());
    let filter = TaskFilter {
        states: vec![TaskState::Blocked, TaskState::Failed],
        ..Default::default()
    };
    let page = TaskStore::list(state.db(), &filter, cursor, 50).await?;
    let unserved = crate::routes::unserved_agents(&state)
        .await
        .unwrap_or_default();
    let next = page.next_cursor.map(|c| c.to_string());
    let stream = layout::stream(&state, &[("kind", "task.")]);
    let body = html! {
        h1 { "Inbox" }
        p.hint { "Blocked tasks wait for an approval; failed ones for a retry. "
            a href="/tasks?state=blocked,failed" { "Filter and act on them in bulk" } "." }
        div data-live="inbox" #inbox {
            @for u in &unserved {
                p.alert.unserved { strong { "No worker serves agent " (u.agent) " on queue " (u.queue) ". " }
                    (u.waiting) " task" @if u.waiting != 1 { "s" } " wait for one: start "
                    code { "turnq worker --queues " (u.queue) " --agents " (u.agent) } "." }
            }
            @if page.tasks.is_empty() && unserved.is_empty() {
                (layout::empty("Nothing waits for you.", html! { p { "Blocked and failed tasks appear here as they happen." } }))
            } @else {
                ul.inbox {
                    @for t in &page.tasks {
                        li data-row data-href=(format!("/tasks/{}", t.id)) {
                            div.head {
                                (layout::state_badge(t.state)) " "
                                a href=(format!("/tasks/{}", t.id)) { (layout::short_id(&t.id.to_string())) } " "
                                span.muted { (t.queue) " · " (t.agent) " · " (t.project) " · " (layout::maybe_time(t.ended_at.as_ref().or(Some(&t.updated_at)))) }
                            }
                            p.input { (input_preview(&t.input, 160)) }
                            p.why {
                                @if t.state == TaskState::Blocked { strong { "Waits for: " } } @else { strong { "Failed: " } }
                                (t.last_error.as_deref().unwrap_or("no reason recorded"))
                            }
                            div.actions {
                                @if viewer.can(Scope::Admin) && t.state == TaskState::Blocked {
                                    (layout::button(&viewer, &format!("/ui/tasks/{}/approve", t.id), "Approve", "primary", None))
                                }
                                @if viewer.can(Scope::Admin) && t.state == TaskState::Failed {
                                    (layout::button(&viewer, &format!("/ui/tasks/{}/retry", t.id), "Retry", "primary", None))
                                }
                                @if viewer.can(Scope::Submit) && t.state == TaskState::Blocked {
                                    (layout::button(&viewer, &format!("/ui/tasks/{}/cancel", t.id), "Cancel", "danger", Some("Cancel this task?")))
                                }
                            }
                        }
                    }
                }
                @if let Some(next) = &next {
                    div.pager { a href=(layout::link("/inbox", &[("cursor", next)])) rel="next" { "Older →" } }
                }
            }
        }
    };
    Ok(layout::page(
        "Inbox",
        &viewer,
        Nav::Inbox,
        Some(&stream),
        body,
    ))
}

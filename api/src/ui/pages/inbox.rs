//! `/inbox`: the tasks that wait for a person: blocked ones (what they ask, with a form
//! to answer it, or for a bare block its reason and an approval) and failed ones (why),
//! each with its actions.

use axum::extract::{RawQuery, State};
use maud::{Markup, html};
use turnq_core::{
    TaskId,
    auth::Scope,
    task::{RequestKind, Task, TaskFilter, TaskState, TaskStore},
};

use super::input_preview;
use crate::{
    AppState,
    ui::{
        error::PageError,
        layout::{self, Nav},
        request::{self, Back},
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
    // The sub-tasks of the parents that wait for theirs (one query each; a page holds
    // few such parents).
    let mut children: Vec<Vec<Task>> = Vec::with_capacity(page.tasks.len());
    for t in &page.tasks {
        let waits = t
            .open_request()
            .is_some_and(|r| r.kind == RequestKind::Children);
        children.push(if waits {
            TaskStore::children(state.db(), t.id, 100).await?
        } else {
            Vec::new()
        });
    }
    let unserved = crate::routes::unserved_agents(&state)
        .await
        .unwrap_or_default();
    let next = page.next_cursor.map(|c| c.to_string());
    let stream = layout::stream(&state, &[("kind", "task.")]);
    let body = html! {
        h1 { "Inbox" }
        p.hint { "Blocked tasks wait for an answer (a permission, a question, a plan to approve, a text) or, \
            when they ask nothing, an approval; failed ones wait for a retry. "
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
                    @for (t, kids) in page.tasks.iter().zip(&children) {
                        li data-row data-href=(format!("/tasks/{}", t.id)) {
                            div.head {
                                (layout::state_badge(t.state)) " "
                                a href=(format!("/tasks/{}", t.id)) { (layout::short_id(&t.id.to_string())) } " "
                                span.muted { (t.queue) " · " (t.agent) " · " (t.project) " · " (layout::maybe_time(t.ended_at.as_ref().or(Some(&t.updated_at)))) }
                            }
                            p.input { (input_preview(&t.input, 160)) }
                            @if let Some(asked) = t.open_request() {
                                (request::open(&viewer, t, asked, kids, Back::Inbox))
                            } @else if t.state == TaskState::Blocked {
                                // A bare block: the turn said why, and asks nothing to choose.
                                p.why { strong { "Waits for: " }
                                    (t.output_summary.as_deref().or(t.last_error.as_deref()).unwrap_or("no reason recorded")) }
                            } @else {
                                p.why { strong { "Failed: " } (t.last_error.as_deref().unwrap_or("no reason recorded")) }
                            }
                            div.actions {
                                @if viewer.can(Scope::Admin) && t.state == TaskState::Blocked && t.open_request().is_none() {
                                    (layout::button(&viewer, &format!("/ui/tasks/{}/approve", t.id), "Approve", "primary", None))
                                }
                                @if viewer.can(Scope::Admin) && t.state == TaskState::Failed {
                                    (layout::button(&viewer, &format!("/ui/tasks/{}/retry", t.id), "Retry", "primary", None))
                                }
                                @if viewer.can(Scope::Submit) && t.state == TaskState::Blocked {
                                    (layout::button(&viewer, &format!("/ui/tasks/{}/cancel", t.id), "Cancel task", "danger", Some("Cancel this task?")))
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

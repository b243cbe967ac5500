//! What a blocked task asks a person, shown where a person answers it (the inbox and
//! the task page): a form that fits the request's kind, posting to
//! `/ui/tasks/{id}/respond` ([`super::actions::respond`]); and, once answered, the
//! answer.
//!
//! Every form carries the task's version: an answer is to the request the person read,
//! never to a newer one that came in between.

use maud::{Markup, html};
use turnq_core::{
    auth::Scope,
    task::{HumanRequest, OnTimeout, RequestKind, Response, Task},
    time,
};

use super::{layout, viewer::Viewer};

/// Where the action sends the person after the answer: back where they answered.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Back {
    Inbox,
    Task,
}

impl Back {
    pub fn as_str(self) -> &'static str {
        match self {
            Back::Inbox => "inbox",
            Back::Task => "task",
        }
    }
}

/// The option a person refuses a permission with; an edited input is ignored with it
/// (and may then be anything, even not JSON: it is not used).
pub(crate) const DENY: &str = "deny";

fn kind_label(kind: RequestKind) -> &'static str {
    match kind {
        RequestKind::Permission => "Permission",
        RequestKind::Question => "Question",
        RequestKind::Plan => "Plan",
        RequestKind::Text => "Question",
        RequestKind::Children => "Sub-tasks",
    }
}

/// The label of an option's button: the well-known ones capitalised, a question's own
/// as the agent wrote them.
fn option_label(kind: RequestKind, option: &str) -> String {
    match kind {
        RequestKind::Permission | RequestKind::Plan => {
            let mut chars = option.chars();
            chars
                .next()
                .map(|c| c.to_uppercase().chain(chars).collect())
                .unwrap_or_default()
        }
        _ => option.to_owned(),
    }
}

/// The class of an option's button: yes in the accent colour, no in red.
fn option_class(kind: RequestKind, option: &str) -> &'static str {
    match (kind, option) {
        (RequestKind::Permission, "allow") | (RequestKind::Plan, "approve") => "primary",
        (RequestKind::Permission, DENY) | (RequestKind::Plan, "reject") => "danger",
        _ => "",
    }
}

/// What happens when nobody answers in time.
fn on_timeout(request: &HumanRequest) -> &'static str {
    match (request.on_timeout, request.kind) {
        (OnTimeout::Fail, _) => "the task fails",
        (OnTimeout::Deny, RequestKind::Permission) => "deny",
        (OnTimeout::Deny, RequestKind::Plan) => "reject",
        (OnTimeout::Deny, _) => "it goes on without an answer",
    }
}

/// "answer in 9 min, then: deny", or that the deadline passed.
fn deadline(request: &HumanRequest) -> Markup {
    html! {
        @if let Some(at) = &request.deadline {
            span.deadline {
                @if *at > time::now() {
                    "answer " (layout::time(at)) ", then: " strong { (on_timeout(request)) }
                } @else {
                    "the deadline passed " (layout::time(at)) "; turnq ends it: " strong { (on_timeout(request)) }
                }
            }
        }
    }
}

/// The rows a textarea needs for `text`, within reason.
fn rows(text: &str, min: usize, max: usize) -> usize {
    text.lines().count().clamp(min, max)
}

/// The open request of `task`, with a form to answer it when `viewer` may (`submit`).
/// `children`: the sub-tasks a `children` request waits for.
pub(crate) fn open(
    viewer: &Viewer,
    task: &Task,
    request: &HumanRequest,
    children: &[Task],
    back: Back,
) -> Markup {
    let id = task.id;
    let kind = request.kind;
    let input = request
        .tool_input
        .as_ref()
        .map(|v| serde_json::to_string_pretty(v).unwrap_or_default());
    html! {
        div.request data-kind=(kind.as_str()) {
            // A wait on sub-tasks has no deadline and nobody to ask: the heading says it.
            @if kind != RequestKind::Children {
                p.ask {
                    span class=(format!("tag kind-{}", kind.as_str())) { (kind_label(kind)) }
                    @if let Some(tool) = &request.tool { " " code.tool { (tool) } }
                    " " (deadline(request))
                }
            }
            @if kind == RequestKind::Children {
                p { "Waits for its " (children.len()) " sub-task" @if children.len() != 1 { "s" }
                    "; it goes on by itself when they have all ended."
                    @if back == Back::Task { " " a href="#tree" { "See them below." } } }
                // The task page shows them as a tree of their own.
                @if back == Back::Inbox { (subtask_list(children)) }
            } @else {
                @if kind == RequestKind::Plan {
                    pre.plan { (request.prompt) }
                } @else {
                    p.prompt { (request.prompt) }
                }
                @if viewer.can(Scope::Submit) {
                    form.respond method="post" action=(format!("/ui/tasks/{id}/respond")) {
                        (layout::csrf(viewer))
                        input type="hidden" name="back" value=(back.as_str());
                        input type="hidden" name="version" value=(task.version.0);
                        @if let Some(input) = &input {
                            label {
                                span { "Tool input " span.muted { "(JSON; edit it before allowing)" } }
                                textarea name="input" rows=(rows(input, 3, 16)) spellcheck="false" { (input) }
                            }
                        }
                        @if kind == RequestKind::Text {
                            label {
                                span { "Your answer" }
                                textarea name="text" rows="4" required { }
                            }
                        } @else {
                            label {
                                span { "Comment " span.muted { "(optional)" } }
                                textarea.comment name="text" rows="2" { }
                            }
                        }
                        div.actions {
                            @if request.options.is_empty() {
                                button.primary type="submit" { "Send" }
                            }
                            @for option in &request.options {
                                button type="submit" name="choice" value=(option) class=(option_class(kind, option)) {
                                    (option_label(kind, option))
                                }
                            }
                        }
                    }
                } @else {
                    @if let Some(input) = &input { pre.json { (input) } }
                    @if !request.options.is_empty() {
                        p.muted { "Options: " (request.options.join(", ")) }
                    }
                }
            }
        }
    }
}

/// A request no longer open: answered (`response`), or ended without an answer (the
/// task failed at the deadline, or was cancelled).
pub(crate) fn answered(request: &HumanRequest, response: Option<&Response>) -> Markup {
    let kind = request.kind;
    let Some(response) = response else {
        return html! {
            div.request.answered data-kind=(kind.as_str()) {
                p.ask {
                    span class=(format!("tag kind-{}", kind.as_str())) { (kind_label(kind)) }
                    @if let Some(tool) = &request.tool { " " code.tool { (tool) } }
                    " " span.muted { "not answered" }
                }
                @if kind != RequestKind::Children { p.prompt { (request.prompt) } }
            }
        };
    };
    html! {
        div.request.answered data-kind=(kind.as_str()) {
            @if kind == RequestKind::Children {
                p { "Its " (response.children.len()) " sub-task" @if response.children.len() != 1 { "s" }
                    " ended; it went on with what they gave:" }
                ul.subtasks { @for c in &response.children {
                    li {
                        (layout::state_badge(c.state)) " "
                        a href=(format!("/tasks/{}", c.id)) { (layout::short_id(&c.id.to_string())) }
                        @if let Some(text) = &c.output_summary { " " span.muted { (preview(text, 120)) } }
                        @else if let Some(error) = &c.error { " " span.bad { (preview(error, 120)) } }
                    }
                } }
            } @else {
                p.ask {
                    span class=(format!("tag kind-{}", kind.as_str())) { (kind_label(kind)) }
                    @if let Some(tool) = &request.tool { " " code.tool { (tool) } }
                    @if response.expired { " " span.badge.expired { "expired" } }
                }
                @if kind == RequestKind::Plan {
                    details { summary { "The plan" } pre.plan { (request.prompt) } }
                } @else {
                    p.prompt { (request.prompt) }
                }
                dl.grid2 {
                    dt { "Answer" } dd {
                        @if let Some(choice) = &response.choice {
                            strong class=(option_class(kind, choice)) { (option_label(kind, choice)) }
                        } @else { span.muted { "no choice" } }
                        @if response.expired { " " span.muted { "(nobody answered in time; turnq answered)" } }
                    }
                    dt { "By" } dd {
                        @if let Some(by) = &response.by { (by) } @else { span.muted { "turnq" } }
                    }
                    @if let Some(text) = &response.text {
                        dt { @if kind == RequestKind::Text { "Text" } @else { "Comment" } }
                        dd.text { (text) }
                    }
                    @if let Some(input) = &response.input {
                        dt { "Edited input" } dd { (layout::json(input)) }
                    }
                }
            }
        }
    }
}

/// `tasks` as a flat list of links with their states.
fn subtask_list(tasks: &[Task]) -> Markup {
    html! {
        ul.subtasks {
            @for c in tasks {
                li {
                    (layout::state_badge(c.state)) " "
                    a href=(format!("/tasks/{}", c.id)) { (layout::short_id(&c.id.to_string())) } " "
                    span.muted { (super::pages::input_preview(&c.input, 80)) }
                }
            }
        }
    }
}

fn preview(text: &str, max: usize) -> String {
    let one_line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match one_line.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &one_line[..cut]),
        None => one_line,
    }
}

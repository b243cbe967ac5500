//! The page shell and the pieces every page shares.

use axum::response::{IntoResponse, Response};
use chrono::SecondsFormat;
use maud::{DOCTYPE, Markup, PreEscaped, html};
use turnq_core::{task::TaskState, time::Timestamp};

use super::{assets, error::PageError, viewer::Viewer};

/// The query of `/v1/events/stream` for a page rendered now: `pairs` plus `after=` the
/// feed's head when the page was read, so an event committed between the render and the
/// browser's connect is not missed (app.js skips the ones the page already shows).
pub(crate) fn stream(state: &crate::AppState, pairs: &[(&str, &str)]) -> String {
    let head = state
        .feed()
        .map(|f| f.head().to_string())
        .unwrap_or_default();
    let mut all = pairs.to_vec();
    all.push(("after", &head));
    link("", &all)
}

/// The pages of the navigation bar.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Nav {
    Overview,
    Tasks,
    Inbox,
    Workers,
    Sessions,
    Agents,
    Arenas,
}

const NAV: [(Nav, &str, &str); 7] = [
    (Nav::Overview, "/", "Overview"),
    (Nav::Tasks, "/tasks", "Tasks"),
    (Nav::Inbox, "/inbox", "Inbox"),
    (Nav::Workers, "/workers", "Workers"),
    (Nav::Sessions, "/sessions", "Sessions"),
    (Nav::Agents, "/agents", "Agents"),
    (Nav::Arenas, "/arenas", "Arenas"),
];

fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            meta name="color-scheme" content="light dark";
            title { (title) " · turnq" }
            link rel="icon" href=(assets::url("icon.svg")) type="image/svg+xml";
            link rel="stylesheet" href=(assets::url("app.css"));
            script src=(assets::url("app.js")) defer {}
        }
    }
}

/// A full page for `viewer`. `stream` is the query of `/v1/events/stream` whose events
/// refresh the page's `data-live` regions (`None`: the page does not update live).
pub(crate) fn page(
    title: &str,
    viewer: &Viewer,
    current: Nav,
    stream: Option<&str>,
    body: Markup,
) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body data-stream=[stream.map(|q| format!("/v1/events/stream{q}"))] {
                header.top {
                    a.brand href="/" { "turnq" }
                    nav {
                        @for (nav, href, label) in NAV {
                            a href=(href) aria-current=[(nav == current).then_some("page")] { (label) }
                        }
                    }
                    form.find method="get" action="/tasks" role="search" {
                        input #find type="search" name="q" placeholder="Search input or jump to id  ( / )"
                            aria-label="Search tasks by input text, or jump to a task id";
                    }
                    div.who {
                        span.live-state #live-state title="Live updates" { "" }
                        button.theme #theme type="button" title="Theme: follows the system (click to change)" { "◐" }
                        span.token title=(format!("scopes: {}", scopes(viewer))) { (viewer.token.name) }
                        form method="post" action="/signout" {
                            (csrf(viewer))
                            button.link type="submit" { "Sign out" }
                        }
                    }
                }
                main #main { (body) }
                dialog #help {
                    h2 { "Keyboard" }
                    dl.keys {
                        dt { kbd { "/" } } dd { "search tasks, or paste a task id" }
                        dt { kbd { "j" } " " kbd { "k" } } dd { "move down and up a list; " kbd { "Enter" } " opens" }
                        dt { kbd { "g" } " " kbd { "o" } } dd { "overview" }
                        dt { kbd { "g" } " " kbd { "t" } } dd { "tasks" }
                        dt { kbd { "g" } " " kbd { "i" } } dd { "inbox" }
                        dt { kbd { "g" } " " kbd { "w" } } dd { "workers" }
                        dt { kbd { "?" } } dd { "this help" }
                    }
                    form method="dialog" { button { "Close" } }
                }
            }
        }
    }
}

fn scopes(viewer: &Viewer) -> String {
    viewer
        .token
        .scopes
        .iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A page without navigation: sign-in and errors.
pub(crate) fn bare(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body.bare { main #main { (body) } }
        }
    }
}

/// The hidden CSRF field every action form carries.
pub(crate) fn csrf(viewer: &Viewer) -> Markup {
    html! { input type="hidden" name="csrf" value=(viewer.csrf); }
}

/// A one-button form posting to `action`; `confirm` asks first (in the browser, through
/// app.js; without JavaScript the action runs at once).
pub(crate) fn button(
    viewer: &Viewer,
    action: &str,
    label: &str,
    class: &str,
    confirm: Option<&str>,
) -> Markup {
    html! {
        form.inline method="post" action=(action) data-confirm=[confirm] {
            (csrf(viewer))
            button type="submit" class=(class) { (label) }
        }
    }
}

/// `t` as "3 min ago" (or "in 5 s"), with the exact UTC time on hover; app.js keeps the
/// text current.
pub(crate) fn time(t: &Timestamp) -> Markup {
    let exact = t.to_rfc3339_opts(SecondsFormat::Millis, true);
    html! { time datetime=(exact) title=(exact) { (ago(t)) } }
}

/// `Some(t)` as [`time`], `None` as a dash.
pub(crate) fn maybe_time(t: Option<&Timestamp>) -> Markup {
    match t {
        Some(t) => time(t),
        None => html! { span.muted { "–" } },
    }
}

/// How long ago `t` was, roughly.
pub(crate) fn ago(t: &Timestamp) -> String {
    let secs = (turnq_core::time::now() - *t).num_seconds();
    if secs < 0 {
        format!("in {}", span(-secs as f64))
    } else if secs < 5 {
        "just now".to_owned()
    } else {
        format!("{} ago", span(secs as f64))
    }
}

/// A length of time in its largest sensible unit.
pub(crate) fn span(secs: f64) -> String {
    let s = secs.max(0.0);
    if s < 1.0 {
        format!("{} ms", (s * 1000.0).round())
    } else if s < 60.0 {
        format!("{} s", s.round())
    } else if s < 3600.0 {
        format!("{} min", (s / 60.0).round())
    } else if s < 86_400.0 {
        format!("{:.1} h", s / 3600.0)
    } else {
        format!("{:.1} d", s / 86_400.0)
    }
}

pub(crate) fn state_badge(state: TaskState) -> Markup {
    html! { span class=(format!("badge state-{}", state.as_str())) { (state.as_str()) } }
}

/// A short form of a task id (its random tail), with the whole id on hover.
pub(crate) fn short_id(id: &str) -> Markup {
    let short = id.rsplit('-').next().unwrap_or(id);
    html! { code title=(id) { (short.get(..8).unwrap_or(short)) } }
}

/// `path` with the query `pairs` (empty values left out).
pub(crate) fn link(path: &str, pairs: &[(&str, &str)]) -> String {
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    let mut any = false;
    for (name, value) in pairs.iter().filter(|(_, v)| !v.is_empty()) {
        query.append_pair(name, value);
        any = true;
    }
    if any {
        format!("{path}?{}", query.finish())
    } else {
        path.to_owned()
    }
}

/// An empty state: what there is not, and what to do about it.
pub(crate) fn empty(what: &str, next: Markup) -> Markup {
    html! { div.empty { p { (what) } (next) } }
}

/// A number with thousands separators.
pub(crate) fn count(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

/// JSON, pretty-printed for reading.
pub(crate) fn json(value: &serde_json::Value) -> Markup {
    let text = serde_json::to_string_pretty(value).unwrap_or_default();
    html! { pre.json { (text) } }
}

/// Nothing: for an `@if` without an `@else`.
pub(crate) fn nothing() -> Markup {
    PreEscaped(String::new())
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let title = self.status.canonical_reason().unwrap_or("Error");
        let body = bare(
            title,
            html! {
                div.problem-page {
                    h1 { (self.status.as_u16()) " " (title) }
                    p.problem role="alert" { (self.message) }
                    p {
                        @if let Some((href, label)) = &self.back {
                            a href=(href) { (label) } " · "
                        }
                        a href="/" { "Back to the overview" }
                    }
                }
            },
        );
        (self.status, body).into_response()
    }
}

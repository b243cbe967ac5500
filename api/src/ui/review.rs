//! A session's workspace as a person reviews it, on the session page: its worktree, the
//! pending changes as diffs with the forms that decide them (posting to
//! `/ui/sessions/{project}/{session}/changes/{apply|reject|revert}`), the changes
//! already decided, and the checkpoints, each with a restore (posting to
//! `/ui/checkpoints/{id}/restore`, which asks first). See [`super::actions`].

use maud::{Markup, html};
use turnq_core::{
    auth::Scope,
    workspace::{Checkpoint, PendingChange, Worktree},
};

use super::{layout, pages::overview::enc, viewer::Viewer};

/// A diff longer than this many lines starts folded.
const FOLD_LINES: usize = 40;
/// The most lines of one file's diff a page shows; the JSON has them all.
const MAX_DIFF_LINES: usize = 2_000;
/// The most decided changes and checkpoints listed.
const MAX_LISTED: usize = 200;

/// Where a session's page is, and its workspace section.
pub(crate) fn session_href(project: &str, session: &str) -> String {
    format!("/sessions/{}/{}", enc(project), enc(session))
}

/// What the session page shows of a workspace.
pub(crate) struct Workspace<'a> {
    pub project: &'a str,
    pub session: &'a str,
    /// The session's worktrees, newest first.
    pub worktrees: &'a [Worktree],
    /// Oldest first, as the store lists them.
    pub changes: &'a [PendingChange],
    /// Newest first.
    pub checkpoints: &'a [Checkpoint],
    /// This API process can run git on the active worktree.
    pub reachable: bool,
}

impl Workspace<'_> {
    fn active(&self) -> Option<&Worktree> {
        self.worktrees.iter().find(|w| w.status == "active")
    }

    fn actions(&self) -> String {
        format!(
            "/ui/sessions/{}/{}/changes",
            enc(self.project),
            enc(self.session)
        )
    }
}

/// The workspace section of the session page.
pub(crate) fn section(viewer: &Viewer, ws: &Workspace) -> Markup {
    let active = ws.active();
    let shown = active.or(ws.worktrees.first());
    let pending: Vec<&PendingChange> = ws
        .changes
        .iter()
        .filter(|c| c.status == "pending")
        .collect();
    let mut decided: Vec<&PendingChange> = ws
        .changes
        .iter()
        .filter(|c| c.status != "pending")
        .collect();
    decided.sort_by(|a, b| {
        b.decided_at
            .unwrap_or(b.created_at)
            .cmp(&a.decided_at.unwrap_or(a.created_at))
    });
    let decidable = |c: &PendingChange| active.is_some_and(|w| c.worktree_id == Some(w.id));
    let decidable_count = pending.iter().filter(|c| decidable(c)).count();
    let can_decide = viewer.can(Scope::Submit) && decidable_count > 0;
    let target = active.map(|w| w.target_branch.as_str()).unwrap_or_default();
    let json = format!(
        "/v1/sessions/{}/{}/changes",
        enc(ws.project),
        enc(ws.session)
    );
    html! {
        h2 { "Workspace" }
        @if let Some(w) = shown {
            (worktree(w))
        }
        @if active.is_none() {
            p.hint { "The session has no active worktree (it was archived): its next task naming a repository gets a new one. Nothing here can be applied or restored." }
        } @else if !ws.reachable {
            p.alert { strong { "This API process cannot reach the worktree. " }
                "Applying, reverting and restoring run git where it lives (host " code { (active.map(|w| w.host.as_str()).unwrap_or_default()) } "): "
                "use an API process on that host, or put the repositories on shared storage. Rejecting works from here." }
        }
        h3 #pending-changes { "Pending changes " span.muted { "(" (pending.len()) ")" } }
        @if pending.is_empty() {
            p.muted { "No change waits for a decision." }
        } @else if can_decide {
            form.review #review method="post" action=(format!("{}/apply", ws.actions())) {
                (layout::csrf(viewer))
                div.bulk.review-bar {
                    label.select-all { input type="checkbox" data-select-all aria-label="Select every pending change"; " All" }
                    span { "Selected: " }
                    button.primary type="submit" formaction=(format!("{}/apply", ws.actions()))
                        title=(format!("Commit the selected changes onto {target}")) { "Apply selected" }
                    button type="submit" formaction=(format!("{}/reject", ws.actions()))
                        title="Not wanted: the worktree keeps the files, git is not touched" { "Reject selected" }
                    button.danger type="submit" formaction=(format!("{}/revert", ws.actions()))
                        data-confirm="Undo the {n} selected changes in the worktree? Their files go back to the base commit."
                        title="Undo in the worktree: the files go back to the base commit" { "Revert selected" }
                    span.sep {}
                    button type="submit" name="all" value="yes" formaction=(format!("{}/apply", ws.actions()))
                        data-confirm=(format!("Apply all {decidable_count} pending changes onto {target}?")) {
                        "Apply all (" (decidable_count) ")"
                    }
                }
                (change_list(&pending, &decidable, true, &json))
            }
        } @else {
            (change_list(&pending, &decidable, false, &json))
        }
        @if !decided.is_empty() {
            h3 { "Decided " span.muted { "(" (decided.len()) ")" } }
            div.scroll { table.grid.decided {
                thead { tr { th { "Status" } th { "File" } th { "Task" } th { "By" } th { "When" } th { "Commit" } } }
                tbody {
                    @for c in decided.iter().take(MAX_LISTED) {
                        tr.gone[c.status == "superseded"] data-change=(c.id) {
                            td { span class=(format!("badge change-{}", c.status)) { (c.status) } }
                            td { (op_badge(&c.operation)) " " code { (c.path) } }
                            td { (task_link(c)) }
                            td { @if let Some(by) = &c.decided_by { (by) } @else if c.status == "superseded" { span.muted { "a later turn" } } @else { span.muted { "–" } } }
                            td { (layout::maybe_time(c.decided_at.as_ref())) }
                            td { @if let Some(sha) = &c.commit_sha { (short_sha(sha)) } @else { span.muted { "–" } } }
                        }
                    }
                }
            } }
            @if decided.len() > MAX_LISTED {
                p.hint { "The newest " (MAX_LISTED) " are listed; " a href=(json) { "the JSON" } " has them all." }
            }
        }
        h3 #checkpoints { "Checkpoints " span.muted { "(" (ws.checkpoints.len()) ")" } }
        @if ws.checkpoints.is_empty() {
            p.muted { "None yet: one is taken before each turn in the worktree." }
        } @else {
            div.scroll { table.grid.checkpoints {
                thead { tr { th { "Checkpoint" } th { "Taken" } th { "Commit" } th { "Task" } th {} } }
                tbody {
                    @for cp in ws.checkpoints.iter().take(MAX_LISTED) {
                        @let restorable = active.is_some_and(|w| cp.worktree_id == Some(w.id));
                        tr.gone[!restorable] data-checkpoint=(cp.id) {
                            td.input { (checkpoint_label(cp)) }
                            td { (layout::time(&cp.created_at)) }
                            td { (short_sha(&cp.commit_sha)) }
                            td { @if let Some(t) = cp.task_id { a href=(format!("/tasks/{t}")) { (layout::short_id(&t.to_string())) } } }
                            td {
                                @if restorable && viewer.can(Scope::Submit) {
                                    (layout::button(viewer, &format!("/ui/checkpoints/{}/restore", cp.id), "Restore…", "small", None))
                                } @else if !restorable {
                                    span.muted { "archived worktree" }
                                }
                            }
                        }
                    }
                }
            } }
        }
    }
}

/// The pending changes, each a header (with its checkbox when `checkboxes` and it may
/// be decided here) and its diff.
fn change_list(
    pending: &[&PendingChange],
    decidable: &dyn Fn(&PendingChange) -> bool,
    checkboxes: bool,
    json: &str,
) -> Markup {
    html! {
        ol.changes {
            @for c in pending {
                li.change #(format!("change-{}", c.id)) data-path=(c.path) {
                    (change_head(c, checkboxes, decidable(c)))
                    (diff_block(&c.diff, json))
                }
            }
        }
    }
}

/// The worktree's facts.
fn worktree(w: &Worktree) -> Markup {
    html! {
        dl.grid2.worktree {
            dt { "Worktree" } dd { code { (w.path) } " " span class=(format!("badge worktree-{}", w.status)) { (w.status) } }
            dt { "Host" } dd { (w.host) }
            dt { "Branch" } dd { code { (w.branch) } " from " (short_sha(&w.base_commit)) }
            dt { "Applies onto" } dd { code { (w.target_branch) } " of " code { (w.repo) } }
        }
    }
}

/// A pending change's header: its checkbox (when `checkbox` and it may be decided
/// here), operation, path, size and where it came from.
fn change_head(c: &PendingChange, checkbox: bool, decidable: bool) -> Markup {
    let (added, removed) = counts(&c.diff);
    html! {
        div.file-head {
            @if checkbox && decidable {
                input type="checkbox" name="id" value=(c.id) aria-label=(format!("Select the change to {}", c.path));
            }
            (op_badge(&c.operation))
            code.path { (c.path) }
            span.stat { span.add { "+" (added) } " " span.del { "−" (removed) } }
            span.muted.from {
                @if let Some(agent) = &c.agent { (agent) " · " }
                (task_link(c)) " · " (layout::time(&c.created_at))
            }
            @if !decidable { span.muted { "in an earlier worktree" } }
        }
    }
}

fn op_badge(operation: &str) -> Markup {
    html! { span class=(format!("badge op-{operation}")) { (operation) } }
}

fn task_link(c: &PendingChange) -> Markup {
    match c.task_id {
        Some(t) => html! { a href=(format!("/tasks/{t}")) { (layout::short_id(&t.to_string())) } },
        None => html! { span.muted { "–" } },
    }
}

/// A commit's first 10 characters, the whole on hover.
pub(crate) fn short_sha(sha: &str) -> Markup {
    html! { code.sha title=(sha) { (sha.get(..10).unwrap_or(sha)) } }
}

/// A checkpoint's label without the task id it repeats (the Task column links it).
pub(crate) fn checkpoint_label(cp: &Checkpoint) -> String {
    let label = cp.label.as_deref().unwrap_or("checkpoint");
    match cp.task_id {
        Some(t) => label
            .replace(&format!(" of task {t}"), "")
            .trim()
            .to_owned(),
        None => label.to_owned(),
    }
}

/// Lines added and removed by a unified diff (its `+++` / `---` headers not counted).
fn counts(diff: &str) -> (usize, usize) {
    let mut in_hunk = false;
    let (mut added, mut removed) = (0, 0);
    for line in diff.lines() {
        if line.starts_with("diff --git ") {
            in_hunk = false;
        } else if line.starts_with("@@") {
            in_hunk = true;
        } else if in_hunk && line.starts_with('+') {
            added += 1;
        } else if in_hunk && line.starts_with('-') {
            removed += 1;
        }
    }
    (added, removed)
}

/// A line of a diff as shown.
enum Line<'a> {
    /// A file header line worth showing (a mode change, say), or git's "\ No newline".
    Meta(&'a str),
    Hunk(&'a str),
    Context(&'a str, u64, u64),
    Added(&'a str, u64),
    Removed(&'a str, u64),
    /// A binary patch, not shown.
    Binary,
}

/// The lines of a unified diff to show: the `diff --git`, `index`, `---` and `+++`
/// headers left out (the file's header says it), line numbers from the hunk headers,
/// and a binary patch as one line.
fn lines(diff: &str) -> Vec<Line<'_>> {
    let mut out = Vec::new();
    let (mut old, mut new) = (0u64, 0u64);
    let mut in_hunk = false;
    let mut binary = false;
    for line in diff.lines() {
        if line.starts_with("diff --git ") {
            in_hunk = false;
            binary = false;
            continue;
        }
        if binary {
            continue;
        }
        if line.starts_with("@@") {
            in_hunk = true;
            (old, new) = hunk_starts(line);
            out.push(Line::Hunk(line));
        } else if !in_hunk {
            if line == "GIT binary patch" || line.starts_with("Binary files ") {
                binary = true;
                out.push(Line::Binary);
            } else if !(line.starts_with("index ")
                || line.starts_with("--- ")
                || line.starts_with("+++ "))
            {
                out.push(Line::Meta(line));
            }
        } else if let Some(text) = line.strip_prefix('+') {
            out.push(Line::Added(text, new));
            new += 1;
        } else if let Some(text) = line.strip_prefix('-') {
            out.push(Line::Removed(text, old));
            old += 1;
        } else if line.starts_with('\\') {
            out.push(Line::Meta(line));
        } else {
            out.push(Line::Context(
                line.strip_prefix(' ').unwrap_or(line),
                old,
                new,
            ));
            old += 1;
            new += 1;
        }
    }
    out
}

/// The first old and new line numbers of a hunk header `@@ -a[,b] +c[,d] @@`.
fn hunk_starts(header: &str) -> (u64, u64) {
    let mut parts = header.split_whitespace().skip(1);
    let start = |part: Option<&str>, sign: char| {
        part.and_then(|p| p.strip_prefix(sign))
            .and_then(|p| p.split(',').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    let old = start(parts.next(), '-');
    let new = start(parts.next(), '+');
    (old, new)
}

/// A file's diff: added lines green, removed red, hunk headers dim, with the old and
/// new line numbers (drawn by CSS from `data-n`, so copying the text leaves them out).
/// Folded when long; cut at [`MAX_DIFF_LINES`], with a link to `json`.
fn diff_block(diff: &str, json: &str) -> Markup {
    let all = lines(diff);
    let shown = &all[..all.len().min(MAX_DIFF_LINES)];
    let body = html! {
        div.diff role="figure" aria-label="diff" {
            @for line in shown {
                @match line {
                    Line::Meta(text) => { div.l.meta { span.ln {} span.ln {} span.t { (text) } } }
                    Line::Hunk(text) => { div.l.hunk { span.ln {} span.ln {} span.t { (text) } } }
                    Line::Binary => { div.l.meta { span.ln {} span.ln {} span.t { "binary file: its patch is not shown" } } }
                    Line::Context(text, o, n) => { div.l { span.ln data-n=(o) {} span.ln data-n=(n) {} span.t { span.mark { " " } (text) } } }
                    Line::Added(text, n) => { div.l.add { span.ln {} span.ln data-n=(n) {} span.t { span.mark { "+" } (text) } } }
                    Line::Removed(text, o) => { div.l.del { span.ln data-n=(o) {} span.ln {} span.t { span.mark { "-" } (text) } } }
                }
            }
            @if all.len() > shown.len() {
                div.l.meta { span.ln {} span.ln {} span.t { "… " (all.len() - shown.len()) " more lines: " a href=(json) { "the JSON" } " has the whole diff" } }
            }
        }
    };
    if all.len() > FOLD_LINES {
        html! { details.diff-fold { summary { "Show the diff (" (all.len()) " lines)" } (body) } }
    } else {
        body
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EDIT: &str = "diff --git a/src/lib.rs b/src/lib.rs\nindex 1111111..2222222 100644\n--- a/src/lib.rs\n+++ b/src/lib.rs\n@@ -1,3 +1,3 @@\n keep\n-pub fn answer() -> u32 { 41 }\n+pub fn answer() -> u32 { 42 }\n end\n\\ No newline at end of file\n";

    #[test]
    fn a_diff_is_shown_without_its_file_headers_and_with_line_numbers() {
        let shown = lines(EDIT);
        assert!(matches!(shown[0], Line::Hunk(_)));
        assert!(matches!(shown[1], Line::Context("keep", 1, 1)));
        assert!(matches!(
            shown[2],
            Line::Removed("pub fn answer() -> u32 { 41 }", 2)
        ));
        assert!(matches!(
            shown[3],
            Line::Added("pub fn answer() -> u32 { 42 }", 2)
        ));
        assert!(matches!(shown[4], Line::Context("end", 3, 3)));
        assert!(matches!(shown[5], Line::Meta(m) if m.starts_with('\\')));
        assert_eq!(shown.len(), 6);
        assert_eq!(counts(EDIT), (1, 1));
    }

    #[test]
    fn a_binary_patch_is_one_line_and_a_mode_change_is_kept() {
        let diff = "diff --git a/logo.png b/logo.png\nnew file mode 100644\nindex 0000000..3333333\nGIT binary patch\nliteral 12\nTcmZ?wbhEHb6krfwU|;|M0RR91\n\nliteral 0\nHcmV?d00001\n\n";
        let shown = lines(diff);
        assert!(matches!(shown[0], Line::Meta("new file mode 100644")));
        assert!(matches!(shown[1], Line::Binary));
        assert_eq!(shown.len(), 2);
        assert_eq!(counts(diff), (0, 0));
    }

    #[test]
    fn a_hunk_header_gives_the_first_line_numbers() {
        assert_eq!(hunk_starts("@@ -0,0 +1,2 @@"), (0, 1));
        assert_eq!(hunk_starts("@@ -7 +9,4 @@ fn main() {"), (7, 9));
        assert_eq!(hunk_starts("@@ nonsense"), (0, 0));
    }
}

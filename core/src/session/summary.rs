//! The per-session summary: a fold of the main transcript's entries, appended batch by
//! batch, so listing a project's sessions never re-reads a transcript.
//!
//! The fields are those of the Claude Agent SDK's `fold_session_summary` (Python) /
//! `foldSessionSummary` (TypeScript), with the same names and rules, because the SDK turns
//! a summary into its `SDKSessionInfo` by reading them: a summary without them would drop
//! the session from the SDK's `listSessions`. Every field is set-once or last-wins, so a
//! batch never needs the entries before it:
//!
//! - set once: `is_sidechain`, `created_at` (epoch ms of the first ISO `timestamp`),
//!   `cwd`, `first_prompt` with `first_prompt_locked`, `command_fallback`;
//! - last wins: `custom_title`, `ai_title`, `last_prompt`, `summary_hint` (from
//!   `summary`), `git_branch`, and `tag` (an empty tag clears it).
//!
//! turnq adds `entry_count` (entries in the main transcript) and `last_entry` (the `type`,
//! `uuid` and `timestamp` of the newest one), for its own UI; the SDK ignores both.
//! `mtime` is not part of the fold: it is the time of the write, stamped by the store.

use serde_json::{Map, Value, json};

/// First prompts are cut to this many characters, then `…` is added (as the SDK does).
const MAX_FIRST_PROMPT_CHARS: usize = 200;

/// Entry field → summary field, for the last-wins strings.
const LAST_WINS: [(&str, &str); 5] = [
    ("customTitle", "custom_title"),
    ("aiTitle", "ai_title"),
    ("lastPrompt", "last_prompt"),
    ("summary", "summary_hint"),
    ("gitBranch", "git_branch"),
];

/// Folds `entries` (in append order, only those actually stored) into `data`, the
/// previous summary (`{}` for a new session).
pub fn fold<'a>(
    mut data: Map<String, Value>,
    entries: impl IntoIterator<Item = &'a Value>,
) -> Map<String, Value> {
    let mut count = data.get("entry_count").and_then(Value::as_u64).unwrap_or(0);
    for entry in entries {
        let Some(entry) = entry.as_object() else {
            continue;
        };
        count += 1;
        let ms = entry
            .get("timestamp")
            .and_then(Value::as_str)
            .and_then(iso_to_epoch_ms);

        if !data.contains_key("is_sidechain") {
            let sidechain = entry.get("isSidechain") == Some(&Value::Bool(true));
            data.insert("is_sidechain".into(), Value::Bool(sidechain));
        }
        if !data.contains_key("created_at")
            && let Some(ms) = ms
        {
            data.insert("created_at".into(), json!(ms));
        }
        if !data.contains_key("cwd")
            && let Some(cwd) = entry.get("cwd").and_then(Value::as_str)
            && !cwd.is_empty()
        {
            data.insert("cwd".into(), json!(cwd));
        }

        fold_first_prompt(&mut data, entry);

        for (from, to) in LAST_WINS {
            if let Some(value) = entry.get(from).and_then(Value::as_str) {
                data.insert(to.into(), json!(value));
            }
        }
        if entry.get("type").and_then(Value::as_str) == Some("tag") {
            match entry.get("tag").and_then(Value::as_str) {
                Some(tag) if !tag.is_empty() => {
                    data.insert("tag".into(), json!(tag));
                }
                _ => {
                    data.remove("tag");
                }
            }
        }

        let mut last = Map::new();
        for field in ["type", "uuid", "timestamp"] {
            if let Some(value) = entry.get(field).and_then(Value::as_str) {
                last.insert(field.into(), json!(value));
            }
        }
        data.insert("last_entry".into(), Value::Object(last));
    }
    data.insert("entry_count".into(), json!(count));
    data
}

/// The summary's field names in the TypeScript SDK's fold (`foldSessionSummary`),
/// which reads camelCase where the Python SDK (and the stored form) use snake_case.
const TYPESCRIPT_NAMES: [(&str, &str); 14] = [
    ("is_sidechain", "isSidechain"),
    ("created_at", "createdAt"),
    ("first_prompt", "firstPrompt"),
    ("first_prompt_locked", "firstPromptLocked"),
    ("command_fallback", "commandFallback"),
    ("custom_title", "customTitle"),
    ("ai_title", "aiTitle"),
    ("last_prompt", "lastPrompt"),
    ("summary_hint", "summaryHint"),
    ("git_branch", "gitBranch"),
    ("entry_count", "entryCount"),
    ("last_entry", "lastEntry"),
    ("cwd", "cwd"),
    ("tag", "tag"),
];

/// Whose fold a summary's `data` should look like.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum SummaryStyle {
    /// `fold_session_summary` of the Python SDK: snake_case (as stored).
    #[default]
    Python,
    /// `foldSessionSummary` of the TypeScript SDK: camelCase.
    Typescript,
}

/// `data` (as stored, in the Python SDK's names) in `style`. Fields the fold does not
/// know are kept as they are.
pub fn in_style(data: Value, style: SummaryStyle) -> Value {
    match (style, data) {
        (SummaryStyle::Typescript, Value::Object(fields)) => Value::Object(
            fields
                .into_iter()
                .map(|(name, value)| {
                    let renamed = TYPESCRIPT_NAMES
                        .iter()
                        .find(|(snake, _)| *snake == name)
                        .map_or(name, |(_, camel)| (*camel).to_owned());
                    (renamed, value)
                })
                .collect(),
        ),
        (_, data) => data,
    }
}

/// An RFC 3339 timestamp (what the SDK writes, `2026-04-23T10:00:00.000Z`) as epoch ms.
fn iso_to_epoch_ms(ts: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(ts)
        .ok()
        .map(|t| t.timestamp_millis())
}

fn is_true(entry: &Map<String, Value>, field: &str) -> bool {
    entry.get(field) == Some(&Value::Bool(true))
}

/// The SDK's first-prompt rule for one entry: the first text of a real user message,
/// skipping meta and compact-summary entries, tool results, slash commands (remembered
/// as `command_fallback`) and text the CLI generated itself.
fn fold_first_prompt(data: &mut Map<String, Value>, entry: &Map<String, Value>) {
    if data.get("first_prompt_locked") == Some(&Value::Bool(true)) {
        return;
    }
    if entry.get("type").and_then(Value::as_str) != Some("user") {
        return;
    }
    if is_true(entry, "isMeta") || is_true(entry, "isCompactSummary") {
        return;
    }
    let content = entry
        .get("message")
        .and_then(Value::as_object)
        .and_then(|m| m.get("content"));
    if let Some(Value::Array(blocks)) = content
        && blocks
            .iter()
            .any(|b| b.get("type").and_then(Value::as_str) == Some("tool_result"))
    {
        return;
    }
    let texts: Vec<&str> = match content {
        Some(Value::String(s)) => vec![s.as_str()],
        Some(Value::Array(blocks)) => blocks
            .iter()
            .filter(|b| b.get("type").and_then(Value::as_str) == Some("text"))
            .filter_map(|b| b.get("text").and_then(Value::as_str))
            .collect(),
        _ => Vec::new(),
    };
    for raw in texts {
        let flat = raw.replace('\n', " ");
        let text = flat.trim();
        if text.is_empty() {
            continue;
        }
        if let Some(command) = command_name(text) {
            let unset = match data.get("command_fallback") {
                None | Some(Value::Null) => true,
                Some(Value::String(s)) => s.is_empty(),
                Some(_) => false,
            };
            if unset {
                data.insert("command_fallback".into(), json!(command));
            }
            continue;
        }
        if is_generated(text) {
            continue;
        }
        let prompt = if text.chars().count() > MAX_FIRST_PROMPT_CHARS {
            let cut: String = text.chars().take(MAX_FIRST_PROMPT_CHARS).collect();
            format!("{}\u{2026}", cut.trim_end())
        } else {
            text.to_owned()
        };
        data.insert("first_prompt".into(), json!(prompt));
        data.insert("first_prompt_locked".into(), Value::Bool(true));
        return;
    }
}

/// `<command-name>(.*?)</command-name>`, searched anywhere in the text.
fn command_name(text: &str) -> Option<&str> {
    const OPEN: &str = "<command-name>";
    const CLOSE: &str = "</command-name>";
    let start = text.find(OPEN)? + OPEN.len();
    let len = text[start..].find(CLOSE)?;
    Some(&text[start..start + len])
}

/// The SDK's pattern for text the CLI generated rather than the user typed:
/// `^(?:<local-command-stdout>|<session-start-hook>|<tick>|<goal>|\[Request interrupted
/// by user[^\]]*\]|\s*<ide_opened_file>[\s\S]*</ide_opened_file>\s*$|\s*<ide_selection>
/// [\s\S]*</ide_selection>\s*$)`, applied to text that is already trimmed.
fn is_generated(text: &str) -> bool {
    const PREFIXES: [&str; 4] = [
        "<local-command-stdout>",
        "<session-start-hook>",
        "<tick>",
        "<goal>",
    ];
    if PREFIXES.iter().any(|p| text.starts_with(p)) {
        return true;
    }
    if let Some(rest) = text.strip_prefix("[Request interrupted by user")
        && rest.contains(']')
    {
        return true;
    }
    // The tags differ in their first characters, so start and end cannot overlap.
    [
        ("<ide_opened_file>", "</ide_opened_file>"),
        ("<ide_selection>", "</ide_selection>"),
    ]
    .iter()
    .any(|(open, close)| text.starts_with(open) && text.ends_with(close))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(content: Value) -> Value {
        json!({"type": "user", "timestamp": "2024-01-01T00:00:00.000Z",
               "message": {"role": "user", "content": content}})
    }

    fn fold_all(entries: &[Value]) -> Map<String, Value> {
        fold(Map::new(), entries)
    }

    #[test]
    fn set_once_fields_keep_their_first_value() {
        let data = fold_all(&[
            json!({"type": "x", "timestamp": "2024-01-01T00:00:00.000Z", "cwd": "/a",
                   "isSidechain": false}),
            json!({"type": "x", "timestamp": "2024-01-01T00:00:05.000Z", "cwd": "/b",
                   "isSidechain": true}),
        ]);
        assert_eq!(data["cwd"], "/a");
        assert_eq!(data["is_sidechain"], false);
        assert_eq!(data["created_at"], 1_704_067_200_000_i64);
        assert_eq!(data["entry_count"], 2);
    }

    #[test]
    fn last_wins_fields_take_the_newest_value_across_batches() {
        let first = fold_all(&[json!({"type": "x", "customTitle": "first", "gitBranch": "a"})]);
        let second = fold(
            first,
            &[
                json!({"type": "x", "customTitle": "second", "summary": "s", "aiTitle": "ai",
                     "lastPrompt": "lp", "uuid": "u2", "timestamp": "t"}),
            ],
        );
        assert_eq!(second["custom_title"], "second");
        assert_eq!(second["git_branch"], "a");
        assert_eq!(second["summary_hint"], "s");
        assert_eq!(second["ai_title"], "ai");
        assert_eq!(second["last_prompt"], "lp");
        assert_eq!(second["entry_count"], 2);
        assert_eq!(
            second["last_entry"],
            json!({"type": "x", "uuid": "u2", "timestamp": "t"})
        );
    }

    #[test]
    fn first_prompt_skips_meta_tool_results_and_generated_text() {
        let data = fold_all(&[
            json!({"type": "assistant", "message": {"content": "not a user"}}),
            {
                let mut e = user(json!("meta"));
                e["isMeta"] = json!(true);
                e
            },
            {
                let mut e = user(json!("compact"));
                e["isCompactSummary"] = json!(true);
                e
            },
            user(json!([{"type": "tool_result", "tool_use_id": "x", "content": "r"}])),
            user(json!("<local-command-stdout>ls</local-command-stdout>")),
            user(json!("[Request interrupted by user for tool use]")),
            user(json!("  <ide_opened_file>a.rs</ide_opened_file>  ")),
            user(json!([{"type": "image"}, {"type": "text", "text": "real\nfirst"}])),
            user(json!("not me")),
        ]);
        assert_eq!(data["first_prompt"], "real first");
        assert_eq!(data["first_prompt_locked"], true);
    }

    #[test]
    fn a_slash_command_is_only_a_fallback_until_a_real_prompt() {
        let data = fold_all(&[
            user(json!("<command-name>/init</command-name> stuff")),
            user(json!("<command-name>/second</command-name>")),
        ]);
        assert_eq!(data["command_fallback"], "/init");
        assert!(!data.contains_key("first_prompt_locked"));
        let data = fold(data, &[user(json!("now a prompt"))]);
        assert_eq!(data["first_prompt"], "now a prompt");
        assert_eq!(data["command_fallback"], "/init");
    }

    #[test]
    fn long_first_prompts_are_cut_to_200_characters() {
        let long = format!("{} tail", "é".repeat(199));
        let data = fold_all(&[user(json!(long))]);
        let prompt = data["first_prompt"].as_str().unwrap_or_default();
        assert_eq!(prompt, format!("{}\u{2026}", "é".repeat(199)));
    }

    #[test]
    fn an_empty_tag_clears_the_tag() {
        let data = fold_all(&[json!({"type": "tag", "tag": "exp"})]);
        assert_eq!(data["tag"], "exp");
        let data = fold(data, &[json!({"type": "tag", "tag": ""})]);
        assert!(!data.contains_key("tag"));
    }

    #[test]
    fn timestamps_that_are_not_rfc3339_are_ignored() {
        let data = fold_all(&[json!({"type": "x", "timestamp": "yesterday"})]);
        assert!(!data.contains_key("created_at"));
        assert_eq!(
            iso_to_epoch_ms("2024-01-01T01:00:00+01:00"),
            Some(1_704_067_200_000)
        );
    }

    #[test]
    fn command_names_and_generated_text_match_the_sdk_patterns() {
        assert_eq!(
            command_name("x <command-name>/a</command-name>"),
            Some("/a")
        );
        assert_eq!(command_name("<command-name>/a"), None);
        assert!(is_generated("<tick>"));
        assert!(is_generated("[Request interrupted by user]"));
        assert!(!is_generated("[Request interrupted by user"));
        assert!(is_generated("<ide_selection>x</ide_selection>"));
        assert!(!is_generated("<ide_selection>x</ide_selection> and more"));
        assert!(!is_generated("<b>bold</b> question"));
    }
}

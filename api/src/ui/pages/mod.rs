//! One module per page.

pub(super) mod agents;
pub(super) mod arena;
pub(super) mod inbox;
pub(super) mod overview;
pub(super) mod sessions;
pub(super) mod task;
pub(super) mod tasks;
pub(super) mod workers;

use serde_json::Value;

/// What a task's input says, in one line: the prompt when it is a string or has one,
/// else its JSON, cut to `max` characters.
pub(super) fn input_preview(input: &Value, max: usize) -> String {
    let text = match input {
        Value::String(s) => s.clone(),
        Value::Object(o) => match ["prompt", "input", "text", "message"]
            .iter()
            .find_map(|k| o.get(*k).and_then(Value::as_str))
        {
            Some(s) => s.to_owned(),
            None => input.to_string(),
        },
        other => other.to_string(),
    };
    let one_line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match one_line.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &one_line[..cut]),
        None => one_line,
    }
}

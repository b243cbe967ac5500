//! The `command` backend's configuration and the placeholder substitution of its
//! arguments.
//!
//! Invariant: substitution is one pass over each template, so a value that itself
//! contains `{…}` (a task's input, say) is never expanded again, and other braces stay
//! as they are. Nothing here runs a process or reads a task: the turn's run hands in the
//! values.

use std::{collections::BTreeMap, path::PathBuf};

use serde::Deserialize;

/// An agent's configuration of the `command` backend.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandConfig {
    /// The program to run: a path, or a name looked up in `PATH`.
    pub program: String,
    /// The arguments, each a template (see the module documentation).
    #[serde(default)]
    pub args: Vec<String>,
    /// Arguments appended after `args` only when the agent session has a stored backend
    /// session id, each a template (`["--resume", "{backend_session_id}"]` for Claude
    /// Code); default none.
    #[serde(default)]
    pub resume_args: Vec<String>,
    /// The working directory when the task has no `worktree_path`.
    #[serde(default)]
    pub cwd: Option<PathBuf>,
    /// Environment variables set for the child, on top of the worker's.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Write the input to stdin, then close it.
    #[serde(default)]
    pub stdin: bool,
    /// How stdout is read.
    #[serde(default)]
    pub mode: CommandMode,
}

/// How the `command` backend reads the child's stdout.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CommandMode {
    /// Each line is a `text` chunk.
    #[default]
    Text,
    /// Each line is a JSON event (`claude --output-format stream-json`).
    Jsonl,
}

impl CommandConfig {
    /// Whether a turn needs the stored backend session id.
    pub(super) fn uses_backend_session(&self) -> bool {
        !self.resume_args.is_empty()
            || self
                .args
                .iter()
                .any(|arg| arg.contains("{backend_session_id}"))
    }

    /// The child's arguments: `args`, then `resume_args` when the turn resumes a backend
    /// session (last, so that they reach the agent also behind a wrapper program), each
    /// with the placeholders of `values` replaced.
    pub(super) fn argv(&self, values: &[(&str, &str)], resuming: bool) -> Vec<String> {
        let resume_args: &[String] = if resuming { &self.resume_args } else { &[] };
        self.args
            .iter()
            .chain(resume_args)
            .map(|arg| substitute(arg, values))
            .collect()
    }
}

/// `template` with the placeholders replaced, in one pass.
fn substitute(template: &str, values: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    'scan: while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open..];
        for (name, value) in values {
            if let Some(tail) = after
                .strip_prefix('{')
                .and_then(|t| t.strip_prefix(name))
                .and_then(|t| t.strip_prefix('}'))
            {
                out.push_str(value);
                rest = tail;
                continue 'scan;
            }
        }
        out.push('{');
        rest = &after[1..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::CommandConfig;
    use crate::backend::{
        Backends,
        command::{
            CommandBackend, CommandMode,
            tests::{backend, run},
        },
        tests::task,
    };
    use serde_json::{Value, json};

    #[test]
    fn resume_args_come_last_and_each_value_is_substituted_once() {
        let config: CommandConfig = serde_json::from_value(json!({
            "program": "claude",
            "args": ["-p", "{input}", "{{input}}"],
            "resume_args": ["--resume", "{backend_session_id}"],
        }))
        .unwrap();
        let values = [
            ("input", "{backend_session_id}"),
            ("backend_session_id", "b-1"),
        ];
        assert_eq!(
            config.argv(&values, true),
            [
                "-p",
                "{backend_session_id}",
                "{{backend_session_id}}",
                "--resume",
                "b-1"
            ]
        );
        assert_eq!(
            config.argv(&values, false),
            ["-p", "{backend_session_id}", "{{backend_session_id}}"]
        );
        assert!(config.uses_backend_session());
    }

    #[tokio::test]
    async fn placeholders_are_replaced_in_each_argument_without_a_shell() {
        let backend = backend(json!({
            "program": "sh",
            "args": ["-c", "printf '[%s]' \"$@\"", "sh", "{input}", "--session={session_id}",
                     "{task_id}", "{model}/{model}", "{unknown} {", "$HOME;{input}"],
        }));
        let mut t = task(json!("it's {model} `$(x)`"));
        t.session_id = Some("s-9".into());
        t.model = Some("m1".into());
        let id = t.id.to_string();
        let (result, chunks) = run(&backend, t).await;
        assert!(result.is_ok(), "{result:?}");
        assert_eq!(
            chunks[0].text,
            format!(
                "[it's {{model}} `$(x)`][--session=s-9][{id}][m1/m1][{{unknown}} {{][$HOME;it's {{model}} `$(x)`]"
            )
        );

        // Absent values become empty; JSON input is passed as compact JSON.
        let backend = self::backend(json!({
            "program": "printf", "args": ["%s|%s|%s", "{session_id}", "{model}", "{input}"],
        }));
        let (_, chunks) = run(&backend, task(json!({"a": 1}))).await;
        assert_eq!(chunks[0].text, r#"||{"a":1}"#);
    }

    #[test]
    fn a_malformed_config_is_refused_saying_what_is_wrong() {
        let message = |config: Value| CommandBackend::from_config(config).unwrap_err();
        assert!(message(json!({"args": []})).contains("missing field `program`"));
        assert!(message(json!({"program": "x", "shell": true})).contains("unknown field `shell`"));
        assert!(message(json!({"program": "x", "mode": "xml"})).contains("unknown variant `xml`"));
        assert!(message(json!({"program": " "})).contains("empty `program`"));
        assert!(message(json!("claude")).contains("malformed"));
        let backend = backend(json!({"program": "claude", "mode": "jsonl", "stdin": true}));
        assert_eq!(backend.config().mode, CommandMode::Jsonl);
        let backends = Backends::builtin().with(backend);
        assert_eq!(backends.names().collect::<Vec<_>>(), ["command", "script"]);
    }
}

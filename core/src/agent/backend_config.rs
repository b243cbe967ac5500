//! The backends turnq knows, and the shape of each one's agent `config`: checked when
//! an agent is registered (`PUT /v1/agents/{name}`), so a bad config is refused there
//! with what is wrong, not found at the next worker start. The worker builds its
//! backends from the same types.
//!
//! The `command` backend's argument templates: substitution is one pass over each
//! template, so a value that itself contains `{…}` (a task's input, say) is never
//! expanded again, and other braces stay as they are. Nothing here runs a process or
//! reads a task: the turn's run hands in the values.

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use serde::{Deserialize, Deserializer};
use serde_json::Value;

/// The backends a worker can build an agent from.
pub const BACKENDS: [&str; 3] = ["script", "command", "openai"];

/// Checks that `config` is a valid configuration of `backend` (a known one): the
/// message says what is wrong.
pub fn validate(backend: &str, config: &Value) -> Result<(), String> {
    match backend {
        "script" => Ok(()),
        "command" => CommandConfig::parse(config.clone()).map(drop),
        "openai" => OpenAiConfig::parse(config.clone()).map(drop),
        other => Err(format!(
            "there is no {other:?} backend: turnq's backends are {}",
            BACKENDS.join(", ")
        )),
    }
}

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
    pub fn uses_backend_session(&self) -> bool {
        !self.resume_args.is_empty()
            || self
                .args
                .iter()
                .any(|arg| arg.contains("{backend_session_id}"))
    }

    /// The child's arguments: `args`, then `resume_args` when the turn resumes a backend
    /// session (last, so that they reach the agent also behind a wrapper program), each
    /// with the placeholders of `values` replaced.
    pub fn argv(&self, values: &[(&str, &str)], resuming: bool) -> Vec<String> {
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

impl CommandConfig {
    /// A config from an agent's JSON `config` object; the message says what is wrong
    /// (a missing `program`, an unknown field, a `mode` that is neither `text` nor
    /// `jsonl`, an empty `program`).
    pub fn parse(config: Value) -> Result<Self, String> {
        let config: CommandConfig = serde_json::from_value(config)
            .map_err(|e| format!("the `command` backend's config is malformed: {e}"))?;
        config.check()?;
        Ok(config)
    }

    /// What the types cannot say: a `program` that is not empty.
    pub fn check(&self) -> Result<(), String> {
        if self.program.trim().is_empty() {
            return Err("the `command` backend's config has an empty `program`".into());
        }
        Ok(())
    }
}

/// An agent's configuration of the `openai` backend.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenAiConfig {
    /// The API root, e.g. `http://localhost:11434/v1`; `/chat/completions` is added.
    pub base_url: String,
    /// The model when the task names none.
    pub model: String,
    /// The environment variable that holds the API key (never the key itself).
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// A system prompt put before the history.
    #[serde(default)]
    pub system: Option<String>,
    /// The longest a request may take, e.g. `"90s"`; unset: only the turn's deadline.
    #[serde(default, deserialize_with = "humantime_opt")]
    pub timeout: Option<Duration>,
}

fn humantime_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    Option::<String>::deserialize(d)?
        .map(|s| {
            humantime::parse_duration(&s).map_err(|e| {
                serde::de::Error::custom(format!("`timeout` {s:?} is not a duration: {e}"))
            })
        })
        .transpose()
}

impl OpenAiConfig {
    /// A config from an agent's JSON `config` object; refuses a `base_url` that is not
    /// http(s) and an empty `model`.
    pub fn parse(config: Value) -> Result<Self, String> {
        let config: OpenAiConfig = serde_json::from_value(config)
            .map_err(|e| format!("the `openai` backend's config is malformed: {e}"))?;
        config.check()?;
        Ok(config)
    }

    /// What the types cannot say: an http(s) `base_url` and a `model` that is not empty.
    pub fn check(&self) -> Result<(), String> {
        let url = url::Url::parse(&self.base_url).map_err(|e| {
            format!(
                "the `openai` backend's `base_url` {:?} is not a URL: {e}",
                self.base_url
            )
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!(
                "the `openai` backend's `base_url` {:?} is not http(s)",
                self.base_url
            ));
        }
        if self.model.trim().is_empty() {
            return Err("the `openai` backend's config has an empty `model`".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn each_backend_checks_its_config_and_unknown_backends_are_refused() {
        assert!(validate("script", &json!({})).is_ok());
        assert!(validate("command", &json!({"program": "claude", "args": ["-p"]})).is_ok());
        assert!(validate("openai", &json!({"base_url": "http://h/v1", "model": "m"})).is_ok());
        for (backend, config, needle) in [
            ("command", json!({}), "missing field `program`"),
            ("command", json!({"program": " "}), "empty `program`"),
            (
                "command",
                json!({"program": "x", "mode": "xml"}),
                "unknown variant `xml`",
            ),
            (
                "command",
                json!({"program": "x", "shell": true}),
                "unknown field `shell`",
            ),
            ("openai", json!({"model": "m"}), "missing field `base_url`"),
            (
                "openai",
                json!({"base_url": "ftp://h", "model": "m"}),
                "not http(s)",
            ),
            (
                "openai",
                json!({"base_url": "http://h", "model": ""}),
                "empty `model`",
            ),
            (
                "openai",
                json!({"base_url": "http://h", "model": "m", "timeout": "soon"}),
                "not a duration",
            ),
            (
                "claude-code",
                json!({}),
                "there is no \"claude-code\" backend",
            ),
        ] {
            let err = validate(backend, &config).unwrap_err();
            assert!(err.contains(needle), "{backend} {config}: {err}");
        }
    }
}

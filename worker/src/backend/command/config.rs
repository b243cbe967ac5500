//! The `command` backend's configuration lives in the core
//! (`turnq_core::agent::backend_config`), so the API checks it at registration; its
//! argument substitution is tested here, through the backend.

pub use turnq_core::agent::backend_config::{CommandConfig, CommandMode};

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

//! Which agents a worker runs: read once at start from the agent registry.
//!
//! For every registered agent whose `backend` this worker supports (`script`, `command`,
//! `openai`) a backend is built from the agent's `config`; the built-in agent `script`
//! is there even when not registered. `--agents` narrows the set. Each agent is then
//! probed, and only an agent that passed is run (its (queue, agent) Redis queues
//! consumed):
//! - `command`: `<program> --version` exits 0 within [`PROBE_TIMEOUT`]; the first line
//!   of its stdout is the version.
//! - `openai`: the config parses (no network call: an endpoint that is down at start
//!   may be up by the first task, and a failing turn is retried anyway); the version
//!   is the configured model.
//! - `script`: always passes; the version is this crate's.
//!
//! A `command` agent's backend reads the agent sessions it resumes from Postgres
//! ([`PgAgentSessions`]).
//!
//! A registered agent that passed gets `version` and `last_probed_at` recorded; one that
//! failed is logged with why and left alone. Agents registered, changed or removed
//! after the worker started are picked up while it runs (`lifecycle::reload`).

use std::{process::Stdio, sync::Arc, time::Duration};

use sea_orm::DatabaseConnection;
use tokio::process::Command;
use turnq_core::agent::{Agent, AgentRegistry};

use crate::backend::{
    AgentBackend, AgentSessionLookup, Backends, CommandBackend, OpenAiBackend, PgAgentSessions,
    ScriptBackend, unregistered_agent,
};
use turnq_core::error::chain as error_chain;

/// How long `<program> --version` may take.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// The backend kinds a worker can build from an agent's config.
pub use turnq_core::agent::backend_config::BACKENDS as SUPPORTED_BACKENDS;

/// The name (and backend) of the agent every worker runs, registered or not.
pub use turnq_core::agent::BUILTIN_AGENT;

/// Builds the backend of `agent` from its config, or says why it cannot. A `command`
/// backend resumes its agent sessions through `sessions`, when given.
fn build(
    agent: &Agent,
    sessions: Option<Arc<dyn AgentSessionLookup>>,
) -> Result<Arc<dyn AgentBackend>, String> {
    match agent.backend.as_str() {
        "script" => Ok(Arc::new(ScriptBackend)),
        "command" => {
            let backend = CommandBackend::from_config(agent.config.clone())?;
            Ok(Arc::new(match sessions {
                Some(sessions) => backend.resuming(sessions),
                None => backend,
            }))
        }
        "openai" => Ok(Arc::new(OpenAiBackend::from_config(agent.config.clone())?)),
        other => Err(format!(
            "this worker has no {other:?} backend (it has: {})",
            SUPPORTED_BACKENDS.join(", ")
        )),
    }
}

/// Probes `agent`, whose backend was built from its config: the version it reports, or
/// why it cannot run.
pub(crate) async fn probe(
    agent: &Agent,
    backend: &Arc<dyn AgentBackend>,
) -> Result<String, String> {
    match agent.backend.as_str() {
        "command" => {
            let program = CommandBackend::from_config(agent.config.clone())?
                .config()
                .clone();
            probe_program(&program.program, &program.env).await
        }
        "openai" => {
            let config = OpenAiBackend::from_config(agent.config.clone())?;
            Ok(config.config().model.clone())
        }
        "script" => Ok(env!("CARGO_PKG_VERSION").to_owned()),
        other => Err(format!(
            "no probe for the {other:?} backend ({})",
            backend.name()
        )),
    }
}

/// Runs `<program> --version` and returns the first line of its stdout.
async fn probe_program(
    program: &str,
    env: &std::collections::BTreeMap<String, String>,
) -> Result<String, String> {
    let mut command = Command::new(program);
    command
        .arg("--version")
        .envs(env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = command
        .spawn()
        .map_err(|e| format!("`{program} --version` cannot be started: {e}"))?;
    let output = tokio::time::timeout(PROBE_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| {
            format!(
                "`{program} --version` did not finish within {}",
                humantime::format_duration(PROBE_TIMEOUT)
            )
        })?
        .map_err(|e| format!("`{program} --version` failed: {e}"))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let last = stderr.lines().rev().find(|l| !l.trim().is_empty());
        return Err(format!(
            "`{program} --version` exited with {}{}",
            output.status,
            last.map(|l| format!(": {}", l.trim())).unwrap_or_default()
        ));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    Ok(stdout
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("unknown")
        .to_owned())
}

/// Whether `--agents` (empty: every agent) lets this worker run `name`.
fn selected(only: &[String], name: &str) -> bool {
    only.is_empty() || only.iter().any(|a| a == name)
}

/// The agents this worker runs: the registry's agents with a supported backend, plus
/// the built-in `script`, narrowed by `only` (`--agents`; empty: all), each probed; the
/// ones that failed to build or probe are logged and left out. Fails only when the
/// registry cannot be read.
pub(crate) async fn discover(
    db: &DatabaseConnection,
    only: &[String],
) -> Result<Backends, turnq_core::Error> {
    let mut agents: Vec<(Agent, bool)> = AgentRegistry::list(db)
        .await?
        .into_iter()
        .map(|a| (a, true))
        .collect();
    if !agents.iter().any(|(a, _)| a.name == BUILTIN_AGENT) {
        agents.push((unregistered_agent(BUILTIN_AGENT, "script"), false));
    }
    // A name in --agents that nothing answers to is said now, by name: the worker's
    // refusal to start points at these warnings.
    for name in only {
        if !agents.iter().any(|(a, _)| &a.name == name) {
            let known: Vec<&str> = agents.iter().map(|(a, _)| a.name.as_str()).collect();
            tracing::warn!(agent = %name,
                "--agents names {name}, which is neither registered nor built in (the agents \
                 there are: {}); PUT /v1/agents/{name} registers it", known.join(", "));
        }
    }
    let sessions: Arc<dyn AgentSessionLookup> = Arc::new(PgAgentSessions::new(db.clone()));
    let mut backends = Backends::new();
    for (agent, registered) in agents {
        if !selected(only, &agent.name) {
            tracing::debug!(agent = %agent.name, "not in --agents; not running it");
            continue;
        }
        if !SUPPORTED_BACKENDS.contains(&agent.backend.as_str()) {
            tracing::info!(agent = %agent.name, backend = %agent.backend,
                "this worker has no {} backend; not running agent {}", agent.backend, agent.name);
            continue;
        }
        let backend = match build(&agent, Some(sessions.clone())) {
            Ok(backend) => backend,
            Err(why) => {
                tracing::warn!(agent = %agent.name, backend = %agent.backend, error = %why,
                    "agent {} has a config its backend refuses; not taking its work", agent.name);
                continue;
            }
        };
        let version = match probe(&agent, &backend).await {
            Ok(version) => version,
            Err(why) => {
                tracing::warn!(agent = %agent.name, backend = %agent.backend, error = %why,
                    "agent {} failed its probe; not taking its work", agent.name);
                continue;
            }
        };
        tracing::info!(agent = %agent.name, backend = %agent.backend, version = %version,
            "agent probed; taking its work");
        // The unregistered built-in has no row to record the probe in.
        if registered
            && let Err(e) = AgentRegistry::record_probe(
                db,
                &agent.name,
                Some(version.clone()),
                turnq_core::time::now(),
            )
            .await
        {
            tracing::warn!(agent = %agent.name, error = %error_chain(&e),
                "could not record the probe in the agent registry; running the agent anyway");
        }
        // The worker registry lists what this worker found, not what the agent registry
        // held before the probe.
        let mut agent = agent;
        agent.version = Some(version);
        backends.insert_agent(agent, backend);
    }
    Ok(backends)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn agent(backend: &str, config: serde_json::Value) -> Agent {
        let mut a = unregistered_agent("a", backend);
        a.config = config;
        a
    }

    async fn probe_of(a: &Agent) -> Result<String, String> {
        let backend = build(a, None)?;
        probe(a, &backend).await
    }

    #[tokio::test]
    async fn a_command_agent_reports_the_first_line_of_its_version() {
        let dir = std::env::temp_dir().join(format!("turnq-probe-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let cli = dir.join("fake-cli");
        std::fs::write(
            &cli,
            "#!/bin/sh\n[ \"$1\" = --version ] || exit 3\necho\necho 'fake-cli 1.2.3'\necho more\n",
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&cli, std::fs::Permissions::from_mode(0o755)).unwrap();
        let ok = agent(
            "command",
            json!({"program": cli, "args": ["-p", "{input}"]}),
        );
        assert_eq!(probe_of(&ok).await.unwrap(), "fake-cli 1.2.3");
        std::fs::remove_dir_all(&dir).unwrap();
        let missing = agent("command", json!({"program": "/nonexistent/agent-cli"}));
        let err = probe_of(&missing).await.unwrap_err();
        assert!(err.contains("cannot be started"), "{err}");
        let failing = agent("command", json!({"program": "false"}));
        let err = probe_of(&failing).await.unwrap_err();
        assert!(err.contains("exited with"), "{err}");
    }

    #[tokio::test]
    async fn openai_and_script_agents_probe_without_a_network() {
        let openai = agent(
            "openai",
            json!({"base_url": "http://127.0.0.1:9/v1", "model": "m"}),
        );
        assert_eq!(probe_of(&openai).await.unwrap(), "m");
        let bad = agent("openai", json!({"base_url": "ftp://x", "model": "m"}));
        assert!(probe_of(&bad).await.unwrap_err().contains("not http(s)"));
        assert_eq!(
            probe_of(&agent("script", json!({}))).await.unwrap(),
            env!("CARGO_PKG_VERSION")
        );
        let unknown = agent("codex", json!({}));
        assert!(
            build(&unknown, None)
                .err()
                .unwrap()
                .contains("no \"codex\" backend")
        );
    }

    #[test]
    fn an_empty_agents_flag_selects_every_agent() {
        assert!(selected(&[], "x"));
        assert!(selected(&["x".into()], "x"));
        assert!(!selected(&["y".into()], "x"));
    }
}

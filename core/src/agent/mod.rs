//! The agent registry and agent sessions.
//!
//! - [`AgentRegistry`] (table `agents`): the agent CLIs a worker can run, keyed by name.
//!   An operator declares each one with an [`AgentSpec`] (its backend, config, and
//!   optionally models and capabilities); probing records what it found (version, time).
//!   [`config_hash`] fingerprints what decides how a backend session behaves.
//! - [`AgentSessions`] (table `agent_sessions`): per (turnq session, agent), the backend's
//!   own session id, a status and the running usage. A turn recorded under a config hash
//!   other than the stored one starts a fresh backend session: resuming a conversation
//!   the old config started would mix two configurations in one transcript.
//!
//! Agent names share the rule of queue names (`[A-Za-z0-9_.-]{1,64}`), which the
//! database enforces as well: names end up in queue names and paths.
//!
//! Depends on the database layer only; knows no HTTP (the API maps its errors).

pub mod backend_config;
mod registry;
mod sessions;

pub use registry::{
    Agent, AgentRegistry, AgentSpec, BUILTIN_AGENT, CHANNEL_AGENTS_CHANGED, Put, config_hash,
};
pub use sessions::{AgentSession, AgentSessions, AgentStatus, Turn};

#[cfg(test)]
mod tests {
    use crate::task::check_name;

    /// Agent and backend names follow the queue name rule (`task::check_name`): they
    /// appear in Redis keys.
    #[test]
    fn names_follow_the_queue_name_rule() {
        assert!(check_name("name", "claude-code_2.1").is_ok());
        assert!(check_name("name", &"a".repeat(64)).is_ok());
        for bad in ["", "has space", "slash/y", "ümlaut", &"a".repeat(65)] {
            let err = check_name("name", bad).unwrap_err().to_string();
            assert!(err.starts_with("name"), "{bad:?}: {err}");
        }
    }
}

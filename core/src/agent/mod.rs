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

mod registry;
mod sessions;

pub use registry::{Agent, AgentRegistry, AgentSpec, Put, config_hash};
pub use sessions::{AgentSession, AgentSessions, AgentStatus, Turn};

use crate::{Error, error::Result};

/// The longest agent or backend name.
pub const MAX_NAME_CHARS: usize = 64;

/// Checks `value` against the name rule (`[A-Za-z0-9_.-]{1,64}`); `field` names it in
/// the message.
pub fn validate_name(field: &str, value: &str) -> Result<()> {
    if value.is_empty() {
        return Err(Error::Invalid(format!("{field} must not be empty")));
    }
    let chars = value.chars().count();
    if chars > MAX_NAME_CHARS {
        return Err(Error::Invalid(format!(
            "{field} is {chars} characters long; the limit is {MAX_NAME_CHARS}"
        )));
    }
    if let Some(c) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        return Err(Error::Invalid(format!(
            "{field} {value:?} contains {c:?}; only A-Z, a-z, 0-9, '_', '.' and '-' are allowed"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_queue_name_rule() {
        assert!(validate_name("name", "claude-code_2.1").is_ok());
        assert!(validate_name("name", &"a".repeat(64)).is_ok());
        for bad in ["", "has space", "slash/y", "ümlaut", &"a".repeat(65)] {
            let err = validate_name("name", bad).unwrap_err().to_string();
            assert!(err.starts_with("name"), "{bad:?}: {err}");
        }
    }
}

//! The key of a transcript, validated on construction: a value of these types is always
//! one the store accepts, so the store itself never sees a bad key.

use std::fmt;

use serde::Serialize;

use crate::{Error, error::Result, storable};

/// The most characters a project key or a session id may have (a CHECK constraint of
/// `session_entries` holds the same).
pub const MAX_ID_CHARS: usize = 256;
/// The most UTF-8 bytes a project key or a session id may have: they are parts of the
/// session store's index keys, which count bytes (see [`crate::storable`]).
pub const MAX_ID_BYTES: usize = 512;
/// The most characters a subpath may have.
pub const MAX_SUBPATH_CHARS: usize = 512;
/// The most UTF-8 bytes a subpath may have, for the same reason.
pub const MAX_SUBPATH_BYTES: usize = 1024;

fn check_id(field: &str, value: &str) -> Result<()> {
    let chars = value.chars().count();
    if chars == 0 {
        return Err(Error::Invalid(format!("{field} must not be empty")));
    }
    if chars > MAX_ID_CHARS {
        return Err(Error::Invalid(format!(
            "{field} is {chars} characters long; the limit is {MAX_ID_CHARS}"
        )));
    }
    if value.chars().any(char::is_control) {
        return Err(Error::Invalid(format!(
            "{field} must not contain control characters"
        )));
    }
    storable::within_bytes(field, value, MAX_ID_BYTES)
}

/// The scope of a set of sessions. The Claude Agent SDK uses a filesystem-safe encoding
/// of the working directory; multi-tenant callers use a tenant or project name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct ProjectKey(String);

impl ProjectKey {
    /// 1 to 256 characters and at most 512 bytes, none of them a control character.
    pub fn new(value: impl Into<String>) -> Result<Self> {
        let value = value.into();
        check_id("project key", &value)?;
        Ok(ProjectKey(value))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A session within a project (a UUID for the SDK, but any text the rules allow).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct SessionId(String);

impl SessionId {
    /// 1 to 256 characters and at most 512 bytes, none of them a control character.
    pub fn new(value: impl Into<String>) -> Result<Self> {
        let value = value.into();
        check_id("session id", &value)?;
        Ok(SessionId(value))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A transcript beside the main one, such as a subagent's (`subagents/agent-<id>`).
/// Opaque to the store: a key suffix, never opened as a path, but `..` segments are
/// refused so that no consumer that does map it onto a filesystem can be led outside
/// the session's directory.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Subpath(String);

impl Subpath {
    /// 1 to 512 characters and at most 1024 bytes, no control characters, no `..` segment (between `/` or
    /// `\`). The main transcript has no subpath: an empty one is refused rather than
    /// silently taken to mean the main transcript.
    pub fn new(value: impl Into<String>) -> Result<Self> {
        let value = value.into();
        let chars = value.chars().count();
        if chars == 0 {
            return Err(Error::Invalid(
                "subpath must not be empty: omit it for the main transcript".into(),
            ));
        }
        if chars > MAX_SUBPATH_CHARS {
            return Err(Error::Invalid(format!(
                "subpath is {chars} characters long; the limit is {MAX_SUBPATH_CHARS}"
            )));
        }
        if value.chars().any(char::is_control) {
            return Err(Error::Invalid(
                "subpath must not contain control characters".into(),
            ));
        }
        storable::within_bytes("subpath", &value, MAX_SUBPATH_BYTES)?;
        if value.split(['/', '\\']).any(|segment| segment == "..") {
            return Err(Error::Invalid(format!(
                "subpath {value:?} has a `..` segment"
            )));
        }
        Ok(Subpath(value))
    }

    /// A subpath read back from the database, which only holds validated ones (and a
    /// CHECK constraint bounds their length).
    pub(crate) fn stored(value: String) -> Self {
        Subpath(value)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// One transcript: a session's main transcript (`subpath` `None`) or one beside it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SessionKey {
    pub project: ProjectKey,
    pub session: SessionId,
    pub subpath: Option<Subpath>,
}

impl SessionKey {
    /// Validates all three parts; see [`ProjectKey::new`], [`SessionId::new`] and
    /// [`Subpath::new`].
    pub fn new(
        project: impl Into<String>,
        session: impl Into<String>,
        subpath: Option<String>,
    ) -> Result<Self> {
        Ok(SessionKey {
            project: ProjectKey::new(project)?,
            session: SessionId::new(session)?,
            subpath: subpath.map(Subpath::new).transpose()?,
        })
    }

    /// The main transcript of a session.
    pub fn main(project: ProjectKey, session: SessionId) -> Self {
        SessionKey {
            project,
            session,
            subpath: None,
        }
    }

    pub fn is_main(&self) -> bool {
        self.subpath.is_none()
    }

    /// The `subpath` column: `''` is the main transcript.
    pub(crate) fn subpath_column(&self) -> &str {
        self.subpath.as_ref().map_or("", Subpath::as_str)
    }
}

impl fmt::Display for SessionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.project.0, self.session.0)?;
        if let Some(subpath) = &self.subpath {
            write!(f, " ({})", subpath.0)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(e: Error) -> String {
        e.to_string()
    }

    #[test]
    fn ids_are_one_to_256_characters_without_control_characters() {
        assert!(ProjectKey::new("-home-me-proj").is_ok());
        assert!(
            SessionId::new("é".repeat(256)).is_ok(),
            "characters, not bytes"
        );
        let too_wide = ProjectKey::new("😀".repeat(129)).map(|_| ()).unwrap_err();
        assert!(message(too_wide).contains("516 bytes long in UTF-8; the limit is 512 bytes"));
        let too_long = SessionId::new("x".repeat(257)).map(|_| ()).unwrap_err();
        assert!(message(too_long).contains("257 characters"));
        let empty = ProjectKey::new("").map(|_| ()).unwrap_err();
        assert_eq!(message(empty), "project key must not be empty");
        for bad in ["a\nb", "a\u{0}b", "tab\there", "c1\u{85}"] {
            let e = SessionId::new(bad).map(|_| ()).unwrap_err();
            assert!(message(e).contains("control characters"), "{bad:?}");
        }
    }

    #[test]
    fn subpaths_refuse_dot_dot_segments_empty_and_overlong() {
        for ok in [
            "subagents/agent-1",
            "a..b",
            "..x/y",
            "./here",
            "subagents/workflows/run/agent-2",
        ] {
            assert!(Subpath::new(ok).is_ok(), "{ok:?}");
        }
        for bad in ["..", "../x", "a/../b", "a/..", "a\\..\\b"] {
            let e = Subpath::new(bad).map(|_| ()).unwrap_err();
            assert!(message(e).contains("`..` segment"), "{bad:?}");
        }
        let empty = Subpath::new("").map(|_| ()).unwrap_err();
        assert!(message(empty).contains("omit it for the main transcript"));
        assert!(Subpath::new("x".repeat(512)).is_ok());
        assert!(Subpath::new("x".repeat(513)).is_err());
        assert!(Subpath::new("é".repeat(512)).is_ok());
        assert!(Subpath::new("😀".repeat(257)).is_err(), "1028 bytes");
    }

    #[test]
    fn a_key_without_subpath_is_the_main_transcript() -> Result<()> {
        let main = SessionKey::new("p", "s", None)?;
        assert!(main.is_main());
        assert_eq!(main.subpath_column(), "");
        let sub = SessionKey::new("p", "s", Some("subagents/agent-1".into()))?;
        assert!(!sub.is_main());
        assert_eq!(sub.subpath_column(), "subagents/agent-1");
        assert_eq!(sub.to_string(), "p/s (subagents/agent-1)");
        Ok(())
    }
}

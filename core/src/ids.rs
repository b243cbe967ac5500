//! Newtypes for identifiers and positions, so a task id is never passed where a worker
//! id or a log position is expected.

use serde::{Deserialize, Serialize};
use std::{fmt, str::FromStr};
use uuid::Uuid;

/// The id of a task (and of its event stream).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TaskId(pub Uuid);

impl TaskId {
    /// A new id; v7 so ids sort by creation time, which keeps the primary key index
    /// append-mostly.
    pub fn new() -> Self {
        TaskId(Uuid::now_v7())
    }
}

impl TaskId {
    /// The smallest id a task created at `at` can have: a v7 uuid is its creation time in
    /// milliseconds followed by random bits, so `id >= TaskId::first_at(t)` selects the
    /// tasks created at or after `t` through the primary key, with no index on
    /// `created_at`.
    pub fn first_at(at: crate::time::Timestamp) -> TaskId {
        let millis = u64::try_from(at.timestamp_millis()).unwrap_or(0);
        let mut bytes = [0u8; 16];
        bytes[..6].copy_from_slice(&millis.to_be_bytes()[2..]);
        bytes[6] = 0x70; // version 7
        bytes[8] = 0x80; // the RFC 9562 variant
        TaskId(Uuid::from_bytes(bytes))
    }
}

impl Default for TaskId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for TaskId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(TaskId)
    }
}

/// The id of an arena (and of its event stream, type `arena`).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ArenaId(pub Uuid);

impl ArenaId {
    /// A new id; v7, like a task's, so ids sort by creation time.
    pub fn new() -> Self {
        ArenaId(Uuid::now_v7())
    }
}

impl Default for ArenaId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for ArenaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for ArenaId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(ArenaId)
    }
}

/// The id of a worker process; unique per process start, so a restarted worker never
/// inherits the in-flight state of the one that died.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct WorkerId(pub String);

impl WorkerId {
    pub fn generate(host: &str) -> Self {
        WorkerId(format!(
            "{host}-{}-{}",
            std::process::id(),
            &Uuid::new_v4().simple().to_string()[..8]
        ))
    }
}

impl fmt::Display for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A position in the global event log (the `events.position` bigserial).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct LogPosition(pub i64);

impl fmt::Display for LogPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The version of one stream: the number of events in it. A new stream is at 0.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct StreamVersion(pub i64);

impl StreamVersion {
    pub const NEW: StreamVersion = StreamVersion(0);
    pub fn next(self) -> StreamVersion {
        StreamVersion(self.0 + 1)
    }
}

impl fmt::Display for StreamVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_id_at_a_time_sorts_before_every_id_made_then_or_later() {
        let before = crate::time::now();
        let made = TaskId::new();
        let floor = TaskId::first_at(before);
        assert!(floor <= made, "{floor} > {made}");
        assert_eq!(floor.0.get_version_num(), 7);
        let later = TaskId::first_at(before + chrono::Duration::milliseconds(1000));
        assert!(made < later, "{made} >= {later}");
    }
}

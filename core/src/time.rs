//! Time, truncated to what Postgres stores.
//!
//! A projection's timestamps are copied from the times of the events that caused them,
//! and `turnq replay --verify` compares the two. Postgres keeps microseconds, so every
//! time the domain writes is truncated to microseconds first; otherwise a value written
//! in nanoseconds would read back different and look like drift.

use chrono::{DateTime, DurationRound, TimeDelta, Utc};

pub type Timestamp = DateTime<Utc>;

/// Now, truncated to microseconds.
pub fn now() -> Timestamp {
    truncate(Utc::now())
}

pub fn truncate(t: Timestamp) -> Timestamp {
    // Truncation to a whole microsecond cannot overflow for any representable time.
    t.duration_trunc(TimeDelta::microseconds(1)).unwrap_or(t)
}

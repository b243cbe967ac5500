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

/// An optional time written as RFC 3339, refused with a message that says which form is
/// expected (chrono's own says only "input contains invalid characters").
pub fn deserialize_optional_rfc3339<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Timestamp>, D::Error> {
    use serde::{Deserialize, de::Error};
    let Some(raw) = Option::<String>::deserialize(d)? else {
        return Ok(None);
    };
    DateTime::parse_from_rfc3339(raw.trim())
        .map(|t| Some(t.with_timezone(&Utc)))
        .map_err(|e| {
            D::Error::custom(format!(
                "{raw:?} is not an RFC 3339 time such as 2026-12-03T14:00:00Z ({e})"
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize)]
    struct At {
        #[serde(default, deserialize_with = "deserialize_optional_rfc3339")]
        at: Option<Timestamp>,
    }

    #[test]
    fn an_rfc_3339_time_reads_and_anything_else_says_what_is_expected() {
        let read = |json: &str| serde_json::from_str::<At>(json).map(|a| a.at);
        assert!(read(r#"{"at": "2026-12-03T14:00:00+01:00"}"#).is_ok_and(|t| t.is_some()));
        assert!(read(r#"{"at": null}"#).is_ok_and(|t| t.is_none()));
        assert!(read(r#"{}"#).is_ok_and(|t| t.is_none()));
        let err = read(r#"{"at": "tomorrow"}"#)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("\"tomorrow\" is not an RFC 3339 time"),
            "{err}"
        );
    }
}

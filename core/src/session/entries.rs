//! A batch of transcript entries, validated on construction.

use serde_json::Value;

use crate::{
    Error,
    error::Result,
    session::key::{MAX_ID_BYTES, MAX_SUBPATH_BYTES},
    storable::{self, INDEX_KEY_BUDGET},
};

/// The most entries one `append` may carry.
pub const MAX_BATCH_ENTRIES: usize = 10_000;
/// The longest `uuid` of an entry, in UTF-8 bytes: with the transcript's key it makes
/// the key of the index that skips repeated entries.
pub const MAX_UUID_BYTES: usize = 256;

// The dedup index is (project_key, session_id, subpath, entry->>'uuid').
const _: () = assert!(2 * MAX_ID_BYTES + MAX_SUBPATH_BYTES + MAX_UUID_BYTES <= INDEX_KEY_BUDGET);

/// Entries to append: each a JSON object, at most [`MAX_BATCH_ENTRIES`] of them. The
/// store treats them as opaque; the only field it reads is `uuid`, to skip entries it
/// already holds.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Entries(Vec<Value>);

impl Entries {
    /// Refuses a batch that is too large, an entry that is not a JSON object, a string
    /// containing U+0000 (which Postgres `jsonb` cannot store) and a `uuid` longer than
    /// [`MAX_UUID_BYTES`], naming the offending entry by its index.
    pub fn new(entries: Vec<Value>) -> Result<Self> {
        if entries.len() > MAX_BATCH_ENTRIES {
            return Err(Error::Invalid(format!(
                "the batch has {} entries; the limit is {MAX_BATCH_ENTRIES}",
                entries.len()
            )));
        }
        for (i, entry) in entries.iter().enumerate() {
            if !entry.is_object() {
                return Err(Error::Invalid(format!(
                    "entries[{i}] is {}, not a JSON object",
                    crate::error::json_kind(entry)
                )));
            }
            storable::json_without_nul(&format!("entries[{i}]"), entry)?;
            if let Some(uuid) = uuid_of(entry) {
                storable::within_bytes(&format!("entries[{i}].uuid"), uuid, MAX_UUID_BYTES)?;
            }
        }
        Ok(Entries(entries))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn as_slice(&self) -> &[Value] {
        &self.0
    }

    pub fn into_vec(self) -> Vec<Value> {
        self.0
    }
}

/// The entry's `uuid` when it is a string: the key the store deduplicates on.
pub(crate) fn uuid_of(entry: &Value) -> Option<&str> {
    entry.get("uuid").and_then(Value::as_str)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn every_entry_must_be_an_object() {
        assert!(Entries::new(vec![]).is_ok_and(|e| e.is_empty()));
        assert!(Entries::new(vec![json!({"type": "user"}), json!({})]).is_ok());
        let e = Entries::new(vec![json!({}), json!("text")]).unwrap_err();
        assert_eq!(e.to_string(), "entries[1] is a string, not a JSON object");
        let e = Entries::new(vec![json!([1])]).unwrap_err();
        assert_eq!(e.to_string(), "entries[0] is an array, not a JSON object");
    }

    #[test]
    fn a_batch_holds_at_most_10000_entries() {
        assert!(Entries::new(vec![json!({}); MAX_BATCH_ENTRIES]).is_ok());
        let e = Entries::new(vec![json!({}); MAX_BATCH_ENTRIES + 1]).unwrap_err();
        assert!(e.to_string().contains("limit is 10000"), "{e}");
    }

    #[test]
    fn nul_characters_anywhere_are_refused() {
        for bad in [
            json!({"a": "x\u{0}y"}),
            json!({"a\u{0}": 1}),
            json!({"a": [{"b": ["\u{0}"]}]}),
        ] {
            let e = Entries::new(vec![bad.clone()]).unwrap_err();
            assert!(e.to_string().contains("U+0000"), "{bad}");
        }
    }

    #[test]
    fn a_uuid_longer_than_the_index_holds_is_refused() {
        assert!(Entries::new(vec![json!({"uuid": "u".repeat(MAX_UUID_BYTES)})]).is_ok());
        let e = Entries::new(vec![json!({}), json!({"uuid": "é".repeat(129)})]).unwrap_err();
        assert!(
            e.to_string().starts_with("entries[1].uuid is 258 bytes"),
            "{e}"
        );
    }

    #[test]
    fn only_a_string_uuid_counts() {
        assert_eq!(uuid_of(&json!({"uuid": "u1"})), Some("u1"));
        assert_eq!(uuid_of(&json!({"uuid": 7})), None);
        assert_eq!(uuid_of(&json!({"uuid": null})), None);
        assert_eq!(uuid_of(&json!({})), None);
    }
}

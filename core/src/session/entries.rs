//! A batch of transcript entries, validated on construction.

use serde_json::Value;

use crate::{Error, error::Result};

/// The most entries one `append` may carry.
pub const MAX_BATCH_ENTRIES: usize = 10_000;

/// Entries to append: each a JSON object, at most [`MAX_BATCH_ENTRIES`] of them. The
/// store treats them as opaque; the only field it reads is `uuid`, to skip entries it
/// already holds.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Entries(Vec<Value>);

impl Entries {
    /// Refuses a batch that is too large, an entry that is not a JSON object, and a
    /// string containing U+0000 (which Postgres `jsonb` cannot store), naming the
    /// offending entry by its index.
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
            if has_nul(entry) {
                return Err(Error::Invalid(format!(
                    "entries[{i}] contains the character U+0000, which cannot be stored"
                )));
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

/// Walks the value with an explicit stack: a value built in code (not parsed, so not
/// bounded by serde_json's recursion limit) can be deep enough to overflow a recursive
/// walk.
fn has_nul(value: &Value) -> bool {
    let mut stack = vec![value];
    while let Some(v) = stack.pop() {
        match v {
            Value::String(s) if s.contains('\0') => return true,
            Value::Array(items) => stack.extend(items),
            Value::Object(map) => {
                for (k, item) in map {
                    if k.contains('\0') {
                        return true;
                    }
                    stack.push(item);
                }
            }
            _ => {}
        }
    }
    false
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
    fn only_a_string_uuid_counts() {
        assert_eq!(uuid_of(&json!({"uuid": "u1"})), Some("u1"));
        assert_eq!(uuid_of(&json!({"uuid": 7})), None);
        assert_eq!(uuid_of(&json!({"uuid": null})), None);
        assert_eq!(uuid_of(&json!({})), None);
    }
}

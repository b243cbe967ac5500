//! What Postgres can store, checked before anything is written, so that a value it would
//! refuse is a 400 that names the field and the limit, never a failed statement (a 500)
//! half-way through a request.
//!
//! - `text` and `jsonb` cannot hold U+0000 (the NUL character) anywhere, keys included:
//!   [`no_nul`], [`json_without_nul`].
//! - A btree index entry holds at most about 2,700 bytes (a third of an 8 KiB page). It
//!   counts UTF-8 bytes, not characters, so every text that is part of an index key has
//!   a limit in bytes ([`within_bytes`]), and the limits of the columns of one index add
//!   up to no more than [`INDEX_KEY_BUDGET`] (checked at compile time beside each set of
//!   limits).

use serde_json::Value;

use crate::{Error, error::Result};

/// The bytes the text columns of one btree index key may take together: below the
/// ~2,704 a version-4 btree allows, leaving room for the row header, the length
/// headers and the non-text columns.
pub const INDEX_KEY_BUDGET: usize = 2600;

/// Refuses a text holding U+0000.
pub fn no_nul(field: &str, value: &str) -> Result<()> {
    if value.contains('\0') {
        return Err(Error::Invalid(format!(
            "{field} contains the character U+0000, which cannot be stored"
        )));
    }
    Ok(())
}

/// Refuses a text longer than `limit` bytes of UTF-8 (an index key's part).
pub fn within_bytes(field: &str, value: &str, limit: usize) -> Result<()> {
    if value.len() > limit {
        return Err(Error::Invalid(format!(
            "{field} is {} bytes long in UTF-8; the limit is {limit} bytes (it is part of an index key)",
            value.len()
        )));
    }
    Ok(())
}

/// Refuses a JSON value with U+0000 in any string or object key, however deep.
pub fn json_without_nul(field: &str, value: &Value) -> Result<()> {
    if has_nul(value) {
        return Err(Error::Invalid(format!(
            "{field} contains the character U+0000, which cannot be stored"
        )));
    }
    Ok(())
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
    fn nul_characters_anywhere_are_refused() {
        for bad in [
            json!("x\u{0}y"),
            json!({"a": "x\u{0}y"}),
            json!({"a\u{0}": 1}),
            json!({"a": [{"b": ["\u{0}"]}]}),
        ] {
            let e = json_without_nul("input", &bad).unwrap_err();
            assert!(
                e.to_string()
                    .starts_with("input contains the character U+0000"),
                "{bad}"
            );
        }
        assert!(json_without_nul("input", &json!({"a": ["b", 1, null]})).is_ok());
        assert!(no_nul("reason", "a\u{0}").is_err());
        assert!(no_nul("reason", "a\u{1}").is_ok());
    }

    #[test]
    fn byte_limits_count_utf8_bytes_not_characters() {
        assert!(within_bytes("project", &"é".repeat(512), 1024).is_ok());
        let e = within_bytes("project", &"é".repeat(513), 1024).unwrap_err();
        assert_eq!(
            e.to_string(),
            "project is 1026 bytes long in UTF-8; the limit is 1024 bytes (it is part of an index key)"
        );
    }
}

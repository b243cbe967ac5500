//! API tokens: bearer secrets with scopes, stored as SHA-256 hashes.
//!
//! A token is `tq_` and 64 hex digits (256 random bits). Only its hash is stored, so
//! the table leaks nothing usable, and because the secret is random a fast unsalted hash
//! is the right tool (a slow password hash would only slow every request).

use std::{fmt, str::FromStr};

use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, PaginatorTrait, QueryFilter, Set};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::{
    Error,
    entity::api_tokens,
    error::Result,
    time::{self, Timestamp},
};

/// What a token may do. `admin` implies the others.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Submit tasks and cancel them.
    Submit,
    /// Read tasks, events, the inbox and the fleet.
    Read,
    /// Everything: retry, approve, and what the other scopes allow.
    Admin,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Submit => "submit",
            Scope::Read => "read",
            Scope::Admin => "admin",
        }
    }
}

impl FromStr for Scope {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "submit" => Ok(Scope::Submit),
            "read" => Ok(Scope::Read),
            "admin" => Ok(Scope::Admin),
            other => Err(format!(
                "unknown scope {other:?}: expected submit, read or admin"
            )),
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A token in the clear. Exists only between creation and printing it once, and in a
/// client's configuration; `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretToken(String);

impl SecretToken {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretToken(***)")
    }
}

/// A token as the server knows it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TokenInfo {
    pub id: Uuid,
    pub name: String,
    pub scopes: Vec<Scope>,
    pub created_at: Timestamp,
}

impl TokenInfo {
    pub fn allows(&self, needed: Scope) -> bool {
        self.scopes
            .iter()
            .any(|s| *s == needed || *s == Scope::Admin)
    }
}

fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

fn info(row: api_tokens::Model) -> Result<TokenInfo> {
    let scopes: Vec<Scope> = serde_json::from_value(row.scopes)
        .map_err(|e| Error::Corrupt(format!("token {} scopes: {e}", row.id)))?;
    Ok(TokenInfo {
        id: row.id,
        name: row.name,
        scopes,
        created_at: row.created_at,
    })
}

pub struct TokenStore;

impl TokenStore {
    /// Creates a token; the secret is returned once and never stored.
    pub async fn create<C: ConnectionTrait>(
        db: &C,
        name: &str,
        scopes: &[Scope],
    ) -> Result<(SecretToken, TokenInfo)> {
        let name = name.trim();
        if name.is_empty() || name.len() > 128 {
            return Err(Error::Invalid("a token name is 1 to 128 characters".into()));
        }
        if scopes.is_empty() {
            return Err(Error::Invalid(
                "a token needs at least one scope: submit, read or admin".into(),
            ));
        }
        let mut scopes = scopes.to_vec();
        scopes.sort_by_key(|s| s.as_str());
        scopes.dedup();
        // 256 bits from the thread's CSPRNG (ChaCha, seeded from the OS).
        let mut bytes = [0u8; 32];
        rand::Rng::fill_bytes(&mut rand::rng(), &mut bytes);
        let secret = format!("tq_{}", hex::encode(bytes));
        let row = api_tokens::ActiveModel {
            id: Set(Uuid::now_v7()),
            name: Set(name.to_owned()),
            token_hash: Set(hash(&secret)),
            scopes: Set(serde_json::json!(scopes)),
            created_at: Set(time::now()),
            last_used_at: Set(None),
            revoked_at: Set(None),
        };
        let row = api_tokens::Entity::insert(row)
            .exec_with_returning(db)
            .await?;
        Ok((SecretToken(secret), info(row)?))
    }

    /// The token a request presented, if it is known and not revoked.
    pub async fn authenticate<C: ConnectionTrait>(
        db: &C,
        presented: &str,
    ) -> Result<Option<TokenInfo>> {
        api_tokens::Entity::find()
            .filter(api_tokens::Column::TokenHash.eq(hash(presented)))
            .filter(api_tokens::Column::RevokedAt.is_null())
            .one(db)
            .await?
            .map(info)
            .transpose()
    }

    /// How many tokens exist (revoked ones included).
    pub async fn count<C: ConnectionTrait>(db: &C) -> Result<u64> {
        Ok(api_tokens::Entity::find().count(db).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_allows_everything_and_others_only_themselves() {
        let token = |scopes: Vec<Scope>| TokenInfo {
            id: Uuid::nil(),
            name: "t".into(),
            scopes,
            created_at: time::now(),
        };
        assert!(token(vec![Scope::Admin]).allows(Scope::Submit));
        assert!(token(vec![Scope::Read]).allows(Scope::Read));
        assert!(!token(vec![Scope::Read]).allows(Scope::Submit));
        assert!(!token(vec![Scope::Submit]).allows(Scope::Admin));
    }

    #[test]
    fn secrets_never_print_and_hashes_are_stable() {
        let secret = SecretToken("tq_abc".into());
        assert_eq!(format!("{secret:?}"), "SecretToken(***)");
        assert_eq!(hash("tq_abc"), hash("tq_abc"));
        assert_eq!(hash("tq_abc").len(), 64);
        // SHA-256 of the empty string, lowercase hex, as the stored hashes are.
        assert_eq!(
            hash(""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert!(
            "owner"
                .parse::<Scope>()
                .unwrap_err()
                .contains("submit, read or admin")
        );
    }
}

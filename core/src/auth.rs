//! API tokens: bearer secrets with scopes, stored as SHA-256 hashes.
//!
//! A token is `tq_` and 64 hex digits (256 random bits). Only its hash is stored, so
//! the table leaks nothing usable, and because the secret is random a fast unsalted hash
//! is the right tool (a slow password hash would only slow every request).
//!
//! The API checks tokens through a [`TokenCache`]: a token seen valid is trusted for
//! [`TOKEN_CACHE_TTL`] without a database round trip. A revocation sends a notification
//! in its transaction, and every API process listening clears its cache at once (and
//! again whenever its listener reconnects, in case one was missed).

use std::{
    collections::HashMap,
    fmt,
    str::FromStr,
    sync::Mutex,
    time::{Duration, Instant},
};

use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, PaginatorTrait, QueryFilter,
    QueryOrder, Set, TransactionTrait, sea_query::Expr,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;
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

    /// A token read back from where a client keeps it.
    pub fn from_saved(text: &str) -> Self {
        SecretToken(text.trim().to_owned())
    }
}

impl fmt::Debug for SecretToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretToken(***)")
    }
}

/// The channel a revocation notifies (in its transaction), so API processes drop
/// their cached tokens at once.
pub const CHANNEL_TOKENS_REVOKED: &str = "turnq_tokens_revoked";

/// How long an API process trusts a token it has seen valid without asking Postgres
/// again (a revocation clears it sooner, through [`CHANNEL_TOKENS_REVOKED`]).
pub const TOKEN_CACHE_TTL: Duration = Duration::from_secs(30);

/// How stale `last_used_at` may get before a use of the token writes it again: one
/// write per token per minute at most, not one per request.
const LAST_USED_EVERY: Duration = Duration::from_secs(60);

/// A token as the server knows it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TokenInfo {
    pub id: Uuid,
    pub name: String,
    pub scopes: Vec<Scope>,
    pub created_at: Timestamp,
    /// The last request that used it, to the minute; `None` if never used.
    pub last_used_at: Option<Timestamp>,
    /// When it was revoked; a revoked token authenticates nothing.
    pub revoked_at: Option<Timestamp>,
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
        last_used_at: row.last_used_at,
        revoked_at: row.revoked_at,
    })
}

pub struct TokenStore;

/// Tokens seen valid lately, by the hash of their secret: the API's token check without
/// a database round trip per request. Only valid tokens are kept (a token created a
/// moment ago must work at once); a revocation empties the cache through
/// [`TokenCache::follow_revocations`].
#[derive(Debug)]
pub struct TokenCache {
    ttl: Duration,
    seen: Mutex<HashMap<String, (TokenInfo, Instant)>>,
    /// Bumped by every [`TokenCache::clear`]: a token read from Postgres before a
    /// revocation cleared the cache is not put back into it after.
    generation: std::sync::atomic::AtomicU64,
}

impl TokenCache {
    /// A cache keeping tokens for `ttl`; `Duration::ZERO` asks Postgres every time
    /// (for a process that does not follow revocations).
    pub fn new(ttl: Duration) -> Self {
        TokenCache {
            ttl,
            seen: Mutex::new(HashMap::new()),
            generation: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, HashMap<String, (TokenInfo, Instant)>> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// [`TokenStore::authenticate`], answered from the cache when the token was seen
    /// valid less than the cache's ttl ago.
    pub async fn authenticate<C: ConnectionTrait>(
        &self,
        db: &C,
        presented: &str,
    ) -> Result<Option<TokenInfo>> {
        let key = hash(presented);
        if let Some((token, at)) = self.seen().get(&key)
            && at.elapsed() < self.ttl
        {
            return Ok(Some(token.clone()));
        }
        let generation = self.generation.load(std::sync::atomic::Ordering::SeqCst);
        let token = TokenStore::authenticate(db, presented).await?;
        let mut seen = self.seen();
        let cleared_meanwhile =
            self.generation.load(std::sync::atomic::Ordering::SeqCst) != generation;
        match &token {
            Some(token) if !self.ttl.is_zero() && !cleared_meanwhile => {
                seen.insert(key, (token.clone(), Instant::now()));
            }
            _ => {
                seen.remove(&key);
            }
        }
        // Keep it bounded by the tokens in use: drop the expired ones now and then.
        if seen.len() > 1024 {
            let ttl = self.ttl;
            seen.retain(|_, (_, at)| at.elapsed() < ttl);
        }
        Ok(token)
    }

    /// Forgets every token: the next request of each asks Postgres.
    pub fn clear(&self) {
        let mut seen = self.seen();
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        seen.clear();
    }

    /// Clears the cache on every revocation (and whenever the listener (re)connects,
    /// since one may have been sent while it was not listening), until `stop`.
    pub async fn follow_revocations(&self, db: &DatabaseConnection, stop: &CancellationToken) {
        let Some(pool) = crate::listen::postgres_pool(db) else {
            return;
        };
        crate::listen::Listener {
            what: "the token revocation listener",
            meanwhile: "cached tokens expire after 30 s meanwhile",
        }
        .run(&pool, &[CHANNEL_TOKENS_REVOKED], stop, |_| self.clear())
        .await;
    }
}

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

    /// The token a request presented, if it is known and not revoked. Records the use
    /// in `last_used_at` when that is older than a minute.
    pub async fn authenticate<C: ConnectionTrait>(
        db: &C,
        presented: &str,
    ) -> Result<Option<TokenInfo>> {
        let Some(token) = api_tokens::Entity::find()
            .filter(api_tokens::Column::TokenHash.eq(hash(presented)))
            .filter(api_tokens::Column::RevokedAt.is_null())
            .one(db)
            .await?
            .map(info)
            .transpose()?
        else {
            return Ok(None);
        };
        let now = time::now();
        let stale = now - chrono::TimeDelta::from_std(LAST_USED_EVERY).unwrap_or_default();
        if token.last_used_at.is_none_or(|used| used < stale) {
            api_tokens::Entity::update_many()
                .col_expr(api_tokens::Column::LastUsedAt, Expr::value(Some(now)))
                .filter(api_tokens::Column::Id.eq(token.id))
                .exec(db)
                .await?;
        }
        Ok(Some(token))
    }

    /// Every token, oldest first; revoked ones only with `revoked`.
    pub async fn list<C: ConnectionTrait>(db: &C, revoked: bool) -> Result<Vec<TokenInfo>> {
        let mut query = api_tokens::Entity::find().order_by_asc(api_tokens::Column::Id);
        if !revoked {
            query = query.filter(api_tokens::Column::RevokedAt.is_null());
        }
        query.all(db).await?.into_iter().map(info).collect()
    }

    /// Revokes the token named `which` (its id, or its name when that names exactly one
    /// token not yet revoked) and tells every API process to forget it at once.
    /// Revoking a revoked token is an error that says when it was revoked.
    pub async fn revoke(db: &DatabaseConnection, which: &str) -> Result<TokenInfo> {
        let txn = db.begin().await?;
        let mut query = api_tokens::Entity::find();
        query = match which.parse::<Uuid>() {
            Ok(id) => query.filter(api_tokens::Column::Id.eq(id)),
            Err(_) => query
                .filter(api_tokens::Column::Name.eq(which))
                .filter(api_tokens::Column::RevokedAt.is_null()),
        };
        let found = query.all(&txn).await?;
        let row = match found.as_slice() {
            [] => {
                return Err(Error::NotFound(format!(
                    "no token {which:?} to revoke (`turnq token list` shows them)"
                )));
            }
            [one] => one.clone(),
            several => {
                let ids: Vec<String> = several.iter().map(|r| r.id.to_string()).collect();
                return Err(Error::Invalid(format!(
                    "{} tokens are named {which:?}; revoke one by its id: {}",
                    several.len(),
                    ids.join(", ")
                )));
            }
        };
        if let Some(at) = row.revoked_at {
            return Err(Error::Invalid(format!(
                "token {:?} ({}) was already revoked at {}",
                row.name,
                row.id,
                at.to_rfc3339()
            )));
        }
        let now = time::now();
        api_tokens::Entity::update_many()
            .col_expr(api_tokens::Column::RevokedAt, Expr::value(Some(now)))
            .filter(api_tokens::Column::Id.eq(row.id))
            .exec(&txn)
            .await?;
        crate::listen::notify(&txn, CHANNEL_TOKENS_REVOKED, "").await?;
        txn.commit().await?;
        info(api_tokens::Model {
            revoked_at: Some(now),
            ..row
        })
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
            last_used_at: None,
            revoked_at: None,
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

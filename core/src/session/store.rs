//! The Postgres session store.
//!
//! Every write to a transcript first takes a transaction-scoped advisory lock on its key,
//! so writes to one transcript are serialised: a batch's entries get consecutive ids (two
//! concurrent batches never interleave), two retries of one batch cannot deadlock on
//! each other's `uuid`s, and the read-fold-write of the summary sees every earlier
//! append. Writes to different transcripts do not wait for each other.

use std::collections::HashSet;

use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, DatabaseTransaction, EntityTrait,
    QueryFilter, QueryOrder, QuerySelect, QueryTrait, Set, TransactionTrait,
    sea_query::{Expr, Func, OnConflict, Query, extension::postgres::PgExpr},
};
use serde_json::{Map, Value};

use super::{
    Appended, BoxFuture, Entries, ProjectKey, SessionId, SessionKey, SessionListing, SessionStore,
    SessionSummary, Subpath, entries::uuid_of, summary,
};
use crate::{
    agent::AgentSessions,
    entity::{
        session_entries::{self, Column as E},
        session_summaries::{self, Column as S},
    },
    error::Result,
    time::{self, Timestamp},
};

/// The first key of the two-key advisory locks this store takes ("sess"), which keeps
/// them apart from every other advisory lock the application takes.
const LOCK_CLASS: i32 = 0x7365_7373;

/// The session store on Postgres (tables `session_entries` and `session_summaries`).
#[derive(Clone, Debug)]
pub struct PgSessionStore {
    db: DatabaseConnection,
}

impl PgSessionStore {
    pub fn new(db: DatabaseConnection) -> Self {
        PgSessionStore { db }
    }

    /// The projects that have at least one session with a main transcript, by name (at
    /// most `limit`).
    pub async fn projects(&self, limit: u64) -> Result<Vec<String>> {
        Ok(session_summaries::Entity::find()
            .select_only()
            .column(S::ProjectKey)
            .distinct()
            .order_by_asc(S::ProjectKey)
            .limit(limit)
            .into_tuple::<String>()
            .all(&self.db)
            .await?)
    }

    async fn append_entries(&self, key: &SessionKey, entries: Entries) -> Result<Appended> {
        if entries.is_empty() {
            return Ok(Appended::default());
        }
        // The database would skip a repeat within the batch as well, but the summary
        // must fold exactly the entries stored, so repeats are dropped here first.
        let mut seen = HashSet::new();
        let mut batch = Vec::with_capacity(entries.len());
        let mut duplicates = 0;
        for entry in entries.into_vec() {
            match uuid_of(&entry) {
                Some(uuid) if !seen.insert(uuid.to_owned()) => duplicates += 1,
                _ => batch.push(entry),
            }
        }

        let at = time::now();
        let txn = self.db.begin().await?;
        lock(&txn, key).await?;
        let stored_uuids = insert(&txn, key, &batch, at).await?;
        let stored: Vec<&Value> = batch
            .iter()
            .filter(|e| uuid_of(e).is_none_or(|u| stored_uuids.contains(u)))
            .collect();
        duplicates += batch.len() - stored.len();
        if key.is_main() && !stored.is_empty() {
            update_summary(&txn, key, &stored, at).await?;
        }
        txn.commit().await?;
        Ok(Appended {
            appended: stored.len(),
            duplicates,
        })
    }

    async fn load_entries(&self, key: &SessionKey) -> Result<Option<Vec<Value>>> {
        let entries: Vec<Value> = session_entries::Entity::find()
            .select_only()
            .column(E::Entry)
            .filter(E::ProjectKey.eq(key.project.as_str()))
            .filter(E::SessionId.eq(key.session.as_str()))
            .filter(E::Subpath.eq(key.subpath_column()))
            // A checkpoint restore rewound the transcript: the entries written between
            // the checkpoint and the restore are hidden, never deleted.
            .filter(sea_orm::sea_query::Expr::cust(
                "NOT EXISTS (SELECT 1 FROM session_rewinds r \
                 WHERE r.project_key = session_entries.project_key \
                 AND r.session_id = session_entries.session_id \
                 AND session_entries.id > r.hide_after AND session_entries.id <= r.hide_through)",
            ))
            .order_by_asc(E::Id)
            .into_tuple()
            .all(&self.db)
            .await?;
        Ok(if entries.is_empty() {
            None
        } else {
            Some(entries)
        })
    }

    async fn summaries(&self, project: &ProjectKey) -> Result<Vec<session_summaries::Model>> {
        Ok(session_summaries::Entity::find()
            .filter(S::ProjectKey.eq(project.as_str()))
            .order_by_desc(S::Mtime)
            .order_by_asc(S::SessionId)
            .all(&self.db)
            .await?)
    }

    async fn subkeys(&self, project: &ProjectKey, session: &SessionId) -> Result<Vec<Subpath>> {
        // In the order they were first written to, as the SDK's reference store keeps
        // them (its map of transcripts is in insertion order).
        let subpaths: Vec<(String, i64)> = session_entries::Entity::find()
            .select_only()
            .column(E::Subpath)
            .column_as(E::Id.min(), "first")
            .filter(E::ProjectKey.eq(project.as_str()))
            .filter(E::SessionId.eq(session.as_str()))
            .filter(E::Subpath.ne(""))
            .group_by(E::Subpath)
            .order_by_asc(Expr::col("first"))
            .into_tuple()
            .all(&self.db)
            .await?;
        Ok(subpaths
            .into_iter()
            .map(|(subpath, _)| Subpath::stored(subpath))
            .collect())
    }

    async fn delete_key(&self, key: &SessionKey) -> Result<()> {
        let txn = self.db.begin().await?;
        // The main key's lock is the one its appends hold while they fold the summary,
        // so a delete never leaves entries behind without their summary or the reverse.
        lock(&txn, key).await?;
        let mut entries = session_entries::Entity::delete_many()
            .filter(E::ProjectKey.eq(key.project.as_str()))
            .filter(E::SessionId.eq(key.session.as_str()));
        if let Some(subpath) = &key.subpath {
            entries = entries.filter(E::Subpath.eq(subpath.as_str()));
        }
        entries.exec(&txn).await?;
        if key.is_main() {
            session_summaries::Entity::delete_many()
                .filter(S::ProjectKey.eq(key.project.as_str()))
                .filter(S::SessionId.eq(key.session.as_str()))
                .exec(&txn)
                .await?;
            // The conversation is over: its agents' backend sessions (in this project)
            // must not be resumed into a transcript that no longer exists. Even when no
            // entry was stored (a `command` agent keeps its transcript itself), so always.
            AgentSessions::close_session(&txn, key.project.as_str(), key.session.as_str()).await?;
        }
        txn.commit().await?;
        Ok(())
    }
}

/// Serialises writers of one transcript until the transaction ends
/// (`pg_advisory_xact_lock(class, hashtext(name))`). A hash collision between two keys
/// only makes them wait for each other, never lets two writers of one key in.
async fn lock(txn: &DatabaseTransaction, key: &SessionKey) -> Result<()> {
    // U+001F cannot occur in a validated key, so the joined text is unambiguous.
    let name = format!(
        "{}\u{1f}{}\u{1f}{}",
        key.project.as_str(),
        key.session.as_str(),
        key.subpath_column()
    );
    let lock = Func::cust("pg_advisory_xact_lock")
        .arg(LOCK_CLASS)
        .arg(Func::cust("hashtext").arg(name));
    txn.execute(&Query::select().expr(lock).take()).await?;
    Ok(())
}

/// The index expression of `session_entries_uuid_uidx`, `entry->>'uuid'`; the ON
/// CONFLICT target must repeat it for Postgres to use the index as the arbiter. The key
/// is a constant written into the SQL, not a bound parameter: `entry->>$1` is not the
/// index's expression, and Postgres would find no arbiter.
fn uuid_expr() -> Expr {
    Expr::col(E::Entry).cast_json_field(Expr::Constant("uuid".into()))
}

/// The predicate of `session_entries_uuid_uidx`, `jsonb_typeof(entry->'uuid') =
/// 'string'`, which the ON CONFLICT target must imply; constants, for the same reason.
fn uuid_predicate() -> Expr {
    // Scoped: `ExprTrait` is implemented for every value, and its `max` would shadow
    // `Ord::max` in this file.
    use sea_orm::sea_query::ExprTrait;
    Expr::expr(
        Func::cust("jsonb_typeof")
            .arg(Expr::col(E::Entry).get_json_field(Expr::Constant("uuid".into()))),
    )
    .eq(Expr::Constant("string".into()))
}

/// Inserts `batch` in as few statements as its size allows (see `db::MAX_STATEMENT_BYTES`),
/// skipping entries whose `uuid` the transcript holds.
/// Returns the `uuid`s of the entries stored.
async fn insert(
    txn: &DatabaseTransaction,
    key: &SessionKey,
    batch: &[Value],
    at: Timestamp,
) -> Result<HashSet<String>> {
    if batch.is_empty() {
        return Ok(HashSet::new());
    }
    // Split by size (see `db::MAX_STATEMENT_BYTES`); five parameters per row, so a
    // statement also stays under Postgres' 65,535.
    let mut uuids = HashSet::with_capacity(batch.len());
    let chunks = crate::db::statement_chunks(batch.iter().collect(), |entry| {
        crate::db::json_bytes(entry) + 64
    });
    for chunk in chunks {
        let rows = chunk.into_iter().map(|entry| session_entries::ActiveModel {
            project_key: Set(key.project.as_str().to_owned()),
            session_id: Set(key.session.as_str().to_owned()),
            subpath: Set(key.subpath_column().to_owned()),
            entry: Set(entry.clone()),
            created_at: Set(at),
            ..Default::default()
        });
        let mut statement = session_entries::Entity::insert_many(rows).into_query();
        statement
            .on_conflict(
                OnConflict::columns([E::ProjectKey, E::SessionId, E::Subpath])
                    .expr(uuid_expr())
                    .target_and_where(uuid_predicate())
                    .do_nothing()
                    .to_owned(),
            )
            .returning(Query::returning().expr(uuid_expr()));
        for row in txn.query_all(&statement).await? {
            if let Some(uuid) = row.try_get_by_index::<Option<String>>(0)? {
                uuids.insert(uuid);
            }
        }
    }
    Ok(uuids)
}

/// Folds the stored entries into the session's summary. The caller holds the main key's
/// lock, so no other append changes the summary between the read and the write.
async fn update_summary(
    txn: &DatabaseTransaction,
    key: &SessionKey,
    stored: &[&Value],
    at: Timestamp,
) -> Result<()> {
    let previous = session_summaries::Entity::find_by_id((
        key.project.as_str().to_owned(),
        key.session.as_str().to_owned(),
    ))
    .one(txn)
    .await?;
    let (mtime, data) = match previous {
        Some(row) => (
            row.mtime,
            match row.data {
                Value::Object(map) => map,
                // A CHECK constraint keeps `data` an object.
                _ => Map::new(),
            },
        ),
        None => (0, Map::new()),
    };
    let data = summary::fold(data, stored.iter().copied());
    // Never backwards, even if this host's clock is behind the last writer's: readers
    // compare mtimes to tell a fresh summary from a stale one.
    let mtime = mtime.max(at.timestamp_millis());
    session_summaries::Entity::insert(session_summaries::ActiveModel {
        project_key: Set(key.project.as_str().to_owned()),
        session_id: Set(key.session.as_str().to_owned()),
        mtime: Set(mtime),
        data: Set(Value::Object(data)),
    })
    .on_conflict(
        OnConflict::columns([S::ProjectKey, S::SessionId])
            .update_columns([S::Mtime, S::Data])
            .to_owned(),
    )
    .exec_without_returning(txn)
    .await?;
    Ok(())
}

impl SessionStore for PgSessionStore {
    fn append<'a>(
        &'a self,
        key: &'a SessionKey,
        entries: Entries,
    ) -> BoxFuture<'a, Result<Appended>> {
        Box::pin(self.append_entries(key, entries))
    }

    fn load<'a>(&'a self, key: &'a SessionKey) -> BoxFuture<'a, Result<Option<Vec<Value>>>> {
        Box::pin(self.load_entries(key))
    }

    fn list_sessions<'a>(
        &'a self,
        project: &'a ProjectKey,
    ) -> BoxFuture<'a, Result<Vec<SessionListing>>> {
        // Read from the summaries: the session's summary row exists exactly when its main
        // transcript has entries, and its mtime is the one `list_session_summaries`
        // reports, so the two can never disagree.
        Box::pin(async move {
            Ok(self
                .summaries(project)
                .await?
                .into_iter()
                .map(|row| SessionListing {
                    session_id: row.session_id,
                    mtime: row.mtime,
                })
                .collect())
        })
    }

    fn list_session_summaries<'a>(
        &'a self,
        project: &'a ProjectKey,
    ) -> BoxFuture<'a, Result<Vec<SessionSummary>>> {
        Box::pin(async move {
            Ok(self
                .summaries(project)
                .await?
                .into_iter()
                .map(|row| SessionSummary {
                    session_id: row.session_id,
                    mtime: row.mtime,
                    data: row.data,
                })
                .collect())
        })
    }

    fn list_subkeys<'a>(
        &'a self,
        project: &'a ProjectKey,
        session: &'a SessionId,
    ) -> BoxFuture<'a, Result<Vec<Subpath>>> {
        Box::pin(self.subkeys(project, session))
    }

    fn delete<'a>(&'a self, key: &'a SessionKey) -> BoxFuture<'a, Result<()>> {
        Box::pin(self.delete_key(key))
    }
}

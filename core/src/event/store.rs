//! The event store: an append-only log of streams, each with gapless versions.
//!
//! Optimistic concurrency: an append names the version the writer last saw; if the
//! stream has moved on, the append is refused with [`Error::VersionConflict`] and writes
//! nothing. The `(stream_type, stream_id, version)` unique key is the backstop that
//! makes two concurrent appends of the same version impossible, even between the check
//! and the insert.

use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect, Set, SqlErr, TransactionTrait,
    sea_query::{Expr, Func},
};
use serde::Serialize;
use serde_json::Value;

use crate::{
    Error, LogPosition, StreamVersion,
    entity::events,
    error::Result,
    time::{self, Timestamp},
};

/// Which stream an event belongs to.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct StreamRef {
    #[serde(rename = "type")]
    pub stream_type: String,
    pub id: String,
}

impl StreamRef {
    pub fn new(stream_type: impl Into<String>, id: impl Into<String>) -> Self {
        StreamRef {
            stream_type: stream_type.into(),
            id: id.into(),
        }
    }
}

impl std::fmt::Display for StreamRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.stream_type, self.id)
    }
}

/// An event to append.
#[derive(Clone, Debug)]
pub struct NewEvent {
    pub kind: String,
    pub data: Value,
    pub metadata: Value,
}

/// An event as the log holds it.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RecordedEvent {
    pub position: LogPosition,
    pub stream: StreamRef,
    pub version: StreamVersion,
    pub kind: String,
    pub data: Value,
    pub metadata: Value,
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub recorded_at: Timestamp,
}

impl From<events::Model> for RecordedEvent {
    fn from(m: events::Model) -> Self {
        RecordedEvent {
            position: LogPosition(m.position),
            stream: StreamRef {
                stream_type: m.stream_type,
                id: m.stream_id,
            },
            version: StreamVersion(m.version),
            kind: m.kind,
            data: m.data,
            metadata: m.metadata,
            recorded_at: m.recorded_at,
        }
    }
}

/// Reads and appends events. Stateless: every method takes the connection (or the
/// transaction) to run on, so a projection update can share the append's transaction.
pub struct EventStore;

impl EventStore {
    /// Appends `events` to `stream`, which the caller last saw at `expected`.
    pub async fn append(
        db: &DatabaseConnection,
        stream: &StreamRef,
        expected: StreamVersion,
        events: Vec<NewEvent>,
    ) -> Result<Vec<RecordedEvent>> {
        let txn = db.begin().await?;
        let actual = Self::stream_version(&txn, stream).await?;
        if actual != expected {
            return Err(Error::VersionConflict {
                stream: stream.to_string(),
                expected,
                actual,
            });
        }
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let at = time::now();
        let rows: Vec<events::ActiveModel> = events
            .into_iter()
            .enumerate()
            .map(|(i, event)| {
                Self::row(stream, StreamVersion(expected.0 + 1 + i as i64), event, at)
            })
            .collect();
        let inserted = events::Entity::insert_many(rows)
            .exec_with_returning(&txn)
            .await
            .map_err(Error::from);
        let recorded = match inserted {
            Ok(models) => models.into_iter().map(RecordedEvent::from).collect(),
            Err(Error::Database(e))
                if matches!(e.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) =>
            {
                // A concurrent append took the version between our check and our insert.
                drop(txn);
                let actual = Self::stream_version(db, stream).await?;
                return Err(Error::VersionConflict {
                    stream: stream.to_string(),
                    expected,
                    actual,
                });
            }
            Err(e) => return Err(e),
        };
        txn.commit().await?;
        Ok(recorded)
    }

    /// The row for one event. Used by stores that append inside their own transaction.
    pub(crate) fn row(
        stream: &StreamRef,
        version: StreamVersion,
        event: NewEvent,
        at: Timestamp,
    ) -> events::ActiveModel {
        events::ActiveModel {
            stream_type: Set(stream.stream_type.clone()),
            stream_id: Set(stream.id.clone()),
            version: Set(version.0),
            kind: Set(event.kind),
            data: Set(event.data),
            metadata: Set(event.metadata),
            recorded_at: Set(at),
            ..Default::default()
        }
    }

    /// Inserts rows in multi-row statements (no round trip per event; split by size,
    /// see [`crate::db::MAX_STATEMENT_BYTES`]), without reading them back: the hot path
    /// never needs their positions.
    pub(crate) async fn insert<C: ConnectionTrait>(
        db: &C,
        rows: Vec<events::ActiveModel>,
    ) -> Result<()> {
        let size = |row: &events::ActiveModel| {
            let json = |v: &sea_orm::ActiveValue<serde_json::Value>| match v {
                sea_orm::ActiveValue::Set(v) | sea_orm::ActiveValue::Unchanged(v) => {
                    crate::db::json_bytes(v)
                }
                sea_orm::ActiveValue::NotSet => 0,
            };
            // The JSON, plus the stream id, kind and fixed-size columns.
            json(&row.data) + json(&row.metadata) + 100
        };
        for chunk in crate::db::statement_chunks(rows, size) {
            events::Entity::insert_many(chunk)
                .exec_without_returning(db)
                .await?;
        }
        Ok(())
    }

    /// The current version of a stream: 0 when it has no events.
    pub async fn stream_version<C: ConnectionTrait>(
        db: &C,
        stream: &StreamRef,
    ) -> Result<StreamVersion> {
        let max: Option<Option<i64>> = events::Entity::find()
            .select_only()
            .expr(Func::max(Expr::col(events::Column::Version)))
            .filter(events::Column::StreamType.eq(&stream.stream_type))
            .filter(events::Column::StreamId.eq(&stream.id))
            .into_tuple()
            .one(db)
            .await?;
        Ok(StreamVersion(max.flatten().unwrap_or(0)))
    }

    /// Events of one stream after `after`, in version order.
    pub async fn read_stream<C: ConnectionTrait>(
        db: &C,
        stream: &StreamRef,
        after: StreamVersion,
        limit: u64,
    ) -> Result<Vec<RecordedEvent>> {
        let rows = events::Entity::find()
            .filter(events::Column::StreamType.eq(&stream.stream_type))
            .filter(events::Column::StreamId.eq(&stream.id))
            .filter(events::Column::Version.gt(after.0))
            .order_by_asc(events::Column::Version)
            .limit(limit)
            .all(db)
            .await?;
        Ok(rows.into_iter().map(RecordedEvent::from).collect())
    }

    /// The global log after `after`, in position order.
    pub async fn read_all<C: ConnectionTrait>(
        db: &C,
        after: LogPosition,
        limit: u64,
    ) -> Result<Vec<RecordedEvent>> {
        let rows = events::Entity::find()
            .filter(events::Column::Position.gt(after.0))
            .order_by_asc(events::Column::Position)
            .limit(limit)
            .all(db)
            .await?;
        Ok(rows.into_iter().map(RecordedEvent::from).collect())
    }
}

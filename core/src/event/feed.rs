//! The log in commit order: what a live reader (`GET /v1/events/stream`) may pass on,
//! and the one reader per process that feeds every live client.
//!
//! `position` is taken at insert, not at commit, so positions become visible out of
//! order, and a reader that followed `position` alone could skip an event for good. So
//! a reader passes only events of transactions older than every transaction still
//! running that could write to this database's log ([`HORIZON`], evaluated in the same
//! statement as the read, so the two agree): those transactions are finished, their
//! events all visible, and no event can appear later below them. It orders what it
//! passes by (xid, position), and its [`Cursor`] is that pair. Every event is passed
//! exactly once, in an order that never goes back; an event waits for the transactions
//! that started before its own (a long transaction holds the stream back while it runs).
//!
//! Transaction ids are cluster-wide: `pg_snapshot_xmin(pg_current_snapshot())` is the
//! oldest transaction running in any database of the cluster, and one long transaction
//! in another database (an analytics query sharing the server) held this log's stream
//! back. The horizon leaves out the running transactions Postgres shows as another
//! database's (`pg_stat_activity`): they cannot write here. One it cannot place (a
//! prepared transaction, another role's session it may not see) still counts, so the
//! horizon errs on the side of waiting, never of passing an event too early.
//!
//! [`EventFeed`] is the one reader of a process: it polls the log every
//! `--stream-poll-interval` and whenever a LISTEN wake-up says tasks moved, and hands
//! each event to every subscriber through one bounded broadcast channel. Subscribers
//! never query the log while they keep up; one that falls behind the channel's bound
//! is told so ([`tokio::sync::broadcast::error::RecvError::Lagged`]), never slows the
//! feed.

use std::{collections::HashMap, fmt, str::FromStr, sync::Arc, time::Duration};

use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, DbBackend, EntityTrait, FromQueryResult,
    QueryFilter, QuerySelect, Statement,
};
use serde::{Serialize, Serializer};
use serde_json::Value;
use tokio::sync::{Notify, broadcast, watch};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{
    Error, LogPosition, StreamVersion,
    entity::tasks,
    error::Result,
    event::{RecordedEvent, StreamRef, TaskEvent},
    fault::fail_point,
    listen::{Listener, Notice},
    queue::{QueueFigures, QueueTally},
    supervise::Supervisor,
    task::{CHANNEL_TASK_CANCELLED, CHANNEL_TASKS_NEW},
    time::Timestamp,
};

/// Where a reader of the log stands: after the event of transaction `xid` at
/// `position`, in commit order. Written `xid-position` (the SSE `id`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cursor {
    /// The id of the writing transaction (`xid8`); 0 for events written before turnq
    /// recorded it.
    pub xid: u64,
    pub position: i64,
}

impl Cursor {
    /// Before every event.
    pub const START: Cursor = Cursor {
        xid: 0,
        position: 0,
    };
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.xid, self.position)
    }
}

impl FromStr for Cursor {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        let bad = || {
            format!(
                "{s:?} is not a stream cursor: it is the `id` of an event of the stream, \
                 two numbers joined by '-' (e.g. 7321-1045)"
            )
        };
        let (xid, position) = s.trim().split_once('-').ok_or_else(bad)?;
        let cursor = Cursor {
            xid: xid.parse().map_err(|_| bad())?,
            position: position.parse().map_err(|_| bad())?,
        };
        if cursor.position < 0 {
            return Err(bad());
        }
        Ok(cursor)
    }
}

impl Serialize for Cursor {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// An event as a live reader sees it: the event (`docs/events.md`), its cursor, and the
/// queue, project and session of its task where it has one.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LiveEvent {
    /// Where a client resumes from: `xid-position`, the SSE `id`.
    #[cfg_attr(feature = "openapi", schema(value_type = String, example = "7321-1045"))]
    pub cursor: Cursor,
    #[serde(flatten)]
    pub event: RecordedEvent,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
}

/// Which events a reader wants; every field given must match.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LiveFilter {
    /// The events of one task.
    pub task: Option<Uuid>,
    /// The events of tasks of one project.
    pub project: Option<String>,
    /// The events of tasks of one session (with `project`: the session's key).
    pub session_id: Option<String>,
    /// The events of tasks of one queue.
    pub queue: Option<String>,
    /// A kind (`task.completed`), or a prefix ending in `.` (`task.`).
    pub kind: Option<String>,
}

impl LiveFilter {
    pub fn matches(&self, e: &LiveEvent) -> bool {
        let task_ok = self.task.is_none_or(|t| {
            e.event.stream.stream_type == TaskEvent::STREAM_TYPE
                && e.event.stream.id == t.to_string()
        });
        let field = |want: &Option<String>, have: &Option<String>| {
            want.as_ref().is_none_or(|w| have.as_ref() == Some(w))
        };
        let kind_ok = self.kind.as_ref().is_none_or(|k| {
            if k.ends_with('.') {
                e.event.kind.starts_with(k.as_str())
            } else {
                e.event.kind == *k
            }
        });
        task_ok
            && field(&self.project, &e.project)
            && field(&self.session_id, &e.session_id)
            && field(&self.queue, &e.queue)
            && kind_ok
    }
}

/// One row of the commit-ordered read.
#[derive(FromQueryResult)]
struct Row {
    xid: String,
    position: i64,
    stream_type: String,
    stream_id: String,
    version: i64,
    kind: String,
    data: Value,
    metadata: Value,
    recorded_at: Timestamp,
}

/// The queue, project and session of tasks, which never change once submitted.
type TaskLabels = HashMap<Uuid, (String, String, Option<String>)>;

/// The most task labels the feed remembers; past it, it starts over.
const LABEL_CACHE: usize = 100_000;

/// The oldest transaction still running that could write to this database's log, as a
/// SQL expression (an `xid8`): the snapshot's oldest running transaction, leaving out
/// those `pg_stat_activity` shows in another database; the snapshot's `xmax` when none
/// is left. Events of transactions below it are all committed or rolled back.
/// (`backend_xid` is the 32-bit form of the `xid8`: its value modulo 2^32.)
pub const HORIZON: &str = "(SELECT coalesce(min(x), pg_snapshot_xmax(pg_current_snapshot())) \
     FROM pg_snapshot_xip(pg_current_snapshot()) AS x \
     WHERE NOT EXISTS (SELECT 1 FROM pg_stat_activity AS a \
       WHERE a.datname <> current_database() \
         AND a.backend_xid::text = (x::text::numeric % 4294967296)::text))";

/// Reads the log in commit order.
pub struct LiveLog;

impl LiveLog {
    /// The cursor of "now": after the last event that is readable at this moment.
    pub async fn head<C: ConnectionTrait>(db: &C) -> Result<Cursor> {
        let row = db
            .query_one_raw(Statement::from_string(
                DbBackend::Postgres,
                format!(
                    "SELECT xid::text AS xid, position FROM events WHERE xid < {HORIZON} \
                     ORDER BY xid DESC, position DESC LIMIT 1"
                ),
            ))
            .await?;
        match row {
            None => Ok(Cursor::START),
            Some(row) => Ok(Cursor {
                xid: parse_xid(&row.try_get::<String>("", "xid")?)?,
                position: row.try_get("", "position")?,
            }),
        }
    }

    /// Up to `limit` readable events after `after` (and not after `until`, when given),
    /// in commit order; only the events of `stream` when given. Without labels: see
    /// [`LiveLog::label`].
    ///
    /// Raw SQL: sea-query has no `xid8` type nor the snapshot functions this needs.
    pub async fn after<C: ConnectionTrait>(
        db: &C,
        after: Cursor,
        until: Option<Cursor>,
        stream: Option<&StreamRef>,
        limit: u64,
    ) -> Result<Vec<LiveEvent>> {
        let mut sql = format!(
            "SELECT xid::text AS xid, position, stream_type, stream_id, version, kind, data, \
             metadata, recorded_at FROM events \
             WHERE (xid, position) > ($1::text::xid8, $2) \
             AND xid < {HORIZON}"
        );
        let mut values: Vec<sea_orm::Value> =
            vec![after.xid.to_string().into(), after.position.into()];
        if let Some(until) = until {
            values.push(until.xid.to_string().into());
            values.push(until.position.into());
            sql.push_str(&format!(
                " AND (xid, position) <= (${}::text::xid8, ${})",
                values.len() - 1,
                values.len()
            ));
        }
        if let Some(stream) = stream {
            values.push(stream.stream_type.clone().into());
            values.push(stream.id.clone().into());
            sql.push_str(&format!(
                " AND stream_type = ${} AND stream_id = ${}",
                values.len() - 1,
                values.len()
            ));
        }
        values.push((limit as i64).into());
        sql.push_str(&format!(" ORDER BY xid, position LIMIT ${}", values.len()));
        let rows = Row::find_by_statement(Statement::from_sql_and_values(
            DbBackend::Postgres,
            sql,
            values,
        ))
        .all(db)
        .await?;
        rows.into_iter()
            .map(|r| {
                Ok(LiveEvent {
                    cursor: Cursor {
                        xid: parse_xid(&r.xid)?,
                        position: r.position,
                    },
                    event: RecordedEvent {
                        position: LogPosition(r.position),
                        stream: StreamRef {
                            stream_type: r.stream_type,
                            id: r.stream_id,
                        },
                        version: StreamVersion(r.version),
                        kind: r.kind,
                        data: r.data,
                        metadata: r.metadata,
                        recorded_at: r.recorded_at,
                    },
                    queue: None,
                    project: None,
                    session_id: None,
                })
            })
            .collect()
    }

    /// Fills in the queue, project and session of the task events of `events`, from
    /// `cache` or one query for the tasks it does not know.
    async fn label_with<C: ConnectionTrait>(
        db: &C,
        events: &mut [LiveEvent],
        cache: &mut TaskLabels,
    ) -> Result<()> {
        let task_of = |e: &LiveEvent| {
            (e.event.stream.stream_type == TaskEvent::STREAM_TYPE)
                .then(|| Uuid::parse_str(&e.event.stream.id).ok())
                .flatten()
        };
        let mut missing: Vec<Uuid> = events
            .iter()
            .filter_map(task_of)
            .filter(|id| !cache.contains_key(id))
            .collect();
        missing.sort_unstable();
        missing.dedup();
        if !missing.is_empty() {
            if cache.len() + missing.len() > LABEL_CACHE {
                cache.clear();
            }
            let rows: Vec<(Uuid, String, String, Option<String>)> = tasks::Entity::find()
                .select_only()
                .columns([
                    tasks::Column::Id,
                    tasks::Column::Queue,
                    tasks::Column::Project,
                    tasks::Column::SessionId,
                ])
                .filter(tasks::Column::Id.is_in(missing))
                .into_tuple()
                .all(db)
                .await?;
            for (id, queue, project, session) in rows {
                cache.insert(id, (queue, project, session));
            }
        }
        for event in events {
            if let Some((queue, project, session)) = task_of(event).and_then(|id| cache.get(&id)) {
                event.queue = Some(queue.clone());
                event.project = Some(project.clone());
                event.session_id = session.clone();
            }
        }
        Ok(())
    }

    /// Fills in the queue, project and session of the task events of `events`.
    pub async fn label<C: ConnectionTrait>(db: &C, events: &mut [LiveEvent]) -> Result<()> {
        Self::label_with(db, events, &mut TaskLabels::new()).await
    }
}

fn parse_xid(text: &str) -> Result<u64> {
    text.parse()
        .map_err(|_| Error::Corrupt(format!("an event's xid {text:?} is not a number")))
}

/// The most events one poll of the feed reads.
const FEED_BATCH: u64 = 1000;

/// The one reader of the log in a process, fanning events out to live subscribers.
pub struct EventFeed {
    events: broadcast::Sender<Arc<LiveEvent>>,
    /// The cursor up to which every event has been handed to the channel: what a new
    /// subscriber reads from the log itself before it follows the channel.
    head: watch::Sender<Cursor>,
    poll: Duration,
    /// What each queue holds, kept from the events the feed passes on; `None` until it
    /// is loaded at start.
    tally: std::sync::Mutex<Option<QueueTally>>,
}

impl EventFeed {
    /// A feed that buffers `capacity` events for its slowest subscriber and polls the
    /// log every `poll` (sooner when woken).
    pub fn new(capacity: usize, poll: Duration) -> Arc<EventFeed> {
        Arc::new(EventFeed {
            events: broadcast::Sender::new(capacity.max(1)),
            head: watch::Sender::new(Cursor::START),
            poll,
            tally: std::sync::Mutex::new(None),
        })
    }

    /// Subscribes to the events after the returned head: events up to it are read from
    /// the log ([`LiveLog::after`] with `until` = head), the ones after it arrive on the
    /// receiver (which may also repeat some up to the head: skip what is not after the
    /// last cursor passed on).
    pub fn subscribe(&self) -> (broadcast::Receiver<Arc<LiveEvent>>, Cursor) {
        // Subscribe first: the feed advances the head before it broadcasts, so every
        // event after the head read below arrives on this receiver.
        let receiver = self.events.subscribe();
        (receiver, *self.head.borrow())
    }

    /// The cursor up to which events have been handed out.
    pub fn head(&self) -> Cursor {
        *self.head.borrow()
    }

    /// What `queue` holds now, as of the events handed out; `None` while the feed is
    /// still loading at start.
    pub fn queue_figures(&self, queue: &str) -> Option<QueueFigures> {
        self.lock_tally()
            .as_ref()
            .map(|t| t.figures(queue, crate::time::now()))
    }

    /// The usage of the tasks created today (UTC); `None` while loading at start.
    pub fn usage_today(&self) -> Option<crate::queue::DayUsage> {
        self.lock_tally()
            .as_ref()
            .map(|t| t.usage_today(crate::time::now()))
    }

    /// The running tasks of each worker; `None` while loading.
    pub fn running_by_worker(&self) -> Option<std::collections::BTreeMap<String, Vec<uuid::Uuid>>> {
        self.lock_tally().as_ref().map(|t| t.running_by_worker())
    }

    /// Completed and failed per minute over the last hour; `None` while loading.
    pub fn per_minute(&self) -> Option<Vec<crate::stats::MinuteCounts>> {
        self.lock_tally()
            .as_ref()
            .map(|t| t.per_minute(crate::time::now()))
    }

    fn lock_tally(&self) -> std::sync::MutexGuard<'_, Option<QueueTally>> {
        // Counts only; a panic elsewhere leaves them as consistent as the last event.
        self.tally.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads the log until `stop`: from "now" at start, then every poll interval and at
    /// every wake-up (tasks submitted or cancelled, heard by a listener that is a
    /// long-lived task of `tasks`), handing each event out once, in commit order.
    /// Outages are waited out: the feed resumes where it stood.
    pub async fn run(
        self: Arc<Self>,
        db: DatabaseConnection,
        tasks: Supervisor,
        stop: CancellationToken,
    ) {
        let wake = Arc::new(Notify::new());
        if let Some(pool) = crate::listen::postgres_pool(&db) {
            let (wake, stop) = (wake.clone(), stop.clone());
            tasks.spawn("api.event-feed.listener", async move {
                Listener {
                    what: "the event stream's wake-up listener",
                    meanwhile: "the stream polls meanwhile",
                }
                .run(
                    &pool,
                    &[CHANNEL_TASKS_NEW, CHANNEL_TASK_CANCELLED],
                    &stop,
                    |_: Notice<'_>| wake.notify_one(),
                )
                .await;
            });
        }
        let mut labels = TaskLabels::new();
        let mut backoff = crate::retry::Backoff::reconnect();
        let mut failing = false;
        let mut started = false;
        while !stop.is_cancelled() {
            fail_point!("api.event-feed");
            let polled = if started {
                self.poll_once(&db, &mut labels).await
            } else {
                // The tally and the head come from one snapshot: the feed goes on from
                // exactly where the tally was loaded.
                QueueTally::load(&db).await.map(|(tally, head)| {
                    *self.lock_tally() = Some(tally);
                    self.head.send_replace(head);
                    started = true;
                    0
                })
            };
            let pause = match polled {
                Ok(n) => {
                    if failing {
                        tracing::info!("the event stream reads the log again");
                        failing = false;
                    }
                    backoff.reset();
                    if n as u64 == FEED_BATCH {
                        // More is waiting: read on at once.
                        continue;
                    }
                    self.poll
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %crate::error::chain(&e),
                            "the event stream cannot read the log; retrying");
                        failing = true;
                    }
                    backoff.next_delay()
                }
            };
            tokio::select! {
                _ = wake.notified() => {}
                _ = tokio::time::sleep(pause) => {}
                _ = stop.cancelled() => {}
            }
        }
    }

    /// Reads what is new and hands it out; returns how many events.
    async fn poll_once(&self, db: &DatabaseConnection, labels: &mut TaskLabels) -> Result<usize> {
        let head = self.head();
        let mut events = LiveLog::after(db, head, None, None, FEED_BATCH).await?;
        if events.is_empty() {
            return Ok(0);
        }
        LiveLog::label_with(db, &mut events, labels).await?;
        if let Some(tally) = self.lock_tally().as_mut() {
            for event in &events {
                tally.apply(event);
            }
        }
        let n = events.len();
        if let Some(last) = events.last() {
            // The head moves before the events go out (see `subscribe`).
            self.head.send_replace(last.cursor);
        }
        for event in events {
            // No subscriber is not an error: the event is in the log for later readers.
            let _ = self.events.send(Arc::new(event));
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_print_and_parse_and_order_by_transaction_first() {
        let c = Cursor {
            xid: 7321,
            position: 1045,
        };
        assert_eq!(c.to_string(), "7321-1045");
        assert_eq!("7321-1045".parse::<Cursor>(), Ok(c));
        for bad in ["", "12", "a-1", "1-b", "1-2-3", "-1-2", "1--2"] {
            let err = bad.parse::<Cursor>().unwrap_err();
            assert!(err.contains("not a stream cursor"), "{bad}: {err}");
        }
        let later_tx_lower_position = Cursor {
            xid: 7322,
            position: 1000,
        };
        assert!(c < later_tx_lower_position);
    }
}

//! Rebuilding the projections from the log: `turnq replay` and `turnq replay --verify`.
//!
//! The log is the truth; `tasks` is a cache of it. Rebuilding folds every task stream
//! in log order with the same column changes the live path writes
//! (`task::projection`), checking each step against the state machine.
//! `verify` compares the result with the stored rows and reports every difference;
//! `replay` writes the rebuilt rows back.
//!
//! `lease_until` is left out of both: heartbeats extend leases without logging an event
//! (one event per task per heartbeat would dwarf the rest of the log), so the lease is
//! runtime state, not history.

use std::collections::BTreeMap;

use sea_orm::{
    ActiveModelTrait, ActiveValue, ColumnTrait, DatabaseConnection, EntityTrait, IdenStatic,
    IntoActiveModel, Iterable, ModelTrait, QueryFilter, QueryOrder, QuerySelect, TransactionTrait,
    Value,
};
use serde::Serialize;
use uuid::Uuid;

use crate::{
    TaskId,
    entity::{events, tasks},
    error::Result,
    event::TaskEvent,
    task::projection,
};

/// One difference between the log and the projection.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Drift {
    pub task: TaskId,
    /// The column that differs, or `row` when a whole row is missing or extra, or
    /// `log` when the log itself breaks the state machine.
    pub column: String,
    /// What the log says.
    pub expected: String,
    /// What the table holds.
    pub actual: String,
}

/// An event of the log that cannot be folded: its stream id is not a task id, or its
/// kind or data are not an event this version knows. Rebuilding skips it and goes on.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BadEvent {
    pub position: i64,
    pub stream_id: String,
    pub kind: String,
    /// What is wrong with it.
    pub problem: String,
}

#[derive(Debug, Default, Serialize)]
pub struct ReplayReport {
    pub events: u64,
    pub tasks: u64,
    pub drift: Vec<Drift>,
    /// Events that could not be read, in log order; the rest was verified without them.
    pub bad_events: Vec<BadEvent>,
}

/// Whether [`replay`] may rewrite the projection when the log holds bad events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BadEvents {
    /// Refuse, and say which they are: rebuilding without them drops what they say.
    Refuse,
    /// Rebuild without them (they stay in the log, which is append-only).
    Skip,
}

const PAGE: u64 = 10_000;

fn show(value: &Value) -> String {
    match value {
        Value::String(Some(s)) => s.clone(),
        Value::Json(Some(j)) => j.to_string(),
        other => format!("{other:?}"),
    }
}

/// Folds the whole log into task rows, keyed by id, in memory.
async fn rebuild(
    db: &DatabaseConnection,
    report: &mut ReplayReport,
) -> Result<BTreeMap<Uuid, tasks::ActiveModel>> {
    let mut rows: BTreeMap<Uuid, tasks::ActiveModel> = BTreeMap::new();
    let mut after = 0i64;
    loop {
        let page = events::Entity::find()
            .filter(events::Column::StreamType.eq(TaskEvent::STREAM_TYPE))
            .filter(events::Column::Position.gt(after))
            .order_by_asc(events::Column::Position)
            .limit(PAGE)
            .all(db)
            .await?;
        let Some(last) = page.last() else { break };
        after = last.position;
        for stored in page {
            report.events += 1;
            let read = stored
                .stream_id
                .parse::<Uuid>()
                .map_err(|e| format!("the stream id is not a task id (a UUID): {e}"))
                .and_then(|id| {
                    TaskEvent::from_parts(&stored.kind, &stored.data).map(|event| (id, event))
                });
            let (id, event) = match read {
                Ok(read) => read,
                Err(problem) => {
                    report.bad_events.push(BadEvent {
                        position: stored.position,
                        stream_id: stored.stream_id.clone(),
                        kind: stored.kind.clone(),
                        problem,
                    });
                    continue;
                }
            };
            let at = stored.recorded_at;
            if let TaskEvent::Submitted(spec) = &event {
                rows.insert(id, projection::new_row(TaskId(id), spec, at));
                continue;
            }
            let Some(row) = rows.get_mut(&id) else {
                report.drift.push(Drift {
                    task: TaskId(id),
                    column: "log".into(),
                    expected: "task.submitted first".into(),
                    actual: stored.kind.clone(),
                });
                continue;
            };
            let state = match row.state {
                ActiveValue::Set(state) | ActiveValue::Unchanged(state) => Some(state),
                ActiveValue::NotSet => None,
            };
            if state.and_then(|s| s.after(&event)).is_none() {
                report.drift.push(Drift {
                    task: TaskId(id),
                    column: "log".into(),
                    expected: format!("a legal transition from {state:?}"),
                    actual: stored.kind.clone(),
                });
            }
            projection::apply(row, &event, stored.version, at);
        }
    }
    report.tasks = rows.len() as u64;
    Ok(rows)
}

fn compared_columns() -> impl Iterator<Item = tasks::Column> {
    tasks::Column::iter().filter(|c| !matches!(c, tasks::Column::LeaseUntil))
}

/// Rebuilds the projection in memory and reports how the stored rows differ from it.
/// Writes nothing.
pub async fn verify(db: &DatabaseConnection) -> Result<ReplayReport> {
    let mut report = ReplayReport::default();
    let mut rebuilt = rebuild(db, &mut report).await?;
    let mut after: Option<Uuid> = None;
    loop {
        let mut query = tasks::Entity::find()
            .order_by_asc(tasks::Column::Id)
            .limit(PAGE);
        if let Some(after) = after {
            query = query.filter(tasks::Column::Id.gt(after));
        }
        let page = query.all(db).await?;
        let Some(last) = page.last() else { break };
        after = Some(last.id);
        for stored in page {
            let Some(expected) = rebuilt.remove(&stored.id) else {
                report.drift.push(Drift {
                    task: TaskId(stored.id),
                    column: "row".into(),
                    expected: "no row: the log has no such task".into(),
                    actual: "a row".into(),
                });
                continue;
            };
            for column in compared_columns() {
                let want = match expected.get(column) {
                    ActiveValue::Set(v) | ActiveValue::Unchanged(v) => v,
                    ActiveValue::NotSet => continue,
                };
                let have = stored.get(column);
                if want != have {
                    report.drift.push(Drift {
                        task: TaskId(stored.id),
                        column: column.as_str().to_owned(),
                        expected: show(&want),
                        actual: show(&have),
                    });
                }
            }
        }
    }
    for id in rebuilt.into_keys() {
        report.drift.push(Drift {
            task: TaskId(id),
            column: "row".into(),
            expected: "a row".into(),
            actual: "missing".into(),
        });
    }
    Ok(report)
}

/// Rebuilds the projection and writes it back in one transaction: rows are overwritten
/// with what the log says (keeping their current lease) and missing rows are inserted.
/// The report lists the drift that was repaired. With bad events in the log and
/// [`BadEvents::Refuse`], writes nothing and returns the report (its `bad_events` say
/// why); with [`BadEvents::Skip`], rebuilds without them.
pub async fn replay(db: &DatabaseConnection, bad: BadEvents) -> Result<ReplayReport> {
    let report = verify(db).await?;
    if !report.bad_events.is_empty() && bad == BadEvents::Refuse {
        return Ok(report);
    }
    let mut scratch = ReplayReport::default();
    let rebuilt = rebuild(db, &mut scratch).await?;
    let txn = db.begin().await?;
    for (id, mut row) in rebuilt {
        match tasks::Entity::find_by_id(id).one(&txn).await? {
            Some(current) => {
                row.lease_until = ActiveValue::Set(current.lease_until);
                let mut active = current.into_active_model();
                for column in compared_columns() {
                    if let ActiveValue::Set(v) = row.get(column) {
                        active.set_if_not_equals(column, v);
                    }
                }
                if active.is_changed() {
                    active.update(&txn).await?;
                }
            }
            None => {
                tasks::Entity::insert(row)
                    .exec_without_returning(&txn)
                    .await?;
            }
        }
    }
    txn.commit().await?;
    Ok(report)
}

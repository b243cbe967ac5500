//! The stores measured on their own: the session store (append, load) and the replay
//! of the event log into the projection.

use std::time::Instant;

use anyhow::Result;
use serde::Serialize;
use serde_json::{Value, json};
use turnq_core::session::{Entries, PgSessionStore, SessionKey, SessionStore};

use super::{Stack, quantile};

#[derive(Debug, Serialize)]
pub struct SessionFigures {
    pub appended: usize,
    pub batch: usize,
    pub append_entries_per_sec: f64,
    pub loaded: usize,
    pub load_p50_ms: f64,
    pub load_max_ms: f64,
}

#[derive(Debug, Serialize)]
pub struct ReplayFigures {
    pub events: u64,
    pub tasks: u64,
    pub seconds: f64,
    pub events_per_sec: f64,
}

/// An entry shaped like a Claude Agent SDK transcript line (about 400 bytes).
fn entry(session: &str, i: usize) -> Value {
    json!({
        "type": if i.is_multiple_of(2) { "user" } else { "assistant" },
        "uuid": uuid::Uuid::new_v4().to_string(),
        "parentUuid": null,
        "sessionId": session,
        "timestamp": "2026-11-26T09:00:00.000Z",
        "cwd": "/work/project",
        "message": {
            "role": if i.is_multiple_of(2) { "user" } else { "assistant" },
            "content": [{"type": "text", "text": format!("entry {i}: the quick brown fox jumps over the lazy dog, and then some more words so the line is as long as a short real message")}],
        },
    })
}

/// Appends `total` entries to one session in calls of `batch`, then loads a session of
/// `load` entries 20 times.
pub async fn session(
    stack: &Stack,
    total: usize,
    batch: usize,
    load: usize,
) -> Result<SessionFigures> {
    let store = PgSessionStore::new(stack.db.clone());
    let key = SessionKey::new("bench", "append", None)?;
    let started = Instant::now();
    let mut i = 0;
    while i < total {
        let n = batch.min(total - i);
        let entries = (i..i + n).map(|j| entry("append", j)).collect();
        store.append(&key, Entries::new(entries)?).await?;
        i += n;
    }
    let append_secs = started.elapsed().as_secs_f64();

    let key = SessionKey::new("bench", "load", None)?;
    let mut i = 0;
    while i < load {
        let n = 1000.min(load - i);
        let entries = (i..i + n).map(|j| entry("load", j)).collect();
        store.append(&key, Entries::new(entries)?).await?;
        i += n;
    }
    let mut millis = Vec::with_capacity(20);
    for _ in 0..20 {
        let started = Instant::now();
        let entries = store.load(&key).await?.unwrap_or_default();
        millis.push(started.elapsed().as_secs_f64() * 1000.0);
        anyhow::ensure!(
            entries.len() == load,
            "the session store loaded {} of {load} entries",
            entries.len()
        );
    }
    millis.sort_by(f64::total_cmp);
    Ok(SessionFigures {
        appended: total,
        batch,
        append_entries_per_sec: total as f64 / append_secs,
        loaded: load,
        load_p50_ms: quantile(&millis, 0.5),
        load_max_ms: quantile(&millis, 1.0),
    })
}

/// Rebuilds the projection from the log of everything the bench ran so far (what
/// `turnq replay` does).
pub async fn replay(stack: &Stack) -> Result<ReplayFigures> {
    let started = Instant::now();
    let report =
        turnq_core::projection::replay(&stack.db, turnq_core::projection::BadEvents::Refuse)
            .await?;
    let seconds = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        report.drift.is_empty(),
        "replay found {} differences between the log and the projection",
        report.drift.len()
    );
    Ok(ReplayFigures {
        events: report.events,
        tasks: report.tasks,
        seconds,
        events_per_sec: report.events as f64 / seconds.max(1e-9),
    })
}

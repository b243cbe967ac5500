//! Failing fast while Postgres is down.
//!
//! When Postgres cannot be reached, the pool retries connecting for its whole acquire
//! timeout (5 s) before a request gets its 503: every client would wait that long on
//! every call, and pile up meanwhile. Once one request has found the database
//! unreachable, the API knows it is down: other requests under `/v1/` are answered 503
//! at once (with `Retry-After`), and one request at a time, at most every
//! [`PROBE_EVERY`], is a probe: it asks Postgres (`SELECT 1`) before it goes on, and
//! the first probe Postgres answers ends the outage. Health probes, metrics and the API
//! document are not behind this: they answer without Postgres, or check it themselves.
//!
//! The outage is logged at WARN once when it starts and at INFO when it ends; requests
//! refused meanwhile are logged at DEBUG only.

use std::{
    sync::{
        Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use axum::{
    extract::{Request, State},
    middleware::Next,
    response::{IntoResponse, Response},
};
use tokio::time::Instant;
use turnq_core::time::{self, Timestamp};

use crate::{ApiError, AppState};

/// How often, at most, a request is let through to see whether Postgres is back.
pub(crate) const PROBE_EVERY: Duration = Duration::from_secs(1);

/// Marks a response as "Postgres is unreachable" (set by [`ApiError`]), so the
/// middleware can tell an outage from other 503s.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Unreachable;

/// What the API knows about Postgres' reachability.
#[derive(Debug, Default)]
pub(crate) struct Outage {
    /// Since when (wall clock, for the message) and the last probe's start.
    down: Mutex<Option<(Timestamp, Instant)>>,
    /// A probe is in flight.
    probing: AtomicBool,
}

/// What to do with a request.
enum Admit<'a> {
    /// No known outage: go on.
    Go,
    /// Known down, and this request is the probe.
    Probe(ProbeGuard<'a>),
    /// Known down since this time: refuse at once.
    Refuse(Timestamp),
}

/// Ends the probe when the request is done or dropped (a client that hangs up).
struct ProbeGuard<'a>(&'a Outage);

impl Drop for ProbeGuard<'_> {
    fn drop(&mut self) {
        self.0.probing.store(false, Ordering::SeqCst);
    }
}

impl Outage {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(Timestamp, Instant)>> {
        self.down.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn admit(&self) -> Admit<'_> {
        let mut down = self.lock();
        let Some((since, last_probe)) = down.as_mut() else {
            return Admit::Go;
        };
        if last_probe.elapsed() >= PROBE_EVERY
            && self
                .probing
                .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
        {
            *last_probe = Instant::now();
            return Admit::Probe(ProbeGuard(self));
        }
        Admit::Refuse(*since)
    }

    /// A request found Postgres unreachable.
    fn went_down(&self) {
        let mut down = self.lock();
        if down.is_none() {
            tracing::warn!(
                probe_every_ms = PROBE_EVERY.as_millis() as u64,
                "Postgres is unreachable: answering 503 at once until a probe request gets through"
            );
            *down = Some((time::now(), Instant::now()));
        }
    }

    /// Since when Postgres is known down, if it is.
    fn since(&self) -> Option<Timestamp> {
        self.lock().map(|(since, _)| since)
    }

    /// A probe got through.
    fn came_back(&self) {
        if let Some((since, _)) = self.lock().take() {
            let secs = (time::now() - since).num_milliseconds() as f64 / 1000.0;
            tracing::info!(down_for_s = secs, "Postgres answers again");
        }
    }
}

/// The middleware in front of the `/v1/` routes that need Postgres.
pub(crate) async fn fail_fast(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let outage = state.outage();
    let refuse = |since: Timestamp| {
        ApiError::unavailable(format!(
            "the database has been unreachable since {}; retry shortly",
            since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        ))
        .into_response()
    };
    match outage.admit() {
        Admit::Go => {}
        // The probe asks Postgres itself (the request might not need it, or be
        // answered before reaching it), then the request goes on.
        Admit::Probe(guard) => {
            let answered = state.db().ping().await;
            drop(guard);
            match answered {
                Ok(()) => outage.came_back(),
                Err(e) => {
                    tracing::debug!(error = %e, "Postgres is still unreachable");
                    if let Some(since) = outage.since() {
                        return refuse(since);
                    }
                }
            }
        }
        Admit::Refuse(since) => {
            tracing::debug!(uri = %request.uri(), "refused at once: Postgres is unreachable");
            return refuse(since);
        }
    }
    let response = next.run(request).await;
    if response.extensions().get::<Unreachable>().is_some() {
        outage.went_down();
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn while_down_one_probe_at_a_time_goes_through_and_others_are_refused() {
        let outage = Outage::default();
        assert!(matches!(outage.admit(), Admit::Go));
        outage.went_down();
        // Just down: the request that found it out was the probe.
        assert!(matches!(outage.admit(), Admit::Refuse(_)));
        // Once the probe interval has passed, one probe; the others are refused
        // while it runs.
        outage.lock().as_mut().unwrap().1 -= PROBE_EVERY;
        let probe = outage.admit();
        assert!(matches!(probe, Admit::Probe(_)));
        assert!(matches!(outage.admit(), Admit::Refuse(_)));
        // A probe dropped unanswered (the client hung up) frees the next one.
        drop(probe);
        outage.lock().as_mut().unwrap().1 -= PROBE_EVERY;
        assert!(matches!(outage.admit(), Admit::Probe(_)));
        outage.came_back();
        assert!(matches!(outage.admit(), Admit::Go));
    }
}

//! Whether Postgres answers, as far as this worker can tell, and what an outage stops.
//!
//! A claim or a heartbeat that fails because Postgres cannot be reached
//! ([`turnq_core::Error::is_unavailable`]) marks it down. While it is down the Redis
//! consumers fetch nothing: a job taken now could not be claimed, so it could only be
//! handed back (jobs already fetched are put back on their queue unstarted). Running
//! turns keep going; their own writes retry. [`watch()`] then probes Postgres with a
//! ping after a backoff (100 ms doubling to 5 s, from the
//! start again for the next outage) until it answers, and marks it up: the consumers
//! resume. A heartbeat that gets through marks it up as well.
//!
//! An outage is logged once at warn when it starts (with the error chain) and once at
//! info when it ends, however many claims, heartbeats and probes fail in between.
//!
//! Nothing here crashes the process: an outage is a state, not an error.

use std::{
    future::Future,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::{FutureExt, future::BoxFuture};
use sea_orm::{DatabaseConnection, DbErr};
use tokio::{
    sync::watch,
    time::{Instant, timeout},
};
use tokio_util::sync::CancellationToken;
use turnq_core::{error::chain as error_chain, fault::fail_point, retry::Backoff};
/// A probe that takes longer than this counts as unanswered (the pool's own acquire
/// timeout bounds it too; this also covers a connection that hangs).
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether Postgres answers. Shared by the runner (claims), the heartbeat, the probe
/// and the Redis consumers (which follow [`PostgresHealth::subscribe`]).
#[derive(Debug)]
pub(crate) struct PostgresHealth {
    up: watch::Sender<bool>,
    /// When the current outage started, for the log line that ends it.
    down_since: Mutex<Option<Instant>>,
}

impl Default for PostgresHealth {
    fn default() -> Self {
        PostgresHealth {
            up: watch::Sender::new(true),
            down_since: Mutex::new(None),
        }
    }
}

impl PostgresHealth {
    pub(crate) fn is_up(&self) -> bool {
        *self.up.borrow()
    }

    /// Follows the state: `true` while Postgres answers.
    pub(crate) fn subscribe(&self) -> watch::Receiver<bool> {
        self.up.subscribe()
    }

    /// Marks Postgres down because of `error`. Logs only when this starts an outage.
    pub(crate) fn down(&self, error: &(dyn std::error::Error + 'static)) {
        // The check and the change are one step, so two callers failing at once log
        // the outage once.
        let started = self.up.send_if_modified(|up| std::mem::replace(up, false));
        if started {
            metrics::counter!(turnq_core::metrics::WORKER_POSTGRES_ERRORS).increment(1);
            *self.since() = Some(Instant::now());
            tracing::warn!(error = %error_chain(error),
                "Postgres is unreachable: taking no jobs until it answers (running turns go on \
                 and retry their writes; unstarted jobs go back to their queues)");
        } else {
            tracing::debug!(error = %error_chain(error), "Postgres is still unreachable");
        }
    }

    /// Marks Postgres up. Logs only when this ends an outage.
    pub(crate) fn up(&self) {
        let ended = self.up.send_if_modified(|up| !std::mem::replace(up, true));
        if ended {
            let outage = self.since().take().map(|since| since.elapsed());
            tracing::info!(
                outage_ms = outage.map(|d| d.as_millis() as u64),
                "Postgres answers again: taking jobs"
            );
        }
    }

    fn since(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        // Only ever holds a timestamp; a panic elsewhere cannot leave it inconsistent.
        self.down_since
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The probe [`watch()`] uses in the worker: a ping on the pool.
pub(crate) fn ping(
    db: DatabaseConnection,
) -> impl FnMut() -> BoxFuture<'static, Result<(), DbErr>> + Send {
    move || {
        let db = db.clone();
        async move { db.ping().await }.boxed()
    }
}

/// Until `stop`: whenever Postgres is marked down, runs `probe` after a backoff
/// ([`Backoff::reconnect`]) until it succeeds, then marks Postgres up.
pub(crate) async fn watch<P, F>(health: Arc<PostgresHealth>, mut probe: P, stop: CancellationToken)
where
    P: FnMut() -> F,
    F: Future<Output = Result<(), DbErr>>,
{
    let mut state = health.subscribe();
    let mut backoff = Backoff::reconnect();
    loop {
        fail_point!("worker.postgres-probe");
        // The guard `wait_for` returns must not outlive this expression: it holds the
        // channel's read lock, which `down` and `up` need.
        let outage = async { state.wait_for(|up| !*up).await.is_ok() };
        tokio::select! {
            _ = stop.cancelled() => return,
            changed = outage => if !changed { return },
        }
        backoff.reset();
        loop {
            if !backoff.wait(&stop).await {
                return;
            }
            if health.is_up() {
                // A heartbeat got through meanwhile.
                break;
            }
            match timeout(PROBE_TIMEOUT, probe()).await {
                Ok(Ok(())) => {
                    health.up();
                    break;
                }
                Ok(Err(e)) => {
                    tracing::debug!(error = %error_chain(&e), "Postgres does not answer yet")
                }
                Err(_) => tracing::debug!(
                    timeout_ms = PROBE_TIMEOUT.as_millis() as u64,
                    "probing Postgres timed out"
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sea_orm::RuntimeErr;
    use std::sync::atomic::{AtomicUsize, Ordering};
    // Time is paused in these tests: a `sleep` advances a virtual clock once every
    // timer before it has fired, so it is an exact step, not a wall-clock wait.
    use tokio::time::sleep;
    use turnq_core::retry::RECONNECT;

    fn unreachable() -> turnq_core::Error {
        turnq_core::Error::Database(DbErr::Conn(RuntimeErr::Internal(
            "connection refused".into(),
        )))
    }

    #[test]
    fn down_and_up_change_the_state_once_each() {
        let health = PostgresHealth::default();
        let mut seen = health.subscribe();
        assert!(health.is_up());
        health.up();
        assert!(!seen.has_changed().unwrap(), "up while up is no change");
        health.down(&unreachable());
        assert!(!health.is_up());
        assert!(seen.has_changed().unwrap());
        seen.mark_unchanged();
        health.down(&unreachable());
        assert!(
            !seen.has_changed().unwrap(),
            "a second failure is the same outage"
        );
        health.up();
        assert!(health.is_up());
        assert!(*seen.borrow_and_update());
    }

    /// Runs `watch` with a probe that fails `failures` times, recording when it probed.
    async fn probe_times(failures: usize) -> Vec<Duration> {
        let health = Arc::new(PostgresHealth::default());
        let stop = CancellationToken::new();
        let start = Instant::now();
        let probes = Arc::new(Mutex::new(Vec::new()));
        let calls = Arc::new(AtomicUsize::new(0));
        let probe = {
            let (probes, calls) = (probes.clone(), calls.clone());
            move || {
                probes.lock().unwrap().push(start.elapsed());
                let n = calls.fetch_add(1, Ordering::SeqCst);
                async move {
                    if n < failures {
                        Err(DbErr::Conn(RuntimeErr::Internal("refused".into())))
                    } else {
                        Ok(())
                    }
                }
            }
        };
        let watcher = tokio::spawn(watch(health.clone(), probe, stop.clone()));
        health.down(&unreachable());
        let mut up = health.subscribe();
        up.wait_for(|up| *up).await.unwrap();
        stop.cancel();
        watcher.await.unwrap();
        probes.lock().unwrap().clone()
    }

    #[tokio::test(start_paused = true)]
    async fn an_outage_is_probed_with_a_doubling_backoff_capped_at_five_seconds() {
        let times = probe_times(8).await;
        let ms: Vec<u128> = times.iter().map(Duration::as_millis).collect();
        // Waits of 100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000 ms.
        assert_eq!(
            ms,
            [100, 300, 700, 1500, 3100, 6300, 11300, 16300, 21300],
            "probe times"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_backoff_starts_over_for_the_next_outage() {
        let health = Arc::new(PostgresHealth::default());
        let stop = CancellationToken::new();
        let calls = Arc::new(AtomicUsize::new(0));
        let probe = {
            let calls = calls.clone();
            move || {
                let n = calls.fetch_add(1, Ordering::SeqCst);
                // The first outage takes three probes; the second answers at once.
                async move {
                    if n < 2 {
                        Err(DbErr::Conn(RuntimeErr::Internal("refused".into())))
                    } else {
                        Ok(())
                    }
                }
            }
        };
        let watcher = tokio::spawn(watch(health.clone(), probe, stop.clone()));
        let mut up = health.subscribe();
        health.down(&unreachable());
        up.wait_for(|up| *up).await.unwrap();

        let second = Instant::now();
        health.down(&unreachable());
        up.wait_for(|up| *up).await.unwrap();
        assert_eq!(second.elapsed(), RECONNECT.0);
        assert_eq!(calls.load(Ordering::SeqCst), 4);
        stop.cancel();
        watcher.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_heartbeat_that_gets_through_ends_the_outage_without_a_probe() {
        let health = Arc::new(PostgresHealth::default());
        let stop = CancellationToken::new();
        let calls = Arc::new(AtomicUsize::new(0));
        let probe = {
            let calls = calls.clone();
            move || {
                calls.fetch_add(1, Ordering::SeqCst);
                async { Err(DbErr::Conn(RuntimeErr::Internal("refused".into()))) }
            }
        };
        let watcher = tokio::spawn(watch(health.clone(), probe, stop.clone()));
        health.down(&unreachable());
        sleep(Duration::from_millis(50)).await;
        health.up();
        sleep(Duration::from_secs(10)).await;
        assert_eq!(calls.load(Ordering::SeqCst), 0);
        assert!(health.is_up());
        stop.cancel();
        watcher.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_hanging_probe_counts_as_unanswered() {
        let health = Arc::new(PostgresHealth::default());
        let stop = CancellationToken::new();
        let calls = Arc::new(AtomicUsize::new(0));
        let probe = {
            let calls = calls.clone();
            move || {
                let n = calls.fetch_add(1, Ordering::SeqCst);
                async move {
                    if n == 0 {
                        futures::future::pending::<()>().await;
                    }
                    Ok(())
                }
            }
        };
        let watcher = tokio::spawn(watch(health.clone(), probe, stop.clone()));
        let started = Instant::now();
        health.down(&unreachable());
        health.subscribe().wait_for(|up| *up).await.unwrap();
        assert_eq!(
            started.elapsed(),
            Duration::from_millis(100) + PROBE_TIMEOUT + Duration::from_millis(200)
        );
        stop.cancel();
        watcher.await.unwrap();
    }
}

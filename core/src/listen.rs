//! LISTEN on Postgres: the one loop behind every listener (the dispatcher's wake-up on
//! new tasks, a worker's cancellations).
//!
//! A notification sent while the listening connection is down is lost for good, so a
//! listener is only a fast path: each user also has a slower one that cannot miss
//! (the dispatcher polls, a worker's heartbeat renews leases and finds the turns it
//! lost). That is why every (re)connection is reported ([`Notice::Connected`]): the user
//! runs its slow path once at that moment, covering whatever was sent meanwhile. The
//! listener reconnects after any error with [`Backoff::reconnect`], and does it itself
//! (sqlx's transparent reconnection is off) so that no reconnection goes unreported.

use std::time::Duration;

use sea_orm::{
    ConnectionTrait, DatabaseConnection, DatabaseConnectionType,
    sea_query::{Func, Query},
    sqlx::{PgPool, postgres::PgListener},
};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::retry::Backoff;

/// `NOTIFY` inside the caller's transaction: delivered on commit, dropped on rollback.
/// Through `pg_notify(channel, payload)`, a function, because the `NOTIFY` statement
/// takes no bound parameters.
pub(crate) async fn notify<C: ConnectionTrait>(
    db: &C,
    channel: &str,
    payload: &str,
) -> crate::error::Result<()> {
    let notify = Func::cust("pg_notify").arg(channel).arg(payload);
    db.execute(&Query::select().expr(notify).take()).await?;
    Ok(())
}

/// A connection that lasted this long was healthy: the next failure starts the backoff
/// over.
const HEALTHY: Duration = Duration::from_secs(30);

/// The Postgres pool behind `db`, whose connections a listener takes; `None` when `db`
/// is not a Postgres pool (LISTEN needs one).
pub fn postgres_pool(db: &DatabaseConnection) -> Option<PgPool> {
    match &db.inner {
        DatabaseConnectionType::SqlxPostgresPoolConnection(_) => {
            Some(db.get_postgres_connection_pool().clone())
        }
        _ => None,
    }
}

/// What a listener reports.
#[derive(Debug)]
pub enum Notice<'a> {
    /// Listening (again): anything sent before now may have been missed.
    Connected,
    /// A notification on one of the channels.
    Notification { channel: &'a str, payload: &'a str },
}

/// Who listens, for the log, and what covers for it while it cannot.
#[derive(Clone, Copy, Debug)]
pub struct Listener {
    /// e.g. "the dispatcher's wake-up listener".
    pub what: &'static str,
    /// e.g. "cancellations arrive with the heartbeat meanwhile".
    pub meanwhile: &'static str,
}

impl Listener {
    /// Listens on `channels` with connections of `pool` until `stop`, handing every
    /// notice to `on`.
    pub async fn run(
        self,
        pool: &PgPool,
        channels: &[&str],
        stop: &CancellationToken,
        mut on: impl FnMut(Notice<'_>),
    ) {
        let mut backoff = Backoff::reconnect();
        // Failures since the last good connection: the first is logged at warn, the
        // rest at debug (an outage is logged where it is noticed first).
        let mut failures: u32 = 0;
        loop {
            let subscribed = tokio::select! {
                _ = stop.cancelled() => return,
                subscribed = subscribe(pool, channels) => subscribed,
            };
            let lost = match subscribed {
                Ok(mut listener) => {
                    if failures > 0 {
                        tracing::info!("{} listens again", self.what);
                        failures = 0;
                    }
                    on(Notice::Connected);
                    let since = Instant::now();
                    let lost = tokio::select! {
                        _ = stop.cancelled() => return,
                        lost = receive(&mut listener, &mut on) => lost,
                    };
                    if since.elapsed() >= HEALTHY {
                        backoff.reset();
                    }
                    lost
                }
                Err(e) => e,
            };
            failures += 1;
            if failures == 1 {
                tracing::warn!(error = %lost, "{} lost its connection; reconnecting ({})",
                    self.what, self.meanwhile);
            } else {
                tracing::debug!(error = %lost, failures, "{} cannot reconnect yet", self.what);
            }
            if !backoff.wait(stop).await {
                return;
            }
        }
    }
}

/// A listener on a connection of its own from `pool`, subscribed to `channels`.
async fn subscribe(pool: &PgPool, channels: &[&str]) -> Result<PgListener, sea_orm::sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.eager_reconnect(false);
    listener.listen_all(channels.iter().copied()).await?;
    Ok(listener)
}

/// Hands notifications to `on` until the connection is lost; returns why.
async fn receive(
    listener: &mut PgListener,
    on: &mut impl FnMut(Notice<'_>),
) -> sea_orm::sqlx::Error {
    loop {
        match listener.try_recv().await {
            Ok(Some(n)) => on(Notice::Notification {
                channel: n.channel(),
                payload: n.payload(),
            }),
            // Closed, and not re-established: `eager_reconnect` is off.
            Ok(None) => {
                return sea_orm::sqlx::Error::Io(std::io::Error::new(
                    std::io::ErrorKind::ConnectionAborted,
                    "the listening connection was closed",
                ));
            }
            Err(e) => return e,
        }
    }
}

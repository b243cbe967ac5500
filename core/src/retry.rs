//! One backoff policy for every loop that waits out an outage (reconnecting to
//! Postgres or Redis, probing, rebuilding a consumer), on the `backon` crate.
//!
//! The delays double from a first to a most and stay there; a loop that got through
//! calls [`Backoff::reset`], so the next outage starts short again. No jitter: each
//! process has few such loops, and a predictable schedule is easier to read in logs.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use tokio_util::sync::CancellationToken;

/// The delays most loops use: 100 ms doubling up to 5 s.
pub const RECONNECT: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(5));

/// A running backoff: the next delay, doubling up to a cap, until reset.
#[derive(Debug)]
pub struct Backoff {
    policy: ExponentialBuilder,
    delays: ExponentialBackoff,
}

impl Backoff {
    /// [`RECONNECT`]'s delays.
    pub fn reconnect() -> Backoff {
        Backoff::between(RECONNECT.0, RECONNECT.1)
    }

    /// `first`, doubling up to `most`.
    pub fn between(first: Duration, most: Duration) -> Backoff {
        let policy = ExponentialBuilder::new()
            .with_min_delay(first)
            .with_max_delay(most.max(first))
            .with_factor(2.0)
            .without_max_times();
        Backoff {
            delays: policy.build(),
            policy,
        }
    }

    /// The next delay. (backon multiplies in `f32`; rounding to whole milliseconds
    /// keeps the schedule exact: 100 ms, 200 ms, 400 ms, ….)
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.delays.next().unwrap_or_else(|| {
            // Unreachable with `without_max_times`; start over rather than spin.
            self.delays = self.policy.build();
            self.policy.build().next().unwrap_or(RECONNECT.0)
        });
        Duration::from_millis((delay.as_secs_f64() * 1000.0).round() as u64)
    }

    /// Starts the schedule over: the next delay is the first again.
    pub fn reset(&mut self) {
        self.delays = self.policy.build();
    }

    /// Sleeps the next delay, unless `stop` comes first; false when stopping.
    pub async fn wait(&mut self, stop: &CancellationToken) -> bool {
        let delay = self.next_delay();
        tokio::select! {
            _ = tokio::time::sleep(delay) => true,
            _ = stop.cancelled() => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_and_start_over_on_reset() {
        let mut backoff = Backoff::reconnect();
        let ms: Vec<u128> = (0..8).map(|_| backoff.next_delay().as_millis()).collect();
        assert_eq!(ms, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        backoff.reset();
        assert_eq!(backoff.next_delay(), Duration::from_millis(100));
    }
}

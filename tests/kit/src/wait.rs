//! Waiting for an event instead of sleeping.

use std::{fmt::Display, future::Future, time::Duration};

use anyhow::{Result, anyhow};
use tokio::time::Instant;

use crate::env::patience;

/// How often [`eventually`] checks again.
const RECHECK: Duration = Duration::from_millis(20);

/// Runs `check` until it succeeds and returns what it returned, or fails after
/// [`patience`] saying `what` was awaited and what `check` saw last.
pub async fn eventually<T, E, F, Fut>(what: impl Display, mut check: F) -> Result<T>
where
    E: Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = std::result::Result<T, E>>,
{
    let limit = patience();
    let give_up = Instant::now() + limit;
    loop {
        match check().await {
            Ok(value) => return Ok(value),
            Err(seen) if Instant::now() >= give_up => {
                return Err(anyhow!(
                    "{what}: not so after {limit:?}; last seen: {seen:#}"
                ));
            }
            Err(_) => tokio::time::sleep(RECHECK).await,
        }
    }
}

/// `future`'s output, or an error naming `what` if it takes longer than [`patience`].
pub async fn within<F: Future>(what: impl Display, future: F) -> Result<F::Output> {
    let limit = patience();
    tokio::time::timeout(limit, future)
        .await
        .map_err(|_| anyhow!("{what}: did not happen within {limit:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn eventually_returns_the_first_success() {
        let mut calls = 0;
        let value = eventually("the third call", || {
            calls += 1;
            let n = calls;
            async move {
                if n >= 3 {
                    Ok(n)
                } else {
                    Err(format!("call {n}"))
                }
            }
        })
        .await
        .unwrap();
        assert_eq!(value, 3);
    }

    #[tokio::test(start_paused = true)]
    async fn eventually_reports_what_it_last_saw() {
        let err = eventually("never", || async { Err::<(), _>("still no") })
            .await
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("never: not so after"), "{err}");
        assert!(err.ends_with("last seen: still no"), "{err}");
    }
}

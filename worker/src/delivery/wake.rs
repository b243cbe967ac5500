//! Wake-ups: after it pushes jobs for a (queue, agent) pair, the dispatcher publishes on
//! the pair's channel ([`RedisNames::wake_channel`]), and this worker's consumer of the
//! pair fetches at once instead of at its next poll. Polling every `--poll-interval`
//! stays as the fallback: a message lost while the subscription reconnects costs at
//! most one poll, never a job.
//!
//! apalis-redis' own pub/sub (`RedisStorageFactory`) is not used: it takes the second
//! `:`-separated part of a channel name as the queue, and turnq's queue names
//! (`{prefix}:q:{queue}:{agent}`) contain colons, so it would never wake the right one.

use std::{
    collections::HashMap,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
};

use futures::{Stream, StreamExt, task::AtomicWaker};
use tokio_util::sync::CancellationToken;
use turnq_core::{delivery::RedisNames, fault::fail_point, retry::Backoff, supervise::Supervisor};

use super::{Delivery, redact};

/// A stream that yields once after each [`Wake::signal`] (signals in between merge).
#[derive(Clone, Debug, Default)]
pub(crate) struct Wake(Arc<Inner>);

#[derive(Debug, Default)]
struct Inner {
    waker: AtomicWaker,
    set: AtomicBool,
}

impl Wake {
    pub(crate) fn signal(&self) {
        self.0.set.store(true, Ordering::Release);
        self.0.waker.wake();
    }
}

impl Stream for Wake {
    type Item = ();

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<()>> {
        let inner = &self.0;
        if inner.set.swap(false, Ordering::AcqRel) {
            return Poll::Ready(Some(()));
        }
        // Register, then look again: a signal between the two is not lost.
        inner.waker.register(cx.waker());
        if inner.set.swap(false, Ordering::AcqRel) {
            Poll::Ready(Some(()))
        } else {
            Poll::Pending
        }
    }
}

/// One [`Wake`] per delivery (by its `queue:agent` name), fed by a subscription that
/// runs (a long-lived task of `tasks`) until `stop`.
pub(crate) fn start(
    url: &str,
    names: &RedisNames,
    deliveries: &[Delivery],
    tasks: &Supervisor,
    stop: CancellationToken,
) -> HashMap<String, Wake> {
    let mut by_delivery = HashMap::new();
    let mut by_channel = HashMap::new();
    for delivery in deliveries {
        let wake = Wake::default();
        by_channel.insert(
            names.wake_channel(&delivery.queue, &delivery.agent),
            wake.clone(),
        );
        by_delivery.insert(delivery.to_string(), wake);
    }
    tasks.spawn(
        "worker.wake-listener",
        listen(url.to_owned(), by_channel, stop),
    );
    by_delivery
}

/// Subscribes and signals until `stop`, resubscribing after any failure.
async fn listen(url: String, channels: HashMap<String, Wake>, stop: CancellationToken) {
    let mut backoff = Backoff::reconnect();
    while !stop.is_cancelled() {
        fail_point!("worker.wake-listener");
        let subscribed = async {
            let client = redis::Client::open(url.as_str())?;
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub
                .subscribe(channels.keys().cloned().collect::<Vec<_>>())
                .await?;
            redis::RedisResult::Ok(pubsub)
        };
        let pubsub = tokio::select! {
            pubsub = subscribed => pubsub,
            _ = stop.cancelled() => return,
        };
        let mut messages = match pubsub {
            Ok(pubsub) => pubsub.into_on_message(),
            Err(e) => {
                // The consumers report an unreachable Redis; this only loses speed.
                tracing::debug!(url = %redact(&url), error = %e,
                    "cannot subscribe to wake-ups; polling until it can");
                if !backoff.wait(&stop).await {
                    return;
                }
                continue;
            }
        };
        backoff.reset();
        // A push may have come while we were not subscribed.
        channels.values().for_each(Wake::signal);
        loop {
            tokio::select! {
                message = messages.next() => match message {
                    Some(message) => {
                        if let Some(wake) = channels.get(message.get_channel_name()) {
                            wake.signal();
                        }
                    }
                    None => break,
                },
                _ = stop.cancelled() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;
    use turnq_testkit::within;

    #[test]
    fn a_wake_yields_once_per_burst_of_signals() {
        let mut wake = Wake::default();
        assert!(
            wake.next().now_or_never().is_none(),
            "nothing signalled yet"
        );
        wake.signal();
        wake.signal();
        assert_eq!(wake.next().now_or_never(), Some(Some(())));
        assert!(
            wake.next().now_or_never().is_none(),
            "two signals, one wake"
        );
    }

    #[tokio::test]
    async fn a_publish_on_the_pairs_channel_wakes_its_consumer() {
        let redis = turnq_testkit::TestRedis::new();
        let (url, names) = (redis.url.clone(), RedisNames::new(&redis.prefix));
        let stop = CancellationToken::new();
        let deliveries = [Delivery::new("q", "a"), Delivery::new("q", "b")];
        let wakes = start(
            &url,
            &names,
            &deliveries,
            &Supervisor::new(stop.clone()),
            stop.clone(),
        );
        let (mut a, mut b) = (wakes["q:a"].clone(), wakes["q:b"].clone());
        // The first wake comes with the subscription.
        within("subscribed", a.next()).await.unwrap();
        let _ = b.next().now_or_never();
        let mut conn = crate::delivery::connect(&url).await.expect("Redis");
        let _: i64 = redis::cmd("PUBLISH")
            .arg(names.wake_channel("q", "a"))
            .arg(1)
            .query_async(&mut conn)
            .await
            .unwrap();
        within("the publish wakes the consumer of q:a", a.next())
            .await
            .unwrap();
        // The one subscription handles messages in order, and it has handled this one:
        // had it (wrongly) signalled b for it, b would be signalled by now.
        assert!(
            b.next().now_or_never().is_none(),
            "another pair's consumer sleeps on"
        );
        stop.cancel();
    }
}

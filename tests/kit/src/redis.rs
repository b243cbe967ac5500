//! A Redis key prefix per test.

use anyhow::Result;

use crate::{cleanup, env};

/// apalis-redis lists every queue in one global sorted set, outside any prefix.
const APALIS_QUEUES: &str = "core:apalis:queues:list";

/// A key prefix of the test's own on a Redis server (the shared one unless the test
/// started its own); every key under it is deleted when the value is dropped.
pub struct TestRedis {
    pub url: String,
    /// Every key, queue and channel of the app under test starts with `{prefix}:`.
    pub prefix: String,
    keep: bool,
}

impl TestRedis {
    /// A fresh prefix `turnq-test-…` on the test Redis.
    pub fn new() -> TestRedis {
        Self::on(&env::redis_url(), "turnq-test")
    }

    /// A fresh prefix `{stem}-…` on the Redis at `url`.
    pub fn on(url: &str, stem: &str) -> TestRedis {
        TestRedis {
            url: url.to_owned(),
            prefix: format!(
                "{stem}-{}",
                &uuid::Uuid::new_v4().simple().to_string()[..16]
            ),
            keep: false,
        }
    }

    /// Leaves the keys in place when this value is dropped (`turnq bench --keep`).
    pub fn keep(&mut self) {
        self.keep = true;
    }
}

impl Default for TestRedis {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        let (url, prefix) = (self.url.clone(), self.prefix.clone());
        cleanup::run_blocking(format!("deleting Redis keys {prefix}:*"), async move {
            delete_prefix(&url, &prefix).await
        });
    }
}

/// A connection to the Redis at `url` that waits up to the CI-scaled [`env::patience`]
/// for an answer. The redis crate's default is 500 ms, which a Redis busy with another
/// test's 20,000-task burst exceeds on a loaded CI machine: a test's own reads must not
/// fail for that.
pub async fn connect(url: &str) -> Result<::redis::aio::MultiplexedConnection> {
    let config = ::redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(env::patience()))
        .set_response_timeout(Some(env::patience()));
    Ok(::redis::Client::open(url)?
        .get_multiplexed_async_connection_with_config(&config)
        .await?)
}

/// The keys matching `pattern`, through SCAN (never KEYS, which blocks the server for
/// every other test while it walks the whole keyspace).
pub async fn keys_matching(url: &str, pattern: &str) -> Result<Vec<String>> {
    let mut conn = connect(url).await?;
    let (mut cursor, mut found) = (0u64, Vec::new());
    loop {
        let (next, keys): (u64, Vec<String>) = ::redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await?;
        found.extend(keys);
        if next == 0 {
            return Ok(found);
        }
        cursor = next;
    }
}

/// Deletes every key under `prefix` (SCAN + UNLINK, so Redis never blocks on a big
/// key; never FLUSHDB or KEYS, which would touch other tests), and the prefix's queues
/// from apalis' global queue list.
pub async fn delete_prefix(url: &str, prefix: &str) -> Result<()> {
    let mut conn = connect(url).await?;
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = ::redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}:*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await?;
        if !keys.is_empty() {
            let _: () = ::redis::cmd("UNLINK")
                .arg(&keys)
                .query_async(&mut conn)
                .await?;
        }
        if next == 0 {
            break;
        }
        cursor = next;
    }
    let members: Vec<String> = ::redis::cmd("ZRANGE")
        .arg(APALIS_QUEUES)
        .arg(0)
        .arg(-1)
        .query_async(&mut conn)
        .await?;
    let ours = format!("{prefix}:");
    let ours: Vec<&String> = members.iter().filter(|m| m.starts_with(&ours)).collect();
    if !ours.is_empty() {
        let _: () = ::redis::cmd("ZREM")
            .arg(APALIS_QUEUES)
            .arg(ours)
            .query_async(&mut conn)
            .await?;
    }
    Ok(())
}

//! Deleting every Redis key of one turnq deployment (one prefix): for the bench and for
//! tests, which run under throwaway prefixes. Never needed in normal operation.

use turnq_core::delivery::RedisNames;

/// apalis-redis lists every queue in one global sorted set, outside any prefix.
const APALIS_QUEUES: &str = "core:apalis:queues:list";

/// Deletes every key under `names`' prefix (SCAN + UNLINK, so Redis never blocks on a
/// big key), and the prefix's queues from apalis' global queue list.
pub async fn delete_keys(url: &str, names: &RedisNames) -> redis::RedisResult<()> {
    let client = redis::Client::open(url)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(names.pattern())
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await?;
        if !keys.is_empty() {
            let _: () = redis::cmd("UNLINK")
                .arg(&keys)
                .query_async(&mut conn)
                .await?;
        }
        if next == 0 {
            break;
        }
        cursor = next;
    }
    let members: Vec<String> = redis::cmd("ZRANGE")
        .arg(APALIS_QUEUES)
        .arg(0)
        .arg(-1)
        .query_async(&mut conn)
        .await?;
    let ours = format!("{}:", names.prefix());
    let ours: Vec<&String> = members.iter().filter(|m| m.starts_with(&ours)).collect();
    if !ours.is_empty() {
        let _: () = redis::cmd("ZREM")
            .arg(APALIS_QUEUES)
            .arg(ours)
            .query_async(&mut conn)
            .await?;
    }
    Ok(())
}

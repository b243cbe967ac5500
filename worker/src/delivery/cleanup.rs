//! The clean-up apalis-redis does not do: acknowledged jobs keep their data and
//! metadata forever, and a consumer that dies keeps its name and its fetched jobs.

use std::{sync::Arc, time::Duration};

use apalis_redis::ConnectionManager;

use turnq_core::fault::fail_point;

use super::{Shared, connect};

/// How often acknowledged jobs are removed from Redis.
const CLEANUP_EVERY: Duration = Duration::from_secs(10);
/// Jobs removed per cleanup script call, and calls per queue per round at most.
const CLEANUP_BATCH: usize = 500;
const CLEANUP_ROUNDS: usize = 20;
/// Consumer metadata expires this long after its consumer stops renewing it.
const METADATA_TTL: Duration = Duration::from_secs(600);

/// Removes acknowledged (and dead) jobs with their data and metadata.
const CLEANUP_SCRIPT: &str = r"
-- KEYS[1]: the done set, KEYS[2]: the dead set, KEYS[3]: the job data hash,
-- KEYS[4]: the job metadata key prefix. ARGV[1]: the most ids to take from each set.
local removed = 0
for _, set in ipairs({KEYS[1], KEYS[2]}) do
  local ids = redis.call('SPOP', set, tonumber(ARGV[1]))
  for _, id in ipairs(ids) do
    redis.call('HDEL', KEYS[3], id)
    redis.call('DEL', KEYS[4] .. ':' .. id)
  end
  removed = removed + #ids
end
return removed
";

/// Retires a consumer that stopped or died: the jobs it fetched but did not finish go
/// back to the queue, and its name and metadata leave Redis.
const RETIRE_SCRIPT: &str = r"
-- KEYS[1]: the consumer's in-flight set, KEYS[2]: the active list, KEYS[3]: the signal
-- list, KEYS[4]: the workers set, KEYS[5]: the consumer's metadata hash.
-- ARGV[1]: the consumer's name.
local ids = redis.call('SMEMBERS', KEYS[1])
for i = 1, #ids, 1000 do
  redis.call('RPUSH', KEYS[2], unpack(ids, i, math.min(i + 999, #ids)))
end
if #ids > 0 then
  redis.call('DEL', KEYS[1])
  redis.call('DEL', KEYS[3])
  redis.call('LPUSH', KEYS[3], 1)
end
redis.call('ZREM', KEYS[4], ARGV[1])
redis.call('DEL', KEYS[5])
return #ids
";

/// Retires the consumers named in `dead`; the ones Redis did not take stay listed.
pub(super) async fn retire(
    conn: &mut ConnectionManager,
    config: &apalis_redis::Config,
    dead: &mut Vec<String>,
) {
    let script = redis::Script::new(RETIRE_SCRIPT);
    let mut still_dead = Vec::new();
    for name in dead.drain(..) {
        let requeued: Result<u64, _> = script
            .key(format!("{}:{name}", config.inflight_jobs_set()))
            .key(config.active_jobs_list())
            .key(config.signal_list())
            .key(config.workers_set())
            .key(metadata_key(config, &name))
            .arg(&name)
            .invoke_async(conn)
            .await;
        match requeued {
            Ok(0) => tracing::debug!(consumer = %name, "retired the consumer"),
            Ok(n) => tracing::info!(consumer = %name, requeued = n,
                "retired the consumer; its unstarted jobs went back to the queue"),
            Err(e) => {
                tracing::debug!(consumer = %name, error = %e, "retiring the consumer failed; trying later");
                still_dead.push(name);
            }
        }
    }
    *dead = still_dead;
}

/// apalis-redis' key for a consumer's metadata (`Config::worker_metadata_key`, which
/// needs a live `WorkerContext`).
fn metadata_key(config: &apalis_redis::Config, name: &str) -> String {
    format!("{}:workers:metadata:{name}", config.queue)
}

/// Every [`CLEANUP_EVERY`] until `stop`: removes acknowledged jobs and keeps the live
/// consumers' metadata from expiring.
pub(super) async fn clean(shared: Arc<Shared>) {
    let mut conn: Option<ConnectionManager> = None;
    loop {
        fail_point!("worker.redis-cleanup");
        tokio::select! {
            _ = tokio::time::sleep(CLEANUP_EVERY) => {}
            _ = shared.stop.cancelled() => return,
        }
        if conn.is_none() {
            // The supervisors report an unreachable Redis; stay quiet here.
            conn = connect(&shared.settings.redis_url).await.ok();
        }
        let Some(c) = conn.as_mut() else { continue };
        // Read each round: the queues consumed change with the agent registry.
        let (configs, live) = (shared.configs(), shared.live());
        if let Err(e) = clean_once(c, &configs, &live).await {
            tracing::debug!(error = %e, "cleaning Redis failed; trying again later");
            conn = None;
        }
    }
}

/// One cleanup round; returns the number of jobs removed.
pub(crate) async fn clean_once(
    conn: &mut ConnectionManager,
    configs: &[(String, apalis_redis::Config)],
    live: &[(String, String)],
) -> Result<usize, redis::RedisError> {
    let script = redis::Script::new(CLEANUP_SCRIPT);
    let mut total = 0;
    for (queue, config) in configs {
        for _ in 0..CLEANUP_ROUNDS {
            let removed: usize = script
                .key(config.done_jobs_set())
                .key(config.dead_jobs_set())
                .key(config.job_data_hash())
                .key(config.job_meta_hash())
                .arg(CLEANUP_BATCH)
                .invoke_async(conn)
                .await?;
            total += removed;
            if removed < CLEANUP_BATCH {
                break;
            }
        }
        // apalis writes a metadata hash per consumer and never deletes it; a consumer
        // that dies without being retired leaves it to expire.
        for (_, name) in live.iter().filter(|(q, _)| q == queue) {
            let _: bool = redis::cmd("EXPIRE")
                .arg(metadata_key(config, name))
                .arg(METADATA_TTL.as_secs())
                .query_async(conn)
                .await?;
        }
    }
    if total > 0 {
        tracing::debug!(removed = total, "removed acknowledged jobs from Redis");
    }
    Ok(total)
}

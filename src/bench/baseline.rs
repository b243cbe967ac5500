//! The baseline: raw apalis-redis, the Redis queue turnq delivers through, pushing and
//! consuming N no-op jobs with nothing else around it. turnq's e2e figure is printed
//! as a ratio to this, measured in the same run on the same Redis.

use std::{
    convert::Infallible,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use apalis::prelude::{BackendExt, Data, TaskSink, WorkerBuilder, WorkerBuilderExt};
use apalis_redis::RedisStorage;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::Stack;

#[derive(Debug, Serialize)]
pub struct Baseline {
    pub jobs: usize,
    pub seconds: f64,
    pub jobs_per_sec: f64,
}

/// A job that carries as much as turnq's delivery job of one task does.
type NoOp = turnq_core::delivery::Job;

struct Count {
    done: AtomicUsize,
    target: usize,
    all: CancellationToken,
}

async fn handle(_job: NoOp, count: Data<Arc<Count>>) -> Result<(), Infallible> {
    if count.done.fetch_add(1, Ordering::Relaxed) + 1 == count.target {
        count.all.cancel();
    }
    Ok(())
}

/// Pushes `n` jobs in bulk (1,000 per call) while one apalis worker of `concurrency`
/// consumes them; the time from the first push to the last job handled.
pub async fn run(stack: &Stack, n: usize, concurrency: usize) -> Result<Baseline> {
    let conn = apalis_redis::connect(stack.redis_url.as_str())
        .await
        .with_context(|| format!("connecting to Redis at {}", stack.redis_url))?;
    // apalis-redis' defaults, on a queue of the bench's prefix.
    let config =
        apalis_redis::Config::default().queue(format!("{}:baseline", stack.names.prefix()));
    let jobs: Vec<NoOp> = (0..n)
        .map(|_| NoOp::one(turnq_core::TaskId::new(), 0))
        .collect();
    let count = Arc::new(Count {
        done: AtomicUsize::new(0),
        target: n,
        all: CancellationToken::new(),
    });

    // The consumer runs while the jobs are pushed, as in production: apalis-redis'
    // fetch script fails outright once many thousand jobs wait to be promoted at once.
    let backend = RedisStorage::<NoOp>::new(conn.clone())
        .with_config(config.clone())
        // Without it an empty fetch sleeps until the next heartbeat (30 s by default).
        .poll_with_interval(Duration::from_millis(50));
    let worker = WorkerBuilder::new("bench-baseline")
        .backend(backend)
        .concurrency(concurrency)
        .data(count.clone())
        .build(handle);
    let all = count.all.clone();
    let mut finished = tokio::spawn(worker.run_with_ctx(move |ctx| {
        let all = all.clone();
        async move {
            all.cancelled().await;
            while ctx.stop().is_err() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Ok(())
        }
    }));

    let started = Instant::now();
    let scheduled = config.scheduled_jobs_set();
    let mut sink = RedisStorage::<NoOp>::new(conn.clone()).with_config(config);
    let mut conn = conn;
    for chunk in jobs.chunks(1000) {
        // apalis-redis parks every push in its scheduled set, and its fetch script fails
        // when it has to promote more than about 8,000 at once: stay well below.
        loop {
            let waiting: usize = redis::cmd("ZCARD")
                .arg(&scheduled)
                .query_async(&mut conn)
                .await?;
            if waiting < 2000 || finished.is_finished() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        sink.push_bulk(chunk.to_vec())
            .await
            .context("pushing the baseline's jobs")?;
    }
    let limit = Duration::from_secs(60 + n as u64 / 100);
    tokio::select! {
        _ = count.all.cancelled() => {}
        outcome = &mut finished => {
            outcome?.context("the baseline's apalis worker failed")?;
        }
        _ = tokio::time::sleep(limit) => {}
    }
    let handled = count.done.load(Ordering::Relaxed);
    anyhow::ensure!(
        handled >= n,
        "the baseline handled {handled} of {n} jobs in {limit:?}"
    );
    let seconds = started.elapsed().as_secs_f64();
    finished.abort();
    Ok(Baseline {
        jobs: n,
        seconds,
        jobs_per_sec: n as f64 / seconds,
    })
}

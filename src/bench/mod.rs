//! `turnq bench`: how fast this machine runs turnq, measured end to end.
//!
//! It sets up what it needs on the local Postgres and Redis (a database and a Redis
//! prefix of its own, removed afterwards), runs each measurement in turn and prints a
//! table and one JSON line:
//!
//! - `baseline`: raw apalis-redis push + consume of N no-op jobs, the bound of one
//!   Redis job per task, measured first in the same run so turnq's ratio to it is fair;
//! - `e2e`: N tasks submitted through `POST /v1/tasks/batch`, run by the `script` agent
//!   with zero latency on W `turnq worker` processes, until every one is completed;
//! - `latency`: tasks submitted one at a time at a fixed rate; submit → `task.started`;
//! - `session`: appends to and loads of the session store;
//! - `replay`: rebuilding the projection from the event log;
//! - the peak RSS of the bench process (API, dispatcher) and of each worker;
//! - with `--scale` (not in the default run: seeding takes minutes): the read endpoints
//!   with a history of `--scale-tasks` tasks and `--scale-events` events.

mod baseline;
mod cpu;
mod fleet;
mod scale;
mod stack;
mod storage;

use std::time::Duration;

use anyhow::Result;
use serde::Serialize;

pub use stack::Stack;

/// `turnq bench`'s settings.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Postgres server to measure on: the bench creates its own database there (named
    /// `turnq_bench_<random>`) and drops it afterwards. The database part of the URL is
    /// ignored.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/turnq"
    )]
    pub database_url: turnq_core::db::DatabaseUrl,

    /// Redis to measure on: the bench uses a prefix of its own and deletes its keys
    /// afterwards.
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,

    /// Tasks in the throughput run (and jobs in the raw apalis-redis baseline).
    #[arg(long, env = "TURNQ_BENCH_TASKS", default_value_t = 20_000)]
    pub tasks: usize,

    /// `turnq worker` processes in the throughput and latency runs.
    #[arg(long, env = "TURNQ_BENCH_WORKERS", default_value_t = 1)]
    pub workers: usize,

    /// `--concurrency` of each worker process (and of the baseline's consumer).
    #[arg(long, env = "TURNQ_BENCH_CONCURRENCY", default_value_t = 64)]
    pub concurrency: usize,

    /// Tasks per second in the latency run, submitted one at a time.
    #[arg(long, env = "TURNQ_BENCH_RATE", default_value_t = 200)]
    pub rate: u32,

    /// How long the latency run submits (a duration such as `10s`).
    #[arg(long, env = "TURNQ_BENCH_LATENCY_FOR", default_value = "10s", value_parser = humantime::parse_duration)]
    pub latency_for: Duration,

    /// Session entries appended in the session run, in batches of `--session-batch`.
    #[arg(long, env = "TURNQ_BENCH_SESSION_ENTRIES", default_value_t = 100_000)]
    pub session_entries: usize,

    /// Entries per append call in the session run.
    #[arg(long, env = "TURNQ_BENCH_SESSION_BATCH", default_value_t = 100)]
    pub session_batch: usize,

    /// Entries of the session loaded in the session run (p50 of 20 loads).
    #[arg(long, env = "TURNQ_BENCH_LOAD_ENTRIES", default_value_t = 10_000)]
    pub load_entries: usize,

    /// Runs to leave out, comma-separated: baseline, e2e, latency, session, replay.
    #[arg(long, env = "TURNQ_BENCH_SKIP", value_delimiter = ',')]
    pub skip: Vec<Run>,

    /// Also measure the read endpoints with a big history (seeded: `--scale-tasks`,
    /// `--scale-events`). Off by default: seeding 10M events takes minutes.
    #[arg(long, env = "TURNQ_BENCH_SCALE")]
    pub scale: bool,

    /// Tasks seeded for `--scale`.
    #[arg(long, env = "TURNQ_BENCH_SCALE_TASKS", default_value_t = 1_000_000)]
    pub scale_tasks: u64,

    /// Events seeded for `--scale` (an even share per task).
    #[arg(long, env = "TURNQ_BENCH_SCALE_EVENTS", default_value_t = 10_000_000)]
    pub scale_events: u64,

    /// Keep the bench database and Redis keys afterwards (to look at them).
    #[arg(long, env = "TURNQ_BENCH_KEEP")]
    pub keep: bool,
}

/// One of the bench's measurements.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Run {
    Baseline,
    E2e,
    Latency,
    Session,
    Replay,
}

impl BenchArgs {
    fn validate(&self) -> Result<()> {
        anyhow::ensure!(self.tasks > 0, "--tasks must be at least 1");
        anyhow::ensure!(self.workers > 0, "--workers must be at least 1");
        anyhow::ensure!(self.concurrency > 0, "--concurrency must be at least 1");
        anyhow::ensure!(self.rate > 0, "--rate must be at least 1 task per second");
        anyhow::ensure!(
            self.session_batch > 0,
            "--session-batch must be at least 1 entry"
        );
        anyhow::ensure!(
            !self.latency_for.is_zero(),
            "--latency-for must be longer than zero"
        );
        Ok(())
    }

    fn runs(&self, run: Run) -> bool {
        !self.skip.contains(&run)
    }
}

/// Everything one bench run measured; printed as a table and as one JSON line.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub machine: Machine,
    pub settings: Settings,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline: Option<baseline::Baseline>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub e2e: Option<fleet::Throughput>,
    /// e2e tasks/s divided by the baseline's jobs/s.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratio_to_baseline: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency: Option<fleet::Latency>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session: Option<storage::SessionFigures>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replay: Option<storage::ReplayFigures>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scale: Option<scale::ScaleFigures>,
    /// Peak resident memory of the bench process (API, dispatcher, submitter), MiB.
    pub peak_rss_mib: f64,
    /// Peak resident memory of each worker process, MiB.
    pub worker_peak_rss_mib: Vec<f64>,
}

#[derive(Debug, Default, Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub turnq_version: &'static str,
}

#[derive(Debug, Default, Serialize)]
pub struct Settings {
    pub tasks: usize,
    pub workers: usize,
    pub concurrency: usize,
    pub rate: u32,
    pub latency_secs: f64,
}

pub async fn run(args: BenchArgs) -> Result<std::process::ExitCode> {
    args.validate()?;
    let mut report = Report {
        machine: Machine {
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            turnq_version: env!("CARGO_PKG_VERSION"),
        },
        settings: Settings {
            tasks: args.tasks,
            workers: args.workers,
            concurrency: args.concurrency,
            rate: args.rate,
            latency_secs: args.latency_for.as_secs_f64(),
        },
        ..Report::default()
    };
    let stack = Stack::start(&args).await?;
    let outcome = measure(&args, &stack, &mut report).await;
    report.worker_peak_rss_mib = stack.worker_peak_rss_mib();
    report.peak_rss_mib = stack::peak_rss_mib(None).unwrap_or(0.0);
    stack.stop(args.keep).await;
    outcome?;
    print_table(&report);
    println!("{}", serde_json::to_string(&report)?);
    Ok(std::process::ExitCode::SUCCESS)
}

async fn measure(args: &BenchArgs, stack: &Stack, report: &mut Report) -> Result<()> {
    if args.runs(Run::Baseline) {
        eprintln!(
            "bench: raw apalis-redis baseline, {} no-op jobs...",
            args.tasks
        );
        report.baseline = Some(baseline::run(stack, args.tasks, args.concurrency).await?);
    }
    if args.runs(Run::E2e) || args.runs(Run::Latency) || args.runs(Run::Replay) {
        stack.start_workers(args.workers, args.concurrency).await?;
    }
    if args.runs(Run::E2e) {
        eprintln!(
            "bench: e2e, {} tasks on {} worker(s) × concurrency {}...",
            args.tasks, args.workers, args.concurrency
        );
        let e2e = fleet::throughput(stack, args.tasks).await?;
        report.ratio_to_baseline = report
            .baseline
            .as_ref()
            .map(|b| e2e.tasks_per_sec / b.jobs_per_sec);
        report.e2e = Some(e2e);
    }
    if args.runs(Run::Latency) {
        eprintln!(
            "bench: latency, {} tasks/s for {:?}...",
            args.rate, args.latency_for
        );
        report.latency = Some(fleet::latency(stack, args.rate, args.latency_for).await?);
    }
    if args.runs(Run::Replay) {
        eprintln!("bench: replay of the event log...");
        report.replay = Some(storage::replay(stack).await?);
    }
    if args.runs(Run::Session) {
        eprintln!("bench: session store...");
        report.session = Some(
            storage::session(
                stack,
                args.session_entries,
                args.session_batch,
                args.load_entries,
            )
            .await?,
        );
    }
    if args.scale {
        report.scale = Some(scale::run(stack, args.scale_tasks, args.scale_events).await?);
    }
    Ok(())
}

fn print_table(r: &Report) {
    let row = |what: &str, value: String| println!("  {what:<44} {value}");
    println!(
        "turnq bench: {} tasks, {} worker process(es) × concurrency {}, {} CPUs",
        r.settings.tasks, r.settings.workers, r.settings.concurrency, r.machine.cpus
    );
    if let Some(b) = &r.baseline {
        row(
            "baseline: raw apalis-redis push + consume",
            format!("{:>10.0} jobs/s  ({:.2} s)", b.jobs_per_sec, b.seconds),
        );
    }
    if let Some(e) = &r.e2e {
        row(
            "e2e: batch submit → all completed",
            format!("{:>10.0} tasks/s ({:.2} s)", e.tasks_per_sec, e.seconds),
        );
        row(
            "e2e: submit alone (batch API)",
            format!("{:>10.0} tasks/s", e.submit_tasks_per_sec),
        );
        row(
            "e2e: CPU per task",
            format!(
                "{:>10.0} µs (Postgres {:.0}, turnq {:.0}, Redis {:.0})",
                e.cpu.total_us, e.cpu.postgres_us, e.cpu.turnq_us, e.cpu.redis_us
            ),
        );
    }
    if let Some(ratio) = r.ratio_to_baseline {
        row("e2e / baseline", format!("{ratio:>10.2}"));
    }
    if let Some(l) = &r.latency {
        row(
            &format!("latency: submit → started at {}/s", r.settings.rate),
            format!(
                "p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} tasks)",
                l.p50_ms, l.p99_ms, l.max_ms, l.tasks
            ),
        );
    }
    if let Some(s) = &r.session {
        row(
            &format!("session: append {} entries by {}", s.appended, s.batch),
            format!("{:>10.0} entries/s", s.append_entries_per_sec),
        );
        row(
            &format!("session: load of {} entries", s.loaded),
            format!(
                "p50 {:.1} ms, max {:.1} ms (20 loads)",
                s.load_p50_ms, s.load_max_ms
            ),
        );
    }
    if let Some(p) = &r.replay {
        row(
            "replay: rebuild projection from the log",
            format!(
                "{:>10.0} events/s ({} events, {} tasks)",
                p.events_per_sec, p.events, p.tasks
            ),
        );
    }
    if let Some(s) = &r.scale {
        row(
            "scale: history seeded",
            format!(
                "{} tasks, {} events ({:.0} s)",
                s.tasks, s.events, s.seed_seconds
            ),
        );
        for (path, p50, p99) in &s.endpoints {
            row(
                &format!("scale: GET {path}"),
                format!("p50 {p50:.1} ms, p99 {p99:.1} ms"),
            );
        }
    }
    row(
        "peak RSS: bench process (API, dispatcher, runs)",
        format!("{:.1} MiB", r.peak_rss_mib),
    );
    for (i, rss) in r.worker_peak_rss_mib.iter().enumerate() {
        row(
            &format!("peak RSS: worker {}", i + 1),
            format!("{rss:.1} MiB"),
        );
    }
}

/// The `q`-quantile (0..=1) of sorted `values`, nearest rank.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::quantile;

    #[test]
    fn quantiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), 50.0);
        assert_eq!(quantile(&v, 0.99), 99.0);
        assert_eq!(quantile(&v, 1.0), 100.0);
        assert_eq!(quantile(&[7.0], 0.99), 7.0);
        assert!(quantile(&[], 0.5).is_nan());
    }
}

//! CPU time spent per task, from `/proc`: the Postgres server processes, the Redis
//! server and turnq's own processes (this one, which runs the API, the dispatcher and
//! the bench's client, and the worker processes), sampled before and after a run.
//!
//! `utime + stime` of `/proc/{pid}/stat`, in clock ticks of `USER_HZ` (100 on Linux).
//! Only processes alive at both samples count: a Postgres backend that starts and ends
//! within the run is missed (the pools keep their connections, so few do). Linux only;
//! elsewhere the figures are absent.

use std::collections::HashMap;

use serde::Serialize;

/// Clock ticks per second of `/proc/{pid}/stat` (`USER_HZ`, 100 on every Linux build).
const TICKS_PER_SECOND: f64 = 100.0;

/// CPU seconds of each part at one moment, by process.
#[derive(Clone, Debug, Default)]
pub struct CpuSample {
    /// pid → (part, ticks).
    by_pid: HashMap<u32, (Part, u64)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Part {
    Postgres,
    Redis,
    Turnq,
}

/// CPU microseconds per task, by part.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CpuPerTask {
    pub postgres_us: f64,
    pub redis_us: f64,
    pub turnq_us: f64,
    pub total_us: f64,
}

/// `utime + stime` of `pid`, and its command name.
fn read(pid: u32) -> Option<(String, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state …`: the name may hold spaces and parentheses, so split at the
    // last `)`.
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?.to_owned();
    let fields: Vec<&str> = stat.get(close + 2..)?.split_whitespace().collect();
    // After `comm`: state is field 3, utime field 14, stime field 15 (1-based).
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((comm, utime + stime))
}

impl CpuSample {
    /// Samples every Postgres and Redis server process of the machine, and the turnq
    /// processes `turnq` (pids).
    pub fn take(turnq: &[u32]) -> CpuSample {
        let mut by_pid = HashMap::new();
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return CpuSample::default();
        };
        for entry in entries.filter_map(Result::ok) {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let Some((comm, ticks)) = read(pid) else {
                continue;
            };
            let part = if turnq.contains(&pid) {
                Part::Turnq
            } else if comm.starts_with("postgres") {
                Part::Postgres
            } else if comm.starts_with("redis-server") {
                Part::Redis
            } else {
                continue;
            };
            by_pid.insert(pid, (part, ticks));
        }
        CpuSample { by_pid }
    }

    /// The CPU spent between `self` and `later`, per task of `tasks`.
    pub fn per_task(&self, later: &CpuSample, tasks: usize) -> CpuPerTask {
        let mut spent: HashMap<Part, u64> = HashMap::new();
        for (pid, (part, after)) in &later.by_pid {
            if let Some((_, before)) = self.by_pid.get(pid) {
                *spent.entry(*part).or_default() += after.saturating_sub(*before);
            }
        }
        let us = |part: Part| {
            spent.get(&part).copied().unwrap_or(0) as f64 / TICKS_PER_SECOND * 1e6
                / tasks.max(1) as f64
        };
        let (postgres_us, redis_us, turnq_us) =
            (us(Part::Postgres), us(Part::Redis), us(Part::Turnq));
        CpuPerTask {
            postgres_us,
            redis_us,
            turnq_us,
            total_us: postgres_us + redis_us + turnq_us,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_sampled_and_its_work_counted() {
        let me = std::process::id();
        let before = CpuSample::take(&[me]);
        let (_, start) = before.by_pid[&me];
        // Work until the kernel has counted at least one more tick of CPU (10 ms).
        let mut x: u64 = 1;
        while read(me).map(|(_, ticks)| ticks).unwrap_or(u64::MAX) <= start {
            for i in 0..1_000_000u64 {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(i);
            }
        }
        assert_ne!(x, 0);
        let spent = before.per_task(&CpuSample::take(&[me]), 10);
        assert!(
            spent.turnq_us >= 1_000.0,
            "{spent:?}: at least 10 ms over 10 tasks"
        );
        assert_eq!(
            spent.total_us,
            spent.turnq_us + spent.postgres_us + spent.redis_us
        );
    }
}

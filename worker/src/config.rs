//! The worker's settings: every one a flag and an environment variable.
//!
//! [`WorkerConfig::validate`] refuses combinations that would misbehave at run time (no
//! queue, no concurrency, a lease that runs out between two renewals), so `run` fails
//! at start with a message instead of losing leases later.

use std::time::Duration;

/// The longest any duration setting may be.
const MAX_DURATION: Duration = Duration::from_secs(7 * 24 * 3600);

/// Settings of a worker process (`turnq worker`, and the pool inside `turnq up`).
#[derive(clap::Args, Clone, Debug)]
pub struct WorkerConfig {
    /// Queues this worker takes tasks from, comma-separated. Default: `default`.
    #[arg(
        long,
        env = "TURNQ_QUEUES",
        value_delimiter = ',',
        default_value = "default"
    )]
    pub queues: Vec<String>,

    /// The agents this worker runs, comma-separated (names in the agent registry, or the
    /// built-in `script`). Default: every registered agent whose backend this worker
    /// supports (`script`, `command`, `openai`), plus `script`. Each is probed at start
    /// and only the ones that pass have their work taken. The registry is read at start
    /// only: restart the worker to pick up agents registered or changed since.
    #[arg(long, env = "TURNQ_AGENTS", value_delimiter = ',')]
    pub agents: Vec<String>,

    /// Turns running at once in this process, across all its queues: a turn holds its
    /// slot from its claim until its agent returns (recording the result does not hold
    /// it). Default: 16.
    #[arg(long, env = "TURNQ_CONCURRENCY", default_value_t = 16)]
    pub concurrency: usize,

    /// How long a claim holds a task without renewal (a duration such as `10s`). The
    /// worker renews it every `--heartbeat`, so it only runs out when the worker dies
    /// or loses Postgres. Default: 10s.
    #[arg(long, env = "TURNQ_LEASE", default_value = "10s", value_parser = humantime::parse_duration)]
    pub lease: Duration,

    /// How often an idle worker asks Redis for new jobs (a duration such as `50ms`):
    /// the floor of pick-up latency. Default: 50ms.
    #[arg(long, env = "TURNQ_POLL_INTERVAL", default_value = "50ms", value_parser = humantime::parse_duration)]
    pub poll_interval: Duration,

    /// How long streamed output is batched before it is written as one `task.output`
    /// event (a duration; a batch of 64 chunks is written sooner). Default: 100ms.
    #[arg(long, env = "TURNQ_OUTPUT_FLUSH", default_value = "100ms", value_parser = humantime::parse_duration)]
    pub output_flush: Duration,

    /// The longest one turn may run (a duration such as `30m`); a turn past it is
    /// cancelled and retried like any retryable failure. Default: 30m.
    #[arg(long, env = "TURNQ_TURN_TIMEOUT", default_value = "30m", value_parser = humantime::parse_duration)]
    pub turn_timeout: Duration,

    /// On shutdown, how long running turns may take to finish (a duration) before they
    /// are stopped and handed back to their queue. Default: 30s.
    #[arg(long, env = "TURNQ_SHUTDOWN_GRACE", default_value = "30s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,

    /// How often the worker reports itself alive in the worker registry and renews the
    /// leases of its running tasks (a duration, shorter than `--lease`). Default: 2s.
    #[arg(long, env = "TURNQ_HEARTBEAT", default_value = "2s", value_parser = humantime::parse_duration)]
    pub heartbeat: Duration,

    /// The host name this worker registers under. Default: the machine's host name.
    #[arg(long, env = "TURNQ_HOST")]
    pub host: Option<String>,

    /// Directories the project repositories of tasks (`repo`) may live under,
    /// comma-separated. A task naming a repository outside them fails. Default: none
    /// (this worker runs no task with a repository).
    #[arg(long, env = "TURNQ_REPO_ROOTS", value_delimiter = ',')]
    pub repo_roots: Vec<std::path::PathBuf>,

    /// Where this worker makes the git worktrees of sessions.
    #[arg(
        long,
        env = "TURNQ_WORKTREE_DIR",
        default_value = "/var/tmp/turnq-worktrees"
    )]
    pub worktree_dir: std::path::PathBuf,
}

impl Default for WorkerConfig {
    /// The same values as the command-line defaults, for tests and embedding.
    fn default() -> Self {
        WorkerConfig {
            queues: vec!["default".into()],
            agents: Vec::new(),
            concurrency: 16,
            lease: Duration::from_secs(10),
            poll_interval: Duration::from_millis(50),
            output_flush: Duration::from_millis(100),
            turn_timeout: Duration::from_secs(30 * 60),
            shutdown_grace: Duration::from_secs(30),
            heartbeat: Duration::from_secs(2),
            host: None,
            repo_roots: Vec::new(),
            worktree_dir: "/var/tmp/turnq-worktrees".into(),
        }
    }
}

impl WorkerConfig {
    /// The queues, trimmed and without repeats, in the order given; or what is wrong.
    pub fn validate(&self) -> Result<Vec<String>, String> {
        let mut queues: Vec<String> = Vec::new();
        for queue in self.queues.iter().map(|q| q.trim()) {
            if queue.is_empty() {
                continue;
            }
            // The rule submissions follow, so a worker cannot listen on a queue no task
            // can be submitted to.
            turnq_core::task::check_name("queue", queue).map_err(|e| e.to_string())?;
            if !queues.iter().any(|q| q == queue) {
                queues.push(queue.to_owned());
            }
        }
        if queues.is_empty() {
            return Err("no queue to take tasks from: give at least one with --queues".into());
        }
        self.agent_filter()?;
        if self.concurrency == 0 {
            return Err("--concurrency must be at least 1".into());
        }
        for (flag, value) in [
            ("--poll-interval", self.poll_interval),
            ("--output-flush", self.output_flush),
            ("--heartbeat", self.heartbeat),
            ("--turn-timeout", self.turn_timeout),
        ] {
            if value.is_zero() {
                return Err(format!("{flag} must be longer than zero"));
            }
        }
        // Far beyond any sensible setting, and far enough from the limits of clocks
        // that adding it to "now" can never overflow.
        for (flag, value) in [
            ("--lease", self.lease),
            ("--poll-interval", self.poll_interval),
            ("--output-flush", self.output_flush),
            ("--turn-timeout", self.turn_timeout),
            ("--shutdown-grace", self.shutdown_grace),
            ("--heartbeat", self.heartbeat),
        ] {
            if value > MAX_DURATION {
                return Err(format!(
                    "{flag} ({}) is longer than the limit of {}",
                    humantime::format_duration(value),
                    humantime::format_duration(MAX_DURATION),
                ));
            }
        }
        if self.lease <= self.heartbeat {
            return Err(format!(
                "--lease ({}) must be longer than --heartbeat ({}): leases are renewed once \
                 per heartbeat, so a shorter lease runs out while its turn is still running",
                humantime::format_duration(self.lease),
                humantime::format_duration(self.heartbeat),
            ));
        }
        Ok(queues)
    }

    /// The agents of `--agents`, trimmed and without repeats, in the order given (empty:
    /// every agent); or what is wrong.
    pub fn agent_filter(&self) -> Result<Vec<String>, String> {
        let mut agents: Vec<String> = Vec::new();
        for agent in self.agents.iter().map(|a| a.trim()) {
            if agent.is_empty() {
                continue;
            }
            turnq_core::task::check_name("--agents: agent", agent).map_err(|e| e.to_string())?;
            if !agents.iter().any(|a| a == agent) {
                agents.push(agent.to_owned());
            }
        }
        Ok(agents)
    }

    /// The host name to register under: `--host`, else the machine's.
    pub fn host_name(&self) -> String {
        self.host
            .as_deref()
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .map(str::to_owned)
            .unwrap_or_else(machine_host_name)
    }
}

/// The machine's host name (`gethostname`), else `localhost`.
fn machine_host_name() -> String {
    #[cfg(unix)]
    if let Some(name) = nix::unistd::gethostname()
        .ok()
        .and_then(|n| n.into_string().ok())
        .map(|n| n.trim().to_owned())
        .filter(|n| !n.is_empty())
    {
        return name;
    }
    "localhost".into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        worker: WorkerConfig,
    }

    #[test]
    fn command_line_defaults_match_the_documented_ones() {
        let parsed = Cli::try_parse_from(["turnq"]).unwrap().worker;
        assert_eq!(parsed.queues, WorkerConfig::default().queues);
        assert_eq!(parsed.concurrency, 16);
        assert_eq!(parsed.lease, Duration::from_secs(10));
        assert_eq!(parsed.poll_interval, Duration::from_millis(50));
        assert_eq!(parsed.output_flush, Duration::from_millis(100));
        assert_eq!(parsed.turn_timeout, Duration::from_secs(1800));
        assert_eq!(parsed.shutdown_grace, Duration::from_secs(30));
        assert_eq!(parsed.heartbeat, Duration::from_secs(2));
        assert_eq!(parsed.host, None);
        assert!(parsed.agents.is_empty());
        assert_eq!(parsed.validate().unwrap(), ["default"]);
        assert!(parsed.agent_filter().unwrap().is_empty());
    }

    #[test]
    fn queues_are_comma_separated_trimmed_and_deduplicated() {
        let parsed = Cli::try_parse_from(["turnq", "--queues", "a, b,a,,c", "--lease", "1m"])
            .unwrap()
            .worker;
        assert_eq!(parsed.validate().unwrap(), ["a", "b", "c"]);
        assert_eq!(parsed.lease, Duration::from_secs(60));
        let parsed = Cli::try_parse_from(["turnq", "--agents", "claude, script,claude,"])
            .unwrap()
            .worker;
        assert_eq!(parsed.agent_filter().unwrap(), ["claude", "script"]);
        let bad = Cli::try_parse_from(["turnq", "--agents", "a b"])
            .unwrap()
            .worker;
        assert!(bad.validate().unwrap_err().contains("\"a b\""));
    }

    #[test]
    fn validation_explains_what_is_wrong() {
        let bad = |f: fn(&mut WorkerConfig)| {
            let mut config = WorkerConfig::default();
            f(&mut config);
            config.validate().unwrap_err()
        };
        assert!(bad(|c| c.queues = vec![" ".into()]).contains("--queues"));
        assert!(bad(|c| c.queues = vec!["a b".into()]).contains("\"a b\""));
        assert!(bad(|c| c.concurrency = 0).contains("--concurrency"));
        assert!(bad(|c| c.poll_interval = Duration::ZERO).contains("--poll-interval"));
        let long = bad(|c| c.turn_timeout = Duration::from_secs(1000 * 365 * 86400));
        assert!(
            long.contains("--turn-timeout") && long.contains("limit of 7days"),
            "{long}"
        );
        let lease = bad(|c| c.lease = Duration::from_secs(2));
        assert!(
            lease.contains("--lease (2s)") && lease.contains("--heartbeat (2s)"),
            "{lease}"
        );
    }

    #[test]
    fn host_name_is_the_flag_else_the_machines() {
        let mut config = WorkerConfig::default();
        assert!(!config.host_name().is_empty());
        config.host = Some(" box-1 ".into());
        assert_eq!(config.host_name(), "box-1");
    }
}

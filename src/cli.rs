//! The command line: every option is a flag and an environment variable.

use clap::{Parser, Subcommand, ValueEnum};
use turnq::config::{ApiArgs, DatabaseArgs, UpArgs, WorkerArgs};

#[derive(Parser, Debug)]
#[command(
    name = "turnq",
    version,
    about = "An event-sourced job queue and worker fleet for AI agent turns",
    long_about = "turnq runs AI agent turns on a fleet of workers. Every fact about a task is an event \
in an append-only Postgres log; Redis only delivers work.\n\nQuick start: `turnq up`, then \
`turnq submit --wait \"hello\"`."
)]
pub struct Cli {
    /// Log format on stderr: `text` for people, `json` for log collectors. The level is
    /// set with RUST_LOG (default: info).
    #[arg(long, env = "TURNQ_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,

    /// For tests only: make named fault points in the long-lived loops fail, e.g.
    /// `worker.writer=panic` (`;`-separated; names in CONTRIBUTING.md). Empty: none.
    #[arg(long, env = "TURNQ_FAILPOINTS", default_value = "", global = true)]
    pub failpoints: String,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Everything in one process for a laptop or a demo: create the database if needed,
    /// migrate, then run the API, the dispatcher and a worker pool.
    Up(UpArgs),
    /// The API server and the dispatcher (run as many replicas as you like).
    Api(ApiArgs),
    /// A worker process: takes tasks from its queues and runs agent turns.
    Worker(WorkerArgs),
    /// Manage the database schema.
    Migrate {
        #[command(flatten)]
        database: DatabaseArgs,
        #[command(subcommand)]
        command: MigrateCommand,
    },
    /// Rebuild the projections (the `tasks` table) from the event log.
    Replay {
        #[command(flatten)]
        database: DatabaseArgs,
        /// Compare instead of rewriting: report every difference between the log and
        /// the table, write nothing, and exit with status 2 if there is any.
        #[arg(long)]
        verify: bool,
        /// Rebuild even though some events cannot be read, without them (they stay in
        /// the append-only log). Without it, a log holding such events is not rebuilt.
        #[arg(long, conflicts_with = "verify")]
        skip_bad_events: bool,
    },
    /// Submit a task to a running API, and optionally follow it to its end.
    Submit(crate::submit::SubmitArgs),
    /// Print the live event stream of a running API, filtered (`--task`, `--queue`,
    /// `--project`, `--session`, `--kind`), until interrupted.
    Watch(crate::watch::WatchArgs),
    /// Tasks of a running API: `list`, `show`, `cancel`, `retry`, `respond`, `follow`.
    Task(crate::task::TaskArgs),
    /// A session's workspace on a running API: `worktree`, `archive`, `changes`,
    /// `apply`, `reject`, `revert`, `checkpoints`, `restore`.
    Session(crate::session::SessionArgs),
    /// Measure throughput, latency, the session store and replay on the local Postgres
    /// and Redis (in a database and Redis prefix of its own, removed afterwards).
    Bench(crate::bench::BenchArgs),
    /// Manage API tokens.
    Token {
        #[command(flatten)]
        database: DatabaseArgs,
        #[command(subcommand)]
        command: TokenCommand,
    },
}

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Create a token and print it once (only its hash is stored).
    Create {
        /// What the token is for, e.g. the service that uses it.
        #[arg(long)]
        name: String,
        /// What it may do: `submit` (submit and cancel tasks), `read` (read everything),
        /// `admin` (everything). Repeat or comma-separate for several.
        #[arg(long = "scope", value_delimiter = ',', required = true)]
        scopes: Vec<turnq_core::auth::Scope>,
    },
    /// List the tokens: id, name, scopes, when created and last used (never the secret,
    /// which is not stored).
    List {
        /// Revoked tokens too.
        #[arg(long)]
        revoked: bool,
    },
    /// Revoke a token: it authenticates nothing from now on, in every API process at
    /// once.
    Revoke {
        /// The token's id, or its name when one token not yet revoked has it.
        token: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum MigrateCommand {
    /// Apply every pending migration.
    Up,
    /// Roll back the most recent migrations.
    Down {
        /// How many migrations to roll back.
        #[arg(long, default_value_t = 1)]
        steps: u32,
    },
    /// List migrations and whether each is applied.
    Status,
    /// Drop every table (the event log included) and apply all migrations.
    Fresh {
        /// Confirm that every table may be dropped.
        #[arg(long)]
        yes: bool,
    },
}

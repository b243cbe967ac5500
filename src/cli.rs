//! The command line: every option is a flag and an environment variable.

use std::net::SocketAddr;

use clap::{Args, Parser, Subcommand, ValueEnum};
use turnq_core::db::DatabaseUrl;

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

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Args, Debug)]
pub struct DatabaseArgs {
    /// Postgres URL. `turnq up` and `turnq migrate up` create the database if it is missing.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/turnq"
    )]
    pub database_url: DatabaseUrl,

    /// The most Postgres connections this process opens.
    #[arg(long, env = "TURNQ_DATABASE_MAX_CONNECTIONS", default_value_t = 16)]
    pub database_max_connections: u32,
}

#[derive(Args, Debug)]
pub struct RedisArgs {
    /// Redis URL. Redis only delivers work: losing its data loses no task.
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,

    /// Prefix of every Redis key turnq uses, so deployments can share one Redis.
    #[arg(long, env = "TURNQ_REDIS_PREFIX", default_value = "turnq")]
    pub redis_prefix: String,
}

/// `turnq up`: everything `turnq api` takes, plus a worker pool's settings.
#[derive(Args, Debug)]
pub struct UpArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    #[command(flatten)]
    pub worker: turnq_worker::WorkerConfig,
}

#[derive(Args, Debug)]
pub struct ApiArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub redis: RedisArgs,
    /// Address the API and UI listen on.
    #[arg(long, env = "TURNQ_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub api: turnq_api::ApiConfig,
    #[command(flatten)]
    pub dispatcher: turnq_api::dispatcher::DispatcherConfig,
}

#[derive(Args, Debug)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub redis: RedisArgs,
    #[command(flatten)]
    pub worker: turnq_worker::WorkerConfig,
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
    },
    /// Submit a task to a running API, and optionally follow it to its end.
    Submit(crate::submit::SubmitArgs),
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

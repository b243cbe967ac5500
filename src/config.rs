//! The settings of the app's parts, as the command line takes them: every one a flag
//! and an environment variable (clap `env`), with its meaning, unit and default in
//! `--help`. The subcommands flatten these; `App` is built from them.

use std::net::SocketAddr;

use clap::Args;
use turnq_core::db::DatabaseUrl;

#[derive(Args, Clone, Debug)]
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

#[derive(Args, Clone, Debug)]
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
    /// Address the API listens on (`127.0.0.1:0` picks a free port).
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
    /// Serve this worker's Prometheus metrics at `http://ADDR/metrics` (e.g.
    /// `0.0.0.0:9464`). Default: not served. (`turnq up` and `turnq api` serve theirs
    /// at the API's `/metrics`.)
    #[arg(long, env = "TURNQ_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
}

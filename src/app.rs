//! The app: turnq assembled from its parts, the one way it is started.
//!
//! `turnq up`, `turnq api` and `turnq worker`, the bench and the black-box tests all
//! start turnq through [`App::build`] and [`App::run`], so a test exercises exactly the
//! assembly a user runs. `build` does everything that can fail on bad settings or an
//! unreachable service (connect, migrate, bind, probe the agents), so a mistake is
//! reported before anything runs; `run` starts every long-lived task under one
//! [`Supervisor`] and returns when `shutdown` is cancelled and everything has stopped,
//! or with [`AppError::Died`] when one of them ended unexpectedly (the process then
//! exits non-zero and its supervisor restarts it: see `turnq_core::supervise`).

use std::{net::SocketAddr, time::Duration};

use migration::MigratorTrait;
use sea_orm::{DatabaseConnection, DbErr};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use turnq_api::{ApiConfig, AppState, dispatcher::DispatcherConfig};
use turnq_core::{
    db::{self, ConnectError},
    delivery::RedisNames,
    supervise::{Death, Supervisor},
};
use turnq_worker::{Worker, WorkerConfig, WorkerError};

use crate::config::{ApiArgs, DatabaseArgs, RedisArgs, UpArgs, WorkerArgs};

/// How long the rest of the process may take to stop after one of its long-lived tasks
/// died, before it exits anyway: what is left is recovered from Postgres by whoever
/// runs next (leases run out, tasks run again).
const STOP_AFTER_DEATH: Duration = Duration::from_secs(10);

/// Which parts to run, and their settings.
#[derive(Debug)]
pub struct AppConfig {
    pub database: DatabaseArgs,
    pub redis: RedisArgs,
    /// Create the database when it is missing and apply pending migrations before
    /// starting (`turnq up`).
    pub prepare_database: bool,
    /// The REST API and the dispatcher.
    pub api: Option<ApiPart>,
    /// A worker pool.
    pub worker: Option<WorkerConfig>,
    /// Where to serve `/metrics` when the app runs no API (a worker process).
    pub metrics_listen: Option<SocketAddr>,
}

/// The settings of the API and its dispatcher.
#[derive(Debug)]
pub struct ApiPart {
    pub listen: SocketAddr,
    pub api: ApiConfig,
    pub dispatcher: DispatcherConfig,
}

impl AppConfig {
    /// `turnq up`: everything in one process, on a database it creates and migrates.
    pub fn up(args: UpArgs) -> AppConfig {
        AppConfig {
            prepare_database: true,
            worker: Some(args.worker),
            ..AppConfig::api(args.api)
        }
    }

    /// `turnq api`: the API and the dispatcher.
    pub fn api(args: ApiArgs) -> AppConfig {
        AppConfig {
            database: args.database,
            redis: args.redis,
            prepare_database: false,
            api: Some(ApiPart {
                listen: args.listen,
                api: args.api,
                dispatcher: args.dispatcher,
            }),
            worker: None,
            metrics_listen: None,
        }
    }

    /// `turnq worker`: a worker pool.
    pub fn worker(args: WorkerArgs) -> AppConfig {
        AppConfig {
            database: args.database,
            redis: args.redis,
            prepare_database: false,
            api: None,
            worker: Some(args.worker),
            metrics_listen: args.metrics_listen,
        }
    }
}

/// Why the app could not start, or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Connect(#[from] ConnectError),

    #[error("applying migrations")]
    Migrate(#[source] DbErr),

    #[error(
        "cannot listen on {addr}: is another turnq (or anything else) using it? Pick another with --listen"
    )]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },

    #[error(transparent)]
    Worker(#[from] WorkerError),

    /// A long-lived task ended unexpectedly; the process stopped.
    #[error("{0}")]
    Died(Death),
}

/// The app, built and ready to run.
pub struct App {
    db: DatabaseConnection,
    redis: RedisArgs,
    api: Option<(TcpListener, ApiConfig, DispatcherConfig)>,
    worker: Option<Worker>,
    metrics: Option<TcpListener>,
}

impl App {
    /// Connects (creating the database and migrating if asked), binds the API's
    /// listener and builds the worker pool (probing its agents). Nothing runs yet.
    pub async fn build(config: AppConfig) -> Result<App, AppError> {
        // Installed before anything runs, so no count is lost.
        turnq_api::metrics::recorder();
        let db = connect(&config.database, config.prepare_database).await?;
        if config.prepare_database {
            migrate_up(&db).await?;
        }
        let api = match config.api {
            Some(part) => {
                let listener =
                    TcpListener::bind(part.listen)
                        .await
                        .map_err(|source| AppError::Listen {
                            addr: part.listen,
                            source,
                        })?;
                Some((listener, part.api, part.dispatcher))
            }
            None => None,
        };
        let metrics = match config.metrics_listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| AppError::Listen { addr, source })?,
            ),
            None => None,
        };
        let names = RedisNames::new(&config.redis.redis_prefix);
        let worker = match config.worker {
            Some(worker) => Some(
                Worker::build(db.clone(), config.redis.redis_url.clone(), names, worker).await?,
            ),
            None => None,
        };
        Ok(App {
            db,
            redis: config.redis,
            api,
            worker,
            metrics,
        })
    }

    /// The address `/metrics` is served on by a process without an API.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The address the API listens on, when it runs one (the port is known even when
    /// `--listen` asked for port 0).
    pub fn api_addr(&self) -> Option<SocketAddr> {
        self.api
            .as_ref()
            .and_then(|(listener, ..)| listener.local_addr().ok())
    }

    /// The app's database pool.
    pub fn db(&self) -> &DatabaseConnection {
        &self.db
    }

    /// Runs every part until `shutdown` is cancelled and all have stopped, or until a
    /// long-lived task dies ([`AppError::Died`]).
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), AppError> {
        // A death stops everything else through this token, without cancelling the
        // caller's.
        let stop = shutdown.child_token();
        let tasks = Supervisor::new(stop.clone());
        let names = RedisNames::new(&self.redis.redis_prefix);
        if let Some((listener, config, dispatcher)) = self.api {
            if let Ok(addr) = listener.local_addr() {
                tracing::info!(%addr, "API listening");
            }
            let feed = AppState::start_feed(&self.db, &config, &tasks);
            let state = AppState::supervised(self.db.clone(), config, tasks.clone(), feed);
            tasks.spawn_fallible("api", turnq_api::serve(listener, state, stop.clone()));
            tasks.spawn(
                "dispatcher",
                turnq_api::dispatcher::run(
                    self.db.clone(),
                    self.redis.redis_url.clone(),
                    names.clone(),
                    dispatcher,
                    tasks.clone(),
                    stop.clone(),
                ),
            );
        }
        if let Some(listener) = self.metrics {
            if let Ok(addr) = listener.local_addr() {
                tracing::info!(%addr, "serving metrics at /metrics");
            }
            tasks.spawn_fallible(
                "metrics",
                turnq_api::metrics::serve_metrics(
                    listener,
                    turnq_api::metrics::recorder(),
                    stop.clone(),
                ),
            );
        }
        if let Some(worker) = self.worker {
            let (pool_tasks, pool_stop) = (tasks.clone(), stop.clone());
            tasks.spawn_fallible(
                "worker",
                async move { worker.run(&pool_tasks, pool_stop).await },
            );
        }
        let died = tokio::select! {
            _ = stop.cancelled() => None,
            death = tasks.failure() => Some(death),
        };
        match died {
            None => {
                tasks.wait().await;
                // A task may have died while the others were stopping.
                match tasks.deaths().into_iter().next() {
                    Some(death) => Err(AppError::Died(death)),
                    None => Ok(()),
                }
            }
            Some(death) => {
                stop.cancel();
                if tokio::time::timeout(STOP_AFTER_DEATH, tasks.wait())
                    .await
                    .is_err()
                {
                    tracing::warn!(still_running = ?tasks.running(),
                        "exiting without waiting longer for the rest to stop");
                }
                Err(AppError::Died(death))
            }
        }
    }
}

/// A pool on the database of `args`, created first when `create_if_missing`.
pub async fn connect(
    args: &DatabaseArgs,
    create_if_missing: bool,
) -> Result<DatabaseConnection, ConnectError> {
    if create_if_missing {
        db::ensure_database(&args.database_url).await?;
    }
    db::connect(&args.database_url, args.database_max_connections).await
}

/// Applies every pending migration.
pub async fn migrate_up(db: &DatabaseConnection) -> Result<(), AppError> {
    migration::Migrator::up(db, None)
        .await
        .map_err(AppError::Migrate)
}

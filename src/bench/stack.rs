//! What the bench runs on: a database and a Redis prefix of its own, the API and the
//! dispatcher in this process, and `turnq worker` child processes.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use sea_orm::{DatabaseConnection, EntityTrait, PaginatorTrait, QueryFilter};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;
use turnq::{
    ApiPart, App, AppConfig,
    config::{DatabaseArgs, RedisArgs},
};
use turnq_core::{
    auth::{Scope, TokenStore},
    db::{self, DatabaseUrl},
};
use turnq_testkit::{TestDb, TestRedis};

use super::BenchArgs;

/// The turnq queue every bench task goes to.
pub const QUEUE: &str = "bench";

pub struct Stack {
    pub db: DatabaseConnection,
    pub url: DatabaseUrl,
    pub redis_url: String,
    pub names: turnq_core::delivery::RedisNames,
    pub api_url: String,
    pub token: String,
    pub http: reqwest::Client,
    shutdown: CancellationToken,
    api: tokio::task::JoinHandle<Result<(), turnq::AppError>>,
    workers: Mutex<Vec<Child>>,
    /// Peak RSS of each worker, read just before it is stopped.
    worker_rss: Mutex<Vec<f64>>,
    // Last: dropped (removed, unless kept) after everything that uses them stopped.
    redis: TestRedis,
    database: TestDb,
}

impl Stack {
    /// Creates the database (from a migrated template) and the prefix, and starts the
    /// API and dispatcher through the app, as `turnq api` does.
    pub async fn start(args: &BenchArgs) -> Result<Stack> {
        let server = url::Url::parse(args.database_url.with_database("postgres").expose())
            .context("the --database-url is not a URL")?;
        let database = TestDb::on(server, "turnq_bench").await.with_context(|| {
            format!(
                "creating a bench database on {} (the bench needs Postgres; see the README's set-up)",
                args.database_url
            )
        })?;
        let url: DatabaseUrl = database
            .url
            .parse()
            .map_err(|e: String| anyhow::anyhow!(e))?;
        let db = db::connect(&url, 16).await?;
        let (token, _) = TokenStore::create(&db, "bench", &[Scope::Admin]).await?;
        let redis = TestRedis::on(&args.redis_url, "turnq-bench");
        let names = turnq_core::delivery::RedisNames::new(&redis.prefix);

        let app = App::build(AppConfig {
            database: DatabaseArgs {
                database_url: url.clone(),
                database_max_connections: 16,
            },
            redis: RedisArgs {
                redis_url: args.redis_url.clone(),
                redis_prefix: redis.prefix.clone(),
            },
            prepare_database: false,
            api: Some(ApiPart {
                listen: "127.0.0.1:0".parse()?,
                api: turnq_api::ApiConfig::default(),
                dispatcher: dispatcher_config()?,
            }),
            worker: None,
            metrics_listen: None,
        })
        .await?;
        let api_url = format!(
            "http://{}",
            app.api_addr().context("the bench app runs an API")?
        );
        let shutdown = CancellationToken::new();
        let api = tokio::spawn(app.run(shutdown.clone()));
        Ok(Stack {
            db,
            url,
            redis_url: args.redis_url.clone(),
            names,
            api_url,
            token: token.expose().to_owned(),
            http: reqwest::Client::builder()
                .timeout(crate::HTTP_TIMEOUT)
                .build()?,
            shutdown,
            api,
            workers: Mutex::default(),
            worker_rss: Mutex::default(),
            redis,
            database,
        })
    }

    /// Starts `count` `turnq worker` processes on the bench queue, and waits until each
    /// has registered.
    pub async fn start_workers(&self, count: usize, concurrency: usize) -> Result<()> {
        let exe = std::env::current_exe().context("finding the turnq binary to run workers")?;
        let mut children = Vec::new();
        for i in 0..count {
            let child = Command::new(&exe)
                .arg("worker")
                .env("DATABASE_URL", self.url.expose())
                .env("REDIS_URL", &self.redis_url)
                .env("TURNQ_REDIS_PREFIX", self.names.prefix())
                .env("TURNQ_QUEUES", QUEUE)
                .env("TURNQ_AGENTS", "script")
                .env("TURNQ_CONCURRENCY", concurrency.to_string())
                .env("TURNQ_HOST", format!("bench-{}", i + 1))
                .env(
                    "RUST_LOG",
                    std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
                )
                .kill_on_drop(true)
                .spawn()
                .context("starting a turnq worker")?;
            children.push(child);
        }
        self.workers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(children);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let live = turnq_core::entity::workers::Entity::find()
                .filter(sea_orm::ColumnTrait::is_null(
                    &turnq_core::entity::workers::Column::StoppedAt,
                ))
                .count(&self.db)
                .await?;
            if live as usize >= count {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "only {live} of {count} workers registered within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Registered comes just before the consumers start fetching.
        tokio::time::sleep(Duration::from_millis(500)).await;
        Ok(())
    }

    pub fn worker_peak_rss_mib(&self) -> Vec<f64> {
        let workers = self.workers.lock().unwrap_or_else(|p| p.into_inner());
        let mut seen = self.worker_rss.lock().unwrap_or_else(|p| p.into_inner());
        for child in workers.iter() {
            if let Some(rss) = child.id().and_then(|pid| peak_rss_mib(Some(pid))) {
                seen.push(rss);
            }
        }
        seen.clone()
    }

    /// Stops everything and, unless `keep`, drops the database and deletes the keys.
    /// The turnq processes of the stack: this one (API, dispatcher, the bench's client)
    /// and the worker processes.
    pub fn turnq_pids(&self) -> Vec<u32> {
        let workers = self.workers.lock().unwrap_or_else(|p| p.into_inner());
        std::iter::once(std::process::id())
            .chain(workers.iter().filter_map(Child::id))
            .collect()
    }

    pub async fn stop(mut self, keep: bool) {
        let children: Vec<Child> =
            std::mem::take(&mut *self.workers.lock().unwrap_or_else(|p| p.into_inner()));
        for mut child in children {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
        self.shutdown.cancel();
        match tokio::time::timeout(Duration::from_secs(10), &mut self.api).await {
            Ok(Ok(Err(e))) => eprintln!("bench: the API stopped with an error: {e}"),
            Ok(_) => {}
            Err(_) => eprintln!("bench: the API did not stop within 10 s"),
        }
        let _ = self.db.close().await;
        if keep {
            self.database.keep();
            self.redis.keep();
            eprintln!(
                "bench: kept database {} and Redis prefix {}",
                self.url,
                self.names.prefix()
            );
        }
        // Dropping them removes the database and the keys (unless kept).
    }

    /// A GET of the API with the bench's token.
    pub fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.http
            .get(format!("{}{path}", self.api_url))
            .bearer_auth(&self.token)
    }

    /// A request to the API with the bench's token.
    pub fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.http
            .post(format!("{}{path}", self.api_url))
            .bearer_auth(&self.token)
    }
}

/// The dispatcher's command-line defaults.
fn dispatcher_config() -> Result<turnq_api::dispatcher::DispatcherConfig> {
    use clap::Parser;
    #[derive(Parser)]
    struct Defaults {
        #[command(flatten)]
        dispatcher: turnq_api::dispatcher::DispatcherConfig,
    }
    Ok(Defaults::try_parse_from(["turnq"])?.dispatcher)
}

/// Peak resident memory (`VmHWM`) of process `pid`, or of this process, in MiB.
pub fn peak_rss_mib(pid: Option<u32>) -> Option<f64> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/status"),
        None => "/proc/self/status".into(),
    };
    let status = std::fs::read_to_string(path).ok()?;
    let kib: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

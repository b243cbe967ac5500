//! What the bench runs on: a database and a Redis prefix of its own, the API and the
//! dispatcher in this process, and `turnq worker` child processes.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use sea_orm::{ConnectionTrait, DatabaseConnection, EntityTrait, PaginatorTrait, QueryFilter};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;
use turnq_core::{
    auth::{Scope, TokenStore},
    db::{self, DatabaseUrl},
    delivery::RedisNames,
};

use super::BenchArgs;
use crate::cli::{ApiArgs, DatabaseArgs, RedisArgs};

/// The turnq queue every bench task goes to.
pub const QUEUE: &str = "bench";

pub struct Stack {
    pub db: DatabaseConnection,
    pub url: DatabaseUrl,
    /// The server's maintenance database, to drop the bench database afterwards.
    admin_url: DatabaseUrl,
    pub redis_url: String,
    pub names: RedisNames,
    pub api_url: String,
    pub token: String,
    pub http: reqwest::Client,
    shutdown: CancellationToken,
    api: tokio::task::JoinHandle<Result<()>>,
    workers: Mutex<Vec<Child>>,
    /// Peak RSS of each worker, read just before it is stopped.
    worker_rss: Mutex<Vec<f64>>,
}

impl Stack {
    /// Creates the database and prefix, migrates, and starts the API and dispatcher.
    pub async fn start(args: &BenchArgs) -> Result<Stack> {
        let run = uuid::Uuid::new_v4().simple().to_string();
        let name = format!("turnq_bench_{}", &run[..12]);
        let url = args.database_url.with_database(&name);
        let admin_url = args.database_url.with_database("postgres");
        db::ensure_database(&url).await.with_context(|| {
            format!(
                "creating the bench database {name} on {} (the bench needs Postgres; see the README's set-up)",
                args.database_url
            )
        })?;
        let db = db::connect(&url, 16).await?;
        crate::migrate_up(&db).await?;
        let (token, _) = TokenStore::create(&db, "bench", &[Scope::Admin]).await?;
        let names = RedisNames::new(format!("turnq-bench-{}", &run[..12]));

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let api_url = format!("http://{}", listener.local_addr()?);
        let api_args = ApiArgs {
            database: DatabaseArgs {
                database_url: url.clone(),
                database_max_connections: 16,
            },
            redis: RedisArgs {
                redis_url: args.redis_url.clone(),
                redis_prefix: names.prefix().to_owned(),
            },
            listen: listener.local_addr()?,
            api: turnq_api::ApiConfig::default(),
            dispatcher: dispatcher_config()?,
        };
        let shutdown = CancellationToken::new();
        let api = tokio::spawn(crate::serve_api(
            db.clone(),
            listener,
            api_args,
            shutdown.clone(),
        ));
        Ok(Stack {
            db,
            url,
            admin_url,
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
    pub async fn stop(self, keep: bool) {
        let children: Vec<Child> =
            std::mem::take(&mut *self.workers.lock().unwrap_or_else(|p| p.into_inner()));
        for mut child in children {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
        self.shutdown.cancel();
        match tokio::time::timeout(Duration::from_secs(10), self.api).await {
            Ok(Ok(Err(e))) => eprintln!("bench: the API stopped with an error: {e:#}"),
            Ok(_) => {}
            Err(_) => eprintln!("bench: the API did not stop within 10 s"),
        }
        let _ = self.db.close().await;
        if keep {
            eprintln!(
                "bench: kept database {} and Redis prefix {}",
                self.url,
                self.names.prefix()
            );
            return;
        }
        if let Err(e) = drop_database(&self.admin_url, &self.url).await {
            eprintln!("bench: could not drop the bench database: {e:#}");
        }
        if let Err(e) = turnq_worker::purge::delete_keys(&self.redis_url, &self.names).await {
            eprintln!("bench: could not delete the bench's Redis keys: {e}");
        }
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

async fn drop_database(admin: &DatabaseUrl, bench: &DatabaseUrl) -> Result<()> {
    let name = bench
        .database_name()
        .context("the bench database URL names no database")?;
    let conn = db::connect(admin, 1).await?;
    conn.execute_unprepared(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .await?;
    conn.close().await?;
    Ok(())
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

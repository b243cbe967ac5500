//! The test harness: a database per test (cloned from a migrated template), a Redis
//! prefix per test, the real app on port 0, one helper per endpoint, and `eventually`
//! instead of sleeps.

use std::{
    future::Future,
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use clap::Parser;
use migration::MigratorTrait;
use sea_orm::{ConnectionTrait, DatabaseConnection};
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use turnq_core::{
    db::{self, DatabaseUrl},
    delivery::RedisNames,
};

pub const POSTGRES: &str = "postgres://postgres@127.0.0.1:5432";
pub const REDIS: &str = "redis://127.0.0.1:6379";

fn url(database: &str) -> DatabaseUrl {
    format!("{POSTGRES}/{database}")
        .parse()
        .expect("the test URL is a postgres:// URL")
}

/// The template's name changes with the set of migrations, so a new migration gets a
/// new template instead of a stale one.
fn template_name() -> String {
    let names: Vec<String> = migration::Migrator::migrations()
        .iter()
        .map(|m| m.name().to_owned())
        .collect();
    let mut hash: u64 = 0xcbf29ce484222325;
    for byte in names.join(",").bytes() {
        hash = (hash ^ u64::from(byte)).wrapping_mul(0x100000001b3);
    }
    format!("turnq_template_{hash:016x}")
}

/// Creates the migrated template once per machine. nextest runs every test in its own
/// process, so a Postgres advisory lock (not a mutex) guards the creation.
async fn ensure_template(admin: &DatabaseConnection) -> Result<String> {
    let name = template_name();
    admin
        .execute_unprepared("SELECT pg_advisory_lock(7215)")
        .await?;
    let result = async {
        let exists = admin
            .query_one_raw(sea_orm::Statement::from_string(
                admin.get_database_backend(),
                format!("SELECT 1 FROM pg_database WHERE datname = '{name}'"),
            ))
            .await?
            .is_some();
        if !exists {
            let building = format!("{name}_building");
            admin
                .execute_unprepared(&format!("DROP DATABASE IF EXISTS {building} WITH (FORCE)"))
                .await?;
            admin
                .execute_unprepared(&format!("CREATE DATABASE {building}"))
                .await?;
            let db = db::connect(&url(&building), 1).await?;
            migration::Migrator::up(&db, None).await?;
            db.close().await?;
            admin
                .execute_unprepared(&format!("ALTER DATABASE {building} RENAME TO {name}"))
                .await?;
        }
        anyhow::Ok(())
    }
    .await;
    admin
        .execute_unprepared("SELECT pg_advisory_unlock(7215)")
        .await?;
    result?;
    Ok(name)
}

/// A fresh, migrated database of this test's own, dropped when the value is dropped.
pub struct TestDb {
    pub name: String,
    pub url: DatabaseUrl,
    pub db: DatabaseConnection,
}

impl TestDb {
    pub async fn new() -> Result<TestDb> {
        let admin = db::connect(&url("postgres"), 1)
            .await
            .context("the tests need Postgres at 127.0.0.1:5432 (user postgres, trust auth)")?;
        let template = ensure_template(&admin).await?;
        let name = format!("turnq_test_{}", uuid::Uuid::new_v4().simple());
        admin
            .execute_unprepared(&format!("CREATE DATABASE {name} TEMPLATE {template}"))
            .await?;
        admin.close().await?;
        let url = url(&name);
        let db = db::connect(&url, 10).await?;
        Ok(TestDb { name, url, db })
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // Drop cannot await, and the test's runtime may be shutting down: a thread with
        // its own small runtime drops the database whatever state the test ended in.
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                let admin = db::connect(&url("postgres"), 1).await?;
                admin
                    .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await?;
                anyhow::Ok(())
            })
        })
        .join();
    }
}

/// This test's Redis key prefix on a Redis server (the shared one unless the test
/// started its own); its keys are deleted (SCAN + UNLINK) on drop.
pub struct TestRedis {
    pub url: String,
    pub names: RedisNames,
}

impl TestRedis {
    /// A fresh prefix on the Redis at `url`.
    pub fn on(url: &str) -> TestRedis {
        TestRedis {
            url: url.to_owned(),
            names: RedisNames::new(format!("turnq-test-{}", uuid::Uuid::new_v4().simple())),
        }
    }

    pub async fn delete_keys(url: &str, names: &RedisNames) -> Result<()> {
        Ok(turnq_worker::purge::delete_keys(url, names).await?)
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        let (url, names) = (self.url.clone(), self.names.clone());
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            // A private server may be gone already: bounded, and errors are ignored.
            rt.block_on(async {
                tokio::time::timeout(Duration::from_secs(5), TestRedis::delete_keys(&url, &names))
                    .await?
            })
        })
        .join();
    }
}

#[derive(Parser)]
struct WorkerFlags {
    #[command(flatten)]
    config: turnq_worker::WorkerConfig,
}

#[derive(Parser)]
struct DispatcherFlags {
    #[command(flatten)]
    config: turnq_api::dispatcher::DispatcherConfig,
}

/// Worker settings for tests: fast polling and flushing.
pub fn worker_config(extra: &[&str]) -> turnq_worker::WorkerConfig {
    let mut args = vec![
        "worker",
        "--concurrency",
        "32",
        "--poll-interval",
        "20ms",
        "--output-flush",
        "50ms",
        "--shutdown-grace",
        "5s",
    ];
    args.extend_from_slice(extra);
    WorkerFlags::try_parse_from(args)
        .expect("the test worker flags parse")
        .config
}

pub fn dispatcher_config() -> turnq_api::dispatcher::DispatcherConfig {
    DispatcherFlags::try_parse_from(["dispatcher", "--dispatch-poll-interval", "200ms"])
        .expect("the test dispatcher flags parse")
        .config
}

/// AUTH: creates the admin token the app's client sends. Every `/v1` route asks for a
/// bearer token; each test database gets its own token, made through the core store
/// (not the API), so the harness needs no token to make one.
async fn admin_token(db: &DatabaseConnection) -> Result<String> {
    let (secret, _info) =
        turnq_core::auth::TokenStore::create(db, "test", &[turnq_core::auth::Scope::Admin])
            .await
            .context("creating the test's admin token")?;
    Ok(secret.expose().to_owned())
}

/// An HTTP client that sends `Authorization: Bearer <token>` with every request.
/// Tests of what happens without a token use `reqwest::Client::new()`.
fn client_with_token(token: &str) -> Result<reqwest::Client> {
    let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
        .context("the token is a valid header value")?;
    // Kept out of reqwest's Debug output.
    value.set_sensitive(true);
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(reqwest::header::AUTHORIZATION, value);
    Ok(reqwest::Client::builder()
        .default_headers(headers)
        .build()?)
}

/// The real app: API on port 0, dispatcher and a worker pool, on this test's own
/// database and Redis prefix.
pub struct TestApp {
    pub base: String,
    /// Sends the admin token with every request.
    pub http: reqwest::Client,
    pub db: DatabaseConnection,
    pub redis: TestRedis,
    token: String,
    shutdown: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    // Last, so the database is dropped after everything that uses it has stopped.
    pub test_db: TestDb,
}

impl TestApp {
    /// API, dispatcher and one worker pool.
    pub async fn spawn() -> Result<TestApp> {
        Self::spawn_with(true, REDIS).await
    }

    /// API and dispatcher only: tasks stay queued until a worker is started.
    pub async fn spawn_without_workers() -> Result<TestApp> {
        Self::spawn_with(false, REDIS).await
    }

    /// API and dispatcher only, delivering through the Redis at `redis_url` (a test's
    /// private server, for tests that flush or restart it).
    pub async fn spawn_without_workers_on(redis_url: &str) -> Result<TestApp> {
        Self::spawn_with(false, redis_url).await
    }

    async fn spawn_with(workers: bool, redis_url: &str) -> Result<TestApp> {
        let test_db = TestDb::new().await?;
        let redis = TestRedis::on(redis_url);
        let db = test_db.db.clone();
        let token = admin_token(&db).await?;
        let shutdown = CancellationToken::new();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}", listener.local_addr()?);
        let mut tasks = Vec::new();
        let api_state = turnq_api::AppState::new(db.clone());
        let api_shutdown = shutdown.clone();
        tasks.push(tokio::spawn(async move {
            let _ = turnq_api::serve(listener, api_state, api_shutdown).await;
        }));
        tasks.push(tokio::spawn(turnq_api::dispatcher::run(
            db.clone(),
            redis.url.clone(),
            redis.names.clone(),
            dispatcher_config(),
            shutdown.clone(),
        )));
        let mut app = TestApp {
            base,
            http: client_with_token(&token)?,
            db,
            redis,
            token,
            shutdown,
            tasks,
            test_db,
        };
        if workers {
            app.start_worker(&[]);
        }
        Ok(app)
    }

    /// The admin token the app's client sends, for requests built by hand.
    #[allow(
        dead_code,
        reason = "for tests that build requests by hand (the auth tests)"
    )]
    pub fn token(&self) -> &str {
        &self.token
    }

    /// Starts another in-process worker pool.
    pub fn start_worker(&mut self, extra: &[&str]) {
        let run = turnq_worker::run(
            self.db.clone(),
            self.redis.url.clone(),
            self.redis.names.clone(),
            worker_config(extra),
            self.shutdown.clone(),
        );
        self.tasks.push(tokio::spawn(async move {
            if let Err(e) = run.await {
                eprintln!("test worker failed: {e}");
            }
        }));
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn post(&self, path: &str, body: &Value) -> Result<(u16, Value)> {
        let response = self.http.post(self.url(path)).json(body).send().await?;
        Self::read(response).await
    }

    pub async fn post_raw(
        &self,
        path: &str,
        body: Vec<u8>,
        content_type: &str,
    ) -> Result<(u16, Value)> {
        let response = self
            .http
            .post(self.url(path))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await?;
        Self::read(response).await
    }

    pub async fn get(&self, path: &str) -> Result<(u16, Value)> {
        let response = self.http.get(self.url(path)).send().await?;
        Self::read(response).await
    }

    async fn read(response: reqwest::Response) -> Result<(u16, Value)> {
        let status = response.status().as_u16();
        let text = response.text().await?;
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).with_context(|| format!("body is not JSON: {text}"))?
        };
        Ok((status, body))
    }

    /// `POST /v1/tasks`, expecting success; returns the task.
    pub async fn submit(&self, body: Value) -> Result<Value> {
        let (status, task) = self.post("/v1/tasks", &body).await?;
        if !(200..300).contains(&status) {
            bail!("submit answered {status}: {task}");
        }
        Ok(task)
    }

    pub async fn task(&self, id: &str) -> Result<Value> {
        let (status, task) = self.get(&format!("/v1/tasks/{id}")).await?;
        if status != 200 {
            bail!("GET task answered {status}: {task}");
        }
        Ok(task)
    }

    pub async fn event_kinds(&self, id: &str) -> Result<Vec<String>> {
        let (_, body) = self.get(&format!("/v1/tasks/{id}/events")).await?;
        Ok(body["events"]
            .as_array()
            .context("events is an array")?
            .iter()
            .map(|e| e["kind"].as_str().unwrap_or("?").to_owned())
            .collect())
    }

    /// Waits until the task is in `state`.
    pub async fn wait_for_state(&self, id: &str, state: &str, timeout: Duration) -> Result<Value> {
        eventually(timeout, || async {
            let task = self.task(id).await?;
            if task["state"] == state {
                Ok(task)
            } else {
                bail!("task {id} is {} (wanted {state})", task["state"])
            }
        })
        .await
    }

    /// Row counts of the tables a bad request must not touch.
    pub async fn counts(&self) -> Result<(i64, i64)> {
        Ok((
            count(&self.db, "tasks").await?,
            count(&self.db, "events").await?,
        ))
    }

    /// Stops the app's API, dispatcher and workers.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        for task in self.tasks.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub async fn count(db: &DatabaseConnection, table: &str) -> Result<i64> {
    let row = db
        .query_one_raw(sea_orm::Statement::from_string(
            db.get_database_backend(),
            format!("SELECT count(*) AS n FROM {table}"),
        ))
        .await?
        .context("count returns a row")?;
    Ok(row.try_get::<i64>("", "n")?)
}

/// Retries `check` until it succeeds or `timeout` passes; the error then reports the
/// last state seen.
pub async fn eventually<T, F, Fut>(timeout: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let started = Instant::now();
    loop {
        match check().await {
            Ok(value) => return Ok(value),
            Err(e) if started.elapsed() >= timeout => {
                bail!("not so after {timeout:?}; last seen: {e:#}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// The `turnq` binary, built once per test process (cargo builds test binaries, not
/// the workspace's binaries, before running tests).
pub fn turnq_bin() -> Result<PathBuf> {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| {
        let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .map(PathBuf::from)
            .ok_or("the tests crate sits inside the workspace")?;
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        // The test process inherits CARGO_MANIFEST_DIR from cargo; passing it on would
        // change build-script fingerprints (ring's) and make every run rebuild the world.
        let output = Command::new(cargo)
            .env_remove("CARGO_MANIFEST_DIR")
            .args(["build", "--bin", "turnq", "--message-format=json"])
            .current_dir(&workspace)
            .output()
            .map_err(|e| format!("running cargo build: {e}"))?;
        if !output.status.success() {
            return Err(format!(
                "cargo build --bin turnq failed: {}",
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter_map(|m| m["executable"].as_str().map(PathBuf::from))
            .find(|p| p.file_name().is_some_and(|n| n == "turnq"))
            .ok_or_else(|| "cargo build did not report the turnq executable".into())
    })
    .clone()
    .map_err(anyhow::Error::msg)
}

/// A child process of the test, killed (SIGKILL) and reaped on drop, so a failing test
/// leaves nothing running.
pub struct ChildProcess {
    name: String,
    child: Child,
}

impl ChildProcess {
    pub fn spawn(name: impl Into<String>, command: &mut Command) -> Result<ChildProcess> {
        let name = name.into();
        let child = command
            .spawn()
            .with_context(|| format!("starting {name}: {command:?}"))?;
        Ok(ChildProcess { name, child })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `kill -9`: the process gets no chance to clean up. Returns once it is reaped.
    pub fn kill_9(&mut self) -> Result<()> {
        // std's `Child::kill` is SIGKILL on Unix, sent to a child we have not reaped,
        // so the pid cannot have been reused by another process.
        self.child
            .kill()
            .with_context(|| format!("kill -9 {}", self.name))?;
        self.child.wait()?;
        Ok(())
    }

    /// `kill -TERM`: asks the process to shut down the way a deploy does.
    pub fn terminate(&self) -> Result<()> {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status()
            .context("running kill -TERM")?;
        anyhow::ensure!(
            status.success(),
            "kill -TERM {} failed: {status}",
            self.name
        );
        Ok(())
    }

    /// Waits for the process to exit on its own, at most `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if started.elapsed() >= timeout {
                bail!(
                    "{} (pid {}) still runs after {timeout:?}",
                    self.name,
                    self.pid()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The exit status if the process has ended.
    pub fn exited(&mut self) -> Result<Option<ExitStatus>> {
        Ok(self.child.try_wait()?)
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A `turnq worker` process of the real binary, on this app's database and Redis.
pub struct WorkerProcess {
    pub host: String,
    pub process: ChildProcess,
}

impl WorkerProcess {
    /// Every worker id this process registers starts with this (`{host}-{pid}-…`).
    pub fn id_prefix(&self) -> String {
        format!("{}-{}-", self.host, self.process.pid())
    }

    pub fn owns(&self, worker_id: &str) -> bool {
        worker_id.starts_with(&self.id_prefix())
    }
}

/// Postgres connections each worker process may open: several test fleets share one
/// Postgres (100 connections by default).
const WORKER_PROCESS_CONNECTIONS: &str = "6";

impl TestApp {
    /// Starts `turnq worker --host {host} --queues default {extra…}` as a separate
    /// process against this app's database, Redis and prefix. Its log (RUST_LOG=warn)
    /// goes to the test's stderr, shown when the test fails.
    pub fn worker_process(&self, host: &str, extra: &[&str]) -> Result<WorkerProcess> {
        let mut command = Command::new(turnq_bin()?);
        command
            .args(["worker", "--host", host, "--queues", "default"])
            .args(extra)
            .env("DATABASE_URL", self.test_db.url.expose())
            .env("TURNQ_DATABASE_MAX_CONNECTIONS", WORKER_PROCESS_CONNECTIONS)
            .env("REDIS_URL", &self.redis.url)
            .env("TURNQ_REDIS_PREFIX", self.redis.names.prefix())
            .env("RUST_LOG", "warn")
            // Plain text in the captured test output.
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        let process = ChildProcess::spawn(format!("turnq worker {host}"), &mut command)?;
        Ok(WorkerProcess {
            host: host.to_owned(),
            process,
        })
    }
}

/// A Redis server of the test's own, for faults that must not touch the shared one
/// (FLUSHALL, restarts): no persistence, killed on drop.
pub struct PrivateRedis {
    pub port: u16,
    process: ChildProcess,
}

impl PrivateRedis {
    /// Starts `redis-server` on a free port and waits until it answers.
    pub async fn start() -> Result<PrivateRedis> {
        // Bind port 0 to learn a free port, then release it for redis-server. Another
        // process could take it in between; redis-server would then fail to start and
        // `wait_ready` says so.
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        Self::start_on(port).await
    }

    async fn start_on(port: u16) -> Result<PrivateRedis> {
        let mut command = Command::new("redis-server");
        command
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--loglevel", "warning"])
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        let process = ChildProcess::spawn(format!("redis-server :{port}"), &mut command)
            .context("the fault tests need redis-server on the PATH")?;
        let mut redis = PrivateRedis { port, process };
        redis.wait_ready().await?;
        Ok(redis)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn wait_ready(&mut self) -> Result<()> {
        let url = self.url();
        let started = Instant::now();
        loop {
            if let Some(status) = self.process.exited()? {
                bail!("{} exited at start: {status}", self.process.name());
            }
            let ping = async {
                let client = redis::Client::open(url.as_str())?;
                let mut conn = client.get_multiplexed_async_connection().await?;
                let pong: String = redis::cmd("PING").query_async(&mut conn).await?;
                anyhow::Ok(pong)
            };
            match ping.await {
                Ok(_) => return Ok(()),
                Err(e) if started.elapsed() > Duration::from_secs(10) => {
                    bail!(
                        "{} does not answer PING after 10s: {e:#}",
                        self.process.name()
                    )
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    /// Runs one command on this server.
    pub async fn command(&self, cmd: &str) -> Result<String> {
        let client = redis::Client::open(self.url().as_str())?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        Ok(redis::cmd(cmd).query_async(&mut conn).await?)
    }

    /// `kill -9` the server and start a new, empty one on the same port: what a crash
    /// and restart of a Redis without persistence looks like to its clients.
    pub async fn restart(&mut self) -> Result<()> {
        self.process.kill_9()?;
        // redis-server binds with SO_REUSEADDR, so the port is free again at once.
        let fresh = Self::start_on(self.port).await?;
        *self = fresh;
        Ok(())
    }
}

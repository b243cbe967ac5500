//! The real app on port 0, on a database and Redis prefix of the test's own, started
//! through `turnq::App` exactly as `turnq up` starts it; and one helper per endpoint.

use std::net::SocketAddr;

use anyhow::{Context, Result, bail};
use clap::Parser;
use sea_orm::{ConnectionTrait, DatabaseConnection};
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use turnq::{
    ApiPart, App, AppConfig, AppError,
    config::{DatabaseArgs, RedisArgs},
};
use turnq_api::ApiConfig;
use turnq_testkit::{TestDb, TestRedis, eventually, redis_url, within};

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
/// `extra` may set `--concurrency` (default 32 here).
pub fn worker_config(extra: &[&str]) -> turnq_worker::WorkerConfig {
    let concurrency = if extra.contains(&"--concurrency") {
        &[][..]
    } else {
        &["--concurrency", "32"][..]
    };
    let mut args = vec!["worker"];
    args.extend_from_slice(concurrency);
    args.extend_from_slice(&[
        "--poll-interval",
        "20ms",
        "--output-flush",
        "50ms",
        "--shutdown-grace",
        "5s",
    ]);
    args.extend_from_slice(extra);
    WorkerFlags::try_parse_from(args)
        .expect("the test worker flags parse")
        .config
}

/// The app's settings on the test's database and prefix: an API on port 0 and its
/// dispatcher when `api`, no worker pool.
fn config(db: &TestDb, redis: &TestRedis, api: bool) -> AppConfig {
    AppConfig {
        database: DatabaseArgs {
            database_url: db.url.parse().expect("the kit's URL is a postgres:// URL"),
            database_max_connections: 10,
        },
        redis: RedisArgs {
            redis_url: redis.url.clone(),
            redis_prefix: redis.prefix.clone(),
        },
        prepare_database: false,
        api: api.then(|| ApiPart {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            api: ApiConfig::default(),
            dispatcher: dispatcher_config(),
        }),
        worker: None,
        metrics_listen: None,
    }
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
    /// A pool of the test's own on the app's database.
    pub db: DatabaseConnection,
    pub redis: TestRedis,
    token: String,
    shutdown: CancellationToken,
    /// The running apps: the first with the API and dispatcher, then any worker pools
    /// started in process.
    apps: Vec<JoinHandle<Result<(), AppError>>>,
    // Last, so the database is dropped after everything that uses it has stopped.
    pub test_db: TestDb,
}

impl TestApp {
    /// API, dispatcher and one worker pool.
    pub async fn spawn() -> Result<TestApp> {
        Self::spawn_with(true, &redis_url(), ApiConfig::default()).await
    }

    /// API and dispatcher with the API settings `api`; no worker pool.
    pub async fn spawn_with_api(api: ApiConfig) -> Result<TestApp> {
        Self::spawn_with(false, &redis_url(), api).await
    }

    /// API and dispatcher only: tasks stay queued until a worker is started.
    pub async fn spawn_without_workers() -> Result<TestApp> {
        Self::spawn_with(false, &redis_url(), ApiConfig::default()).await
    }

    /// API and dispatcher only, delivering through the Redis at `redis_url` (a test's
    /// private server, for tests that flush or restart it).
    pub async fn spawn_without_workers_on(redis_url: &str) -> Result<TestApp> {
        Self::spawn_with(false, redis_url, ApiConfig::default()).await
    }

    /// API, dispatcher and one worker pool on `test_db`, connecting with
    /// `database_url` (another role on it, say) instead of the kit's own URL.
    pub async fn spawn_in_as(test_db: TestDb, database_url: &str) -> Result<TestApp> {
        Self::spawn_in(
            test_db,
            Some(database_url),
            true,
            &redis_url(),
            ApiConfig::default(),
        )
        .await
    }

    async fn spawn_with(workers: bool, redis_url: &str, api: ApiConfig) -> Result<TestApp> {
        Self::spawn_in(TestDb::new().await?, None, workers, redis_url, api).await
    }

    async fn spawn_in(
        test_db: TestDb,
        database_url: Option<&str>,
        workers: bool,
        redis_url: &str,
        api: ApiConfig,
    ) -> Result<TestApp> {
        let redis = TestRedis::on(redis_url, "turnq-test");
        let db = test_db.db.clone();
        let token = admin_token(&db).await?;
        let mut config = config(&test_db, &redis, true);
        if let Some(url) = database_url {
            config.database.database_url = url.parse().map_err(anyhow::Error::msg)?;
        }
        if let Some(part) = config.api.as_mut() {
            part.api = api;
        }
        let app = App::build(AppConfig {
            worker: workers.then(|| worker_config(&[])),
            ..config
        })
        .await
        .context("building the app")?;
        let addr: SocketAddr = app.api_addr().context("the test app runs an API")?;
        let shutdown = CancellationToken::new();
        let apps = vec![tokio::spawn(app.run(shutdown.clone()))];
        Ok(TestApp {
            base: format!("http://{addr}"),
            http: client_with_token(&token)?,
            db,
            redis,
            token,
            shutdown,
            apps,
            test_db,
        })
    }

    /// The admin token the app's client sends, for requests built by hand.
    #[allow(
        dead_code,
        reason = "for tests that build requests by hand (the auth tests)"
    )]
    pub fn token(&self) -> &str {
        &self.token
    }

    /// Starts another in-process worker pool, through the app as `turnq worker` does.
    pub async fn start_worker(&mut self, extra: &[&str]) -> Result<()> {
        let app = App::build(AppConfig {
            worker: Some(worker_config(extra)),
            ..config(&self.test_db, &self.redis, false)
        })
        .await
        .context("building a worker pool")?;
        self.apps.push(tokio::spawn(app.run(self.shutdown.clone())));
        Ok(())
    }

    /// Starts another in-process worker pool that the test can stop on its own (a host
    /// that goes away), while the rest of the app runs on.
    pub async fn start_stoppable_worker(&mut self, extra: &[&str]) -> Result<StoppableWorker> {
        let app = App::build(AppConfig {
            worker: Some(worker_config(extra)),
            ..config(&self.test_db, &self.redis, false)
        })
        .await
        .context("building a worker pool")?;
        let token = self.shutdown.child_token();
        let task = tokio::spawn(app.run(token.clone()));
        Ok(StoppableWorker { token, task })
    }

    /// Runs the real `turnq` binary against this app (its API, token and database);
    /// returns the exit code, stdout and stderr.
    pub fn cli(&self, args: &[&str]) -> Result<(i32, String, String)> {
        let output = std::process::Command::new(crate::turnq_bin()?)
            .args(args)
            .env("DATABASE_URL", &self.test_db.url)
            .env("TURNQ_API_URL", &self.base)
            .env("TURNQ_TOKEN", &self.token)
            .env("TURNQ_TOKEN_FILE", "/nonexistent/turnq-token")
            .env("RUST_LOG", "warn")
            .output()?;
        Ok((
            output.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        ))
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

    /// `POST /v1/arenas`, expecting 201; returns the arena.
    pub async fn create_arena(&self, body: Value) -> Result<Value> {
        let (status, arena) = self.post("/v1/arenas", &body).await?;
        if status != 201 {
            bail!("POST /v1/arenas answered {status}: {arena}");
        }
        Ok(arena)
    }

    /// `GET /v1/arenas/{id}`, expecting 200.
    pub async fn arena(&self, id: &str) -> Result<Value> {
        let (status, arena) = self.get(&format!("/v1/arenas/{id}")).await?;
        if status != 200 {
            bail!("GET arena answered {status}: {arena}");
        }
        Ok(arena)
    }

    /// Waits until every contestant of the arena has ended; returns the arena.
    pub async fn wait_for_arena_to_end(&self, id: &str) -> Result<Value> {
        eventually(format!("every contestant of arena {id} ends"), || async {
            let arena = self.arena(id).await?;
            if arena["ended"] == true {
                Ok(arena)
            } else {
                let states: Vec<&Value> = arena["contestants"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|c| &c["state"])
                    .collect();
                bail!("contestants are {states:?}")
            }
        })
        .await
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
    pub async fn wait_for_state(&self, id: &str, state: &str) -> Result<Value> {
        eventually(format!("task {id} is {state}"), || async {
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

    /// Stops the app's API, dispatcher and workers, and waits until every one of their
    /// tasks has ended; an app that stopped with an error fails the test.
    pub async fn stop(mut self) -> Result<()> {
        self.shutdown.cancel();
        for app in self.apps.drain(..) {
            within("the app stops", app)
                .await?
                .context("the app task panicked")?
                .context("the app stopped with an error")?;
        }
        Ok(())
    }
}

/// A worker pool started with [`TestApp::start_stoppable_worker`].
pub struct StoppableWorker {
    token: CancellationToken,
    task: JoinHandle<Result<(), AppError>>,
}

impl StoppableWorker {
    /// Stops it gracefully and waits until it has.
    pub async fn stop(self) -> Result<()> {
        self.token.cancel();
        within("the worker pool stops", self.task)
            .await?
            .context("the worker pool panicked")?
            .context("the worker pool stopped with an error")
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

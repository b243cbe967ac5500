//! Processes of the test's own: the real `turnq` binary (workers, `turnq up`), and
//! private Redis servers for faults that must not touch the shared one. Each is killed
//! and reaped on drop, so a failing test leaves nothing running.

use std::{
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    sync::OnceLock,
};

use anyhow::{Context, Result};
use serde_json::Value;
use turnq_testkit::eventually;

use crate::TestApp;

/// The `turnq` binary, built once per test process (cargo builds test binaries, not
/// the workspace's binaries, before running tests).
pub fn turnq_bin() -> Result<PathBuf> {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| {
        let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .map(PathBuf::from)
            .ok_or("the tests crate sits inside the workspace")?;
        // The test process inherits the variables cargo sets for the tests crate
        // (CARGO_PKG_NAME, CARGO_MANIFEST_DIR, …). Build scripts watch some of them
        // (ring reruns when CARGO_PKG_NAME changes): passed on, they would make this
        // build and the suite's own rebuild the world in turn. So cargo runs here with
        // the environment a developer's shell gives it.
        let mut cargo = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy();
            let set_by_cargo = name.starts_with("CARGO_")
                && !matches!(name.as_ref(), "CARGO_HOME" | "CARGO_TARGET_DIR");
            if set_by_cargo {
                cargo.env_remove(name.as_ref());
            }
        }
        let output = cargo
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
        // Not yet reaped, so the pid is still this child's.
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.pid())?);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)
            .with_context(|| format!("kill -TERM {}", self.name))
    }

    /// Waits for the process to exit on its own.
    pub async fn wait_exit(&mut self) -> Result<ExitStatus> {
        let (name, pid) = (self.name.clone(), self.pid());
        let child = &mut self.child;
        eventually(format!("{name} (pid {pid}) exits"), || {
            let exited = child.try_wait();
            async move {
                match exited {
                    Ok(Some(status)) => Ok(status),
                    Ok(None) => Err("it still runs".to_owned()),
                    Err(e) => Err(e.to_string()),
                }
            }
        })
        .await
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
            .env("DATABASE_URL", &self.test_db.url)
            .env("TURNQ_DATABASE_MAX_CONNECTIONS", WORKER_PROCESS_CONNECTIONS)
            .env("REDIS_URL", &self.redis.url)
            .env("TURNQ_REDIS_PREFIX", &self.redis.prefix)
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

impl TestApp {
    /// Starts `turnq api --listen 127.0.0.1:{port} {extra…}` as a separate process
    /// against this app's database, Redis and prefix: a second API replica, one a test
    /// can kill.
    pub fn api_process(&self, port: u16, extra: &[&str]) -> Result<ChildProcess> {
        let mut command = Command::new(turnq_bin()?);
        command
            .args(["api", "--listen", &format!("127.0.0.1:{port}")])
            .args(extra)
            .env("DATABASE_URL", &self.test_db.url)
            .env("TURNQ_DATABASE_MAX_CONNECTIONS", WORKER_PROCESS_CONNECTIONS)
            .env("REDIS_URL", &self.redis.url)
            .env("TURNQ_REDIS_PREFIX", &self.redis.prefix)
            .env("RUST_LOG", "warn")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        ChildProcess::spawn(format!("turnq api :{port}"), &mut command)
    }
}

/// A free TCP port on 127.0.0.1 (another process could take it before it is used; the
/// process that then fails to listen says so).
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
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
        Self::start_on(free_port()?).await
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
        let name = self.process.name().to_owned();
        let process = &mut self.process;
        eventually(format!("{name} answers PING"), || {
            let exited = process.exited();
            let url = url.clone();
            async move {
                if let Some(status) = exited.map_err(|e| format!("{e:#}"))? {
                    // Not worth waiting for: fail at once, through the error.
                    return Err(format!("it exited at start: {status}"));
                }
                let client = redis::Client::open(url.as_str()).map_err(|e| e.to_string())?;
                let mut conn = client
                    .get_multiplexed_async_connection()
                    .await
                    .map_err(|e| e.to_string())?;
                redis::cmd("PING")
                    .query_async::<String>(&mut conn)
                    .await
                    .map_err(|e| e.to_string())
            }
        })
        .await
        .map(drop)
    }

    /// Runs one command on this server.
    pub async fn command(&self, cmd: &str) -> Result<String> {
        let mut conn = turnq_testkit::redis::connect(&self.url()).await?;
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

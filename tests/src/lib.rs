//! turnq-tests: the black-box tests of turnq (in `tests/it/`, one integration binary)
//! and the upper half of the one test kit they use.
//!
//! # Layout
//!
//! - [`app`]: [`TestApp`], the real app on port 0 started through `turnq::App` (the
//!   assembly `turnq up` runs), on a database and Redis prefix of the test's own, with
//!   one helper per endpoint.
//! - [`browser`]: a headless Chromium driven through chromedriver, for the UI tests.
//! - [`repos`]: real git repositories in a scratch directory, for the workspace tests.
//! - [`process`]: the real `turnq` binary as child processes (`turnq worker`, `turnq
//!   up`), and private Redis servers for faults that must not touch the shared one.
//! - The lower half, [`turnq_testkit`], re-exported here: a database per test from a
//!   migrated template, a Redis prefix per test, and `eventually` / `within`, bounded by
//!   the one CI-scaled [`patience`]. A test waits for the event that proves what it
//!   checks, never for a fixed time.

pub mod app;
pub mod browser;
pub mod process;
pub mod repos;

pub use app::{StoppableWorker, TestApp, count, dispatcher_config, worker_config};
pub use process::{ChildProcess, PrivateRedis, WorkerProcess, free_port, turnq_bin};
pub use turnq_testkit::{
    TestDb, TestRedis, env::admin_database_url as admin_url, eventually, patience, redis_url,
    within,
};

/// The administration database of the test Postgres server, as a URL string.
pub fn admin_database_url() -> String {
    admin_url().into()
}

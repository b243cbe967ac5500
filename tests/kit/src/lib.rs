//! turnq-testkit: the one test kit of the workspace.
//!
//! # Layout
//!
//! - [`mod@env`]: where the test services are (`TURNQ_TEST_ADMIN_DATABASE_URL`,
//!   `TURNQ_TEST_REDIS_URL`, defaulting to the local Postgres and Redis) and the one
//!   CI-scaled [`patience`] every wait in a test is bounded by.
//! - [`wait`]: [`eventually`] and [`within`]: a test waits for the event that proves
//!   something, never for a fixed time.
//! - [`db`]: [`TestDb`], a Postgres database of the test's own, cloned from a migrated
//!   template that is built once per migration set (under an advisory lock: nextest runs
//!   each test in a process of its own), dropped afterwards.
//! - [`redis`]: [`TestRedis`], a Redis key prefix of the test's own, whose keys are
//!   deleted (SCAN + UNLINK, never FLUSHDB) afterwards.
//!
//! The kit knows no turnq type, only `migration`: `turnq-core` and `turnq-worker` use it
//! in their own tests, so it must sit below them. Starting the whole app on port 0
//! (`TestApp`) is the kit's upper half, in `turnq-tests`, which starts it through the
//! same `App` the binary runs. `turnq bench` uses [`TestDb`] and [`TestRedis`] too: it
//! measures on throwaway state in the same way.

pub mod cleanup;
pub mod db;
pub mod env;
pub mod redis;
pub mod wait;

pub use db::TestDb;
pub use env::{patience, redis_url};
pub use redis::TestRedis;
pub use wait::{eventually, within};

//! Where the test services are, and how long a test may wait for anything.

use std::{sync::OnceLock, time::Duration};

/// The longest a test waits for something that should happen, on a developer machine.
const PATIENCE: Duration = Duration::from_secs(30);
/// How much longer a CI machine may take (`CI=true`): it runs the suite on two busy
/// cores.
const CI_SCALE: f64 = 2.0;

/// The one timeout of the test suite: how long a test waits for an event before it
/// fails. 30 s scaled by `TURNQ_TEST_PATIENCE_SCALE` (a factor, e.g. `4` on a
/// very slow machine), else by 2 when `CI=true`.
///
/// It bounds waits for what must happen; it is never a proof that something did not
/// happen (a test waits for the event that shows it instead), so a slow machine can
/// only make a test slower, never make a negative test pass vacuously.
pub fn patience() -> Duration {
    static SCALED: OnceLock<Duration> = OnceLock::new();
    *SCALED.get_or_init(|| {
        let scale = std::env::var("TURNQ_TEST_PATIENCE_SCALE")
            .ok()
            .and_then(|s| s.parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s > 0.0)
            .unwrap_or(if std::env::var("CI").is_ok_and(|v| v == "true") {
                CI_SCALE
            } else {
                1.0
            });
        PATIENCE.mul_f64(scale)
    })
}

/// A database on the test Postgres server for administration (creating and dropping
/// the tests' databases): `TURNQ_TEST_ADMIN_DATABASE_URL`, default
/// `postgres://postgres@127.0.0.1:5432/postgres`. The role must be allowed to create
/// databases.
pub fn admin_database_url() -> url::Url {
    let raw = std::env::var("TURNQ_TEST_ADMIN_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    url::Url::parse(&raw).unwrap_or_else(|e| {
        panic!("TURNQ_TEST_ADMIN_DATABASE_URL={raw:?} is not a URL ({e}); e.g. postgres://postgres@127.0.0.1:5432/postgres")
    })
}

/// The URL of database `name` on the test server.
pub fn database_url(name: &str) -> String {
    let mut url = admin_database_url();
    url.set_path(name);
    url.into()
}

/// The Redis the tests use: `TURNQ_TEST_REDIS_URL`, default `redis://127.0.0.1:6379`.
pub fn redis_url() -> String {
    std::env::var("TURNQ_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

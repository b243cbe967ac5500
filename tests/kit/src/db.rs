//! A Postgres database per test, cloned from a migrated template.
//!
//! A database, not a schema, per test: NOTIFY channels are per database, and a test
//! that takes Postgres away (`ALLOW_CONNECTIONS false`) must only take its own.

use anyhow::{Context, Result};
use migration::MigratorTrait;
use sea_orm::{ConnectOptions, ConnectionTrait, Database, DatabaseConnection, Statement};

use crate::{cleanup, env};

/// The advisory lock that serialises building the template across test processes.
const TEMPLATE_LOCK: i64 = 7215;
/// Connections of a test's own pool ([`TestDb::db`]); the app under test opens its own.
const POOL: u32 = 10;

/// A migrated database of the test's own, dropped (`WITH (FORCE)`) when the value is.
pub struct TestDb {
    /// Its name on the server.
    pub name: String,
    /// Its URL, for the app under test and for child processes.
    pub url: String,
    /// A pool of the test's own on it, for reading and arranging state directly.
    pub db: DatabaseConnection,
    admin_url: String,
    keep: bool,
}

impl TestDb {
    /// A fresh database `turnq_test_…` on the test server.
    pub async fn new() -> Result<TestDb> {
        Self::on(env::admin_database_url(), "turnq_test").await
    }

    /// A fresh database `{prefix}_…` on the server of `admin_url` (any database on it
    /// that the role may connect to).
    pub async fn on(admin_url: url::Url, prefix: &str) -> Result<TestDb> {
        let admin = connect(admin_url.as_str(), 1).await.with_context(|| {
            format!(
                "the tests need Postgres at {} (set TURNQ_TEST_ADMIN_DATABASE_URL), with a role that may create databases",
                redacted(&admin_url)
            )
        })?;
        let template = ensure_template(&admin, &admin_url).await?;
        let name = format!(
            "{prefix}_{}",
            &uuid::Uuid::new_v4().simple().to_string()[..16]
        );
        admin
            .execute_unprepared(&format!(
                "CREATE DATABASE \"{name}\" TEMPLATE \"{template}\""
            ))
            .await
            .with_context(|| format!("creating database {name} from {template}"))?;
        admin.close().await?;
        let url = with_database(&admin_url, &name);
        let db = connect(&url, POOL).await?;
        Ok(TestDb {
            name,
            url,
            db,
            admin_url: admin_url.into(),
            keep: false,
        })
    }

    /// Leaves the database in place when this value is dropped (`turnq bench --keep`).
    pub fn keep(&mut self) {
        self.keep = true;
    }

    /// Runs `sql` on the server's administration database (e.g. to take this database
    /// away from its clients); returns the number of rows it produced.
    pub async fn admin(&self, sql: &str) -> Result<usize> {
        let admin = connect(&self.admin_url, 1).await?;
        let rows = admin
            .query_all_raw(Statement::from_string(admin.get_database_backend(), sql))
            .await
            .with_context(|| format!("running {sql:?} on the administration database"))?;
        admin.close().await?;
        Ok(rows.len())
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        cleanup::run_blocking(format!("dropping database {name}"), async move {
            let admin = connect(&admin_url, 1).await?;
            admin
                .execute_unprepared(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                .await?;
            admin.close().await?;
            anyhow::Ok(())
        });
    }
}

async fn connect(url: &str, max_connections: u32) -> Result<DatabaseConnection> {
    let mut options = ConnectOptions::new(url);
    options
        .max_connections(max_connections)
        .min_connections(0)
        .sqlx_logging(false);
    Ok(Database::connect(options).await?)
}

fn with_database(server: &url::Url, name: &str) -> String {
    let mut url = server.clone();
    url.set_path(name);
    url.into()
}

fn redacted(url: &url::Url) -> String {
    let mut url = url.clone();
    if url.password().is_some() {
        let _ = url.set_password(Some("***"));
    }
    url.into()
}

/// The template's name changes with the migrations' source ([`migration::SOURCE_HASH`]),
/// so a new or edited migration gets a new template instead of a stale one.
fn template_name() -> String {
    format!("turnq_template_{}", migration::SOURCE_HASH)
}

/// Creates the migrated template once per server and migration set. nextest runs every
/// test in its own process, so a Postgres advisory lock (not a mutex) guards it; it is
/// built under another name and renamed, so a half-built template is never cloned.
async fn ensure_template(admin: &DatabaseConnection, admin_url: &url::Url) -> Result<String> {
    let name = template_name();
    admin
        .execute_unprepared(&format!("SELECT pg_advisory_lock({TEMPLATE_LOCK})"))
        .await?;
    let built = async {
        let exists = admin
            .query_one_raw(Statement::from_sql_and_values(
                admin.get_database_backend(),
                "SELECT 1 FROM pg_database WHERE datname = $1",
                [name.clone().into()],
            ))
            .await?
            .is_some();
        if !exists {
            let building = format!("{name}_building");
            admin
                .execute_unprepared(&format!(
                    "DROP DATABASE IF EXISTS \"{building}\" WITH (FORCE)"
                ))
                .await?;
            admin
                .execute_unprepared(&format!("CREATE DATABASE \"{building}\""))
                .await?;
            let db = connect(&with_database(admin_url, &building), 1).await?;
            migration::Migrator::up(&db, None)
                .await
                .context("migrating the test template")?;
            db.close().await?;
            admin
                .execute_unprepared(&format!(
                    "ALTER DATABASE \"{building}\" RENAME TO \"{name}\""
                ))
                .await?;
        }
        anyhow::Ok(())
    }
    .await;
    admin
        .execute_unprepared(&format!("SELECT pg_advisory_unlock({TEMPLATE_LOCK})"))
        .await?;
    built?;
    Ok(name)
}

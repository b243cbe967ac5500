//! A Postgres database of its own for one test: created on the server the workspace's
//! tests use (`$TURNQ_TEST_ADMIN_DATABASE_URL`, else
//! `postgres://postgres@127.0.0.1:5432/postgres`), migrated, and dropped `WITH (FORCE)`
//! when the guard goes, even after a failed assertion. A database per test, not a
//! schema: NOTIFY channels are per database.

use migration::MigratorTrait;
use sea_orm::{ConnectionTrait, Database, DatabaseConnection, Statement};
use turnq_core::db::DatabaseUrl;

pub(crate) struct TestDb {
    pub(crate) name: String,
    pub(crate) db: DatabaseConnection,
    admin_url: DatabaseUrl,
}

fn admin_url() -> DatabaseUrl {
    std::env::var("TURNQ_TEST_ADMIN_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
        .parse()
        .expect("a postgres:// URL in TURNQ_TEST_ADMIN_DATABASE_URL")
}

impl TestDb {
    pub(crate) async fn create() -> TestDb {
        let admin_url = admin_url();
        let name = format!(
            "turnq_worker_test_{}",
            &uuid::Uuid::new_v4().simple().to_string()[..16]
        );
        let admin = Database::connect(admin_url.expose()).await.unwrap_or_else(|e| {
            panic!("these tests need Postgres at {admin_url} (set TURNQ_TEST_ADMIN_DATABASE_URL): {e}")
        });
        admin
            .execute_unprepared(&format!("CREATE DATABASE \"{name}\""))
            .await
            .expect("creating the test database");
        admin.close().await.ok();
        let db = turnq_core::db::connect(&admin_url.with_database(&name), 8)
            .await
            .expect("connecting to the test database");
        migration::Migrator::up(&db, None)
            .await
            .expect("migrating the test database");
        TestDb {
            name,
            db,
            admin_url,
        }
    }

    /// Runs `sql` on the server's admin database; returns the number of rows.
    pub(crate) async fn admin_rows(&self, sql: &str) -> usize {
        let admin = Database::connect(self.admin_url.expose())
            .await
            .expect("connecting to the admin database");
        let rows = admin
            .query_all_raw(Statement::from_string(admin.get_database_backend(), sql))
            .await
            .expect("running an admin query");
        admin.close().await.ok();
        rows.len()
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let (url, name) = (self.admin_url.clone(), self.name.clone());
        // Drop runs outside any runtime (or inside one that cannot block): use a
        // thread with its own.
        let dropped = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime to drop the test database")
                .block_on(async move {
                    let admin = Database::connect(url.expose()).await?;
                    admin
                        .execute_unprepared(&format!(
                            "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
                        ))
                        .await?;
                    admin.close().await
                })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop test database {}: {dropped:?}", self.name);
        }
    }
}

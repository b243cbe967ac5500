//! Connecting to Postgres.

use std::{fmt, str::FromStr, time::Duration};

use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbErr, RuntimeErr,
    sea_query::{Expr, ExprTrait, Query},
};

/// A Postgres URL. It may hold a password, so `Debug` and `Display` hide it.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl(url::Url);

impl DatabaseUrl {
    /// The URL with its password, to hand to the driver and nothing else.
    pub fn expose(&self) -> &str {
        self.0.as_str()
    }

    /// The name of the database the URL points at (its path, as written in the URL).
    pub fn database_name(&self) -> Option<&str> {
        self.0
            .path()
            .strip_prefix('/')
            .filter(|name| !name.is_empty())
    }

    /// The server and database the URL names, as a file name: `host_port_database`
    /// (no role, no password), so each database keeps a file of its own.
    pub fn file_slug(&self) -> String {
        let text = format!(
            "{}_{}_{}",
            self.0.host_str().unwrap_or("local"),
            self.0.port().unwrap_or(5432),
            self.database_name().unwrap_or("postgres")
        );
        text.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    }

    /// The same server, another database.
    pub fn with_database(&self, name: &str) -> DatabaseUrl {
        let mut url = self.0.clone();
        url.set_path(name);
        DatabaseUrl(url)
    }

    fn redacted(&self) -> url::Url {
        let mut url = self.0.clone();
        if url.password().is_some() {
            // Cannot fail: a URL with a password has a host to hold it.
            let _ = url.set_password(Some("***"));
        }
        url
    }
}

impl FromStr for DatabaseUrl {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        const EXAMPLE: &str = "e.g. postgres://postgres@127.0.0.1:5432/turnq";
        let url = url::Url::parse(s).map_err(|e| format!("not a URL ({e}); {EXAMPLE}"))?;
        if matches!(url.scheme(), "postgres" | "postgresql") && url.has_authority() {
            Ok(DatabaseUrl(url))
        } else {
            Err(format!(
                "a Postgres URL starts with postgres:// ({EXAMPLE})"
            ))
        }
    }
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.redacted().as_str())
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DatabaseUrl({})", self.redacted())
    }
}

/// Postgres could not be reached or refused us; the message says where, why and what
/// to do: a server that does not answer, a role it refuses and a database that does not
/// exist are three different problems.
#[derive(Debug, thiserror::Error)]
#[error("{}", self.explain())]
pub struct ConnectError {
    pub url: DatabaseUrl,
    #[source]
    pub source: DbErr,
}

impl ConnectError {
    fn explain(&self) -> String {
        let url = &self.url;
        match sqlstate(&self.source).as_deref() {
            // invalid_password, invalid_authorization_specification (no such role).
            Some("28P01" | "28000") => format!(
                "Postgres at {url} refused the login: check the user (and password) of the URL \
                 (--database-url or DATABASE_URL)"
            ),
            Some("3D000") => format!(
                "the database of {url} does not exist: `turnq up` or `turnq migrate up` \
                 creates it (with a role allowed to create databases)"
            ),
            Some("42501") => format!(
                "the role of {url} lacks a privilege this needs (for a new database: CREATEDB)"
            ),
            _ => format!(
                "cannot connect to Postgres at {url}: is it running? (on a Debian host: \
                 pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start)"
            ),
        }
    }
}

/// The SQLSTATE Postgres answered with, if the error is one of its answers.
fn sqlstate(e: &DbErr) -> Option<String> {
    let inner = match e {
        DbErr::Conn(RuntimeErr::SqlxError(inner))
        | DbErr::Query(RuntimeErr::SqlxError(inner))
        | DbErr::Exec(RuntimeErr::SqlxError(inner)) => inner,
        _ => return None,
    };
    match inner.as_ref() {
        sea_orm::sqlx::Error::Database(db) => db.code().map(|c| c.into_owned()),
        _ => None,
    }
}

/// The most parameter bytes one multi-row statement carries; bulk writes are split into
/// statements of about this size.
///
/// sqlx 0.9.0 no longer sets `TCP_NODELAY` on its sockets (sqlx issue #4335, fixed
/// upstream but not released). A message larger than the socket's send buffer (16 KiB
/// on a new Linux connection) then goes out in two writes, and Nagle's algorithm holds
/// the second until Postgres acknowledges the first, which it delays by 40 ms: a bulk
/// insert of 100 session entries took 48 ms over TCP and 4 ms over a Unix socket. Kept
/// below that size, each statement leaves in one write and never waits.
pub const MAX_STATEMENT_BYTES: usize = 12 * 1024;

/// Splits `items` into runs whose `bytes` add up to at most [`MAX_STATEMENT_BYTES`]
/// (an item larger than that on its own gets a run of its own), in order.
pub fn statement_chunks<T>(items: Vec<T>, bytes: impl Fn(&T) -> usize) -> Vec<Vec<T>> {
    let mut chunks = Vec::new();
    let mut current = Vec::new();
    let mut size = 0;
    for item in items {
        let n = bytes(&item);
        if !current.is_empty() && size + n > MAX_STATEMENT_BYTES {
            chunks.push(std::mem::take(&mut current));
            size = 0;
        }
        size += n;
        current.push(item);
    }
    if !current.is_empty() {
        chunks.push(current);
    }
    chunks
}

/// The size of `value` as JSON text, which is about what it takes as a parameter.
/// Counted as it is written, without building the text.
pub fn json_bytes(value: &serde_json::Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0 += bytes.len();
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    serde_json::to_writer(&mut count, value).map_or(0, |()| count.0)
}

/// Opens a pool of at most `max_connections` to `url`.
pub async fn connect(
    url: &DatabaseUrl,
    max_connections: u32,
) -> Result<DatabaseConnection, ConnectError> {
    let mut options = ConnectOptions::new(url.expose());
    options
        .max_connections(max_connections)
        .min_connections(1)
        .connect_timeout(Duration::from_secs(5))
        .acquire_timeout(Duration::from_secs(5))
        .sqlx_logging(false)
        // sqlx keeps each statement prepared per connection, and Postgres switches a
        // prepared statement to a generic plan after five runs. A generic plan chosen
        // while `tasks` was small (a fresh deployment, or after a purge) stays a
        // sequential scan as the table grows: every claim then reads the whole table.
        // Custom plans cost a little planning per statement and always use the indexes.
        .map_sqlx_postgres_opts(|pg| pg.options([("plan_cache_mode", "force_custom_plan")]));
    Database::connect(options)
        .await
        .map_err(|source| ConnectError {
            url: url.clone(),
            source,
        })
}

/// Creates the database `url` names if it does not exist yet (`turnq up` on a fresh
/// machine). Needs a role allowed to create databases.
pub async fn ensure_database(url: &DatabaseUrl) -> Result<(), ConnectError> {
    let Some(name) = url.database_name() else {
        return Ok(());
    };
    let admin_url = url.with_database("postgres");
    let admin = connect(&admin_url, 1).await?;
    let error = |source| ConnectError {
        url: admin_url.clone(),
        source,
    };
    let exists = admin
        .query_one(
            &Query::select()
                .column("datname")
                .from("pg_database")
                .and_where(Expr::col("datname").eq(name))
                .take(),
        )
        .await
        .map_err(error)?
        .is_some();
    if !exists {
        // Raw SQL: sea-query has no CREATE DATABASE.
        let quoted = format!("\"{}\"", name.replace('"', "\"\""));
        match admin
            .execute_unprepared(&format!("CREATE DATABASE {quoted}"))
            .await
        {
            Ok(_) => tracing::info!(database = name, "created the database"),
            // Another process created it between our check and our CREATE.
            Err(e) if e.to_string().contains("already exists") => {}
            Err(e) => return Err(error(e)),
        }
    }
    admin.close().await.map_err(error)?;
    Ok(())
}

/// True when Postgres refused a statement for a reason that trying again cannot mend:
/// the data itself (class 22, data exception; 23, an integrity constraint other than a
/// unique one, which another row may stop holding; 54, a program limit such as an index
/// row too large). Not a connection error, a deadlock, a serialization failure or a lack
/// of resources, which pass.
pub fn is_permanent_refusal(e: &DbErr) -> bool {
    sqlstate(e).is_some_and(|code| {
        (code.starts_with("22") || code.starts_with("23") || code.starts_with("54"))
            && code != "23505"
    })
}

/// True when `e` says Postgres could not be reached, rather than refusing a query.
pub fn is_connection_error(e: &DbErr) -> bool {
    match e {
        DbErr::Conn(_) | DbErr::ConnectionAcquire(_) => true,
        DbErr::Query(RuntimeErr::SqlxError(inner)) | DbErr::Exec(RuntimeErr::SqlxError(inner)) => {
            match inner.as_ref() {
                sea_orm::sqlx::Error::Io(_)
                | sea_orm::sqlx::Error::PoolTimedOut
                | sea_orm::sqlx::Error::PoolClosed
                | sea_orm::sqlx::Error::WorkerCrashed => true,
                // Class 08 is "connection exception"; 57P01-57P03 are the server shutting
                // down or starting; 3D000 is the database having been dropped under us.
                sea_orm::sqlx::Error::Database(db) => db.code().is_some_and(|code| {
                    code.starts_with("08")
                        || matches!(code.as_ref(), "57P01" | "57P02" | "57P03" | "3D000")
                }),
                _ => false,
            }
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bulk_writes_split_by_size_in_order_and_never_drop_an_item() {
        let sizes = vec![5000, 5000, 5000, 20_000, 1, 1, 12 * 1024];
        let chunks = statement_chunks(sizes.clone(), |n| *n);
        assert_eq!(
            chunks,
            vec![
                vec![5000, 5000],
                vec![5000],
                vec![20_000],
                vec![1, 1],
                vec![12 * 1024]
            ]
        );
        assert_eq!(chunks.concat(), sizes);
        assert!(statement_chunks(Vec::<usize>::new(), |n| *n).is_empty());
    }

    #[test]
    fn json_is_measured_as_its_text() {
        let value = serde_json::json!({"a": [1, "two", null], "b": "é\n"});
        assert_eq!(
            json_bytes(&value),
            serde_json::to_vec(&value).unwrap().len()
        );
    }

    #[tokio::test]
    async fn connect_errors_tell_a_missing_database_and_a_refused_role_from_a_stopped_server() {
        let base = turnq_testkit::env::admin_database_url();
        let with = |user: &str, db: &str| -> DatabaseUrl {
            let mut url = base.clone();
            let _ = url.set_username(user);
            url.set_path(db);
            url.as_str().parse().unwrap()
        };
        let missing = with(base.username(), "turnq_no_such_database_here");
        let err = connect(&missing, 1).await.unwrap_err().to_string();
        assert!(err.contains("does not exist: `turnq up`"), "{err}");
        let no_role = with("no_such_role_here", "postgres");
        let err = connect(&no_role, 1).await.unwrap_err().to_string();
        assert!(err.contains("refused the login"), "{err}");
        let nowhere: DatabaseUrl = "postgres://postgres@127.0.0.1:1/turnq".parse().unwrap();
        let err = connect(&nowhere, 1).await.unwrap_err().to_string();
        assert!(err.contains("is it running?"), "{err}");
    }

    #[test]
    fn passwords_never_print() {
        let url: DatabaseUrl = "postgres://me:hunter2@db:5432/turnq".parse().unwrap();
        assert_eq!(url.to_string(), "postgres://me:***@db:5432/turnq");
        assert!(!format!("{url:?}").contains("hunter2"));
        assert_eq!(url.expose(), "postgres://me:hunter2@db:5432/turnq");
        let encoded: DatabaseUrl = "postgres://me:p%40ss@[::1]/turnq".parse().unwrap();
        assert_eq!(encoded.to_string(), "postgres://me:***@[::1]/turnq");
        let without = "postgres://me@db/turnq";
        assert_eq!(without.parse::<DatabaseUrl>().unwrap().to_string(), without);
    }

    #[test]
    fn the_database_name_can_be_read_and_swapped() {
        let url: DatabaseUrl = "postgres://postgres@127.0.0.1:5432/turnq?sslmode=disable"
            .parse()
            .unwrap();
        assert_eq!(url.database_name(), Some("turnq"));
        assert_eq!(
            url.with_database("postgres").expose(),
            "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"
        );
        assert!("mysql://x".parse::<DatabaseUrl>().is_err());
        assert!("postgres:turnq".parse::<DatabaseUrl>().is_err());
        assert!(
            "not a url"
                .parse::<DatabaseUrl>()
                .unwrap_err()
                .contains("not a URL")
        );
        let socket: DatabaseUrl = "postgres:///turnq?host=/var/run/postgresql"
            .parse()
            .unwrap();
        assert_eq!(socket.database_name(), Some("turnq"));
        assert_eq!(
            socket.with_database("postgres").expose(),
            "postgres:///postgres?host=/var/run/postgresql"
        );
        let bare: DatabaseUrl = "postgresql://me@db".parse().unwrap();
        assert_eq!(bare.database_name(), None);
        assert_eq!(bare.with_database("x").expose(), "postgresql://me@db/x");
    }

    #[tokio::test]
    async fn a_missing_database_is_created_and_an_existing_one_is_left_alone() -> anyhow::Result<()>
    {
        let t = turnq_testkit::TestDb::new().await?;
        let existing: DatabaseUrl = t.url.parse().map_err(anyhow::Error::msg)?;
        ensure_database(&existing).await?;
        let name = format!("{}_made", t.name);
        let missing = existing.with_database(&name);
        let made = async {
            ensure_database(&missing).await?;
            ensure_database(&missing).await?;
            t.admin(&format!(
                "SELECT 1 FROM pg_database WHERE datname = '{name}'"
            ))
            .await
        }
        .await;
        t.admin(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
            .await?;
        assert_eq!(made?, 1, "created once");
        Ok(())
    }
}

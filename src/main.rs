//! `turnq`: the one binary. The command line and its subcommands; the app they start
//! is assembled in the library (`turnq::App`), the parts live in `turnq-core`,
//! `turnq-api`, `turnq-worker` and `migration`.

mod bench;
mod cli;
mod remote;
mod session;
mod submit;
mod task;
mod token;
mod watch;

use std::{process::ExitCode, time::Duration};

use anyhow::{Context, Result};
use clap::Parser;
use migration::MigratorTrait;
use sea_orm::DatabaseConnection;
use tokio_util::sync::CancellationToken;
use turnq::{
    App, AppConfig,
    app::{connect, migrate_up},
};

use cli::{Cli, Command, LogFormat, MigrateCommand, TokenCommand};

/// mimalloc instead of the system allocator: turnq allocates and frees many small JSON
/// values (events, transcripts), where glibc's malloc spent a fifth of the time of a
/// session load in its free-list upkeep (`turnq bench`, docs/performance.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    if let Err(e) = turnq_core::fault::configure(&cli.failpoints) {
        eprintln!("error: --failpoints: {e}");
        return ExitCode::FAILURE;
    }
    match run(cli.command).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", message(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, skipping a cause whose text the message before
/// it already carries (some driver errors repeat their source in their own text).
fn message(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

fn init_tracing(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new("info,sqlx=warn,sea_orm=warn,sea_orm_migration=warn,apalis=warn,apalis_core=warn,apalis_redis=warn")
    });
    // Colours only for a person at a terminal: a log file or collector gets plain text
    // (and NO_COLOR turns them off everywhere, https://no-color.org).
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

async fn run(command: Command) -> Result<ExitCode> {
    match command {
        Command::Up(args) => {
            let url = args.api.database.database_url.clone();
            let app = App::build(AppConfig::up(args)).await?;
            token::first_start_admin_token(app.db(), &url).await?;
            if let Some(addr) = app.api_addr() {
                println!("turnq is up: API on http://{addr}  (Ctrl-C stops it)");
                println!("  try: turnq submit --api-url http://{addr} --wait \"hello\"");
            }
            app.run(shutdown_on_signal()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Api(args) => {
            App::build(AppConfig::api(args))
                .await?
                .run(shutdown_on_signal())
                .await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Worker(args) => {
            App::build(AppConfig::worker(args))
                .await?
                .run(shutdown_on_signal())
                .await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Migrate { database, command } => {
            let create = matches!(command, MigrateCommand::Up | MigrateCommand::Fresh { .. });
            let db = connect(&database, create).await?;
            migrate(&db, command).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Replay {
            database,
            verify,
            skip_bad_events,
        } => {
            use turnq_core::projection::{self, BadEvents};
            let db = connect(&database, false).await?;
            let started = std::time::Instant::now();
            let bad = if skip_bad_events {
                BadEvents::Skip
            } else {
                BadEvents::Refuse
            };
            let report = if verify {
                projection::verify(&db).await
            } else {
                projection::replay(&db, bad).await
            }
            .context("replaying the event log")?;
            let elapsed = started.elapsed();
            println!(
                "replayed {} events into {} tasks in {:.2}s ({:.0} events/s)",
                report.events,
                report.tasks,
                elapsed.as_secs_f64(),
                report.events as f64 / elapsed.as_secs_f64().max(1e-9)
            );
            for b in &report.bad_events {
                println!(
                    "bad event at position {} (stream {:?}, kind {:?}): {}",
                    b.position, b.stream_id, b.kind, b.problem
                );
            }
            for d in &report.drift {
                println!(
                    "drift: task {} {}: log says {}, table has {}",
                    d.task, d.column, d.expected, d.actual
                );
            }
            let bad_events = report.bad_events.len();
            if bad_events > 0 && !verify && !skip_bad_events {
                println!(
                    "{bad_events} events cannot be read, so the projection was not rewritten: \
                     rebuilding without them would drop whatever they record. The log is \
                     append-only, so they stay; if they are strays (written behind turnq's back; \
                     run the fleet as the runtime role of docs/operations.md so it cannot happen \
                     again), rebuild without them with `turnq replay --skip-bad-events`."
                );
                return Ok(ExitCode::from(2));
            }
            if report.drift.is_empty() && bad_events == 0 {
                println!("no drift: the projection matches the log");
                return Ok(ExitCode::SUCCESS);
            }
            if verify {
                println!(
                    "{} differences and {bad_events} unreadable events; `turnq replay` rewrites \
                     the projection from the log",
                    report.drift.len()
                );
                Ok(ExitCode::from(2))
            } else {
                println!(
                    "{} differences repaired from the log ({bad_events} unreadable events skipped)",
                    report.drift.len()
                );
                Ok(ExitCode::SUCCESS)
            }
        }
        Command::Submit(args) => submit::run(args).await,
        Command::Watch(args) => watch::run(args).await,
        Command::Task(args) => task::run(args).await,
        Command::Session(args) => session::run(args).await,
        Command::Bench(args) => bench::run(args).await,
        Command::Token { database, command } => {
            let db = connect(&database, false).await?;
            match command {
                TokenCommand::Create { name, scopes } => token::create(&db, &name, &scopes).await?,
                TokenCommand::List { revoked } => token::list(&db, revoked).await?,
                TokenCommand::Revoke { token } => token::revoke(&db, &token).await?,
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn migrate(db: &DatabaseConnection, command: MigrateCommand) -> Result<()> {
    use migration::Migrator;
    match command {
        MigrateCommand::Up => {
            migrate_up(db).await.context("migrating")?;
            println!("all migrations applied");
        }
        MigrateCommand::Down { steps } => {
            Migrator::down(db, Some(steps))
                .await
                .context("rolling back migrations")?;
            println!("rolled back {steps} migration(s)");
        }
        MigrateCommand::Status => {
            for m in Migrator::get_migration_with_status(db)
                .await
                .context("reading migration status")?
            {
                println!(
                    "{:<10} {}",
                    format!("{:?}", m.status()).to_lowercase(),
                    m.name()
                );
            }
        }
        MigrateCommand::Fresh { yes } => {
            anyhow::ensure!(
                yes,
                "`migrate fresh` drops every table, the event log included; pass --yes if you mean it"
            );
            Migrator::fresh(db)
                .await
                .context("re-creating the schema")?;
            println!("dropped every table and applied all migrations");
        }
    }
    Ok(())
}

/// A token cancelled on Ctrl-C or SIGTERM.
fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let term = std::future::pending::<()>();
        tokio::select! {
            _ = ctrl_c => {}
            _ = term => {}
        }
        tracing::info!("shutting down: no new work is taken; running turns get their grace period");
        cancel.cancel();
    });
    token
}

/// How long a CLI request to the API may take.
pub(crate) const HTTP_TIMEOUT: Duration = Duration::from_secs(30);

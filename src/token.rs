//! Tokens on the command line: `turnq token create`, the admin token `turnq up` makes on
//! first start, and the file the local CLI keeps it in.

use std::{
    io::Write,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use sea_orm::DatabaseConnection;
use turnq_core::{
    auth::{Scope, SecretToken, TokenStore},
    db::DatabaseUrl,
};

/// Where `turnq up` saves the local admin token and `turnq submit` looks for one:
/// `$TURNQ_TOKEN_FILE`, else `$XDG_CONFIG_HOME/turnq/token`, else `~/.config/turnq/token`.
pub fn token_file() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("TURNQ_TOKEN_FILE") {
        return Some(PathBuf::from(path));
    }
    let config = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(config.join("turnq").join("token"))
}

/// Writes `token` to `path`, readable by its owner only.
fn write_secret(path: &Path, text: &str) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    writeln!(file, "{text}")?;
    Ok(())
}

/// Where the admin token of the database `url` is kept: `tokens/<host_port_database>`
/// beside the default token file. One file per database, so starting `turnq up` on
/// another database never loses the token of the first.
pub fn database_token_file(default: &Path, url: &DatabaseUrl) -> PathBuf {
    default
        .parent()
        .unwrap_or(Path::new("."))
        .join("tokens")
        .join(url.file_slug())
}

/// Which database's token the default file holds: its slug, in `<file>.database`.
fn owner_file(default: &Path) -> PathBuf {
    let mut name = default.as_os_str().to_owned();
    name.push(".database");
    PathBuf::from(name)
}

/// Where the token was saved.
struct Saved {
    /// This database's own file.
    own: PathBuf,
    /// The default file (which `turnq submit` reads) when it was written too; else the
    /// database whose token it keeps.
    default: Result<PathBuf, String>,
}

/// Saves the admin token of the database `url`: in that database's own file, and in
/// the default file unless that holds the token of another database (then it is left
/// alone, and the caller says where this one went).
fn save(token: &SecretToken, url: &DatabaseUrl, default: PathBuf) -> Result<Saved> {
    let own = database_token_file(&default, url);
    write_secret(&own, token.expose())?;
    let owner = owner_file(&default);
    let slug = url.file_slug();
    let held_by = std::fs::read_to_string(&owner)
        .ok()
        .map(|s| s.trim().to_owned());
    let taken = default.exists() && held_by.as_deref() != Some(slug.as_str());
    if taken {
        let other = held_by.unwrap_or_else(|| "an earlier instance".into());
        return Ok(Saved {
            own,
            default: Err(other),
        });
    }
    write_secret(&default, token.expose())?;
    write_secret(&owner, &slug)?;
    Ok(Saved {
        own,
        default: Ok(default),
    })
}

/// The token the CLI should send: the flag/env value, else the saved file.
pub fn local_token(given: Option<String>) -> Option<String> {
    given.or_else(|| {
        let text = std::fs::read_to_string(token_file()?).ok()?;
        let token = text.trim().to_owned();
        (!token.is_empty()).then_some(token)
    })
}

/// On the first start of a database (no token exists yet), creates an admin token for the
/// local user, prints it once and saves it where `turnq submit` finds it.
pub async fn first_start_admin_token(db: &DatabaseConnection, url: &DatabaseUrl) -> Result<()> {
    if TokenStore::count(db).await? > 0 {
        return Ok(());
    }
    let (token, _) = TokenStore::create(db, "local-admin", &[Scope::Admin]).await?;
    println!(
        "created an admin token for you (shown once):\n  {}",
        token.expose()
    );
    let saved = token_file()
        .context("no HOME or XDG_CONFIG_HOME to keep the token in")
        .and_then(|default| save(&token, url, default));
    match saved {
        Ok(Saved {
            own,
            default: Ok(default),
        }) => println!(
            "  saved to {} for `turnq submit` (and to {} for this database)",
            default.display(),
            own.display()
        ),
        Ok(Saved {
            own,
            default: Err(other),
        }) => println!(
            "  saved to {} (the default file keeps the token of {other}; use this one with \
             TURNQ_TOKEN_FILE={} or --token)",
            own.display(),
            own.display()
        ),
        Err(e) => println!("  (not saved: {e:#}; pass it with --token or TURNQ_TOKEN)"),
    }
    Ok(())
}

pub async fn create(db: &DatabaseConnection, name: &str, scopes: &[Scope]) -> Result<()> {
    let (token, info) = TokenStore::create(db, name, scopes)
        .await
        .context("creating the token")?;
    let scopes: Vec<&str> = info.scopes.iter().map(|s| s.as_str()).collect();
    eprintln!(
        "token {:?} with scopes {} (shown once; only its hash is stored):",
        info.name,
        scopes.join(", ")
    );
    println!("{}", token.expose());
    Ok(())
}

/// `turnq token list`: one line per token, newest last.
pub async fn list(db: &DatabaseConnection, revoked: bool) -> Result<()> {
    let tokens = TokenStore::list(db, revoked)
        .await
        .context("listing the tokens")?;
    if tokens.is_empty() {
        eprintln!("no tokens; create one with `turnq token create --name NAME --scope SCOPE`");
        return Ok(());
    }
    let when = |t: Option<turnq_core::time::Timestamp>, none: &str| {
        t.map_or_else(
            || none.to_owned(),
            |t| t.format("%Y-%m-%d %H:%M UTC").to_string(),
        )
    };
    println!(
        "{:<36}  {:<20}  {:<18}  {:<20}  {:<20}{}",
        "ID",
        "NAME",
        "SCOPES",
        "CREATED",
        "LAST USED",
        if revoked { "  REVOKED" } else { "" }
    );
    for t in tokens {
        let scopes: Vec<&str> = t.scopes.iter().map(|s| s.as_str()).collect();
        let revoked_at = if revoked {
            format!("  {}", when(t.revoked_at, "-"))
        } else {
            String::new()
        };
        println!(
            "{:<36}  {:<20}  {:<18}  {:<20}  {:<20}{revoked_at}",
            t.id,
            t.name,
            scopes.join(","),
            when(Some(t.created_at), "-"),
            when(t.last_used_at, "never"),
        );
    }
    Ok(())
}

/// `turnq token revoke`.
pub async fn revoke(db: &DatabaseConnection, which: &str) -> Result<()> {
    let token = TokenStore::revoke(db, which).await?;
    eprintln!(
        "revoked token {:?} ({}): it authenticates nothing from now on",
        token.name, token.id
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(text: &str) -> SecretToken {
        SecretToken::from_saved(text)
    }

    #[test]
    fn each_database_keeps_its_token_and_the_default_file_is_never_taken_over() {
        let dir = std::env::temp_dir().join(format!("turnq-token-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let default = dir.join("token");
        let read = |p: &Path| std::fs::read_to_string(p).unwrap().trim().to_owned();
        let first: DatabaseUrl = "postgres://postgres@127.0.0.1:5432/turnq".parse().unwrap();
        let second: DatabaseUrl = "postgres://postgres@127.0.0.1:5432/other".parse().unwrap();

        let saved = save(&token("tq_first"), &first, default.clone()).unwrap();
        assert_eq!(saved.default.as_ref().unwrap(), &default);
        assert_eq!(read(&default), "tq_first");
        assert_eq!(read(&saved.own), "tq_first");

        // Another database: its own file; the default keeps the first one's token.
        let saved = save(&token("tq_second"), &second, default.clone()).unwrap();
        assert_eq!(saved.default.unwrap_err(), "127.0.0.1_5432_turnq");
        assert_eq!(read(&default), "tq_first");
        assert_eq!(read(&saved.own), "tq_second");
        assert_eq!(saved.own, dir.join("tokens").join("127.0.0.1_5432_other"));

        // The first database recreated: its new token replaces its old one everywhere.
        let saved = save(&token("tq_first_again"), &first, default.clone()).unwrap();
        assert!(saved.default.is_ok());
        assert_eq!(read(&default), "tq_first_again");
        assert_eq!(read(&database_token_file(&default, &second)), "tq_second");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

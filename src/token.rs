//! Tokens on the command line: `turnq token create`, the admin token `turnq up` makes on
//! first start, and the file the local CLI keeps it in.

use std::{io::Write, path::PathBuf};

use anyhow::{Context, Result};
use sea_orm::DatabaseConnection;
use turnq_core::auth::{Scope, SecretToken, TokenStore};

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

/// Saves the token readable by its owner only.
fn save(token: &SecretToken) -> Result<PathBuf> {
    let path = token_file().context("no HOME or XDG_CONFIG_HOME to keep the token in")?;
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
        .open(&path)
        .with_context(|| format!("writing {}", path.display()))?;
    writeln!(file, "{}", token.expose())?;
    Ok(path)
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
pub async fn first_start_admin_token(db: &DatabaseConnection) -> Result<()> {
    if TokenStore::count(db).await? > 0 {
        return Ok(());
    }
    let (token, _) = TokenStore::create(db, "local-admin", &[Scope::Admin]).await?;
    println!(
        "created an admin token for you (shown once):\n  {}",
        token.expose()
    );
    match save(&token) {
        Ok(path) => println!("  saved to {} for `turnq submit`", path.display()),
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

//! The web UI: its pages over plain HTTP (`pages`), reviewing a session's workspace
//! over plain HTTP (`review`), and in a real headless Chromium (`browser`).

mod browser;
mod pages;
mod review;

use anyhow::{Context, Result, anyhow};
use reqwest::{Client, Response, redirect::Policy};
use turnq_core::auth::{Scope, TokenStore};
use turnq_tests::TestApp;

/// A browser-like client of the UI: keeps no cookies of its own (the tests pass the
/// sign-in cookie by hand) and does not follow redirects, so a test sees them.
pub(super) fn client() -> Result<Client> {
    Ok(Client::builder().redirect(Policy::none()).build()?)
}

/// A token named `name` with `scopes` on the app's database.
pub(super) async fn token(app: &TestApp, name: &str, scopes: &[Scope]) -> Result<String> {
    let (secret, _) = TokenStore::create(&app.db, name, scopes).await?;
    Ok(secret.expose().to_owned())
}

/// Signs in with `token` and returns the `Cookie` header value of the session.
pub(super) async fn sign_in(app: &TestApp, token: &str) -> Result<String> {
    let response = client()?
        .post(app.url("/signin"))
        .form(&[("token", token), ("next", "/")])
        .send()
        .await?;
    anyhow::ensure!(
        response.status() == 303,
        "sign-in answered {}",
        response.status()
    );
    let set = response
        .headers()
        .get("set-cookie")
        .context("sign-in set no cookie")?
        .to_str()?;
    Ok(set.split(';').next().unwrap_or_default().to_owned())
}

/// GET `path` with the session `cookie`: (status, body).
pub(super) async fn page(app: &TestApp, cookie: &str, path: &str) -> Result<(u16, String)> {
    let response = client()?
        .get(app.url(path))
        .header("cookie", cookie)
        .send()
        .await?;
    Ok((response.status().as_u16(), response.text().await?))
}

/// POSTs the form `fields` to `path` with the session `cookie`.
pub(super) async fn post_form(
    app: &TestApp,
    cookie: &str,
    path: &str,
    fields: &[(&str, &str)],
) -> Result<Response> {
    Ok(client()?
        .post(app.url(path))
        .header("cookie", cookie)
        .form(fields)
        .send()
        .await?)
}

/// The CSRF value the forms of `html` carry.
pub(super) fn csrf(html: &str) -> Result<String> {
    let marker = r#"name="csrf" value=""#;
    let start = html
        .find(marker)
        .ok_or_else(|| anyhow!("the page has no form with a CSRF value"))?
        + marker.len();
    let end = html[start..]
        .find('"')
        .ok_or_else(|| anyhow!("unterminated CSRF value"))?;
    Ok(html[start..start + end].to_owned())
}

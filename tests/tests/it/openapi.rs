//! The API document: the served `/v1/openapi.json` is the committed
//! `docs/openapi.json` (so an API change is a visible diff), and it lists every route
//! the router serves, each with the scope the router asks for.

use std::{collections::BTreeMap, path::PathBuf};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;
use turnq_tests::TestApp;

fn workspace_file(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(|root| root.join(path))
        .unwrap_or_else(|| PathBuf::from(path))
}

/// The served document, fetched without a token: it is open, like `/healthz`.
async fn served(app: &TestApp) -> Result<String> {
    let response = reqwest::get(app.url("/v1/openapi.json")).await?;
    ensure!(
        response.status() == 200,
        "GET /v1/openapi.json without a token answered {}",
        response.status()
    );
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    ensure!(content_type == "application/json", "{content_type}");
    Ok(response.text().await?)
}

#[tokio::test]
async fn the_served_document_is_the_committed_snapshot() -> Result<()> {
    let app = TestApp::spawn_without_workers().await?;
    let served = served(&app).await?;
    app.stop().await?;
    let doc: Value = serde_json::from_str(&served).context("the document is JSON")?;
    ensure!(doc["openapi"] == "3.1.0", "{}", doc["openapi"]);

    let path = workspace_file("docs/openapi.json");
    let served = format!("{}\n", served.trim_end());
    if std::env::var("TURNQ_UPDATE_SNAPSHOTS").is_ok_and(|v| v == "1") {
        std::fs::write(&path, &served).with_context(|| format!("writing {}", path.display()))?;
        return Ok(());
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    if committed == served {
        return Ok(());
    }
    let (line, (want, got)) = committed
        .lines()
        .chain(std::iter::repeat(""))
        .zip(served.lines().chain(std::iter::repeat("")))
        .enumerate()
        .find(|(_, (a, b))| a != b)
        .map(|(i, pair)| (i + 1, pair))
        .unwrap_or((0, ("", "")));
    bail!(
        "the API document changed: {} differs from GET /v1/openapi.json, first at line \
         {line}:\n  committed: {want}\n  served:    {got}\nIf the change is meant, re-run with \
         TURNQ_UPDATE_SNAPSHOTS=1 (e.g. `TURNQ_UPDATE_SNAPSHOTS=1 cargo nextest run -p \
         turnq-tests -E 'test(openapi)'`) to rewrite the file, and commit it with the change.",
        path.display()
    )
}

/// The routes of `api/src/routes/mod.rs`, as (method, path) → the scope of the group
/// they are mounted in (`None` for the open ones). Read from the source, so a route
/// added there without an annotation fails here; a `.route(` this reader cannot parse
/// fails too, rather than being skipped.
fn router_routes() -> Result<BTreeMap<(String, String), Option<String>>> {
    let path = workspace_file("api/src/routes/mod.rs");
    let source = std::fs::read_to_string(&path)?;
    let body = source
        .split_once("pub(crate) fn router(")
        .context("routes/mod.rs has `fn router`")?
        .1;
    // The groups, in the order the function builds them; the open routes come last.
    let mut groups: Vec<(Option<&str>, &str)> = Vec::new();
    let mut rest = body;
    for (marker, scope) in [
        ("let read = ", Some("read")),
        ("let submit = ", Some("submit")),
        ("let admin = ", Some("admin")),
        ("\n    Router::new()", None),
    ] {
        let (before, after) = rest
            .split_once(marker)
            .with_context(|| format!("routes/mod.rs has {marker:?}"))?;
        if let Some(last) = groups.last_mut() {
            *last = (last.0, before);
        }
        groups.push((scope, after));
        rest = after;
    }
    let mut routes = BTreeMap::new();
    for (scope, text) in groups {
        for chunk in text.split(".route(").skip(1) {
            let chunk = chunk.trim_start();
            let parsed = chunk.strip_prefix('"').and_then(|c| {
                let (path, after) = c.split_once('"')?;
                let after = after.trim_start().strip_prefix(',')?.trim_start();
                let method = after.split_once('(')?.0;
                Some((path.to_owned(), method.to_owned()))
            });
            let (path, method) =
                parsed.with_context(|| format!("cannot read the route at {:?}", &chunk[..40]))?;
            ensure!(
                ["get", "post", "put", "delete", "patch"].contains(&method.as_str()),
                "route {path}: {method} is not a method this reader knows"
            );
            routes.insert((method, path), scope.map(str::to_owned));
        }
    }
    ensure!(routes.len() > 20, "found only {routes:?}");
    Ok(routes)
}

/// The operations of the document, as (method, path) → the scope its security names.
fn documented(doc: &Value) -> Result<BTreeMap<(String, String), Option<String>>> {
    let mut operations = BTreeMap::new();
    for (path, item) in doc["paths"].as_object().context("paths")? {
        for (method, operation) in item.as_object().context("a path item")? {
            let scope = operation["security"]
                .as_array()
                .and_then(|s| s.first())
                .and_then(|s| s["bearer"].as_array())
                .and_then(|scopes| scopes.first())
                .and_then(Value::as_str)
                .map(str::to_owned);
            operations.insert((method.clone(), path.clone()), scope);
        }
    }
    Ok(operations)
}

#[tokio::test]
async fn every_route_the_router_serves_is_documented_with_its_scope() -> Result<()> {
    let app = TestApp::spawn_without_workers().await?;
    let doc: Value = serde_json::from_str(&served(&app).await?)?;
    app.stop().await?;
    let routes = router_routes()?;
    let documented = documented(&doc)?;
    let missing: Vec<_> = routes
        .keys()
        .filter(|r| !documented.contains_key(*r))
        .collect();
    ensure!(
        missing.is_empty(),
        "routes served but not in the API document (add a #[utoipa::path] and list the \
         handler in api/src/openapi/mod.rs): {missing:?}"
    );
    let extra: Vec<_> = documented
        .keys()
        .filter(|r| !routes.contains_key(*r))
        .collect();
    ensure!(
        extra.is_empty(),
        "operations documented but not served: {extra:?}"
    );
    for (route, scope) in &routes {
        ensure!(
            documented[route] == *scope,
            "{route:?} is mounted with scope {scope:?} but documented with {:?}",
            documented[route]
        );
        let operation = &doc["paths"][&route.1][&route.0];
        let responses = operation["responses"].as_object().context("responses")?;
        if scope.is_some() {
            for status in ["401", "403"] {
                ensure!(
                    responses.contains_key(status),
                    "{route:?} does not document {status}"
                );
            }
        }
    }
    Ok(())
}

#[tokio::test]
async fn refusals_made_before_a_handler_runs_use_the_error_envelope() -> Result<()> {
    let app = TestApp::spawn_without_workers().await?;
    let task = app.submit(serde_json::json!({"input": "x"})).await?;
    let id = task["id"].as_str().unwrap_or_default();

    // A method the route does not answer: axum's own 405 has an empty body.
    let response = app.http.patch(app.url("/v1/tasks")).send().await?;
    ensure!(response.status() == 405, "{}", response.status());
    let body: Value = response.json().await?;
    ensure!(body["error"]["code"] == "method_not_allowed", "{body}");

    // A body over the limit of a route that reads it raw (axum's default, 2 MiB).
    let response = app
        .http
        .post(app.url(&format!("/v1/tasks/{id}/cancel")))
        .body(vec![b' '; 3 * 1024 * 1024])
        .send()
        .await?;
    ensure!(response.status() == 413, "{}", response.status());
    let body: Value = response.json().await?;
    ensure!(body["error"]["code"] == "payload_too_large", "{body}");
    ensure!(app.task(id).await?["state"] == "pending");
    app.stop().await
}

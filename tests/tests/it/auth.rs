//! Bearer tokens with scopes, and what the API answers when Postgres is gone.

use anyhow::Result;
use sea_orm::ConnectionTrait;
use serde_json::{Value, json};
use turnq_core::auth::{Scope, TokenStore};

use turnq_tests::TestApp;

async fn call(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> Result<(u16, Value, reqwest::header::HeaderMap)> {
    let mut request = reqwest::Client::new().request(method, app.url(path));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await?;
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text)?
    };
    Ok((status, body, headers))
}

#[tokio::test]
async fn requests_without_a_valid_token_get_401_and_health_stays_open() -> Result<()> {
    let app = TestApp::spawn_without_workers().await?;
    let before = app.counts().await?;
    for (method, path) in [
        (reqwest::Method::GET, "/v1/tasks"),
        (reqwest::Method::POST, "/v1/tasks"),
        (reqwest::Method::GET, "/v1/inbox"),
        (reqwest::Method::GET, "/v1/workers"),
    ] {
        for token in [None, Some("tq_not-a-real-token")] {
            let (status, body, headers) = call(
                &app,
                method.clone(),
                path,
                token,
                Some(json!({"input": "x"})),
            )
            .await?;
            assert_eq!(status, 401, "{method} {path} with {token:?}: {body}");
            assert_eq!(body["error"]["code"], "unauthorized", "{body}");
            assert_eq!(headers["www-authenticate"], "Bearer");
        }
    }
    for path in ["/healthz", "/readyz"] {
        assert_eq!(
            call(&app, reqwest::Method::GET, path, None, None).await?.0,
            200,
            "{path}"
        );
    }
    assert_eq!(app.counts().await?, before);
    app.stop().await?;
    Ok(())
}

#[tokio::test]
async fn a_token_without_the_needed_scope_gets_403() -> Result<()> {
    let app = TestApp::spawn_without_workers().await?;
    let (reader, _) = TokenStore::create(&app.db, "reader", &[Scope::Read]).await?;
    let (submitter, _) = TokenStore::create(&app.db, "submitter", &[Scope::Submit]).await?;
    let post = reqwest::Method::POST;
    let get = reqwest::Method::GET;

    let (status, body, _) = call(
        &app,
        post.clone(),
        "/v1/tasks",
        Some(reader.expose()),
        Some(json!({"input": "x"})),
    )
    .await?;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "forbidden");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("submit"),
        "{body}"
    );
    assert_eq!(
        app.counts().await?.0,
        0,
        "a refused submission writes nothing"
    );

    let (status, task, _) = call(
        &app,
        post.clone(),
        "/v1/tasks",
        Some(submitter.expose()),
        Some(json!({"input": "x"})),
    )
    .await?;
    assert_eq!(status, 201, "{task}");
    let id = task["id"].as_str().unwrap();
    let (status, _, _) = call(
        &app,
        get.clone(),
        &format!("/v1/tasks/{id}"),
        Some(reader.expose()),
        None,
    )
    .await?;
    assert_eq!(status, 200);
    let (status, body, _) = call(&app, get, "/v1/tasks", Some(submitter.expose()), None).await?;
    assert_eq!(status, 403, "submit does not imply read: {body}");
    let (status, body, _) = call(
        &app,
        post.clone(),
        &format!("/v1/tasks/{id}/approve"),
        Some(submitter.expose()),
        None,
    )
    .await?;
    assert_eq!(status, 403, "approve needs admin: {body}");
    let (status, body, _) = call(
        &app,
        post,
        &format!("/v1/tasks/{id}/cancel"),
        Some(submitter.expose()),
        None,
    )
    .await?;
    assert_eq!(status, 200, "a submitter may cancel: {body}");
    app.stop().await?;
    Ok(())
}

#[tokio::test]
async fn tokens_are_stored_hashed() -> Result<()> {
    let app = TestApp::spawn_without_workers().await?;
    let (secret, info) = TokenStore::create(&app.db, "ci", &[Scope::Submit, Scope::Read]).await?;
    let row = app
        .db
        .query_one_raw(sea_orm::Statement::from_string(
            app.db.get_database_backend(),
            format!("SELECT token_hash FROM api_tokens WHERE id = '{}'", info.id),
        ))
        .await?
        .expect("the token row exists");
    let stored: String = row.try_get("", "token_hash")?;
    assert_ne!(stored, secret.expose());
    assert!(!stored.contains(secret.expose()));
    assert_eq!(stored.len(), 64);
    assert!(
        TokenStore::authenticate(&app.db, secret.expose())
            .await?
            .is_some()
    );
    assert!(TokenStore::create(&app.db, "none", &[]).await.is_err());
    app.stop().await?;
    Ok(())
}

#[tokio::test]
async fn the_api_answers_503_with_retry_after_when_postgres_is_gone() -> Result<()> {
    let app = TestApp::spawn_without_workers().await?;
    let token = app.token().to_owned();
    // Take the database away under the running app.
    let admin = turnq_core::db::connect(
        &turnq_tests::admin_database_url()
            .parse()
            .map_err(anyhow::Error::msg)?,
        1,
    )
    .await?;
    admin
        .execute_unprepared(&format!("DROP DATABASE {} WITH (FORCE)", app.test_db.name))
        .await?;
    let (status, body, headers) =
        call(&app, reqwest::Method::GET, "/v1/tasks", Some(&token), None).await?;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "unavailable");
    assert!(headers.contains_key("retry-after"));
    let (status, _, _) = call(&app, reqwest::Method::GET, "/readyz", None, None).await?;
    assert_eq!(status, 503);
    app.stop().await?;
    Ok(())
}

#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive_and_other_schemes_are_refused() -> Result<()> {
    let app = TestApp::spawn_without_workers().await?;
    for (header, want) in [
        (format!("bearer {}", app.token()), 200),
        (format!("BEARER {}", app.token()), 200),
        (format!("Bearer  {}", app.token()), 200),
        (format!("Basic {}", app.token()), 401),
        (app.token().to_owned(), 401),
    ] {
        let response = reqwest::Client::new()
            .get(app.url("/v1/tasks"))
            .header("authorization", &header)
            .send()
            .await?;
        let shown = header.replace(app.token(), "<token>");
        assert_eq!(response.status().as_u16(), want, "Authorization: {shown}");
    }
    app.stop().await
}

//! A Postgres outage as the API's clients see it: 503 with `Retry-After`, at once once
//! the API knows the database is down (not after the pool's acquire timeout on every
//! request), and normal answers again as soon as it is back.

use anyhow::Result;
use turnq_testkit::eventually;
use turnq_tests::TestApp;

/// Postgres stops accepting connections to the app's database and cuts the open ones.
async fn cut(app: &TestApp, allow: bool) -> Result<()> {
    let name = &app.test_db.name;
    app.test_db
        .admin(&format!(
            "ALTER DATABASE \"{name}\" ALLOW_CONNECTIONS {allow}"
        ))
        .await?;
    if !allow {
        app.test_db
            .admin(&format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
            ))
            .await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn while_postgres_is_down_requests_are_refused_at_once_and_served_again_when_it_returns()
-> Result<()> {
    let app = TestApp::spawn_without_workers().await?;
    let id = app.submit(serde_json::json!({"input": "before"})).await?["id"]
        .as_str()
        .unwrap()
        .to_owned();
    cut(&app, false).await?;

    // The first requests wait for the pool and find the database unreachable; from
    // then on the API answers without trying, saying since when.
    let refused = eventually("a request is refused without trying the database", || {
        let app = &app;
        async move {
            let response = app
                .http
                .get(app.url("/v1/tasks"))
                .send()
                .await
                .map_err(|e| e.to_string())?;
            let status = response.status().as_u16();
            let retry_after = response.headers().get("retry-after").is_some();
            let body: serde_json::Value = response.json().await.map_err(|e| e.to_string())?;
            let message = body["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            if status == 503 && retry_after && message.contains("unreachable since") {
                Ok(body)
            } else {
                Err(format!("{status}: {body}"))
            }
        }
    })
    .await?;
    assert_eq!(refused["error"]["code"], "unavailable");
    // Routes that need no database still answer.
    assert_eq!(
        app.http.get(app.url("/healthz")).send().await?.status(),
        200
    );
    assert_eq!(
        app.http
            .get(app.url("/v1/openapi.json"))
            .send()
            .await?
            .status(),
        200
    );

    cut(&app, true).await?;
    eventually("a probe gets through and requests are served again", || {
        let app = &app;
        let id = id.clone();
        async move {
            let (status, body) = app
                .get(&format!("/v1/tasks/{id}"))
                .await
                .map_err(|e| e.to_string())?;
            if status == 200 {
                Ok(())
            } else {
                Err(format!("{status}: {body}"))
            }
        }
    })
    .await?;
    app.stop().await
}

//! Clients that send slowly or too much: a half-sent request head closes the
//! connection, a stalled body fails its request (408), an oversized head is a 431, and none of
//! them holds the server.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use turnq_testkit::within;
use turnq_tests::TestApp;

async fn app() -> Result<TestApp> {
    TestApp::spawn_with_api(turnq_api::ApiConfig {
        header_read_timeout: Duration::from_millis(500),
        body_read_timeout: Duration::from_millis(500),
        max_header_bytes: 16 * 1024,
        ..Default::default()
    })
    .await
}

async fn connect(app: &TestApp) -> Result<TcpStream> {
    let addr = app.base.trim_start_matches("http://");
    Ok(TcpStream::connect(addr).await?)
}

/// Everything the server sends until it closes the connection.
async fn read_to_close(stream: &mut TcpStream) -> Result<String> {
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await?;
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_never_finishes_its_headers_is_disconnected() -> Result<()> {
    let app = app().await?;
    let mut stream = connect(&app).await?;
    stream
        .write_all(b"GET /v1/tasks HTTP/1.1\r\nHost: turnq\r\nX-Slow: ")
        .await?;
    // The server closes it (the event we wait for), having answered nothing useful.
    let answer = within(
        "the server closes the half-sent request",
        read_to_close(&mut stream),
    )
    .await??;
    ensure!(!answer.contains("200 OK"), "{answer}");
    // Others are served meanwhile and after.
    let (status, _) = app.get("/v1/tasks").await?;
    ensure!(status == 200);
    app.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_that_stops_arriving_fails_its_request_and_writes_nothing() -> Result<()> {
    let app = app().await?;
    let before = app.counts().await?;
    let mut stream = connect(&app).await?;
    let auth = format!("Authorization: Bearer {}\r\n", app.token());
    let head = format!(
        "POST /v1/tasks HTTP/1.1\r\nHost: turnq\r\n{auth}Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(br#"{"input": "par"#).await?;
    let answer = within("the stalled request is answered", async {
        let mut buf = vec![0u8; 4096];
        let n = stream.read(&mut buf).await?;
        anyhow::Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
    })
    .await??;
    ensure!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    ensure!(
        answer.contains("request_timeout") && answer.contains("stopped arriving"),
        "the message says why: {answer}"
    );
    ensure!(app.counts().await? == before, "nothing was written");
    app.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_head_over_the_limit_is_431() -> Result<()> {
    let app = app().await?;
    let big = "x".repeat(32 * 1024);
    let response = app
        .http
        .get(app.url("/v1/tasks"))
        .header("X-Big", big)
        .send()
        .await
        .context("the server answers, not just hangs up")?;
    ensure!(response.status() == 431, "{}", response.status());
    // Within the limit is fine.
    let response = app
        .http
        .get(app.url("/v1/tasks"))
        .header("X-Big", "x".repeat(4 * 1024))
        .send()
        .await?;
    ensure!(response.status() == 200, "{}", response.status());
    app.stop().await
}

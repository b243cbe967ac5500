//! `turnq submit`: a small client of the REST API.

use std::{process::ExitCode, time::Duration};

use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::{Value, json};

#[derive(Args, Debug)]
pub struct SubmitArgs {
    /// The API to submit to.
    #[arg(long, env = "TURNQ_API_URL", default_value = "http://127.0.0.1:8080")]
    pub api_url: String,

    /// The API token (default: the one `turnq up` saved on first start).
    #[arg(long, env = "TURNQ_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// The task input: a prompt. With --json, a JSON value.
    pub input: String,

    /// Parse the input as JSON (e.g. '{"script":{"latency_ms":200,"chunks":["a","b"]}}').
    #[arg(long)]
    pub json: bool,

    /// The agent to run the turn.
    #[arg(long, env = "TURNQ_AGENT")]
    pub agent: Option<String>,

    /// The queue to submit to.
    #[arg(long, env = "TURNQ_QUEUE")]
    pub queue: Option<String>,

    /// The project the task belongs to.
    #[arg(long, env = "TURNQ_PROJECT")]
    pub project: Option<String>,

    /// The agent session this turn continues.
    #[arg(long)]
    pub session_id: Option<String>,

    /// Higher runs first, -1000 to 1000.
    #[arg(long)]
    pub priority: Option<i32>,

    /// Submitting twice with the same key returns the first task.
    #[arg(long)]
    pub idempotency_key: Option<String>,

    /// Follow the task: print its events as they come, until it ends. The exit status
    /// is 0 for completed, 1 otherwise.
    #[arg(long)]
    pub wait: bool,

    /// With --wait, give up after this long.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

pub async fn run(args: SubmitArgs) -> Result<ExitCode> {
    let input: Value = if args.json {
        serde_json::from_str(&args.input)
            .context("the input is not valid JSON (drop --json to send it as a prompt)")?
    } else {
        Value::String(args.input.clone())
    };
    let mut body = json!({ "input": input });
    for (key, value) in [
        ("agent", args.agent.clone().map(Value::from)),
        ("queue", args.queue.clone().map(Value::from)),
        ("project", args.project.clone().map(Value::from)),
        ("session_id", args.session_id.clone().map(Value::from)),
        ("priority", args.priority.map(Value::from)),
        (
            "idempotency_key",
            args.idempotency_key.clone().map(Value::from),
        ),
    ] {
        if let Some(value) = value {
            body[key] = value;
        }
    }
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(token) = crate::token::local_token(args.token.clone()) {
        let value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
            .context("the token has characters a header cannot carry")?;
        headers.insert(reqwest::header::AUTHORIZATION, value);
    }
    let client = reqwest::Client::builder()
        .timeout(crate::HTTP_TIMEOUT)
        .default_headers(headers)
        .build()
        .context("building the HTTP client")?;
    let base = args.api_url.trim_end_matches('/');
    let response = client
        .post(format!("{base}/v1/tasks"))
        .json(&body)
        .send()
        .await
        .with_context(|| {
            format!("cannot reach the turnq API at {base}: is `turnq up` (or `turnq api`) running?")
        })?;
    let status = response.status();
    let task: Value = response.json().await.context("reading the API's answer")?;
    if !status.is_success() {
        bail!(
            "the API refused the task ({status}): {}",
            task["error"]["message"].as_str().unwrap_or("no message")
        );
    }
    let id = task["id"]
        .as_str()
        .context("the API's answer has no task id")?
        .to_owned();
    println!("{id}");
    if !args.wait {
        return Ok(ExitCode::SUCCESS);
    }
    follow(&client, base, &id, args.timeout).await
}

/// Prints the task's events as they are appended, until a final one.
async fn follow(
    client: &reqwest::Client,
    base: &str,
    id: &str,
    timeout: Duration,
) -> Result<ExitCode> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut after = 0i64;
    loop {
        let page: Value = client
            .get(format!("{base}/v1/tasks/{id}/events?after={after}"))
            .send()
            .await
            .context("following the task")?
            .json()
            .await
            .context("reading the task's events")?;
        for event in page["events"].as_array().into_iter().flatten() {
            after = event["version"].as_i64().unwrap_or(after);
            let kind = event["kind"].as_str().unwrap_or("?");
            println!(
                "{}  {:<16} {}",
                event["recorded_at"].as_str().unwrap_or(""),
                kind,
                event["data"]
            );
            match kind {
                "task.completed" => return Ok(ExitCode::SUCCESS),
                "task.failed" | "task.cancelled" | "task.blocked" => return Ok(ExitCode::FAILURE),
                _ => {}
            }
        }
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "task {id} did not end within {}",
                humantime::format_duration(timeout)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

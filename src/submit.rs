//! `turnq submit`: a small client of the REST API; `--wait` follows the task through
//! the live event stream.

use std::{process::ExitCode, time::Duration};

use anyhow::{Context, Result, bail};
use clap::Args;
use futures::StreamExt;
use serde_json::{Value, json};

use crate::remote::RemoteArgs;

#[derive(Args, Debug)]
pub struct SubmitArgs {
    #[command(flatten)]
    pub remote: RemoteArgs,

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

    /// A git repository on the worker hosts (absolute path, under the workers'
    /// `--repo-roots`): the session's turns run in a worktree of it. Needs --session-id.
    #[arg(long)]
    pub repo: Option<String>,

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
        ("repo", args.repo.clone().map(Value::from)),
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
    let client = args.remote.http()?;
    let base = args.remote.base();
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
    follow(&args.remote, &id, args.timeout).await
}

/// Prints the task's events, from its first, as the stream passes them on, until a
/// final one. The stream is read from the start of the log for this one task (the
/// server reads only its stream), so nothing that happened before it connected is
/// missed.
pub(crate) async fn follow(remote: &RemoteArgs, id: &str, timeout: Duration) -> Result<ExitCode> {
    let events = remote
        .events(vec![("task".into(), id.to_owned())])
        .follow(reqwest::Client::new(), Some("0-0".into()));
    futures::pin_mut!(events);
    let followed = async {
        while let Some(event) = events.next().await {
            let event = event?;
            println!("{}", summary(&event.data));
            let code = match event.kind.as_str() {
                "task.completed" => ExitCode::SUCCESS,
                "task.failed" | "task.cancelled" | "task.blocked" => ExitCode::FAILURE,
                _ => continue,
            };
            // An end the task has moved on from (a failure it was retried after) is not
            // where following stops: only its latest event is.
            if is_latest(remote, id, &event.data).await? {
                return Ok(code);
            }
        }
        bail!("the event stream ended before task {id} did")
    };
    match tokio::time::timeout(timeout, followed).await {
        Ok(ended) => ended,
        Err(_) => bail!(
            "task {id} did not end within {}",
            humantime::format_duration(timeout)
        ),
    }
}

/// Whether `event` is the task's latest: its version is the task's.
async fn is_latest(remote: &RemoteArgs, id: &str, event: &Value) -> Result<bool> {
    let base = remote.base();
    let task: Value = remote
        .http()?
        .get(format!("{base}/v1/tasks/{id}"))
        .send()
        .await
        .with_context(|| format!("cannot reach the turnq API at {base}"))?
        .error_for_status()
        .context("reading the task")?
        .json()
        .await
        .context("reading the task")?;
    Ok(task["version"] == event["version"])
}

/// One line for an event of the stream: its time, kind, stream and data.
pub fn summary(event: &Value) -> String {
    format!(
        "{}  {:<16} {}:{}  {}",
        event["recorded_at"].as_str().unwrap_or(""),
        event["kind"].as_str().unwrap_or("?"),
        event["stream"]["type"].as_str().unwrap_or("?"),
        event["stream"]["id"].as_str().unwrap_or("?"),
        event["data"]
    )
}

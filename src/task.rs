//! `turnq task list|show|cancel|retry|follow`: tasks of a running API from the command
//! line, through the same REST routes as any client.

use std::{process::ExitCode, time::Duration};

use anyhow::Result;
use clap::{Args, Subcommand};
use serde_json::{Value, json};

use crate::remote::RemoteArgs;

#[derive(Args, Debug)]
pub struct TaskArgs {
    #[command(flatten)]
    pub remote: RemoteArgs,
    #[command(subcommand)]
    pub command: TaskCommand,
}

#[derive(Subcommand, Debug)]
pub enum TaskCommand {
    /// List tasks, newest first: id, state, queue, agent, attempts, age and a preview of
    /// the input.
    List {
        /// Only these states, comma-separated (pending, running, blocked, completed,
        /// failed, cancelled).
        #[arg(long)]
        state: Option<String>,
        /// Only this queue.
        #[arg(long)]
        queue: Option<String>,
        /// Only this project.
        #[arg(long)]
        project: Option<String>,
        /// Only this agent.
        #[arg(long)]
        agent: Option<String>,
        /// How many (at most 500).
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// Print the API's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one task: its fields, and with --events its events.
    Show {
        /// The task's id.
        id: String,
        /// Its events too, oldest first.
        #[arg(long)]
        events: bool,
        /// Print the API's JSON instead.
        #[arg(long)]
        json: bool,
    },
    /// Cancel a pending, running or blocked task.
    Cancel {
        /// The task's id.
        id: String,
        /// Why, recorded in its `task.cancelled` event.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Run a failed task again, with at least one more attempt (scope `admin`).
    Retry {
        /// The task's id.
        id: String,
    },
    /// Answer what a blocked task asks (its `request`): a choice among its options,
    /// a text, and for a permission an edited tool input (JSON).
    Respond {
        /// The task's id.
        id: String,
        /// One of the request's options (`allow`, `deny`, `approve`, an answer).
        #[arg(long)]
        choice: Option<String>,
        /// A free-text answer, or a comment on the choice.
        #[arg(long)]
        text: Option<String>,
        /// For a permission: the tool input to run instead, as JSON.
        #[arg(long, value_parser = parse_json)]
        input: Option<Value>,
    },
    /// Print a task's events from its first, live, until it ends (exit status 0 when
    /// it completed).
    Follow {
        /// The task's id.
        id: String,
        /// Give up after this long.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
}

pub async fn run(args: TaskArgs) -> Result<ExitCode> {
    let remote = &args.remote;
    match args.command {
        TaskCommand::List {
            state,
            queue,
            project,
            agent,
            limit,
            json,
        } => {
            let mut query: Vec<(&str, String)> = vec![("limit", limit.to_string())];
            for (name, value) in [
                ("state", state),
                ("queue", queue),
                ("project", project),
                ("agent", agent),
            ] {
                if let Some(value) = value {
                    query.push((name, value));
                }
            }
            let page = remote
                .call(reqwest::Method::GET, "/v1/tasks", &query, None)
                .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&page)?);
            } else {
                print_table(page["tasks"].as_array().map(Vec::as_slice).unwrap_or(&[]));
            }
            Ok(ExitCode::SUCCESS)
        }
        TaskCommand::Show { id, events, json } => {
            let task = remote
                .call(reqwest::Method::GET, &format!("/v1/tasks/{id}"), &[], None)
                .await?;
            let events = if events {
                Some(
                    remote
                        .call(
                            reqwest::Method::GET,
                            &format!("/v1/tasks/{id}/events"),
                            &[],
                            None,
                        )
                        .await?,
                )
            } else {
                None
            };
            if json {
                let out = match events {
                    Some(events) => json!({"task": task, "events": events["events"]}),
                    None => task,
                };
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                print_task(&task);
                if let Some(events) = events {
                    println!();
                    for event in events["events"]
                        .as_array()
                        .map(Vec::as_slice)
                        .unwrap_or(&[])
                    {
                        println!("{}", crate::submit::summary(event));
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        TaskCommand::Cancel { id, reason } => {
            let body = json!({ "reason": reason });
            let task = remote
                .call(
                    reqwest::Method::POST,
                    &format!("/v1/tasks/{id}/cancel"),
                    &[],
                    Some(body),
                )
                .await?;
            println!("{id} {}", task["state"].as_str().unwrap_or("?"));
            Ok(ExitCode::SUCCESS)
        }
        TaskCommand::Retry { id } => {
            let task = remote
                .call(
                    reqwest::Method::POST,
                    &format!("/v1/tasks/{id}/retry"),
                    &[],
                    None,
                )
                .await?;
            println!(
                "{id} {} (attempt {} of at most {})",
                task["state"].as_str().unwrap_or("?"),
                task["attempt"],
                task["max_attempts"]
            );
            Ok(ExitCode::SUCCESS)
        }
        TaskCommand::Respond {
            id,
            choice,
            text,
            input,
        } => {
            let mut body = serde_json::Map::new();
            for (name, value) in [
                ("choice", choice.map(Value::String)),
                ("text", text.map(Value::String)),
                ("input", input),
            ] {
                if let Some(value) = value {
                    body.insert(name.into(), value);
                }
            }
            let task = remote
                .call(
                    reqwest::Method::POST,
                    &format!("/v1/tasks/{id}/respond"),
                    &[],
                    Some(Value::Object(body)),
                )
                .await?;
            println!("{id} {}", task["state"].as_str().unwrap_or("?"));
            Ok(ExitCode::SUCCESS)
        }
        TaskCommand::Follow { id, timeout } => crate::submit::follow(remote, &id, timeout).await,
    }
}

fn parse_json(text: &str) -> Result<Value, String> {
    serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))
}

/// The input as one line of at most `max` characters.
fn preview(input: &Value, max: usize) -> String {
    let text = match input {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match line.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &line[..cut]),
        None => line,
    }
}

fn print_table(tasks: &[Value]) {
    if tasks.is_empty() {
        eprintln!("no tasks");
        return;
    }
    println!(
        "{:<36}  {:<9}  {:<12}  {:<10}  {:>7}  {:<20}  INPUT",
        "ID", "STATE", "QUEUE", "AGENT", "ATTEMPT", "CREATED"
    );
    for t in tasks {
        let created = t["created_at"].as_str().unwrap_or("");
        println!(
            "{:<36}  {:<9}  {:<12}  {:<10}  {:>3}/{:<3}  {:<20}  {}",
            t["id"].as_str().unwrap_or("?"),
            t["state"].as_str().unwrap_or("?"),
            t["queue"].as_str().unwrap_or("?"),
            t["agent"].as_str().unwrap_or("?"),
            t["attempt"],
            t["max_attempts"],
            created.get(..19).unwrap_or(created).replace('T', " "),
            preview(&t["input"], 60)
        );
    }
}

fn print_task(task: &Value) {
    let fields = [
        "id",
        "state",
        "project",
        "queue",
        "agent",
        "model",
        "session_id",
        "repo",
        "parent_task_id",
        "priority",
        "attempt",
        "max_attempts",
        "worker_id",
        "run_at",
        "created_at",
        "started_at",
        "ended_at",
        "output_summary",
        "last_error",
    ];
    for field in fields {
        match &task[field] {
            Value::Null => {}
            Value::String(s) => println!("{field:<15} {s}"),
            other => println!("{field:<15} {other}"),
        }
    }
    let request = &task["request"];
    if task["state"] == "blocked" && request.is_object() {
        let options = request["options"]
            .as_array()
            .map(|o| {
                o.iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(" | ")
            })
            .unwrap_or_default();
        println!(
            "{:<15} {}: {} [{options}]{}",
            "asks",
            request["kind"].as_str().unwrap_or("?"),
            request["prompt"].as_str().unwrap_or(""),
            request["deadline"]
                .as_str()
                .map(|d| format!(" by {d}"))
                .unwrap_or_default()
        );
        if !request["tool_input"].is_null() {
            println!(
                "{:<15} {} {}",
                "tool",
                request["tool"].as_str().unwrap_or("?"),
                request["tool_input"]
            );
        }
    }
    if !task["response"].is_null() {
        println!("{:<15} {}", "answer", task["response"]);
    }
    let usage = &task["usage"];
    println!(
        "{:<15} {} in, {} out, ${}",
        "usage", usage["input_tokens"], usage["output_tokens"], usage["cost_usd"]
    );
    println!("{:<15} {}", "input", preview(&task["input"], 2000));
}

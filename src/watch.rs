//! `turnq watch`: prints the live event stream, filtered, following it through
//! reconnects from the last event printed.

use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use futures::StreamExt;

use crate::remote::RemoteArgs;

#[derive(Args, Debug)]
pub struct WatchArgs {
    #[command(flatten)]
    pub remote: RemoteArgs,

    /// Only the events of this task (its id).
    #[arg(long)]
    pub task: Option<String>,

    /// Only the events of tasks of this project.
    #[arg(long)]
    pub project: Option<String>,

    /// Only the events of tasks of this session (with --project: one session).
    #[arg(long)]
    pub session: Option<String>,

    /// Only the events of tasks of this queue.
    #[arg(long)]
    pub queue: Option<String>,

    /// Only events of this kind (`task.completed`), or of kinds starting with it when it
    /// ends in `.` (`task.`).
    #[arg(long)]
    pub kind: Option<String>,

    /// Start after this cursor (an event's id, as `--json` prints it) instead of now;
    /// `0-0` replays the whole log.
    #[arg(long)]
    pub after: Option<String>,

    /// Print each event as one line of JSON (with its `cursor`) instead of a summary.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(args: WatchArgs) -> Result<ExitCode> {
    let filters: Vec<(String, String)> = [
        ("task", args.task),
        ("project", args.project),
        ("session", args.session),
        ("queue", args.queue),
        ("kind", args.kind),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.map(|v| (k.to_owned(), v)))
    .collect();
    let events = args
        .remote
        .events(filters)
        .follow(reqwest::Client::new(), args.after);
    futures::pin_mut!(events);
    while let Some(event) = events.next().await {
        let event = event?;
        if args.json {
            println!("{}", event.data);
        } else {
            println!("{}", crate::submit::summary(&event.data));
        }
    }
    Ok(ExitCode::SUCCESS)
}

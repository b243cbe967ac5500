//! `turnq session worktree|archive|changes|apply|reject|revert|checkpoints|restore`: a
//! session's workspace from the command line, through the same REST routes as any
//! client (docs/people-in-the-loop.md).

use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Subcommand};
use serde_json::{Value, json};

use crate::remote::RemoteArgs;

#[derive(Args, Debug)]
pub struct SessionArgs {
    #[command(flatten)]
    pub remote: RemoteArgs,
    #[command(subcommand)]
    pub command: SessionCommand,
}

/// A session: its project (a task's `project`) and its id.
#[derive(Args, Debug)]
pub struct SessionRef {
    /// The session id.
    pub session: String,
    /// The project the session belongs to.
    #[arg(long, default_value = "default")]
    pub project: String,
}

impl SessionRef {
    fn path(&self, rest: &str) -> String {
        format!(
            "/v1/sessions/{}/{}/{rest}",
            encode(&self.project),
            encode(&self.session)
        )
    }
}

#[derive(Subcommand, Debug)]
pub enum SessionCommand {
    /// The session's worktree: host, path, branch, base commit, target branch.
    Worktree(SessionRef),
    /// Archive the session's worktree and remove its directory (the branch stays).
    Archive(SessionRef),
    /// The session's changes, one per file: id, status, operation, path; --diff shows
    /// each diff.
    Changes {
        #[command(flatten)]
        session: SessionRef,
        /// Only this status: pending, applied, rejected, reverted, superseded.
        #[arg(long)]
        status: Option<String>,
        /// Print each change's diff.
        #[arg(long)]
        diff: bool,
    },
    /// Commit pending changes onto the project branch (default: all pending ones).
    Apply(Decide),
    /// Reject pending changes (default: all pending ones).
    Reject(Decide),
    /// Undo pending changes in the worktree (default: all pending ones).
    Revert(Decide),
    /// The session's checkpoints, newest first.
    Checkpoints(SessionRef),
    /// Put the session back as it was at a checkpoint: files and transcript.
    Restore {
        /// The checkpoint's id.
        checkpoint: String,
    },
}

#[derive(Args, Debug)]
pub struct Decide {
    #[command(flatten)]
    session: SessionRef,
    /// The changes, by id (repeat or comma-separate); default: every pending one.
    #[arg(long = "id", value_delimiter = ',')]
    ids: Vec<String>,
    /// The commit message of an apply.
    #[arg(long)]
    message: Option<String>,
}

pub async fn run(args: SessionArgs) -> Result<ExitCode> {
    let remote = &args.remote;
    let get =
        |path: String| async move { remote.call(reqwest::Method::GET, &path, &[], None).await };
    let post = |path: String, body: Value| async move {
        remote
            .call(reqwest::Method::POST, &path, &[], Some(body))
            .await
    };
    match args.command {
        SessionCommand::Worktree(session) => {
            let answer = get(session.path("worktree")).await?;
            match answer.get("active").filter(|a| !a.is_null()) {
                Some(w) => print_worktree(w),
                None => eprintln!("session {} has no active worktree", session.session),
            }
        }
        SessionCommand::Archive(session) => {
            let worktree = post(session.path("worktree/archive"), json!({})).await?;
            println!("archived {}", worktree["path"].as_str().unwrap_or("?"));
        }
        SessionCommand::Changes {
            session,
            status,
            diff,
        } => {
            let mut path = session.path("changes");
            if let Some(status) = status {
                path.push_str(&format!("?status={}", encode(&status)));
            }
            let answer = get(path).await?;
            for change in answer["changes"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or(&[])
            {
                println!(
                    "{}  {:<10}  {:<6}  {}",
                    change["id"].as_str().unwrap_or("?"),
                    change["status"].as_str().unwrap_or("?"),
                    change["operation"].as_str().unwrap_or("?"),
                    change["path"].as_str().unwrap_or("?")
                );
                if diff {
                    println!("{}", change["diff"].as_str().unwrap_or(""));
                }
            }
        }
        SessionCommand::Apply(decide) => {
            let answer = post(decide.session.path("changes/apply"), decide.body()).await?;
            println!(
                "applied {} change(s) onto {} as {}",
                answer["changes"].as_array().map_or(0, Vec::len),
                answer["branch"].as_str().unwrap_or("?"),
                answer["commit_sha"].as_str().unwrap_or("?")
            );
            if let Some(warning) = answer["warning"].as_str() {
                eprintln!("warning: {warning}");
            }
        }
        SessionCommand::Reject(decide) => {
            let answer = post(decide.session.path("changes/reject"), decide.body()).await?;
            println!(
                "rejected {} change(s)",
                answer["changes"].as_array().map_or(0, Vec::len)
            );
        }
        SessionCommand::Revert(decide) => {
            let answer = post(decide.session.path("changes/revert"), decide.body()).await?;
            println!(
                "reverted {} change(s)",
                answer["changes"].as_array().map_or(0, Vec::len)
            );
        }
        SessionCommand::Checkpoints(session) => {
            let answer = get(session.path("checkpoints")).await?;
            for c in answer["checkpoints"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or(&[])
            {
                println!(
                    "{}  {}  {}  {}",
                    c["id"].as_str().unwrap_or("?"),
                    c["created_at"].as_str().unwrap_or("?"),
                    &c["commit_sha"]
                        .as_str()
                        .unwrap_or("?")
                        .chars()
                        .take(12)
                        .collect::<String>(),
                    c["label"].as_str().unwrap_or("")
                );
            }
        }
        SessionCommand::Restore { checkpoint } => {
            let answer = post(
                format!("/v1/checkpoints/{}/restore", encode(&checkpoint)),
                json!({}),
            )
            .await?;
            println!(
                "restored checkpoint {checkpoint}; {} transcript entries hidden",
                answer["entries_hidden"]
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

impl Decide {
    fn body(&self) -> Value {
        let mut body = serde_json::Map::new();
        if !self.ids.is_empty() {
            body.insert("ids".into(), json!(self.ids));
        }
        if let Some(message) = &self.message {
            body.insert("message".into(), json!(message));
        }
        Value::Object(body)
    }
}

fn print_worktree(w: &Value) {
    for key in [
        "host",
        "path",
        "branch",
        "base_commit",
        "target_branch",
        "repo",
        "created_at",
    ] {
        println!("{key:<14} {}", w[key].as_str().unwrap_or("-"));
    }
}

/// A path segment, percent-encoded.
fn encode(segment: &str) -> String {
    url::form_urlencoded::byte_serialize(segment.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

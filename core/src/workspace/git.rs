//! Running `git`: one place that builds the command line and the environment, so every
//! call is independent of the host's git configuration and of the environment the
//! process was started in, and every failure names the command and what git said.
//!
//! - Identity and signing come from `-c` options (`turnq <turnq@localhost>`, no GPG), the
//!   system config is skipped (`GIT_CONFIG_NOSYSTEM`) and hooks never run
//!   (`core.hooksPath=/dev/null`): `git worktree add` would otherwise run the
//!   repository's `post-checkout` hook.
//! - Variables that point git at another repository or index (`GIT_DIR`,
//!   `GIT_INDEX_FILE`, …), as a git hook that started us would have set, are removed;
//!   a temporary index is set per call ([`Git::index`]) and nowhere else.
//! - Pathspecs are literal (`GIT_LITERAL_PATHSPECS`): a file named `*.rs` names that
//!   file, not a glob.
//! - git never prompts (`GIT_TERMINAL_PROMPT=0`).

use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use super::WorkspaceError;

/// Options given to every call, ahead of the subcommand.
const CONFIG: &[&str] = &[
    "-c",
    "user.name=turnq",
    "-c",
    "user.email=turnq@localhost",
    "-c",
    "commit.gpgSign=false",
    "-c",
    "core.hooksPath=/dev/null",
    // A repository's config can name a program git runs while reading the work tree
    // (an fsmonitor hook); an agent working there could set one. Filter drivers named
    // in `.gitattributes` cannot be switched off from the command line: see
    // docs/operations.md.
    "-c",
    "core.fsmonitor=false",
];

/// Variables that would make git work on another repository, index or config than the
/// one named by the working directory.
const REMOVED_ENV: &[&str] = &[
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_INDEX_FILE",
    "GIT_COMMON_DIR",
    "GIT_OBJECT_DIRECTORY",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    "GIT_NAMESPACE",
    "GIT_PREFIX",
    "GIT_CONFIG",
    "GIT_CONFIG_PARAMETERS",
    "GIT_CONFIG_COUNT",
];

/// One git invocation in `dir`, optionally with a temporary index and input.
pub(super) struct Git<'a> {
    dir: &'a Path,
    index: Option<&'a Path>,
    stdin: Option<&'a [u8]>,
    config: Vec<String>,
}

/// What a finished git process left: its exit status, stdout and stderr.
pub(super) struct Output {
    pub success: bool,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

impl<'a> Git<'a> {
    pub fn new(dir: &'a Path) -> Self {
        Git {
            dir,
            index: None,
            stdin: None,
            config: Vec::new(),
        }
    }

    /// Uses `index` (`GIT_INDEX_FILE`) instead of the repository's own index.
    pub fn index(mut self, index: &'a Path) -> Self {
        self.index = Some(index);
        self
    }

    /// Feeds `input` to git's stdin.
    pub fn stdin(mut self, input: &'a [u8]) -> Self {
        self.stdin = Some(input);
        self
    }

    /// Adds a `-c key=value` for this call only.
    pub fn config(mut self, setting: String) -> Self {
        self.config.push(setting);
        self
    }

    /// Runs git and returns its stdout; a non-zero exit is [`WorkspaceError::Git`].
    pub async fn run(self, args: &[&str]) -> Result<Vec<u8>, WorkspaceError> {
        let command = self.describe(args);
        let out = self.output(args).await?;
        if out.success {
            Ok(out.stdout)
        } else {
            Err(WorkspaceError::Git {
                command,
                stderr: out.stderr,
            })
        }
    }

    /// Runs git and returns its stdout as text without the trailing newline: for the
    /// commands that print one name or object id.
    pub async fn text(self, args: &[&str]) -> Result<String, WorkspaceError> {
        let command = self.describe(args);
        let stdout = self.run(args).await?;
        let text = String::from_utf8(stdout).map_err(|_| WorkspaceError::Git {
            command,
            stderr: "git printed something that is not UTF-8 where a name or an object id \
                     was expected"
                .to_owned(),
        })?;
        Ok(text.trim_end_matches('\n').to_owned())
    }

    /// Runs git and returns how it ended, whatever its exit status: for the commands
    /// whose failure is an answer (does this ref exist?), not an error.
    pub async fn output(self, args: &[&str]) -> Result<Output, WorkspaceError> {
        let mut cmd = Command::new("git");
        cmd.current_dir(self.dir)
            .args(CONFIG)
            .args(self.config.iter().flat_map(|c| ["-c", c.as_str()]))
            .args(args)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_LITERAL_PATHSPECS", "1")
            .stdin(if self.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for name in REMOVED_ENV {
            cmd.env_remove(name);
        }
        if let Some(index) = self.index {
            cmd.env("GIT_INDEX_FILE", index);
        }
        let mut child = cmd.spawn().map_err(|e| {
            // Both a missing directory and a missing `git` are "not found" here.
            let why = if self.dir.is_dir() {
                "is git installed and on PATH?"
            } else {
                "the directory does not exist"
            };
            WorkspaceError::Io(format!("could not run `{}`: {why}", self.describe(args)), e)
        })?;
        // Written while git runs, not before: a large input would otherwise fill the
        // pipe and wait for a reader that is waiting for us.
        let input = child.stdin.take();
        let write = async {
            match (input, self.stdin) {
                (Some(mut pipe), Some(bytes)) => {
                    let written = pipe.write_all(bytes).await;
                    drop(pipe);
                    written
                }
                _ => Ok(()),
            }
        };
        let (written, finished) = tokio::join!(write, child.wait_with_output());
        let finished = finished
            .map_err(|e| WorkspaceError::Io(format!("waiting for `{}`", self.describe(args)), e))?;
        let mut stderr = String::from_utf8_lossy(&finished.stderr).trim().to_owned();
        if stderr.is_empty() && !finished.status.success() {
            stderr = format!("(nothing on stderr; git {})", finished.status);
        }
        // git may stop reading early when it refuses the input; its exit status says
        // why, so a broken pipe only matters when git claims success.
        if let Err(e) = written
            && finished.status.success()
        {
            return Err(WorkspaceError::Io(
                format!("writing the input of `{}`", self.describe(args)),
                e,
            ));
        }
        Ok(Output {
            success: finished.status.success(),
            stdout: finished.stdout,
            stderr,
        })
    }

    /// The command as shown in errors: the subcommand and its arguments, with the
    /// directory, without the fixed `-c` options.
    fn describe(&self, args: &[&str]) -> String {
        format!("git {} (in {})", args.join(" "), self.dir.display())
    }
}

/// A path in the temp dir for a file of ours (a temporary index, an attributes file),
/// removed with its lock file when dropped. It is a path only: for an index, git
/// creates the file on first write, and a missing index reads as empty.
pub(super) struct TempPath {
    path: PathBuf,
}

impl TempPath {
    pub fn new(kind: &str) -> Self {
        TempPath {
            path: std::env::temp_dir().join(format!("turnq-{kind}-{}", uuid::Uuid::new_v4())),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        // Best effort: a leftover file in the temp dir harms nothing.
        let _ = std::fs::remove_file(&self.path);
        let mut lock = self.path.clone().into_os_string();
        lock.push(".lock");
        let _ = std::fs::remove_file(lock);
    }
}

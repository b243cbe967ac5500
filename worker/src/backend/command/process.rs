//! The agent's process, from spawn to reaping: its stdin, the tail of its stderr, and
//! stopping it when the turn is cancelled or passes its deadline.
//!
//! Invariants: the child leads a process group of its own, so that stopping it also
//! stops whatever it started (a shell's children, an agent's tools); a stopped child is
//! always reaped before the turn returns, never left a zombie; and a turn that is
//! aborted instead of stopped (nothing can be awaited then) still kills the whole group
//! when its process is dropped (`Drop`, and `kill_on_drop` for the child itself).

use std::{
    path::Path,
    process::{ExitStatus, Stdio},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWriteExt},
    process::{Child, ChildStdout, Command},
    task::JoinHandle,
    time::{Instant, sleep_until},
};
use tokio_util::sync::CancellationToken;

use super::CommandConfig;
use crate::backend::TurnError;

/// How much of the end of stderr a crash message carries, in bytes.
pub const STDERR_TAIL_BYTES: usize = 2048;

/// How long to wait, after the child exited, for the rest of its stderr (a grandchild
/// may still hold the pipe open).
const STDERR_PATIENCE: Duration = Duration::from_secs(1);

/// A running agent program.
pub(super) struct AgentProcess {
    child: Child,
    /// The program as configured, to name it in messages.
    program: String,
    /// The tail of stderr, read on a task of its own so a chatty stderr never blocks
    /// the child.
    stderr: Option<JoinHandle<String>>,
}

impl AgentProcess {
    /// Starts `config.program` with `args` in `dir` (the worker's directory when
    /// `None`), writing `input` to its stdin when `config.stdin`; returns it and its
    /// stdout. A program that cannot be started for a reason the next attempt would
    /// meet again (not found, not executable, a missing directory) is a fatal failure.
    pub(super) async fn spawn(
        config: &CommandConfig,
        args: Vec<String>,
        dir: Option<&Path>,
        input: String,
    ) -> Result<(AgentProcess, ChildStdout), TurnError> {
        let mut command = Command::new(&config.program);
        command
            .args(args)
            .envs(&config.env)
            .stdin(if config.stdin {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        // A group of its own, so that a cancelled turn also kills what the agent started.
        #[cfg(unix)]
        command.process_group(0);
        if let Some(dir) = dir {
            command.current_dir(dir);
        }
        let mut child = command.spawn().map_err(|e| {
            let message = format!("cannot start the agent program {:?}: {e}", config.program);
            match e.kind() {
                // The same configuration fails the same way on the next attempt.
                std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied => {
                    TurnError::fatal(message)
                }
                // Out of processes or file descriptors, say: may pass.
                _ => TurnError::retryable(message),
            }
        })?;

        if let Some(mut stdin) = child.stdin.take() {
            // On a task of its own: a child that does not read stdin before writing a
            // pipe-full of output would otherwise deadlock against this write. A child
            // that exits without reading it is not an error here (its exit status says).
            tokio::spawn(async move {
                let _ = stdin.write_all(input.as_bytes()).await;
                let _ = stdin.shutdown().await;
            });
        }
        let stderr = child
            .stderr
            .take()
            .map(|stderr| tokio::spawn(read_tail(stderr, STDERR_TAIL_BYTES)));
        let stdout = child.stdout.take();
        let mut process = AgentProcess {
            child,
            program: config.program.clone(),
            stderr,
        };
        match stdout {
            Some(stdout) => Ok((process, stdout)),
            None => {
                process.stop().await;
                Err(TurnError::fatal("the child's stdout was not captured"))
            }
        }
    }

    /// `work`'s result, unless `cancel` fires or `deadline` passes first. When either
    /// does, or `work` fails, the process is stopped (see [`AgentProcess::stop`]) before
    /// the error is returned.
    pub(super) async fn unless_stopped<T>(
        &mut self,
        cancel: &CancellationToken,
        deadline: Instant,
        work: impl Future<Output = Result<T, TurnError>>,
    ) -> Result<T, TurnError> {
        let done = tokio::select! {
            biased;
            e = interrupted(cancel, deadline, &self.program) => Err(e),
            done = work => done,
        };
        if done.is_err() {
            self.stop().await;
        }
        done
    }

    /// The child's exit status, unless `cancel` fires or `deadline` passes first; then
    /// the process is stopped and that is the error.
    pub(super) async fn wait(
        &mut self,
        cancel: &CancellationToken,
        deadline: Instant,
    ) -> Result<ExitStatus, TurnError> {
        let status = tokio::select! {
            biased;
            e = interrupted(cancel, deadline, &self.program) => Err(e),
            status = self.child.wait() => status.map_err(|e| TurnError::retryable(format!(
                "waiting for the agent program {:?}: {e}", self.program
            ))),
        };
        if status.is_err() {
            self.stop().await;
        }
        status
    }

    /// The end of what the child wrote to stderr, once the pipe is closed or after
    /// [`STDERR_PATIENCE`] (a grandchild may still hold it open); empty when unknown.
    pub(super) async fn stderr_tail(&mut self) -> String {
        match self.stderr.take() {
            Some(reading) => tokio::time::timeout(STDERR_PATIENCE, reading)
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or_default(),
            None => String::new(),
        }
    }

    /// Kills the child's process group, then the child, and reaps it.
    async fn stop(&mut self) {
        // `id()` is `None` once the child is reaped; until then its pid, which is also
        // its group's id, cannot be reused, so the signal cannot reach a stranger.
        #[cfg(unix)]
        if let Some(leader) = self.child.id() {
            kill_group(leader, &self.program);
        }
        // The child itself too: the group kill is best effort (and there is none off
        // Unix). `kill` waits for it; the `wait` reaps it when `kill` failed first.
        let _ = self.child.kill().await;
        let _ = self.child.wait().await;
    }
}

impl Drop for AgentProcess {
    /// An aborted turn (its backend ignored its cancellation, or the worker stopped)
    /// drops its process unstopped: kill the whole group, not only the child that
    /// `kill_on_drop` kills, or the child's own children would run on. `id()` is `Some`
    /// only while the child is not reaped, so the group is still the child's.
    fn drop(&mut self) {
        #[cfg(unix)]
        if let Some(leader) = self.child.id() {
            kill_group(leader, &self.program);
        }
    }
}

/// SIGKILL to the process group `leader` leads. Best effort: a failure is logged and
/// the caller still kills the child itself.
#[cfg(unix)]
fn kill_group(leader: u32, program: &str) {
    use nix::{
        errno::Errno,
        sys::signal::{Signal, killpg},
        unistd::Pid,
    };
    let Ok(pgid) = i32::try_from(leader) else {
        tracing::warn!(
            pid = leader,
            program,
            "a child pid beyond pid_t: its process group is not killed"
        );
        return;
    };
    match killpg(Pid::from_raw(pgid), Signal::SIGKILL) {
        // ESRCH: nothing left in the group to kill.
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(e) => {
            tracing::warn!(pgid, program, error = %e, "killing the agent's process group failed");
        }
    }
}

/// Resolves when the turn must stop: its cancellation fired (checked first) or its
/// deadline passed; the error says which.
async fn interrupted(cancel: &CancellationToken, deadline: Instant, program: &str) -> TurnError {
    tokio::select! {
        biased;
        _ = cancel.cancelled() => TurnError::Cancelled,
        _ = sleep_until(deadline) => TurnError::retryable(format!(
            "the agent program {program:?} ran past the turn's deadline and was killed"
        )),
    }
}

/// Up to the last `limit` bytes `reader` yields (a character cut at the start is
/// replaced, not an error).
async fn read_tail(mut reader: impl AsyncRead + Unpin, limit: usize) -> String {
    let mut tail = Vec::with_capacity(2 * limit);
    let mut buf = vec![0; 8192];
    while let Ok(n) = reader.read(&mut buf).await {
        if n == 0 {
            break;
        }
        tail.extend_from_slice(&buf[..n]);
        if tail.len() > 2 * limit {
            tail.drain(..tail.len() - limit);
        }
    }
    let start = tail.len().saturating_sub(limit);
    String::from_utf8_lossy(&tail[start..]).into_owned()
}

// Unix only: the tests run `sh` and look processes up by pid.
#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use crate::backend::{
        command::tests::{backend, pairs, run, sh, start},
        tests::task,
    };
    use nix::{
        errno::Errno,
        sys::signal::kill,
        unistd::{Pid, getpgid},
    };
    use serde_json::json;
    use tokio::sync::mpsc;
    use turnq_core::event::OutputChunk;
    use turnq_testkit::{eventually, patience, within};

    /// A shell that starts a grandchild (in the shell's process group: a shell running
    /// a script has no job control), prints its own pid and the grandchild's, and
    /// waits. The grandchild sleeps far longer than any test waits, so it being gone
    /// proves it was killed.
    const PARENT_OF_SLEEPER: &str = "sleep 600 & echo $$ $!; wait";

    fn pid(text: &str) -> Pid {
        Pid::from_raw(text.parse().expect("the script prints pids"))
    }

    /// The agent's pid and its grandchild's, as [`PARENT_OF_SLEEPER`] prints them, once
    /// both are running in the agent's process group.
    async fn pids(rx: &mut mpsc::Receiver<OutputChunk>) -> (Pid, Pid) {
        let line = within("the agent printing its pids", rx.recv())
            .await
            .unwrap()
            .expect("the agent prints its pids before the turn ends")
            .text;
        let [agent, grandchild] = line.split_whitespace().collect::<Vec<_>>()[..] else {
            panic!("expected two pids, got {line:?}");
        };
        let (agent, grandchild) = (pid(agent), pid(grandchild));
        assert!(!gone(agent) && !gone(grandchild), "both run: {line:?}");
        assert_eq!(getpgid(Some(agent)), Ok(agent), "the agent leads its group");
        assert_eq!(
            getpgid(Some(grandchild)),
            Ok(agent),
            "the grandchild is in it"
        );
        (agent, grandchild)
    }

    /// Whether `pid` is gone: no such process (ESRCH), or a zombie, which is dead and
    /// only waits for its parent to reap it (a killed grandchild is reparented to a
    /// PID 1 that may never reap it).
    fn gone(pid: Pid) -> bool {
        if kill(pid, None) == Err(Errno::ESRCH) {
            return true;
        }
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
            // The state follows the command name, which is in parentheses and may hold
            // spaces or parentheses itself.
            stat.rsplit(')')
                .next()
                .unwrap_or("")
                .trim()
                .starts_with('Z')
        })
    }

    /// Waits until `pid` is gone (see [`gone`]).
    async fn eventually_gone(what: &str, pid: Pid) {
        eventually(format!("{what} ({pid}) gone"), || async move {
            if gone(pid) {
                Ok(())
            } else {
                Err("still running")
            }
        })
        .await
        .unwrap();
    }

    #[tokio::test]
    async fn the_input_is_written_to_stdin_which_is_then_closed() {
        let backend = backend(json!({"program": "cat", "stdin": true}));
        let (result, chunks) = run(&backend, task(json!("hello from stdin\nsecond"))).await;
        assert_eq!(
            pairs(&chunks),
            [("text", "hello from stdin\n"), ("text", "second")]
        );
        assert!(result.is_ok(), "{result:?}");
    }

    #[tokio::test]
    async fn env_is_set_and_the_worktree_path_wins_over_cwd() {
        let backend = backend(json!({
            "program": "sh", "args": ["-c", "printf '%s %s' \"$AGENT_FLAVOUR\" \"$(pwd -P)\""],
            "env": {"AGENT_FLAVOUR": "mint"}, "cwd": "/",
        }));
        let (_, chunks) = run(&backend, task(json!("x"))).await;
        assert_eq!(chunks[0].text, "mint /");

        let worktree = std::env::temp_dir().canonicalize().unwrap();
        let mut t = task(json!("x"));
        t.worktree_path = Some(worktree.to_string_lossy().into_owned());
        let (_, chunks) = run(&backend, t).await;
        assert_eq!(chunks[0].text, format!("mint {}", worktree.display()));
    }

    #[tokio::test]
    async fn cancellation_kills_the_child_and_its_process_group() {
        let cancel = CancellationToken::new();
        let (running, mut rx) = start(
            &sh(PARENT_OF_SLEEPER, "text"),
            task(json!("x")),
            cancel.clone(),
            patience(),
        );
        let (agent, grandchild) = pids(&mut rx).await;
        cancel.cancel();
        let result = within("the cancelled turn ending", running)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(result, Err(TurnError::Cancelled));
        // The turn reaps its child before it returns: no waiting for that.
        assert_eq!(kill(agent, None), Err(Errno::ESRCH), "the agent was reaped");
        eventually_gone("the agent's grandchild", grandchild).await;
    }

    #[tokio::test]
    async fn a_turn_past_its_deadline_is_killed_and_retryable() {
        // A deadline far off, then time is moved past it once the agent and its
        // grandchild run: however slow the machine, the deadline passes after they
        // started, never before.
        let far = patience() * 10;
        let (running, mut rx) = start(
            &sh(PARENT_OF_SLEEPER, "text"),
            task(json!("x")),
            CancellationToken::new(),
            far,
        );
        let (agent, grandchild) = pids(&mut rx).await;
        tokio::time::pause();
        tokio::time::advance(far).await;
        tokio::time::resume();
        let result = within("the turn past its deadline ending", running)
            .await
            .unwrap()
            .unwrap();
        let Err(TurnError::Retryable { message, .. }) = result else {
            panic!("expected a retryable failure, got {result:?}");
        };
        assert!(message.contains("deadline"), "{message}");
        assert_eq!(kill(agent, None), Err(Errno::ESRCH), "the agent was reaped");
        eventually_gone("the agent's grandchild", grandchild).await;
    }

    #[tokio::test]
    async fn an_aborted_turn_kills_its_child_and_its_process_group() {
        let (running, mut rx) = start(
            &sh(PARENT_OF_SLEEPER, "text"),
            task(json!("x")),
            CancellationToken::new(),
            patience(),
        );
        let (agent, grandchild) = pids(&mut rx).await;
        running.abort();
        let aborted = within("the aborted turn ending", running).await.unwrap();
        assert!(aborted.is_err_and(|e| e.is_cancelled()));
        eventually_gone("the aborted turn's agent", agent).await;
        eventually_gone("the aborted turn's grandchild", grandchild).await;
    }

    #[tokio::test]
    async fn a_crash_mid_turn_is_retryable_with_the_status_and_the_end_of_stderr() {
        let script = "echo partial; head -c 5000 /dev/zero | tr '\\0' x >&2; echo 'boom: it broke' >&2; exit 3";
        let (result, chunks) = run(&sh(script, "text"), task(json!("x"))).await;
        assert_eq!(pairs(&chunks), [("text", "partial\n")]);
        let Err(TurnError::Retryable { message, .. }) = result else {
            panic!("expected a retryable failure, got {result:?}");
        };
        assert!(message.contains("exit status: 3"), "{message}");
        assert!(message.ends_with("boom: it broke"), "{message}");
        assert!(
            message.len() < STDERR_TAIL_BYTES + 200,
            "only the tail: {}",
            message.len()
        );
    }

    #[tokio::test]
    async fn a_program_that_cannot_be_started_is_fatal() {
        let backend = backend(json!({"program": "/nonexistent/turnq-agent"}));
        let (result, _) = run(&backend, task(json!("x"))).await;
        let Err(TurnError::Fatal { message, .. }) = result else {
            panic!("expected a fatal failure, got {result:?}");
        };
        assert!(message.contains("/nonexistent/turnq-agent"), "{message}");
    }
}

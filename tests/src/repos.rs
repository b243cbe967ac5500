//! Real git repositories for the workspace tests: a scratch directory holding a
//! repository root and worktree directories, `git` run in it, an app whose worker
//! works under them, and a coding task for the `script` backend (which writes files in
//! its worktree).

use std::path::{Path, PathBuf};

use anyhow::{Result, ensure};
use serde_json::{Value, json};

use crate::TestApp;

/// A scratch directory holding a repository root (`repos/`) and worktrees (`wt-*`),
/// removed on drop.
pub struct Scratch {
    pub dir: PathBuf,
}

impl Scratch {
    pub fn new() -> Result<Scratch> {
        let dir = std::env::temp_dir().join(format!("turnq-ws-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(dir.join("repos"))?;
        // Canonical, as the worker compares repositories with their real paths.
        let dir = dir.canonicalize()?;
        Ok(Scratch { dir })
    }

    /// The directory repositories may live under (`--repo-roots`).
    pub fn roots(&self) -> String {
        self.dir.join("repos").display().to_string()
    }

    /// Where the worker of `host` makes its worktrees (`--worktree-dir`).
    pub fn worktrees(&self, host: &str) -> String {
        self.dir.join(format!("wt-{host}")).display().to_string()
    }

    /// A repository on `main` with `README.md` and `src/lib.rs` committed.
    pub fn repo(&self, name: &str) -> Result<PathBuf> {
        let repo = self.dir.join("repos").join(name);
        std::fs::create_dir_all(repo.join("src"))?;
        git(&repo, &["init", "-q", "-b", "main"])?;
        std::fs::write(repo.join("README.md"), "# demo\n")?;
        std::fs::write(repo.join("src/lib.rs"), "pub fn answer() -> u32 { 41 }\n")?;
        git(&repo, &["add", "-A"])?;
        git(&repo, &["commit", "-q", "-m", "start"])?;
        Ok(repo)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs `git args` in `dir` (with an identity of its own) and returns its output,
/// trimmed.
pub fn git(dir: &Path, args: &[&str]) -> Result<String> {
    let out = std::process::Command::new("git")
        .args(["-c", "user.name=test", "-c", "user.email=test@localhost"])
        .args(args)
        .current_dir(dir)
        .output()?;
    ensure!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}

/// The app with one worker on `host`, allowed the scratch's repositories.
pub async fn app_with_worker(scratch: &Scratch, host: &str) -> Result<TestApp> {
    let mut app = TestApp::spawn_without_workers().await?;
    let (roots, worktrees) = (scratch.roots(), scratch.worktrees(host));
    app.start_worker(&[
        "--host",
        host,
        "--repo-roots",
        &roots,
        "--worktree-dir",
        &worktrees,
    ])
    .await?;
    Ok(app)
}

/// A task writing (or deleting, `null`) `files` in session `session`'s worktree of
/// `repo`, in project `default`.
pub fn coding(repo: &Path, session: &str, files: Value) -> Value {
    json!({"repo": repo.display().to_string(), "session_id": session,
           "input": {"script": {"files": files, "chunks": ["edited"]}}})
}

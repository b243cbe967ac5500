//! Test fixtures: a real git repository in its own temp directory, removed on drop.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A temp directory holding `repo/`, a git repository on `main` with one commit of
/// `README.md` and `src/a.rs`; worktrees and other files go beside it in `dir`.
pub struct TestRepo {
    pub dir: PathBuf,
    pub repo: PathBuf,
}

impl TestRepo {
    pub fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("turnq-ws-test-{}", uuid::Uuid::new_v4()));
        let repo = dir.join("repo");
        std::fs::create_dir_all(repo.join("src")).unwrap();
        let this = TestRepo { dir, repo };
        git(&this.repo, &["init", "-q", "-b", "main"]);
        this.write("README.md", "hello\n");
        this.write("src/a.rs", "fn a() {}\n");
        git(&this.repo, &["add", "-A"]);
        git(&this.repo, &["commit", "-q", "-m", "initial"]);
        this
    }

    /// Writes `rel` (creating its directories) in the repository's checkout.
    pub fn write(&self, rel: &str, content: &str) {
        write(&self.repo, rel, content);
    }

    /// A path beside the repository, for worktrees.
    pub fn beside(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

impl Drop for TestRepo {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn write(root: &Path, rel: &str, content: &str) {
    let path = root.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, content).unwrap();
}

pub fn read(root: &Path, rel: &str) -> String {
    std::fs::read_to_string(root.join(rel)).unwrap()
}

/// Runs git in `dir`, independent of the host's config; panics with its stderr on
/// failure; returns stdout, trimmed.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .current_dir(dir)
        .args(["-c", "user.name=test", "-c", "user.email=test@localhost"])
        .args(["-c", "commit.gpgSign=false"])
        .args(args)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env_remove("GIT_DIR")
        .env_remove("GIT_INDEX_FILE")
        .env_remove("GIT_WORK_TREE")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

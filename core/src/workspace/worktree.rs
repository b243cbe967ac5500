//! Worktrees: one checkout per agent session, on its own branch, beside the repository's
//! own checkout. Removing a worktree keeps its branch and checkpoint refs, so it can be
//! created again from the branch (after the session moved hosts, or was cleaned up).

use std::path::{Path, PathBuf};

use super::WorkspaceError;
use super::git::Git;

/// A worktree that exists: where, on which branch, and the commit its changes are
/// measured against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorktreeInfo {
    pub path: PathBuf,
    pub branch: String,
    pub base_commit: String,
}

/// Creates a worktree of `repo` at `path` on a new branch `branch` starting at `base`
/// (a commit-ish; the repository's HEAD when `None`), creating the parent directories of
/// `path`.
///
/// When `branch` already exists the worktree is created from it instead, and
/// `base_commit` is `base` as the caller passes it (the session's original base), or,
/// without one, the merge-base of the branch and the repository's HEAD. When `path` is
/// already a worktree on `branch` (a retried call), it is kept as it is.
pub async fn create_worktree(
    repo: &Path,
    path: &Path,
    branch: &str,
    base: Option<&str>,
) -> Result<WorktreeInfo, WorkspaceError> {
    check_branch_name(repo, branch).await?;
    let path = absolute(path)?;
    let git = || Git::new(repo);
    let branch_ref = format!("refs/heads/{branch}");
    let exists = git()
        .output(&[
            "rev-parse",
            "--verify",
            "--quiet",
            &format!("{branch_ref}^{{commit}}"),
        ])
        .await?
        .success;
    let base_commit = match (base, exists) {
        (Some(base), _) => resolve_commit(repo, base).await?,
        (None, false) => resolve_commit(repo, "HEAD").await?,
        (None, true) => git().text(&["merge-base", "HEAD", &branch_ref]).await?,
    };
    let info = WorktreeInfo {
        path: path.clone(),
        branch: branch.to_owned(),
        base_commit: base_commit.clone(),
    };
    if exists && registered_on(repo, &path).await?.as_deref() == Some(branch_ref.as_str()) {
        return Ok(info);
    }
    if let Some(parent) = path.parent() {
        tokio::fs::create_dir_all(parent).await.map_err(|e| {
            WorkspaceError::Io(
                format!(
                    "could not create {}, the parent directory of the worktree",
                    parent.display()
                ),
                e,
            )
        })?;
    }
    let path_arg = path.to_string_lossy();
    if exists {
        // A worktree whose directory was deleted still holds its branch until pruned.
        git().run(&["worktree", "prune"]).await?;
        git()
            .run(&["worktree", "add", "--", &path_arg, branch])
            .await?;
    } else {
        git()
            .run(&[
                "worktree",
                "add",
                "-b",
                branch,
                "--",
                &path_arg,
                &base_commit,
            ])
            .await?;
    }
    Ok(info)
}

/// Removes the worktree at `path` (its files, modified or not, and git's record of it);
/// the branch and the checkpoint refs stay. Nothing to do when the directory is
/// already gone, except forgetting it.
pub async fn remove_worktree(repo: &Path, path: &Path) -> Result<(), WorkspaceError> {
    let path = absolute(path)?;
    let present = tokio::fs::try_exists(&path)
        .await
        .map_err(|e| WorkspaceError::Io(format!("could not inspect {}", path.display()), e))?;
    if present {
        Git::new(repo)
            .run(&[
                "worktree",
                "remove",
                "--force",
                "--",
                &path.to_string_lossy(),
            ])
            .await?;
    }
    Git::new(repo).run(&["worktree", "prune"]).await?;
    Ok(())
}

/// The full id of the commit that `rev` names in the repository at `dir`.
pub(super) async fn resolve_commit(dir: &Path, rev: &str) -> Result<String, WorkspaceError> {
    if rev.starts_with('-') {
        return Err(WorkspaceError::InvalidName {
            name: rev.to_owned(),
            why: "a commit name cannot start with `-`".to_owned(),
        });
    }
    let spec = format!("{rev}^{{commit}}");
    let out = Git::new(dir)
        .output(&["rev-parse", "--verify", "--quiet", &spec])
        .await?;
    if !out.success {
        return Err(WorkspaceError::Git {
            command: format!("git rev-parse --verify {spec} (in {})", dir.display()),
            stderr: format!("`{rev}` names no commit in this repository"),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Refuses a branch name git would refuse, or that could be read as an option.
pub(super) async fn check_branch_name(repo: &Path, branch: &str) -> Result<(), WorkspaceError> {
    let valid = !branch.starts_with('-')
        && Git::new(repo)
            .output(&["check-ref-format", &format!("refs/heads/{branch}")])
            .await?
            .success;
    if valid {
        Ok(())
    } else {
        Err(WorkspaceError::InvalidName {
            name: branch.to_owned(),
            why: "it is not a valid branch name (see `git check-ref-format`)".to_owned(),
        })
    }
}

/// The ref checked out in the worktree registered at `path`, if `path` is one.
async fn registered_on(repo: &Path, path: &Path) -> Result<Option<String>, WorkspaceError> {
    let Ok(wanted) = tokio::fs::canonicalize(path).await else {
        return Ok(None);
    };
    let listing = Git::new(repo)
        .run(&["worktree", "list", "--porcelain", "-z"])
        .await?;
    let listing = String::from_utf8_lossy(&listing);
    let mut here = false;
    for field in listing.split('\0') {
        if let Some(listed) = field.strip_prefix("worktree ") {
            here = tokio::fs::canonicalize(listed).await.ok().as_deref() == Some(&wanted);
        } else if here && let Some(branch) = field.strip_prefix("branch ") {
            return Ok(Some(branch.to_owned()));
        }
    }
    Ok(None)
}

fn absolute(path: &Path) -> Result<PathBuf, WorkspaceError> {
    std::path::absolute(path).map_err(|e| {
        WorkspaceError::Io(
            format!("could not make {} an absolute path", path.display()),
            e,
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workspace::testing::{TestRepo, git, read, write};

    #[tokio::test]
    async fn a_worktree_is_created_on_a_new_branch_at_head() {
        let t = TestRepo::new();
        let path = t.beside("worktrees/session-1");
        let info = create_worktree(&t.repo, &path, "turnq/s1", None)
            .await
            .unwrap();
        assert_eq!(info.base_commit, git(&t.repo, &["rev-parse", "HEAD"]));
        assert_eq!(info.branch, "turnq/s1");
        assert_eq!(info.path, path);
        assert_eq!(read(&path, "src/a.rs"), "fn a() {}\n");
        assert_eq!(git(&path, &["branch", "--show-current"]), "turnq/s1");
        // A retried call finds it there and keeps it.
        let again = create_worktree(&t.repo, &path, "turnq/s1", None)
            .await
            .unwrap();
        assert_eq!(again, info);
    }

    #[tokio::test]
    async fn a_removed_worktree_is_recreated_from_its_branch_with_the_given_base() {
        let t = TestRepo::new();
        let path = t.beside("wt");
        let info = create_worktree(&t.repo, &path, "turnq/s1", Some("main"))
            .await
            .unwrap();
        write(&path, "agent.txt", "work\n");
        git(&path, &["add", "agent.txt"]);
        git(&path, &["commit", "-q", "-m", "agent work"]);

        remove_worktree(&t.repo, &path).await.unwrap();
        assert!(!path.exists());
        git(&t.repo, &["rev-parse", "--verify", "refs/heads/turnq/s1"]);
        // Idempotent once the directory is gone.
        remove_worktree(&t.repo, &path).await.unwrap();

        let again = create_worktree(&t.repo, &path, "turnq/s1", Some(&info.base_commit))
            .await
            .unwrap();
        assert_eq!(again.base_commit, info.base_commit);
        assert_eq!(read(&path, "agent.txt"), "work\n");

        // Without a base, the merge-base with the repository's HEAD.
        remove_worktree(&t.repo, &path).await.unwrap();
        let guessed = create_worktree(&t.repo, &path, "turnq/s1", None)
            .await
            .unwrap();
        assert_eq!(guessed.base_commit, info.base_commit);
    }

    #[tokio::test]
    async fn a_worktree_whose_directory_vanished_is_recreated() {
        let t = TestRepo::new();
        let path = t.beside("wt");
        create_worktree(&t.repo, &path, "turnq/s1", None)
            .await
            .unwrap();
        std::fs::remove_dir_all(&path).unwrap();
        create_worktree(&t.repo, &path, "turnq/s1", None)
            .await
            .unwrap();
        assert_eq!(read(&path, "README.md"), "hello\n");
    }

    #[tokio::test]
    async fn bad_branch_names_and_bases_are_refused() {
        let t = TestRepo::new();
        let path = t.beside("wt");
        for branch in ["-x", "a..b", "with space", ""] {
            let err = create_worktree(&t.repo, &path, branch, None)
                .await
                .unwrap_err();
            assert!(matches!(err, WorkspaceError::InvalidName { .. }), "{err}");
        }
        let err = create_worktree(&t.repo, &path, "ok", Some("no-such-commit"))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("names no commit"), "{err}");
        assert!(!path.exists());
    }
}

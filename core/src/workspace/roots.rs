//! The allow-list of repository roots: the directories under which a task may name a
//! repository to work in. Everything is compared after canonicalization, so neither a
//! symbolic link nor a `..` can lead a repository path out of its root.

use std::path::PathBuf;

use super::WorkspaceError;
use super::git::Git;

/// The directories under which repositories may be used.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RepoRoots(Vec<PathBuf>);

impl RepoRoots {
    pub fn new(roots: Vec<PathBuf>) -> Self {
        RepoRoots(roots)
    }

    /// The roots as configured.
    pub fn roots(&self) -> &[PathBuf] {
        &self.0
    }

    /// Canonicalizes `repo` and returns it when it lies inside one of the roots (after
    /// canonicalization, so a symbolic link cannot escape) and is the top level of a
    /// git repository with a work tree. A subdirectory of a repository is refused: git
    /// would work on the repository above it, which may lie outside every root.
    pub async fn check(&self, repo: &str) -> Result<PathBuf, WorkspaceError> {
        let canonical =
            tokio::fs::canonicalize(repo)
                .await
                .map_err(|e| WorkspaceError::NotARepository {
                    path: repo.to_owned(),
                    detail: format!("it cannot be resolved ({e}); name an existing directory"),
                })?;
        let mut inside = false;
        for root in &self.0 {
            // A root that does not exist (yet) holds nothing.
            if let Ok(root) = tokio::fs::canonicalize(root).await
                && canonical.starts_with(&root)
            {
                inside = true;
                break;
            }
        }
        if !inside {
            return Err(WorkspaceError::OutsideRoots {
                path: format!("{repo} (resolved to {})", canonical.display()),
                roots: self.describe(),
            });
        }
        if !tokio::fs::metadata(&canonical)
            .await
            .map(|m| m.is_dir())
            .unwrap_or(false)
        {
            return Err(WorkspaceError::NotARepository {
                path: repo.to_owned(),
                detail: "it is not a directory".to_owned(),
            });
        }
        let not_a_repository = |detail: String| WorkspaceError::NotARepository {
            path: repo.to_owned(),
            detail,
        };
        let bare = Git::new(&canonical)
            .output(&["rev-parse", "--is-bare-repository"])
            .await?;
        if !bare.success {
            return Err(not_a_repository(bare.stderr));
        }
        if bare.stdout.starts_with(b"true") {
            return Err(not_a_repository(
                "it is a bare repository; turnq needs one with a work tree".to_owned(),
            ));
        }
        let top = Git::new(&canonical)
            .output(&["rev-parse", "--show-toplevel"])
            .await?;
        if !top.success {
            return Err(not_a_repository(format!(
                "it has no work tree (is it a `.git` directory?): {}",
                top.stderr
            )));
        }
        let top = PathBuf::from(String::from_utf8_lossy(&top.stdout).trim_end_matches('\n'));
        if top != canonical {
            return Err(not_a_repository(format!(
                "it is inside the repository {}, not its top level; name the top level",
                top.display()
            )));
        }
        Ok(canonical)
    }

    fn describe(&self) -> String {
        if self.0.is_empty() {
            return "(none configured)".to_owned();
        }
        self.0
            .iter()
            .map(|r| r.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;
    use crate::workspace::testing::{TestRepo, git};

    #[tokio::test]
    async fn a_repository_inside_a_root_is_accepted_as_its_canonical_path() {
        let t = TestRepo::new();
        let roots = RepoRoots::new(vec![t.dir.clone()]);
        let indirect = t.repo.join("src/..");
        let checked = roots.check(&indirect.to_string_lossy()).await.unwrap();
        assert_eq!(checked, t.repo.canonicalize().unwrap());
    }

    #[tokio::test]
    async fn a_repository_outside_the_roots_is_refused() {
        let t = TestRepo::new();
        let allowed = t.beside("allowed");
        std::fs::create_dir_all(&allowed).unwrap();
        let roots = RepoRoots::new(vec![allowed]);
        let err = roots.check(&t.repo.to_string_lossy()).await.unwrap_err();
        assert!(matches!(err, WorkspaceError::OutsideRoots { .. }), "{err}");
        assert!(err.to_string().contains("allowed"), "{err}");
    }

    #[tokio::test]
    async fn a_symlink_inside_a_root_pointing_outside_is_refused() {
        let t = TestRepo::new();
        let allowed = t.beside("allowed");
        std::fs::create_dir_all(&allowed).unwrap();
        symlink(&t.repo, allowed.join("sneaky")).unwrap();
        let roots = RepoRoots::new(vec![allowed.clone()]);
        let err = roots
            .check(&allowed.join("sneaky").to_string_lossy())
            .await
            .unwrap_err();
        assert!(matches!(err, WorkspaceError::OutsideRoots { .. }), "{err}");
    }

    #[tokio::test]
    async fn a_directory_that_is_no_repository_is_refused() {
        let t = TestRepo::new();
        let plain = t.beside("plain");
        std::fs::create_dir_all(&plain).unwrap();
        let roots = RepoRoots::new(vec![t.dir.clone()]);
        let err = roots.check(&plain.to_string_lossy()).await.unwrap_err();
        assert!(
            matches!(err, WorkspaceError::NotARepository { .. }),
            "{err}"
        );
        let missing = roots
            .check(&t.beside("missing").to_string_lossy())
            .await
            .unwrap_err();
        assert!(
            matches!(missing, WorkspaceError::NotARepository { .. }),
            "{missing}"
        );
    }

    #[tokio::test]
    async fn a_subdirectory_or_a_bare_repository_is_refused() {
        let t = TestRepo::new();
        let roots = RepoRoots::new(vec![t.dir.clone()]);
        let err = roots
            .check(&t.repo.join("src").to_string_lossy())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("not its top level"), "{err}");
        git(&t.dir, &["init", "-q", "--bare", "bare.git"]);
        let err = roots
            .check(&t.beside("bare.git").to_string_lossy())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("bare"), "{err}");
    }

    #[tokio::test]
    async fn no_roots_refuse_everything() {
        let t = TestRepo::new();
        let err = RepoRoots::default()
            .check(&t.repo.to_string_lossy())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("none configured"), "{err}");
    }
}

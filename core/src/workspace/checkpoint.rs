//! Checkpoints: the whole state of a worktree's files saved as a commit, and put back.
//!
//! A checkpoint is made through a temporary index (`GIT_INDEX_FILE`), never the
//! worktree's own: the agent's index, HEAD and branch stay exactly as they were, so a
//! checkpoint between two turns is invisible to the agent. The commit holds every file
//! git would see (tracked, and untracked unless ignored; a deleted file is absent), has
//! the worktree's HEAD as parent, and is kept alive by `refs/turnq/checkpoints/{name}`,
//! a ref shared by all worktrees of the repository, so it outlives the worktree.

use std::io::ErrorKind;
use std::path::Path;

use super::WorkspaceError;
use super::git::{Git, TempPath};
use super::worktree::resolve_commit;

/// Saves every file of `worktree` (see the module docs) as a commit, kept under
/// `refs/turnq/checkpoints/{name}` (letters, digits, `_` and `-` only). Returns its id.
pub async fn checkpoint(worktree: &Path, name: &str) -> Result<String, WorkspaceError> {
    check_name(name)?;
    let head = resolve_commit(worktree, "HEAD").await?;
    let (_index, tree) = snapshot(worktree).await?;
    let message = format!("turnq checkpoint {name}");
    let sha = Git::new(worktree)
        .text(&["commit-tree", &tree, "-p", &head, "-m", &message])
        .await?;
    Git::new(worktree)
        .run(&[
            "update-ref",
            "-m",
            &message,
            &format!("refs/turnq/checkpoints/{name}"),
            &sha,
        ])
        .await?;
    Ok(sha)
}

/// Commits every file of `worktree` (as a checkpoint sees them) onto its branch, so the
/// branch carries the session's work and a worktree re-created from it on another host
/// starts where this one stopped. `None` when nothing changed since HEAD. The branch
/// moves by compare-and-swap from the HEAD read here; the worktree's index is then reset
/// to the new HEAD (the files are already as it holds them).
pub async fn commit_all(worktree: &Path, message: &str) -> Result<Option<String>, WorkspaceError> {
    let head = resolve_commit(worktree, "HEAD").await?;
    let (_index, tree) = snapshot(worktree).await?;
    let head_tree = Git::new(worktree)
        .text(&["rev-parse", &format!("{head}^{{tree}}")])
        .await?;
    if tree == head_tree {
        return Ok(None);
    }
    let sha = Git::new(worktree)
        .stdin(message.as_bytes())
        .text(&["commit-tree", &tree, "-p", &head, "-F", "-"])
        .await?;
    Git::new(worktree)
        .run(&["update-ref", "-m", "turnq turn", "HEAD", &sha, &head])
        .await?;
    Git::new(worktree).run(&["reset", "--quiet"]).await?;
    Ok(Some(sha))
}

/// Puts the files of `worktree` back as checkpoint `sha` holds them: every file of the
/// checkpoint is written back, and every file git sees that it does not hold (tracked,
/// or untracked and not ignored) is removed. Ignored files are left alone, unless the
/// checkpoint holds a file at the same path.
///
/// HEAD and the branch do not move. The worktree's own index is reset to HEAD (what
/// `git reset` does): after a restore, `git status` shows the checkpoint's files as
/// changes against HEAD, none of them staged.
pub async fn restore(worktree: &Path, sha: &str) -> Result<(), WorkspaceError> {
    let commit = resolve_commit(worktree, sha).await?;
    // The snapshot's index matches the files as they are, with fresh stat data: from
    // there, git knows which files to rewrite and which to delete.
    let (index, _tree) = snapshot(worktree).await?;
    Git::new(worktree)
        .index(index.path())
        .run(&["read-tree", "--reset", "-u", &format!("{commit}^{{tree}}")])
        .await?;
    Git::new(worktree).run(&["reset", "--quiet"]).await?;
    Ok(())
}

/// The tree of every file of `worktree` as git sees it, written through a temporary
/// index, which is returned too: it matches the files (with their stat data) until
/// they change.
///
/// The index starts as a copy of the worktree's own, so git only reads the files
/// whose stat data changed instead of hashing the whole tree.
pub(super) async fn snapshot(worktree: &Path) -> Result<(TempPath, String), WorkspaceError> {
    let index = TempPath::new("index");
    let own = Git::new(worktree)
        .text(&["rev-parse", "--path-format=absolute", "--git-path", "index"])
        .await?;
    match copy_index(Path::new(&own), index.path()).await {
        Ok(()) => {}
        // No index yet: starting empty gives the same tree, only slower.
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => {
            return Err(WorkspaceError::Io(
                format!(
                    "could not copy the index {own} to {}",
                    index.path().display()
                ),
                e,
            ));
        }
    }
    Git::new(worktree)
        .index(index.path())
        .run(&["add", "--all"])
        .await?;
    let tree = Git::new(worktree)
        .index(index.path())
        .text(&["write-tree"])
        .await?;
    Ok((index, tree))
}

/// Copies an index file with its modification time. git trusts an entry's stat data
/// only when the file was modified before the index was written ("racily clean"
/// entries are hashed again); a copy stamped "now" would make a file rewritten within
/// the same second, at the same size, look unchanged, and the snapshot would keep its
/// old content.
async fn copy_index(from: &Path, to: &Path) -> std::io::Result<()> {
    tokio::fs::copy(from, to).await?;
    let modified = tokio::fs::metadata(from).await?.modified()?;
    let to = to.to_owned();
    tokio::task::spawn_blocking(move || {
        std::fs::OpenOptions::new()
            .write(true)
            .open(&to)?
            .set_modified(modified)
    })
    .await
    .map_err(std::io::Error::other)?
}

fn check_name(name: &str) -> Result<(), WorkspaceError> {
    let valid = !name.is_empty()
        && name.len() <= 200
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if valid {
        Ok(())
    } else {
        Err(WorkspaceError::InvalidName {
            name: name.to_owned(),
            why: "a checkpoint name is 1 to 200 letters, digits, `_` or `-`".to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workspace::create_worktree;
    use crate::workspace::testing::{TestRepo, git, read, write};

    #[tokio::test]
    async fn a_checkpoint_saves_every_file_and_leaves_index_and_head_alone() {
        let t = TestRepo::new();
        let wt = t.beside("wt");
        create_worktree(&t.repo, &wt, "turnq/s1", None)
            .await
            .unwrap();
        write(&wt, "src/a.rs", "fn a() { edited }\n");
        write(&wt, "staged.txt", "staged\n");
        git(&wt, &["add", "staged.txt"]);
        write(&wt, "untracked.txt", "untracked\n");
        std::fs::remove_file(wt.join("README.md")).unwrap();
        let status = git(&wt, &["status", "--porcelain"]);
        let head = git(&wt, &["rev-parse", "HEAD"]);
        let staged = git(&wt, &["diff", "--cached", "--name-only"]);

        let sha = checkpoint(&wt, "turn-1").await.unwrap();

        assert_eq!(git(&wt, &["status", "--porcelain"]), status);
        assert_eq!(git(&wt, &["rev-parse", "HEAD"]), head);
        assert_eq!(git(&wt, &["diff", "--cached", "--name-only"]), staged);
        assert_eq!(git(&wt, &["branch", "--show-current"]), "turnq/s1");
        assert_eq!(
            git(&t.repo, &["rev-parse", "refs/turnq/checkpoints/turn-1"]),
            sha
        );
        assert_eq!(git(&wt, &["rev-parse", &format!("{sha}^")]), head);
        let files = git(&wt, &["ls-tree", "-r", "--name-only", &sha]);
        assert_eq!(
            files.lines().collect::<Vec<_>>(),
            ["src/a.rs", "staged.txt", "untracked.txt"]
        );
        assert_eq!(
            git(&wt, &["show", &format!("{sha}:src/a.rs")]),
            "fn a() { edited }"
        );
    }

    #[tokio::test]
    async fn restore_brings_back_edited_and_deleted_files_and_removes_new_ones() {
        let t = TestRepo::new();
        t.write(".gitignore", "*.log\n");
        git(&t.repo, &["add", ".gitignore"]);
        git(&t.repo, &["commit", "-q", "-m", "ignore logs"]);
        let wt = t.beside("wt");
        create_worktree(&t.repo, &wt, "turnq/s1", None)
            .await
            .unwrap();
        write(&wt, "src/a.rs", "v1\n");
        write(&wt, "keep/me.txt", "kept\n");
        let sha = checkpoint(&wt, "before").await.unwrap();
        let head = git(&wt, &["rev-parse", "HEAD"]);

        write(&wt, "src/a.rs", "v2\n");
        std::fs::remove_file(wt.join("keep/me.txt")).unwrap();
        std::fs::remove_file(wt.join("README.md")).unwrap();
        write(&wt, "junk/new.txt", "junk\n");
        write(&wt, "staged.txt", "staged\n");
        git(&wt, &["add", "staged.txt"]);
        write(&wt, "build.log", "ignored\n");

        restore(&wt, &sha).await.unwrap();

        assert_eq!(read(&wt, "src/a.rs"), "v1\n");
        assert_eq!(read(&wt, "keep/me.txt"), "kept\n");
        assert_eq!(read(&wt, "README.md"), "hello\n");
        assert!(
            !wt.join("junk").exists(),
            "new files and their directory go"
        );
        assert!(!wt.join("staged.txt").exists());
        assert_eq!(read(&wt, "build.log"), "ignored\n", "ignored files stay");
        assert_eq!(git(&wt, &["rev-parse", "HEAD"]), head);
        assert_eq!(git(&wt, &["branch", "--show-current"]), "turnq/s1");
        assert_eq!(git(&wt, &["diff", "--cached", "--name-only"]), "");
        // What the worktree holds now is the checkpoint, exactly.
        let again = checkpoint(&wt, "after").await.unwrap();
        assert_eq!(
            git(&wt, &["rev-parse", &format!("{again}^{{tree}}")]),
            git(&wt, &["rev-parse", &format!("{sha}^{{tree}}")])
        );
    }

    #[tokio::test]
    async fn checkpoint_names_are_checked() {
        let t = TestRepo::new();
        for name in ["", "a/b", "x y", "..", "é"] {
            let err = checkpoint(&t.repo, name).await.unwrap_err();
            assert!(matches!(err, WorkspaceError::InvalidName { .. }), "{err}");
        }
    }
}

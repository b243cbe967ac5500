//! Pending changes: what a worktree changed against its base commit, one entry per file
//! with that file's diff; applying such entries onto a branch as one commit; and
//! undoing one file's change in the worktree.
//!
//! Changes are measured between two trees: the base commit's and a snapshot of the
//! worktree's files (see [`super::checkpoint`]), so commits the agent made, staged
//! files, unstaged edits and untracked (not ignored) files all count, and the agent's
//! own index and HEAD do not matter. A rename is a delete and a create. Each diff is
//! git's unified diff with binary patches (`--binary --full-index`), so `git apply`
//! takes it back, binary files included.
//!
//! Every path passes the [`guard`](super::guard()): a change to a path it refuses (the
//! agent wrote `.env`, or a link out of the worktree) is listed apart with the reason,
//! without its diff, so a secret never travels.

use std::io::ErrorKind;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::WorkspaceError;
use super::checkpoint::snapshot;
use super::git::{Git, TempPath};
use super::guard::{guard, guard_entry};
use super::worktree::{check_branch_name, resolve_commit};

/// What a change does to its file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Operation {
    /// The file did not exist at the base commit.
    Create,
    /// The file's content, mode or type changed.
    Edit,
    /// The file existed at the base commit and is gone.
    Delete,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Create => "create",
            Operation::Edit => "edit",
            Operation::Delete => "delete",
        }
    }
}

impl std::fmt::Display for Operation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One file's change: its path relative to the worktree, what happened to it, and its
/// unified diff (starting with the `diff --git` header; two sections when the file
/// changed type, say from a file to a symbolic link).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FileChange {
    pub path: String,
    pub operation: Operation,
    pub diff: String,
}

/// A worktree's changes: the files that may be carried, sorted by path, and the paths
/// the guard refused with the reason, sorted too.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Changes {
    pub files: Vec<FileChange>,
    pub refused: Vec<(String, String)>,
}

/// The options of every diff here: plumbing (no user diff settings apply), binary
/// patches, full object ids, renames as delete and create, never an external diff
/// program or a text conversion.
const DIFF: &[&str] = &[
    "diff-tree",
    "-r",
    "-p",
    "--binary",
    "--full-index",
    "--no-renames",
    "--no-ext-diff",
    "--no-textconv",
];

/// The changes of `worktree` against `base_commit`, one per file (see the module docs).
pub async fn changes(worktree: &Path, base_commit: &str) -> Result<Changes, WorkspaceError> {
    let base = resolve_commit(worktree, base_commit).await?;
    let (_index, tree) = snapshot(worktree).await?;
    let listing = Git::new(worktree)
        .run(&[
            "diff-tree",
            "-r",
            "--no-renames",
            "--name-status",
            "-z",
            &base,
            &tree,
        ])
        .await?;
    let entries = name_status(&listing)?;
    if entries.is_empty() {
        return Ok(Changes::default());
    }
    let args: Vec<&str> = DIFF.iter().copied().chain([base.as_str(), &tree]).collect();
    let patch = Git::new(worktree).run(&args).await?;
    let mut sections = split_sections(&patch).into_iter();
    // A type change (file to link, say) is the one change git shows as two sections.
    let expected: usize = entries
        .iter()
        .map(|(s, _)| if *s == b'T' { 2 } else { 1 })
        .sum();
    if sections.len() != expected {
        return Err(WorkspaceError::Git {
            command: format!("git {} (in {})", args.join(" "), worktree.display()),
            stderr: format!(
                "the patch has {} file sections where {expected} were expected; \
                 this git version splits diffs differently than turnq assumes",
                sections.len()
            ),
        });
    }

    let mut out = Changes::default();
    for (status, raw_path) in entries {
        let count = if status == b'T' { 2 } else { 1 };
        let section: Vec<u8> = sections.by_ref().take(count).flatten().copied().collect();
        let Ok(path) = String::from_utf8(raw_path.clone()) else {
            out.refused.push((
                String::from_utf8_lossy(&raw_path).into_owned(),
                "the path is not valid UTF-8".to_owned(),
            ));
            continue;
        };
        match guard(worktree, &path) {
            Ok(_) => {}
            Err(WorkspaceError::PathRefused { why, .. }) => {
                out.refused.push((path, why));
                continue;
            }
            Err(e) => return Err(e),
        }
        let operation = match status {
            b'A' => Operation::Create,
            b'D' => Operation::Delete,
            b'M' | b'T' => Operation::Edit,
            other => {
                return Err(WorkspaceError::Git {
                    command: format!("git diff-tree --name-status (in {})", worktree.display()),
                    stderr: format!(
                        "unexpected status {:?} for {path}",
                        char::from(other).to_string()
                    ),
                });
            }
        };
        let diff = match String::from_utf8(section) {
            Ok(diff) => diff,
            Err(_) => match binary_diff(worktree, &base, &tree, &path).await? {
                Some(diff) => diff,
                None => {
                    out.refused.push((
                        path,
                        "its diff is not valid UTF-8 (a text file in another encoding), and \
                         the repository's attributes keep git from diffing it as binary"
                            .to_owned(),
                    ));
                    continue;
                }
            },
        };
        out.files.push(FileChange {
            path,
            operation,
            diff,
        });
    }
    out.files.sort_by(|a, b| a.path.cmp(&b.path));
    out.refused.sort();
    Ok(out)
}

/// Commits `files` onto `branch` of `repo` as one commit with `message`, and returns
/// its id. The repository's checkout and index are not touched: the diffs are applied
/// to a temporary index read from the branch tip, and the branch moves only if it still
/// points at that tip (a concurrent move is a [`WorkspaceError::Conflict`]).
///
/// Every path passes the [`guard`](super::guard()) first, and each diff must change
/// its own path and no other. A diff that does not apply is a
/// [`WorkspaceError::Conflict`] naming its path; the branch is then unchanged. With no
/// files, nothing is committed and the branch tip is returned.
///
/// When `branch` is checked out somewhere (the repository's own checkout, a
/// worktree), that checkout's files stay as they were, so they then show the inverse
/// of the applied changes until it is updated (`git reset --hard`, or a merge).
pub async fn apply(
    repo: &Path,
    branch: &str,
    files: &[FileChange],
    message: &str,
) -> Result<String, WorkspaceError> {
    check_branch_name(repo, branch).await?;
    for file in files {
        guard(repo, &file.path)?;
    }
    let branch_ref = format!("refs/heads/{branch}");
    let tip = resolve_commit(repo, &branch_ref).await?;
    if files.is_empty() {
        return Ok(tip);
    }
    let index = TempPath::new("index");
    let git = || Git::new(repo).index(index.path());
    git().run(&["read-tree", &tip]).await?;
    for file in files {
        let out = git()
            .stdin(file.diff.as_bytes())
            .output(&[
                "apply",
                "--cached",
                "--apply",
                "--numstat",
                "-z",
                "--whitespace=nowarn",
            ])
            .await?;
        if !out.success {
            return Err(WorkspaceError::Conflict {
                path: file.path.clone(),
                detail: format!("its diff does not apply to {branch}: {}", out.stderr),
            });
        }
        let touched = numstat_paths(&out.stdout);
        if touched.is_empty() || touched.iter().any(|p| *p != file.path) {
            return Err(WorkspaceError::PathRefused {
                path: file.path.clone(),
                why: format!(
                    "its diff changes {}, not (only) this path",
                    if touched.is_empty() {
                        "nothing".to_owned()
                    } else {
                        touched.join(", ")
                    }
                ),
            });
        }
    }
    let tree = git().text(&["write-tree"]).await?;
    let commit = Git::new(repo)
        .stdin(message.as_bytes())
        .text(&["commit-tree", &tree, "-p", &tip, "-F", "-"])
        .await?;
    let moved = Git::new(repo)
        .output(&[
            "update-ref",
            "-m",
            "turnq apply",
            &branch_ref,
            &commit,
            &tip,
        ])
        .await?;
    if !moved.success {
        return Err(WorkspaceError::Conflict {
            path: branch_ref,
            detail: format!(
                "the branch moved while the changes were applied; it was left as it is: {}",
                moved.stderr
            ),
        });
    }
    Ok(commit)
}

/// The commit `branch` of `repo` points at.
pub async fn branch_tip(repo: &Path, branch: &str) -> Result<String, WorkspaceError> {
    check_branch_name(repo, branch).await?;
    resolve_commit(repo, &format!("refs/heads/{branch}")).await
}

/// The branch checked out in `repo` (`None` on a detached HEAD).
pub async fn current_branch(repo: &Path) -> Result<Option<String>, WorkspaceError> {
    let out = Git::new(repo)
        .output(&["symbolic-ref", "--quiet", "--short", "HEAD"])
        .await?;
    Ok(out
        .success
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        .filter(|b| !b.is_empty()))
}

/// After [`apply`] moved `branch` from `old` to `new`: when `branch` is checked out in
/// `repo`, brings its files and index along (a two-tree `read-tree -m -u`, which refuses
/// to overwrite local changes). `Ok(false)` when the branch is not checked out there;
/// an error when the checkout holds local changes that the move would overwrite (the
/// branch has moved anyway: the error says how to catch up).
pub async fn sync_checkout(
    repo: &Path,
    branch: &str,
    old: &str,
    new: &str,
) -> Result<bool, WorkspaceError> {
    if current_branch(repo).await?.as_deref() != Some(branch) {
        return Ok(false);
    }
    let out = Git::new(repo)
        .output(&["read-tree", "-m", "-u", old, new])
        .await?;
    if out.success {
        Ok(true)
    } else {
        Err(WorkspaceError::Conflict {
            path: repo.display().to_string(),
            detail: format!(
                "{branch} now holds the applied changes, but its checkout has local changes \
                 in the way ({}); commit or stash them, then run `git reset --keep {new}` there",
                out.stderr.trim()
            ),
        })
    }
}

/// Undoes the change to one file of `worktree`: `path` gets its content (and mode) at
/// `base_commit` back, or is deleted if it did not exist there. The worktree's index is
/// not touched. The path passes the [`guard`](super::guard()), except that the file
/// itself may be a symbolic link pointing anywhere: it is replaced or removed, never
/// written through.
pub async fn revert(worktree: &Path, base_commit: &str, path: &str) -> Result<(), WorkspaceError> {
    let full = guard_entry(worktree, path)?;
    let base = resolve_commit(worktree, base_commit).await?;
    let listing = Git::new(worktree)
        .run(&["ls-tree", "-z", "--full-tree", &base, "--", path])
        .await?;
    let kind = listing
        .split(|b| *b == 0)
        .next()
        .and_then(|entry| entry.split(|b| *b == b' ').nth(1))
        .filter(|kind| !kind.is_empty());
    let not_a_file = || WorkspaceError::PathRefused {
        path: path.to_owned(),
        why: "it is a directory; revert names one file".to_owned(),
    };
    match kind {
        Some(b"blob") => {
            let index = TempPath::new("index");
            let git = || Git::new(worktree).index(index.path());
            git().run(&["read-tree", &base]).await?;
            git()
                .run(&["checkout-index", "--force", "--", path])
                .await?;
            Ok(())
        }
        Some(_) => Err(not_a_file()),
        None => {
            match tokio::fs::symlink_metadata(&full).await {
                Ok(m) if m.is_dir() => return Err(not_a_file()),
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
                Err(e) => {
                    return Err(WorkspaceError::Io(
                        format!("could not inspect {}", full.display()),
                        e,
                    ));
                }
            }
            tokio::fs::remove_file(&full).await.map_err(|e| {
                WorkspaceError::Io(format!("could not delete {}", full.display()), e)
            })?;
            // Directories the file's creation made: git shows none, neither should we.
            let mut dir = full.parent();
            while let Some(d) = dir {
                if d == worktree || tokio::fs::remove_dir(d).await.is_err() {
                    break;
                }
                dir = d.parent();
            }
            Ok(())
        }
    }
}

/// `diff-tree --name-status -z`: a status letter and a path per change.
fn name_status(listing: &[u8]) -> Result<Vec<(u8, Vec<u8>)>, WorkspaceError> {
    let mut fields = listing.split(|b| *b == 0).filter(|f| !f.is_empty());
    let mut entries = Vec::new();
    while let Some(status) = fields.next() {
        let Some(path) = fields.next() else {
            return Err(WorkspaceError::Git {
                command: "git diff-tree --name-status -z".to_owned(),
                stderr: "its listing ends with a status and no path".to_owned(),
            });
        };
        entries.push((status[0], path.to_vec()));
    }
    Ok(entries)
}

/// Splits a patch into its file sections, each starting at a `diff --git ` line. No
/// other line of a patch can start so: content lines start with a space, `+`, `-` or
/// `\`, and binary patch lines are base85, which has no space.
fn split_sections(patch: &[u8]) -> Vec<&[u8]> {
    const HEADER: &[u8] = b"diff --git ";
    let mut starts: Vec<usize> = Vec::new();
    let mut at = 0;
    while at < patch.len() {
        if patch[at..].starts_with(HEADER) {
            starts.push(at);
        }
        at = match patch[at..].iter().position(|b| *b == b'\n') {
            Some(end) => at + end + 1,
            None => patch.len(),
        };
    }
    starts
        .iter()
        .enumerate()
        .map(|(i, start)| &patch[*start..starts.get(i + 1).copied().unwrap_or(patch.len())])
        .collect()
}

/// The diff of one file as a binary patch, for a text file whose diff is not UTF-8 (a
/// `String` cannot hold it, and `git apply` needs its bytes exact): an attributes file
/// marks every file `-diff`. `None` if the diff is still not UTF-8 (the repository's
/// own attributes win over that file).
async fn binary_diff(
    worktree: &Path,
    base: &str,
    tree: &str,
    path: &str,
) -> Result<Option<String>, WorkspaceError> {
    let attributes = TempPath::new("attributes");
    tokio::fs::write(attributes.path(), "* -diff\n")
        .await
        .map_err(|e| {
            WorkspaceError::Io(
                format!("could not write {}", attributes.path().display()),
                e,
            )
        })?;
    let args: Vec<&str> = DIFF
        .iter()
        .copied()
        .chain([base, tree, "--", path])
        .collect();
    let diff = Git::new(worktree)
        .config(format!(
            "core.attributesFile={}",
            attributes.path().display()
        ))
        .run(&args)
        .await?;
    Ok(String::from_utf8(diff).ok())
}

/// The paths `git apply --numstat -z` reports: `added\tdeleted\tpath`, or for a rename
/// `added\tdeleted\t` followed by the old and the new path as fields of their own.
fn numstat_paths(stat: &[u8]) -> Vec<String> {
    let mut fields = stat.split(|b| *b == 0);
    let mut paths = Vec::new();
    while let Some(field) = fields.next() {
        if field.is_empty() {
            continue;
        }
        match field.splitn(3, |b| *b == b'\t').nth(2) {
            Some(path) if !path.is_empty() => paths.push(path.to_vec()),
            _ => paths.extend(fields.by_ref().take(2).map(<[u8]>::to_vec)),
        }
    }
    paths
        .into_iter()
        .map(|p| String::from_utf8_lossy(&p).into_owned())
        .collect()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;
    use crate::workspace::testing::{TestRepo, git, read, write};
    use crate::workspace::{WorktreeInfo, create_worktree};

    /// A repository with a worktree on `turnq/s1` in which the agent committed an edit
    /// of `src/a.rs`, deleted `README.md` (not committed), created `new/b.txt`
    /// (untracked) and wrote `.env`.
    async fn agent_worked() -> (TestRepo, WorktreeInfo) {
        let t = TestRepo::new();
        let info = create_worktree(&t.repo, &t.beside("wt"), "turnq/s1", None)
            .await
            .unwrap();
        let wt = &info.path;
        write(wt, "src/a.rs", "fn a() {}\nfn a2() {}\n");
        git(wt, &["commit", "-q", "-am", "agent commit"]);
        std::fs::remove_file(wt.join("README.md")).unwrap();
        write(wt, "new/b.txt", "b\n");
        write(wt, ".env", "TOKEN=hunter2\n");
        (t, info)
    }

    #[tokio::test]
    async fn changes_lists_creates_edits_and_deletes_with_their_diffs() {
        let (_t, info) = agent_worked().await;
        let changes = changes(&info.path, &info.base_commit).await.unwrap();
        let summary: Vec<_> = changes
            .files
            .iter()
            .map(|f| (f.path.as_str(), f.operation))
            .collect();
        assert_eq!(
            summary,
            [
                ("README.md", Operation::Delete),
                ("new/b.txt", Operation::Create),
                ("src/a.rs", Operation::Edit),
            ]
        );
        let edit = &changes.files[2];
        assert!(
            edit.diff.starts_with("diff --git a/src/a.rs b/src/a.rs\n"),
            "{}",
            edit.diff
        );
        assert!(edit.diff.contains("\n+fn a2() {}\n"), "{}", edit.diff);
        assert!(changes.files[0].diff.contains("deleted file mode 100644"));
        assert!(changes.files[1].diff.contains("new file mode 100644"));
        assert!(changes.files[1].diff.contains("\n+b\n"));

        assert_eq!(changes.refused.len(), 1);
        assert_eq!(changes.refused[0].0, ".env");
        assert!(changes.refused[0].1.contains("secret"));
        let json = serde_json::to_string(&changes).unwrap();
        assert!(
            !json.contains("hunter2"),
            "a refused file's content never travels"
        );
        assert!(json.contains(r#""operation":"delete""#), "{json}");
    }

    #[tokio::test]
    async fn a_worktree_without_changes_has_none() {
        let t = TestRepo::new();
        let info = create_worktree(&t.repo, &t.beside("wt"), "s", None)
            .await
            .unwrap();
        assert_eq!(
            changes(&info.path, &info.base_commit).await.unwrap(),
            Changes::default()
        );
    }

    #[tokio::test]
    async fn changes_apply_onto_a_branch_without_touching_the_checkout() {
        let (t, info) = agent_worked().await;
        // Binary content and text in another encoding travel too.
        std::fs::write(info.path.join("img.bin"), b"\x89PNG\0\x01\x02\xff").unwrap();
        std::fs::write(info.path.join("latin1.txt"), b"caf\xe9\n").unwrap();
        let changes = changes(&info.path, &info.base_commit).await.unwrap();
        assert_eq!(changes.files.len(), 5);
        let latin1 = changes
            .files
            .iter()
            .find(|f| f.path == "latin1.txt")
            .unwrap();
        assert!(latin1.diff.contains("GIT binary patch"), "{}", latin1.diff);
        git(&t.repo, &["branch", "target", &info.base_commit]);
        t.write("README.md", "hello, edited in the checkout\n");
        t.write("untracked.txt", "mine\n");
        let status = git(&t.repo, &["status", "--porcelain"]);
        let main = git(&t.repo, &["rev-parse", "main"]);

        let sha = apply(
            &t.repo,
            "target",
            &changes.files,
            "Apply the agent's work\n",
        )
        .await
        .unwrap();

        assert_eq!(git(&t.repo, &["rev-parse", "target"]), sha);
        assert_eq!(git(&t.repo, &["rev-parse", "target^"]), info.base_commit);
        assert_eq!(
            git(&t.repo, &["log", "-1", "--format=%s %an", "target"]),
            "Apply the agent's work turnq"
        );
        assert_eq!(git(&t.repo, &["show", "target:new/b.txt"]), "b");
        assert_eq!(
            git(&t.repo, &["show", "target:src/a.rs"]),
            "fn a() {}\nfn a2() {}"
        );
        assert_eq!(
            git(&t.repo, &["ls-tree", "-r", "--name-only", "target"]),
            "img.bin\nlatin1.txt\nnew/b.txt\nsrc/a.rs"
        );
        // The worktree's tree and the applied one hold the same bytes.
        for file in ["img.bin", "latin1.txt"] {
            assert_eq!(
                git(&t.repo, &["rev-parse", &format!("target:{file}")]),
                git(&info.path, &["hash-object", file])
            );
        }
        assert_eq!(git(&t.repo, &["status", "--porcelain"]), status);
        assert_eq!(git(&t.repo, &["rev-parse", "main"]), main);
        assert_eq!(
            read(&t.repo, "README.md"),
            "hello, edited in the checkout\n"
        );
    }

    #[tokio::test]
    async fn a_diff_that_does_not_apply_is_a_conflict_and_the_branch_stays() {
        let (t, info) = agent_worked().await;
        let changes = changes(&info.path, &info.base_commit).await.unwrap();
        git(&t.repo, &["switch", "-q", "-c", "target"]);
        t.write("src/a.rs", "fn something_else() {}\n");
        git(&t.repo, &["commit", "-q", "-am", "meanwhile"]);
        git(&t.repo, &["switch", "-q", "main"]);
        let tip = git(&t.repo, &["rev-parse", "target"]);

        let err = apply(&t.repo, "target", &changes.files, "apply")
            .await
            .unwrap_err();

        match &err {
            WorkspaceError::Conflict { path, detail } => {
                assert_eq!(path, "src/a.rs");
                assert!(detail.contains("patch failed"), "{detail}");
            }
            other => panic!("expected a conflict, got {other:?}"),
        }
        assert_eq!(git(&t.repo, &["rev-parse", "target"]), tip);
    }

    #[tokio::test]
    async fn apply_refuses_guarded_paths_and_diffs_of_other_paths() {
        let (t, info) = agent_worked().await;
        let changes = changes(&info.path, &info.base_commit).await.unwrap();
        let main = git(&t.repo, &["rev-parse", "main"]);
        let readme = changes.files[0].diff.clone();

        let secret = FileChange {
            path: ".env".to_owned(),
            operation: Operation::Create,
            diff: readme.clone(),
        };
        let err = apply(&t.repo, "main", &[secret], "x").await.unwrap_err();
        assert!(matches!(err, WorkspaceError::PathRefused { .. }), "{err}");

        let disguised = FileChange {
            path: "src/a.rs".to_owned(),
            operation: Operation::Edit,
            diff: readme,
        };
        let err = apply(&t.repo, "main", &[disguised], "x").await.unwrap_err();
        assert!(err.to_string().contains("changes README.md"), "{err}");
        assert_eq!(git(&t.repo, &["rev-parse", "main"]), main);
    }

    #[tokio::test]
    async fn revert_restores_edited_and_deleted_files_and_deletes_created_ones() {
        let (t, info) = agent_worked().await;
        let wt = &info.path;
        symlink(t.beside("outside.txt"), wt.join("link")).unwrap();
        write(&t.dir, "outside.txt", "outside\n");
        let base = &info.base_commit;

        revert(wt, base, "src/a.rs").await.unwrap();
        revert(wt, base, "README.md").await.unwrap();
        revert(wt, base, "new/b.txt").await.unwrap();
        revert(wt, base, "link").await.unwrap();
        // Again: nothing left to undo.
        revert(wt, base, "new/b.txt").await.unwrap();

        assert_eq!(read(wt, "src/a.rs"), "fn a() {}\n");
        assert_eq!(read(wt, "README.md"), "hello\n");
        assert!(!wt.join("new").exists());
        assert!(!wt.join("link").exists());
        assert_eq!(read(&t.dir, "outside.txt"), "outside\n");
        let left = changes(wt, base).await.unwrap();
        assert!(left.files.is_empty(), "{:?}", left.files);
        assert_eq!(left.refused.len(), 1, ".env was not reverted");

        let err = revert(wt, base, ".env").await.unwrap_err();
        assert!(matches!(err, WorkspaceError::PathRefused { .. }), "{err}");
        let err = revert(wt, base, "src").await.unwrap_err();
        assert!(err.to_string().contains("directory"), "{err}");
    }

    #[tokio::test]
    async fn a_file_turned_into_a_link_is_one_edit_that_applies() {
        let t = TestRepo::new();
        let info = create_worktree(&t.repo, &t.beside("wt"), "s", None)
            .await
            .unwrap();
        std::fs::remove_file(info.path.join("README.md")).unwrap();
        symlink("src/a.rs", info.path.join("README.md")).unwrap();
        let changes = changes(&info.path, &info.base_commit).await.unwrap();
        assert_eq!(changes.files.len(), 1);
        let edit = &changes.files[0];
        assert_eq!(
            (edit.path.as_str(), edit.operation),
            ("README.md", Operation::Edit)
        );
        assert_eq!(edit.diff.matches("diff --git ").count(), 2, "{}", edit.diff);
        git(&t.repo, &["branch", "target", &info.base_commit]);
        apply(&t.repo, "target", &changes.files, "link")
            .await
            .unwrap();
        assert!(
            git(&t.repo, &["ls-tree", "target", "README.md"]).starts_with("120000 "),
            "README.md is a link on the branch"
        );
    }

    #[test]
    fn operations_are_lowercase_words() {
        for (op, word) in [
            (Operation::Create, "create"),
            (Operation::Edit, "edit"),
            (Operation::Delete, "delete"),
        ] {
            assert_eq!(op.as_str(), word);
            assert_eq!(serde_json::to_string(&op).unwrap(), format!("\"{word}\""));
        }
    }
}

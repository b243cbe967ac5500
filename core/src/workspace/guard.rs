//! The path guard: whether a path that a change names may be read or written inside a
//! worktree.
//!
//! A path is refused, with a reason naming the rule, when it is empty, holds a NUL byte,
//! is absolute, has a `..` component, lies inside `.git` (any letter case: on a
//! case-insensitive file system `.GIT` is the same directory), passes through a symbolic
//! link that resolves outside the root (or into its `.git`, or cannot be resolved), or is
//! a secret file by its name (see [`secret`]).
//!
//! The symbolic-link rule looks at the file system as it is now: every prefix of the path
//! that exists is checked, so a link planted anywhere on the way is caught; the parts
//! that do not exist yet cannot be links.

use std::ffi::OsStr;
use std::io::ErrorKind;
use std::path::{Component, Path, PathBuf};

use super::WorkspaceError;

/// File names (compared in lower case) that are never carried: keys and credentials.
const SECRET_NAMES: &[&str] = &[
    ".env",
    "id_rsa",
    "id_dsa",
    "id_ecdsa",
    "id_ed25519",
    ".netrc",
    ".npmrc",
    ".pgpass",
];

/// Extensions (lower case, with the dot) of key and certificate stores.
const SECRET_EXTENSIONS: &[&str] = &[".pem", ".key", ".p12", ".pfx"];

/// `.env.*` files that hold examples, not secrets.
const ENV_EXAMPLES: &[&str] = &[".env.example", ".env.sample", ".env.template"];

/// Returns `root.join(rel)` when `rel` may be changed inside `root`, or
/// [`WorkspaceError::PathRefused`] naming the rule it breaks (see the module docs).
pub fn guard(root: &Path, rel: &str) -> Result<PathBuf, WorkspaceError> {
    check(root, rel, true)
}

/// [`guard`], except that the last component may itself be a symbolic link pointing
/// anywhere: for callers that replace or remove that entry and never write through it
/// (reverting a link the agent created must stay possible).
pub(super) fn guard_entry(root: &Path, rel: &str) -> Result<PathBuf, WorkspaceError> {
    check(root, rel, false)
}

fn check(root: &Path, rel: &str, follow_last: bool) -> Result<PathBuf, WorkspaceError> {
    let refuse = |why: String| WorkspaceError::PathRefused {
        path: rel.to_owned(),
        why,
    };
    if rel.is_empty() {
        return Err(refuse("the path is empty".to_owned()));
    }
    if rel.contains('\0') {
        return Err(refuse("the path contains a NUL byte".to_owned()));
    }
    let path = Path::new(rel);
    if path.has_root() {
        return Err(refuse(
            "the path is absolute; a change names a path relative to the worktree".to_owned(),
        ));
    }
    let mut names = Vec::new();
    for component in path.components() {
        match component {
            Component::Normal(name) => {
                if is_git_dir(name) {
                    return Err(refuse(
                        "the path is inside `.git`, git's own data, which changes never touch"
                            .to_owned(),
                    ));
                }
                names.push(name);
            }
            Component::CurDir => {}
            Component::ParentDir => {
                return Err(refuse(
                    "the path has a `..` component, which could lead outside the worktree"
                        .to_owned(),
                ));
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(refuse("the path is absolute".to_owned()));
            }
        }
    }
    let Some(file_name) = names.last() else {
        return Err(refuse(
            "the path names the worktree itself, not a file".to_owned(),
        ));
    };
    if let Some(name) = file_name.to_str()
        && secret(name)
    {
        return Err(refuse(format!(
            "`{name}` is a secret file by its name (environment files, private keys, \
             certificates, credentials), which turnq never carries"
        )));
    }

    let canonical_root = root.canonicalize().map_err(|e| {
        WorkspaceError::Io(
            format!("could not resolve the worktree {}", root.display()),
            e,
        )
    })?;
    let mut prefix = root.to_path_buf();
    for (i, name) in names.iter().enumerate() {
        prefix.push(name);
        let is_last = i + 1 == names.len();
        let metadata = match std::fs::symlink_metadata(&prefix) {
            Ok(metadata) => metadata,
            // Nothing below a missing directory exists: no link further down.
            Err(e) if e.kind() == ErrorKind::NotFound => break,
            Err(e) => {
                return Err(WorkspaceError::Io(
                    format!("could not inspect {}", prefix.display()),
                    e,
                ));
            }
        };
        if !metadata.file_type().is_symlink() || (is_last && !follow_last) {
            continue;
        }
        let shown = names[..=i]
            .iter()
            .map(|n| n.to_string_lossy())
            .collect::<Vec<_>>()
            .join("/");
        let target = prefix.canonicalize().map_err(|_| {
            refuse(format!(
                "`{shown}` is a symbolic link that cannot be resolved (its target is missing, \
                 or it is a loop), so it could lead outside the worktree"
            ))
        })?;
        let inside = target
            .strip_prefix(&canonical_root)
            .ok()
            .filter(|within| !within.components().any(|c| is_git_dir(c.as_os_str())));
        if inside.is_none() {
            return Err(refuse(format!(
                "`{shown}` is a symbolic link to {}, outside the worktree (or into its `.git`)",
                target.display()
            )));
        }
    }
    Ok(root.join(rel))
}

fn is_git_dir(name: &OsStr) -> bool {
    name.eq_ignore_ascii_case(".git")
}

/// Whether a file name is a secret by itself: `.env` and `.env.*` (but the example,
/// sample and template files), `*.pem`, `*.key`, `*.p12`, `*.pfx`, SSH private keys
/// (their `.pub` halves are not secret), `.netrc`, `.npmrc`, `.pgpass`. Letter case does
/// not matter.
pub fn secret(file_name: &str) -> bool {
    let name = file_name.to_ascii_lowercase();
    if SECRET_NAMES.contains(&name.as_str()) {
        return true;
    }
    if name.starts_with(".env.") && !ENV_EXAMPLES.contains(&name.as_str()) {
        return true;
    }
    SECRET_EXTENSIONS.iter().any(|ext| name.ends_with(ext))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;
    use crate::workspace::testing::{TestRepo, write};

    /// The reason `guard` gives for refusing `rel`; panics if it allows it.
    fn why_refused(root: &Path, rel: &str) -> String {
        match guard(root, rel) {
            Err(WorkspaceError::PathRefused { path, why }) => {
                assert_eq!(path, rel);
                why
            }
            other => panic!("{rel:?} should be refused, got {other:?}"),
        }
    }

    #[test]
    fn an_empty_path_is_refused() {
        let t = TestRepo::new();
        assert!(why_refused(&t.repo, "").contains("empty"));
    }

    #[test]
    fn an_absolute_path_is_refused() {
        let t = TestRepo::new();
        assert!(why_refused(&t.repo, "/etc/passwd").contains("absolute"));
    }

    #[test]
    fn a_parent_component_is_refused() {
        let t = TestRepo::new();
        assert!(why_refused(&t.repo, "src/../../outside").contains("`..`"));
    }

    #[test]
    fn a_nul_byte_is_refused() {
        let t = TestRepo::new();
        assert!(why_refused(&t.repo, "src/a\0.rs").contains("NUL"));
    }

    #[test]
    fn anything_inside_dot_git_is_refused() {
        let t = TestRepo::new();
        assert!(why_refused(&t.repo, ".git/config").contains("`.git`"));
        assert!(why_refused(&t.repo, "sub/.GIT/hooks/pre-commit").contains("`.git`"));
    }

    #[test]
    fn a_symlinked_directory_leading_outside_is_refused() {
        let t = TestRepo::new();
        let outside = t.beside("outside");
        std::fs::create_dir_all(&outside).unwrap();
        symlink(&outside, t.repo.join("out")).unwrap();
        let why = why_refused(&t.repo, "out/new.txt");
        assert!(why.contains("`out` is a symbolic link"), "{why}");
        assert!(why.contains("outside the worktree"), "{why}");
    }

    #[test]
    fn a_symlinked_file_pointing_outside_is_refused() {
        let t = TestRepo::new();
        write(&t.dir, "outside.txt", "not yours\n");
        symlink(t.beside("outside.txt"), t.repo.join("src/link.txt")).unwrap();
        let why = why_refused(&t.repo, "src/link.txt");
        assert!(why.contains("`src/link.txt` is a symbolic link"), "{why}");
    }

    #[test]
    fn a_dangling_symlink_is_refused() {
        let t = TestRepo::new();
        symlink("/nonexistent/turnq", t.repo.join("dangling")).unwrap();
        assert!(why_refused(&t.repo, "dangling/x").contains("cannot be resolved"));
    }

    #[test]
    fn a_symlink_into_dot_git_is_refused() {
        let t = TestRepo::new();
        symlink(".git", t.repo.join("g")).unwrap();
        assert!(why_refused(&t.repo, "g/config").contains("symbolic link"));
    }

    #[test]
    fn secret_files_are_refused_by_name() {
        let t = TestRepo::new();
        for rel in [
            ".env",
            ".env.local",
            "config/.env.production",
            "id_rsa",
            "home/.ssh/id_ed25519",
            "server.pem",
            "tls/x.key",
            "cert.P12",
            ".netrc",
            ".npmrc",
            ".pgpass",
        ] {
            assert!(why_refused(&t.repo, rel).contains("secret"), "{rel}");
        }
    }

    #[test]
    fn ordinary_files_examples_and_public_keys_are_allowed() {
        let t = TestRepo::new();
        symlink("src", t.repo.join("inside")).unwrap();
        for rel in [
            "src/a.rs",
            "src/new/deep/file.rs",
            ".env.example",
            ".env.sample",
            ".env.template",
            "id_rsa.pub",
            "docs/keys.md",
            "inside/a.rs",
            "./README.md",
        ] {
            assert_eq!(guard(&t.repo, rel).unwrap(), t.repo.join(rel), "{rel}");
        }
    }
}

//! A Session's own git worktree (`spec.workspace.git`): created with
//! `git worktree add` on a branch named after the session before its agent
//! first starts, reused by every later launch (restarts and failovers
//! resume in the same directory), and removed when the Session is deleted
//! only if nothing would be lost: no uncommitted change, and the branch
//! merged into its base or pushed to its upstream. Otherwise it is kept,
//! and the reason said.
//!
//! The worktree lives at `WORKDIR/NAME`: with a workspace, a Session's
//! `workdir` is the folder its worktrees go in (one for every Session of a
//! pool), and its agent runs in its own.

mod branch;
pub use branch::{Branched, fresh_branch};

use crate::api::{Session, WorkspaceSpec};
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot run git: {0}")]
    Spawn(#[from] std::io::Error),
    #[error("git {args}: {message}")]
    Git { args: String, message: String },
    #[error("{0} is not a git repository")]
    NotARepo(PathBuf),
    #[error("{0} exists and is not a worktree of {1}")]
    Occupied(PathBuf, PathBuf),
}

/// The directory a Session's agent runs in: its worktree when it has a
/// workspace, else its workdir (`~` expanded).
pub fn agent_dir(s: &Session) -> PathBuf {
    let workdir = crate::fsutil::expand_home(&s.spec.workdir);
    match &s.spec.workspace {
        Some(_) => workdir.join(s.metadata.name.as_deref().unwrap_or_default()),
        None => workdir,
    }
}

/// The repository of a workspace (`~` expanded).
pub fn repo_of(w: &WorkspaceSpec) -> PathBuf {
    crate::fsutil::expand_home(&w.git.repo)
}

/// `git -C DIR ARGS...`, deaf to a caller's own repository variables.
/// A git command in `dir`. No optional locks: the daemon's looks at a
/// worktree (`git status` refreshes the index under `index.lock`) must
/// never make the user's own `git add` or `git commit` there fail.
fn command(dir: &Path, args: &[&str]) -> Command {
    let mut c = Command::new("git");
    c.arg("-C")
        .arg(dir)
        .args(args)
        .env_remove("GIT_DIR")
        .env_remove("GIT_WORK_TREE")
        .env("GIT_OPTIONAL_LOCKS", "0");
    c
}

fn git(dir: &Path, args: &[&str]) -> Result<String, Error> {
    let out = command(dir, args).output()?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(Error::Git {
            args: args.join(" "),
            message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

fn ok(dir: &Path, args: &[&str]) -> Result<bool, Error> {
    let st = command(dir, args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()?;
    Ok(st.success())
}

/// What [`ensure`] found or did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ensured {
    /// The worktree was there (a restart, a failover).
    Existing,
    /// Made now on a new branch from the base.
    Created,
    /// Made now on the branch left by an earlier worktree of this name.
    Reattached,
}

/// Makes sure `dir` is a worktree of `repo` on `branch` (new from `base`
/// if it does not exist yet).
pub fn ensure(repo: &Path, base: &str, dir: &Path, branch: &str) -> Result<Ensured, Error> {
    if !ok(repo, &["rev-parse", "--git-dir"])? {
        return Err(Error::NotARepo(repo.to_path_buf()));
    }
    if dir.exists() {
        let common = |d: &Path| {
            git(
                d,
                &["rev-parse", "--path-format=absolute", "--git-common-dir"],
            )
            .ok()
            .and_then(|p| std::fs::canonicalize(p).ok())
        };
        if dir.join(".git").exists() && common(dir).is_some() && common(dir) == common(repo) {
            return Ok(Ensured::Existing);
        }
        let empty = std::fs::read_dir(dir)?.next().is_none();
        if !empty {
            return Err(Error::Occupied(dir.to_path_buf(), repo.to_path_buf()));
        }
    }
    if let Some(parent) = dir.parent() {
        crate::fsutil::ensure_dir(parent)?;
    }
    // A worktree removed by hand leaves a record that blocks the name.
    git(repo, &["worktree", "prune"])?;
    exclude_queue(repo)?;
    let d = dir.to_string_lossy();
    let exists = ok(
        repo,
        &[
            "show-ref",
            "--verify",
            "--quiet",
            &format!("refs/heads/{branch}"),
        ],
    )?;
    if exists {
        git(repo, &["worktree", "add", &d, branch])?;
        Ok(Ensured::Reattached)
    } else {
        git(repo, &["worktree", "add", "-b", branch, &d, base])?;
        Ok(Ensured::Created)
    }
}

/// The daemon's own folder in a workdir (the inbox and its status,
/// [`crate::inbox`]), ignored by the repository's worktrees: it is no work
/// of the agent's, and must not keep a finished worktree from going.
const QUEUE_PATTERN: &str = "/.agent-queue/";

/// Adds [`QUEUE_PATTERN`] to the repository's `info/exclude` (shared by
/// its worktrees) unless it is there.
fn exclude_queue(repo: &Path) -> Result<(), Error> {
    let common = git(
        repo,
        &["rev-parse", "--path-format=absolute", "--git-common-dir"],
    )?;
    let file = Path::new(&common).join("info/exclude");
    let now = std::fs::read_to_string(&file).unwrap_or_default();
    if now.lines().any(|l| l.trim() == QUEUE_PATTERN) {
        return Ok(());
    }
    crate::fsutil::ensure_dir(file.parent().expect("info/exclude has a parent"))?;
    let mut text = now;
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(QUEUE_PATTERN);
    text.push('\n');
    crate::fsutil::write_atomic(&file, text.as_bytes(), None, true)?;
    Ok(())
}

/// What [`release`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Released {
    /// Removed (and its branch deleted when merged into the base).
    Removed { branch_deleted: bool },
    /// Kept: this is why.
    Kept(String),
    /// There was no worktree.
    Absent,
}

/// The uncommitted changes of the worktree `dir`, told in a few words
/// (`2 uncommitted change(s) (a.txt, b.txt)`), or None when it is clean.
fn uncommitted(dir: &Path) -> Result<Option<String>, Error> {
    let changes = git(dir, &["status", "--porcelain"])?;
    if changes.is_empty() {
        return Ok(None);
    }
    let n = changes.lines().count();
    let some: Vec<&str> = changes
        .lines()
        .take(3)
        .map(|l| l.get(3..).unwrap_or(l))
        .collect();
    let more = if n > some.len() { ", ..." } else { "" };
    Ok(Some(format!(
        "{n} uncommitted change(s) ({}{more})",
        some.join(", ")
    )))
}

/// Removes the worktree `dir` of `repo` if nothing would be lost.
pub fn release(repo: &Path, base: &str, dir: &Path, branch: &str) -> Result<Released, Error> {
    if !dir.join(".git").exists() {
        return Ok(Released::Absent);
    }
    if let Some(changes) = uncommitted(dir)? {
        return Ok(Released::Kept(format!(
            "worktree {} kept: {changes}",
            dir.display()
        )));
    }
    let merged = ok(repo, &["merge-base", "--is-ancestor", branch, base])?;
    let pushed = !merged
        && git(
            repo,
            &[
                "rev-list",
                "--count",
                &format!("{branch}@{{upstream}}..{branch}"),
            ],
        )
        .is_ok_and(|n| n == "0");
    if !merged && !pushed {
        return Ok(Released::Kept(format!(
            "worktree {} kept: branch {branch} is neither merged into {base} nor pushed",
            dir.display()
        )));
    }
    git(repo, &["worktree", "remove", &dir.to_string_lossy()])?;
    let branch_deleted = merged && git(repo, &["branch", "-d", branch]).is_ok();
    Ok(Released::Removed { branch_deleted })
}

#[cfg(test)]
mod tests;

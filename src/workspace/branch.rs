//! A fresh branch for a task (`spec.workspace.freshBranch` of a Task): the
//! session's worktree switches to a new branch made from its base, only
//! when it holds no uncommitted change.

use super::{Error, git, ok};
use std::path::Path;

/// What [`fresh_branch`] found or did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Branched {
    /// A new branch from the base, checked out.
    Created,
    /// The worktree was on it already (the same task, typed again after a
    /// crash or a retry).
    AlreadyOn,
    /// The branch existed (an earlier attempt): checked out.
    CheckedOut,
    /// Not done: the worktree has uncommitted changes (a summary).
    NotClean(String),
}

/// Puts the worktree `dir` on a new branch `branch` made from `base`.
pub fn fresh_branch(dir: &Path, base: &str, branch: &str) -> Result<Branched, Error> {
    if !ok(dir, &["check-ref-format", "--branch", branch])? {
        return Err(Error::Git {
            args: format!("check-ref-format --branch {branch}"),
            message: format!("{branch:?} is not a valid branch name"),
        });
    }
    if git(dir, &["branch", "--show-current"])? == branch {
        return Ok(Branched::AlreadyOn);
    }
    if let Some(changes) = super::uncommitted(dir)? {
        return Ok(Branched::NotClean(changes));
    }
    let exists = ok(
        dir,
        &[
            "show-ref",
            "--verify",
            "--quiet",
            &format!("refs/heads/{branch}"),
        ],
    )?;
    if exists {
        git(dir, &["checkout", "-q", branch])?;
        return Ok(Branched::CheckedOut);
    }
    git(dir, &["checkout", "-q", "-b", branch, base])?;
    Ok(Branched::Created)
}

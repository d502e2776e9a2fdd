//! The session controller's side of a Session's own worktree (see
//! [`crate::workspace`]): made before a launch, released when the Session
//! is deleted (kept, and said, when work would be lost).

use super::Context;
use crate::api::{Kind, ObjectKey, Session};
use crate::workspace::{self, Released};
use std::path::PathBuf;

/// The directory the agent starts in, its worktree made first if the
/// Session has a workspace. Blocking (git).
pub(super) fn prepare_dir(s: &Session) -> Result<PathBuf, String> {
    let dir = workspace::agent_dir(s);
    if let Some(w) = &s.spec.workspace {
        let name = s.metadata.name.as_deref().unwrap_or_default();
        workspace::ensure(&workspace::repo_of(w), &w.git.base, &dir, name)
            .map_err(|e| format!("cannot prepare the workspace: {e}"))?;
    }
    std::fs::canonicalize(&dir)
        .ok()
        .filter(|p| p.is_dir())
        .ok_or_else(|| format!("workdir {} does not exist", dir.display()))
}

/// On deletion: removes the worktree if it is clean and its branch merged
/// or pushed; otherwise keeps it and says so (an event on the owning pool,
/// which outlives the Session, and a warning in the log).
pub(super) async fn release(ctx: &Context, s: &Session) {
    let Some(w) = s.spec.workspace.clone() else {
        return;
    };
    let key = ObjectKey::of(s);
    let dir = workspace::agent_dir(s);
    let name = key.name.clone();
    let d = dir.clone();
    let r = ctx
        .shared
        .blocking(move |_| workspace::release(&workspace::repo_of(&w), &w.git.base, &d, &name))
        .await;
    let (warning, reason, message) = match r {
        Ok(Released::Absent) => return,
        Ok(Released::Removed { branch_deleted }) => (
            false,
            "WorkspaceRemoved",
            format!(
                "worktree {} of session {} removed{}",
                dir.display(),
                key.name,
                if branch_deleted {
                    " (its branch was merged: deleted)"
                } else {
                    " (its branch is pushed: kept)"
                }
            ),
        ),
        Ok(Released::Kept(why)) => (
            true,
            "WorkspaceKept",
            format!("session {}: {why}", key.name),
        ),
        Err(e) => (
            true,
            "WorkspaceKept",
            format!("session {}: worktree {} kept: {e}", key.name, dir.display()),
        ),
    };
    let owner = s
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.kind == Kind::SessionPool.name())
        .map(|o| ObjectKey::new(Kind::SessionPool, &key.namespace, &o.name));
    let about = owner.unwrap_or(key);
    ctx.shared
        .record(&about, warning, reason, &message, "session-controller")
        .await;
}

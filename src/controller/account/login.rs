//! The login side of an account's phase: `Unavailable` when its config dir
//! holds no usable login (`NotLoggedIn`) or a copy of another account's
//! (`CopiedLogin`). The decisions are [`crate::agent::login`]'s; this reads
//! the files off the async workers and keeps a copy set aside after its
//! twin refreshed.

use super::Context;
use crate::agent::login;
use crate::api::{Account, AccountPhase};
use crate::quota::Verdict;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// How precise a condition's `lastTransitionTime` is.
const CONDITION_PRECISION: Duration = Duration::from_secs(1);

/// `Unavailable` for want of a login, or None.
pub async fn unavailable(ctx: &Context, a: &Account) -> Option<Verdict> {
    if a.spec.suspend {
        return None;
    }
    let ns = a.metadata.namespace.clone().unwrap_or_default();
    let name = a.metadata.name.clone().unwrap_or_default();
    let peers: Vec<Arc<Account>> = ctx
        .shared
        .caches
        .accounts_in(&ns)
        .into_iter()
        .filter(|p| !p.spec.suspend)
        .collect();
    // The preferred account keeps a login; later ones hold copies.
    let dirs = login::config_dirs_by_preference(peers.iter().map(|p| p.as_ref()));
    // Decided here from the cache's own copies (no file is read): a pass
    // used to deep-copy every Session of the namespace for this, the
    // largest cost of an idle daemon with 500 sessions.
    let daemon_env: Vec<(String, String)> = std::env::vars().collect();
    let sessions = ctx.shared.caches.sessions.all();
    let credential = login::agents_credential(
        &name,
        sessions
            .iter()
            .map(Arc::as_ref)
            .filter(|s| s.metadata.namespace.as_deref() == Some(ns.as_str())),
        &daemon_env,
    );
    drop(sessions);
    let dir = crate::fsutil::expand_home(&a.spec.config_dir);
    let set_aside = a.status.as_ref().and_then(|st| {
        st.conditions
            .iter()
            .find(|c| c.type_ == "Available" && c.reason == "CopiedLogin")
            .map(|c| {
                (
                    SystemTime::from(c.last_transition_time.0),
                    c.message.clone(),
                )
            })
    });
    let (reason, message) = ctx
        .shared
        .blocking(move |_| {
            let state = login::check(&name, &dir, credential);
            let copy_of = login::copied_logins(&dirs)
                .into_iter()
                .find(|(c, _)| *c == name)
                .map(|(_, original)| original);
            // A copy stays set aside after its twin refreshed (their tokens
            // differ then, but this one's refresh token is spent) until the
            // account is logged in again (its credentials file changes).
            // The condition's time is whole seconds (rounded down).
            let still_aside = || {
                let (since, message) = set_aside?;
                let written = std::fs::metadata(dir.join(".credentials.json"))
                    .and_then(|m| m.modified())
                    .ok()?;
                (written < since + CONDITION_PRECISION).then_some(message)
            };
            match login::unavailable(&state, copy_of.as_deref(), &name) {
                Some(v) => Some(v),
                None => still_aside().map(|m| ("CopiedLogin", m)),
            }
        })
        .await?;
    Some(Verdict {
        phase: AccountPhase::Unavailable,
        reason,
        message,
    })
}

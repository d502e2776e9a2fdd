//! Failback: sessions that failed over go back to their preferred account
//! once it has room again (docs/failover.md, "Policy"). Pure.
//!
//! A session's preferred account is its `spec.account`, or else the account
//! with the lowest priority value (the one a fresh start picks). It goes
//! back when that account is Available, not set aside, and every usage
//! window that counts for it (the account-wide ones and its model's
//! weekly one) is the policy's margin below its threshold (which, after a limit,
//! only a reset brings); only while it is idle with no task in flight (a
//! turn boundary), and at most once per cooldown since its last move. The
//! margin and the cooldown keep it from flapping.

use super::target::{Models, model_of, ns_of, phase_of, sessions_on, set_aside_until};
use crate::api::{Account, AccountPhase, Session, SessionPhase};
use crate::quota::policy::Policy;
use crate::quota::{Window, model_windows};
use std::collections::HashMap;
use std::time::SystemTime;

/// The account `s` prefers, among `accounts` of its namespace.
pub fn home<'a>(s: &Session, accounts: &[&'a Account]) -> Option<&'a Account> {
    let ns = ns_of(&s.metadata);
    let mine = accounts
        .iter()
        .copied()
        .filter(|a| ns_of(&a.metadata) == ns && a.metadata.deletion_timestamp.is_none());
    match &s.spec.account {
        Some(want) => mine
            .into_iter()
            .find(|a| a.metadata.name.as_ref() == Some(want)),
        None => mine.min_by_key(|a| (a.spec.priority, a.metadata.name.clone())),
    }
}

/// Whether sessions that count against the per-model `windows` may come
/// back to `a` now.
pub fn has_room(a: &Account, policy: &Policy, now: SystemTime, windows: &[Window]) -> bool {
    if a.spec.suspend
        || phase_of(a) != AccountPhase::Available
        || set_aside_until(a).is_some_and(|u| u > now)
        || !policy.fails_back_to(a)
    {
        return false;
    }
    let usage = a
        .status
        .as_ref()
        .and_then(|s| s.usage.clone())
        .unwrap_or_default();
    Window::ACCOUNT.iter().chain(windows).all(|w| {
        usage.window(w.label()).is_none_or(|r| {
            r.utilization <= w.threshold(&a.spec.thresholds) - policy.failback.margin
        })
    })
}

/// A move back: `sessions` leave `from` for `to`.
#[derive(Debug, PartialEq)]
pub struct Failback<'a> {
    pub from: &'a Account,
    pub to: String,
    pub sessions: Vec<&'a Session>,
}

/// The first group of sessions (by source account, then preferred account)
/// that should go back now, if any.
pub fn next<'a>(
    accounts: &[&'a Account],
    sessions: &[&'a Session],
    tasks_on: &HashMap<(String, String), String>,
    models: &Models,
    policy: &Policy,
    now: SystemTime,
) -> Option<Failback<'a>> {
    let mut froms: Vec<&Account> = accounts.to_vec();
    froms.sort_by_key(|a| crate::api::ObjectKey::of(*a));
    for from in froms {
        let ns = ns_of(&from.metadata);
        let name = from.metadata.name.as_deref().unwrap_or_default();
        let mut by_home: Vec<(String, Vec<&Session>)> = Vec::new();
        for s in sessions_on(sessions, ns, name) {
            if !ready_to_go_back(s, tasks_on, policy, now) {
                continue;
            }
            let Some(h) = home(s, accounts) else { continue };
            let to = h.metadata.name.clone().unwrap_or_default();
            let windows = model_windows(model_of(s, models));
            if to == name || !has_room(h, policy, now, windows) {
                continue;
            }
            match by_home.iter_mut().find(|(t, _)| *t == to) {
                Some((_, v)) => v.push(s),
                None => by_home.push((to, vec![s])),
            }
        }
        by_home.sort_by(|a, b| a.0.cmp(&b.0));
        if let Some((to, sessions)) = by_home.into_iter().next() {
            return Some(Failback { from, to, sessions });
        }
    }
    None
}

/// Idle, no task in flight, moved here by a finished swap at least a
/// cooldown ago.
fn ready_to_go_back(
    s: &Session,
    tasks_on: &HashMap<(String, String), String>,
    policy: &Policy,
    now: SystemTime,
) -> bool {
    let Some(st) = s.status.as_ref() else {
        return false;
    };
    let Some(last) = st.last_swap.as_ref().filter(|p| !p.swapping()) else {
        return false;
    };
    let key = (
        ns_of(&s.metadata).to_string(),
        s.metadata.name.clone().unwrap_or_default(),
    );
    let since = now
        .duration_since(SystemTime::from(last.started_at.0))
        .unwrap_or_default();
    st.phase == Some(SessionPhase::Idle)
        && !tasks_on.contains_key(&key)
        && since >= policy.failback.cooldown
}

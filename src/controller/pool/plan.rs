//! The pool controller's pure decision: from a pool, the Sessions it owns
//! and the namespace's Accounts, which Sessions to create and delete, and
//! the pool's status.

use super::rollout::{self, Roll, Rollout};
use crate::api::{
    Account, AccountPhase, FORCE_SCALE_DOWN, PlacementStrategy, Session, SessionPhase, SessionPool,
    SessionPoolStatus, ordinal_of,
};
use crate::controller::session::plan::runnable;
use crate::selector::Selector;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};

/// One thing to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Create the Session of this ordinal, preferring this account.
    Create {
        ordinal: u32,
        account: Option<String>,
    },
    /// Delete this Session (surplus, or its pool is being deleted).
    Delete { name: String, busy: bool },
    /// Bring this Session up to the current template.
    Roll { name: String, how: Roll },
}

/// What a pass decides.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    pub actions: Vec<Action>,
    /// Surplus Sessions left running until their turn ends.
    pub waiting_for_turn: Vec<String>,
    /// The rollout of a changed template.
    pub rollout: Rollout,
    /// Selected accounts the account controller has not looked at yet: no
    /// Session is placed before it has (the placement could not weigh
    /// them).
    pub unchecked_accounts: Vec<String>,
    /// The counts of the status (conditions are the caller's).
    pub status: SessionPoolStatus,
}

/// Whether a Session is in a turn (or stopped inside one): scaling down
/// waits for it to end.
pub fn busy(s: &Session) -> bool {
    let task = s.status.as_ref().and_then(|st| st.current_task.as_ref());
    task.is_some()
        || matches!(
            phase(s),
            SessionPhase::Busy | SessionPhase::Waiting | SessionPhase::Swapping
        )
}

pub(super) fn ready(s: &Session) -> bool {
    s.status.as_ref().is_some_and(|st| {
        st.conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
    })
}

fn phase(s: &Session) -> SessionPhase {
    s.status
        .as_ref()
        .and_then(|st| st.phase)
        .unwrap_or_default()
}

/// The accounts the pool lays its Sessions over: those its selector
/// picks that can take new work, best first (Available before NearLimit,
/// then the least used five-hour window, then the name).
pub(super) fn candidates<'a>(pool: &SessionPool, accounts: &[&'a Account]) -> Vec<&'a Account> {
    let mut v: Vec<&Account> = selected(pool, accounts).filter(|a| runnable(a)).collect();
    let rank = |a: &Account| {
        let st = a.status.as_ref();
        let near = st.and_then(|s| s.phase) != Some(AccountPhase::Available);
        let used = st
            .and_then(|s| s.usage.as_ref())
            .and_then(|u| u.five_hour.as_ref())
            .map_or(0, |w| (w.utilization * 100.0) as i64);
        (near, used)
    };
    v.sort_by(|a, b| {
        rank(a)
            .cmp(&rank(b))
            .then_with(|| a.metadata.name.cmp(&b.metadata.name))
    });
    v
}

/// The accounts the pool's selector picks.
fn selected<'a, 'b>(
    pool: &'b SessionPool,
    accounts: &'b [&'a Account],
) -> impl Iterator<Item = &'a Account> + 'b {
    let sel = pool
        .spec
        .placement
        .account_selector
        .as_ref()
        .map(Selector::from_label_selector);
    accounts.iter().copied().filter(move |a| {
        sel.as_ref()
            .is_none_or(|s| s.matches(a.metadata.labels.as_ref()))
    })
}

/// Selected accounts, present and not suspended, that the account
/// controller has not looked at yet.
fn unchecked(pool: &SessionPool, accounts: &[&Account]) -> Vec<String> {
    selected(pool, accounts)
        .filter(|a| a.metadata.deletion_timestamp.is_none() && !a.spec.suspend)
        .filter(|a| a.status.as_ref().and_then(|s| s.phase).is_none())
        .filter_map(|a| a.metadata.name.clone())
        .collect()
}

/// The account a new Session prefers. `placed` counts the pool's
/// Sessions per preferred account (including those created this pass).
fn place(
    pool: &SessionPool,
    candidates: &[&Account],
    placed: &BTreeMap<String, u32>,
) -> Option<String> {
    let own = pool.spec.template.spec.account.clone();
    match pool.spec.placement.strategy {
        PlacementStrategy::Pack => {
            own.or_else(|| candidates.first().and_then(|a| a.metadata.name.clone()))
        }
        PlacementStrategy::Spread => candidates
            .iter()
            .enumerate()
            .filter_map(|(i, a)| a.metadata.name.as_ref().map(|n| (i, n)))
            .min_by_key(|(i, n)| (placed.get(*n).copied().unwrap_or(0), *i))
            .map(|(_, n)| n.clone())
            .or(own),
    }
}

/// The decision of one pass over `pool`, whose Sessions are `owned`.
pub fn plan(pool: &SessionPool, owned: &[&Session], accounts: &[&Account]) -> Plan {
    let deleting = pool.metadata.deletion_timestamp.is_some();
    let live: Vec<&Session> = owned
        .iter()
        .copied()
        .filter(|s| s.metadata.deletion_timestamp.is_none())
        .collect();
    let mut actions = Vec::new();
    let mut waiting_for_turn = Vec::new();
    let mut unchecked_accounts = Vec::new();
    let hash = crate::api::template_hash(&pool.spec.template);
    let want = if deleting {
        0
    } else {
        pool.spec.replicas as usize
    };
    let mut surplus: Vec<&Session> = Vec::new();
    if live.len() > want {
        surplus = scale_down(pool, &live, want, &mut actions, &mut waiting_for_turn);
    } else if live.len() < want && {
        unchecked_accounts = unchecked(pool, accounts);
        unchecked_accounts.is_empty()
    } {
        actions.extend(scale_up(pool, owned, &live, want, accounts));
    }
    let staying: Vec<&Session> = live
        .iter()
        .copied()
        .filter(|s| !surplus.iter().any(|x| std::ptr::eq(*x, *s)))
        .collect();
    let rollout = if deleting {
        Rollout::default()
    } else {
        rollout::decide(pool, &staying, want, &hash)
    };
    for (name, how) in &rollout.now {
        actions.push(Action::Roll {
            name: name.clone(),
            how: *how,
        });
    }
    let mut status = counts(pool, &live);
    status.updated_replicas = live
        .iter()
        .filter(|s| rollout::hash_of(s) == Some(hash.as_str()))
        .count() as u32;
    status.updated_ready = live
        .iter()
        .filter(|s| rollout::hash_of(s) == Some(hash.as_str()) && !rollout::unavailable(s))
        .count() as u32;
    status.update_revision = hash;
    Plan {
        actions,
        waiting_for_turn,
        rollout,
        unchecked_accounts,
        status,
    }
}

/// The Sessions past `want`, idle first, then the highest ordinal: each is
/// deleted, or (busy, neither forced nor the pool deleted) waits for its
/// turn to end. Returns them all.
fn scale_down<'a>(
    pool: &SessionPool,
    live: &[&'a Session],
    want: usize,
    actions: &mut Vec<Action>,
    waiting_for_turn: &mut Vec<String>,
) -> Vec<&'a Session> {
    let name = pool.metadata.name.as_deref().unwrap_or_default();
    let deleting = pool.metadata.deletion_timestamp.is_some();
    let force = pool
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(FORCE_SCALE_DOWN))
        .is_some_and(|v| v == "true");
    let mut order: Vec<(&Session, bool, u32)> = live
        .iter()
        .map(|s| {
            let n = s.metadata.name.as_deref().unwrap_or_default();
            (*s, busy(s), ordinal_of(name, n).unwrap_or(u32::MAX))
        })
        .collect();
    order.sort_by_key(|(_, b, o)| (*b, Reverse(*o)));
    let mut surplus = Vec::new();
    for (s, b, _) in order.into_iter().take(live.len() - want) {
        let n = s.metadata.name.clone().unwrap_or_default();
        if b && !force && !deleting {
            waiting_for_turn.push(n);
        } else {
            actions.push(Action::Delete { name: n, busy: b });
        }
        surplus.push(s);
    }
    surplus
}

/// Sessions to create up to `want`: the free names among
/// `<pool>-0..want-1`, lowest first (a name still held by a terminating
/// Session comes back once it is gone), each with the account it prefers.
fn scale_up(
    pool: &SessionPool,
    owned: &[&Session],
    live: &[&Session],
    want: usize,
    accounts: &[&Account],
) -> Vec<Action> {
    let name = pool.metadata.name.as_deref().unwrap_or_default();
    let taken: BTreeSet<&str> = owned
        .iter()
        .filter_map(|s| s.metadata.name.as_deref())
        .collect();
    let cands = candidates(pool, accounts);
    let mut placed: BTreeMap<String, u32> = BTreeMap::new();
    for s in live {
        if let Some(a) = &s.spec.account {
            *placed.entry(a.clone()).or_default() += 1;
        }
    }
    let free = (0..want as u32)
        .filter(|o| !taken.contains(crate::api::member_name(name, *o).as_str()))
        .take(want - live.len());
    let mut actions = Vec::new();
    for ordinal in free.collect::<Vec<_>>() {
        let account = place(pool, &cands, &placed);
        if let Some(a) = &account {
            *placed.entry(a.clone()).or_default() += 1;
        }
        actions.push(Action::Create { ordinal, account });
    }
    actions
}

/// The status counts of a pool's live Sessions.
fn counts(pool: &SessionPool, live: &[&Session]) -> SessionPoolStatus {
    let name = pool.metadata.name.as_deref().unwrap_or_default();
    let mut st = SessionPoolStatus {
        replicas: live.len() as u32,
        selector: format!("{}={name}", crate::api::POOL_LABEL),
        observed_generation: pool.metadata.generation,
        ..Default::default()
    };
    for s in live {
        st.ready += u32::from(ready(s));
        match phase(s) {
            SessionPhase::Idle if !busy(s) => st.idle += 1,
            SessionPhase::Waiting => st.waiting += 1,
            _ if busy(s) => st.busy += 1,
            _ => {}
        }
        if let Some(a) = s.status.as_ref().and_then(|st| st.account.as_ref()) {
            *st.accounts.entry(a.clone()).or_default() += 1;
        }
    }
    st
}

#[cfg(test)]
mod tests;

//! Which sessions must leave an account, and where they can go. Pure.

use crate::api::{Account, AccountPhase, Session};
use crate::config::FailoverStrategy;
use crate::quota::policy::{Policy, TargetCandidate, pick_target};
use crate::quota::{Window, model_windows};
use std::collections::HashMap;
use std::time::SystemTime;

/// The reason of a swap that moves the sessions of one model off an
/// account at that model's weekly limit.
pub const MODEL_LIMIT: &str = "ModelLimit";

/// The model each session's agent runs, by `(namespace, session)`, as the
/// agent last said (its statusLine); a session not in it runs its
/// `spec.agent.model`.
pub type Models = HashMap<(String, String), String>;

/// The model `s` runs, if known.
pub fn model_of<'a>(s: &'a Session, models: &'a Models) -> Option<&'a str> {
    let key = (
        ns_of(&s.metadata).to_string(),
        s.metadata.name.clone().unwrap_or_default(),
    );
    models
        .get(&key)
        .map(String::as_str)
        .or(s.spec.agent.model.as_deref())
}

/// The per-model windows that count for any of `sessions`.
pub fn windows_of(sessions: &[&Session], models: &Models) -> Vec<Window> {
    let mut out: Vec<Window> = sessions
        .iter()
        .flat_map(|s| model_windows(model_of(s, models)).iter().copied())
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Percent used of window `w` of `a` (no reading: none).
fn used(a: &Account, w: Window) -> f64 {
    a.status
        .as_ref()
        .and_then(|s| s.usage.as_ref())
        .and_then(|u| u.window(w.label()))
        .map_or(0.0, |r| r.utilization)
}

/// The per-model windows of `a` at or past their threshold.
pub fn models_near_limit(a: &Account) -> Vec<Window> {
    Window::MODELS
        .into_iter()
        .filter(|w| used(a, *w) >= w.threshold(&a.spec.thresholds))
        .collect()
}

/// Why sessions must leave `a`, and which: all that run on it when its
/// phase says so; else, while it is Available, those whose model is at
/// its weekly limit there (a session of unknown model counts as running
/// every capped model).
pub fn leaving<'a>(
    a: &Account,
    sessions: &[&'a Session],
    models: &Models,
) -> Option<(&'static str, Vec<&'a Session>)> {
    let name = a.metadata.name.as_deref().unwrap_or_default();
    let on = sessions_on(sessions, ns_of(&a.metadata), name);
    if on.is_empty() {
        return None;
    }
    if let Some(reason) = reason_to_leave(phase_of(a)) {
        return Some((reason, on));
    }
    let near = models_near_limit(a);
    let capped: Vec<&Session> = on
        .into_iter()
        .filter(|s| {
            model_windows(model_of(s, models))
                .iter()
                .any(|w| near.contains(w))
        })
        .collect();
    (!capped.is_empty()).then_some((MODEL_LIMIT, capped))
}

/// Why sessions leave an account in `phase`, if they must.
pub fn reason_to_leave(phase: AccountPhase) -> Option<&'static str> {
    match phase {
        AccountPhase::NearLimit => Some("NearLimit"),
        AccountPhase::Exhausted => Some("Exhausted"),
        AccountPhase::Unavailable => Some("AuthenticationFailed"),
        AccountPhase::Suspended => Some("Drain"),
        AccountPhase::Available => None,
    }
}

pub fn phase_of(a: &Account) -> AccountPhase {
    a.status
        .as_ref()
        .and_then(|s| s.phase)
        .unwrap_or(AccountPhase::Available)
}

pub fn ns_of(m: &crate::api::ObjectMeta) -> &str {
    m.namespace
        .as_deref()
        .unwrap_or(crate::api::DEFAULT_NAMESPACE)
}

/// Left out as a target until then (a failed swap to it).
pub fn set_aside_until(a: &Account) -> Option<SystemTime> {
    let until = a.status.as_ref()?.failover.as_ref()?.set_aside.as_ref()?;
    Some(SystemTime::from(until.until.0))
}

/// Sessions of `ns` running on `account` that are not being moved already.
pub fn sessions_on<'a>(sessions: &[&'a Session], ns: &str, account: &str) -> Vec<&'a Session> {
    sessions
        .iter()
        .copied()
        .filter(|s| ns_of(&s.metadata) == ns)
        .filter(|s| s.metadata.deletion_timestamp.is_none() && !s.spec.suspend)
        .filter(|s| {
            s.status
                .as_ref()
                .is_some_and(|st| st.account.as_deref() == Some(account) && st.pid.is_some())
        })
        .filter(|s| {
            let p = s.status.as_ref().and_then(|st| st.last_swap.as_ref());
            p.is_none_or(|p| !p.swapping())
        })
        .collect()
}

/// Whether a session running `model` on `a` takes no new task: that
/// model's weekly window there is at or past its threshold and the policy
/// drains `a`, unless the failover controller said its sessions have
/// nowhere to go (then work goes on until the limit, as at NearLimit).
/// The per-model side of the dispatcher's drain.
pub fn model_drained(a: &Account, model: Option<&str>, policy: &Policy) -> bool {
    let drained = drained_windows(a, policy);
    model_windows(model).iter().any(|w| drained.contains(w))
}

/// The per-model windows whose threshold `a` has reached and for which it
/// takes no new work (the policy drains it and its sessions have somewhere
/// to go).
pub fn drained_windows(a: &Account, policy: &Policy) -> Vec<Window> {
    let stuck = a
        .status
        .as_ref()
        .and_then(|s| s.failover.as_ref())
        .is_some_and(|f| f.no_target.is_some());
    if !policy.drains(a) || stuck {
        return Vec::new();
    }
    models_near_limit(a)
}

/// Every account of `ns` as a possible target for sessions that count
/// against the per-model `windows`: its headroom is that of the tightest
/// of its account-wide windows and those, and one at or past a threshold
/// of those is NearLimit to them.
pub fn candidates(
    accounts: &[&Account],
    ns: &str,
    now: SystemTime,
    windows: &[Window],
) -> Vec<TargetCandidate> {
    accounts
        .iter()
        .filter(|a| ns_of(&a.metadata) == ns && a.metadata.deletion_timestamp.is_none())
        .map(|a| {
            let headroom = Window::ACCOUNT
                .iter()
                .chain(windows)
                .map(|w| w.threshold(&a.spec.thresholds) - used(a, *w))
                .fold(f64::INFINITY, f64::min);
            let usage = a.status.as_ref().and_then(|s| s.usage.as_ref());
            let resets_at = Window::ACCOUNT
                .iter()
                .filter_map(|w| usage?.window(w.label())?.resets_at.as_ref())
                .map(|t| SystemTime::from(t.0))
                .filter(|t| *t > now)
                .min();
            let capped = models_near_limit(a).iter().any(|w| windows.contains(w));
            let phase = match phase_of(a) {
                AccountPhase::Available if capped => AccountPhase::NearLimit,
                p => p,
            };
            TargetCandidate {
                resets_at,
                excluded: set_aside_until(a).is_some_and(|u| u > now) || a.spec.suspend,
                name: a.metadata.name.clone().unwrap_or_default(),
                phase,
                priority: a.spec.priority,
                headroom,
            }
        })
        .collect()
}

/// Where sessions leaving `from` go: `to` if a person named one (and it can
/// take them), else the policy's pick. `windows`: the per-model windows
/// the sessions count against ([`windows_of`]). Err: why none can.
pub fn target(
    accounts: &[&Account],
    ns: &str,
    from: &str,
    to: Option<&str>,
    strategy: FailoverStrategy,
    now: SystemTime,
    windows: &[Window],
) -> Result<String, String> {
    let cands = candidates(accounts, ns, now, windows);
    match to {
        Some(t) => {
            let Some(c) = cands.iter().find(|c| c.name == t) else {
                return Err(format!("account {t} not found"));
            };
            if c.name == from {
                return Err(format!("account {t} is the one the sessions leave"));
            }
            if let Some(a) = accounts
                .iter()
                .find(|a| ns_of(&a.metadata) == ns && a.metadata.name.as_deref() == Some(t))
                && let Some(until) = set_aside_until(a).filter(|u| *u > now)
            {
                let why = a
                    .status
                    .as_ref()
                    .and_then(|s| s.failover.as_ref()?.set_aside.as_ref())
                    .map(|x| x.reason.clone())
                    .unwrap_or_default();
                return Err(format!(
                    "account {t} is set aside as a target until {} ({why}); `claude-failover reinstate {t}` takes it back",
                    crate::api::Time(crate::quota::jiff_of(until))
                        .0
                        .round(k8s_openapi::jiff::Unit::Second)
                        .unwrap_or_default()
                ));
            }
            if matches!(
                c.phase,
                AccountPhase::Exhausted | AccountPhase::Unavailable | AccountPhase::Suspended
            ) {
                return Err(format!(
                    "account {t} cannot take sessions: it is {}",
                    c.phase
                ));
            }
            Ok(c.name.clone())
        }
        None => pick_target(&cands, from, strategy).ok_or_else(|| {
            let aside: Vec<&str> = cands
                .iter()
                .filter(|c| c.excluded && c.name != from)
                .map(|c| c.name.as_str())
                .collect();
            if aside.is_empty() {
                "no other account is available".into()
            } else {
                format!(
                    "no other account is available ({} set aside after a failed swap)",
                    aside.join(", ")
                )
            }
        }),
    }
}

//! Which sessions must leave an account, and where they can go. Pure.

use crate::api::{Account, AccountPhase, Session};
use crate::config::FailoverStrategy;
use crate::quota::policy::{TargetCandidate, pick_target};
use std::time::SystemTime;

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

/// Every account of `ns` as a possible target.
pub fn candidates(accounts: &[&Account], ns: &str, now: SystemTime) -> Vec<TargetCandidate> {
    accounts
        .iter()
        .filter(|a| ns_of(&a.metadata) == ns && a.metadata.deletion_timestamp.is_none())
        .map(|a| {
            let usage = a.status.as_ref().and_then(|s| s.usage.clone());
            let used = |w: Option<&crate::api::UsageWindow>| w.map_or(0.0, |w| w.utilization);
            let headroom = (f64::from(a.spec.thresholds.five_hour)
                - used(usage.as_ref().and_then(|u| u.five_hour.as_ref())))
            .min(
                f64::from(a.spec.thresholds.seven_day)
                    - used(usage.as_ref().and_then(|u| u.seven_day.as_ref())),
            );
            let resets_at = [
                usage.as_ref().and_then(|u| u.five_hour.as_ref()),
                usage.as_ref().and_then(|u| u.seven_day.as_ref()),
            ]
            .into_iter()
            .flatten()
            .filter_map(|w| w.resets_at.as_ref())
            .map(|t| SystemTime::from(t.0))
            .filter(|t| *t > now)
            .min();
            TargetCandidate {
                resets_at,
                excluded: set_aside_until(a).is_some_and(|u| u > now) || a.spec.suspend,
                name: a.metadata.name.clone().unwrap_or_default(),
                phase: phase_of(a),
                priority: a.spec.priority,
                headroom,
            }
        })
        .collect()
}

/// Where sessions leaving `from` go: `to` if a person named one (and it can
/// take them), else the policy's pick. Err: why none can.
pub fn target(
    accounts: &[&Account],
    ns: &str,
    from: &str,
    to: Option<&str>,
    strategy: FailoverStrategy,
    now: SystemTime,
) -> Result<String, String> {
    let cands = candidates(accounts, ns, now);
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

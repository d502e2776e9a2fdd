//! What a reconcile reports: the phase and conditions of a session, from
//! what its agent is doing and what the controller did. Pure.

use crate::agent::state::AgentState;
use crate::api::{Account, AccountPhase, SessionPhase, SwapStatus};
use std::time::Duration;

/// Requeue of a session whose agent is starting or exiting.
pub const QUICK: Duration = Duration::from_millis(500);
/// A busy session is looked at again this often: a turn can end with no
/// hook at all (Esc, a cancel), and only the agent's own state file says so.
pub const BUSY_LOOK: Duration = Duration::from_secs(5);
/// A session whose agent's state file says busy just after its hooks said
/// idle (`crate::agent::state::settling`) is looked at again this soon:
/// the file's turn to idle comes with no hook.
pub const SETTLING_LOOK: Duration = Duration::from_millis(100);

/// A condition: status, reason, message.
#[derive(Debug, Clone, PartialEq)]
pub struct Cond {
    pub ok: bool,
    pub reason: String,
    pub message: String,
}

impl Cond {
    pub fn new(ok: bool, reason: &str, message: impl Into<String>) -> Cond {
        Cond {
            ok,
            reason: reason.into(),
            message: message.into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub phase: SessionPhase,
    /// `AgentAlive`: the process runs.
    pub alive: Cond,
    /// `Ready`: at its prompt, idle or working.
    pub ready: Cond,
    pub requeue: Duration,
}

pub fn camel(s: &str) -> String {
    s.split(['_', ' ', '-'])
        .filter(|w| !w.is_empty())
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect()
}

/// The report of a running agent in `state`.
pub fn of_state(state: &AgentState, resync: Duration) -> Report {
    let alive = Cond::new(true, "Running", "");
    match state {
        AgentState::Starting => Report {
            phase: SessionPhase::Starting,
            alive,
            ready: Cond::new(
                false,
                "Starting",
                "the agent has not reached its prompt yet",
            ),
            requeue: QUICK,
        },
        AgentState::Idle => Report {
            phase: SessionPhase::Idle,
            alive,
            ready: Cond::new(true, "AgentIdle", "waiting at the prompt"),
            requeue: resync,
        },
        AgentState::Busy => Report {
            phase: SessionPhase::Busy,
            alive,
            ready: Cond::new(true, "AgentBusy", "working on a turn"),
            requeue: resync.min(BUSY_LOOK),
        },
        AgentState::Waiting(w) => Report {
            phase: SessionPhase::Waiting,
            alive,
            ready: Cond::new(
                false,
                &format!("WaitingFor{}", camel(w)),
                format!("waiting for {}", w.replace('_', " ")),
            ),
            requeue: resync,
        },
        AgentState::Exited => Report {
            phase: SessionPhase::Starting,
            alive: Cond::new(true, "Exiting", "the agent is ending its session"),
            ready: Cond::new(false, "AgentExiting", ""),
            requeue: QUICK,
        },
    }
}

/// A session that does not run, and why.
pub fn not_running(phase: SessionPhase, reason: &str, message: &str, requeue: Duration) -> Report {
    Report {
        phase,
        alive: Cond::new(false, reason, message),
        ready: Cond::new(false, reason, message),
        requeue,
    }
}

/// What the session reports on top of its agent's state: moving to another
/// account, or waiting on one whose limit stands with nowhere to go.
pub fn overlay(
    mut r: Report,
    placement: Option<&SwapStatus>,
    running_on: Option<&Account>,
) -> Report {
    if let Some(p) = placement.filter(|p| p.swapping()) {
        r.phase = SessionPhase::Swapping;
        r.ready = Cond::new(
            false,
            "Swapping",
            format!(
                "moving from {} to {} (swap epoch {})",
                p.from.as_deref().unwrap_or("?"),
                p.to,
                p.epoch
            ),
        );
        r.requeue = r.requeue.min(QUICK);
        return r;
    }
    let Some(a) = running_on else { return r };
    let status = a.status.clone().unwrap_or_default();
    // Only once the failover controller has said no other account can take
    // the session: until then a move may be on its way.
    let nowhere = status.failover.as_ref().and_then(|f| f.no_target.as_ref());
    if status.phase == Some(AccountPhase::Exhausted)
        && nowhere.is_some()
        && matches!(r.phase, SessionPhase::Idle | SessionPhase::Waiting)
    {
        let resets = status
            .limit
            .as_ref()
            .and_then(|l| l.resets_at.as_ref())
            .map(|t| format!("; it resets at {}", t.0))
            .unwrap_or_default();
        r.phase = SessionPhase::Waiting;
        r.ready = Cond::new(
            false,
            "QuotaExhausted",
            format!(
                "account {} hit its usage limit and no other account is available{resets}",
                a.metadata.name.as_deref().unwrap_or_default()
            ),
        );
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{AccountFailover, AccountSpec, AccountStatus, FailoverNote};

    fn account(phase: AccountPhase, no_target: bool) -> Account {
        let mut a = Account::new("a", AccountSpec::in_dir("/a"));
        a.status = Some(AccountStatus {
            phase: Some(phase),
            failover: no_target.then(|| AccountFailover {
                no_target: Some(FailoverNote {
                    since: crate::api::now(),
                    message: "none".into(),
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
        a
    }

    #[test]
    fn states_map_to_phases_and_conditions() {
        let r = Duration::from_secs(30);
        let cases = [
            (AgentState::Idle, SessionPhase::Idle, true, "AgentIdle", r),
            (
                AgentState::Busy,
                SessionPhase::Busy,
                true,
                "AgentBusy",
                BUSY_LOOK,
            ),
            (
                AgentState::Waiting("permission_prompt".into()),
                SessionPhase::Waiting,
                false,
                "WaitingForPermissionPrompt",
                r,
            ),
            (
                AgentState::Starting,
                SessionPhase::Starting,
                false,
                "Starting",
                QUICK,
            ),
            (
                AgentState::Exited,
                SessionPhase::Starting,
                false,
                "AgentExiting",
                QUICK,
            ),
        ];
        for (state, phase, ready, reason, requeue) in cases {
            let rep = of_state(&state, r);
            assert_eq!(
                (
                    rep.phase,
                    rep.ready.ok,
                    rep.ready.reason.as_str(),
                    rep.requeue
                ),
                (phase, ready, reason, requeue),
                "{state:?}"
            );
        }
    }

    #[test]
    fn waiting_on_an_exhausted_account_only_when_nothing_can_take_it() {
        let r = Duration::from_secs(30);
        let idle = of_state(&AgentState::Idle, r);
        let moving = overlay(
            idle.clone(),
            None,
            Some(&account(AccountPhase::Exhausted, false)),
        );
        assert_eq!(moving.phase, SessionPhase::Idle, "a move may be on its way");
        let stuck = overlay(
            idle.clone(),
            None,
            Some(&account(AccountPhase::Exhausted, true)),
        );
        assert_eq!(stuck.phase, SessionPhase::Waiting);
        assert_eq!(stuck.ready.reason, "QuotaExhausted");
        let fine = overlay(idle, None, Some(&account(AccountPhase::NearLimit, true)));
        assert_eq!(fine.phase, SessionPhase::Idle);
        assert_eq!(camel("permission_prompt"), "PermissionPrompt");
    }
}

//! Quiet sessions: an idle agent whose Session, signals, Accounts and swap
//! lease have not changed since a full pass needs no new look until
//! [`QUIET_RESYNCS`] resync periods later. Each resync of an idle pool of
//! 500 otherwise read the pane, the agent's state file, its transcript
//! and its workdir 500 times for nothing (issue: idle cost at scale).
//!
//! Anything that could change what a pass decides changes the
//! [`Fingerprint`]: a write to the Session (its spec, status or
//! annotations: a placement, a cancel, a restart), any payload or terminal
//! event of its agent or its standby (they wake the session), an Account
//! (usage, phase, a new one) or the swap lease. A pass is only let go
//! quiet when none of its own deadlines is pending (see [`eligible`]).

use super::report::Report;
use super::standby::Seen;
use super::usage::LOGGED_WITHIN;
use crate::agent::signals::AgentSignals;
use crate::api::{Account, Session, SessionPhase, SessionStatus};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// A quiet session gets a full pass at least every this many resyncs (the
/// safety net for what no event tells: a state file the agent rewrote
/// without a hook, a workdir file a user removed).
pub const QUIET_RESYNCS: u32 = 10;

/// `hold`, shortened by up to a fifth at random: a pool that settled at
/// once does not come due at once.
pub fn spread(hold: Duration) -> Duration {
    let mut b = [0u8; 8];
    // Unspread when the OS has no randomness to give: only less smooth.
    let _ = getrandom::fill(&mut b);
    let fifth = (hold / 5).as_millis().max(1) as u64;
    hold - Duration::from_millis(u64::from_le_bytes(b) % fifth)
}

/// What a full pass read, in a form cheap to compare.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint {
    session: Option<String>,
    wakes: u64,
    swap_epoch: u64,
    accounts: Vec<(Option<String>, Option<String>)>,
    /// The peers sharing a bound on standbys ([`super::peers::print`]).
    peers: Vec<(String, super::peers::Standing)>,
}

impl Fingerprint {
    pub fn of(s: &Session, wakes: u64, swap_epoch: u64, accounts: &[Arc<Account>]) -> Fingerprint {
        let mut accounts: Vec<_> = accounts
            .iter()
            .map(|a| (a.metadata.name.clone(), a.metadata.resource_version.clone()))
            .collect();
        accounts.sort();
        Fingerprint {
            session: s.metadata.resource_version.clone(),
            wakes,
            swap_epoch,
            accounts,
            peers: vec![],
        }
    }

    /// With what the pass read of its peers.
    pub fn with_peers(self, peers: Vec<(String, super::peers::Standing)>) -> Fingerprint {
        Fingerprint { peers, ..self }
    }
}

/// A quiet session: what its last full pass read, and until when that
/// pass holds.
#[derive(Debug, Clone)]
pub struct Quiet {
    pub print: Fingerprint,
    pub until: Instant,
}

/// How long the last full pass still holds for a session that reads
/// `print` now (None: a full pass is due).
pub fn left(quiet: Option<&Quiet>, print: &Fingerprint, now: Instant) -> Option<Duration> {
    let q = quiet.filter(|q| q.print == *print)?;
    let left = q.until.checked_duration_since(now)?;
    (!left.is_zero()).then_some(left)
}

/// Whether a full pass that ended in `report` may go quiet: the agent
/// idle at its prompt, as its hooks say (a state read from the screen
/// needs its debounce looked at again), nothing asked for an early look,
/// no launch or takeover awaiting confirmation, no cut turn to continue,
/// no recent usage failure whose transcript entry may still come, and a
/// standby, if any, alive at its prompt.
pub fn eligible(
    report: &Report,
    resync: Duration,
    st: &SessionStatus,
    sig: &AgentSignals,
    standby: Option<&Seen>,
    awaits_prime: bool,
    now: SystemTime,
) -> bool {
    let recent_failure = super::usage::newest_failure(sig)
        .is_some_and(|(_, _, at)| now.duration_since(*at).unwrap_or_default() < LOGGED_WITHIN);
    report.phase == SessionPhase::Idle
        && report.alive.ok
        && report.ready.ok
        && report.requeue >= resync
        && sig.state.is_some()
        && st.interrupted.is_none()
        && st.launch.as_ref().is_some_and(|l| l.confirmed_at.is_some())
        && !recent_failure
        && standby.is_none_or(|b| b.alive && b.ready)
        && st.standby.is_some() == standby.is_some()
        && !awaits_prime
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::signals::HookState;
    use serde_json::json;

    fn from<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
        serde_json::from_value(v).unwrap()
    }

    fn session(rv: &str) -> Session {
        from(json!({
            "apiVersion": "claude-failover.io/v1alpha1", "kind": "Session",
            "metadata": {"name": "s", "resourceVersion": rv},
            "spec": {"workdir": "/w"},
        }))
    }

    fn account(name: &str, rv: &str) -> Arc<Account> {
        Arc::new(from(json!({
            "apiVersion": "claude-failover.io/v1alpha1", "kind": "Account",
            "metadata": {"name": name, "resourceVersion": rv},
            "spec": {"configDir": "/c"},
        })))
    }

    #[test]
    fn any_change_read_by_a_pass_ends_the_quiet() {
        let t0 = Instant::now();
        let accounts = vec![account("a", "1"), account("b", "4")];
        let print = Fingerprint::of(&session("7"), 3, 1, &accounts);
        let quiet = Quiet {
            print: print.clone(),
            until: t0 + Duration::from_secs(300),
        };
        let later = t0 + Duration::from_secs(30);
        assert_eq!(
            left(Some(&quiet), &print, later),
            Some(Duration::from_secs(270))
        );
        // the same accounts in another order: the same
        let swapped = vec![accounts[1].clone(), accounts[0].clone()];
        assert!(
            left(
                Some(&quiet),
                &Fingerprint::of(&session("7"), 3, 1, &swapped),
                later
            )
            .is_some()
        );
        let changed = [
            (
                "the Session written",
                Fingerprint::of(&session("8"), 3, 1, &accounts),
            ),
            (
                "a payload or terminal event",
                Fingerprint::of(&session("7"), 4, 1, &accounts),
            ),
            (
                "the swap lease",
                Fingerprint::of(&session("7"), 3, 2, &accounts),
            ),
            (
                "an Account written",
                Fingerprint::of(&session("7"), 3, 1, &[account("a", "2"), account("b", "4")]),
            ),
            (
                "an Account added",
                Fingerprint::of(
                    &session("7"),
                    3,
                    1,
                    &[account("a", "1"), account("b", "4"), account("c", "1")],
                ),
            ),
            (
                "a peer's standby",
                Fingerprint::of(&session("7"), 3, 1, &accounts).with_peers(vec![(
                    "p-1".into(),
                    (Some("b".into()), Some("a".into()), true),
                )]),
            ),
        ];
        for (what, p) in changed {
            assert_eq!(left(Some(&quiet), &p, later), None, "{what}");
        }
        assert_eq!(
            left(Some(&quiet), &print, t0 + Duration::from_secs(300)),
            None,
            "expired"
        );
        assert_eq!(left(None, &print, later), None, "never quiet");
    }

    #[test]
    fn a_hold_is_spread_over_its_last_fifth() {
        let hold = Duration::from_secs(300);
        let held: Vec<Duration> = (0..50).map(|_| spread(hold)).collect();
        assert!(held.iter().all(|h| *h <= hold && *h > hold * 4 / 5));
        assert!(held.iter().any(|h| *h != held[0]), "not all the same");
    }

    fn idle_report() -> Report {
        super::super::report::of_state(
            &crate::agent::state::AgentState::Idle,
            Duration::from_secs(30),
        )
    }

    fn running() -> SessionStatus {
        from(json!({"launch": {"at": "2026-11-30T10:00:00.000000Z",
                               "confirmedAt": "2026-11-30T10:00:01.000000Z"}}))
    }

    /// What a full pass ends with: as [`eligible`] reads it.
    struct Pass {
        report: Report,
        st: SessionStatus,
        sig: AgentSignals,
        standby: Option<Seen>,
        awaits_prime: bool,
    }

    /// An idle agent, heard by its hooks, its launch confirmed, no standby.
    fn settled(now: SystemTime) -> Pass {
        Pass {
            report: idle_report(),
            st: running(),
            sig: AgentSignals {
                state: Some((HookState::Idle, now)),
                ..Default::default()
            },
            standby: None,
            awaits_prime: false,
        }
    }

    fn with_standby(p: &mut Pass, now: SystemTime, alive: bool, ready: bool) {
        p.st.standby = Some(from(json!({"account": "b", "paneId": "%1", "pid": 9,
            "agentSessionId": "x", "launchedAt": "2026-11-30T10:00:00.000000Z"})));
        p.standby = Some(Seen {
            account: "b".into(),
            alive,
            ready,
            launched_at: now,
            resumed: false,
        });
    }

    fn failed(p: &mut Pass, at: SystemTime) {
        p.sig.last_failure = Some(("rate_limit".into(), "limit".into(), at));
    }

    #[test]
    fn only_a_settled_idle_agent_goes_quiet() {
        let now = SystemTime::now();
        let resync = Duration::from_secs(30);
        let ago = move |s: u64| now - Duration::from_secs(s);
        // Each case: what differs from a settled pass.
        type Change = Box<dyn Fn(&mut Pass)>;
        let cases: Vec<(&str, Change, bool)> = vec![
            ("idle, hooked, confirmed", Box::new(|_| {}), true),
            (
                "busy",
                Box::new(|p| {
                    p.report = super::super::report::of_state(
                        &crate::agent::state::AgentState::Busy,
                        Duration::from_secs(30),
                    )
                }),
                false,
            ),
            (
                "an early look asked",
                Box::new(|p| p.report.requeue = Duration::from_secs(1)),
                false,
            ),
            (
                "state from the screen",
                Box::new(|p| p.sig.state = None),
                false,
            ),
            (
                "launch unconfirmed",
                Box::new(|p| p.st.launch.as_mut().unwrap().confirmed_at = None),
                false,
            ),
            (
                "a cut turn to continue",
                Box::new(|p| {
                    p.st.interrupted = Some(from(
                        json!({"by": "rate_limit", "at": "2026-11-30T10:00:00.000000Z"}),
                    ))
                }),
                false,
            ),
            (
                "a usage failure just now",
                Box::new(move |p| failed(p, ago(5))),
                false,
            ),
            (
                "a usage failure long ago",
                Box::new(move |p| failed(p, ago(600))),
                true,
            ),
            (
                "standby ready",
                Box::new(move |p| with_standby(p, now, true, true)),
                true,
            ),
            (
                "standby ready, its /resume still to be typed",
                Box::new(move |p| {
                    with_standby(p, now, true, true);
                    p.awaits_prime = true;
                }),
                false,
            ),
            (
                "standby starting",
                Box::new(move |p| with_standby(p, now, true, false)),
                false,
            ),
            (
                "standby gone",
                Box::new(move |p| with_standby(p, now, false, true)),
                false,
            ),
            (
                "standby recorded, not seen",
                Box::new(move |p| {
                    with_standby(p, now, true, true);
                    p.standby = None;
                }),
                false,
            ),
        ];
        for (what, change, want) in cases {
            let mut p = settled(now);
            change(&mut p);
            let got = eligible(
                &p.report,
                resync,
                &p.st,
                &p.sig,
                p.standby.as_ref(),
                p.awaits_prime,
                now,
            );
            assert_eq!(got, want, "{what}");
        }
    }
}

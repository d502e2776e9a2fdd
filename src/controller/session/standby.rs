//! The warm standby's decisions (`spec.standby.mode: warm`). Pure: which
//! account the standby waits under, when it is started, replaced or
//! discarded, and when a takeover has waited too long.
//!
//! The standby is a second Claude Code, idle in the session's workdir
//! under the account a failover would pick next. A move to that account
//! types `/resume <id>` into it instead of starting a process
//! (docs/failover.md, "Warm standby").

use crate::api::{AccountPhase, LaunchStatus, SessionStatus, StandbyStatus};
use crate::config::FailoverStrategy;
use crate::quota::policy::{TargetCandidate, pick_target};
use std::time::{Duration, SystemTime};

/// How long a takeover (`/resume` typed into the standby) may take to be
/// confirmed by its `SessionStart`; then the standby is discarded and the
/// session relaunched. The probe measured 0.13-0.6 s, 1.7 s for four at
/// once on a loaded 2-core machine.
pub const TAKEOVER_CONFIRM: Duration = Duration::from_secs(10);

/// A standby stays under its account while that account's headroom is
/// within this many percentage points of the best choice's (and it is
/// still a target the failover could pick): usage moves with every turn,
/// and each replacement costs a process start.
pub const HYSTERESIS_POINTS: f64 = 10.0;

/// How long a standby may take to reach its prompt before it is started
/// again.
pub const STANDBY_START: Duration = Duration::from_secs(60);

/// The standby as it is seen now.
#[derive(Debug, Clone, PartialEq)]
pub struct Seen {
    pub account: String,
    /// Its process runs (its pane alive, the pid ours).
    pub alive: bool,
    pub ready: bool,
    pub launched_at: SystemTime,
    /// It took a conversation over outside a move (its `SessionStart`
    /// said `resume`): Enter pressed by hand under the waiting `/resume`.
    pub resumed: bool,
}

impl Seen {
    pub fn of(st: &StandbyStatus, alive: bool, resumed: bool) -> Seen {
        Seen {
            account: st.account.clone(),
            alive,
            ready: st.ready,
            launched_at: SystemTime::from(st.launched_at.0),
            resumed,
        }
    }
}

/// What to do with the standby.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Keep,
    /// Start one under the account.
    Start(String),
    /// Stop it (its reason), and start one under the account if any.
    Replace(String, Option<String>),
}

/// The account the standby of a session running on `running` should wait
/// under: the failover's pick, unless the current standby's account is
/// still a possible target and within [`HYSTERESIS_POINTS`] of it.
pub fn choose(
    cands: &[TargetCandidate],
    running: &str,
    current: Option<&str>,
    strategy: FailoverStrategy,
) -> Option<String> {
    let best = pick_target(cands, running, strategy)?;
    let usable = |n: &str| {
        cands.iter().find(|c| {
            c.name == n && c.name != running && c.phase == AccountPhase::Available && !c.excluded
        })
    };
    if let Some(cur) = current.and_then(usable)
        && let Some(b) = usable(&best)
        && b.headroom - cur.headroom <= HYSTERESIS_POINTS
    {
        return Some(cur.name.clone());
    }
    Some(best)
}

/// What to do with the standby: `want` is the account it should run
/// under (None: no standby wanted now), `have` the one there is.
pub fn decide(want: Option<&str>, have: Option<&Seen>, now: SystemTime) -> Action {
    match (want, have) {
        (None, None) => Action::Keep,
        (None, Some(_)) => Action::Replace("no standby wanted now".into(), None),
        (Some(w), None) => Action::Start(w.to_string()),
        (Some(w), Some(h)) if !h.alive => {
            Action::Replace("its process is gone".into(), Some(w.to_string()))
        }
        (Some(w), Some(h)) if h.resumed => Action::Replace(
            "it took the conversation over outside a move (Enter pressed in it by hand): it would run beside the agent".into(),
            Some(w.to_string()),
        ),
        (Some(w), Some(h)) if h.account != w => Action::Replace(
            format!("the next target is {w}, no longer {}", h.account),
            Some(w.to_string()),
        ),
        (Some(w), Some(h))
            if !h.ready
                && now.duration_since(h.launched_at).unwrap_or_default() > STANDBY_START =>
        {
            Action::Replace(
                format!("not at its prompt after {}s", STANDBY_START.as_secs()),
                Some(w.to_string()),
            )
        }
        (Some(_), Some(_)) => Action::Keep,
    }
}

/// The ready standby is still to have `/resume` of the session's
/// conversation typed in its composer: the session has a conversation, the
/// standby is typed for none or another, and typing it for this one has
/// not failed (`unprimable`).
pub fn awaits_prime(st: &SessionStatus, unprimable: Option<&str>) -> bool {
    let Some(id) = st.agent_session_id.as_deref() else {
        return false;
    };
    st.standby
        .as_ref()
        .is_some_and(|b| b.ready && b.primed.as_deref() != Some(id))
        && unprimable != Some(id)
}

/// A Session of a group whose standbys are bounded (`perTarget`): the
/// Sessions of one pool on one node in one workdir.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    pub name: String,
    /// The account its standby should wait under ([`choose`]); None: it
    /// wants none.
    pub target: Option<String>,
    /// The account of the standby it has.
    pub holds: Option<String>,
    /// The headroom of the account it runs on: the lower, the sooner it
    /// moves.
    pub headroom: f64,
}

/// Whether `me` keeps, or may start, a standby for its target, with at
/// most `bound` per target in the group. Those that hold one for their
/// target keep it (the nearest their limit first, if more hold one than
/// the bound allows); the free places go to the others nearest their
/// limit. Every member decides alike from the same Sessions, so the
/// group agrees without talking.
pub fn within_bound(members: &[Member], me: &str, bound: usize) -> bool {
    let Some(target) = members
        .iter()
        .find(|m| m.name == me)
        .and_then(|m| m.target.clone())
    else {
        return false;
    };
    let ranked = |hold: bool| {
        let mut v: Vec<&Member> = members
            .iter()
            .filter(|m| {
                m.target.as_deref() == Some(target.as_str())
                    && (m.holds.as_deref() == Some(target.as_str())) == hold
            })
            .collect();
        v.sort_by(|a, b| a.headroom.total_cmp(&b.headroom).then(a.name.cmp(&b.name)));
        v
    };
    let holders = ranked(true);
    if let Some(i) = holders.iter().position(|m| m.name == me) {
        return i < bound;
    }
    let free = bound.saturating_sub(holders.len());
    ranked(false)
        .iter()
        .position(|m| m.name == me)
        .is_some_and(|i| i < free)
}

/// A takeover typed into the standby whose confirmation is overdue.
pub fn takeover_overdue(launch: Option<&LaunchStatus>, now: SystemTime) -> bool {
    launch.is_some_and(|l| {
        l.takeover
            && l.confirmed_at.is_none()
            && now
                .duration_since(SystemTime::from(l.at.0))
                .unwrap_or_default()
                > TAKEOVER_CONFIRM
    })
}

/// Whether the standby can take over a move to `to` now.
pub fn can_take_over(have: Option<&Seen>, to: Option<&str>) -> bool {
    have.is_some_and(|h| h.alive && h.ready && Some(h.account.as_str()) == to)
}

#[cfg(test)]
mod tests {
    use super::*;
    use AccountPhase::*;

    fn c(name: &str, phase: AccountPhase, headroom: f64) -> TargetCandidate {
        TargetCandidate {
            name: name.into(),
            phase,
            priority: 0,
            headroom,
            resets_at: None,
            excluded: false,
        }
    }

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn the_standby_waits_under_the_next_target_with_hysteresis() {
        let h = FailoverStrategy::Headroom;
        let cands = [
            c("a", Available, 10.0),
            c("b", Available, 60.0),
            c("c", Available, 55.0),
            c("d", Exhausted, 90.0),
        ];
        let cases: &[(&str, Option<&str>, Option<&str>, &str)] = &[
            ("a", None, Some("b"), "the failover's pick"),
            ("a", Some("c"), Some("c"), "within the margin: kept"),
            ("a", Some("b"), Some("b"), "already the best"),
            ("b", Some("c"), Some("c"), "the session moved to b: c stays"),
            ("c", Some("c"), Some("b"), "never the account it runs on"),
            ("a", Some("d"), Some("b"), "an exhausted account is left"),
            ("a", Some("gone"), Some("b"), "an account that is gone"),
        ];
        for (running, current, want, why) in cases {
            assert_eq!(
                choose(&cands, running, *current, h).as_deref(),
                *want,
                "{why}"
            );
        }
        // Past the margin: replaced.
        let wide = [
            c("a", Available, 10.0),
            c("b", Available, 80.0),
            c("c", Available, 55.0),
        ];
        assert_eq!(choose(&wide, "a", Some("c"), h).as_deref(), Some("b"));
        // Set aside after a failed swap: not kept.
        let mut aside = wide.clone();
        aside[2].excluded = true;
        aside[1].headroom = 56.0;
        assert_eq!(choose(&aside, "a", Some("c"), h).as_deref(), Some("b"));
        // Nowhere to go: no standby.
        assert_eq!(choose(&[c("a", Available, 50.0)], "a", None, h), None);
    }

    fn seen(account: &str, alive: bool, ready: bool, launched: u64) -> Seen {
        Seen {
            account: account.into(),
            alive,
            ready,
            launched_at: at(launched),
            resumed: false,
        }
    }

    #[test]
    fn started_kept_replaced_or_discarded() {
        let now = at(1000);
        assert_eq!(decide(None, None, now), Action::Keep);
        assert_eq!(decide(Some("b"), None, now), Action::Start("b".into()));
        let ready = seen("b", true, true, 900);
        assert_eq!(decide(Some("b"), Some(&ready), now), Action::Keep);
        assert!(matches!(
            decide(Some("c"), Some(&ready), now),
            Action::Replace(_, Some(c)) if c == "c"
        ));
        assert!(matches!(
            decide(None, Some(&ready), now),
            Action::Replace(_, None)
        ));
        let dead = seen("b", false, true, 900);
        assert!(matches!(
            decide(Some("b"), Some(&dead), now),
            Action::Replace(_, Some(b)) if b == "b"
        ));
        let starting = seen("b", true, false, 990);
        assert_eq!(decide(Some("b"), Some(&starting), now), Action::Keep);
        let resumed = Seen {
            resumed: true,
            ..ready.clone()
        };
        assert!(matches!(
            decide(Some("b"), Some(&resumed), now),
            Action::Replace(why, Some(b)) if b == "b" && why.contains("outside a move")
        ));
        let stuck = seen("b", true, false, 900);
        assert!(matches!(
            decide(Some("b"), Some(&stuck), now),
            Action::Replace(_, Some(_))
        ));
    }

    fn m(name: &str, target: Option<&str>, holds: Option<&str>, headroom: f64) -> Member {
        Member {
            name: name.into(),
            target: target.map(Into::into),
            holds: holds.map(Into::into),
            headroom,
        }
    }

    #[test]
    fn a_pool_keeps_at_most_its_bound_per_target() {
        let b = Some("b");
        let c = Some("c");
        // Nobody holds one yet: the two nearest their limit start.
        let fresh = [
            m("s0", b, None, 20.0),
            m("s1", b, None, 5.0),
            m("s2", b, None, 5.0),
            m("s3", b, None, 40.0),
        ];
        let got: Vec<bool> = ["s0", "s1", "s2", "s3"]
            .iter()
            .map(|n| within_bound(&fresh, n, 2))
            .collect();
        assert_eq!(
            got,
            [false, true, true, false],
            "lowest headroom, then name"
        );
        // Holders keep theirs even when another is nearer its limit now.
        let held = [
            m("s0", b, b, 30.0),
            m("s1", b, b, 30.0),
            m("s2", b, None, 1.0),
        ];
        assert!(within_bound(&held, "s0", 2));
        assert!(within_bound(&held, "s1", 2));
        assert!(!within_bound(&held, "s2", 2), "no free place");
        // One holder left for c: a free place for b's best.
        let moved = [
            m("s0", b, b, 30.0),
            m("s1", b, c, 30.0),
            m("s2", b, None, 1.0),
            m("s3", b, None, 2.0),
        ];
        assert!(within_bound(&moved, "s2", 2));
        assert!(!within_bound(&moved, "s3", 2));
        // Each target has its own bound.
        let two = [m("s0", b, None, 9.0), m("s1", c, None, 9.0)];
        assert!(within_bound(&two, "s0", 1) && within_bound(&two, "s1", 1));
        // More holders than the bound (a lower bound applied): the
        // nearest their limit keep theirs.
        let over = [m("s0", b, b, 50.0), m("s1", b, b, 10.0)];
        assert!(!within_bound(&over, "s0", 1));
        assert!(within_bound(&over, "s1", 1));
        // No target, or not a member: none.
        assert!(!within_bound(&[m("s0", None, None, 0.0)], "s0", 2));
        assert!(!within_bound(&fresh, "zz", 2));
    }

    #[test]
    fn a_takeover_is_used_when_ready_and_overdue_after_its_deadline() {
        let ready = seen("b", true, true, 0);
        assert!(can_take_over(Some(&ready), Some("b")));
        assert!(!can_take_over(Some(&ready), Some("c")));
        assert!(!can_take_over(Some(&seen("b", true, false, 0)), Some("b")));
        assert!(!can_take_over(Some(&seen("b", false, true, 0)), Some("b")));
        assert!(!can_take_over(None, Some("b")));
        let mut l = LaunchStatus {
            account: Some("b".into()),
            at: crate::api::micro(at(100)),
            resumed: true,
            epoch: Some(3),
            confirmed_at: None,
            takeover: true,
        };
        assert!(!takeover_overdue(Some(&l), at(105)));
        assert!(takeover_overdue(Some(&l), at(111)));
        l.confirmed_at = Some(crate::api::micro(at(101)));
        assert!(!takeover_overdue(Some(&l), at(111)), "confirmed");
        l.confirmed_at = None;
        l.takeover = false;
        assert!(!takeover_overdue(Some(&l), at(111)), "a process start");
    }

    #[test]
    fn a_ready_standby_awaits_its_resume_typed_for_the_conversation_once() {
        // (conversation, standby ready, primed for, unprimable) -> awaits
        type Case = (Conv, Option<(bool, Conv)>, Conv, bool);
        type Conv = Option<&'static str>;
        let cases: [Case; 8] = [
            (Some("c1"), Some((true, None)), None, true),
            (Some("c1"), Some((true, Some("c1"))), None, false),
            (Some("c2"), Some((true, Some("c1"))), None, true),
            (Some("c1"), Some((false, None)), None, false),
            (Some("c1"), None, None, false),
            (None, Some((true, None)), None, false),
            (Some("c1"), Some((true, None)), Some("c1"), false),
            (Some("c2"), Some((true, None)), Some("c1"), true),
        ];
        for (i, (conv, standby, unprimable, want)) in cases.into_iter().enumerate() {
            let st = SessionStatus {
                agent_session_id: conv.map(str::to_string),
                standby: standby.map(|(ready, primed)| StandbyStatus {
                    account: "b".into(),
                    pane_id: "%1".into(),
                    pid: 9,
                    agent_session_id: "own".into(),
                    launched_at: crate::api::micro(at(0)),
                    ready,
                    primed: primed.map(str::to_string),
                }),
                ..Default::default()
            };
            assert_eq!(awaits_prime(&st, unprimable), want, "case {i}");
        }
    }
}

//! The failover controller's decisions. Pure: from the store as the caches
//! show it ([`World`]), what to write next ([`Action`]s, in order).
//!
//! A swap is a state machine kept in its `Swap` object: each session of it
//! is `WaitingForTurn` (until its turn ends, or the deadline), `Placed` on
//! the target (until its agent confirms the resume there, or the deadline),
//! then `Confirmed` or `RolledBack`. A pass advances every session as far
//! as the world allows and never waits; the next pass comes with the next
//! change or the nearest deadline ([`next_deadline`]).

use super::target::{self, ns_of, phase_of, sessions_on};
use crate::api::keys::{FAILOVER_REQUEST, FAILOVER_TO, REINSTATE};
use crate::api::{
    Account, AccountFailover, FailoverNote, Kind, MicroTime, ObjectKey, RequestAnswer, SWAP_DONE,
    SWAP_ROLLED_BACK, SWAPPING, Session, SessionPhase, SetAside, Swap, SwapPhase, SwapSessionState,
    SwapSpec, SwapState, SwapStatus, SwapStep, Time, swap_name,
};
use crate::notify::NoticeKind;
use crate::quota::policy::Policy;
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime};

mod advance;
mod recover;
mod start;

use advance::placement_of;
use start::{busy, next_epoch};

/// How long a target that failed a swap is left out of the choice.
pub const TARGET_PENALTY: Duration = Duration::from_secs(600);

#[derive(Debug, Clone)]
pub struct FailoverSettings {
    /// How long a swap waits for a running turn to end.
    pub turn_wait: Duration,
    /// How long it waits for an agent to confirm its resume on the target.
    pub confirm: Duration,
    /// The strategy, drain and failback.
    pub policy: Policy,
}

impl Default for FailoverSettings {
    fn default() -> Self {
        FailoverSettings {
            turn_wait: Duration::from_secs(120),
            confirm: Duration::from_secs(60),
            policy: Policy::default(),
        }
    }
}

/// The swap lease as the cache shows it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LeaseView {
    pub holder: Option<String>,
    pub epoch: u64,
}

/// Everything a pass decides from.
pub struct World<'a> {
    /// This daemon (the leader).
    pub me: &'a str,
    pub now: SystemTime,
    pub lease: LeaseView,
    pub accounts: Vec<&'a Account>,
    pub sessions: Vec<&'a Session>,
    pub swaps: Vec<&'a Swap>,
    /// The task in flight on each session, by `(namespace, session)`.
    pub tasks_on: HashMap<(String, String), String>,
    /// The model each session's agent says it runs ([`target::model_of`]).
    pub models: target::Models,
}

impl<'a> World<'a> {
    /// The Session `ns/name`, if it exists.
    fn session(&self, ns: &str, name: &str) -> Option<&'a Session> {
        self.sessions
            .iter()
            .copied()
            .find(|s| ns_of(&s.metadata) == ns && s.metadata.name.as_deref() == Some(name))
    }
}

/// What a plan saw in flight on a session it places: the task of the turn
/// it cuts (replayed on the target), or None at a turn boundary.
#[derive(Debug, Clone, PartialEq)]
pub struct Seen {
    pub task: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Take the swap lease at `epoch` and create the Swap that uses it, in
    /// one store transaction. Nothing after it runs if it fails.
    Start(Box<Swap>),
    /// Write a Swap's state (its progress, or its end).
    Update {
        namespace: String,
        name: String,
        state: SwapState,
    },
    /// Release the swap lease (its epoch stays).
    Release,
    /// Write a session's placement.
    Place {
        session: ObjectKey,
        placement: SwapStatus,
        /// A session's first placement in a swap: what the plan saw in
        /// flight on it. Written only if no other task has reached the
        /// session since (see `execute::place`).
        first: Option<Seen>,
    },
    /// Write what the failover controller says of an account.
    Note {
        account: ObjectKey,
        failover: Option<AccountFailover>,
    },
    Event {
        key: ObjectKey,
        warning: bool,
        reason: &'static str,
        message: String,
    },
    Notify {
        kind: NoticeKind,
        object: String,
        message: String,
    },
    /// `claude_failover_failovers_total{reason,result}` and, at the end of
    /// a swap, its duration.
    Count {
        reason: String,
        result: &'static str,
        seconds: Option<f64>,
    },
}

fn time(t: SystemTime) -> MicroTime {
    crate::api::micro(t)
}

fn system(t: &MicroTime) -> SystemTime {
    SystemTime::from(t.0)
}

/// A time to the second, for what people read (an account's notes).
fn seconds(t: SystemTime) -> Time {
    Time(crate::quota::jiff_of(t))
}

fn akey(ns: &str, name: &str) -> ObjectKey {
    ObjectKey::new(Kind::Account, ns, name)
}

fn skey(ns: &str, name: &str) -> ObjectKey {
    ObjectKey::new(Kind::Session, ns, name)
}

/// The reason of a swap that moves sessions back to their preferred account.
pub const FAILBACK: &str = "Failback";

/// `claude_failover_failovers_total`'s bounded reason label.
pub fn reason_label(reason: &str) -> &'static str {
    match reason {
        FAILBACK => "failback",
        "NearLimit" => "near_limit",
        target::MODEL_LIMIT => "model_limit",
        "Exhausted" => "exhausted",
        "AuthenticationFailed" => "auth",
        _ => "manual",
    }
}

struct Planner<'a, 'w> {
    w: &'a World<'w>,
    st: &'a FailoverSettings,
    out: Vec<Action>,
    /// What each account's failover note becomes (written at the end).
    notes: BTreeMap<ObjectKey, Option<AccountFailover>>,
}

/// What to write next, in order.
pub fn plan(w: &World, st: &FailoverSettings) -> Vec<Action> {
    let mut p = Planner {
        w,
        st,
        out: Vec::new(),
        notes: BTreeMap::new(),
    };
    p.expire_notes();
    let mut running: Vec<&Swap> = w
        .swaps
        .iter()
        .copied()
        .filter(|s| !state_of(s).phase.finished())
        .collect();
    running.sort_by_key(|s| s.spec.epoch);
    let mine = |s: &Swap| w.lease.holder.as_deref() == Some(w.me) && s.spec.epoch == w.lease.epoch;
    let held_by_other = w.lease.holder.as_deref().is_some_and(|h| h != w.me);
    if let Some(s) = running.iter().copied().find(|s| mine(s)) {
        for old in running.iter().filter(|o| !mine(o)) {
            p.interrupt(old, s.spec.epoch);
        }
        p.advance(s);
    } else if held_by_other || !running.is_empty() {
        p.recover(&running);
    } else if w.lease.holder.is_some() {
        // Mine, with no swap running: its end was written, not its release.
        p.out.push(Action::Release);
    } else {
        p.start_next();
    }
    p.flush_notes();
    p.out
}

/// A Swap's state, with its sessions' steps filled in from its spec when
/// its daemon died before writing them.
pub fn state_of(s: &Swap) -> SwapState {
    let mut st = s.status.clone().unwrap_or_default();
    if st.sessions.is_empty() && !st.phase.finished() {
        st.sessions = s
            .spec
            .sessions
            .iter()
            .map(|n| SwapSessionState {
                name: n.clone(),
                ..Default::default()
            })
            .collect();
    }
    st
}

/// When the next pass is due without an event: the nearest deadline of a
/// running swap, or the end of a set-aside.
pub fn next_deadline(w: &World) -> Option<SystemTime> {
    let waits = w
        .swaps
        .iter()
        .filter(|s| !state_of(s).phase.finished())
        .flat_map(|s| state_of(s).sessions)
        .filter(|x| !x.step.finished())
        .filter_map(|x| x.deadline.as_ref().map(system));
    let asides = w.accounts.iter().filter_map(|a| target::set_aside_until(a));
    waits.chain(asides).filter(|t| *t > w.now).min()
}

impl Planner<'_, '_> {
    fn note(&mut self, ns: &str, account: &str) -> &mut Option<AccountFailover> {
        let key = akey(ns, account);
        let current = self
            .w
            .accounts
            .iter()
            .find(|a| ns_of(&a.metadata) == ns && a.metadata.name.as_deref() == Some(account))
            .and_then(|a| a.status.as_ref()?.failover.clone());
        self.notes.entry(key).or_insert(current)
    }

    fn flush_notes(&mut self) {
        for (key, want) in std::mem::take(&mut self.notes) {
            let now = self
                .w
                .accounts
                .iter()
                .find(|a| ObjectKey::of(**a) == key)
                .and_then(|a| a.status.as_ref()?.failover.clone());
            let want = want.filter(|f| *f != AccountFailover::default());
            if now != want {
                self.out.push(Action::Note {
                    account: key,
                    failover: want,
                });
            }
        }
    }

    fn event(&mut self, key: ObjectKey, warning: bool, reason: &'static str, message: String) {
        self.out.push(Action::Event {
            key,
            warning,
            reason,
            message,
        });
    }

    /// Set-asides that ended, and "no target" said of accounts that no
    /// longer need one, go.
    fn expire_notes(&mut self) {
        let w = self.w;
        for a in &w.accounts {
            let ns = ns_of(&a.metadata).to_string();
            let name = a.metadata.name.clone().unwrap_or_default();
            let aside_over = target::set_aside_until(a).is_some_and(|u| u <= w.now);
            let must_leave = target::leaving(a, &w.sessions, &w.models).is_some();
            let noted = a
                .status
                .as_ref()
                .and_then(|s| s.failover.as_ref())
                .is_some_and(|f| f.no_target.is_some());
            self.reinstate(a);
            if aside_over || (noted && !must_leave) {
                let n = self.note(&ns, &name).get_or_insert_with(Default::default);
                if aside_over {
                    n.set_aside = None;
                }
                if !must_leave {
                    n.no_target = None;
                }
            }
        }
    }
}

impl Planner<'_, '_> {
    /// Answers a reinstate request on `a`: its set-aside ends now.
    fn reinstate(&mut self, a: &Account) {
        let Some(req) = a
            .metadata
            .annotations
            .as_ref()
            .and_then(|x| x.get(REINSTATE))
        else {
            return;
        };
        let failover = a.status.as_ref().and_then(|s| s.failover.clone());
        if failover.as_ref().and_then(|f| f.reinstated.as_ref()) == Some(req) {
            return;
        }
        let ns = ns_of(&a.metadata).to_string();
        let name = a.metadata.name.clone().unwrap_or_default();
        let aside = failover.and_then(|f| f.set_aside);
        let n = self.note(&ns, &name).get_or_insert_with(Default::default);
        n.reinstated = Some(req.clone());
        n.set_aside = None;
        let message = match aside {
            Some(x) => format!(
                "taken back as a failover target (set aside until {}: {})",
                x.until.0, x.reason
            ),
            None => "reinstate requested; it was not set aside".into(),
        };
        self.event(akey(&ns, &name), false, "Reinstated", message);
    }
}

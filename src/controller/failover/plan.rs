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

// ------------------------------------------------------------ starting

impl Planner<'_, '_> {
    /// Answers a manual request if one waits, else moves the sessions off
    /// the first account that must be left and has somewhere to go.
    fn start_next(&mut self) {
        let w = self.w;
        let mut accounts = w.accounts.clone();
        accounts.sort_by_key(|a| ObjectKey::of(*a));
        for a in &accounts {
            let Some(req) = pending_request(a) else {
                continue;
            };
            let to = a
                .metadata
                .annotations
                .as_ref()
                .and_then(|x| x.get(FAILOVER_TO))
                .cloned();
            let on = sessions_on(
                &w.sessions,
                ns_of(&a.metadata),
                a.metadata.name.as_deref().unwrap_or_default(),
            );
            self.try_start(a, "Manual", to.as_deref(), Some(req), on);
            return;
        }
        for a in &accounts {
            let Some((reason, on)) = target::leaving(a, &w.sessions, &w.models) else {
                continue;
            };
            if self.try_start(a, reason, None, None, on) {
                return;
            }
        }
        if let Some(fb) = super::failback::next(
            &w.accounts,
            &w.sessions,
            &w.tasks_on,
            &w.models,
            &self.st.policy,
            w.now,
        ) {
            self.start(fb.from, FAILBACK, fb.to, fb.sessions, None);
        }
    }

    /// Starts a swap of the sessions `on` off `a`, or says why none can
    /// start. True if started.
    fn try_start(
        &mut self,
        a: &Account,
        reason: &str,
        to: Option<&str>,
        req: Option<String>,
        on: Vec<&Session>,
    ) -> bool {
        let w = self.w;
        let ns = ns_of(&a.metadata).to_string();
        let from = a.metadata.name.clone().unwrap_or_default();
        let key = akey(&ns, &from);
        let refuse = |p: &mut Self, reason_code: &'static str, why: String| {
            if let Some(r) = &req {
                p.note(&ns, &from)
                    .get_or_insert_with(Default::default)
                    .request = Some(RequestAnswer {
                    requested_at: r.clone(),
                    result: "Refused".into(),
                    swap: None,
                    message: why.clone(),
                });
                p.event(key.clone(), false, reason_code, why);
            }
        };
        if on.is_empty() {
            refuse(
                self,
                "FailoverSkipped",
                "failover requested, but no session runs on this account".into(),
            );
            return false;
        }
        let windows = target::windows_of(&on, &w.models);
        let strategy = self.st.policy.strategy;
        let target = match target::target(&w.accounts, &ns, &from, to, strategy, w.now, &windows) {
            Ok(t) => t,
            Err(why) if req.is_some() => {
                refuse(self, "NoFailoverTarget", format!("cannot fail over: {why}"));
                return false;
            }
            Err(why) => {
                self.no_target(a, reason, on.len(), why);
                return false;
            }
        };
        self.start(a, reason, target, on, req);
        true
    }

    /// Says once per episode that the sessions of `a` must leave and
    /// cannot.
    fn no_target(&mut self, a: &Account, reason: &str, sessions: usize, why: String) {
        let ns = ns_of(&a.metadata).to_string();
        let from = a.metadata.name.clone().unwrap_or_default();
        let now = self.w.now;
        let note = self.note(&ns, &from).get_or_insert_with(Default::default);
        if note.no_target.is_some() {
            return;
        }
        let waiting = if phase_of(a) == crate::api::AccountPhase::Exhausted {
            "; its sessions wait for the window to reset"
        } else {
            "; its sessions stay"
        };
        note.no_target = Some(FailoverNote {
            since: seconds(now),
            message: format!("{why}{waiting}"),
        });
        let key = akey(&ns, &from);
        self.event(
            key.clone(),
            true,
            "NoFailoverTarget",
            format!("{why}{waiting}"),
        );
        self.out.push(Action::Count {
            reason: reason.into(),
            result: "failed",
            seconds: None,
        });
        self.out.push(Action::Notify {
            kind: NoticeKind::FailoverFailed,
            object: key.to_string(),
            message: format!("cannot move {sessions} session(s) off {from}: {why}{waiting}"),
        });
    }

    fn start(
        &mut self,
        a: &Account,
        reason: &str,
        to: String,
        on: Vec<&Session>,
        req: Option<String>,
    ) {
        let w = self.w;
        let ns = ns_of(&a.metadata).to_string();
        let from = a.metadata.name.clone().unwrap_or_default();
        let epoch = next_epoch(w);
        let names: Vec<String> = on.iter().filter_map(|s| s.metadata.name.clone()).collect();
        let mut swap = Swap::new(
            &swap_name(epoch),
            SwapSpec {
                epoch,
                from: from.clone(),
                to: to.clone(),
                reason: reason.into(),
                sessions: names.clone(),
                request: req.clone(),
                recovers: None,
            },
        );
        swap.metadata.namespace = Some(ns.clone());
        // An exhausted account has no turn to finish: every session moves now.
        let no_turn = matches!(reason, "Exhausted" | "AuthenticationFailed");
        let mut state = SwapState {
            phase: SwapPhase::Running,
            started_at: Some(time(w.now)),
            ..Default::default()
        };
        let mark = self.out.len();
        for s in &on {
            let mut x = SwapSessionState {
                name: s.metadata.name.clone().unwrap_or_default(),
                step: SwapStep::WaitingForTurn,
                deadline: Some(time(w.now + self.st.turn_wait)),
                ..Default::default()
            };
            if no_turn || !busy(w, s) {
                self.place(&swap, s, &mut x);
            }
            state.sessions.push(x);
        }
        let places = self.out.split_off(mark);
        swap.status = Some(state);
        let summary = format!(
            "moving {} session(s) ({}) from {from} to {to} (swap epoch {epoch}, reason {reason})",
            names.len(),
            names.join(", ")
        );
        self.out.push(Action::Start(Box::new(swap)));
        self.out.extend(places);
        let note = self.note(&ns, &from).get_or_insert_with(Default::default);
        note.no_target = None;
        if let Some(r) = req {
            note.request = Some(RequestAnswer {
                requested_at: r,
                result: "Started".into(),
                swap: Some(swap_name(epoch)),
                message: summary.clone(),
            });
        }
        let key = akey(&ns, &from);
        let alarm = !matches!(reason, "Manual" | "Drain" | FAILBACK);
        self.event(key.clone(), alarm, "FailoverStarted", summary.clone());
        self.out.push(Action::Notify {
            kind: NoticeKind::FailoverStarted,
            object: key.to_string(),
            message: summary,
        });
    }
}

/// The epoch the next swap takes: past the lease's and every record's.
fn next_epoch(w: &World) -> u64 {
    w.swaps
        .iter()
        .map(|s| s.spec.epoch)
        .chain([w.lease.epoch])
        .max()
        .unwrap_or(0)
        + 1
}

/// A turn runs on `s`: its agent is busy, or a task is in flight on it (it
/// may have been typed a moment ago, before the agent said so).
fn busy(w: &World, s: &Session) -> bool {
    let key = (
        ns_of(&s.metadata).to_string(),
        s.metadata.name.clone().unwrap_or_default(),
    );
    s.status.as_ref().and_then(|x| x.phase) == Some(SessionPhase::Busy)
        || w.tasks_on.contains_key(&key)
}

/// The request annotation of `a`, if its answer has not been given.
fn pending_request(a: &Account) -> Option<String> {
    let req = a
        .metadata
        .annotations
        .as_ref()?
        .get(FAILOVER_REQUEST)?
        .clone();
    let answered = a
        .status
        .as_ref()
        .and_then(|s| s.failover.as_ref())
        .and_then(|f| f.request.as_ref())
        .is_some_and(|r| r.requested_at == req);
    (!answered).then_some(req)
}

// ----------------------------------------------------------- advancing

impl Planner<'_, '_> {
    /// Places session `s` on the swap's target.
    fn place(&mut self, swap: &Swap, s: &Session, x: &mut SwapSessionState) {
        let w = self.w;
        let ns = ns_of(&swap.metadata).to_string();
        let st = s.status.clone().unwrap_or_default();
        x.step = SwapStep::Placed;
        x.placed_at = Some(time(w.now));
        x.deadline = Some(time(w.now + self.st.confirm));
        x.agent_session_id = x.agent_session_id.clone().or(st.agent_session_id);
        x.task = x
            .task
            .clone()
            .or_else(|| w.tasks_on.get(&(ns.clone(), x.name.clone())).cloned());
        self.out.push(Action::Place {
            session: skey(&ns, &x.name),
            first: Some(Seen {
                task: x.task.clone(),
            }),
            placement: SwapStatus {
                epoch: swap.spec.epoch,
                from: Some(swap.spec.from.clone()),
                to: swap.spec.to.clone(),
                reason: swap.spec.reason.clone(),
                state: SWAPPING.into(),
                started_at: time(w.now),
                spec_account: s.spec.account.clone(),
            },
        });
        let message = format!(
            "moving from {} to {} (swap epoch {}, reason {})",
            swap.spec.from, swap.spec.to, swap.spec.epoch, swap.spec.reason
        );
        self.event(skey(&ns, &x.name), false, "Swapping", message);
    }

    /// Moves each session of the swap as far as the world allows; ends the
    /// swap when every session has.
    fn advance(&mut self, swap: &Swap) {
        let w = self.w;
        let ns = ns_of(&swap.metadata).to_string();
        let before = state_of(swap);
        let mut state = before.clone();
        for x in state.sessions.iter_mut().filter(|x| !x.step.finished()) {
            let s =
                w.sessions.iter().copied().find(|s| {
                    ns_of(&s.metadata) == ns && s.metadata.name.as_deref() == Some(&x.name)
                });
            let Some(s) = s else {
                x.step = SwapStep::RolledBack;
                x.message = Some(format!("{}: the session is gone", x.name));
                continue;
            };
            let expired = x.deadline.as_ref().is_some_and(|d| system(d) <= w.now);
            match x.step {
                SwapStep::WaitingForTurn if busy(self.w, s) && !expired => {}
                SwapStep::WaitingForTurn => {
                    if busy(w, s) {
                        let why = format!(
                            "the turn did not end within {}s: interrupting it",
                            self.st.turn_wait.as_secs()
                        );
                        self.event(skey(&ns, &x.name), true, "TurnWaitExpired", why);
                    }
                    self.place(swap, s, x);
                }
                SwapStep::Placed => self.follow(swap, s, x, expired),
                SwapStep::Confirmed | SwapStep::RolledBack => {}
            }
        }
        if state.sessions.iter().all(|x| x.step.finished()) {
            self.finish(swap, state);
        } else if state != before {
            self.out.push(Action::Update {
                namespace: ns,
                name: swap.metadata.name.clone().unwrap_or_default(),
                state,
            });
        }
    }

    /// A placed session: confirmed by its agent, refused by its node, or
    /// out of time.
    fn follow(&mut self, swap: &Swap, s: &Session, x: &mut SwapSessionState, expired: bool) {
        let st = s.status.clone().unwrap_or_default();
        let epoch = swap.spec.epoch;
        let to = &swap.spec.to;
        if let Some(r) = st
            .refused_placement
            .as_ref()
            .filter(|r| r.epoch == epoch && r.account == *to)
        {
            let why = format!("{}: {}", x.name, r.message);
            self.roll_back(swap, s, x, why);
            return;
        }
        // Launched for this placement (its epoch), or on the target since
        // the session was placed there: a daemon that took over may have
        // relaunched it from the placement of the interrupted epoch before
        // the recovery re-stamped it, and the resume is just as good.
        let placed_at = x.placed_at.as_ref().map(system);
        let launch = st.launch.as_ref().filter(|l| {
            let ours =
                l.epoch == Some(epoch) || placed_at.is_some_and(|p| SystemTime::from(l.at.0) >= p);
            ours && l.account.as_deref() == Some(to) && l.confirmed_at.is_some()
        });
        if let Some(l) = launch {
            x.step = SwapStep::Confirmed;
            x.deadline = None;
            let how = if l.resumed {
                format!(
                    "resumed conversation {}",
                    st.agent_session_id.as_deref().unwrap_or("?")
                )
            } else {
                "started (nothing to resume yet)".into()
            };
            let mut p = st
                .last_swap
                .clone()
                .unwrap_or_else(|| placement_of(swap, s, self.w.now));
            p.state = SWAP_DONE.into();
            p.epoch = epoch;
            let ns = ns_of(&swap.metadata).to_string();
            self.out.push(Action::Place {
                session: skey(&ns, &x.name),
                placement: p,
                first: None,
            });
            let msg = match swap.spec.recovers {
                Some(old) => {
                    format!("now on {to}: {how} (swap of epoch {old} finished under epoch {epoch})")
                }
                None => format!("now on {to}: {how} (swap epoch {epoch})"),
            };
            self.event(skey(&ns, &x.name), false, "Swapped", msg);
        } else if expired {
            let why = format!(
                "{}: the agent did not confirm its resume on {to} within {}s",
                x.name,
                self.st.confirm.as_secs()
            );
            self.roll_back(swap, s, x, why);
        }
    }

    fn roll_back(&mut self, swap: &Swap, s: &Session, x: &mut SwapSessionState, why: String) {
        let ns = ns_of(&swap.metadata).to_string();
        x.step = SwapStep::RolledBack;
        x.deadline = None;
        x.message = Some(why.clone());
        let mut p = placement_of(swap, s, self.w.now);
        p.to = swap.spec.from.clone();
        p.state = SWAP_ROLLED_BACK.into();
        self.out.push(Action::Place {
            session: skey(&ns, &x.name),
            placement: p,
            first: None,
        });
        self.event(skey(&ns, &x.name), true, "SwapRolledBack", why);
    }

    /// The swap's end: its record, the lease released, the target set
    /// aside if it failed anyone, events, notices and counts.
    fn finish(&mut self, swap: &Swap, mut state: SwapState) {
        let w = self.w;
        let ns = ns_of(&swap.metadata).to_string();
        let (from, to, reason) = (&swap.spec.from, &swap.spec.to, &swap.spec.reason);
        let total = state.sessions.len();
        let failed: Vec<String> = state
            .sessions
            .iter()
            .filter(|x| x.step == SwapStep::RolledBack)
            .filter_map(|x| x.message.clone())
            .collect();
        let began = state.started_at.as_ref().map(system).unwrap_or(w.now);
        let secs = w
            .now
            .duration_since(began)
            .unwrap_or_default()
            .as_secs_f64();
        let from_key = akey(&ns, from);
        let names = swap.spec.sessions.join(", ");
        let result = if failed.is_empty() {
            state.phase = SwapPhase::Succeeded;
            state.message = format!("{total} session(s) resumed on {to} in {secs:.1}s");
            self.event(
                from_key.clone(),
                false,
                "FailoverDone",
                state.message.clone(),
            );
            self.out.push(Action::Notify {
                kind: NoticeKind::FailoverDone,
                object: from_key.to_string(),
                message: format!("{names} from {from} to {to}: {}", state.message),
            });
            "succeeded"
        } else {
            state.phase = if failed.len() == total {
                SwapPhase::Failed
            } else {
                SwapPhase::RolledBack
            };
            state.message = failed.join("; ");
            self.event(
                from_key.clone(),
                true,
                "FailoverFailed",
                state.message.clone(),
            );
            let aside = format!(
                "a swap to this account failed ({}); not a target for {}s",
                state.message,
                TARGET_PENALTY.as_secs()
            );
            self.event(akey(&ns, to), true, "SwapTargetFailed", aside);
            self.note(&ns, to)
                .get_or_insert_with(Default::default)
                .set_aside = Some(SetAside {
                until: seconds(w.now + TARGET_PENALTY),
                reason: format!(
                    "swap epoch {} to it failed: {}",
                    swap.spec.epoch, state.message
                ),
            });
            self.out.push(Action::Notify {
                kind: NoticeKind::FailoverFailed,
                object: from_key.to_string(),
                message: format!("from {from} to {to}: {}", state.message),
            });
            "rolled_back"
        };
        state.finished_at = Some(time(w.now));
        self.out.push(Action::Update {
            namespace: ns,
            name: swap.metadata.name.clone().unwrap_or_default(),
            state,
        });
        self.out.push(Action::Release);
        self.out.push(Action::Count {
            reason: reason.clone(),
            result,
            seconds: Some(secs),
        });
    }
}

/// A placement on the swap's target, as `place` writes it.
fn placement_of(swap: &Swap, s: &Session, now: SystemTime) -> SwapStatus {
    s.status
        .as_ref()
        .and_then(|x| x.last_swap.clone())
        .unwrap_or(SwapStatus {
            epoch: swap.spec.epoch,
            from: Some(swap.spec.from.clone()),
            to: swap.spec.to.clone(),
            reason: swap.spec.reason.clone(),
            state: SWAPPING.into(),
            started_at: time(now),
            spec_account: s.spec.account.clone(),
        })
}

// ------------------------------------------------------------ recovery

impl Planner<'_, '_> {
    /// An older swap found running beside the current one: its daemon died.
    fn interrupt(&mut self, old: &Swap, epoch: u64) {
        let mut st = state_of(old);
        st.phase = SwapPhase::Interrupted;
        st.message = format!("its daemon died during the swap; epoch {epoch} took over");
        self.out.push(Action::Update {
            namespace: ns_of(&old.metadata).to_string(),
            name: old.metadata.name.clone().unwrap_or_default(),
            state: st,
        });
    }

    /// The lease is held by a daemon that no longer leads, or a swap was
    /// left running: finish what it left under a new epoch.
    fn recover(&mut self, running: &[&Swap]) {
        let w = self.w;
        let holder = w.lease.holder.clone().unwrap_or_else(|| "?".into());
        let Some(old) = running.last().copied() else {
            // Its swap's end was written, not its release.
            self.out.push(Action::Release);
            return;
        };
        let old_state = state_of(old);
        let left: Vec<&SwapSessionState> = old_state
            .sessions
            .iter()
            .filter(|x| !x.step.finished())
            .collect();
        if left.is_empty() {
            // Every session finished; only the record's end was lost.
            self.finish(old, old_state.clone());
            return;
        }
        let ns = ns_of(&old.metadata).to_string();
        let epoch = next_epoch(w);
        let mut swap = Swap::new(
            &swap_name(epoch),
            SwapSpec {
                epoch,
                reason: "Recovery".into(),
                sessions: left.iter().map(|x| x.name.clone()).collect(),
                recovers: Some(old.spec.epoch),
                request: None,
                ..old.spec.clone()
            },
        );
        swap.metadata.namespace = Some(ns.clone());
        let mut state = SwapState {
            phase: SwapPhase::Running,
            started_at: Some(time(w.now)),
            ..Default::default()
        };
        let mut places = Vec::new();
        for x in left {
            let mut y = x.clone();
            let s =
                w.sessions.iter().copied().find(|s| {
                    ns_of(&s.metadata) == ns && s.metadata.name.as_deref() == Some(&x.name)
                });
            let placed_then = s.is_some_and(|s| {
                s.status
                    .as_ref()
                    .and_then(|st| st.last_swap.as_ref())
                    .is_some_and(|p| p.swapping() && p.epoch == old.spec.epoch)
            });
            if let Some(s) = s
                && (x.step == SwapStep::Placed || placed_then)
            {
                y.step = SwapStep::Placed;
                // Re-stamped with the new epoch: its node acts on it again.
                let mut p = placement_of(&swap, s, w.now);
                p.epoch = epoch;
                p.to = old.spec.to.clone();
                p.state = SWAPPING.into();
                y.deadline = Some(time(w.now + self.st.confirm));
                places.push(Action::Place {
                    session: skey(&ns, &x.name),
                    placement: p,
                    first: None,
                });
            } else {
                y.step = SwapStep::WaitingForTurn;
                y.deadline = Some(time(w.now + self.st.turn_wait));
            }
            state.sessions.push(y);
        }
        swap.status = Some(state);
        self.out.push(Action::Start(Box::new(swap)));
        for o in running {
            self.interrupt_by(o, &holder, epoch);
        }
        let message = format!(
            "the swap of epoch {} was interrupted (its daemon {holder} died); epoch {epoch} finishes it",
            old.spec.epoch
        );
        self.event(akey(&ns, &old.spec.from), true, "SwapInterrupted", message);
        self.out.extend(places);
    }

    fn interrupt_by(&mut self, old: &Swap, holder: &str, epoch: u64) {
        let mut st = state_of(old);
        st.phase = SwapPhase::Interrupted;
        st.message = format!("its daemon ({holder}) died during the swap; epoch {epoch} took over");
        self.out.push(Action::Update {
            namespace: ns_of(&old.metadata).to_string(),
            name: old.metadata.name.clone().unwrap_or_default(),
            state: st,
        });
    }
}

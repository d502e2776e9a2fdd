//! The failover plan, fed synthetic worlds: starting swaps, each step of a
//! swap, requests, and a leader dying at every step.

use super::plan::*;
use crate::api::keys::FAILOVER_REQUEST;
use crate::api::{
    Account, AccountPhase, AccountSpec, AccountStatus, LaunchStatus, Session, SessionPhase,
    SessionSpec, SessionStatus, Swap, SwapPhase, SwapStep,
};
use std::time::{Duration, SystemTime};

mod models;
mod policy;

const ME: &str = "me";

pub(super) fn at(s: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(s)
}

pub(super) fn account(name: &str, phase: AccountPhase, used: f64) -> Account {
    let mut a = Account::new(name, AccountSpec::in_dir(format!("/a/{name}")));
    a.metadata.namespace = Some("default".into());
    a.status = Some(AccountStatus {
        phase: Some(phase),
        usage: Some(crate::api::AccountUsage {
            five_hour: Some(crate::api::UsageWindow {
                utilization: used,
                resets_at: None,
                source: "statusLine".into(),
                observed_at: crate::api::now(),
            }),
            seven_day: None,
            seven_day_opus: None,
            seven_day_sonnet: None,
        }),
        ..Default::default()
    });
    a
}

pub(super) fn session(name: &str, on: &str, phase: SessionPhase) -> Session {
    let mut s = Session::new(
        name,
        SessionSpec {
            workdir: "/w".into(),
            account: None,
            agent: Default::default(),
            suspend: false,
            workspace: None,
            standby: None,
            node_name: None,
        },
    );
    s.metadata.namespace = Some("default".into());
    s.status = Some(SessionStatus {
        phase: Some(phase),
        account: Some(on.into()),
        pid: Some(7),
        agent_session_id: Some(format!("conv-{name}")),
        ..Default::default()
    });
    s
}

pub(super) struct Scene {
    now: SystemTime,
    lease: LeaseView,
    accounts: Vec<Account>,
    sessions: Vec<Session>,
    swaps: Vec<Swap>,
    settings: FailoverSettings,
    tasks_on: std::collections::HashMap<(String, String), String>,
    models: super::target::Models,
}

impl Scene {
    pub(super) fn new(now: u64) -> Scene {
        Scene {
            now: at(now),
            lease: LeaseView::default(),
            accounts: vec![
                account("a", AccountPhase::NearLimit, 92.0),
                account("b", AccountPhase::Available, 10.0),
            ],
            sessions: vec![session("s1", "a", SessionPhase::Idle)],
            swaps: vec![],
            settings: FailoverSettings::default(),
            tasks_on: Default::default(),
            models: Default::default(),
        }
    }

    pub(super) fn plan_as(&self, me: &str) -> Vec<Action> {
        let w = World {
            me,
            now: self.now,
            lease: self.lease.clone(),
            accounts: self.accounts.iter().collect(),
            sessions: self.sessions.iter().collect(),
            swaps: self.swaps.iter().collect(),
            tasks_on: self.tasks_on.clone(),
            models: self.models.clone(),
        };
        plan(&w, &self.settings)
    }

    pub(super) fn plan(&self) -> Vec<Action> {
        self.plan_as(ME)
    }

    /// Applies what the executor would write (the store as the caches
    /// would show it next), for the writes this plan makes.
    pub(super) fn apply(&mut self, actions: &[Action]) {
        for a in actions {
            match a {
                Action::Start(swap) => {
                    self.lease = LeaseView {
                        holder: Some(ME.into()),
                        epoch: swap.spec.epoch,
                    };
                    self.swaps.push((**swap).clone());
                }
                Action::Update { name, state, .. } => {
                    let s = self
                        .swaps
                        .iter_mut()
                        .find(|s| s.metadata.name.as_deref() == Some(name))
                        .unwrap();
                    s.status = Some(state.clone());
                }
                Action::Release => self.lease.holder = None,
                Action::Place {
                    session, placement, ..
                } => {
                    let s = self
                        .sessions
                        .iter_mut()
                        .find(|s| s.metadata.name.as_deref() == Some(&session.name))
                        .unwrap();
                    s.status.as_mut().unwrap().last_swap = Some(placement.clone());
                }
                Action::Note { account, failover } => {
                    let a = self
                        .accounts
                        .iter_mut()
                        .find(|a| a.metadata.name.as_deref() == Some(&account.name))
                        .unwrap();
                    a.status.as_mut().unwrap().failover = failover.clone();
                }
                _ => {}
            }
        }
    }

    /// Applies what daemon `who` would write: whatever it starts, it holds.
    pub(super) fn apply_as(&mut self, who: &str, actions: Vec<Action>) {
        let (started, rest): (Vec<Action>, Vec<Action>) = actions
            .into_iter()
            .partition(|x| matches!(x, Action::Start(_)));
        for x in started {
            if let Action::Start(s) = x {
                self.lease = LeaseView {
                    holder: Some(who.into()),
                    epoch: s.spec.epoch,
                };
                self.swaps.push(*s);
            }
        }
        self.apply(&rest);
    }

    pub(super) fn step_of(&self, session: &str) -> SwapStep {
        let sw = self.swaps.last().unwrap();
        state_of(sw)
            .sessions
            .iter()
            .find(|x| x.name == session)
            .unwrap()
            .step
    }

    /// The session's agent relaunched on `to` under `epoch`, confirmed.
    pub(super) fn relaunched(&mut self, name: &str, to: &str, epoch: u64, confirmed: bool) {
        let s = self
            .sessions
            .iter_mut()
            .find(|s| s.metadata.name.as_deref() == Some(name))
            .unwrap();
        let st = s.status.as_mut().unwrap();
        st.account = Some(to.into());
        st.launch = Some(LaunchStatus {
            account: Some(to.into()),
            at: crate::api::micro(at(0)),
            resumed: true,
            epoch: Some(epoch),
            confirmed_at: confirmed.then(|| crate::api::micro(at(0))),
            takeover: false,
        });
    }
}

pub(super) fn starts(actions: &[Action]) -> Vec<&Swap> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Start(s) => Some(s.as_ref()),
            _ => None,
        })
        .collect()
}

pub(super) fn events(actions: &[Action]) -> Vec<&'static str> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Event { reason, .. } => Some(*reason),
            _ => None,
        })
        .collect()
}

#[test]
fn a_near_limit_account_starts_a_swap_to_the_best_target() {
    let mut w = Scene::new(1000);
    w.accounts.push(account("c", AccountPhase::Available, 50.0));
    let actions = w.plan();
    let s = starts(&actions);
    assert_eq!(s.len(), 1, "{actions:#?}");
    assert_eq!(
        (
            s[0].spec.epoch,
            s[0].spec.from.as_str(),
            s[0].spec.to.as_str()
        ),
        (1, "a", "b"),
        "most headroom"
    );
    // An idle session is placed at once, at its turn boundary: written only
    // if no task reached it meanwhile.
    assert!(actions.iter().any(|a| matches!(a, Action::Place { placement, first: Some(Seen { task: None }), .. } if placement.swapping() && placement.epoch == 1)));
    assert!(events(&actions).contains(&"FailoverStarted"));
    // Nothing to do for an Available account.
    let mut calm = Scene::new(1000);
    calm.accounts[0] = account("a", AccountPhase::Available, 10.0);
    assert!(calm.plan().is_empty(), "{:#?}", calm.plan());
}

#[test]
fn no_target_is_said_once_and_takes_no_epoch() {
    let mut w = Scene::new(1000);
    w.accounts[1] = account("b", AccountPhase::Exhausted, 100.0);
    let first = w.plan();
    assert!(starts(&first).is_empty());
    assert_eq!(events(&first), ["NoFailoverTarget"]);
    w.apply(&first);
    assert!(w.plan().is_empty(), "said once: {:#?}", w.plan());
    // A target appears: the swap starts, epoch 1, and the note goes.
    w.accounts[1] = account("b", AccountPhase::Available, 10.0);
    let next = w.plan();
    assert_eq!(starts(&next)[0].spec.epoch, 1);
    w.apply(&next);
    let note = w.accounts[0].status.as_ref().unwrap().failover.clone();
    assert!(
        note.as_ref().is_none_or(|n| n.no_target.is_none()),
        "{note:?}"
    );
}

#[test]
fn a_swap_walks_its_steps_without_waiting() {
    let mut w = Scene::new(1000);
    w.sessions = vec![
        session("idle", "a", SessionPhase::Idle),
        session("busy", "a", SessionPhase::Busy),
    ];
    let a = w.plan();
    w.apply(&a);
    assert_eq!(w.step_of("idle"), SwapStep::Placed);
    assert_eq!(w.step_of("busy"), SwapStep::WaitingForTurn);
    // Nothing changed: nothing to write (the pass waits for an event or a deadline).
    assert!(w.plan().is_empty(), "{:#?}", w.plan());
    // The busy one's turn ends: placed.
    w.sessions[1].status.as_mut().unwrap().phase = Some(SessionPhase::Idle);
    let b = w.plan();
    w.apply(&b);
    assert_eq!(w.step_of("busy"), SwapStep::Placed);
    // One confirms on b; the other is not heard from until its deadline.
    w.relaunched("idle", "b", 1, true);
    let c = w.plan();
    w.apply(&c);
    assert_eq!(w.step_of("idle"), SwapStep::Confirmed);
    assert!(events(&c).contains(&"Swapped"));
    w.now = at(1000 + 61);
    let d = w.plan();
    w.apply(&d);
    let sw = w.swaps.last().unwrap().status.clone().unwrap();
    assert_eq!(sw.phase, SwapPhase::RolledBack, "{sw:#?}");
    assert!(w.lease.holder.is_none(), "released");
    assert!(events(&d).contains(&"SwapRolledBack"));
    // The rolled-back session goes home; the target is set aside.
    let back = w.sessions[1]
        .status
        .as_ref()
        .unwrap()
        .last_swap
        .clone()
        .unwrap();
    assert_eq!((back.to.as_str(), back.state.as_str()), ("a", "RolledBack"));
    let b_note = w.accounts[1]
        .status
        .as_ref()
        .unwrap()
        .failover
        .clone()
        .unwrap();
    assert!(b_note.set_aside.is_some());
}

#[test]
fn a_turn_that_does_not_end_is_cut_at_its_deadline() {
    let mut w = Scene::new(1000);
    w.sessions = vec![session("busy", "a", SessionPhase::Busy)];
    let a = w.plan();
    w.apply(&a);
    assert_eq!(w.step_of("busy"), SwapStep::WaitingForTurn);
    let deadline = next_deadline(&World {
        me: ME,
        now: w.now,
        lease: w.lease.clone(),
        accounts: w.accounts.iter().collect(),
        sessions: w.sessions.iter().collect(),
        swaps: w.swaps.iter().collect(),
        tasks_on: Default::default(),
        models: Default::default(),
    });
    assert_eq!(deadline, Some(at(1120)), "turn wait 120 s");
    w.now = at(1121);
    let b = w.plan();
    assert!(events(&b).contains(&"TurnWaitExpired"));
    w.apply(&b);
    assert_eq!(w.step_of("busy"), SwapStep::Placed);
}

#[test]
fn a_refused_placement_rolls_back_at_once() {
    let mut w = Scene::new(1000);
    let a = w.plan();
    w.apply(&a);
    w.sessions[0].status.as_mut().unwrap().refused_placement = Some(crate::api::RefusedPlacement {
        epoch: 1,
        account: "b".into(),
        message: "no credentials".into(),
    });
    let b = w.plan();
    w.apply(&b);
    let sw = w.swaps.last().unwrap().status.clone().unwrap();
    assert_eq!(sw.phase, SwapPhase::Failed);
    assert!(sw.message.contains("no credentials"), "{}", sw.message);
}

#[test]
fn manual_requests_are_answered_at_once() {
    let mut w = Scene::new(1000);
    w.accounts[0] = account("a", AccountPhase::Available, 10.0);
    w.accounts[0]
        .metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(FAILOVER_REQUEST.into(), "r1".into());
    let a = w.plan();
    assert_eq!(starts(&a)[0].spec.reason, "Manual");
    w.apply(&a);
    let ans = w.accounts[0]
        .status
        .as_ref()
        .unwrap()
        .failover
        .clone()
        .unwrap()
        .request
        .unwrap();
    assert_eq!(
        (ans.requested_at.as_str(), ans.result.as_str()),
        ("r1", "Started")
    );
    // No session on the account: refused, with why, once.
    let mut w = Scene::new(1000);
    w.sessions.clear();
    w.accounts[1]
        .metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(FAILOVER_REQUEST.into(), "r2".into());
    let a = w.plan();
    assert!(starts(&a).is_empty());
    assert_eq!(events(&a), ["FailoverSkipped"]);
    w.apply(&a);
    let ans = w.accounts[1]
        .status
        .as_ref()
        .unwrap()
        .failover
        .clone()
        .unwrap()
        .request
        .unwrap();
    assert_eq!(ans.result, "Refused");
    assert!(w.plan().is_empty());
}

/// The swap of `Scene::new`, advanced by `steps` passes of the leader
/// `ME` with the agents behaving: the world the next leader finds.
fn after(steps: usize) -> Scene {
    let mut w = Scene::new(1000);
    w.sessions = vec![
        session("s1", "a", SessionPhase::Idle),
        session("s2", "a", SessionPhase::Busy),
    ];
    for i in 0..steps {
        let a = w.plan();
        w.apply(&a);
        match i {
            0 => w.sessions[1].status.as_mut().unwrap().phase = Some(SessionPhase::Idle),
            1 => w.relaunched("s1", "b", 1, true),
            2 => w.relaunched("s2", "b", 1, true),
            _ => {}
        }
    }
    w
}

#[test]
fn a_leader_dying_at_any_step_is_taken_over_under_a_new_epoch() {
    for steps in 0..=5 {
        let mut w = after(steps);
        let finished = w.swaps.last().is_some_and(|s| state_of(s).phase.finished());
        // The turns end meanwhile; the new leader has another identity.
        for s in &mut w.sessions {
            s.status.as_mut().unwrap().phase = Some(SessionPhase::Idle);
        }
        let mut passes = 0;
        loop {
            let a = w.plan_as("next");
            if a.is_empty() {
                break;
            }
            w.apply_as("next", a);
            // Agents answer the re-stamped placements.
            for name in ["s1", "s2"] {
                let p = w
                    .sessions
                    .iter()
                    .find(|s| s.metadata.name.as_deref() == Some(name))
                    .and_then(|s| s.status.as_ref()?.last_swap.clone());
                if let Some(p) = p.filter(|p| p.swapping()) {
                    w.relaunched(name, &p.to, p.epoch, true);
                }
            }
            passes += 1;
            assert!(passes < 20, "after {steps} steps: no end");
        }
        // Every swap ended; the lease is free; epochs grew; every session on b.
        assert!(
            w.lease.holder.is_none(),
            "after {steps} steps: {:?}",
            w.lease
        );
        for s in &w.swaps {
            assert!(state_of(s).phase.finished(), "after {steps} steps: {s:#?}");
        }
        let epochs: Vec<u64> = w.swaps.iter().map(|s| s.spec.epoch).collect();
        assert!(epochs.windows(2).all(|e| e[0] < e[1]), "{epochs:?}");
        assert_eq!(
            w.lease.epoch,
            *epochs.last().unwrap(),
            "after {steps} steps"
        );
        if steps > 0 && !finished {
            assert!(
                w.swaps
                    .iter()
                    .any(|s| state_of(s).phase == SwapPhase::Interrupted),
                "after {steps} steps"
            );
        }
        for s in &w.sessions {
            let p = s.status.as_ref().unwrap().last_swap.clone().unwrap();
            assert_eq!(
                (p.to.as_str(), p.state.as_str()),
                ("b", "Done"),
                "after {steps} steps"
            );
        }
    }
}

#[test]
fn a_relaunch_from_the_interrupted_epoch_confirms_the_recovery() {
    // The leader placed s1 (epoch 1) and died; the next leader's session
    // controller relaunched s1 on b from that placement before the
    // recovery (epoch 2) re-stamped it.
    let mut w = Scene::new(1000);
    let a = w.plan();
    w.apply(&a);
    w.now = at(1010);
    let recovery = w.plan_as("next");
    assert!(
        starts(&recovery)
            .iter()
            .any(|s| s.spec.reason == "Recovery")
    );
    w.apply_as("next", recovery);
    // Launched on b under the old epoch, after the placement, and resumed.
    w.relaunched("s1", "b", 1, true);
    w.sessions[0]
        .status
        .as_mut()
        .unwrap()
        .launch
        .as_mut()
        .unwrap()
        .at = crate::api::micro(at(1005));
    let next = w.plan_as("next");
    assert!(events(&next).contains(&"Swapped"), "{next:#?}");
    // A launch on b from before the placement is no confirmation.
    let mut old = w;
    old.sessions[0]
        .status
        .as_mut()
        .unwrap()
        .launch
        .as_mut()
        .unwrap()
        .at = crate::api::micro(at(900));
    assert!(!events(&old.plan_as("next")).contains(&"Swapped"));
}

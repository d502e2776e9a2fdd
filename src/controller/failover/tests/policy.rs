//! The policy in the plan: failback (when, where, and when not), a
//! set-aside target named by hand, reinstating one, consume-first.

use super::*;
use crate::api::keys::{FAILOVER_TO, REINSTATE};
use crate::api::{AccountFailover, SetAside, SwapStatus};
use crate::config::FailoverStrategy;

const HOUR: u64 = 3600;

/// `s1` failed over from `a` to `b` at t=0 (its swap finished); `a` has
/// since come back with room (10 %). Now: two hours on.
fn moved_away() -> Scene {
    let mut w = Scene::new(2 * HOUR);
    w.accounts = vec![
        account("a", AccountPhase::Available, 10.0),
        account("b", AccountPhase::Available, 40.0),
    ];
    w.accounts[1].spec.priority = 10;
    let mut s = session("s1", "b", SessionPhase::Idle);
    s.spec.account = Some("a".into());
    s.status.as_mut().unwrap().last_swap = Some(SwapStatus {
        epoch: 1,
        from: Some("a".into()),
        to: "b".into(),
        reason: "NearLimit".into(),
        state: crate::api::SWAP_DONE.into(),
        started_at: crate::api::micro(at(0)),
        spec_account: Some("a".into()),
    });
    w.sessions = vec![s];
    w.lease.epoch = 1;
    w
}

fn failback_of(actions: &[Action]) -> Option<(String, String, Vec<String>)> {
    starts(actions)
        .into_iter()
        .find(|s| s.spec.reason == FAILBACK)
        .map(|s| {
            (
                s.spec.from.clone(),
                s.spec.to.clone(),
                s.spec.sessions.clone(),
            )
        })
}

#[test]
fn a_session_goes_back_to_its_preferred_account_once_it_has_room() {
    let w = moved_away();
    let actions = w.plan();
    assert_eq!(
        failback_of(&actions),
        Some(("b".into(), "a".into(), vec!["s1".into()]))
    );
    // Idle: placed on its account at once, in the same pass.
    assert!(actions.iter().any(|a| matches!(a,
        Action::Place { session, placement, .. } if session.name == "s1" && placement.to == "a" && placement.reason == FAILBACK)));
    assert!(events(&actions).contains(&"FailoverStarted"));
    // Counted under its own bounded label.
    assert_eq!(reason_label(FAILBACK), "failback");
}

#[test]
fn failback_waits_for_room_a_turn_boundary_and_the_cooldown() {
    type Case = (&'static str, fn(&mut Scene));
    let cases: [Case; 9] = [
        ("above threshold minus margin (75 > 90 - 20)", |w| {
            w.accounts[0] = account("a", AccountPhase::Available, 75.0);
        }),
        ("preferred account near its limit", |w| {
            w.accounts[0] = account("a", AccountPhase::NearLimit, 10.0);
        }),
        ("within the cooldown since its last move", |w| {
            w.now = at(10 * 60);
        }),
        ("its turn is running", |w| {
            w.sessions[0].status.as_mut().unwrap().phase = Some(SessionPhase::Busy);
        }),
        ("a task is in flight on it", |w| {
            w.tasks_on
                .insert(("default".into(), "s1".into()), "t1".into());
        }),
        ("the preferred account turns failback off", |w| {
            w.accounts[0].spec.policy = Some(crate::api::AccountPolicy {
                drain: None,
                failback: Some(false),
            });
        }),
        ("the config turns failback off", |w| {
            w.settings.policy.failback.enabled = false;
        }),
        ("the preferred account is set aside", |w| {
            w.accounts[0].status.as_mut().unwrap().failover = Some(AccountFailover {
                set_aside: Some(SetAside {
                    until: crate::api::Time(crate::quota::jiff_of(at(3 * HOUR))),
                    reason: "a swap to it failed".into(),
                }),
                ..Default::default()
            });
        }),
        ("it was placed here by hand, not moved by a swap", |w| {
            w.sessions[0].status.as_mut().unwrap().last_swap = None;
        }),
    ];
    for (what, change) in cases {
        let mut w = moved_away();
        change(&mut w);
        assert_eq!(failback_of(&w.plan()), None, "{what}");
    }
}

#[test]
fn an_unpinned_session_prefers_the_lowest_priority_value() {
    let mut w = moved_away();
    w.sessions[0].spec.account = None;
    w.sessions[0]
        .status
        .as_mut()
        .unwrap()
        .last_swap
        .as_mut()
        .unwrap()
        .spec_account = None;
    assert_eq!(
        failback_of(&w.plan()),
        Some(("b".into(), "a".into(), vec!["s1".into()]))
    );
    // Already on it: nothing to do.
    w.accounts[1].spec.priority = -1;
    assert_eq!(failback_of(&w.plan()), None);
}

#[test]
fn an_account_that_must_be_left_goes_before_any_failback() {
    let mut w = moved_away();
    w.accounts.push(account("c", AccountPhase::NearLimit, 95.0));
    w.sessions.push(session("s2", "c", SessionPhase::Idle));
    let actions = w.plan();
    let started = starts(&actions);
    assert_eq!(started.len(), 1);
    assert_eq!(started[0].spec.from, "c");
    assert_eq!(started[0].spec.reason, "NearLimit");
}

fn set_aside(w: &mut Scene, name: &str, until: u64) {
    let a = w
        .accounts
        .iter_mut()
        .find(|a| a.metadata.name.as_deref() == Some(name))
        .unwrap();
    a.status.as_mut().unwrap().failover = Some(AccountFailover {
        set_aside: Some(SetAside {
            until: crate::api::Time(crate::quota::jiff_of(at(until))),
            reason: "a swap to it failed".into(),
        }),
        ..Default::default()
    });
}

#[test]
fn a_set_aside_target_named_by_hand_is_refused_with_the_way_out() {
    let mut w = Scene::new(1000);
    w.accounts[0] = account("a", AccountPhase::Available, 10.0);
    set_aside(&mut w, "b", 1500);
    w.accounts[0].metadata.annotations = Some(
        [
            (FAILOVER_REQUEST.to_string(), "r1".to_string()),
            (FAILOVER_TO.to_string(), "b".to_string()),
        ]
        .into(),
    );
    let actions = w.plan();
    assert!(starts(&actions).is_empty());
    let answer = actions
        .iter()
        .find_map(|a| match a {
            Action::Note { account, failover } if account.name == "a" => {
                failover.as_ref()?.request.clone()
            }
            _ => None,
        })
        .expect("the request is answered");
    assert_eq!(answer.result, "Refused");
    assert!(
        answer.message.contains("set aside") && answer.message.contains("reinstate b"),
        "{}",
        answer.message
    );
}

#[test]
fn reinstating_ends_a_set_aside_once() {
    let mut w = Scene::new(1000);
    set_aside(&mut w, "b", 1500);
    w.accounts[1].metadata.annotations = Some([(REINSTATE.to_string(), "r1".to_string())].into());
    let actions = w.plan();
    assert!(events(&actions).contains(&"Reinstated"));
    // Now a target again: the NearLimit account's session goes to it.
    w.apply(&actions);
    let note = w.accounts[1]
        .status
        .as_ref()
        .unwrap()
        .failover
        .clone()
        .unwrap();
    assert_eq!(note.set_aside, None);
    assert_eq!(note.reinstated.as_deref(), Some("r1"));
    assert_eq!(
        starts(&actions).len(),
        0,
        "the set-aside was read from the caches"
    );
    let again = w.plan();
    assert!(!events(&again).contains(&"Reinstated"), "answered once");
    assert_eq!(starts(&again)[0].spec.to, "b");
}

#[test]
fn consume_first_moves_to_the_account_whose_window_resets_soonest() {
    let mut w = Scene::new(1000);
    w.settings.policy.strategy = FailoverStrategy::ConsumeFirst;
    let resets = |a: &mut Account, s: u64| {
        let u = a.status.as_mut().unwrap().usage.as_mut().unwrap();
        u.five_hour.as_mut().unwrap().resets_at =
            Some(crate::api::Time(crate::quota::jiff_of(at(s))));
    };
    // b: most headroom, resets late; c: less headroom, resets soon.
    resets(&mut w.accounts[1], 1000 + 4 * HOUR);
    let mut c = account("c", AccountPhase::Available, 60.0);
    resets(&mut c, 1000 + HOUR);
    w.accounts.push(c);
    assert_eq!(starts(&w.plan())[0].spec.to, "c");
    w.settings.policy.strategy = FailoverStrategy::Headroom;
    assert_eq!(starts(&w.plan())[0].spec.to, "b");
}

#[test]
fn a_session_with_a_task_just_typed_waits_for_its_turn() {
    // Idle as far as its agent said, but a task was typed a moment ago.
    let mut w = Scene::new(1000);
    w.tasks_on
        .insert(("default".into(), "s1".into()), "t1".into());
    let actions = w.plan();
    assert_eq!(starts(&actions).len(), 1);
    assert!(
        !actions.iter().any(|a| matches!(a, Action::Place { .. })),
        "placed while its turn runs"
    );
    w.apply(&actions);
    assert_eq!(w.step_of("s1"), crate::api::SwapStep::WaitingForTurn);
    // Its task done: placed at the next pass.
    w.tasks_on.clear();
    let next = w.plan();
    assert!(next.iter().any(|a| matches!(a, Action::Place { .. })));
}

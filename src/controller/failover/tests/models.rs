//! Per-model weekly windows in the plan: which sessions leave an account at
//! one model's limit, where they go, and when they come back.

use super::*;
use crate::api::{SwapStatus, UsageWindow};

const HOUR: u64 = 3600;

fn model_window(a: &mut Account, label: &str, used: f64) {
    let u = a.status.as_mut().unwrap().usage.as_mut().unwrap();
    let w = Some(UsageWindow {
        utilization: used,
        resets_at: None,
        source: "poll".into(),
        observed_at: crate::api::now(),
    });
    match label {
        "opus" => u.seven_day_opus = w,
        _ => u.seven_day_sonnet = w,
    }
}

fn running(w: &mut Scene, name: &str, model: Option<&str>) {
    let mut s = session(name, "a", SessionPhase::Idle);
    s.spec.agent.model = model.map(str::to_string);
    w.sessions.push(s);
}

/// `a` Available at 40 %, its Opus window at `opus` %; `b` and `c`
/// Available, `c` with more headroom; sessions `o` (opus), `s` (sonnet),
/// `h` (haiku), `u` (no model set) on `a`.
fn scene(opus: f64) -> Scene {
    let mut w = Scene::new(1000);
    w.accounts = vec![
        account("a", AccountPhase::Available, 40.0),
        account("b", AccountPhase::Available, 30.0),
        account("c", AccountPhase::Available, 10.0),
    ];
    model_window(&mut w.accounts[0], "opus", opus);
    w.sessions.clear();
    running(&mut w, "o", Some("opus"));
    running(&mut w, "s", Some("sonnet"));
    running(&mut w, "h", Some("haiku"));
    running(&mut w, "u", None);
    w
}

#[test]
fn at_an_opus_limit_only_the_sessions_that_may_run_opus_move() {
    // (opus %, opus threshold, sessions moved)
    let table: [(f64, Option<u8>, &[&str]); 4] = [
        (50.0, None, &[]),
        (94.9, None, &[]),
        (95.0, None, &["o", "u"]),
        (60.0, Some(60), &["o", "u"]),
    ];
    for (opus, threshold, moved) in table {
        let mut w = scene(opus);
        w.accounts[0].spec.thresholds.seven_day_opus = threshold;
        let actions = w.plan();
        let started = starts(&actions);
        if moved.is_empty() {
            assert!(started.is_empty(), "{opus} {threshold:?}: {started:?}");
            continue;
        }
        assert_eq!(started.len(), 1, "{opus}: {started:?}");
        assert_eq!(started[0].spec.sessions, moved, "{opus} {threshold:?}");
        assert_eq!(started[0].spec.reason, "ModelLimit");
        assert_eq!(reason_label("ModelLimit"), "model_limit");
        assert_eq!(started[0].spec.to, "c", "the most headroom");
    }
}

#[test]
fn the_model_the_agent_says_it_runs_wins_over_the_spec() {
    let mut w = scene(97.0);
    // s was switched to opus by a task's `/model`, o to sonnet.
    w.models
        .insert(("default".into(), "s".into()), "claude-opus-4-5".into());
    w.models
        .insert(("default".into(), "o".into()), "claude-sonnet-5".into());
    let actions = w.plan();
    assert_eq!(starts(&actions)[0].spec.sessions, ["s", "u"]);
}

#[test]
fn a_target_at_the_same_model_limit_is_not_chosen() {
    let mut w = scene(97.0);
    // c has the most headroom but is at its own Opus limit.
    model_window(&mut w.accounts[2], "opus", 96.0);
    let actions = w.plan();
    assert_eq!(starts(&actions)[0].spec.to, "b");
    // ...its Sonnet limit does not matter to Opus sessions; for the
    // unknown-model session it does, so only `o` alone could go to c.
    let mut w = scene(97.0);
    model_window(&mut w.accounts[2], "sonnet", 96.0);
    assert_eq!(starts(&w.plan())[0].spec.to, "b", "u may run sonnet");
    w.sessions
        .retain(|s| s.metadata.name.as_deref() != Some("u"));
    assert_eq!(starts(&w.plan())[0].spec.to, "c");
    // Every other account at its Opus limit: said once, sessions stay.
    let mut w = scene(97.0);
    model_window(&mut w.accounts[1], "opus", 99.0);
    model_window(&mut w.accounts[2], "opus", 99.0);
    let actions = w.plan();
    assert!(starts(&actions).is_empty());
    assert!(events(&actions).contains(&"NoFailoverTarget"));
    w.apply(&actions);
    assert!(
        !events(&w.plan()).contains(&"NoFailoverTarget"),
        "said once"
    );
}

#[test]
fn an_opus_session_comes_back_once_the_opus_window_has_room() {
    let mut w = Scene::new(2 * HOUR);
    w.accounts = vec![
        account("a", AccountPhase::Available, 10.0),
        account("b", AccountPhase::Available, 40.0),
    ];
    w.accounts[1].spec.priority = 10;
    let mut s = session("o", "b", SessionPhase::Idle);
    s.spec.account = Some("a".into());
    s.spec.agent.model = Some("opus".into());
    s.status.as_mut().unwrap().last_swap = Some(SwapStatus {
        epoch: 1,
        from: Some("a".into()),
        to: "b".into(),
        reason: "ModelLimit".into(),
        state: crate::api::SWAP_DONE.into(),
        started_at: crate::api::micro(at(0)),
        spec_account: Some("a".into()),
    });
    w.sessions = vec![s];
    w.lease.epoch = 1;
    // (a's opus %, goes back): the margin is 20 points below 95.
    for (opus, back) in [(94.0, false), (76.0, false), (75.0, true), (5.0, true)] {
        model_window(&mut w.accounts[0], "opus", opus);
        let started = starts(&w.plan())
            .iter()
            .map(|s| (s.spec.reason.clone(), s.spec.to.clone()))
            .collect::<Vec<_>>();
        let want = if back {
            vec![(FAILBACK.to_string(), "a".to_string())]
        } else {
            vec![]
        };
        assert_eq!(started, want, "opus at {opus}");
    }
    // A sonnet session is not held back by a's opus window.
    model_window(&mut w.accounts[0], "opus", 99.0);
    w.sessions[0].spec.agent.model = Some("sonnet".into());
    assert_eq!(starts(&w.plan()).len(), 1);
}

#[test]
fn a_session_of_a_capped_model_takes_no_new_task_while_it_can_move() {
    use super::super::target::model_drained;
    let policy = crate::quota::policy::Policy::default();
    let mut a = account("a", AccountPhase::Available, 40.0);
    model_window(&mut a, "opus", 96.0);
    // (model, drained)
    for (model, drained) in [
        (Some("opus"), true),
        (Some("claude-opus-4-5"), true),
        (None, true),
        (Some("sonnet"), false),
        (Some("haiku"), false),
    ] {
        assert_eq!(model_drained(&a, model, &policy), drained, "{model:?}");
    }
    // Drain off for this account, or nowhere to go: work goes on.
    a.spec.policy = Some(crate::api::AccountPolicy {
        drain: Some(false),
        failback: None,
    });
    assert!(!model_drained(&a, Some("opus"), &policy));
    a.spec.policy = None;
    a.status.as_mut().unwrap().failover = Some(crate::api::AccountFailover {
        no_target: Some(crate::api::FailoverNote {
            since: crate::api::now(),
            message: "no other account is available".into(),
        }),
        ..Default::default()
    });
    assert!(!model_drained(&a, Some("opus"), &policy));
}

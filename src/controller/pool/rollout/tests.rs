//! Table tests of the rollout's decision.

use super::*;
use crate::api::{RESTARTED_AT, template_hash};
use serde_json::json;

fn pool(template: serde_json::Value, strategy: serde_json::Value) -> SessionPool {
    serde_json::from_value(json!({
        "apiVersion": "claude-failover.io/v1alpha1", "kind": "SessionPool",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"replicas": 4, "template": template, "updateStrategy": strategy}
    }))
    .unwrap()
}

fn base() -> serde_json::Value {
    json!({"metadata": {"labels": {"app": "web"}},
           "spec": {"workdir": "/w", "agent": {"model": "sonnet"}}})
}

/// A member made from `template`, in `phase` (Ready when Idle or Busy),
/// with a task or not, and its placed account.
fn member(ord: u32, template: &serde_json::Value, phase: &str, task: bool) -> Session {
    let t: crate::api::SessionTemplate = serde_json::from_value(template.clone()).unwrap();
    let mut st = json!({"phase": phase});
    if task {
        st["currentTask"] = json!("t");
    }
    if phase == "Idle" || phase == "Busy" {
        st["conditions"] = json!([{"type": "Ready", "status": "True", "reason": "AtPrompt",
            "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}]);
    }
    let mut spec = serde_json::to_value(&t.spec).unwrap();
    spec["account"] = json!("a");
    let mut labels = json!(t.metadata.labels);
    labels[POOL_LABEL] = json!("web");
    labels[TEMPLATE_HASH_LABEL] = json!(template_hash(&t));
    serde_json::from_value(json!({
        "apiVersion": "claude-failover.io/v1alpha1", "kind": "Session",
        "metadata": {"name": format!("web-{ord}"), "namespace": "default",
                     "labels": labels, "annotations": t.metadata.annotations},
        "spec": spec, "status": st
    }))
    .unwrap()
}

fn changed(path: &[&str], v: serde_json::Value) -> serde_json::Value {
    let mut t = base();
    let mut at = &mut t;
    for p in &path[..path.len() - 1] {
        at = at.as_object_mut().unwrap().entry(*p).or_insert(json!({}));
    }
    at[path[path.len() - 1]] = v;
    t
}

fn decide_for(p: &SessionPool, m: &[Session], want: usize) -> Rollout {
    let live: Vec<&Session> = m.iter().collect();
    decide(p, &live, want, &template_hash(&p.spec.template))
}

#[test]
fn how_each_change_reaches_a_session() {
    let old = member(0, &base(), "Idle", false);
    let cases = [
        (changed(&["spec", "workdir"], json!("/v")), Roll::Replace),
        (
            changed(&["spec", "workspace"], json!({"git": {"repo": "/r"}})),
            Roll::Replace,
        ),
        (
            changed(&["spec", "agent"], json!({"model": "opus"})),
            Roll::Restart,
        ),
        (
            changed(
                &["spec", "agent"],
                json!({"model": "sonnet", "env": {"X": "1"}}),
            ),
            Roll::Restart,
        ),
        (
            changed(&["metadata", "annotations"], json!({RESTARTED_AT: "now"})),
            Roll::Restart,
        ),
        (
            changed(&["metadata", "labels"], json!({"app": "web", "tier": "x"})),
            Roll::Relabel,
        ),
        // A standby, or its bound, is kept beside the agent: it runs on.
        (
            changed(
                &["spec", "standby"],
                json!({"mode": "warm", "perTarget": 2}),
            ),
            Roll::Relabel,
        ),
        // The template names no account: the one the pool placed it on stays.
        (base(), Roll::Relabel),
    ];
    for (template, want) in cases {
        let p = pool(template.clone(), json!({}));
        assert_eq!(classify(&p, &old), want, "{template}");
    }
}

#[test]
fn one_at_a_time_highest_ordinal_first_busy_ones_after_their_turn() {
    let new = changed(&["spec", "agent"], json!({"model": "opus"}));
    let old: Vec<Session> = (0..4).map(|i| member(i, &base(), "Idle", false)).collect();
    let mut restarting = member(3, &new, "Idle", false);
    restarting.metadata.annotations = Some(
        [(crate::api::keys::RESTART.to_string(), "x".to_string())]
            .into_iter()
            .collect(),
    );
    let starting = member(3, &new, "Starting", false);
    let done = member(3, &new, "Idle", false);
    let busy1 = member(1, &base(), "Busy", true);
    let names = |v: &[(String, Roll)]| v.iter().map(|x| x.0.clone()).collect::<Vec<_>>();
    // (strategy, members, want now, after turn, queued)
    type Case = (
        serde_json::Value,
        Vec<Session>,
        Vec<&'static str>,
        Vec<&'static str>,
        Vec<&'static str>,
    );
    let with = |i: usize, s: &Session| {
        let mut v = old.clone();
        v[i] = s.clone();
        v
    };
    let cases: Vec<Case> = vec![
        (
            json!({}),
            old.clone(),
            vec!["web-3"],
            vec![],
            vec!["web-2", "web-1", "web-0"],
        ),
        // web-3 restarting (asked, not answered), then starting: nothing else goes.
        (
            json!({}),
            with(3, &restarting),
            vec![],
            vec![],
            vec!["web-2", "web-1", "web-0"],
        ),
        (
            json!({}),
            with(3, &starting),
            vec![],
            vec![],
            vec!["web-2", "web-1", "web-0"],
        ),
        // web-3 back at its prompt: the next.
        (
            json!({}),
            with(3, &done),
            vec!["web-2"],
            vec![],
            vec!["web-1", "web-0"],
        ),
        // A busy one waits for its turn; the idle ones go.
        (
            json!({}),
            with(1, &busy1),
            vec!["web-3"],
            vec!["web-1"],
            vec!["web-2", "web-0"],
        ),
        // maxUnavailable 2, or 50% of 4.
        (
            json!({"rollingUpdate": {"maxUnavailable": 2}}),
            old.clone(),
            vec!["web-3", "web-2"],
            vec![],
            vec!["web-1", "web-0"],
        ),
        (
            json!({"rollingUpdate": {"maxUnavailable": "50%"}}),
            with(3, &starting),
            vec!["web-2"],
            vec![],
            vec!["web-1", "web-0"],
        ),
        // OnDelete: nothing rolls.
        (
            json!({"type": "OnDelete"}),
            old.clone(),
            vec![],
            vec![],
            vec![],
        ),
    ];
    for (strategy, members, now, after, queued) in cases {
        let p = pool(new.clone(), strategy.clone());
        let r = decide_for(&p, &members, 4);
        assert_eq!(names(&r.now), now, "{strategy}");
        assert_eq!(r.after_turn, after, "{strategy}");
        assert_eq!(r.queued, queued, "{strategy}");
    }
}

#[test]
fn out_of_service_ones_go_at_once_and_a_missing_one_counts() {
    let new = changed(&["spec", "agent"], json!({"model": "opus"}));
    let p = pool(new, json!({}));
    // web-0 not ready (crash loop, say): it goes at once; it is the one
    // out of service, so web-1 waits.
    let m = vec![
        member(0, &base(), "Failed", false),
        member(1, &base(), "Idle", false),
    ];
    let r = decide_for(&p, &m, 2);
    assert_eq!(r.now, [("web-0".to_string(), Roll::Restart)]);
    assert_eq!(r.queued, ["web-1"]);
    // One of three missing (being made again): no room for another.
    let r = decide_for(&p, &m[1..], 2);
    assert!(r.now.is_empty(), "{r:?}");
    assert_eq!(r.queued, ["web-1"]);
}

#[test]
fn labels_alone_go_at_once_busy_or_not() {
    let new = changed(&["metadata", "labels"], json!({"app": "web", "tier": "x"}));
    let p = pool(new, json!({}));
    let m = vec![
        member(0, &base(), "Busy", true),
        member(1, &base(), "Idle", false),
    ];
    let r = decide_for(&p, &m, 2);
    assert_eq!(
        r.now,
        [
            ("web-1".to_string(), Roll::Relabel),
            ("web-0".to_string(), Roll::Relabel)
        ]
    );
    let l = labels_for(&p, &m[0], "h");
    assert_eq!(l["tier"], "x");
    assert_eq!(l[TEMPLATE_HASH_LABEL], "h");
    assert_eq!(l[POOL_LABEL], "web");
}

#[test]
fn the_new_spec_keeps_the_placed_account_and_a_suspend() {
    let mut t = changed(&["spec", "agent"], json!({"model": "opus"}));
    t["spec"]["account"] = json!("b");
    let mut s = member(0, &base(), "Idle", false);
    s.spec.suspend = true;
    let spread = pool(t.clone(), json!({}));
    let spec = spec_for(&spread, &s);
    assert_eq!(spec.account.as_deref(), Some("a"));
    assert!(spec.suspend);
    assert_eq!(spec.agent.model.as_deref(), Some("opus"));
    let mut pack = spread.clone();
    pack.spec.placement.strategy = PlacementStrategy::Pack;
    assert_eq!(spec_for(&pack, &s).account.as_deref(), Some("b"));
}

//! Table tests of the pool's decision.

use super::*;
use serde_json::json;

fn pool(replicas: u32, strategy: &str, extra: serde_json::Value) -> SessionPool {
    let mut v = json!({
        "apiVersion": "claude-failover.io/v1alpha1", "kind": "SessionPool",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"replicas": replicas, "placement": {"strategy": strategy},
                 "template": {"spec": {"workdir": "/w"}}}
    });
    merge(&mut v, extra);
    serde_json::from_value(v).unwrap()
}

fn merge(a: &mut serde_json::Value, b: serde_json::Value) {
    match (a, b) {
        (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(serde_json::Value::Null), v);
            }
        }
        (a, b) => *a = b,
    }
}

/// A member: its ordinal, phase, current task, preferred and actual account.
fn member(ord: u32, phase: &str, task: Option<&str>, account: Option<&str>) -> Session {
    let mut st = json!({"phase": phase});
    if let Some(t) = task {
        st["currentTask"] = json!(t);
    }
    if let Some(a) = account {
        st["account"] = json!(a);
    }
    if phase == "Idle" || phase == "Busy" {
        st["conditions"] = json!([{"type": "Ready", "status": "True", "reason": "AtPrompt",
            "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}]);
    }
    serde_json::from_value(json!({
        "apiVersion": "claude-failover.io/v1alpha1", "kind": "Session",
        "metadata": {"name": format!("web-{ord}"), "namespace": "default"},
        "spec": {"workdir": "/w", "account": account},
        "status": st
    }))
    .unwrap()
}

fn account(name: &str, phase: &str, used: f64, labels: serde_json::Value) -> Account {
    serde_json::from_value(json!({
        "apiVersion": "claude-failover.io/v1alpha1", "kind": "Account",
        "metadata": {"name": name, "namespace": "default", "labels": labels},
        "spec": {"configDir": format!("/c/{name}")},
        "status": {"phase": phase, "usage": {"fiveHour": {"utilization": used,
            "source": "poll", "observedAt": "2026-01-01T00:00:00Z"}}}
    }))
    .unwrap()
}

fn creates(p: &Plan) -> Vec<(u32, Option<String>)> {
    p.actions
        .iter()
        .filter_map(|a| match a {
            Action::Create { ordinal, account } => Some((*ordinal, account.clone())),
            _ => None,
        })
        .collect()
}

fn deletes(p: &Plan) -> Vec<String> {
    p.actions
        .iter()
        .filter_map(|a| match a {
            Action::Delete { name, .. } => Some(name.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn scale_up_fills_the_lowest_free_ordinals() {
    let m1 = member(1, "Idle", None, None);
    let cases: Vec<(u32, Vec<&Session>, Vec<u32>)> = vec![
        (3, vec![], vec![0, 1, 2]),
        (3, vec![&m1], vec![0, 2]),
        (1, vec![&m1], vec![]),
    ];
    for (replicas, owned, want) in cases {
        let p = plan(&pool(replicas, "Spread", json!({})), &owned, &[]);
        let got: Vec<u32> = creates(&p).into_iter().map(|c| c.0).collect();
        assert_eq!(got, want, "replicas {replicas}");
    }
}

#[test]
fn scale_down_takes_idle_first_then_the_highest_ordinal() {
    let m: Vec<Session> = vec![
        member(0, "Idle", None, None),
        member(1, "Busy", Some("t1"), None),
        member(2, "Idle", None, None),
        member(3, "Busy", Some("t3"), None),
        member(4, "Pending", None, None),
    ];
    let all: Vec<&Session> = m.iter().collect();
    // (replicas, force, deleted, left for their turn)
    let cases: Vec<(u32, bool, Vec<&str>, Vec<&str>)> = vec![
        (4, false, vec!["web-4"], vec![]),
        (2, false, vec!["web-4", "web-2", "web-0"], vec![]),
        (1, false, vec!["web-4", "web-2", "web-0"], vec!["web-3"]),
        (
            0,
            false,
            vec!["web-4", "web-2", "web-0"],
            vec!["web-3", "web-1"],
        ),
        (1, true, vec!["web-4", "web-2", "web-0", "web-3"], vec![]),
        (5, false, vec![], vec![]),
    ];
    for (replicas, force, del, wait) in cases {
        let extra = if force {
            json!({"metadata": {"annotations": {FORCE_SCALE_DOWN: "true"}}})
        } else {
            json!({})
        };
        let p = plan(&pool(replicas, "Spread", extra), &all, &[]);
        assert_eq!(deletes(&p), del, "replicas {replicas} force {force}");
        assert_eq!(
            p.waiting_for_turn, wait,
            "replicas {replicas} force {force}"
        );
        assert!(creates(&p).is_empty());
    }
}

#[test]
fn a_deleted_pool_deletes_every_session_busy_or_not() {
    let m = [
        member(0, "Idle", None, None),
        member(1, "Busy", Some("t"), None),
    ];
    let all: Vec<&Session> = m.iter().collect();
    let p = plan(
        &pool(
            2,
            "Spread",
            json!({"metadata": {"deletionTimestamp": "2026-01-01T00:00:00Z"}}),
        ),
        &all,
        &[],
    );
    assert_eq!(deletes(&p), ["web-0", "web-1"]);
    assert!(p.waiting_for_turn.is_empty());
}

#[test]
fn a_terminating_session_keeps_its_name_until_gone() {
    let mut gone = member(0, "Idle", None, None);
    gone.metadata.deletion_timestamp = Some(crate::api::now());
    let p = plan(&pool(2, "Spread", json!({})), &[&gone], &[]);
    // web-0 comes back once gone (the names stay web-0..N-1).
    assert_eq!(creates(&p), [(1, None)]);
    assert_eq!(p.status.replicas, 0);
    let p = plan(&pool(2, "Spread", json!({})), &[], &[]);
    assert_eq!(creates(&p), [(0, None), (1, None)]);
}

#[test]
fn placement_spreads_by_headroom_or_packs() {
    let a = account("a", "Available", 50.0, json!({"team": "x"}));
    let b = account("b", "Available", 10.0, json!({"team": "x"}));
    let c = account("c", "NearLimit", 0.0, json!({"team": "x"}));
    let d = account("d", "Exhausted", 0.0, json!({"team": "x"}));
    let e = account("e", "Available", 0.0, json!({"team": "y"}));
    let accts = [&a, &b, &c, &d, &e];
    let sel = json!({"spec": {"placement": {"accountSelector": {"matchLabels": {"team": "x"}}}}});
    let on_b = member(0, "Idle", None, Some("b"));
    let some = |s: &str| Some(s.to_string());
    // (strategy, extra, owned, expected accounts of the new sessions)
    type Case<'a> = (
        &'a str,
        serde_json::Value,
        Vec<&'a Session>,
        Vec<Option<String>>,
    );
    let cases: Vec<Case> = vec![
        // Spread: the least used first, round the selected runnable ones.
        (
            "Spread",
            sel.clone(),
            vec![],
            vec![some("b"), some("a"), some("c"), some("b")],
        ),
        // Those already placed count.
        (
            "Spread",
            sel.clone(),
            vec![&on_b],
            vec![some("a"), some("c"), some("b")],
        ),
        // No selector: every account of the namespace.
        (
            "Spread",
            json!({}),
            vec![],
            vec![some("e"), some("b"), some("a"), some("c")],
        ),
        // Pack: the template's account.
        (
            "Pack",
            json!({"spec": {"template": {"spec": {"account": "a"}}}}),
            vec![],
            vec![some("a"); 4],
        ),
        // Pack without one: the best selected.
        ("Pack", sel.clone(), vec![], vec![some("b"); 4]),
    ];
    for (strategy, extra, owned, want) in cases {
        let p = plan(&pool(4, strategy, extra.clone()), &owned, &accts);
        let got: Vec<Option<String>> = creates(&p).into_iter().map(|c| c.1).collect();
        assert_eq!(got, want, "{strategy} {extra}");
    }
    // No account can take work: the template's preference (none here).
    let p = plan(&pool(1, "Spread", json!({})), &[], &[&d]);
    assert_eq!(creates(&p), [(0, None)]);
}

#[test]
fn status_counts_the_sessions() {
    let m = [
        member(0, "Idle", None, Some("a")),
        member(1, "Busy", Some("t"), Some("a")),
        member(2, "Waiting", Some("t2"), Some("b")),
        member(3, "Starting", None, None),
    ];
    let all: Vec<&Session> = m.iter().collect();
    let st = plan(&pool(4, "Spread", json!({})), &all, &[]).status;
    assert_eq!(
        (st.replicas, st.ready, st.idle, st.busy, st.waiting),
        (4, 2, 1, 1, 1)
    );
    assert_eq!(
        st.accounts,
        BTreeMap::from([("a".into(), 2), ("b".into(), 1)])
    );
    assert_eq!(st.selector, "claude-failover.io/pool=web");
}

#[test]
fn nothing_is_placed_before_the_accounts_are_checked() {
    let a = account("a", "Available", 0.0, json!({}));
    let mut b = account("b", "Available", 0.0, json!({}));
    b.status = None;
    let p = plan(&pool(2, "Spread", json!({})), &[], &[&a, &b]);
    assert!(p.actions.is_empty());
    assert_eq!(p.unchecked_accounts, ["b"]);
    // One the selector leaves out does not hold the pool back.
    let sel = json!({"spec": {"placement": {"accountSelector": {"matchLabels": {"team": "x"}}}}});
    let mut c = account("c", "Available", 0.0, json!({"team": "x"}));
    let p = plan(&pool(1, "Spread", sel.clone()), &[], &[&c, &b]);
    assert_eq!(creates(&p), [(0, Some("c".to_string()))]);
    c.status = None;
    let p = plan(&pool(1, "Spread", sel), &[], &[&c, &b]);
    assert!(p.actions.is_empty());
}

//! Table tests of field ownership.

use super::*;
use k8s_openapi::jiff::Timestamp;

fn t(s: i64) -> Time {
    Time(Timestamp::from_second(s).unwrap())
}

fn obj(labels: Value, annotations: Value, spec: Value) -> Value {
    json!({"apiVersion": "claude-failover.io/v1alpha1", "kind": "Task",
        "metadata": {"name": "x", "namespace": "default", "labels": labels, "annotations": annotations},
        "spec": spec})
}

fn owners(doc: &Value, path: &str) -> Vec<String> {
    entries(doc)
        .into_iter()
        .filter(|e| e.fields.iter().any(|p| path_string(p) == path))
        .map(|e| format!("{}/{}", e.manager, e.operation))
        .collect()
}

#[test]
fn field_sets_and_fields_v1() {
    let o = json!({"metadata": {"name": "x", "labels": {"a": "1"}, "finalizers": ["f1", "f2"]},
        "spec": {"prompt": "p", "sel": {"matchLabels": {"k": "v"}}, "args": ["x"], "env": {}}});
    let f: Vec<String> = fields_of(&o).iter().map(|p| path_string(p)).collect();
    assert_eq!(
        f,
        [
            r#".metadata.finalizers[="f1"]"#,
            r#".metadata.finalizers[="f2"]"#,
            ".metadata.labels.a",
            ".spec.args",
            ".spec.prompt",
            ".spec.sel.matchLabels.k",
        ]
    );
    let v1 = to_fields_v1(&fields_of(&o));
    assert_eq!(v1["f:metadata"]["f:finalizers"]["v:\"f1\""], json!({}));
    assert_eq!(from_fields_v1(&v1), fields_of(&o));
    // Kubernetes marks a map that is owned itself with ".".
    let k8s = json!({"f:spec": {".": {}, "f:a": {}}});
    assert_eq!(from_fields_v1(&k8s).len(), 2);
}

/// Each row: a writer's step, and what the object holds after it.
#[test]
fn apply_and_update_table() {
    let m1 = obj(
        json!({"team": "a"}),
        json!({}),
        json!({"prompt": "p", "priority": "high"}),
    );
    // 1. A first apply owns what it declares.
    let a = apply(&m1, &m1, "cli", false, &t(1)).unwrap();
    assert_eq!(owners(&a.doc, ".spec.priority"), ["cli/Apply"]);
    // 2. A cancel request (an update by another writer) adds an annotation.
    let mut cancelled = a.doc.clone();
    cancelled["metadata"]["annotations"] = json!({"claude-failover.io/cancel": "now"});
    cancelled["metadata"]["labels"]["by-hand"] = json!("yes");
    record_update(Some(&a.doc), &mut cancelled, "cancel", &t(2));
    assert_eq!(
        owners(
            &cancelled,
            ".metadata.annotations.claude-failover.io/cancel"
        ),
        ["cancel/Update"]
    );
    // 3. Re-applying the same manifest keeps the cancel and the label: unchanged.
    let b = apply(&cancelled, &m1, "cli", false, &t(3)).unwrap();
    assert_eq!(
        b.doc["metadata"]["annotations"]["claude-failover.io/cancel"],
        "now"
    );
    assert_eq!(b.doc["metadata"]["labels"]["by-hand"], "yes");
    assert_eq!(
        b.doc, cancelled,
        "nothing changed, not even the record's time"
    );
    // 4. A manifest that drops `priority` and the label `team` removes them.
    let m2 = obj(json!({}), json!({}), json!({"prompt": "p"}));
    let c = apply(&b.doc, &m2, "cli", false, &t(4)).unwrap();
    assert!(c.doc["spec"].get("priority").is_none());
    assert!(c.doc["metadata"]["labels"].get("team").is_none());
    assert_eq!(c.doc["metadata"]["labels"]["by-hand"], "yes");
    // 5. Another applier (the sync) declaring the same value shares it.
    let d = apply(&c.doc, &m2, "sync", false, &t(5)).unwrap();
    assert_eq!(owners(&d.doc, ".spec.prompt"), ["cli/Apply", "sync/Apply"]);
    // ... so the CLI dropping it keeps it (the sync still declares it).
    let m3 = obj(json!({}), json!({}), json!({"priority": "low"}));
    let e = apply(&d.doc, &m3, "cli", false, &t(6)).unwrap();
    assert_eq!(e.doc["spec"]["prompt"], "p");
    // 6. An edit of a field the sync applied takes it over ...
    let mut edited = e.doc.clone();
    edited["spec"]["prompt"] = json!("edited");
    record_update(Some(&e.doc), &mut edited, "edit", &t(7));
    assert_eq!(owners(&edited, ".spec.prompt"), ["edit/Update"]);
    // ... and an apply that would change it back is a conflict,
    let err = apply(&edited, &m2, "sync", false, &t(8)).unwrap_err();
    assert_eq!(
        err.0,
        [Conflict {
            manager: "edit".into(),
            path: vec![Seg::Field("spec".into()), Seg::Field("prompt".into())]
        }]
    );
    assert!(
        err.to_string()
            .contains("conflict with \"edit\": .spec.prompt"),
        "{err}"
    );
    // ... unless forced, which takes it back and says so.
    let f = apply(&edited, &m2, "sync", true, &t(8)).unwrap();
    assert_eq!(f.doc["spec"]["prompt"], "p");
    assert_eq!(owners(&f.doc, ".spec.prompt"), ["sync/Apply"]);
    assert_eq!(f.taken_over.len(), 1);
}

#[test]
fn finalizers_are_a_set_and_controllers_keep_theirs() {
    let live = json!({"metadata": {"name": "x", "finalizers": ["claude-failover.io/session"]}, "spec": {"w": 1}});
    let m = json!({"metadata": {"name": "x", "finalizers": ["mine"]}, "spec": {"w": 1}});
    let a = apply(&live, &m, "cli", false, &t(1)).unwrap();
    assert_eq!(
        a.doc["metadata"]["finalizers"],
        json!(["claude-failover.io/session", "mine"])
    );
    let m2 = json!({"metadata": {"name": "x"}, "spec": {"w": 1}});
    let b = apply(&a.doc, &m2, "cli", false, &t(2)).unwrap();
    assert_eq!(
        b.doc["metadata"]["finalizers"],
        json!(["claude-failover.io/session"])
    );
}

#[test]
fn nested_maps_are_pruned_when_emptied() {
    let m1 =
        json!({"metadata": {"name": "x"}, "spec": {"sel": {"matchLabels": {"k": "v"}}, "p": 1}});
    let a = apply(&m1, &m1, "cli", false, &t(1)).unwrap();
    let m2 = json!({"metadata": {"name": "x"}, "spec": {"p": 1}});
    let b = apply(&a.doc, &m2, "cli", false, &t(2)).unwrap();
    assert_eq!(b.doc["spec"], json!({"p": 1}));
}

#[test]
fn normalize_fills_defaults_and_checks() {
    let doc = json!({"apiVersion": "claude-failover.io/v1alpha1", "kind": "Task",
        "metadata": {"name": "x", "namespace": "default"}, "spec": {"prompt": "p"}});
    let n = normalize(Kind::Task, &doc).unwrap();
    assert_eq!(n["spec"]["priority"], "normal");
    let mut bad = doc.clone();
    bad["spec"]["priority"] = json!("urgent");
    assert!(
        normalize(Kind::Task, &bad)
            .unwrap_err()
            .starts_with("spec.priority")
    );
}

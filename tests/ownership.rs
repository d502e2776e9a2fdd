//! Field ownership through each writer: `apply` and the sync change only
//! the fields their manifests declare, and keep what others set — a cancel
//! or restart request (CLI, API), a label added by hand, a patch, the
//! daemon's finalizers and status — whether the daemon runs or not.

mod common;
use claude_failover::api::{Kind, ObjectKey, Task};
use claude_failover::store::Store;
use common::daemon::{Daemon, T, call, token};
use common::*;
use serde_json::{Value, json};

fn task(name: &str, labels: &str, spec: &str) -> String {
    format!(
        "{HEAD}kind: Task\nmetadata:\n  name: {name}\n  labels: {{{labels}}}\nspec:\n  prompt: do {name}\n{spec}"
    )
}

fn get(env: &Env, kind: &str, name: &str) -> Value {
    serde_json::from_str(&env.ok(&["get", kind, name, "-o", "json"])).unwrap()
}

#[test]
fn apply_keeps_what_other_writers_set() {
    let env = Env::new();
    let f = env.write("t.yaml", &task("fix", "team: a", "  priority: critical\n"));
    let f = f.to_str().unwrap();
    env.ok(&["apply", "-f", f]);
    // Other writers: a cancel (no daemon: written to the store), a label
    // and an annotation by hand, a patch of a field the manifest leaves
    // out, the daemon's finalizer and status.
    let out = env.run(&["cancel", "task", "fix"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    env.ok(&["label", "task", "fix", "by-hand=yes"]);
    env.ok(&["annotate", "task", "fix", "note=keep me"]);
    env.ok(&["patch", "task", "fix", "-p", r#"{"spec":{"model":"opus"}}"#]);
    let store = Store::open(env.store()).unwrap();
    store
        .api::<Task>(Some("default"))
        .set_finalizer("fix", "claude-failover.io/task", true)
        .unwrap();
    let key = ObjectKey::new(Kind::Task, "default", "fix");
    store
        .write_status(&key, &json!({"phase": "Pending", "attempts": 0}), None)
        .unwrap();
    let kept = |v: &Value| {
        assert!(
            v["metadata"]["annotations"]["claude-failover.io/cancel"].is_string(),
            "{v}"
        );
        assert_eq!(v["metadata"]["annotations"]["note"], "keep me", "{v}");
        assert_eq!(v["metadata"]["labels"]["by-hand"], "yes", "{v}");
        assert_eq!(v["spec"]["model"], "opus", "{v}");
        assert_eq!(
            v["metadata"]["finalizers"],
            json!(["claude-failover.io/task"]),
            "{v}"
        );
        assert_eq!(v["status"]["phase"], "Pending", "{v}");
    };
    // The same manifest again: nothing to do.
    assert_eq!(
        env.ok(&["apply", "-f", f]),
        "task.claude-failover.io/fix unchanged\n"
    );
    kept(&get(&env, "task", "fix"));
    // A changed manifest: its own fields change, a label it dropped goes,
    // everything else stays.
    env.write("t.yaml", &task("fix", "", "  priority: high\n"));
    assert_eq!(
        env.ok(&["apply", "-f", f]),
        "task.claude-failover.io/fix configured\n"
    );
    let v = get(&env, "task", "fix");
    kept(&v);
    assert_eq!(v["spec"]["priority"], "high");
    assert!(v["metadata"]["labels"].get("team").is_none(), "{v}");
    // A patch of a field the manifest declares is another writer's now:
    // the apply refuses to undo it silently, names it, and changes nothing.
    env.ok(&[
        "patch",
        "task",
        "fix",
        "-p",
        r#"{"spec":{"priority":"low"}}"#,
    ]);
    let before = snapshot(&env.store());
    let out = env.run(&["apply", "-f", f]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr
            .contains("conflict with \"claude-failover-patch\": .spec.priority")
            && out.stderr.contains("--force-conflicts"),
        "{}",
        out.stderr
    );
    assert!(before == snapshot(&env.store()), "a refused apply wrote");
    // Forced, the manifest takes it back (and owns it again).
    env.ok(&["apply", "-f", f, "--force-conflicts"]);
    assert_eq!(get(&env, "task", "fix")["spec"]["priority"], "high");
    assert_eq!(
        env.ok(&["apply", "-f", f]),
        "task.claude-failover.io/fix unchanged\n"
    );
    // A suspended session stays suspended through a re-apply.
    let s = env.write("s.yaml", &session_yaml("ccl-0", ""));
    let s = s.to_str().unwrap();
    env.ok(&["apply", "-f", s]);
    assert_eq!(
        env.ok(&["suspend", "session", "ccl-0"]),
        "session.claude-failover.io/ccl-0 suspended\n"
    );
    assert_eq!(
        env.ok(&["apply", "-f", s]),
        "session.claude-failover.io/ccl-0 unchanged\n"
    );
    assert_eq!(get(&env, "session", "ccl-0")["spec"]["suspend"], true);
    assert_eq!(
        env.ok(&["resume", "sessions", "--all"]),
        "session.claude-failover.io/ccl-0 resumed\n"
    );
    assert_eq!(get(&env, "session", "ccl-0")["spec"]["suspend"], false);
}

#[test]
fn the_sync_keeps_what_other_writers_set_daemon_up_or_down() {
    let env = Env::new();
    let dir = env.path("pool");
    // A suspended session: the daemon starts no agent for it.
    env.write("pool/s.yaml", &session_yaml("ccl-0", "  suspend: true\n"));
    env.write(
        "pool/t.yaml",
        &task("fix", "team: a", "  session: nowhere\n"),
    );
    let mut d = Daemon::start(
        &env,
        &["--manifests", dir.to_str().unwrap(), "--resync", "1s"],
    );
    let tok = token(&env);
    let ns = format!("{}/api/v1/namespaces/default", d.url);
    wait_for("synced", T, || {
        (env.run(&["get", "task", "fix"]).code == 0
            && env.run(&["get", "session", "ccl-0"]).code == 0)
            .then_some(())
    });
    // API actions, a label by hand.
    let (code, body) = call("POST", &format!("{ns}/tasks/fix/cancel"), Some(&tok), None);
    assert_eq!(code, 202, "{body}");
    let (code, body) = call(
        "POST",
        &format!("{ns}/sessions/ccl-0/restart"),
        Some(&tok),
        None,
    );
    assert_eq!(code, 202, "{body}");
    env.ok(&["label", "session", "ccl-0", "by-hand=yes"]);
    wait_for("the task cancelled by the daemon", T, || {
        (get(&env, "task", "fix")["status"]["phase"] == "Cancelled").then_some(())
    });
    // What the daemon set on the objects, before the files change.
    let finalizers_before = get(&env, "session", "ccl-0")["metadata"]["finalizers"].clone();
    // The files change; the sync applies them.
    env.write(
        "pool/t.yaml",
        &task("fix", "team: b", "  session: nowhere\n  priority: high\n"),
    );
    env.write(
        "pool/s.yaml",
        &session_yaml("ccl-0", "  suspend: true\n  account: work\n"),
    );
    wait_for("the changed files synced", T, || {
        let t = get(&env, "task", "fix");
        let s = get(&env, "session", "ccl-0");
        (t["spec"]["priority"] == "high" && s["spec"]["account"] == "work").then_some(())
    });
    let t = get(&env, "task", "fix");
    assert!(
        t["metadata"]["annotations"]["claude-failover.io/cancel"].is_string(),
        "{t}"
    );
    assert_eq!(t["metadata"]["labels"]["team"], "b");
    assert_eq!(
        t["status"]["phase"], "Cancelled",
        "the daemon's status is kept"
    );
    let s = get(&env, "session", "ccl-0");
    assert!(
        s["metadata"]["annotations"]["claude-failover.io/restart-requested-at"].is_string(),
        "{s}"
    );
    assert_eq!(s["metadata"]["labels"]["by-hand"], "yes");
    assert_eq!(
        s["metadata"]["finalizers"], finalizers_before,
        "the daemon's finalizers are kept: {s}"
    );
    // Drift on a declared field is taken back, and said so.
    env.ok(&[
        "patch",
        "session",
        "ccl-0",
        "-p",
        r#"{"spec":{"account":"personal"}}"#,
    ]);
    wait_for("the drift taken back", T, || {
        (get(&env, "session", "ccl-0")["spec"]["account"] == "work").then_some(())
    });
    let ev = env.ok(&["events", "--for", "session/ccl-0"]);
    assert!(
        ev.contains("took back conflict with \"claude-failover-patch\": .spec.account"),
        "{ev}"
    );
    // The daemon is down: requests and labels go to the store; the next
    // daemon's first sync pass keeps them.
    d.stop();
    env.write("pool/t2.yaml", &task("other", "", "  session: nowhere\n"));
    let out = env.run(&["cancel", "task", "fix"]);
    assert!(
        out.stderr.contains("already ended") || out.code == 0,
        "{}",
        out.stderr
    );
    env.ok(&["label", "task", "fix", "down=yes"]);
    let _d = Daemon::start(
        &env,
        &["--manifests", dir.to_str().unwrap(), "--resync", "1s"],
    );
    wait_for("the new file synced", T, || {
        (env.run(&["get", "task", "other"]).code == 0).then_some(())
    });
    let t = get(&env, "task", "fix");
    assert_eq!(t["metadata"]["labels"]["down"], "yes", "{t}");
    assert!(
        t["metadata"]["annotations"]["claude-failover.io/cancel"].is_string(),
        "{t}"
    );
    let y = env.ok(&["get", "task", "fix", "-o", "yaml", "--show-managed-fields"]);
    assert!(
        y.contains("manager: claude-failover-sync") && y.contains("manager: claude-failover-label"),
        "{y}"
    );
}

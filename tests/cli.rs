//! Every verb of the command line, through the real binary.

mod common;
use claude_failover::api::{Kind, ObjectKey};
use claude_failover::store::Store;
use common::*;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::process::Stdio;

fn ex() -> String {
    examples().to_str().unwrap().to_string()
}

#[test]
fn apply_reports_created_unchanged_configured() {
    let env = Env::new();
    let out = env.ok(&["apply", "-f", &ex()]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 8, "{out}");
    assert_eq!(lines[0], "account.claude-failover.io/work created");
    assert!(lines.contains(&"session.claude-failover.io/ccl-0 created"));
    assert!(lines.contains(&"task.claude-failover.io/fix-login created"));
    let again = env.ok(&["apply", "-f", &ex()]);
    assert!(again.lines().all(|l| l.ends_with(" unchanged")), "{again}");
    let f = env.write("s.yaml", &session_yaml("ccl-0", "  account: personal\n"));
    assert_eq!(
        env.ok(&["apply", "-f", f.to_str().unwrap()]),
        "session.claude-failover.io/ccl-0 configured\n"
    );
    let v: Value =
        serde_json::from_str(&env.ok(&["get", "session", "ccl-0", "-o", "json"])).unwrap();
    assert_eq!(v["spec"]["account"], "personal");
    assert_eq!(v["metadata"]["generation"], 2);
}

#[test]
fn dry_run_and_stdin() {
    let env = Env::new();
    let f = env.write("first.yaml", &session_yaml("first", ""));
    env.ok(&["apply", "-f", f.to_str().unwrap()]);
    let before = snapshot(&env.store());
    let out = env.ok(&["apply", "--dry-run", "-f", &ex()]);
    assert!(
        out.lines().all(|l| l.ends_with(" created (dry run)")),
        "{out}"
    );
    assert!(before == snapshot(&env.store()));
    let out = env.run_stdin(&["apply", "-f", "-"], &session_yaml("from-stdin", ""));
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        out.stdout,
        "session.claude-failover.io/from-stdin created\n"
    );
}

#[test]
fn apply_recursive_only_with_dash_r() {
    let env = Env::new();
    env.write("tree/top.yaml", &session_yaml("top", ""));
    env.write("tree/nested/deep.yml", &session_yaml("deep", ""));
    env.write("tree/notes.txt", "not a manifest");
    let tree = env.path("tree");
    let out = env.ok(&["apply", "-f", tree.to_str().unwrap()]);
    assert_eq!(out, "session.claude-failover.io/top created\n");
    let out = env.ok(&["apply", "-R", "-f", tree.to_str().unwrap()]);
    assert!(
        out.contains("session.claude-failover.io/deep created"),
        "{out}"
    );
}

#[test]
fn get_tables_formats_and_selectors() {
    let env = Env::new();
    env.ok(&["apply", "-f", &ex()]);
    let t = env.ok(&["get", "sessions"]);
    let mut lines = t.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["NAME", "PHASE", "ACCOUNT", "TASK", "RESTARTS", "AGE"]
    );
    assert_eq!(
        lines
            .map(|l| l.split_whitespace().next().unwrap())
            .collect::<Vec<_>>(),
        ["ccl-0", "ccl-1", "ccl-2"]
    );
    let wide = env.ok(&["get", "sess", "-o", "wide"]);
    assert!(wide.lines().next().unwrap().contains("WORKDIR"));
    assert!(
        wide.contains("~/code/web") && wide.contains("project=web"),
        "{wide}"
    );
    // selectors
    let names = env.ok(&["get", "sessions", "-l", "project=api", "-o", "name"]);
    assert_eq!(
        names,
        "session.claude-failover.io/ccl-0\nsession.claude-failover.io/ccl-1\n"
    );
    let names = env.ok(&["get", "sessions", "-l", "project notin (api)", "-o", "name"]);
    assert_eq!(names, "session.claude-failover.io/ccl-2\n");
    // yaml of one object round-trips through apply unchanged
    let y = env.ok(&["get", "task", "fix-login", "-o", "yaml"]);
    assert!(
        y.starts_with("apiVersion: claude-failover.io/v1alpha1\nkind: Task\n"),
        "{y}"
    );
    let out = env.run_stdin(&["apply", "-f", "-"], &y);
    assert_eq!(
        out.stdout, "task.claude-failover.io/fix-login unchanged\n",
        "{}",
        out.stderr
    );
    // json list
    let list: Value = serde_json::from_str(&env.ok(&["get", "accounts", "-o", "json"])).unwrap();
    assert_eq!(list["kind"], "List");
    assert_eq!(list["items"].as_array().unwrap().len(), 2);
    // get all prints a table per kind
    let all = env.ok(&["get", "all"]);
    assert_eq!(all.matches("NAME ").count(), 3, "{all}");
    // missing objects: exit 1 on stderr
    let out = env.run(&["get", "session", "nope"]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr
            .contains("session.claude-failover.io \"nope\" not found"),
        "{}",
        out.stderr
    );
    let out = env.run(&["get", "widgets"]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr
            .contains("doesn't have a resource type \"widgets\""),
        "{}",
        out.stderr
    );
}

#[test]
fn namespaces() {
    let env = Env::new();
    env.ok(&["apply", "-f", &ex()]);
    let f = env.write("other.yaml", &session_yaml("ccl-0", ""));
    env.ok(&["-n", "team-b", "apply", "-f", f.to_str().unwrap()]);
    let out = env.run(&["get", "sessions", "-n", "empty-ns"]);
    assert_eq!(out.code, 0);
    assert!(
        out.stderr
            .contains("No resources found in empty-ns namespace."),
        "{}",
        out.stderr
    );
    let all = env.ok(&["get", "sessions", "-A"]);
    assert!(all.starts_with("NAMESPACE"), "{all}");
    assert_eq!(
        all.lines().filter(|l| l.starts_with("team-b ")).count(),
        1,
        "{all}"
    );
    assert_eq!(all.lines().count(), 5);
    // a manifest that names another namespace than -n is refused
    let g = env.write(
        "ns.yaml",
        &session_yaml("x", "").replace("  name: x\n", "  name: x\n  namespace: team-c\n"),
    );
    let out = env.run(&["-n", "team-b", "apply", "-f", g.to_str().unwrap()]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr
            .contains("metadata.namespace: the object's namespace `team-c` does not match"),
        "{}",
        out.stderr
    );
}

#[test]
fn describe_shows_spec_status_conditions_and_events() {
    let env = Env::new();
    env.ok(&["apply", "-f", &ex()]);
    let store = Store::open(env.store()).unwrap();
    let key = ObjectKey::new(Kind::Session, "default", "ccl-0");
    store
        .write_status(
            &key,
            &json!({"phase": "Idle", "account": "work", "conditions": [
                {"type": "Ready", "status": "True", "reason": "AgentIdle", "message": "waiting at the prompt",
                 "lastTransitionTime": "2026-01-01T00:00:00Z"}]}),
            None,
        )
        .unwrap();
    store
        .record_event(
            &key,
            false,
            "Started",
            "agent launched in pane %3",
            "session",
        )
        .unwrap();
    store
        .record_event(
            &key,
            false,
            "Started",
            "agent launched in pane %3",
            "session",
        )
        .unwrap();
    let d = env.ok(&["describe", "session", "ccl-0"]);
    for want in [
        "Name:         ccl-0",
        "Namespace:    default",
        "Labels:       project=api",
        "Spec:\n  account: work",
        "Status:\n  account: work\n  phase: Idle",
        "Ready   True     AgentIdle",
        "waiting at the prompt",
        "Normal   Started",
        "(x2)",
        "agent launched in pane %3",
    ] {
        assert!(d.contains(want), "describe lacks {want:?}:\n{d}");
    }
    let out = env.run(&["describe", "task", "nope"]);
    assert_eq!(out.code, 1);
}

#[test]
fn delete_by_name_file_and_all() {
    let env = Env::new();
    env.ok(&["apply", "-f", &ex()]);
    assert_eq!(
        env.ok(&["delete", "task", "fix-login"]),
        "task.claude-failover.io \"fix-login\" deleted\n"
    );
    let out = env.run(&["delete", "task", "fix-login"]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("not found"), "{}", out.stderr);
    assert_eq!(
        env.run(&["delete", "task", "fix-login", "--ignore-not-found"])
            .code,
        0
    );
    let sessions = examples().join("sessions.yaml");
    let out = env.ok(&["delete", "-f", sessions.to_str().unwrap()]);
    assert_eq!(out.lines().count(), 3, "{out}");
    assert_eq!(env.ok(&["get", "sessions", "-o", "name"]), "");
    let out = env.ok(&["delete", "tasks", "--all"]);
    assert_eq!(out.lines().count(), 2, "{out}");
    assert_eq!(
        env.ok(&["get", "accounts", "-o", "name"]).lines().count(),
        2
    );
}

#[test]
fn diff_exit_codes() {
    let env = Env::new();
    let out = env.run(&["diff", "-f", &ex()]);
    assert_eq!(out.code, 1, "new objects are differences");
    env.ok(&["apply", "-f", &ex()]);
    let out = env.run(&["diff", "-f", &ex()]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert_eq!(out.stdout, "");
    let f = env.write("s.yaml", &session_yaml("ccl-0", ""));
    let out = env.run(&["diff", "-f", f.to_str().unwrap()]);
    assert_eq!(out.code, 1);
    assert!(
        out.stdout.contains("--- live/Session/default/ccl-0"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("-  workdir: ~/code/api")
            && out.stdout.contains("+  workdir: /tmp/ccl-0"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("-  labels:"), "{}", out.stdout);
    let out = env.run(&["diff", "-f", "/nonexistent.yaml"]);
    assert_eq!(out.code, 2);
}

#[test]
fn wait_for_condition_and_delete() {
    let env = Env::new();
    env.ok(&["apply", "-f", &ex()]);
    let store = Store::open(env.store()).unwrap();
    let key = ObjectKey::new(Kind::Session, "default", "ccl-1");
    let mut child = env
        .cmd(&[
            "wait",
            "session",
            "ccl-1",
            "--for=condition=Ready",
            "--timeout=60s",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Not ready yet: a False condition must not satisfy the wait.
    let cond = |s: &str| json!({"conditions": [{"type": "Ready", "status": s, "reason": "R", "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}]});
    store.write_status(&key, &cond("False"), None).unwrap();
    store.write_status(&key, &cond("True"), None).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success());
    let mut out = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut out).unwrap();
    assert_eq!(out, "session.claude-failover.io/ccl-1 condition met\n");

    let out = env.run(&[
        "wait",
        "sessions/ccl-0",
        "--for=condition=Ready",
        "--timeout=300ms",
    ]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr
            .contains("timed out waiting for the condition on sessions/ccl-0"),
        "{}",
        out.stderr
    );

    let child = env
        .cmd(&["wait", "task", "fix-login", "--for=delete", "--timeout=60s"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    env.ok(&["delete", "task", "fix-login"]);
    assert!(child.wait_with_output().unwrap().status.success());
}

#[test]
fn get_watch_prints_changes() {
    let env = Env::new();
    env.ok(&["apply", "-f", &ex()]);
    let mut child = env
        .cmd(&["get", "tasks", "-w"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next = || lines.next().unwrap().unwrap();
    assert!(next().starts_with("NAME"));
    let initial: Vec<String> = (0..3).map(|_| next()).collect();
    assert!(initial[0].starts_with("fix-login"), "{initial:?}");
    let store = Store::open(env.store()).unwrap();
    store
        .write_status(
            &ObjectKey::new(Kind::Task, "default", "update-deps"),
            &json!({"phase": "Running", "session": "ccl-2"}),
            None,
        )
        .unwrap();
    let changed = next();
    assert!(
        changed.starts_with("update-deps")
            && changed.contains("Running")
            && changed.contains("ccl-2"),
        "{changed}"
    );
    env.ok(&["delete", "task", "write-changelog"]);
    let deleted = next();
    assert!(
        deleted.starts_with("write-changelog") && deleted.contains("Deleted"),
        "{deleted}"
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn init_scaffolds_a_working_setup() {
    let env = Env::new();
    let out = env.cmd(&["init"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let config = env.path("config/claude-failover/config.yaml");
    let manifests = env.path("config/claude-failover/manifests");
    assert!(config.exists() && manifests.join("sessions.yaml").exists());
    env.ok(&["apply", "-f", manifests.to_str().unwrap()]);
    assert_eq!(
        env.ok(&["get", "sessions", "-o", "name"]).lines().count(),
        3
    );
    // the config it wrote is valid and is used (namespace, store)
    let o = env.cmd(&["init"]).output().unwrap();
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("kept"),
        "init must not overwrite"
    );
}

#[test]
fn config_file_sets_store_and_namespace_and_bad_config_is_located() {
    let env = Env::new();
    let store = env.path("elsewhere");
    let cfg = env.write(
        "c.yaml",
        &format!("store: {}\nnamespace: team-z\n", store.display()),
    );
    let mut c = std::process::Command::new(BIN);
    c.args(["--config", cfg.to_str().unwrap(), "apply", "-f"])
        .arg(examples().join("accounts.yaml"));
    c.env("HOME", env.dir.path())
        .env_remove("CLAUDE_FAILOVER_STORE");
    assert!(c.output().unwrap().status.success());
    assert!(store.join("accounts/team-z/work.json").exists());
    let bad = env.write("bad.yaml", "store: /x\nnamspace: y\n");
    let out = std::process::Command::new(BIN)
        .args(["--config", bad.to_str().unwrap(), "get", "sessions"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "{}:2:1: namspace: unknown field `namspace`",
            bad.display()
        )),
        "{err}"
    );
}

#[test]
fn crds_version_completion_help() {
    let env = Env::new();
    let crds = env.ok(&["crds"]);
    assert_eq!(
        crds.matches("kind: CustomResourceDefinition").count(),
        Kind::ALL.len()
    );
    for want in [
        "name: sessions.claude-failover.io",
        "- sess",
        "- acct",
        "- tsk",
        "subresources:\n      status: {}",
        "additionalPrinterColumns",
    ] {
        assert!(crds.contains(want), "crds lack {want:?}");
    }
    assert!(env.ok(&["version"]).starts_with("claude-failover "));
    assert!(env.ok(&["completion", "bash"]).contains("claude-failover"));
    let help = env.ok(&["apply", "--help"]);
    assert!(
        help.contains("--dry-run") && help.contains("-R, --recursive"),
        "{help}"
    );
}

//! kubectl's habits through the real binary: output formats checked against
//! the real kubectl reading the same objects (a minimal Kubernetes API on
//! 127.0.0.1 serves the store), and the verbs a kubectl user reaches for.

mod common;
#[path = "common/kube_api.rs"]
mod kube_api;

use claude_failover::api::{Kind, ObjectKey};
use claude_failover::store::Store;
use common::*;
use serde_json::{Value, json};

fn ex() -> String {
    examples().to_str().unwrap().to_string()
}

/// The example pool with statuses that exercise the printers: floats
/// (whole and not), integers, conditions, timestamps.
fn pool() -> Env {
    let env = Env::new();
    env.ok(&["apply", "-f", &ex()]);
    let store = Store::open(env.store()).unwrap();
    let cond = |t: &str, s: &str| json!({"type": t, "status": s, "reason": "R", "message": "m", "lastTransitionTime": "2026-01-01T00:00:00Z"});
    store
        .write_status(
            &ObjectKey::new(Kind::Account, "default", "work"),
            &json!({"phase": "NearLimit", "sessions": 2, "usage": {
                "fiveHour": {"utilization": 90.0, "source": "statusline", "observedAt": "2026-01-01T00:00:00Z", "resetsAt": "2026-01-01T05:00:00Z"},
                "sevenDay": {"utilization": 42.5, "source": "poll", "observedAt": "2026-01-01T00:00:00Z"}}}),
            None,
        )
        .unwrap();
    for (name, phase, attempts) in [("fix-login", "Running", 1), ("update-deps", "Succeeded", 2)] {
        store
            .write_status(
                &ObjectKey::new(Kind::Task, "default", name),
                &json!({"phase": phase, "session": "ccl-0", "attempts": attempts,
                    "conditions": [cond("Complete", if phase == "Succeeded" { "True" } else { "False" })]}),
                None,
            )
            .unwrap();
    }
    store
        .write_status(
            &ObjectKey::new(Kind::Session, "default", "ccl-0"),
            &json!({"phase": "Idle", "account": "work", "restarts": 3,
                "conditions": [cond("Ready", "True"), cond("AgentAlive", "True")]}),
            None,
        )
        .unwrap();
    env
}

#[test]
#[cfg_attr(not(kubectl), ignore = "needs kubectl (the reference): see .ci/run")]
fn jsonpath_custom_columns_and_sort_by_print_what_kubectl_prints() {
    let k = program("kubectl");
    let env = pool();
    let api = kube_api::KubeApi::start(&env.store());
    let cases: Vec<Vec<&str>> = vec![
        vec![
            "get",
            "tasks",
            "-o",
            r#"jsonpath={range .items[*]}{.metadata.name}{"\t"}{.spec.priority}{"\t"}{.status.phase}{"\n"}{end}"#,
        ],
        vec!["get", "tasks", "-o", "jsonpath={.items[*].metadata.name}"],
        vec!["get", "tasks", "-o", "jsonpath={.items[*].status.attempts}"],
        vec![
            "get",
            "tasks",
            "-o",
            r#"jsonpath={.items[?(@.spec.priority=="critical")].metadata.name}"#,
        ],
        vec![
            "get",
            "tasks",
            "-o",
            r#"jsonpath={range .items[*]}{.metadata.name}={.status.conditions[?(@.type=="Complete")].status}{"\n"}{end}"#,
        ],
        vec!["get", "sessions", "-o", "jsonpath={.items[2].spec.agent}"],
        vec![
            "get",
            "sessions",
            "-o",
            "jsonpath={.items[0].spec.agent.model}{.items[-1].metadata.labels}",
        ],
        vec![
            "get",
            "account",
            "work",
            "-o",
            "jsonpath={.status.usage.fiveHour.utilization} {.status.usage.sevenDay.utilization} {.spec.thresholds}",
        ],
        vec![
            "get",
            "account",
            "work",
            "-o",
            "jsonpath={$.kind}/{.metadata.name}: {.status.usage.*.source}",
        ],
        vec![
            "get",
            "session",
            "ccl-0",
            "-o",
            r#"jsonpath={range .status.conditions[*]}{.type}{"="}{.status}{" "}{end}"#,
        ],
        vec![
            "get",
            "sessions",
            "-o",
            "jsonpath-as-json={.items[*].spec.workdir}",
        ],
        vec![
            "get",
            "accounts",
            "-o",
            "custom-columns=NAME:.metadata.name,PHASE:.status.phase,5H:.status.usage.fiveHour.utilization,7D:.status.usage.sevenDay.utilization,THRESHOLDS:.spec.thresholds,LABELS:.metadata.labels",
        ],
        vec![
            "get",
            "sessions",
            "-o",
            "custom-columns=NAME:metadata.name,MODEL:{.spec.agent.model},ARGS:.spec.agent.args,CONDITIONS:.status.conditions[*].type",
            "--sort-by=.spec.workdir",
        ],
        vec![
            "get",
            "tasks",
            "-o",
            "custom-columns=NAME:.metadata.name,PRIORITY:.spec.priority",
            "--sort-by={.spec.priority}",
        ],
        vec![
            "get",
            "tasks",
            "-o",
            "custom-columns=NAME:.metadata.name,ATTEMPTS:.status.attempts",
            "--sort-by=.status.attempts",
            "--no-headers",
        ],
        vec!["get", "tasks", "-o", "name", "--sort-by=.metadata.name"],
        vec![
            "get",
            "sessions",
            "-o",
            "jsonpath={.items[*].metadata.name}",
            "--sort-by=.spec.account",
        ],
    ];
    for args in cases {
        let (ok, want, err) = api.kubectl(&k, &args);
        assert!(ok, "kubectl {args:?} failed: {err}");
        let got = env.run(&args);
        assert_eq!(got.code, 0, "claude-failover {args:?}: {}", got.stderr);
        assert_eq!(
            got.stdout, want,
            "claude-failover {args:?} differs from kubectl"
        );
    }
    // A custom-columns file, as kubectl reads one.
    let f = env.write(
        "cols.txt",
        "NAME          WORKDIR\n.metadata.name .spec.workdir\n",
    );
    let spec = format!("custom-columns-file={}", f.display());
    let args = ["get", "sessions", "-o", spec.as_str()];
    let (ok, want, err) = api.kubectl(&k, &args);
    assert!(ok, "{err}");
    assert_eq!(env.ok(&args), want);
}

#[test]
fn resource_arguments_selectors_and_columns() {
    let env = pool();
    // KIND/NAME and lists of kinds; names qualified when kinds mix.
    assert_eq!(
        env.ok(&["get", "session/ccl-0", "task/fix-login", "-o", "name"]),
        "session.claude-failover.io/ccl-0\ntask.claude-failover.io/fix-login\n"
    );
    let t = env.ok(&["get", "sessions,tasks"]);
    assert!(
        t.contains("session.claude-failover.io/ccl-1")
            && t.contains("task.claude-failover.io/update-deps"),
        "{t}"
    );
    let out = env.run(&["get", "session", "session/ccl-0"]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("resource/name form"), "{}", out.stderr);
    // did you mean
    let out = env.run(&["get", "sesions"]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("did you mean \"sessions\"?"),
        "{}",
        out.stderr
    );
    // --field-selector on the fields that matter
    assert_eq!(
        env.ok(&[
            "get",
            "tasks",
            "--field-selector",
            "status.phase=Running",
            "-o",
            "name"
        ]),
        "task.claude-failover.io/fix-login\n"
    );
    assert_eq!(
        env.ok(&[
            "get",
            "sessions",
            "--field-selector",
            "spec.account=work,metadata.name!=ccl-1",
            "-o",
            "name"
        ]),
        "session.claude-failover.io/ccl-0\n"
    );
    assert_eq!(
        env.ok(&[
            "get",
            "tasks",
            "--field-selector",
            "status.session=ccl-0",
            "-o",
            "name"
        ])
        .lines()
        .count(),
        2
    );
    let out = env.run(&["get", "tasks", "--field-selector", "status.nope=x"]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr
            .contains("field label not supported for tasks: status.nope"),
        "{}",
        out.stderr
    );
    // --show-labels and -L
    let t = env.ok(&["get", "accounts", "--show-labels", "-L", "plan"]);
    let header: Vec<&str> = t.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header[header.len() - 2..], ["PLAN", "LABELS"]);
    let work: Vec<&str> = t
        .lines()
        .find(|l| l.starts_with("work "))
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(work[work.len() - 2..], ["max", "plan=max"], "{t}");
    // --sort-by on a table: by priority (critical, low, normal)
    let t = env.ok(&["get", "tasks", "--sort-by=.spec.priority", "--no-headers"]);
    let names: Vec<&str> = t
        .lines()
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(names, ["fix-login", "write-changelog", "update-deps"]);
    // describe KIND without names: every object of the kind
    let d = env.ok(&["describe", "accounts"]);
    assert_eq!(d.matches("Name:         ").count(), 2, "{d}");
    let d = env.ok(&["describe", "sessions", "-l", "project=web"]);
    assert!(
        d.contains("Name:         ccl-2") && !d.contains("ccl-0"),
        "{d}"
    );
    // managed fields stay out of yaml unless asked for
    let y = env.ok(&["get", "task", "fix-login", "-o", "yaml"]);
    assert!(!y.contains("managedFields"), "{y}");
    let y = env.ok(&[
        "get",
        "task",
        "fix-login",
        "-o",
        "yaml",
        "--show-managed-fields",
    ]);
    assert!(
        y.contains("managedFields") && y.contains("manager: claude-failover"),
        "{y}"
    );
}

#[test]
fn get_json_applies_back_and_lists_are_manifests() {
    let env = pool();
    // The whole list, as `get` prints it, applies back unchanged.
    let all = env.ok(&["get", "all", "-o", "json"]);
    let out = env.run_stdin(&["apply", "-f", "-"], &all);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout.lines().count(), 8, "{}", out.stdout);
    assert!(
        out.stdout.lines().all(|l| l.ends_with(" unchanged")),
        "{}",
        out.stdout
    );
    let yaml = env.ok(&["get", "sessions", "-o", "yaml"]);
    let changed = yaml.replace("model: opus", "model: haiku");
    let out = env.run_stdin(&["apply", "-f", "-"], &changed);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout
            .contains("session.claude-failover.io/ccl-2 configured"),
        "{}",
        out.stdout
    );
    // A bad item in a List is named by its place.
    let bad = json!({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "claude-failover.io/v1alpha1", "kind": "Task", "metadata": {"name": "ok"}, "spec": {"prompt": "p"}},
        {"apiVersion": "claude-failover.io/v1alpha1", "kind": "Task", "metadata": {"name": "bad"}, "spec": {"prompt": "p", "prio": "x"}}]});
    let out = env.run_stdin(
        &["apply", "-f", "-"],
        &serde_json::to_string_pretty(&bad).unwrap(),
    );
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("items[1].spec.prio: unknown field"),
        "{}",
        out.stderr
    );
    assert!(env.run(&["get", "task", "ok"]).code == 1, "all or nothing");
}

#[test]
fn dry_runs_client_and_server() {
    let env = pool();
    let before = snapshot(&env.store());
    let f = env.write(
        "t.yaml",
        &format!("{HEAD}kind: Task\nmetadata:\n  name: fix-login\nspec:\n  prompt: other\n"),
    );
    let f = f.to_str().unwrap();
    assert_eq!(
        env.ok(&["apply", "-f", f, "--dry-run=client"]),
        "task.claude-failover.io/fix-login configured (dry run)\n"
    );
    assert_eq!(
        env.ok(&["apply", "-f", f, "--dry-run=server"]),
        "task.claude-failover.io/fix-login configured (server dry run)\n"
    );
    assert_eq!(
        env.ok(&["delete", "task", "fix-login", "--dry-run=server"]),
        "task.claude-failover.io \"fix-login\" deleted (server dry run)\n"
    );
    assert_eq!(
        env.ok(&["label", "task", "fix-login", "a=b", "--dry-run"]),
        "task.claude-failover.io/fix-login labeled (dry run)\n"
    );
    assert_eq!(
        env.ok(&[
            "patch",
            "task",
            "fix-login",
            "-p",
            r#"{"spec":{"priority":"low"}}"#,
            "--dry-run=server"
        ]),
        "task.claude-failover.io/fix-login patched (server dry run)\n"
    );
    assert!(
        before == snapshot(&env.store()),
        "a dry run wrote to the store"
    );
    let out = env.run(&["apply", "-f", f, "--dry-run=sometimes"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
}

#[test]
fn create_label_annotate_patch() {
    let env = pool();
    // create task
    assert_eq!(
        env.ok(&[
            "create",
            "task",
            "hello",
            "--prompt",
            "say hello",
            "--priority",
            "high",
            "--session-selector",
            "project=api"
        ]),
        "task.claude-failover.io/hello created\n"
    );
    let v: Value = serde_json::from_str(&env.ok(&["get", "task", "hello", "-o", "json"])).unwrap();
    assert_eq!(v["spec"]["prompt"], "say hello");
    assert_eq!(
        v["spec"]["sessionSelector"]["matchLabels"]["project"],
        "api"
    );
    let out = env.run(&["create", "task", "hello", "--prompt", "again"]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("already exists"), "{}", out.stderr);
    let out = env.run(&["create", "task", "Bad_Name", "--prompt", "x"]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("metadata.name"), "{}", out.stderr);
    let f = env.write("new.yaml", &session_yaml("ccl-9", ""));
    assert_eq!(
        env.ok(&["create", "-f", f.to_str().unwrap()]),
        "session.claude-failover.io/ccl-9 created\n"
    );
    // label: set, refuse to overwrite, overwrite, remove
    assert_eq!(
        env.ok(&["label", "sessions", "ccl-0", "ccl-1", "tier=gold"])
            .lines()
            .count(),
        2
    );
    let out = env.run(&["label", "session", "ccl-0", "tier=silver"]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr
            .contains("'tier' already has a value (gold), and --overwrite is false"),
        "{}",
        out.stderr
    );
    assert_eq!(
        env.ok(&["label", "session/ccl-0", "tier=silver", "--overwrite"]),
        "session.claude-failover.io/ccl-0 labeled\n"
    );
    assert_eq!(
        env.ok(&["label", "session", "ccl-1", "tier-"]),
        "session.claude-failover.io/ccl-1 unlabeled\n"
    );
    assert_eq!(
        env.ok(&["get", "sessions", "-l", "tier", "-o", "name"]),
        "session.claude-failover.io/ccl-0\n"
    );
    assert_eq!(
        env.ok(&[
            "label",
            "sessions",
            "--all",
            "-l",
            "project=web",
            "team=web"
        ]),
        "session.claude-failover.io/ccl-2 labeled\n"
    );
    let l = env.ok(&["label", "session", "ccl-0", "--list"]);
    assert!(
        l.contains(" project=api") && l.contains(" tier=silver"),
        "{l}"
    );
    // annotate takes any text
    env.ok(&["annotate", "task", "hello", "note=ask about the deadline"]);
    let v: Value = serde_json::from_str(&env.ok(&["get", "task", "hello", "-o", "json"])).unwrap();
    assert_eq!(
        v["metadata"]["annotations"]["note"],
        "ask about the deadline"
    );
    // patch: merge, JSON patch, validation, status
    assert_eq!(
        env.ok(&[
            "patch",
            "task",
            "hello",
            "-p",
            r#"{"spec":{"priority":"low","model":"haiku"}}"#
        ]),
        "task.claude-failover.io/hello patched\n"
    );
    env.ok(&["patch", "task", "hello", "--type", "json", "-p", r#"[{"op":"replace","path":"/spec/priority","value":"critical"},{"op":"remove","path":"/spec/model"}]"#]);
    let v: Value = serde_json::from_str(&env.ok(&["get", "task", "hello", "-o", "json"])).unwrap();
    assert_eq!(v["spec"]["priority"], "critical");
    assert!(v["spec"].get("model").is_none());
    assert_eq!(v["metadata"]["generation"], 3);
    let out = env.run(&[
        "patch",
        "task",
        "hello",
        "-p",
        r#"{"spec":{"priority":"urgent"}}"#,
    ]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("spec.priority"), "{}", out.stderr);
    let out = env.run(&[
        "patch",
        "task",
        "hello",
        "-p",
        r#"{"metadata":{"name":"other"}}"#,
    ]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("metadata.name cannot be changed"),
        "{}",
        out.stderr
    );
    let out = env.run(&["patch", "task", "hello", "--type", "strategic", "-p", "{}"]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("--type merge"), "{}", out.stderr);
    env.ok(&[
        "patch",
        "task",
        "hello",
        "--subresource",
        "status",
        "-p",
        r#"{"status":{"phase":"Failed","message":"by hand"}}"#,
    ]);
    let v: Value = serde_json::from_str(&env.ok(&["get", "task", "hello", "-o", "json"])).unwrap();
    assert_eq!(v["status"]["phase"], "Failed");
    // who set what
    let y = env.ok(&[
        "get",
        "session",
        "ccl-0",
        "-o",
        "yaml",
        "--show-managed-fields",
    ]);
    assert!(y.contains("manager: claude-failover-label"), "{y}");
}

#[test]
fn edit_in_an_editor_and_again_after_a_bad_edit() {
    let env = pool();
    // A non-interactive editor: a script that edits the file in place.
    let script = env.script(
        "editor.sh",
        "#!/bin/sh\nn=$(cat \"$COUNT\" 2>/dev/null || echo 0); n=$((n+1)); echo $n > \"$COUNT\"\n\
         case \"$MODE-$n\" in\n\
         ok-1) sed -i 's/priority: critical/priority: high/' \"$1\" ;;\n\
         fix-1) sed -i 's/priority: critical/priority: urgent/' \"$1\" ;;\n\
         fix-2) grep -q 'not a valid\\|unknown variant' \"$1\" && sed -i 's/priority: urgent/priority: low/' \"$1\" ;;\n\
         give-up-1) sed -i 's/priority: critical/priority: urgent/' \"$1\" ;;\n\
         esac\n",
    );
    let run = |mode: &str| {
        let count = env.path(&format!("count-{mode}"));
        Out::from(
            env.cmd(&["edit", "task", "fix-login"])
                .env("KUBE_EDITOR", &script)
                .env("COUNT", &count)
                .env("MODE", mode)
                .output()
                .unwrap(),
        )
    };
    let prio = || {
        let v: Value =
            serde_json::from_str(&env.ok(&["get", "task", "fix-login", "-o", "json"])).unwrap();
        v["spec"]["priority"].as_str().unwrap().to_string()
    };
    let o = run("ok");
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(o.stdout, "task.claude-failover.io/fix-login edited\n");
    assert_eq!(prio(), "high");
    // A bad edit re-opens the file with the problem; the second edit fixes it.
    env.ok(&[
        "patch",
        "task",
        "fix-login",
        "-p",
        r#"{"spec":{"priority":"critical"}}"#,
    ]);
    let o = run("fix");
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(
        std::fs::read_to_string(env.path("count-fix"))
            .unwrap()
            .trim(),
        "2"
    );
    assert_eq!(prio(), "low");
    // Saved again unchanged after a problem: cancelled, a copy kept, exit 1.
    env.ok(&[
        "patch",
        "task",
        "fix-login",
        "-p",
        r#"{"spec":{"priority":"critical"}}"#,
    ]);
    let o = run("give-up");
    assert_eq!(o.code, 1);
    assert!(
        o.stderr
            .contains("Edit cancelled, no valid changes were saved"),
        "{}",
        o.stderr
    );
    assert_eq!(prio(), "critical");
    // Nothing changed at all.
    let o = run("none");
    assert_eq!(o.stdout, "Edit cancelled, no changes made.\n");
}

#[test]
fn api_resources_explain_events() {
    let env = pool();
    let t = env.ok(&["api-resources"]);
    let rows: Vec<Vec<&str>> = t.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(
        rows[0],
        ["NAME", "SHORTNAMES", "APIVERSION", "NAMESPACED", "KIND"],
        "{t}"
    );
    assert!(
        rows.contains(&vec![
            "sessions",
            "sess",
            "claude-failover.io/v1alpha1",
            "true",
            "Session"
        ]),
        "{t}"
    );
    assert!(
        rows.contains(&vec![
            "manifestsyncs",
            "msync",
            "claude-failover.io/v1alpha1",
            "true",
            "ManifestSync"
        ]),
        "{t}"
    );
    assert_eq!(
        env.ok(&["api-resources", "-o", "name"]).lines().count(),
        Kind::ALL.len()
    );
    let e = env.ok(&["explain", "task.spec.priority"]);
    assert!(
        e.contains("FIELD: priority <string>") && e.contains("critical"),
        "{e}"
    );
    let e = env.ok(&["explain", "sessions", "--recursive"]);
    assert!(e.contains("      env\t<map[string]Object>"), "{e}");
    let out = env.run(&["explain", "task.spec.nope"]);
    assert_eq!(out.code, 1);
    // events: the apply recorded none; a store event shows with its object.
    let store = Store::open(env.store()).unwrap();
    let key = ObjectKey::new(Kind::Task, "default", "fix-login");
    store
        .record_event(
            &key,
            true,
            "Requeued",
            "the agent exited",
            "task-controller",
        )
        .unwrap();
    store
        .record_event(
            &ObjectKey::new(Kind::Session, "default", "ccl-0"),
            false,
            "Started",
            "agent launched",
            "session",
        )
        .unwrap();
    let t = env.ok(&["events"]);
    let rows: Vec<Vec<&str>> = t.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(
        rows[0],
        ["LAST", "SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"],
        "{t}"
    );
    assert!(
        rows.iter().any(|r| r[1..]
            == [
                "Warning",
                "Requeued",
                "Task/fix-login",
                "the",
                "agent",
                "exited"
            ]),
        "{t}"
    );
    assert!(
        rows.iter()
            .any(|r| r[1..] == ["Normal", "Started", "Session/ccl-0", "agent", "launched"]),
        "{t}"
    );
    assert_eq!(
        env.ok(&["events", "--for", "task/fix-login"])
            .lines()
            .count(),
        2
    );
    assert_eq!(
        env.ok(&["events", "--types", "Normal", "--no-headers"])
            .lines()
            .count(),
        1
    );
    let j: Value = serde_json::from_str(&env.ok(&["events", "-o", "json"])).unwrap();
    let task = j["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["reason"] == "Requeued")
        .unwrap();
    assert_eq!(
        task["involvedObject"],
        json!({"apiVersion": "claude-failover.io/v1alpha1", "kind": "Task", "namespace": "default", "name": "fix-login"})
    );
}

#[test]
fn apply_prune_and_kustomize() {
    let env = Env::new();
    env.write(
        "k/base/sessions.yaml",
        &format!("{}---\n{}", session_yaml("a", ""), session_yaml("b", "")),
    );
    env.write("k/base/kustomization.yaml", "resources:\n- sessions.yaml\n");
    env.write(
        "k/prod/kustomization.yaml",
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nnamespace: prod\nnamePrefix: p-\ncommonLabels:\n  env: prod\ncommonAnnotations:\n  owner: team-x\nresources:\n- ../base\n- task.yaml\n",
    );
    env.write(
        "k/prod/task.yaml",
        &format!("{HEAD}kind: Task\nmetadata:\n  name: t\nspec:\n  prompt: hi\n"),
    );
    let prod = env.path("k/prod");
    let out = env.ok(&["apply", "-k", prod.to_str().unwrap()]);
    assert_eq!(
        out,
        "session.claude-failover.io/p-a created\nsession.claude-failover.io/p-b created\ntask.claude-failover.io/p-t created\n"
    );
    let v: Value =
        serde_json::from_str(&env.ok(&["-n", "prod", "get", "session", "p-a", "-o", "json"]))
            .unwrap();
    assert_eq!(v["metadata"]["labels"]["env"], "prod");
    assert_eq!(v["metadata"]["annotations"]["owner"], "team-x");
    // diff -k and delete -k
    assert_eq!(env.run(&["diff", "-k", prod.to_str().unwrap()]).code, 0);
    // Unsupported kustomize features are named, with the way around.
    env.write(
        "k/bad/kustomization.yaml",
        "resources: []\npatches:\n- path: x.yaml\n",
    );
    let out = env.run(&["apply", "-k", env.path("k/bad").to_str().unwrap()]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr
            .contains("kustomization.yaml:2:1: patches: kustomize's `patches` is not supported"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("kustomize build"), "{}", out.stderr);
    // --prune: objects this manager applied before and the manifests no
    // longer declare go; others (another manager's, opted out) stay.
    let dir = env.path("app");
    env.write(
        "app/s.yaml",
        &format!(
            "{}---\n{}---\n{}",
            session_yaml("x", ""),
            session_yaml("y", ""),
            session_yaml("z", "")
        ),
    );
    env.ok(&["apply", "-f", dir.to_str().unwrap()]);
    env.ok(&["create", "task", "by-create", "--prompt", "p"]);
    env.ok(&[
        "annotate",
        "session",
        "z",
        "claude-failover.io/prune=disabled",
    ]);
    env.write("app/s.yaml", &session_yaml("x", ""));
    let out = env.run(&["apply", "-f", dir.to_str().unwrap(), "--prune"]);
    assert_eq!(out.code, 1, "--prune needs a selector or --all");
    assert_eq!(
        env.ok(&[
            "apply",
            "-f",
            dir.to_str().unwrap(),
            "--prune",
            "--all",
            "--dry-run=server"
        ]),
        "session.claude-failover.io/x unchanged (server dry run)\nsession.claude-failover.io/y pruned (server dry run)\n"
    );
    assert_eq!(
        env.ok(&["apply", "-f", dir.to_str().unwrap(), "--prune", "--all"]),
        "session.claude-failover.io/x unchanged\nsession.claude-failover.io/y pruned\n"
    );
    let names = env.ok(&["get", "sessions,tasks", "-o", "name"]);
    assert_eq!(
        names,
        "session.claude-failover.io/x\nsession.claude-failover.io/z\ntask.claude-failover.io/by-create\n"
    );
    let out = env.ok(&["delete", "-k", prod.to_str().unwrap()]);
    assert_eq!(out.lines().count(), 3, "{out}");
}

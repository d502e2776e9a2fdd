//! The GitOps sync as an object: its ManifestSync's conditions (Ready,
//! Reconciling, Stalled), the git revision of the checkout, the broken
//! files with FILE:LINE:COL, counts, events, `/readyz`, `suspend`, and the
//! annotation that keeps an object from being pruned — through the real
//! daemon on a real git checkout.

mod common;
use common::daemon::{Daemon, T, call};
use common::*;
use serde_json::Value;

fn task(name: &str, extra: &str) -> String {
    format!(
        "{HEAD}kind: Task\nmetadata:\n  name: {name}\nspec:\n  prompt: do {name}\n  session: nowhere\n{extra}"
    )
}

/// The ManifestSync (Null until the daemon made it).
fn sync_obj(env: &Env) -> Value {
    let out = env.run(&["get", "manifestsync", "manifests", "-o", "json"]);
    if out.code != 0 {
        return Value::Null;
    }
    serde_json::from_str(&out.stdout).unwrap()
}

fn condition(v: &Value, t: &str) -> (String, String, String) {
    let c = v["status"]["conditions"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["type"] == t))
        .cloned()
        .unwrap_or_default();
    let s = |k: &str| c[k].as_str().unwrap_or_default().to_string();
    (s("status"), s("reason"), s("message"))
}

#[test]
#[cfg_attr(not(git), ignore = "needs git: apt-get install git")]
fn the_sync_is_an_object_with_conditions_revision_and_problems() {
    let env = Env::new();
    let dir = env.path("repo");
    env.write("repo/tasks/a.yaml", &task("a", ""));
    env.write("repo/tasks/b.yaml", &task("b", ""));
    git(&dir, &["init", "-q", "-b", "main"]);
    git(&dir, &["add", "."]);
    git(&dir, &["commit", "-q", "-m", "two tasks"]);
    let head = git(&dir, &["rev-parse", "HEAD"]);
    let d = Daemon::start(
        &env,
        &["--manifests", dir.to_str().unwrap(), "--resync", "1s"],
    );

    // Synced: Ready, at the checkout's revision, with its counts.
    let v = wait_for("the sync Ready", T, || {
        let v = sync_obj(&env);
        (condition(&v, "Ready").0 == "True").then_some(v)
    });
    let rev = format!("main@sha1:{head}");
    assert_eq!(v["status"]["revision"], rev.as_str());
    assert_eq!(v["status"]["lastAppliedRevision"], rev.as_str());
    assert_eq!(
        (
            v["status"]["files"].as_u64(),
            v["status"]["objects"].as_u64()
        ),
        (Some(2), Some(2))
    );
    assert_eq!(condition(&v, "Stalled").0, "False");
    assert_eq!(
        v["spec"]["path"],
        std::fs::canonicalize(&dir).unwrap().to_str().unwrap()
    );
    let table = env.ok(&["get", "msync"]);
    assert!(
        table
            .lines()
            .nth(1)
            .unwrap()
            .starts_with("manifests   True "),
        "{table}"
    );
    assert!(table.contains(&rev), "{table}");
    let (code, body) = call("GET", &format!("{}/readyz", d.url), None, None);
    assert_eq!(code, 200, "{body}");
    assert!(
        body.contains(r#""name":"manifestsync/default/manifests""#),
        "{body}"
    );

    // A broken file: not Ready, Stalled, the file, line and column named;
    // readiness fails; the file's object keeps what it had.
    env.write("repo/tasks/b.yaml", &task("b", "  priority: urgent\n"));
    git(&dir, &["commit", "-qam", "break b"]);
    let v = wait_for("the sync Stalled", T, || {
        let v = sync_obj(&env);
        (condition(&v, "Stalled").0 == "True").then_some(v)
    });
    let (ready, reason, message) = condition(&v, "Ready");
    assert_eq!(
        (ready.as_str(), reason.as_str()),
        ("False", "ManifestsInvalid")
    );
    assert!(
        message.starts_with("tasks/b.yaml:8:3: spec.priority:"),
        "{message}"
    );
    assert_eq!(v["status"]["failed"][0]["file"], "tasks/b.yaml");
    assert_eq!(v["status"]["failed"][0]["line"], 8);
    assert_eq!(
        v["status"]["lastAppliedRevision"],
        rev.as_str(),
        "the last good revision"
    );
    let b: Value = serde_json::from_str(&env.ok(&["get", "task", "b", "-o", "json"])).unwrap();
    assert_eq!(
        b["spec"]["priority"], "normal",
        "a broken file changes nothing"
    );
    let (code, body) = call("GET", &format!("{}/readyz", d.url), None, None);
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("stalled: tasks/b.yaml:8:3"), "{body}");
    let events = env.ok(&["events", "--for", "manifestsync/manifests"]);
    assert!(
        events.contains("ManifestInvalid") && events.contains("tasks/b.yaml:8:3"),
        "{events}"
    );
    let describe = env.ok(&["describe", "manifestsync", "manifests"]);
    assert!(
        describe.contains("Stalled") && describe.contains("ManifestsInvalid"),
        "{describe}"
    );

    // Fixed: Ready again, said so.
    env.write("repo/tasks/b.yaml", &task("b", "  priority: high\n"));
    git(&dir, &["commit", "-qam", "fix b"]);
    wait_for("the sync Ready again", T, || {
        (condition(&sync_obj(&env), "Ready").0 == "True").then_some(())
    });
    assert!(
        env.ok(&["events", "--for", "manifestsync/manifests"])
            .contains("Recovered")
    );
    assert_eq!(call("GET", &format!("{}/readyz", d.url), None, None).0, 200);

    // Suspended: passes do nothing (the daemon says so), a new file waits
    // for the resume.
    assert_eq!(
        env.ok(&["suspend", "manifestsync", "manifests"]),
        "manifestsync.claude-failover.io/manifests suspended\n"
    );
    wait_for("the sync marked suspended", T, || {
        (condition(&sync_obj(&env), "Reconciling").1 == "Suspended").then_some(())
    });
    let passes = || d.log().matches("suspended: no pass").count();
    let before = passes();
    env.write("repo/tasks/c.yaml", &task("c", ""));
    wait_for("a pass while suspended", T, || {
        (passes() > before).then_some(())
    });
    assert_eq!(
        env.run(&["get", "task", "c"]).code,
        1,
        "synced while suspended"
    );
    env.ok(&["resume", "manifestsync", "manifests"]);
    wait_for("c synced after the resume", T, || {
        (env.run(&["get", "task", "c"]).code == 0).then_some(())
    });
    // Only suspend and prune are people's to change.
    let out = env.run(&[
        "patch",
        "manifestsync",
        "manifests",
        "-p",
        r#"{"spec":{"path":"/elsewhere"}}"#,
    ]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("only suspend and prune can be changed"),
        "{}",
        out.stderr
    );

    // Prune: an object opted out stays when its file goes; another goes.
    env.ok(&["annotate", "task", "a", "claude-failover.io/prune=disabled"]);
    std::fs::remove_file(dir.join("tasks/a.yaml")).unwrap();
    std::fs::remove_file(dir.join("tasks/c.yaml")).unwrap();
    wait_for("c pruned", T, || {
        (env.run(&["get", "task", "c"]).code == 1).then_some(())
    });
    assert_eq!(
        env.run(&["get", "task", "a"]).code,
        0,
        "a opted out of pruning"
    );
    let v = sync_obj(&env);
    assert!(
        v["status"]["revision"]
            .as_str()
            .unwrap()
            .ends_with("+dirty"),
        "{v}"
    );
}

//! A corrupt object in the store (an empty file, a torn one, JSON of the
//! wrong shape), at start or while running: the daemon starts and serves
//! at once, names it in its log, an event and `/readyz` (degraded), its
//! controllers go on with the other objects, `get` lists it on stderr,
//! and `delete` removes it.

mod common;
use common::daemon::{Daemon, T, call, json, token};
use common::*;

fn task(name: &str) -> String {
    format!("{HEAD}kind: Task\nmetadata: {{name: {name}}}\nspec: {{prompt: \"job {name}\"}}\n")
}

fn phase(env: &Env, name: &str) -> Option<String> {
    let o = env.run(&["get", "task", name, "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&o.stdout).ok()?;
    v["status"]["phase"].as_str().map(str::to_string)
}

#[test]
fn a_corrupt_object_is_quarantined_and_the_rest_works() {
    let env = Env::new();
    let f = env.write("tasks.yaml", &[task("t1"), task("t2")].join("---\n"));
    env.ok(&["apply", "-f", f.to_str().unwrap()]);
    let dir = env.store().join("tasks/default");
    std::fs::write(dir.join("bad.json"), "").unwrap();
    std::fs::write(
        dir.join("odd.json"),
        r#"{"apiVersion": "claude-failover.io/v1alpha1", "kind": "Task", "metadata": {"name": "odd", "namespace": "default"}, "spec": {"prompt": 5}}"#,
    )
    .unwrap();

    // Start-up does not block on them: the daemon serves at once.
    let d = Daemon::start(&env, &["--resync", "1s"]);
    let (code, body) = call("GET", &format!("{}/healthz", d.url), None, None);
    assert_eq!((code, body.as_str()), (200, "ok"));
    let ready = |want: u16| {
        wait_for(&format!("/readyz to answer {want}"), T, || {
            let (code, body) = call("GET", &format!("{}/readyz", d.url), None, None);
            (code == want).then(|| json(&body))
        })
    };
    let body = ready(503);
    assert_eq!(body["degraded"], true, "{body}");
    let text = body.to_string();
    assert!(
        text.contains("bad.json") && text.contains("odd.json"),
        "{body}"
    );
    assert!(text.contains("the file is empty"), "{body}");
    let log = d.log();
    assert!(
        log.contains("corrupt object quarantined") && log.contains("bad.json"),
        "{log}"
    );

    // An event on the object itself.
    let tok = token(&env);
    let (code, events) = call(
        "GET",
        &format!("{}/api/v1/namespaces/default/tasks/bad/events", d.url),
        Some(&tok),
        None,
    );
    assert_eq!(code, 200, "{events}");
    assert!(events.contains("\"reason\":\"Corrupt\""), "{events}");

    // The controllers go on with the others: a cancel is carried out.
    env.ok(&["cancel", "task", "t1"]);
    wait_for("t1 to be cancelled", T, || {
        (phase(&env, "t1").as_deref() == Some("Cancelled")).then_some(())
    });

    // One turning corrupt while running: named too, the rest goes on.
    std::fs::write(dir.join("t1.json"), "{\"kind\": ").unwrap();
    wait_for("/readyz to name t1.json", T, || {
        let (_, body) = call("GET", &format!("{}/readyz", d.url), None, None);
        body.contains("t1.json").then_some(())
    });
    env.ok(&["cancel", "task", "t2"]);
    wait_for("t2 to be cancelled", T, || {
        (phase(&env, "t2").as_deref() == Some("Cancelled")).then_some(())
    });

    // `get` lists the good ones and names the bad ones on stderr.
    let o = env.run(&["get", "tasks"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.stdout.contains("t2"), "{}", o.stdout);
    for f in ["bad.json", "odd.json", "t1.json"] {
        assert!(o.stderr.contains(f), "{f}: {}", o.stderr);
    }
    let o = env.run(&["get", "task", "bad"]);
    assert_eq!(o.code, 1);
    assert!(o.stderr.contains("corrupt"), "{}", o.stderr);

    // `delete` removes them, and the daemon is ready again.
    for n in ["bad", "odd", "t1"] {
        env.ok(&["delete", "task", n]);
    }
    let body = ready(200);
    assert!(body.get("degraded").is_none(), "{body}");
    assert_eq!(
        env.ok(&["get", "tasks", "-o", "name"]),
        "task.claude-failover.io/t2\n"
    );
}

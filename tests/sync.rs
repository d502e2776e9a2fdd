//! `run --manifests DIR`: the daemon keeps the store in step with a
//! directory: new and changed files applied, removed objects pruned, bad
//! files reported without harm, drift corrected, hand-made objects kept.

mod common;
use claude_failover::api::{Kind, ObjectKey};
use claude_failover::store::Store;
use common::*;
use serde_json::{Value, json};
use std::process::{Child, Stdio};
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(env: &Env, dir: &std::path::Path, resync: &str) -> Daemon {
    let log = std::fs::File::create(env.path("daemon.log")).unwrap();
    Daemon(
        env.cmd(&[
            "run",
            "--manifests",
            dir.to_str().unwrap(),
            "--resync",
            resync,
            "--log-format",
            "json",
            // Tests run in parallel: no fixed port.
            "--listen",
            "127.0.0.1:0",
        ])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap(),
    )
}

fn get(store: &Store, kind: Kind, name: &str) -> Option<Value> {
    store.get(&ObjectKey::new(kind, "default", name)).unwrap()
}

fn log(env: &Env) -> String {
    std::fs::read_to_string(env.path("daemon.log")).unwrap_or_default()
}

#[test]
fn the_store_follows_the_directory() {
    let env = Env::new();
    let dir = env.path("pool");
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["accounts.yaml", "sessions.yaml"] {
        std::fs::copy(examples().join(f), dir.join(f)).unwrap();
    }
    env.write(
        "pool/team/tasks.yaml",
        &std::fs::read_to_string(examples().join("tasks.yaml")).unwrap(),
    );
    // An object made by hand, which the sync must never prune.
    let hand = env.write("hand.yaml", &session_yaml("by-hand", ""));
    env.ok(&["apply", "-f", hand.to_str().unwrap()]);

    let _d = start(&env, &dir, "1h"); // changes must arrive by notification
    let store = Store::open(env.store()).unwrap();
    wait_for("the pool synced", T, || {
        get(&store, Kind::Task, "fix-login")
    });
    let s = get(&store, Kind::Session, "ccl-0").unwrap();
    assert_eq!(
        s["metadata"]["annotations"]["claude-failover.io/managed-by"],
        "sync"
    );
    assert_eq!(
        env.ok(&["get", "sessions", "-o", "name"]).lines().count(),
        4
    );

    // A change in a file is applied.
    let text = std::fs::read_to_string(dir.join("sessions.yaml"))
        .unwrap()
        .replace("~/code/web", "~/code/site");
    std::fs::write(dir.join("sessions.yaml"), text).unwrap();
    wait_for("the change applied", T, || {
        get(&store, Kind::Session, "ccl-2").filter(|v| v["spec"]["workdir"] == "~/code/site")
    });
    // The event follows the write (a second transaction).
    let describe = wait_for("the Synced event", T, || {
        Some(env.ok(&["describe", "session", "ccl-2"])).filter(|d| d.contains("Synced"))
    });
    assert!(describe.contains("sessions.yaml"), "{describe}");

    // A removed file prunes what it declared, and only that.
    std::fs::remove_file(dir.join("team/tasks.yaml")).unwrap();
    // One pass deletes them one after the other: wait for all of them.
    wait_for("the tasks pruned", T, || {
        ["fix-login", "update-deps", "write-changelog"]
            .iter()
            .all(|t| get(&store, Kind::Task, t).is_none())
            .then_some(())
    });
    assert!(
        get(&store, Kind::Session, "by-hand").is_some(),
        "a hand-made object was pruned"
    );
    assert!(get(&store, Kind::Account, "work").is_some());

    // A broken file is reported and changes nothing: its objects stay.
    let before = get(&store, Kind::Account, "work").unwrap();
    std::fs::write(
        dir.join("accounts.yaml"),
        "apiVersion: claude-failover.io/v1alpha1\nkind: Account\nmetadata: {name: work\n",
    )
    .unwrap();
    wait_for("the bad file reported", T, || {
        log(&env).contains("accounts.yaml:3:").then_some(())
    });
    let new_file = env.write("pool/more.yaml", &session_yaml("ccl-9", ""));
    wait_for("the rest keeps syncing", T, || {
        get(&store, Kind::Session, "ccl-9")
    });
    assert_eq!(
        get(&store, Kind::Account, "work").unwrap(),
        before,
        "a broken file changed its objects"
    );
    assert!(
        get(&store, Kind::Account, "personal").is_some(),
        "a broken file pruned its objects"
    );
    std::fs::remove_file(new_file).unwrap();
    wait_for("ccl-9 pruned", T, || {
        get(&store, Kind::Session, "ccl-9").is_none().then_some(())
    });
}

#[test]
fn drift_is_corrected() {
    let env = Env::new();
    let dir = env.path("pool");
    env.write("pool/s.yaml", &session_yaml("ccl-0", ""));
    let _d = start(&env, &dir, "300ms");
    let store = Store::open(env.store()).unwrap();
    wait_for("synced", T, || get(&store, Kind::Session, "ccl-0"));
    // Someone edits the synced object in the store (an update by another
    // writer, like `edit` or `patch`).
    store
        .update_object(
            &claude_failover::api::ObjectKey::new(Kind::Session, "default", "ccl-0"),
            None,
            "someone",
            false,
            |v| {
                v["spec"]["workdir"] = json!("/somewhere/else");
                Ok(())
            },
        )
        .unwrap();
    wait_for("drift corrected", T, || {
        get(&store, Kind::Session, "ccl-0").filter(|v| v["spec"]["workdir"] == "/tmp/ccl-0")
    });
    // And the daemon stops cleanly on SIGTERM.
    let mut d = _d;
    kill_term(d.0.id());
    let status = d.0.wait().unwrap();
    assert!(
        status.success(),
        "exit status {status:?}; log:\n{}",
        log(&env)
    );
    assert!(log(&env).contains("daemon stopped"));
}

fn kill_term(pid: u32) {
    let ok = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}

//! etcd loses its quorum under a running daemon (docs/store-backends.md,
//! "When etcd loses its quorum"), on a real 3-member cluster
//! (tests/common/etcd.rs): two members stopped by pid, the daemon keeps its
//! agent running, writes nothing, says so once in its log and in `/readyz`
//! (naming the store), keeps an inbox file it could not import, and when
//! the members come back (same data dirs) it is ready again without a
//! restart and dispatches what came meanwhile and after. The outage is
//! shorter than the leader lease's TTL (see docs/store-backends.md for a
//! longer one).

mod common;
use common::daemon::{Daemon, T, call, token};
use common::etcd::Cluster;
use common::*;
use serde_json::Value;

const SIM: &str = "sim-0";

/// One cluster at a time: two clusters losing and regaining quorum at once
/// on a loaded 2-core machine slow each other's elections past the
/// timeouts under test.
static ONE_CLUSTER: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_cluster() -> std::sync::MutexGuard<'static, ()> {
    ONE_CLUSTER.lock().unwrap_or_else(|e| e.into_inner())
}

fn task(name: &str) -> String {
    format!(
        r#"{{"apiVersion": "claude-failover.io/v1alpha1", "kind": "Task", "metadata": {{"name": "{name}"}}, "spec": {{"prompt": "do {name}"}}}}"#
    )
}

/// How many lines of `log` contain `needle`.
fn lines_with(log: &str, needle: &str) -> usize {
    log.lines().filter(|l| l.contains(needle)).count()
}

#[test]
#[cfg_attr(not(etcd), ignore = "etcd is not installed")]
fn a_lost_quorum_stops_writes_and_readiness_until_it_returns() {
    let _one = one_cluster();
    let mut c = Cluster::start(3);
    let url = c.url("quorum");
    let env = Env::on_store(&url);
    let sock = env.path("tmux.sock");
    let _tmux = TmuxServer(sock.clone());
    let config = env.write(
        "config.yaml",
        &format!("tmuxSocket: {}\nresyncSeconds: 120\n", sock.display()),
    );
    let config = config.to_str().unwrap().to_string();
    let workdir = env.path("work");
    let pool = sim_pool_manifest(&env, SIM, &workdir);
    std::fs::create_dir_all(workdir.join(".agent-queue/inbox")).unwrap();
    env.ok(&["apply", "-f", pool.to_str().unwrap()]);
    let d = Daemon::start(&env, &["--config", &config]);
    let get = |kind: &str, name: &str| {
        let o = env.run(&["--config", &config, "get", kind, name, "-o", "json"]);
        serde_json::from_str::<Value>(&o.stdout).ok()
    };
    let idle = wait_for("sim-0 idle", T, || {
        get("session", SIM).filter(|v| v["status"]["phase"] == "Idle")
    });
    let agent_pid = idle["status"]["pid"].as_i64().expect("a running agent");
    let tok = token(&env);
    let tasks_url = format!("{}/api/v1/namespaces/default/tasks", d.url);
    let (code, body) = call("POST", &tasks_url, Some(&tok), Some(&task("before")));
    assert_eq!(code, 201, "{body}");
    wait_for("before done", T, || {
        get("task", "before").filter(|v| v["status"]["phase"] == "Succeeded")
    });
    let ready = || call("GET", &format!("{}/readyz", d.url), None, None);
    wait_for("ready", T, || (ready().0 == 200).then_some(()));

    // Two of three members stopped (by pid): no quorum.
    c.kill(0);
    c.kill(1);
    let (code, body) = wait_for("/readyz to tell the lost quorum", T, || {
        let r = ready();
        (r.0 == 503).then_some(r)
    });
    let v: Value = serde_json::from_str(&body).unwrap();
    let check = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "storeAvailable")
        .unwrap_or_else(|| panic!("{body}"))
        .clone();
    assert_eq!(check["ok"], false, "{body}");
    let message = check["message"].as_str().unwrap();
    assert!(message.starts_with(&url), "{message}");
    assert!(!body.contains(&tok), "the token in /readyz: {body}");
    assert_eq!(code, 503);
    // Meanwhile: a write is refused at once, naming the store; an inbox
    // file waits (it is not rejected).
    let (code, body) = call("POST", &tasks_url, Some(&tok), Some(&task("during")));
    assert_eq!(code, 503, "{body}");
    assert!(body.contains(&url), "{body}");
    std::fs::write(
        workdir.join(".agent-queue/inbox/queued.md"),
        "do the queued thing\n",
    )
    .unwrap();

    // The members come back on their data dirs: ready again, same daemon.
    c.restart(0);
    c.restart(1);
    c.wait_ready();
    wait_for("ready again", T, || (ready().0 == 200).then_some(()));
    assert!(
        !workdir.join(".agent-queue/rejected/queued.md").exists(),
        "the inbox file was rejected while the store was away"
    );
    let (code, body) = call("POST", &tasks_url, Some(&tok), Some(&task("after")));
    assert_eq!(code, 201, "{body}");
    let done = wait_for("after done", T, || {
        get("task", "after").filter(|v| v["status"]["phase"] == "Succeeded")
    });
    assert_eq!(done["status"]["session"], SIM, "{done}");
    // The inbox file became a task and ran.
    wait_for("the queued file's task done", T, || {
        let o = env.run(&["--config", &config, "get", "tasks", "-o", "json"]);
        let v: Value = serde_json::from_str(&o.stdout).ok()?;
        v["items"]
            .as_array()?
            .iter()
            .any(|t| {
                t["spec"]["prompt"]
                    .as_str()
                    .is_some_and(|p| p.contains("queued thing"))
                    && t["status"]["phase"] == "Succeeded"
            })
            .then_some(())
    });
    // Nothing lost; the agent never restarted.
    let before = get("task", "before").unwrap();
    assert_eq!(before["status"]["phase"], "Succeeded", "{before}");
    let s = get("session", SIM).unwrap();
    assert_eq!(s["status"]["pid"].as_i64(), Some(agent_pid), "{s}");
    // Said once each way, not once per pass or per watch.
    let log = d.log();
    assert_eq!(lines_with(&log, "store unavailable"), 1, "{log}");
    assert_eq!(lines_with(&log, "store available again"), 1, "{log}");
    assert_eq!(lines_with(&log, "pass failed"), 0, "{log}");
    assert_eq!(lines_with(&log, "leadership lost"), 0, "{log}");
}

/// The store layer through an outage longer than the leader lease's TTL
/// (a daemon's leadership ends then: docs/store-backends.md): a write fails
/// with `Unavailable` naming the store, the next ones at once, the outage
/// is reported (what `/readyz` shows), and when the quorum returns the
/// writes resume and a watch opened before delivers what was written after,
/// with nothing lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(etcd), ignore = "etcd is not installed")]
// The guard serialises the tests of this file only (see ONE_CLUSTER).
#[allow(clippy::await_holding_lock)]
async fn the_store_through_a_long_outage() {
    let _one = one_cluster();
    use claude_failover::api::{Kind, Session};
    use claude_failover::store::watch::{WatchConfig, watch};
    use claude_failover::store::{LEADER_TTL, Store, StoreError};
    use futures::StreamExt;
    use kube::runtime::watcher::Event;
    use std::time::Duration;

    let session = |name: &str| {
        serde_json::json!({
            "apiVersion": "claude-failover.io/v1alpha1", "kind": "Session",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"workdir": "/w"}
        })
    };
    let blocking = |f: Box<dyn FnOnce() + Send>| tokio::task::spawn_blocking(f);
    let mut c = tokio::task::spawn_blocking(|| Cluster::start(3))
        .await
        .unwrap();
    let url = c.url("long");
    let store = Store::open_location(&url, &Default::default()).unwrap();
    let s = store.clone();
    tokio::task::spawn_blocking(move || s.apply(&session("before"), false).unwrap())
        .await
        .unwrap();
    let mut w = Box::pin(watch::<Session>(
        store.clone(),
        WatchConfig {
            namespace: None,
            resync: Duration::from_secs(3600),
            lean: false,
        },
    ));
    // The listing (before), then whatever comes.
    let mut seen = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(20), w.next()).await {
            Ok(Some(Ok(Event::InitDone))) => break,
            Ok(Some(Ok(Event::InitApply(s)))) => seen.push(s.metadata.name.unwrap()),
            Ok(Some(Ok(_))) => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(seen, ["before"]);

    let (tx, rx) = std::sync::mpsc::channel();
    let s = store.clone();
    blocking(Box::new(move || {
        c.kill(0);
        c.kill(1);
        // The first write waits out an election, then fails naming the store.
        let e = s.apply(&session("during"), false).unwrap_err();
        assert!(
            matches!(&e, StoreError::Unavailable { location, .. } if *location == url),
            "{e}"
        );
        assert!(e.to_string().starts_with(&url), "{e}");
        // The next ones at once (within the backoff), and say for how long.
        wait_for("a write refused at once", Duration::from_secs(30), || {
            let e = s.apply(&session("during"), false).unwrap_err();
            assert!(e.is_unavailable(), "{e}");
            e.to_string().contains("not answering for").then_some(())
        });
        let o = s.outage().expect("the outage is reported");
        assert_eq!(o.location, url);
        // Longer than a leader may go unrenewed.
        wait_for("an outage past the leader TTL", LEADER_TTL * 3, || {
            let o = s.outage().expect("still out");
            (o.for_ > LEADER_TTL).then_some(())
        });
        c.restart(0);
        c.restart(1);
        c.wait_ready();
        wait_for("writes to resume", Duration::from_secs(60), || {
            s.apply(&session("after"), false).ok()
        });
        assert!(s.outage().is_none());
        let names: Vec<String> = s
            .list(Kind::Session, None)
            .unwrap()
            .iter()
            .map(|v| v["metadata"]["name"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(names, ["after", "before"]);
        tx.send(c).unwrap();
    }))
    .await
    .unwrap();
    let c = rx.recv().unwrap();
    // The watch resumed (from its revision, or relisted): it delivers the
    // write made after the outage; errors while it lasted are not events.
    let got = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(item) = w.next().await {
            match item {
                Ok(Event::Apply(s) | Event::InitApply(s))
                    if s.metadata.name.as_deref() == Some("after") =>
                {
                    return true;
                }
                _ => {}
            }
        }
        false
    })
    .await;
    assert_eq!(
        got,
        Ok(true),
        "the watch delivers what came after the outage"
    );
    drop(w);
    tokio::task::spawn_blocking(move || drop(c)).await.unwrap();
}

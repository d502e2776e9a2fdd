//! What only the etcd backend has to prove, on a real 3-member cluster
//! (tests/common/etcd.rs): watches resumed from a revision and relisting
//! after a compaction, writers racing without preconditions, leadership on
//! a lease, a corrupt value, a dead member, the CLI verbs, and `run` on
//! etcd dispatching tasks to a simulated agent. The cases shared with the
//! local store are in tests/store.rs.

mod common;
use claude_failover::api::{Kind, ObjectKey, Session, Task};
use claude_failover::store::watch::{WatchConfig, watch, watch_from};
use claude_failover::store::{DeleteOutcome, Store, StoreError};
use common::daemon::{Daemon, T, call, json as parse, token};
use common::etcd::Cluster;
use common::*;
use futures::StreamExt;
use kube::runtime::watcher::Event;
use serde_json::{Value, json};
use std::process::Command;
use std::time::Duration;

fn session(name: &str) -> Value {
    json!({
        "apiVersion": "claude-failover.io/v1alpha1", "kind": "Session",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"workdir": "/w"}
    })
}

fn key(kind: Kind, name: &str) -> ObjectKey {
    ObjectKey::new(kind, "default", name)
}

fn open(c: &Cluster, prefix: &str) -> Store {
    Store::open_location(&c.url(prefix), &Default::default()).unwrap()
}

fn etcdctl(c: &Cluster, args: &[&str]) -> String {
    let out = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", &c.endpoints()])
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "etcdctl {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The next event of a watch, within a deadline.
async fn next<K: Clone>(
    w: &mut (impl futures::Stream<Item = Result<Event<K>, kube::runtime::watcher::Error>> + Unpin),
) -> Event<K> {
    tokio::time::timeout(Duration::from_secs(20), w.next())
        .await
        .expect("a watch event within 20 s")
        .expect("the watch goes on")
        .expect("no watch error")
}

fn name_of(s: &Session) -> &str {
    s.metadata.name.as_deref().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(etcd), ignore = "etcd is not installed")]
async fn a_watch_resumes_from_a_revision_and_relists_after_a_compaction() {
    let c = tokio::task::spawn_blocking(|| Cluster::start(3))
        .await
        .unwrap();
    let store = open(&c, "resume");
    store.apply(&session("a"), false).unwrap();
    let cfg = WatchConfig {
        namespace: None,
        resync: Duration::from_secs(3600),
        lean: false,
    };
    // A first watcher lists, then sees a change, and stops.
    let mut w = Box::pin(watch::<Session>(store.clone(), cfg.clone()));
    assert!(matches!(next(&mut w).await, Event::Init));
    let Event::InitApply(a) = next(&mut w).await else {
        panic!("the listing")
    };
    assert_eq!(name_of(&a), "a");
    assert!(matches!(next(&mut w).await, Event::InitDone));
    let (_, b) = store.apply(&session("b"), false).unwrap();
    let Event::Apply(seen) = next(&mut w).await else {
        panic!("b applied")
    };
    assert_eq!(name_of(&seen), "b");
    let last = seen.metadata.resource_version.clone().unwrap();
    assert_eq!(
        Some(last.clone()),
        b["metadata"]["resourceVersion"].as_str().map(String::from)
    );
    drop(w);
    // While no one watches: a new object, a status write, a deletion.
    store.apply(&session("c"), false).unwrap();
    store
        .write_status(&key(Kind::Session, "a"), &json!({"phase": "Idle"}), None)
        .unwrap();
    store.delete(&key(Kind::Session, "b"), None, false).unwrap();
    // Resumed from the last revision seen: exactly what changed, no relist.
    let mut w = Box::pin(watch_from::<Session>(
        store.clone(),
        cfg.clone(),
        Some(last.clone()),
    ));
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(match next(&mut w).await {
            Event::Apply(s) => format!("apply {}", name_of(&s)),
            Event::Delete(s) => format!("delete {}", name_of(&s)),
            e => panic!("a resumed watch does not relist: {e:?}"),
        });
    }
    got.sort();
    assert_eq!(got, ["apply a", "apply c", "delete b"]);
    drop(w);
    // The history before now compacted away: resuming from `last` relists.
    let c = tokio::task::spawn_blocking(move || {
        c.compact();
        c
    })
    .await
    .unwrap();
    let mut w = Box::pin(watch_from::<Session>(store.clone(), cfg, Some(last)));
    assert!(matches!(next(&mut w).await, Event::Init), "a relist");
    let mut listed = Vec::new();
    loop {
        match next(&mut w).await {
            Event::InitApply(s) => listed.push(name_of(&s).to_string()),
            Event::InitDone => break,
            e => panic!("{e:?}"),
        }
    }
    assert_eq!(listed, ["a", "c"]);
    // And it follows what comes next.
    store.apply(&session("d"), false).unwrap();
    let Event::Apply(d) = next(&mut w).await else {
        panic!("d applied")
    };
    assert_eq!(name_of(&d), "d");
    drop(w);
    tokio::task::spawn_blocking(move || drop(c)).await.unwrap();
}

/// Writers without preconditions (controllers writing their own status
/// fields, people labelling) race on one object: each transaction that
/// loses is run again on fresh reads, none fails and none is lost; so is a
/// caller-driven batch.
#[test]
#[cfg_attr(not(etcd), ignore = "etcd is not installed")]
fn racing_writers_without_preconditions_never_fail() {
    let c = Cluster::start(3);
    let store = open(&c, "race");
    store.apply(&session("s"), false).unwrap();
    const EACH: usize = 25;
    let k = key(Kind::Session, "s");
    std::thread::scope(|s| {
        for w in 0..3 {
            let (store, k) = (store.clone(), k.clone());
            s.spawn(move || {
                for i in 0..EACH {
                    let field = format!("w{w}");
                    store
                        .set_status_fields(
                            &k,
                            &json!({ field.clone(): i }),
                            &[field.as_str()],
                            claude_failover::store::Durability::Now,
                        )
                        .unwrap();
                    store
                        .update_metadata(&k, None, |m| {
                            let l = m.entry("labels").or_insert_with(|| json!({}));
                            l[format!("w{w}")] = json!(i.to_string());
                        })
                        .unwrap();
                }
            });
        }
        // A caller-driven batch (what the manifest sync commits) racing
        // them: built again on fresh reads, never failing.
        let (store, k) = (store.clone(), k.clone());
        s.spawn(move || {
            for i in 0..EACH {
                let mut obj = session("s");
                obj["spec"]["workdir"] = json!(format!("/w{i}"));
                store
                    .with_batch(|b| {
                        b.apply_request(&claude_failover::store::ApplyRequest::whole(&obj))?;
                        b.write_record("inventory", "race", &json!({"round": i}))
                    })
                    .unwrap();
            }
            let v = store.get(&k).unwrap().unwrap();
            assert_eq!(v["spec"]["workdir"], format!("/w{}", EACH - 1), "{v}");
        });
    });
    assert_eq!(
        store.record("inventory", "race").unwrap().unwrap()["round"],
        EACH - 1
    );
    let v = store.get(&k).unwrap().unwrap();
    for w in 0..3 {
        assert_eq!(v["status"][format!("w{w}")], EACH - 1, "{v}");
        assert_eq!(
            v["metadata"]["labels"][format!("w{w}")],
            (EACH - 1).to_string(),
            "{v}"
        );
    }
    // A stale precondition is still a conflict, as on the local store.
    let err = store.write_status(&k, &json!({}), Some("1")).unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(etcd), ignore = "etcd is not installed")]
async fn one_leader_at_a_time_and_a_standby_takes_over() {
    let c = tokio::task::spawn_blocking(|| Cluster::start(3))
        .await
        .unwrap();
    let (a, b) = (open(&c, "lead"), open(&c, "lead"));
    let first = a.try_lead("one").unwrap().expect("nobody leads yet");
    assert!(b.try_lead("two").unwrap().is_none(), "one leads");
    assert_eq!(b.leader().unwrap().as_deref(), Some("one"));
    // A standby waits; the leader steps down; the standby leads.
    let standby = {
        let b = b.clone();
        tokio::spawn(async move { b.lead("two").await })
    };
    tokio::task::yield_now().await;
    assert!(!standby.is_finished());
    tokio::task::spawn_blocking(move || drop(first))
        .await
        .unwrap();
    let second = tokio::time::timeout(Duration::from_secs(20), standby)
        .await
        .expect("the standby leads once the leader steps down")
        .unwrap()
        .unwrap();
    assert_eq!(a.leader().unwrap().as_deref(), Some("two"));
    // The Lease object counts the transition.
    let lease = a
        .get(&ObjectKey::new(
            Kind::Lease,
            claude_failover::api::SYSTEM_NAMESPACE,
            claude_failover::api::LEADER_LEASE,
        ))
        .unwrap()
        .unwrap();
    assert_eq!(lease["spec"]["leaseTransitions"], 1, "{lease}");
    tokio::task::spawn_blocking(move || {
        drop(second);
        drop(c);
    })
    .await
    .unwrap();
}

#[test]
#[cfg_attr(not(etcd), ignore = "etcd is not installed")]
fn a_corrupt_value_is_quarantined_named_and_deletable() {
    let c = Cluster::start(3);
    let store = open(&c, "bad");
    store
        .apply(
            &json!({"apiVersion": "claude-failover.io/v1alpha1", "kind": "Task",
                "metadata": {"name": "good"}, "spec": {"prompt": "p"}}),
            false,
        )
        .unwrap();
    etcdctl(
        &c,
        &["put", "/bad/tasks/default/torn.json", "{\"kind\": \"Ta"],
    );
    etcdctl(
        &c,
        &[
            "put",
            "/bad/tasks/default/odd.json",
            r#"{"apiVersion": "claude-failover.io/v1alpha1", "kind": "Task", "metadata": {"name": "odd", "namespace": "default"}, "spec": {"prompt": 5}}"#,
        ],
    );
    let err = store.get(&key(Kind::Task, "torn")).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("{}/tasks/default/torn.json", c.url("bad"))),
        "names the key: {msg}"
    );
    let tasks = store.api::<Task>(Some("default")).list().unwrap();
    assert_eq!(tasks.len(), 1, "the good one only");
    let corrupt: Vec<String> = store
        .corrupt()
        .iter()
        .map(|c| c.path.display().to_string())
        .collect();
    assert!(
        corrupt.iter().any(|p| p.ends_with("torn.json"))
            && corrupt.iter().any(|p| p.ends_with("odd.json")),
        "{corrupt:?}"
    );
    assert_eq!(
        store.delete(&key(Kind::Task, "torn"), None, false).unwrap(),
        DeleteOutcome::Deleted
    );
    assert!(etcdctl(&c, &["get", "/bad/tasks/default/torn.json"]).is_empty());
    // A key that is not an object's is refused before etcd sees it.
    assert!(matches!(
        store.get(&ObjectKey::new(Kind::Task, "default", "../x")),
        Err(StoreError::Invalid { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(etcd), ignore = "etcd is not installed")]
async fn one_member_of_three_dies_and_the_store_keeps_working() {
    let mut c = tokio::task::spawn_blocking(|| Cluster::start(3))
        .await
        .unwrap();
    let store = open(&c, "survive");
    let mut w = Box::pin(watch::<Session>(
        store.clone(),
        WatchConfig {
            namespace: None,
            resync: Duration::from_secs(3600),
            lean: false,
        },
    ));
    assert!(matches!(next(&mut w).await, Event::Init));
    assert!(matches!(next(&mut w).await, Event::InitDone));
    for victim in [0, 1] {
        // One member down at a time (two of three up: a quorum).
        c = tokio::task::spawn_blocking(move || {
            c.kill(victim);
            c
        })
        .await
        .unwrap();
        let s = store.clone();
        let name = format!("after-{victim}");
        let n2 = name.clone();
        tokio::task::spawn_blocking(move || {
            // The first request may go to the dead member: the client moves on.
            common::wait_for(
                "a write with a member down",
                Duration::from_secs(30),
                || s.apply(&session(&n2), false).ok(),
            );
        })
        .await
        .unwrap();
        loop {
            match next(&mut w).await {
                Event::Apply(s) if name_of(&s) == name => break,
                Event::Apply(_) | Event::Init | Event::InitApply(_) | Event::InitDone => {}
                e => panic!("{e:?}"),
            }
        }
        c = tokio::task::spawn_blocking(move || {
            c.restart(victim);
            c.wait_ready();
            c
        })
        .await
        .unwrap();
    }
    let s = store.clone();
    let names = tokio::task::spawn_blocking(move || {
        s.list(Kind::Session, None)
            .unwrap()
            .iter()
            .map(|v| v["metadata"]["name"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    assert_eq!(names, ["after-0", "after-1"]);
    drop(w);
    tokio::task::spawn_blocking(move || drop(c)).await.unwrap();
}

#[test]
#[cfg_attr(not(etcd), ignore = "etcd is not installed")]
fn the_cli_verbs_work_on_etcd() {
    let c = Cluster::start(3);
    let env = Env::on_store(&c.url("cli"));
    let f = env.write(
        "objs.yaml",
        &format!(
            "{}---\n{HEAD}kind: Task\nmetadata:\n  name: t1\nspec:\n  prompt: hello\n",
            session_yaml("s1", "")
        ),
    );
    let out = env.ok(&["apply", "-f", f.to_str().unwrap()]);
    assert!(
        out.contains("session.claude-failover.io/s1 created"),
        "{out}"
    );
    assert!(out.contains("task.claude-failover.io/t1 created"), "{out}");
    let out = env.ok(&["apply", "-f", f.to_str().unwrap()]);
    assert!(out.contains("s1 unchanged"), "{out}");
    let got = env.ok(&["get", "tasks"]);
    assert!(got.contains("t1"), "{got}");
    let v = parse(&env.ok(&["get", "task", "t1", "-o", "json"]));
    assert_eq!(v["spec"]["prompt"], "hello");
    // The etcd revision is the resourceVersion.
    let raw = etcdctl(&c, &["get", "/cli/tasks/default/t1.json", "-w", "json"]);
    let rev = parse(&raw)["kvs"][0]["mod_revision"].as_i64().unwrap();
    assert_eq!(v["metadata"]["resourceVersion"], rev.to_string());
    env.ok(&["label", "task", "t1", "team=x"]);
    let v = parse(&env.ok(&["get", "task", "t1", "-o", "json"]));
    assert_eq!(v["metadata"]["labels"]["team"], "x");
    let described = env.ok(&["describe", "task", "t1"]);
    assert!(described.contains("team=x"), "{described}");
    let out = env.ok(&["delete", "task", "t1"]);
    assert!(out.contains("deleted"), "{out}");
    let out = env.run(&["get", "task", "t1"]);
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("not found"), "{}", out.stderr);
    // A store that does not answer is an error naming it, fast.
    let dead = Env::on_store(&format!("etcd://127.0.0.1:{}/x", free_port()));
    let out = dead.run(&["get", "tasks"]);
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("etcd://127.0.0.1:"), "{}", out.stderr);
    // A malformed URL names itself.
    let bad = Env::on_store("etcd://nohost/x");
    let out = bad.run(&["get", "tasks"]);
    assert!(
        out.stderr.contains("`nohost` is not HOST:PORT"),
        "{}",
        out.stderr
    );
}

/// `run --store etcd://...`: the daemon leads through etcd, launches a
/// simulated agent and dispatches tasks to it, and keeps doing so with one
/// member of three dead. Its event stream carries the recorded events as
/// they are written.
#[test]
#[cfg_attr(not(etcd), ignore = "etcd is not installed")]
fn run_on_etcd_dispatches_tasks_end_to_end() {
    let mut c = Cluster::start(3);
    let env = Env::on_store(&c.url("run"));
    let config = env.write(
        "config.yaml",
        &format!(
            "tmuxSocket: {}\nresyncSeconds: 120\n",
            env.path("tmux.sock").display()
        ),
    );
    let config = config.to_str().unwrap().to_string();
    let _tmux = TmuxServer(env.path("tmux.sock"));
    let workdir = env.path("work");
    let pool = sim_pool_manifest(&env, "sim-0", &workdir);
    env.ok(&["apply", "-f", pool.to_str().unwrap()]);
    let d = Daemon::start(&env, &["--config", &config]);
    let get = |kind: &str, name: &str| {
        let o = env.run(&["--config", &config, "get", kind, name, "-o", "json"]);
        serde_json::from_str::<Value>(&o.stdout).ok()
    };
    wait_for("sim-0 idle", T, || {
        get("session", "sim-0").filter(|v| v["status"]["phase"] == "Idle")
    });
    let task = |name: &str| {
        format!(
            r#"{{"apiVersion": "claude-failover.io/v1alpha1", "kind": "Task", "metadata": {{"name": "{name}"}}, "spec": {{"prompt": "do {name}"}}}}"#
        )
    };
    // The event stream carries the recorded events as they come (an etcd
    // watch of their keys; the resync is 120 s).
    let mut stream =
        common::daemon::Sse::open(&d.addr(), "/api/v1/watch?namespace=default", &token(&env));
    let (code, body) = call(
        "POST",
        &format!("{}/api/v1/namespaces/default/tasks", d.url),
        Some(&token(&env)),
        Some(&task("first")),
    );
    assert_eq!(code, 201, "{body}");
    let created = stream.until("the Created event", |e| {
        e.event == "event" && e.data.contains("\"Created\"") && e.data.contains("\"first\"")
    });
    assert_eq!(parse(&created.data)["involvedObject"]["kind"], "Task");
    stream.until("the Succeeded event", |e| {
        e.event == "event" && e.data.contains("\"Succeeded\"") && e.data.contains("\"first\"")
    });
    wait_for("first done", T, || {
        get("task", "first").filter(|v| v["status"]["phase"] == "Succeeded")
    });
    // One member of three dies: the pool goes on.
    c.kill(2);
    let f = env.write("second.yaml", &task("second"));
    env.ok(&["apply", "-f", f.to_str().unwrap()]);
    let done = wait_for("second done with a member down", T * 2, || {
        get("task", "second").filter(|v| v["status"]["phase"] == "Succeeded")
    });
    assert_eq!(done["status"]["session"], "sim-0", "{done}");
    let (code, ready) = call("GET", &format!("{}/readyz", d.url), None, None);
    assert_eq!(code, 200, "{ready}");
    drop(d);
}

/// A leader that cannot renew its lease within the TTL (here: the cluster
/// lost its quorum) steps down, saying why: it stops the leader's work (it
/// can no longer know it is the only one doing it) but keeps running its
/// node, and leads again once the quorum is back, without a restart.
#[test]
#[cfg_attr(not(etcd), ignore = "etcd is not installed")]
fn a_leader_that_cannot_renew_its_lease_steps_down_and_leads_again() {
    let mut c = Cluster::start(3);
    let env = Env::on_store(&c.url("quorum"));
    let log = env.path("daemon.log");
    let mut child = Killed(
        env.cmd(&["run", "--listen", "127.0.0.1:0", "--log-level", "info"])
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let count = |needle: &str| {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .matches(needle)
            .count()
    };
    wait_for("the daemon to lead", T, || {
        (count("leader lease acquired") == 1).then_some(())
    });
    // Two of three members gone: no quorum, no renewal.
    c.kill(0);
    c.kill(1);
    wait_for(
        "the daemon to step down",
        claude_failover::store::LEADER_TTL * 6,
        || (count("leader lease on the store was lost") == 1).then_some(()),
    );
    assert!(
        count("leader lease not renewed within its TTL") >= 1,
        "{}",
        std::fs::read_to_string(&log).unwrap()
    );
    assert!(child.0.try_wait().unwrap().is_none(), "the daemon runs on");
    // The members come back: it leads again.
    c.restart(0);
    c.restart(1);
    c.wait_ready();
    wait_for("the daemon to lead again", T * 2, || {
        (count("leader lease acquired") == 2).then_some(())
    });
    assert!(child.0.try_wait().unwrap().is_none(), "the daemon runs on");
}

/// A child process killed (by pid) if the test ends before it does.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

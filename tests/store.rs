//! The store for real, on both backends (a local directory, a real
//! 3-member etcd cluster): several writers, conflicts, finalizers, status
//! apart, and the watch stream driving kube_runtime's reflector and
//! applier. Each case is a function of a store; `local` runs it on a
//! directory, `etcd` on a cluster (each case under its own prefix).

mod common;
use claude_failover::api::{Kind, ObjectKey, Session, SessionPhase, SessionStatus, Task};
use claude_failover::store::watch::{WatchConfig, watch};
use claude_failover::store::{DeleteOutcome, Outcome, Store, StoreError};
use common::*;
use futures::{StreamExt, TryStreamExt};
use kube::runtime::controller::{Action, Config};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{WatchStreamExt, applier};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

fn session(name: &str, workdir: &str) -> Value {
    json!({
        "apiVersion": "claude-failover.io/v1alpha1", "kind": "Session",
        "metadata": {"name": name, "namespace": "default", "labels": {"a": "1"}},
        "spec": {"workdir": workdir}
    })
}

fn key(name: &str) -> ObjectKey {
    ObjectKey::new(Kind::Session, "default", name)
}

fn rv(v: &Value) -> String {
    v["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string()
}

fn generation_moves_with_the_spec_only(store: &Store) {
    let (o, v) = store.apply(&session("s", "/a"), false).unwrap();
    assert_eq!(o, Outcome::Created);
    assert_eq!(v["metadata"]["generation"], 1);
    assert_eq!(
        store.apply(&session("s", "/a"), false).unwrap().0,
        Outcome::Unchanged
    );
    // a label change: configured, same generation, new resourceVersion
    let mut relabel = session("s", "/a");
    relabel["metadata"]["labels"]["a"] = json!("2");
    let (o, v2) = store.apply(&relabel, false).unwrap();
    assert_eq!(o, Outcome::Configured);
    assert_eq!(v2["metadata"]["generation"], 1);
    assert_ne!(rv(&v), rv(&v2));
    // a status write: no generation bump either
    let v3 = store
        .write_status(&key("s"), &json!({"phase": "Idle"}), None)
        .unwrap();
    assert_eq!(v3["metadata"]["generation"], 1);
    // a spec change bumps it
    let (_, v4) = store.apply(&session("s", "/b"), false).unwrap();
    assert_eq!(v4["metadata"]["generation"], 2);
    assert_eq!(v4["status"]["phase"], "Idle", "apply must keep the status");
    let v5 = store
        .write_status(&key("s"), &json!({"phase": "Busy"}), None)
        .unwrap();
    assert_eq!(
        v5["spec"]["workdir"], "/b",
        "a status write must keep the spec"
    );
    assert_eq!(store.get(&key("s")).unwrap().unwrap(), v5);
}

fn stale_resource_versions_conflict(store: &Store) {
    let (_, v1) = store.apply(&session("s", "/a"), false).unwrap();
    let old = rv(&v1);
    store
        .write_status(&key("s"), &json!({"phase": "Idle"}), Some(&old))
        .unwrap();
    // the status write moved the version: a second writer with `old` loses
    let err = store
        .write_status(&key("s"), &json!({"phase": "Busy"}), Some(&old))
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err}");
    let mut stale = session("s", "/changed");
    stale["metadata"]["resourceVersion"] = json!(old);
    let err = store.apply(&stale, false).unwrap_err();
    assert!(err.to_string().contains("conflict"), "{err}");
    assert_eq!(
        store.get(&key("s")).unwrap().unwrap()["spec"]["workdir"],
        "/a"
    );
    let err = store.delete(&key("s"), Some(&old), false).unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }));
}

fn finalizers_hold_a_deletion_until_removed(store: &Store) {
    store.apply(&session("s", "/a"), false).unwrap();
    store
        .write_status(&key("s"), &json!({"phase": "Idle"}), None)
        .unwrap();
    let api = store.api::<Session>(Some("default"));
    api.set_finalizer("s", "claude-failover.io/session", true)
        .unwrap();
    assert_eq!(
        store.delete(&key("s"), None, false).unwrap(),
        DeleteOutcome::Terminating
    );
    let s = api.get("s").unwrap().unwrap();
    assert!(s.metadata.deletion_timestamp.is_some());
    assert!(
        store.apply(&session("s", "/a"), false).is_err(),
        "no apply while terminating"
    );
    assert!(
        api.set_finalizer("s", "claude-failover.io/session", false)
            .unwrap()
            .is_none()
    );
    assert!(api.get("s").unwrap().is_none());
    // a new object of the same name starts clean
    store.apply(&session("s", "/a"), false).unwrap();
    assert!(api.get("s").unwrap().unwrap().status.is_none());
}

fn dry_run_writes_nothing(store: &Store) {
    let before = store.root().exists().then(|| snapshot(store.root()));
    let (o, v) = store.apply(&session("s", "/a"), true).unwrap();
    assert_eq!(o, Outcome::Created);
    assert_eq!(v["spec"]["workdir"], "/a");
    assert!(store.get(&key("s")).unwrap().is_none());
    assert!(store.list(Kind::Session, None).unwrap().is_empty());
    if let Some(before) = before {
        assert!(before == snapshot(store.root()));
    }
}

/// The controllers of the daemon run on exactly this wiring.
async fn the_watch_drives_a_kube_runtime_reflector_and_applier(store: Store) {
    for n in ["a", "b", "c"] {
        store.apply(&session(n, "/w"), false).unwrap();
    }
    let (reader, writer) = reflector::store::<Session>();
    let cfg = WatchConfig {
        namespace: None,
        resync: Duration::from_secs(3600), // notifications alone must do
        lean: false,
    };
    let queue = reflector::reflector(writer, watch::<Session>(store.clone(), cfg))
        .touched_objects()
        .map_ok(|o| ObjectRef::from(&o));
    #[derive(Debug, thiserror::Error)]
    #[error(transparent)]
    struct E(#[from] StoreError);
    let reconcile = |s: Arc<Session>, store: Arc<Store>| {
        Box::pin(async move {
            let api = store.api::<Session>(s.metadata.namespace.as_deref());
            let status = SessionStatus {
                phase: Some(SessionPhase::Idle),
                observed_generation: s.metadata.generation,
                ..Default::default()
            };
            api.patch_status(s.metadata.name.as_deref().unwrap(), &status)
                .map_err(E)?;
            Ok::<_, E>(Action::await_change())
        })
    };
    let run = applier(
        reconcile,
        |_, _, _| Action::requeue(Duration::from_millis(200)),
        Arc::new(store.clone()),
        reader.clone(),
        queue,
        Config::default(),
    );
    let handle = tokio::spawn(run.for_each(|_| futures::future::ready(())));
    let api = store.api::<Session>(Some("default"));
    let observed = |name: &str, generation: i64| {
        api.get(name)
            .unwrap()
            .and_then(|s| s.status)
            .is_some_and(|st| st.observed_generation == Some(generation))
    };
    until("all three reconciled", || {
        ["a", "b", "c"].iter().all(|n| observed(n, 1))
    })
    .await;
    store.apply(&session("b", "/changed"), false).unwrap();
    until("the spec change reconciled", || observed("b", 2)).await;
    // A new object in a namespace directory that did not exist yet.
    let mut other = session("d", "/w");
    other["metadata"]["namespace"] = json!("team-x");
    store.apply(&other, false).unwrap();
    let api_x = store.api::<Session>(Some("team-x"));
    until("the new namespace seen", || {
        api_x.get("d").unwrap().and_then(|s| s.status).is_some()
    })
    .await;
    store.delete(&key("c"), None, false).unwrap();
    until("the reflector forgets the deleted object", || {
        reader.state().len() == 3
    })
    .await;
    handle.abort();
}

/// Objects created in namespaces that did not exist yet, by two writers as
/// fast as they go: each reaches the watch by its notification alone (no
/// resync), including a file that lands in a new namespace directory
/// before that directory is watched.
async fn every_object_in_a_new_namespace_is_seen(store: Store) {
    const PER_WRITER: usize = 100;
    let (reader, writer) = reflector::store::<Session>();
    let cfg = WatchConfig {
        namespace: None,
        resync: Duration::from_secs(3600),
        lean: false,
    };
    let stream = reflector::reflector(writer, watch::<Session>(store.clone(), cfg));
    let handle = tokio::spawn(stream.for_each(|_| futures::future::ready(())));
    reader.wait_until_ready().await.unwrap();
    let writers: Vec<_> = (0..2)
        .map(|w| {
            let store = store.clone();
            tokio::task::spawn_blocking(move || {
                for i in 0..PER_WRITER {
                    let mut s = session(&format!("s{i}"), "/w");
                    s["metadata"]["namespace"] = json!(format!("ns-{w}-{i}"));
                    store.apply(&s, false).unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    until("every object in its new namespace seen", || {
        reader.state().len() == 2 * PER_WRITER
    })
    .await;
    handle.abort();
}

async fn until(what: &str, f: impl Fn() -> bool) {
    tokio::time::timeout(Duration::from_secs(20), async {
        while !f() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// Two `apply` processes and a status writer on one object, each doing
/// read-modify-write with resourceVersion preconditions: no update is lost.
fn concurrent_writers_lose_no_update(env: Env) {
    let t = |n: u64| {
        format!("{HEAD}kind: Task\nmetadata:\n  name: counter\nspec:\n  prompt: \"count {n}\"\n")
    };
    env.write("t0.yaml", &t(0));
    env.ok(&["apply", "-f", env.path("t0.yaml").to_str().unwrap()]);
    const PER_APPLIER: u64 = 20;
    const STATUS_WRITES: u32 = 40;
    let tkey = ObjectKey::new(Kind::Task, "default", "counter");
    std::thread::scope(|s| {
        for w in 0..2 {
            let env = &env;
            s.spawn(move || {
                for i in 0..PER_APPLIER {
                    loop {
                        let got = env.ok(&["get", "task", "counter", "-o", "json"]);
                        let v: Value = serde_json::from_str(&got).unwrap();
                        let n: u64 = v["spec"]["prompt"].as_str().unwrap()[6..].parse().unwrap();
                        let file = env.write(
                            &format!("w{w}-{i}.yaml"),
                            &format!(
                                "{}  resourceVersion: \"{}\"\nspec:\n  prompt: \"count {}\"\n",
                                &t(0)[..t(0).find("spec:").unwrap()],
                                rv(&v),
                                n + 1
                            ),
                        );
                        let out = env.run(&["apply", "-f", file.to_str().unwrap()]);
                        if out.code == 0 {
                            break;
                        }
                        assert!(
                            out.stderr.contains("conflict"),
                            "unexpected failure: {}",
                            out.stderr
                        );
                    }
                }
            });
        }
        let store = open(&env);
        let tkey = &tkey;
        s.spawn(move || {
            for _ in 0..STATUS_WRITES {
                loop {
                    let v = store.get(tkey).unwrap().unwrap();
                    let attempts = v["status"]["attempts"].as_u64().unwrap_or(0);
                    match store.write_status(
                        tkey,
                        &json!({"attempts": attempts + 1}),
                        Some(&rv(&v)),
                    ) {
                        Ok(_) => break,
                        Err(StoreError::Conflict { .. }) => continue,
                        Err(e) => panic!("{e}"),
                    }
                }
            }
        });
    });
    let store = open(&env);
    let api = store.api::<Task>(Some("default"));
    let task = api.get("counter").unwrap().unwrap();
    assert_eq!(task.spec.prompt, format!("count {}", 2 * PER_APPLIER));
    assert_eq!(task.status.unwrap().attempts, Some(STATUS_WRITES));
    assert_eq!(task.metadata.generation, Some(1 + 2 * PER_APPLIER as i64));
}

/// The dispatcher's intent: a finalizer and a status in one transaction,
/// against the object as the caller saw it, or nothing at all.
fn a_finalizer_and_a_status_are_written_together_or_not_at_all(store: &Store) {
    let (_, v) = store.apply(&session("s", "/a"), false).unwrap();
    let api = store.api::<Session>(Some("default"));
    let seen: Session = serde_json::from_value(v).unwrap();
    // Someone else writes in between: the caller's view is stale.
    store.apply(&session("s", "/b"), false).unwrap();
    let mut stale = seen.clone();
    stale.status = Some(SessionStatus {
        phase: Some(SessionPhase::Busy),
        ..Default::default()
    });
    assert!(matches!(
        api.add_finalizer_with_status(&stale, "x/held"),
        Err(StoreError::Conflict { .. })
    ));
    let now = store.get(&key("s")).unwrap().unwrap();
    assert!(now["metadata"].get("finalizers").is_none(), "{now}");
    assert!(now.get("status").is_none(), "{now}");
    // Against the current object: both land, under one resourceVersion.
    let mut fresh: Session = serde_json::from_value(now).unwrap();
    fresh.status = stale.status.clone();
    let written = api
        .add_finalizer_with_status(&fresh, "x/held")
        .unwrap()
        .unwrap();
    let on_disk = store.get(&key("s")).unwrap().unwrap();
    assert_eq!(on_disk["metadata"]["finalizers"], json!(["x/held"]));
    assert_eq!(on_disk["status"]["phase"], "Busy");
    assert_eq!(
        written.metadata.resource_version.as_deref(),
        Some(rv(&on_disk).as_str())
    );
}

/// A write that waits for the disk is visible at once, atomic, and made
/// durable by the flush.
#[test]
fn a_lazy_status_write_is_visible_at_once() {
    let d = tempfile::tempdir().unwrap();
    let store = Store::open(d.path()).unwrap();
    store.apply(&session("s", "/a"), false).unwrap();
    store
        .write_status_as(
            &key("s"),
            &json!({"phase": "Idle"}),
            None,
            claude_failover::store::Durability::Soon,
        )
        .unwrap();
    assert_eq!(
        store.get(&key("s")).unwrap().unwrap()["status"]["phase"],
        "Idle"
    );
    claude_failover::store::flush_now().unwrap();
    // No temp file is left behind.
    let dir = d.path().join("sessions/default");
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.starts_with('.')), "{names:?}");
}

/// The store an env's commands use.
fn open(env: &Env) -> Store {
    match &env.store_url {
        Some(url) => Store::open_location(url, &Default::default()).unwrap(),
        None => Store::open(env.store()).unwrap(),
    }
}

/// A case of the store's semantics, run on each backend.
type Case = fn(&Store);

/// The cases that take a store, by name.
const CASES: &[(&str, Case)] = &[
    (
        "generation_moves_with_the_spec_only",
        generation_moves_with_the_spec_only,
    ),
    (
        "stale_resource_versions_conflict",
        stale_resource_versions_conflict,
    ),
    (
        "finalizers_hold_a_deletion_until_removed",
        finalizers_hold_a_deletion_until_removed,
    ),
    ("dry_run_writes_nothing", dry_run_writes_nothing),
    (
        "a_finalizer_and_a_status_are_written_together_or_not_at_all",
        a_finalizer_and_a_status_are_written_together_or_not_at_all,
    ),
];

mod local {
    use super::*;

    fn run(name: &str) {
        let d = tempfile::tempdir().unwrap();
        let store = Store::open(d.path()).unwrap();
        let (_, case) = CASES.iter().find(|(n, _)| *n == name).unwrap();
        case(&store);
    }

    #[test]
    fn generation_moves_with_the_spec_only() {
        run("generation_moves_with_the_spec_only");
    }

    #[test]
    fn stale_resource_versions_conflict() {
        run("stale_resource_versions_conflict");
    }

    #[test]
    fn finalizers_hold_a_deletion_until_removed() {
        run("finalizers_hold_a_deletion_until_removed");
    }

    #[test]
    fn dry_run_writes_nothing() {
        run("dry_run_writes_nothing");
    }

    #[test]
    fn a_finalizer_and_a_status_are_written_together_or_not_at_all() {
        run("a_finalizer_and_a_status_are_written_together_or_not_at_all");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_watch_drives_a_kube_runtime_reflector_and_applier() {
        let d = tempfile::tempdir().unwrap();
        super::the_watch_drives_a_kube_runtime_reflector_and_applier(
            Store::open(d.path()).unwrap(),
        )
        .await;
    }

    #[test]
    fn concurrent_writers_lose_no_update() {
        super::concurrent_writers_lose_no_update(Env::new());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_object_in_a_new_namespace_is_seen() {
        let d = tempfile::tempdir().unwrap();
        super::every_object_in_a_new_namespace_is_seen(Store::open(d.path()).unwrap()).await;
    }
}

/// The same cases on a real 3-member etcd cluster: one cluster for all, each
/// case under its own prefix.
mod etcd {
    use super::*;
    use crate::common::etcd::Cluster;

    fn store(c: &Cluster, prefix: &str) -> Store {
        Store::open_location(&c.url(prefix), &Default::default()).unwrap()
    }

    #[test]
    #[cfg_attr(not(etcd), ignore = "etcd is not installed")]
    fn every_store_case() {
        let c = Cluster::start(3);
        for (name, case) in CASES {
            eprintln!("case {name}");
            case(&store(&c, &name.replace('_', "-")));
        }
        // A different prefix is a different store.
        assert!(
            store(&c, "other")
                .list(Kind::Session, None)
                .unwrap()
                .is_empty()
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[cfg_attr(not(etcd), ignore = "etcd is not installed")]
    async fn the_watch_drives_a_kube_runtime_reflector_and_applier() {
        let c = tokio::task::spawn_blocking(|| Cluster::start(3))
            .await
            .unwrap();
        let s = store(&c, "watch");
        super::the_watch_drives_a_kube_runtime_reflector_and_applier(s).await;
        tokio::task::spawn_blocking(move || drop(c)).await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[cfg_attr(not(etcd), ignore = "etcd is not installed")]
    async fn every_object_in_a_new_namespace_is_seen() {
        let c = tokio::task::spawn_blocking(|| Cluster::start(3))
            .await
            .unwrap();
        let s = store(&c, "namespaces");
        super::every_object_in_a_new_namespace_is_seen(s).await;
        tokio::task::spawn_blocking(move || drop(c)).await.unwrap();
    }

    #[test]
    #[cfg_attr(not(etcd), ignore = "etcd is not installed")]
    fn concurrent_writers_lose_no_update() {
        let c = Cluster::start(3);
        super::concurrent_writers_lose_no_update(Env::on_store(&c.url("counter")));
    }
}

//! Property tests of the store's transactions: any interleaving of
//! writers, each crashing at any point of any commit (before its record,
//! after it, between any two renames) or losing a conflict, leaves every
//! object whole and every batch all or nothing once the store is opened
//! again.
//!
//! Each batch writes a set of Tasks that all carry its id (label `batch`)
//! and its member list (in the prompt). All or nothing, as an invariant of
//! the final state: for every object of batch B, every other member of B
//! is there, either still of B or written later (a higher
//! resourceVersion) by another batch.

use super::Store;
use super::txn::{CRASH, Crash};
use crate::api::{Kind, ObjectKey};
use proptest::prelude::*;
use serde_json::{Value, json};

const NAMES: usize = 6;

#[derive(Debug, Clone)]
struct Batch {
    members: Vec<usize>,
    crash: Option<Crash>,
    /// The last member carries a resourceVersion that cannot match: the
    /// batch must fail whole.
    conflict: bool,
}

fn batch() -> impl Strategy<Value = Batch> {
    let crash = prop_oneof![
        3 => Just(None),
        1 => Just(Some(Crash::BeforeRecord)),
        2 => (0usize..NAMES).prop_map(|n| Some(Crash::AfterSteps(n))),
    ];
    (
        proptest::sample::subsequence((0..NAMES).collect::<Vec<_>>(), 1..=NAMES),
        crash,
        proptest::bool::weighted(0.15),
    )
        .prop_map(|(members, crash, conflict)| Batch {
            members,
            crash,
            conflict,
        })
}

fn task(name: usize, id: &str, members: &[usize], stale: bool) -> Value {
    let mut v = json!({
        "apiVersion": "claude-failover.io/v1alpha1", "kind": "Task",
        "metadata": {"name": format!("t{name}"), "namespace": "default", "labels": {"batch": id}},
        "spec": {"prompt": members.iter().map(|m| format!("t{m}")).collect::<Vec<_>>().join(",")}
    });
    if stale {
        v["metadata"]["resourceVersion"] = json!("1");
    }
    v
}

/// Runs one writer's batches; each crash is followed by nothing from that
/// writer but its next batch (as a restarted process).
fn writer(store: &Store, who: usize, batches: &[Batch]) {
    for (i, b) in batches.iter().enumerate() {
        let id = format!("w{who}-{i}");
        let docs: Vec<Value> = b
            .members
            .iter()
            .enumerate()
            .map(|(j, m)| task(*m, &id, &b.members, b.conflict && j + 1 == b.members.len()))
            .collect();
        CRASH.with(|c| c.set(b.crash));
        let _ = store.apply_all(&docs, false);
        CRASH.with(|c| c.set(None));
    }
}

fn rv(v: &Value) -> u64 {
    v.pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn check(root: &std::path::Path) -> Result<(), TestCaseError> {
    let store = Store::open(root).expect("open recovers");
    let listing = store.list_report(Kind::Task, Some("default")).unwrap();
    prop_assert!(
        listing.corrupt.is_empty(),
        "torn objects: {:?}",
        listing.corrupt
    );
    let staged: Vec<_> = std::fs::read_dir(root.join(super::txn::TXN_DIR))
        .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    prop_assert!(staged.is_empty(), "left staged: {staged:?}");
    let by_name: std::collections::HashMap<String, &Value> = listing
        .objects
        .iter()
        .map(|v| (v["metadata"]["name"].as_str().unwrap().to_string(), v))
        .collect();
    for v in &listing.objects {
        let id = v["metadata"]["labels"]["batch"].as_str().unwrap();
        for m in v["spec"]["prompt"].as_str().unwrap().split(',') {
            let Some(other) = by_name.get(m) else {
                return Err(TestCaseError::fail(format!(
                    "batch {id}: {} is there, {m} is not",
                    v["metadata"]["name"]
                )));
            };
            let same = other["metadata"]["labels"]["batch"].as_str() == Some(id);
            prop_assert!(
                same || rv(other) > rv(v),
                "batch {id}: {m} holds an older batch {}",
                other["metadata"]["labels"]["batch"]
            );
        }
    }
    let _ = store.get(&ObjectKey::new(Kind::Task, "default", "t0"));
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn interleaved_writers_and_crashes_leave_batches_whole(
        writers in proptest::collection::vec(proptest::collection::vec(batch(), 1..6), 1..4)
    ) {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().to_path_buf();
        Store::open(&root).unwrap();
        std::thread::scope(|s| {
            for (who, batches) in writers.iter().enumerate() {
                let root = root.clone();
                s.spawn(move || {
                    // A process of its own: its own handle.
                    let store = Store::open(&root).unwrap();
                    writer(&store, who, batches);
                });
            }
        });
        check(&root)?;
    }
}

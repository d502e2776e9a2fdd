//! The store's promises under attack, through the binary: names never
//! reach outside the store, one apply is all or nothing (a conflict, a
//! full disk, kill -9 at any moment), and a corrupt object is named and
//! skipped while everything else keeps working.

mod common;
use claude_failover::api::{Kind, ObjectKey};
use claude_failover::store::Store;
use common::*;
use serde_json::Value;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

fn task_doc(name: &str, labels: &str, prompt: &str) -> String {
    format!(
        "{HEAD}kind: Task\nmetadata:\n  name: {name}\n  labels: {{{labels}}}\nspec:\n  prompt: \"{prompt}\"\n"
    )
}

fn batch(n: usize, label: usize, prompt_len: usize) -> String {
    (0..n)
        .map(|i| {
            task_doc(
                &format!("t{i}"),
                &format!("batch: \"{label}\""),
                &"p".repeat(prompt_len),
            )
        })
        .collect::<Vec<_>>()
        .join("---\n")
}

/// Every file under the store that a writer left half-done: staged
/// transaction files, temp files.
fn leftovers(store: &Path) -> Vec<String> {
    snapshot(store)
        .keys()
        .map(|p| p.strip_prefix(store).unwrap().display().to_string())
        .filter(|p| p.starts_with(".txn/") || p.contains(".tmp."))
        .collect()
}

#[test]
fn names_never_reach_outside_the_store() {
    let env = Env::new();
    let account = format!(
        "{HEAD}kind: Account\nmetadata: {{name: work}}\nspec: {{configDir: /tmp/cf-work}}\n"
    );
    let session = session_yaml("s0", "  suspend: true\n");
    let f = env.write(
        "objects.yaml",
        &format!(
            "{account}---\n{session}---\n{}",
            task_doc("t0", "a: b", "x")
        ),
    );
    env.ok(&["apply", "-f", f.to_str().unwrap()]);
    // Files beside the store that a path-like name would reach.
    let victim = env.write(
        "victim.json",
        "{\"kind\": \"Session\", \"metadata\": {\"name\": \"victim\"}}",
    );
    let before = std::fs::read(&victim).unwrap();
    for args in [
        &["delete", "task", "../../accounts/default/work"][..],
        &["delete", "task", "../../../victim"],
        &["restart", "session", "../../../victim"],
        &["cancel", "task", "../../sessions/default/s0"],
        &["delete", "session", "s0", "-n", ".."],
    ] {
        let o = env.run(args);
        assert_ne!(o.code, 0, "{args:?} succeeded: {}", o.stdout);
        assert!(
            o.stderr.contains("is not a valid name"),
            "{args:?}: {}",
            o.stderr
        );
    }
    assert_eq!(
        std::fs::read(&victim).unwrap(),
        before,
        "a file outside the store changed"
    );
    let names = env.ok(&["get", "all", "-o", "name"]);
    for n in [
        "account.claude-failover.io/work",
        "session.claude-failover.io/s0",
        "task.claude-failover.io/t0",
    ] {
        assert!(names.contains(n), "{n} went: {names}");
    }
    // The library refuses the same keys, whoever calls it.
    let store = Store::open(env.store()).unwrap();
    let bad = ObjectKey::new(Kind::Task, "default", "../../accounts/default/work");
    assert!(store.delete(&bad, None, false).is_err());
    assert!(store.get(&bad).is_err());
    assert!(store.record_event(&bad, false, "X", "y", "test").is_err());
}

#[test]
fn a_conflict_in_a_later_document_applies_nothing() {
    let env = Env::new();
    let first = env.write("keep.yaml", &task_doc("keep", "a: b", "x"));
    env.ok(&["apply", "-f", first.to_str().unwrap()]);
    // Three new tasks, then `keep` with a resourceVersion it no longer has.
    let stale = task_doc("keep", "a: c", "x")
        .replace("  name: keep\n", "  name: keep\n  resourceVersion: \"1\"\n");
    let f = env.write("batch.yaml", &format!("{}---\n{stale}", batch(3, 1, 4)));
    let o = env.run(&["apply", "-f", f.to_str().unwrap()]);
    assert_eq!(o.code, 1, "{}{}", o.stdout, o.stderr);
    assert!(o.stderr.contains("conflict"), "{}", o.stderr);
    assert!(o.stderr.contains("nothing applied"), "{}", o.stderr);
    assert!(o.stdout.is_empty(), "reported as applied: {}", o.stdout);
    assert_eq!(
        env.ok(&["get", "tasks", "-o", "name"]),
        "task.claude-failover.io/keep\n"
    );
    let t0: Value = serde_json::from_str(&env.ok(&["get", "task", "keep", "-o", "json"])).unwrap();
    assert_eq!(t0["metadata"]["labels"]["a"], "b");
    assert!(leftovers(&env.store()).is_empty());
}

/// The labels of t0..t24: one batch's, whole.
fn batches_seen(store: &Path) -> Vec<String> {
    let store = Store::open(store).unwrap(); // recovers, as any next open
    let mut seen: Vec<String> = store
        .list(Kind::Task, Some("default"))
        .unwrap()
        .iter()
        .map(|v| {
            v.pointer("/metadata/labels/batch")
                .and_then(Value::as_str)
                .unwrap_or("?")
                .to_string()
        })
        .collect();
    let n = seen.len();
    seen.dedup();
    assert!(n == 0 || n == 25, "{n} of 25 objects: {seen:?}");
    seen
}

#[test]
fn kill_9_during_apply_leaves_every_batch_whole() {
    let env = Env::new();
    let mut committed = 0usize; // the latest batch seen whole
    let mut killed_midway = 0;
    for round in 1..=40usize {
        let f = env.write(&format!("b{round}.yaml"), &batch(25, round, 64));
        let mut child = env
            .cmd(&["apply", "-f", f.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Kill points spread over the whole apply (start-up, decoding,
        // staging, commit, renames).
        std::thread::sleep(Duration::from_micros((round as u64 * 1_733) % 45_000));
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        let status = child.wait().unwrap();
        if status.code().is_none() {
            killed_midway += 1;
        }
        let seen = batches_seen(&env.store());
        assert!(
            seen.len() <= 1,
            "round {round}: objects from several batches: {seen:?}"
        );
        if let Some(b) = seen.first() {
            let b: usize = b.parse().unwrap();
            assert!(
                b == round || b == committed,
                "round {round}: batch {b} after {committed}"
            );
            committed = b;
        }
        assert!(
            leftovers(&env.store()).is_empty(),
            "round {round}: {:?}",
            leftovers(&env.store())
        );
    }
    assert!(
        killed_midway > 10,
        "only {killed_midway} applies were killed before they ended"
    );
    // The store works on: one more apply completes.
    let f = env.write("last.yaml", &batch(25, 99, 8));
    env.ok(&["apply", "-f", f.to_str().unwrap()]);
    assert_eq!(batches_seen(&env.store()), vec!["99"]);
}

#[test]
fn a_write_failure_mid_batch_applies_nothing() {
    let env = Env::new();
    let f = env.write("first.yaml", &batch(25, 1, 8));
    env.ok(&["apply", "-f", f.to_str().unwrap()]);
    // Batch 2: the last object is larger than the file size limit (RLIMIT_FSIZE,
    // SIGXFSZ ignored), so its staged write fails after 24 others.
    let mut text = batch(24, 2, 8);
    text.push_str("---\n");
    text.push_str(&task_doc("t24", "batch: \"2\"", &"p".repeat(64 * 1024)));
    let f = env.write("second.yaml", &text);
    let script = "trap '' XFSZ; ulimit -f 32; exec \"$0\" \"$@\"";
    let o = Out::from(
        std::process::Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg(BIN)
            .args([
                "--store",
                env.store().to_str().unwrap(),
                "apply",
                "-f",
                f.to_str().unwrap(),
            ])
            .env("HOME", env.dir.path())
            .env("XDG_CONFIG_HOME", env.path("config"))
            .output()
            .unwrap(),
    );
    assert_eq!(o.code, 1, "{}{}", o.stdout, o.stderr);
    assert!(o.stderr.contains("File too large"), "{}", o.stderr);
    assert!(o.stderr.contains("nothing applied"), "{}", o.stderr);
    assert_eq!(batches_seen(&env.store()), vec!["1"]);
    assert!(
        leftovers(&env.store()).is_empty(),
        "{:?}",
        leftovers(&env.store())
    );
}

/// ENOSPC for real: a 512 KiB tmpfs in a mount namespace of its own
/// (needs `unshare` and the right to mount, as root in CI; without them
/// the injected write failure above covers the same path).
#[test]
fn a_full_disk_mid_batch_applies_nothing() {
    let probe = std::process::Command::new("unshare")
        .args(["-m", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"])
        .output();
    if !probe.is_ok_and(|o| o.status.success()) {
        eprintln!("skipped: cannot mount a tmpfs in a mount namespace here (unshare -m)");
        return;
    }
    let env = Env::new();
    let disk = env.path("disk");
    std::fs::create_dir_all(&disk).unwrap();
    let first = env.write("first.yaml", &batch(25, 1, 8));
    let second = env.write("second.yaml", &batch(25, 2, 4096));
    // Inside the namespace: batch 1 fits, the disk is then filled to its
    // last 40 KiB, and batch 2 (about 100 KiB) cannot be staged.
    let script = r#"
set -u
mount -t tmpfs -o size=512k tmpfs "$DISK" || exit 97
S="$DISK/store"
"$BIN" --store "$S" apply -f "$FIRST" >/dev/null || exit 98
avail=$(df -k --output=avail "$DISK" | tail -1)
dd if=/dev/zero of="$DISK/filler" bs=1k count=$((avail - 40)) 2>/dev/null
"$BIN" --store "$S" apply -f "$SECOND"
echo "exit=$?"
rm -f "$DISK/filler"
echo "--- tasks"
"$BIN" --store "$S" get tasks -o json
echo "--- leftovers"
find "$S" -path "$S/.txn/*" -o -name '*.tmp.*'
echo "--- end"
"#;
    let o = Out::from(
        std::process::Command::new("unshare")
            .args(["-m", "sh", "-c", script])
            .env("DISK", &disk)
            .env("BIN", BIN)
            .env("FIRST", &first)
            .env("SECOND", &second)
            .env("HOME", env.dir.path())
            .env("XDG_CONFIG_HOME", env.path("config"))
            .output()
            .unwrap(),
    );
    assert!(o.stdout.contains("exit=1"), "{}{}", o.stdout, o.stderr);
    assert!(o.stderr.contains("No space left on device"), "{}", o.stderr);
    assert!(o.stderr.contains("nothing applied"), "{}", o.stderr);
    let tasks = o
        .stdout
        .split("--- tasks\n")
        .nth(1)
        .unwrap()
        .split("--- leftovers\n")
        .next()
        .unwrap();
    let tasks: Value = serde_json::from_str(tasks).unwrap();
    let labels: Vec<&str> = tasks["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["metadata"]["labels"]["batch"].as_str().unwrap())
        .collect();
    assert_eq!(labels, vec!["1"; 25], "{}", o.stdout);
    let left = o.stdout.split("--- leftovers\n").nth(1).unwrap();
    assert_eq!(left, "--- end\n", "files left behind: {left}");
}

//! The store on etcd next to the local directory, in the same run: `apply`
//! of 1,000 manifests (a CLI process, new store) and `get` of 10,000
//! stored objects (a CLI process, table), on a real 3-member etcd on
//! loopback (tests/common/etcd.rs) and on a local store, in alternating
//! rounds; medians, and the etcd figure as a ratio of the local one.
//!
//! Run: `cargo bench --bench store_etcd` (needs etcd and etcdctl; prints
//! its figures; asserts nothing).

#[path = "../tests/common/etcd.rs"]
#[allow(dead_code)]
mod etcd;

/// Polls `f` until it gives a value (what the etcd harness waits with).
fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let t = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(t.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_claude-failover");
const ROUNDS: usize = 5;
/// The 10,000 objects are stored in applies of this many (an etcd request
/// is at most `--max-request-bytes`, 1.5 MiB by default).
const SEED_CHUNK: usize = 500;

fn manifest(i: usize) -> String {
    format!(
        "apiVersion: claude-failover.io/v1alpha1\nkind: Session\nmetadata:\n  name: s-{i}\n  labels:\n    project: p{}\nspec:\n  workdir: /work/p{}\n  account: acct-{}\n  agent:\n    model: sonnet\n    args: [\"--verbose\"]\n",
        i % 10,
        i % 10,
        i % 3
    )
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Runs the CLI on `store` (a path or an etcd URL) and times it.
fn cli(store: &str, args: &[&str]) -> Duration {
    let t = Instant::now();
    let out = Command::new(BIN)
        .args(["--store", store])
        .args(args)
        .output()
        .unwrap();
    let d = t.elapsed();
    assert!(
        out.status.success(),
        "{args:?} on {store}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    d
}

fn write_manifests(dir: &Path, from: usize, n: usize) {
    std::fs::create_dir_all(dir).unwrap();
    for i in from..from + n {
        std::fs::write(dir.join(format!("s-{i:05}.yaml")), manifest(i)).unwrap();
    }
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` asks for a list
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("manifests");
    write_manifests(&dir, 0, 1000);
    let cluster = etcd::Cluster::start(3);
    let load_before = load();

    // --- apply 1,000 into a new store, alternating local and etcd ---
    let (mut local_apply, mut etcd_apply) = (Vec::new(), Vec::new());
    for r in 0..ROUNDS {
        let local = tmp.path().join(format!("local-{r}"));
        local_apply.push(cli(
            local.to_str().unwrap(),
            &["apply", "-f", dir.to_str().unwrap()],
        ));
        etcd_apply.push(cli(
            &cluster.url(&format!("apply-{r}")),
            &["apply", "-f", dir.to_str().unwrap()],
        ));
    }

    // --- get 10,000, alternating ---
    let big_local = tmp.path().join("big");
    let big_etcd = cluster.url("big");
    for c in 0..10_000 / SEED_CHUNK {
        let d = tmp.path().join(format!("seed-{c}"));
        write_manifests(&d, c * SEED_CHUNK, SEED_CHUNK);
        for store in [big_local.to_str().unwrap(), big_etcd.as_str()] {
            cli(store, &["apply", "-f", d.to_str().unwrap()]);
        }
    }
    let (mut local_get, mut etcd_get) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        local_get.push(cli(big_local.to_str().unwrap(), &["get", "sessions"]));
        etcd_get.push(cli(&big_etcd, &["get", "sessions"]));
    }

    let ms = |d: Duration| format!("{:8.1} ms", d.as_secs_f64() * 1000.0);
    let row = |what: &str, local: Vec<Duration>, etcd: Vec<Duration>| {
        let (l, e) = (median(local), median(etcd));
        println!(
            "{what:<34} local {}   etcd {}   etcd/local {:5.2}x",
            ms(l),
            ms(e),
            e.as_secs_f64() / l.as_secs_f64()
        );
    };
    println!(
        "store on etcd (3 members on loopback) next to the local store: median of {ROUNDS} alternating rounds; {} cores; load {load_before} before, {} after",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        load()
    );
    row(
        "apply 1,000 (CLI process, new store)",
        local_apply,
        etcd_apply,
    );
    row("get 10,000 (CLI process, table)", local_get, etcd_get);
}

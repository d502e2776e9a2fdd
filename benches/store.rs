//! Store benchmark: `apply` of 1,000 manifests and `get` of 10,000 stored
//! objects, each next to a floor measured in the same run (reading the same
//! files), plus the peak memory of `get` at 1,000 and 10,000 objects.
//!
//! Run: `cargo bench --bench store` (prints its figures; asserts nothing).

use claude_failover::manifest::{LoadOptions, load_paths};
use claude_failover::store::Store;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_claude-failover");

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

fn read_all(dir: &Path) -> usize {
    let mut n = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if !p.file_name().unwrap().to_str().unwrap().starts_with('.') {
                n += std::fs::read(&p).unwrap().len();
            }
        }
    }
    n
}

/// Runs the CLI and returns its peak resident memory (KiB), from wait4.
#[allow(clippy::zombie_processes)] // reaped by wait4 below, which also gives its rusage
fn cli_rss_kib(store: &Path, args: &[&str]) -> i64 {
    let child = Command::new(BIN)
        .arg("--store")
        .arg(store)
        .args(args)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut status = 0;
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = unsafe { libc::wait4(child.id() as libc::pid_t, &mut status, 0, &mut ru) };
    assert_eq!(pid, child.id() as libc::pid_t);
    assert_eq!(status, 0);
    ru.ru_maxrss
}

fn cli(store: &Path, args: &[&str]) -> Duration {
    let t = Instant::now();
    let out = Command::new(BIN)
        .arg("--store")
        .arg(store)
        .args(args)
        .output()
        .unwrap();
    let d = t.elapsed();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    d
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` asks for a list
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("manifests");
    std::fs::create_dir_all(&dir).unwrap();
    for i in 0..1000 {
        std::fs::write(dir.join(format!("s-{i:04}.yaml")), manifest(i)).unwrap();
    }
    let rounds = 5;

    // --- memory first, while this process is small (a spawned child
    // shares our pages until exec, and wait4 counts them) ---
    let dir10k = tmp.path().join("manifests-10k");
    std::fs::create_dir_all(&dir10k).unwrap();
    for i in 0..10_000 {
        std::fs::write(dir10k.join(format!("s-{i:05}.yaml")), manifest(i)).unwrap();
    }
    let big = tmp.path().join("big");
    let rss_version = cli_rss_kib(&big, &["version"]);
    let rss_apply = cli_rss_kib(
        &tmp.path().join("rss-apply"),
        &["apply", "-f", dir.to_str().unwrap()],
    );
    let rss_apply_10k = cli_rss_kib(&big, &["apply", "-f", dir10k.to_str().unwrap()]);
    let rss_1k = cli_rss_kib(
        &tmp.path().join("rss-apply"),
        &["get", "sessions", "-o", "json"],
    );
    let rss_10k = cli_rss_kib(&big, &["get", "sessions", "-o", "json"]);

    // --- apply 1,000 ---
    let floor = median(
        (0..rounds)
            .map(|_| {
                let t = Instant::now();
                read_all(&dir);
                t.elapsed()
            })
            .collect(),
    );
    let lib = median(
        (0..rounds)
            .map(|r| {
                let store = Store::open(tmp.path().join(format!("lib-{r}"))).unwrap();
                let t = Instant::now();
                let loaded = load_paths(
                    std::slice::from_ref(&dir),
                    &LoadOptions {
                        recursive: false,
                        namespace: "default".into(),
                    },
                );
                assert!(loaded.errors.is_empty());
                let values: Vec<_> = loaded.objects.iter().map(|d| d.object.to_value()).collect();
                let done = store.apply_all(&values, false).unwrap();
                assert_eq!(done.len(), 1000);
                t.elapsed()
            })
            .collect(),
    );
    let cli_apply = median(
        (0..rounds)
            .map(|r| {
                cli(
                    &tmp.path().join(format!("cli-{r}")),
                    &["apply", "-f", dir.to_str().unwrap()],
                )
            })
            .collect(),
    );
    let reapply = median(
        (0..rounds)
            .map(|_| {
                cli(
                    &tmp.path().join("cli-0"),
                    &["apply", "-f", dir.to_str().unwrap()],
                )
            })
            .collect(),
    );

    // --- get 10,000 ---
    let store = Store::open(&big).unwrap();
    let sessions = big.join("sessions");
    let floor_get = median(
        (0..rounds)
            .map(|_| {
                let t = Instant::now();
                read_all(&sessions);
                t.elapsed()
            })
            .collect(),
    );
    let lib_list = median(
        (0..rounds)
            .map(|_| {
                let t = Instant::now();
                assert_eq!(
                    store
                        .list(claude_failover::api::Kind::Session, None)
                        .unwrap()
                        .len(),
                    10_000
                );
                t.elapsed()
            })
            .collect(),
    );
    let cli_get = median(
        (0..rounds)
            .map(|_| cli(&big, &["get", "sessions"]))
            .collect(),
    );

    // --- memory of `get`, 1,000 vs 10,000 objects ---

    let ms = |d: Duration| format!("{:8.1} ms", d.as_secs_f64() * 1000.0);
    let x = |a: Duration, b: Duration| format!("{:5.1}x floor", a.as_secs_f64() / b.as_secs_f64());
    println!(
        "store benchmark (median of {rounds}; this machine, {} cores)",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    println!("floor: read 1,000 manifest files          {}", ms(floor));
    println!(
        "apply 1,000 (library: parse+validate+write) {} {}",
        ms(lib),
        x(lib, floor)
    );
    println!(
        "apply 1,000 (CLI process, new store)      {} {}",
        ms(cli_apply),
        x(cli_apply, floor)
    );
    println!(
        "apply 1,000 (CLI process, all unchanged)  {} {}",
        ms(reapply),
        x(reapply, floor)
    );
    println!(
        "floor: read 10,000 stored object files    {}",
        ms(floor_get)
    );
    println!(
        "list 10,000 (library)                     {} {}",
        ms(lib_list),
        x(lib_list, floor_get)
    );
    println!(
        "get 10,000 (CLI process, table)           {} {}",
        ms(cli_get),
        x(cli_get, floor_get)
    );
    println!(
        "peak RSS: `version` {rss_version} KiB, `apply` of 1,000 {rss_apply} KiB, of 10,000 {rss_apply_10k} KiB"
    );
    println!(
        "peak RSS of `get -o json`: 1,000 objects {rss_1k} KiB, 10,000 objects {rss_10k} KiB ({:.1} KiB per object)",
        (rss_10k - rss_1k) as f64 / 9000.0
    );
}

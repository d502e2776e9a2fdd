//! The failover of sessions spread over two nodes against the same
//! sessions on one node, with the real Claude Code against the fake API,
//! on a real 3-member etcd on loopback (tests/common/etcd.rs): two daemons
//! as nodes `node-a` (leading) and `node-b`; 8 sessions on account a, each
//! with a conversation to resume, either all on node-a or 4 on each; from
//! the trigger (`claude-failover failover a --to b`) to all 8 Ready on b,
//! resumed; beside the same 8 on one daemon on the local store. Each
//! node's daemon (with its tmux server and agents) is bound to a core of
//! its own: node-a to core 0, node-b to core 1, as two machines of one
//! core; the single daemon on the local store to core 0. Rounds
//! alternate the three layouts, each on a fresh cluster and pool; medians,
//! and the two-node figure as a ratio of the one-node one.
//!
//! Run: `cargo bench --bench failover_nodes` (needs etcd and Claude Code;
//! prints its figures; asserts nothing).

#[path = "../tests/common/mod.rs"]
mod common;

use common::etcd::Cluster;
use common::pool::{Pool, claude_bin};
use common::{TmuxServer, wait_for};
use serde_json::Value;
use std::time::{Duration, Instant};

const N: usize = 8;
const ROUNDS: usize = 3;
const TOKENS: [&str; 2] = [
    "sk-ant-oat01-bench-nodes-account-a",
    "sk-ant-oat01-bench-nodes-account-b",
];
const LIMIT: Duration = Duration::from_secs(180);

fn on(v: &Value, account: &str) -> bool {
    v["status"]["account"] == account
        && v["status"]["phase"] == "Idle"
        && v["status"]["lastSwap"]["state"] == "Done"
}

/// Where the sessions run.
#[derive(Clone, Copy, PartialEq)]
enum Layout {
    /// One daemon on the local store.
    Local,
    /// Two daemons on etcd, all sessions on node-a.
    OneNode,
    /// Two daemons on etcd, half the sessions on each.
    TwoNodes,
}

/// One failover of the N sessions laid out as `layout`: from the trigger
/// to all Ready on b.
fn failover(layout: Layout) -> Duration {
    let mut pool = Pool::new(claude_bin().expect("Claude Code: npm ci --prefix tools/claude-code"));
    let _cluster = (layout != Layout::Local).then(|| {
        let cluster = Cluster::start(3);
        pool.use_store(&cluster.url("bench"));
        cluster
    });
    let spread = layout == Layout::TwoNodes;
    let config_b = pool.second_node_config();
    let _tmux_b = TmuxServer(pool.path("tmux-b.sock"));
    for (i, name) in ["a", "b"].iter().enumerate() {
        pool.apply(&pool.account_with_token(name, i as i32 * 10, TOKENS[i]));
    }
    let names: Vec<String> = (0..N).map(|i| format!("s{i}")).collect();
    let mut all = String::new();
    for (i, n) in names.iter().enumerate() {
        let node = if spread && i % 2 == 1 {
            "node-b"
        } else {
            "node-a"
        };
        all.push_str("---\n");
        all.push_str(
            &pool
                .session_yaml(n, Some("a"), &[])
                .replace("spec:\n", &format!("spec:\n  nodeName: {node}\n")),
        );
    }
    pool.apply(&all);
    on_cpu(0, || {
        pool.start_daemon_with(&["--node", "node-a", "--log-level", "warn"], &[])
    });
    wait_for("node-a to lead", LIMIT, || {
        let o = pool.ok(&["get", "nodes", "-o", "json"]);
        let v: Value = serde_json::from_str(&o).ok()?;
        v["items"]
            .as_array()?
            .iter()
            .any(|n| n["metadata"]["name"] == "node-a" && n["status"]["leading"] == true)
            .then_some(())
    });
    if layout != Layout::Local {
        on_cpu(1, || {
            pool.start_daemon_from(&config_b, &["--node", "node-b", "--log-level", "warn"])
        });
    }
    for n in &names {
        pool.wait_phase(n, "Idle");
    }
    // Every session has a conversation to resume: a turn each.
    let mut tasks = String::new();
    for n in &names {
        tasks.push_str("---\n");
        tasks.push_str(&pool.task_yaml(
            &format!("turn-{n}"),
            &format!("bench turn of {n}"),
            &format!("  session: {n}\n"),
        ));
    }
    pool.apply(&tasks);
    for n in &names {
        pool.wait_task_phase(&format!("turn-{n}"), "Succeeded");
    }
    for n in &names {
        pool.wait_phase(n, "Idle");
    }
    let t = Instant::now();
    pool.ok(&["failover", "a", "--to", "b", "--no-wait"]);
    wait_for("all on b", LIMIT, || {
        let o = pool.ok(&["get", "sessions", "-o", "json"]);
        let v: Value = serde_json::from_str(&o).ok()?;
        let items = v["items"].as_array()?;
        (items.len() == N && items.iter().all(|s| on(s, "b"))).then_some(())
    });
    t.elapsed()
}

/// Runs `f` with this thread bound to core `cpu`: the daemon it starts,
/// its tmux server and agents keep that core, as if each node were a
/// machine of one core (the etcd members and the CLI run on any). On a
/// machine of one core, unbound.
fn on_cpu<T>(cpu: usize, f: impl FnOnce() -> T) -> T {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cores < 2 {
        return f();
    }
    bind(&[cpu]);
    let r = f();
    bind(&(0..cores).collect::<Vec<_>>());
    r
}

fn bind(cpus: &[usize]) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; the calls only read
    // and write it, and set this thread's own affinity.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_ZERO(&mut set);
        for c in cpus {
            libc::CPU_SET(*c, &mut set);
        }
        let ok = libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
        assert_eq!(ok, 0, "sched_setaffinity");
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:7.0} ms", d.as_secs_f64() * 1000.0)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let (mut local, mut one, mut two) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        local.push(failover(Layout::Local));
        one.push(failover(Layout::OneNode));
        two.push(failover(Layout::TwoNodes));
    }
    println!(
        "failover of {N} sessions on etcd (3 members on loopback), each node bound to a core of its own, trigger to all Ready on the target; real Claude Code; {ROUNDS} alternating rounds"
    );
    let list = |v: &[Duration]| {
        v.iter()
            .map(|d| format!("{:.0}", d.as_secs_f64() * 1000.0))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let (m0, m1, m2) = (
        median(local.clone()),
        median(one.clone()),
        median(two.clone()),
    );
    println!(
        "  all {N} on the local store  median {}  ({} ms)",
        ms(m0),
        list(&local)
    );
    println!(
        "  all {N} on one node       median {}  ({} ms)",
        ms(m1),
        list(&one)
    );
    println!(
        "  {} on each of two nodes   median {}  ({} ms)",
        N / 2,
        ms(m2),
        list(&two)
    );
    println!(
        "  two nodes / one node      {:.2}x   one node on etcd / local store {:.2}x",
        m2.as_secs_f64() / m1.as_secs_f64(),
        m1.as_secs_f64() / m0.as_secs_f64()
    );
}

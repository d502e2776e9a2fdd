//! One pool over two nodes with the real Claude Code (docs/distributed.md):
//! two daemons, each with its own state dir, listener and tmux server, as
//! two nodes of one real 3-member etcd cluster; a fake Anthropic API on
//! 127.0.0.1 serves both nodes' agents.

mod common;
use common::etcd::Cluster;
use common::pool::{LONG, Pool, claude};
use common::{TmuxServer, wait_for};
use serde_json::Value;

const KEY: (&str, &str) = (
    "ANTHROPIC_API_KEY",
    "sk-ant-api03-test-key-nodes-00000000000000",
);

/// Tasks go to the agents of both nodes, each typed once: while replies
/// are held each Session holds one task, one on each node; released,
/// every task succeeds, its prompt having reached the API once.
#[test]
#[cfg_attr(
    any(not(claude_code), not(etcd)),
    ignore = "needs Claude Code (npm ci --prefix tools/claude-code) and etcd"
)]
fn tasks_run_on_the_real_agents_of_two_nodes_each_once() {
    let cluster = Cluster::start(3);
    let mut pool = Pool::new(claude());
    pool.use_store(&cluster.url("claude"));
    let config_b = pool.second_node_config();
    let _tmux_b = TmuxServer(pool.path("tmux-b.sock"));

    pool.apply(&pool.account_yaml("a", 10));
    for (s, node) in [("w-a", "node-a"), ("w-b", "node-b")] {
        let yaml = pool
            .session_yaml(s, Some("a"), &[KEY])
            .replace("spec:\n", &format!("spec:\n  nodeName: {node}\n"));
        pool.apply(&yaml);
    }
    let a = pool.start_daemon_with(&["--node", "node-a", "--log-level", "info"], &[]);
    pool.wait_log(a, "leader lease acquired");
    let b = pool.start_daemon_from(&config_b, &["--node", "node-b", "--log-level", "info"]);
    for s in ["w-a", "w-b"] {
        let v = pool.wait_phase(s, "Idle");
        let node = if s == "w-a" { "node-a" } else { "node-b" };
        assert_eq!(v["status"]["nodeName"], node, "{v}");
    }
    assert!(
        pool.daemon_log(b)
            .contains("another daemon leads this store")
    );

    pool.api.hold();
    for i in 0..6 {
        pool.apply(&pool.task_yaml(&format!("t{i}"), &format!("unique job number {i}"), ""));
    }
    let running = wait_for("one task running on each node", LONG, || {
        let out = pool.ok(&["get", "tasks", "-o", "json"]);
        let v: Value = serde_json::from_str(&out).unwrap();
        let mut sessions: Vec<String> = v["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["status"]["phase"] == "Running")
            .map(|t| t["status"]["session"].as_str().unwrap().to_string())
            .collect();
        sessions.sort();
        (sessions.len() == 2).then_some(sessions)
    });
    assert_eq!(running, ["w-a", "w-b"], "one task per session at a time");
    pool.api.release();
    for i in 0..6 {
        let v = pool.wait_task_phase(&format!("t{i}"), "Succeeded");
        assert_eq!(v["status"]["attempts"], 1, "{v}");
        assert!(
            v["status"]["message"].as_str().unwrap().starts_with("ok: "),
            "{v}"
        );
    }
    for i in 0..6 {
        assert_eq!(
            pool.deliveries(&format!("unique job number {i}")),
            1,
            "task t{i}"
        );
    }
}

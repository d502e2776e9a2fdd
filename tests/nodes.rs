//! Nodes (docs/distributed.md): each daemon registers a Node with its
//! heartbeat, capacity and accounts' config dirs; the leader marks a Node
//! NotReady when its heartbeat is older than `NODE_TTL`, and Ready again
//! when it beats. On the local store with one daemon, and with two daemons
//! as two nodes of one real etcd cluster (tests/common/etcd.rs): a stopped
//! node goes NotReady and comes back, a killed leader's standby takes
//! over and its Node says so. One pool over two nodes: tests/nodes_pool.rs.

mod common;
use claude_failover::api::NODE_HEARTBEAT_EVERY;
use claude_failover::store::LEADER_TTL;
use common::daemon::{Daemon, T};
use common::etcd::Cluster;
use common::nodes::*;
use common::*;

#[test]
fn a_daemon_registers_its_node_with_heartbeat_capacity_and_config_dirs() {
    let env = Env::new();
    std::fs::create_dir_all(env.path("cfg-work")).unwrap();
    env.write(
        "accounts.yaml",
        &format!(
            "apiVersion: claude-failover.io/v1alpha1\nkind: Account\nmetadata: {{name: work}}\nspec: {{configDir: {}}}\n---\napiVersion: claude-failover.io/v1alpha1\nkind: Account\nmetadata: {{name: elsewhere}}\nspec: {{configDir: /nonexistent/cfg}}\n",
            env.path("cfg-work").display()
        ),
    );
    env.ok(&["apply", "-f", env.path("accounts.yaml").to_str().unwrap()]);
    let empty = env.run(&["get", "nodes"]);
    assert_eq!(empty.code, 0, "{}", empty.stderr);
    assert_eq!(empty.stderr.trim(), "No resources found.");

    let _d = Daemon::start(&env, &["--node", "node-a", "--capacity", "4"]);
    wait_ready(&env, "node-a", "True", T);
    // Its first heartbeat went before it led; the next says it leads.
    let v = wait_for("node-a's heartbeat to say it leads", T, || {
        node(&env, "node-a").filter(|v| v["status"]["leading"] == true)
    });
    let st = &v["status"];
    assert_eq!(st["capacity"]["sessions"], 4, "{v}");
    assert_eq!(
        st["configDirs"]["default/work"],
        env.path("cfg-work").display().to_string(),
        "{v}"
    );
    assert!(
        st["configDirs"].get("default/elsewhere").is_none(),
        "a config dir missing on this machine is not listed: {v}"
    );
    assert_eq!(v["metadata"]["namespace"], "claude-failover-system");
    let daemon = st["daemon"].as_str().unwrap();
    assert!(daemon.contains(':'), "{daemon}");

    // The heartbeat moves.
    let first = st["heartbeatTime"].as_str().unwrap().to_string();
    wait_for("a newer heartbeat", NODE_HEARTBEAT_EVERY * 10, || {
        node(&env, "node-a").filter(|v| v["status"]["heartbeatTime"].as_str() != Some(&first))
    });

    // The table, in any namespace the user works in (Nodes are the pool's).
    for ns in [&[][..], &["-n", "team-b"][..]] {
        let mut args = ns.to_vec();
        args.extend(["get", "nodes"]);
        let t = env.ok(&args);
        let lines: Vec<&str> = t.lines().collect();
        let head: Vec<&str> = lines[0].split_whitespace().collect();
        assert_eq!(
            head,
            ["NAME", "STATUS", "SESSIONS", "HEARTBEAT", "AGE"],
            "{t}"
        );
        let row: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(&row[..3], ["node-a", "Ready", "0"], "{t}");
        assert!(row[3].ends_with('s'), "heartbeat age in seconds: {t}");
    }
    let wide = env.ok(&["get", "nodes", "-o", "wide"]);
    assert!(
        wide.contains("default/work") && wide.contains("yes"),
        "{wide}"
    );
    let led = env.ok(&[
        "get",
        "nodes",
        "--field-selector",
        "status.leading=true",
        "-o",
        "name",
    ]);
    assert!(led.contains("node-a"), "{led}");
    let none = env.run(&["get", "nodes", "--field-selector", "status.leading=false"]);
    assert!(none.stdout.is_empty(), "{}", none.stdout);
    let d = env.ok(&["describe", "node", "node-a"]);
    assert!(d.contains("NodeReady"), "the leader's event: {d}");
    // A second daemon may not take a live node's name.
    let other = Env::on_store(env.store().to_str().unwrap());
    let out = other.run(&["run", "--listen", "127.0.0.1:0", "--node", "node-a"]);
    assert_ne!(out.code, 0);
    assert!(
        out.stderr
            .contains("node node-a is already run by the daemon"),
        "{}",
        out.stderr
    );
    let bad = other.run(&["run", "--listen", "127.0.0.1:0", "--node", "Bad_Name"]);
    assert!(
        bad.code != 0 && bad.stderr.contains("--node"),
        "{}",
        bad.stderr
    );
}

/// Two daemons as two nodes of one etcd store, each with its own state
/// dir and tmux socket: both register, one leads. The standby stopped
/// (SIGSTOP) past the TTL goes NotReady with a warning event, and Ready
/// again once it runs (SIGCONT). The leader killed (-9): the standby
/// leads within the leader lease's TTL, its Node says so, and the dead
/// leader's Node goes NotReady.
#[test]
#[cfg_attr(not(etcd), ignore = "etcd is not installed")]
fn two_nodes_on_etcd_heartbeat_go_not_ready_and_take_over() {
    let c = Cluster::start(3);
    let url = c.url("nodes");
    let (env_a, env_b) = (Env::on_store(&url), Env::on_store(&url));
    let a = NodeDaemon::start(&env_a, "node-a");
    wait_for("node-a to lead", T, || {
        leading(&env_a, "node-a").then_some(())
    });
    let b = NodeDaemon::start(&env_b, "node-b");
    wait_ready(&env_a, "node-a", "True", T);
    let v = wait_ready(&env_a, "node-b", "True", T);
    assert_eq!(v["status"]["leading"], false, "a standby: {v}");
    let t = env_a.ok(&["get", "nodes"]);
    assert!(t.contains("node-a") && t.contains("node-b"), "{t}");

    // node-b stops heartbeating: NotReady, then back.
    b.signal(libc::SIGSTOP);
    let v = wait_ready(&env_a, "node-b", "False", expiry());
    let cond = v["status"]["conditions"][0].clone();
    assert_eq!(cond["reason"], "HeartbeatExpired", "{v}");
    let d = env_a.ok(&["describe", "node", "node-b"]);
    assert!(d.contains("NodeNotReady"), "{d}");
    assert_eq!(ready(&node(&env_a, "node-a").unwrap()), Some("True"));
    b.signal(libc::SIGCONT);
    wait_ready(&env_a, "node-b", "True", expiry());

    // The leader dies: node-b leads within the lease's TTL (with room for
    // a loaded machine), and marks node-a NotReady.
    let mut a = a;
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    wait_for("node-b to lead", LEADER_TTL * 3 + T / 2, || {
        leading(&env_b, "node-b").then_some(())
    });
    assert!(b.log().contains("leader lease acquired"), "{}", b.log());
    wait_ready(&env_b, "node-a", "False", expiry());
    wait_ready(&env_b, "node-b", "True", T);
}

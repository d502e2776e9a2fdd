//! One pool over two nodes (docs/distributed.md): two daemons, each with
//! its own state dir and tmux server, as two nodes of one real etcd
//! cluster (tests/common/etcd.rs), with simulated agents: placement, tasks
//! on both nodes each typed once, a killed leader, a stopped node's
//! Sessions lost and back, an account's Sessions on both nodes failing
//! over together.

mod common;
use claude_failover::store::LEADER_TTL;
use common::daemon::T;
use common::etcd::Cluster;
use common::nodes::*;
use common::*;
use serde_json::Value;
use std::collections::BTreeMap;

/// A Session of the pool below, unpinned or pinned to `node`.
fn sim_session(name: &str, workdir: &std::path::Path, node: Option<&str>) -> String {
    let pin = node
        .map(|n| format!("  nodeName: {n}\n"))
        .unwrap_or_default();
    format!(
        "{HEAD}kind: Session\nmetadata:\n  name: {name}\nspec:\n  workdir: {}\n{pin}  agent:\n    command: {BIN}\n    args: [\"sim-agent\"]\n    env:\n      SIM_AGENT_STARTUP_MS: \"50\"\n      SIM_AGENT_TURN_MS: \"200\"\n---\n",
        workdir.display()
    )
}

/// The Sessions as stored: name -> (node, phase, pid).
fn sessions(env: &Env) -> BTreeMap<String, (String, String, Option<i64>)> {
    let o = env.ok(&["get", "sessions", "-o", "json"]);
    let v: Value = serde_json::from_str(&o).unwrap();
    v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let st = &s["status"];
            (
                s["metadata"]["name"].as_str().unwrap().to_string(),
                (
                    st["nodeName"].as_str().unwrap_or_default().to_string(),
                    st["phase"].as_str().unwrap_or_default().to_string(),
                    st["pid"].as_i64(),
                ),
            )
        })
        .collect()
}

/// The pids of the panes of the tmux server at `sock`.
fn pane_pids(sock: &std::path::Path) -> Vec<i64> {
    let out = std::process::Command::new("tmux")
        .arg("-S")
        .arg(sock)
        .args(["list-panes", "-a", "-F", "#{pane_pid}"])
        .env_remove("TMUX")
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Creates tasks `prefix-0..n` and waits until every one Succeeded; the
/// session each ran on.
fn run_tasks(env: &Env, prefix: &str, n: usize) -> BTreeMap<String, String> {
    let mut yaml = String::new();
    for i in 0..n {
        yaml.push_str(&format!(
            "{HEAD}kind: Task\nmetadata: {{name: {prefix}-{i}}}\nspec:\n  prompt: \"{prefix} task {i}\"\n---\n"
        ));
    }
    let f = env.write(&format!("{prefix}.yaml"), &yaml);
    env.ok(&["apply", "-f", f.to_str().unwrap()]);
    wait_for(&format!("the {prefix} tasks to succeed"), T * 2, || {
        let o = env.ok(&["get", "tasks", "-o", "json"]);
        let v: Value = serde_json::from_str(&o).ok()?;
        let done: BTreeMap<String, String> = v["items"]
            .as_array()?
            .iter()
            .filter(|t| {
                t["metadata"]["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with(&format!("{prefix}-")))
            })
            .filter(|t| t["status"]["phase"] == "Succeeded")
            .map(|t| {
                (
                    t["metadata"]["name"].as_str().unwrap().to_string(),
                    t["status"]["session"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                )
            })
            .collect();
        (done.len() == n).then_some(done)
    })
}

/// How many times each task's prompt reached an agent (the simulated
/// agents append each submitted prompt to their account's
/// `history.jsonl`, as Claude Code does).
fn typed(env: &Env) -> BTreeMap<String, usize> {
    let text = std::fs::read_to_string(env.path("accounts/sim/history.jsonl")).unwrap_or_default();
    let mut n = BTreeMap::new();
    for l in text.lines() {
        if let Ok(v) = serde_json::from_str::<Value>(l) {
            let d = v["display"].as_str().unwrap_or_default();
            if d.starts_with('/') {
                continue; // a command the dispatcher typed (`/model`)
            }
            // Without the dispatcher's marker (` ⟦task 1a2b3c4d⟧`).
            let prompt = d.split(" ⟦").next().unwrap_or(d).to_string();
            *n.entry(prompt).or_default() += 1;
        }
    }
    n
}

/// Two daemons as two nodes of one 3-member etcd cluster, each with its
/// own state dir and tmux server: node-a leads, node-b is Ready. Both
/// share the machine's transcript folder (they share its accounts' config
/// dirs, docs/distributed.md). Fields drop in order: the daemons, their
/// tmux servers, then the cluster.
struct TwoNodes {
    a: NodeDaemon,
    b: NodeDaemon,
    _tmux: (TmuxServer, TmuxServer),
    env_a: Env,
    env_b: Env,
    sock_a: std::path::PathBuf,
    _cluster: Cluster,
}

impl TwoNodes {
    fn start(prefix: &str) -> TwoNodes {
        let cluster = Cluster::start(3);
        let url = cluster.url(prefix);
        let (env_a, env_b) = (Env::on_store(&url), Env::on_store(&url));
        let transcripts = env_a.path("transcripts");
        for env in [&env_a, &env_b] {
            env.write(
                "config/claude-failover/config.yaml",
                &format!("transcriptsDir: {}\n", transcripts.display()),
            );
        }
        let sock_a = common::daemon::state_dir(&env_a).join("tmux.sock");
        let sock_b = common::daemon::state_dir(&env_b).join("tmux.sock");
        let tmux = (TmuxServer(sock_a.clone()), TmuxServer(sock_b));
        let a = NodeDaemon::start(&env_a, "node-a");
        wait_for("node-a to lead", T, || {
            leading(&env_a, "node-a").then_some(())
        });
        let b = NodeDaemon::start(&env_b, "node-b");
        wait_ready(&env_a, "node-b", "True", T);
        TwoNodes {
            a,
            b,
            _tmux: tmux,
            env_a,
            env_b,
            sock_a,
            _cluster: cluster,
        }
    }

    fn sock_b(&self) -> &std::path::Path {
        &self._tmux.1.0
    }
}

/// Waits until the `n` Sessions are Idle with an agent; as [`sessions`].
fn idle(env: &Env, n: usize) -> BTreeMap<String, (String, String, Option<i64>)> {
    wait_for(&format!("{n} sessions Idle"), T * 2, || {
        let s = sessions(env);
        (s.len() == n && s.values().all(|(_, p, pid)| p == "Idle" && pid.is_some())).then_some(s)
    })
}

/// Two daemons as two nodes of one etcd store run one pool: the leader
/// places the Sessions over both (one pinned by `spec.nodeName`), each
/// node's agents run in its own tmux server, and tasks go to both nodes,
/// each typed once. The leader killed (-9): the other node leads and the
/// work goes on on its sessions, while the dead node's agents keep
/// running; the dead node's daemon started again adopts them (same pids)
/// and takes work again.
#[test]
#[cfg_attr(not(etcd), ignore = "etcd is not installed")]
fn one_pool_over_two_nodes_runs_tasks_on_both_each_once() {
    let mut n = TwoNodes::start("pool");
    let (env_a, env_b) = (&n.env_a, &n.env_b);
    let (sock_a, sock_b) = (n.sock_a.clone(), n.sock_b().to_path_buf());

    let workdir = env_a.path("work");
    let pool = sim_pool_manifest(env_a, "s0", &workdir);
    let mut more = String::new();
    for i in 1..4 {
        more.push_str(&sim_session(&format!("s{i}"), &workdir, None));
    }
    more.push_str(&sim_session("pinned", &workdir, Some("node-b")));
    let more = env_a.write("more.yaml", &more);
    env_a.ok(&[
        "apply",
        "-f",
        pool.to_str().unwrap(),
        "-f",
        more.to_str().unwrap(),
    ]);
    let placed = idle(env_a, 5);
    assert_eq!(placed["pinned"].0, "node-b", "{placed:?}");
    let on = |n: &str| placed.values().filter(|(node, _, _)| node == n).count();
    assert!(on("node-a") >= 2 && on("node-b") >= 2, "spread: {placed:?}");
    // Each node's agents run in its own tmux server.
    let (pa, pb) = (pane_pids(&sock_a), pane_pids(&sock_b));
    for (name, (node, _, pid)) in &placed {
        let (mine, other) = if node == "node-a" {
            (&pa, &pb)
        } else {
            (&pb, &pa)
        };
        assert!(
            mine.contains(&pid.unwrap()) && !other.contains(&pid.unwrap()),
            "{name} on {node}: {placed:?} a={pa:?} b={pb:?}"
        );
    }
    let g = env_a.ok(&["get", "sessions", "-o", "wide"]);
    assert!(g.contains("NODE") && g.contains("node-b"), "{g}");
    assert!(
        env_a
            .ok(&["describe", "session", "s1"])
            .contains("Scheduled")
    );

    // Tasks flow to both nodes, each typed once.
    let ran = run_tasks(env_a, "first", 16);
    let node_of = |s: &str| placed[s].0.clone();
    let nodes_used: std::collections::BTreeSet<String> = ran.values().map(|s| node_of(s)).collect();
    assert_eq!(nodes_used.len(), 2, "tasks ran on both nodes: {ran:?}");
    for (prompt, n) in typed(env_a) {
        assert_eq!(n, 1, "{prompt:?} typed {n} times");
    }
    let nodes = env_a.ok(&["get", "nodes"]);
    assert!(
        nodes.lines().any(|l| l.starts_with("node-b")
            && l.split_whitespace().nth(2) == Some(&on("node-b").to_string())),
        "{nodes}"
    );

    // The metrics say where the Sessions are and that the store answers.
    let api: Value = serde_json::from_slice(
        &std::fs::read(common::daemon::state_dir(env_a).join("api.json")).unwrap(),
    )
    .unwrap();
    let metrics_url = format!("{}/metrics", api["url"].as_str().unwrap());
    let want = format!(
        "claude_failover_node_sessions{{node=\"node-b\"}} {}",
        on("node-b")
    );
    let m = wait_for("the node gauges", T, || {
        let (code, body) = common::daemon::call("GET", &metrics_url, None, None);
        (code == 200 && body.contains(&want)).then_some(body)
    });
    assert!(
        m.contains("claude_failover_node_ready{node=\"node-a\"} 1"),
        "{m}"
    );
    assert!(m.contains("claude_failover_store_available 1"), "{m}");

    // The leader dies: node-b leads; the work goes on there.
    n.a.child.kill().unwrap();
    n.a.child.wait().unwrap();
    wait_for("node-b to lead", LEADER_TTL * 3 + T / 2, || {
        leading(env_b, "node-b").then_some(())
    });
    let ran = run_tasks(env_b, "second", 6);
    assert!(ran.values().all(|s| node_of(s) == "node-b"), "{ran:?}");
    // node-a's agents were left running.
    let alive = pane_pids(&sock_a);
    for (name, (node, _, pid)) in &placed {
        if node == "node-a" {
            assert!(
                alive.contains(&pid.unwrap()),
                "{name}'s agent on node-a went: {alive:?}"
            );
        }
    }
    // node-a's daemon comes back: it adopts its agents and works again.
    n.a = NodeDaemon::start(&n.env_a, "node-a");
    let (env_a, env_b) = (&n.env_a, &n.env_b);
    wait_ready(env_b, "node-a", "True", expiry());
    let ran = run_tasks(env_b, "third", 12);
    let after = sessions(env_b);
    for (name, (node, _, pid)) in &placed {
        assert_eq!(&after[name].0, node, "{name} stayed on its node");
        assert_eq!(after[name].2, *pid, "{name}'s agent adopted, not restarted");
    }
    let nodes_used: std::collections::BTreeSet<String> = ran.values().map(|s| node_of(s)).collect();
    assert_eq!(nodes_used.len(), 2, "both nodes work again: {ran:?}");
    let typed = typed(env_a);
    assert_eq!(typed.len(), 16 + 6 + 12, "{typed:?}");
    for (prompt, n) in typed {
        assert_eq!(n, 1, "{prompt:?} typed {n} times");
    }
}

/// A node's daemon stopped (SIGSTOP) past its heartbeat's TTL: its
/// Sessions show NodeLost (with an event), no task goes to them, a task
/// that may run anywhere runs on the other node, one pinned to a lost
/// Session waits; the daemon resumed (SIGCONT), its Sessions are back
/// (same agents) and the pinned task runs there. No prompt typed twice.
#[test]
#[cfg_attr(not(etcd), ignore = "etcd is not installed")]
fn a_stopped_nodes_sessions_are_lost_until_it_returns() {
    let n = TwoNodes::start("lost");
    let (env_a, b) = (&n.env_a, &n.b);
    let workdir = env_a.path("work");
    let pool = sim_pool_manifest(env_a, "a1", &workdir);
    let more = env_a.write("b1.yaml", &sim_session("b1", &workdir, Some("node-b")));
    env_a.ok(&[
        "apply",
        "-f",
        pool.to_str().unwrap(),
        "-f",
        more.to_str().unwrap(),
    ]);
    let before = idle(env_a, 2);
    assert_eq!(before["a1"].0, "node-a", "{before:?}");

    b.signal(libc::SIGSTOP);
    wait_ready(env_a, "node-b", "False", expiry());
    let table = wait_for("b1 NodeLost", T, || {
        let t = env_a.ok(&["get", "sessions"]);
        t.lines()
            .any(|l| l.starts_with("b1") && l.contains("NodeLost"))
            .then_some(t)
    });
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("a1") && l.contains("Idle")),
        "{table}"
    );
    assert!(
        env_a
            .ok(&["describe", "session", "b1"])
            .contains("NodeLost")
    );
    // Work goes to the node that runs; a task for b1 waits, saying why.
    let ran = run_tasks(env_a, "during", 4);
    assert!(ran.values().all(|s| s == "a1"), "{ran:?}");
    let pinned = env_a.write(
        "pinned.yaml",
        &format!("{HEAD}kind: Task\nmetadata: {{name: for-b1}}\nspec:\n  prompt: \"for b1\"\n  session: b1\n"),
    );
    env_a.ok(&["apply", "-f", pinned.to_str().unwrap()]);
    let why = wait_for("the pinned task to say why it waits", T, || {
        let d = env_a.ok(&["describe", "task", "for-b1"]);
        d.contains("node-b is not Ready").then_some(d)
    });
    assert!(why.contains("Pending"), "{why}");

    // node-b returns: its session is back with the same agent, and runs
    // the task that waited for it.
    b.signal(libc::SIGCONT);
    wait_ready(env_a, "node-b", "True", expiry());
    let done = wait_for("the pinned task done", T * 2, || {
        let o = env_a.ok(&["get", "task", "for-b1", "-o", "json"]);
        let v: Value = serde_json::from_str(&o).ok()?;
        (v["status"]["phase"] == "Succeeded").then_some(v)
    });
    assert_eq!(done["status"]["session"], "b1", "{done}");
    let after = sessions(env_a);
    assert_eq!(
        after["b1"].2, before["b1"].2,
        "b1's agent adopted: {after:?}"
    );
    let o = env_a.ok(&["get", "session", "b1", "-o", "json"]);
    assert!(!o.contains("nodeLost"), "{o}");
    let typed = typed(env_a);
    assert_eq!(typed.len(), 5, "{typed:?}");
    for (prompt, n) in typed {
        assert_eq!(n, 1, "{prompt:?} typed {n} times");
    }
}

/// An account's Sessions on two nodes fail over together: a failover of
/// the account (decided by the leader) moves the Session on each node to
/// the target account, each relaunched by its own node's daemon with the
/// same conversation, in one swap.
#[test]
#[cfg_attr(not(etcd), ignore = "etcd is not installed")]
fn an_accounts_sessions_on_two_nodes_fail_over_together() {
    let n = TwoNodes::start("swap");
    let env_a = &n.env_a;
    let workdir = env_a.path("work");
    std::fs::create_dir_all(&workdir).unwrap();
    let mut yaml = String::new();
    for (i, acct) in ["one", "two"].iter().enumerate() {
        env_a.write(
            &format!("accounts/{acct}/.credentials.json"),
            &format!(
                r#"{{"claudeAiOauth": {{"accessToken": "t-{acct}", "refreshToken": "r-{acct}"}}}}"#
            ),
        );
        yaml.push_str(&format!(
            "{HEAD}kind: Account\nmetadata:\n  name: {acct}\nspec:\n  configDir: {}\n  priority: {}\n---\n",
            env_a.path(&format!("accounts/{acct}")).display(),
            10 - i
        ));
    }
    for (name, node) in [("x", "node-a"), ("y", "node-b")] {
        yaml.push_str(
            &sim_session(name, &workdir, Some(node)).replace("spec:\n", "spec:\n  account: one\n"),
        );
    }
    let f = env_a.write("pool.yaml", &yaml);
    env_a.ok(&["apply", "-f", f.to_str().unwrap()]);
    let get = |name: &str| -> Value {
        serde_json::from_str(&env_a.ok(&["get", "session", name, "-o", "json"])).unwrap()
    };
    let before: Vec<Value> = wait_for("x and y Idle on account one", T * 2, || {
        let v = [get("x"), get("y")];
        v.iter()
            .all(|s| s["status"]["phase"] == "Idle" && s["status"]["account"] == "one")
            .then(|| v.to_vec())
    });
    // A turn on each, so that each has a conversation to continue.
    let mut tasks = String::new();
    for name in ["x", "y"] {
        tasks.push_str(&format!(
            "{HEAD}kind: Task\nmetadata: {{name: before-{name}}}\nspec:\n  prompt: \"before on {name}\"\n  session: {name}\n---\n"
        ));
    }
    let f = env_a.write("tasks.yaml", &tasks);
    env_a.ok(&["apply", "-f", f.to_str().unwrap()]);
    wait_for("the turns done", T, || {
        let o = env_a.ok(&["get", "tasks", "-o", "json"]);
        let v: Value = serde_json::from_str(&o).ok()?;
        let items = v["items"].as_array()?;
        (items.len() == 2 && items.iter().all(|t| t["status"]["phase"] == "Succeeded"))
            .then_some(())
    });
    env_a.ok(&["failover", "one", "--to", "two", "--no-wait"]);
    let after: Vec<Value> = wait_for("x and y Idle on account two", T * 2, || {
        let v = [get("x"), get("y")];
        v.iter()
            .all(|s| s["status"]["phase"] == "Idle" && s["status"]["account"] == "two")
            .then(|| v.to_vec())
    });
    for (b, a) in before.iter().zip(&after) {
        let name = &a["metadata"]["name"];
        assert_eq!(
            a["status"]["agentSessionId"], b["status"]["agentSessionId"],
            "{name}: the same conversation"
        );
        assert_ne!(a["status"]["pid"], b["status"]["pid"], "{name}: relaunched");
        assert_eq!(a["status"]["nodeName"], b["status"]["nodeName"], "{name}");
        let swap = &a["status"]["lastSwap"];
        assert_eq!(swap["to"], "two", "{a}");
        assert_eq!(swap["reason"], "Manual", "{a}");
        assert_eq!(a["status"]["launch"]["resumed"], true, "{a}");
        assert_eq!(
            swap["epoch"], after[0]["status"]["lastSwap"]["epoch"],
            "one swap moved both"
        );
    }
    let swaps = env_a.ok(&["get", "swaps"]);
    assert_eq!(swaps.lines().count(), 2, "one swap: {swaps}");
}

/// What an agent on a node that does not lead says of its account reaches
/// the leader's account controller through the store: the only Session of
/// account `one` runs on node-b; its turns spend the simulated account's
/// budget, its statusLine says so to node-b's daemon, which writes it in
/// the Session (`status.usage`); the leader (node-a) turns the account
/// NearLimit and the Session moves to `two`, its conversation continued.
#[test]
#[cfg_attr(not(etcd), ignore = "etcd is not installed")]
fn usage_said_on_a_node_that_does_not_lead_moves_its_session() {
    let n = TwoNodes::start("usage");
    let env_a = &n.env_a;
    let workdir = env_a.path("work");
    std::fs::create_dir_all(&workdir).unwrap();
    // Two turns fill half of one's 5-hour budget: past its threshold.
    env_a.write(
        "accounts/one/sim-budget.json",
        r#"{"fiveHourTokens": 8000}"#,
    );
    let mut yaml = String::new();
    for (i, acct) in ["one", "two"].iter().enumerate() {
        env_a.write(
            &format!("accounts/{acct}/.credentials.json"),
            &format!(
                r#"{{"claudeAiOauth": {{"accessToken": "sk-ant-oat01-{acct}", "scopes": ["user:inference"], "subscriptionType": "max"}}}}"#
            ),
        );
        yaml.push_str(&format!(
            "{HEAD}kind: Account\nmetadata:\n  name: {acct}\nspec:\n  configDir: {}\n  priority: {}\n  thresholds: {{fiveHour: 40, sevenDay: 95}}\n---\n",
            env_a.path(&format!("accounts/{acct}")).display(),
            10 - i
        ));
    }
    yaml.push_str(
        &sim_session("y", &workdir, Some("node-b")).replace("spec:\n", "spec:\n  account: one\n"),
    );
    let f = env_a.write("pool.yaml", &yaml);
    env_a.ok(&["apply", "-f", f.to_str().unwrap()]);
    let get = |kind: &str, name: &str| -> Value {
        serde_json::from_str(&env_a.ok(&["get", kind, name, "-o", "json"])).unwrap()
    };
    let before = wait_for("y Idle on account one", T * 2, || {
        let v = get("session", "y");
        (v["status"]["phase"] == "Idle" && v["status"]["account"] == "one").then_some(v)
    });
    assert_eq!(before["status"]["nodeName"], "node-b");
    let mut tasks = String::new();
    for i in 0..2 {
        tasks.push_str(&format!(
            "{HEAD}kind: Task\nmetadata: {{name: turn-{i}}}\nspec:\n  prompt: \"turn {i}\"\n  session: y\n---\n"
        ));
    }
    let f = env_a.write("tasks.yaml", &tasks);
    env_a.ok(&["apply", "-f", f.to_str().unwrap()]);
    let one = wait_for("account one NearLimit", T * 2, || {
        let v = get("account", "one");
        (v["status"]["phase"] == "NearLimit").then_some(v)
    });
    let five = &one["status"]["usage"]["fiveHour"];
    assert_eq!(five["source"], "statusLine", "{one}");
    assert!(five["utilization"].as_f64().unwrap() >= 40.0, "{one}");
    let after = wait_for("y Idle on account two", T * 2, || {
        let v = get("session", "y");
        (v["status"]["phase"] == "Idle" && v["status"]["account"] == "two").then_some(v)
    });
    let st = &after["status"];
    assert_eq!(st["lastSwap"]["reason"], "NearLimit", "{after}");
    assert_eq!(st["nodeName"], "node-b");
    assert_eq!(st["agentSessionId"], before["status"]["agentSessionId"]);
    assert_eq!(st["launch"]["resumed"], true, "{after}");
}

//! The MCP server with a real MCP client: the official MCP Python SDK
//! (`mcp` on PyPI, pinned in tools/mcp-client/requirements.txt), over
//! stdio (`claude-failover mcp`) and over Streamable HTTP on the daemon's
//! listener: initialize, the tools of each scope, every tool called, a
//! schema error, resources and their change notifications, a 401.

mod common;
use common::daemon::{Daemon, T, token};
use common::*;
use serde_json::{Value, json};
use std::io::{BufRead, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Instant;

const SECRET: &str = "sk-ant-api03-never-shown-mcp-0000000000000";
/// A plain (not secret-looking) environment value, hidden all the same.
const NOTE: &str = "internal-note-never-shown";
const OPS_TOKEN: &str = "ops-token-0123456789abcdef0123456789abcdef";
const READ_TOOLS: [&str; 6] = [
    "list_sessions",
    "list_accounts",
    "list_tasks",
    "describe",
    "recent_events",
    "wait_task",
];
const WRITE_TOOLS: [&str; 4] = [
    "create_task",
    "cancel_task",
    "restart_session",
    "request_failover",
];

/// The Python with the MCP SDK: `MCP_PYTHON`, or the venv `.ci/run` makes.
/// Only called by tests the build marks as needing it (`cfg(mcp_sdk)`):
/// they are reported as ignored where it is missing.
fn python() -> PathBuf {
    std::env::var_os("MCP_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tools/mcp-client/.venv/bin/python")
        })
}

/// tests/mcp/client.py running one job: its JSON lines as they come.
struct PyClient {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<Value>,
}

impl Drop for PyClient {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl PyClient {
    fn start(python: &PathBuf, job: Value) -> PyClient {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/mcp/client.py");
        let mut child = Command::new(python)
            .arg("-W")
            .arg("ignore")
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(job.to_string().as_bytes())
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    return;
                }
            }
        });
        PyClient {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// The next line, parsed (failing after [`T`]).
    fn next(&mut self) -> Value {
        let line = self.lines.recv_timeout(T).unwrap_or_else(|_| {
            panic!("the MCP client said nothing more; so far: {:#?}", self.seen)
        });
        let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
        self.seen.push(v.clone());
        v
    }

    /// Every remaining line, until the client exits.
    fn rest(mut self) -> Vec<Value> {
        let deadline = Instant::now() + T;
        loop {
            match self
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(l) => self
                    .seen
                    .push(serde_json::from_str(&l).unwrap_or(json!({"raw": l}))),
                Err(mpsc::RecvTimeoutError::Disconnected) => return std::mem::take(&mut self.seen),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    panic!("the MCP client did not finish: {:#?}", self.seen)
                }
            }
        }
    }
}

/// Runs a job to its end; its lines after `connected`.
fn run(python: &PathBuf, job: Value) -> Vec<Value> {
    let all = PyClient::start(python, job).rest();
    assert!(
        all.first().is_some_and(|l| l["op"] == "connected"),
        "not connected: {all:#?}"
    );
    all[1..].to_vec()
}

fn http(d: &Daemon, token: &str) -> Value {
    json!({"http": {"url": format!("{}/mcp", d.url), "token": token}})
}

fn call(tool: &str, args: Value) -> Value {
    json!({"op": "call", "tool": tool, "args": args})
}

fn tool_names(step: &Value) -> Vec<String> {
    step["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_string())
        .collect()
}

/// A pool with two accounts and two (suspended: no agent runs) sessions,
/// one holding a secret in its environment; MCP config with a write token.
fn pool_env() -> Env {
    let env = Env::new();
    let token_file = env.write("ops-token", &format!("{OPS_TOKEN}\n"));
    let key_file = env.write("anthropic-key", SECRET);
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    env.write(
        "config/claude-failover/config.yaml",
        &format!(
            "mcp:\n  tokens:\n    - name: ops\n      tokenFile: {}\n      write: true\n",
            token_file.display()
        ),
    );
    // Each account logged in (a Console key), so both can take sessions.
    let dirs = ["a", "b"].map(|a| {
        env.write(
            &format!("accounts/{a}/.claude.json"),
            &format!("{{\"primaryApiKey\": \"sk-ant-api03-console-{a}\"}}"),
        )
        .parent()
        .unwrap()
        .display()
        .to_string()
    });
    let manifests = format!(
        "{HEAD}kind: Account\nmetadata:\n  name: a\nspec:\n  configDir: {a}\n---\n\
         {HEAD}kind: Account\nmetadata:\n  name: b\nspec:\n  configDir: {b}\n---\n\
         {HEAD}kind: Session\nmetadata:\n  name: s1\n  labels:\n    team: api\nspec:\n  workdir: /tmp\n  account: a\n  suspend: true\n  agent:\n    env:\n      ANTHROPIC_API_KEY: {{valueFrom: {{file: {key}}}}}\n      TEAM_NOTE: {NOTE}\n---\n\
         {HEAD}kind: Session\nmetadata:\n  name: s2\nspec:\n  workdir: /tmp\n  account: b\n  suspend: true\n",
        key = key_file.display(),
        a = dirs[0],
        b = dirs[1],
    );
    let f = env.write("pool.yaml", &manifests);
    env.ok(&["apply", "-f", f.to_str().unwrap()]);
    env
}

/// A change of account a (its priority), as a person would apply it.
fn change_account(env: &Env, priority: i32) {
    let f = env.write(
        "a.yaml",
        &format!(
            "{HEAD}kind: Account\nmetadata:\n  name: a\nspec:\n  configDir: {}\n  priority: {priority}\n",
            env.path("accounts/a").display()
        ),
    );
    env.ok(&["apply", "-f", f.to_str().unwrap()]);
}

fn result<'a>(steps: &'a [Value], tool: &str) -> &'a Value {
    steps
        .iter()
        .find(|s| s["tool"] == tool)
        .unwrap_or_else(|| panic!("no result of {tool}: {steps:#?}"))
}

#[test]
#[cfg_attr(
    not(mcp_sdk),
    ignore = "needs the MCP Python SDK: python3 -m venv tools/mcp-client/.venv && tools/mcp-client/.venv/bin/pip install -r tools/mcp-client/requirements.txt"
)]
fn python_sdk_over_http_sees_and_steers_the_pool() {
    let py = python();
    let env = pool_env();
    let d = Daemon::start(&env, &[]);

    // The ops token writes: every tool, each called.
    let steps = run(
        &py,
        json!({"server": http(&d, OPS_TOKEN), "mode": "legacy", "steps": [
            {"op": "info"},
            {"op": "tools"},
            call("list_sessions", json!({"selector": "team=api"})),
            call("list_accounts", json!({})),
            call("describe", json!({"kind": "session", "name": "s1"})),
            call("create_task", json!({"name": "t1", "prompt": "do it", "priority": "high", "selector": "team=api"})),
            call("list_tasks", json!({"phase": "Pending"})),
            call("wait_task", json!({"name": "t1", "timeoutSeconds": 1})),
            call("cancel_task", json!({"name": "t1"})),
            call("restart_session", json!({"name": "s2"})),
            call("request_failover", json!({"account": "a", "to": "b"})),
            call("recent_events", json!({"kind": "task", "name": "t1"})),
        ]}),
    );
    let info = &steps[0];
    assert_eq!(info["serverInfo"]["name"], "claude-failover", "{info}");
    assert_eq!(info["capabilities"]["resources"]["subscribe"], true);
    let mut all: Vec<&str> = READ_TOOLS.to_vec();
    all.extend(WRITE_TOOLS);
    assert_eq!(tool_names(&steps[1]), all);
    for s in &steps[2..] {
        assert_eq!(s["ok"], true, "{s}");
        assert_eq!(s["isError"], false, "{} failed: {}", s["tool"], s["text"]);
    }
    let sessions = &result(&steps, "list_sessions")["structured"];
    assert_eq!(sessions["count"], 1, "{sessions}");
    assert_eq!(sessions["items"][0]["name"], "s1");
    let accounts = &result(&steps, "list_accounts")["structured"]["items"];
    assert_eq!(accounts.as_array().unwrap().len(), 2);
    assert!(accounts[0]["phase"].is_string(), "{accounts}");
    let described = &result(&steps, "describe")["structured"];
    let shown_env = &described["object"]["spec"]["agent"]["env"];
    assert_eq!(shown_env["ANTHROPIC_API_KEY"], "(hidden)", "{shown_env}");
    assert_eq!(shown_env["TEAM_NOTE"], "(hidden)", "{shown_env}");
    assert!(!described.to_string().contains(NOTE), "{described}");
    let created = &result(&steps, "create_task")["structured"]["task"];
    assert_eq!(created["name"], "t1");
    assert_eq!(created["priority"], "high");
    assert_eq!(
        created["target"]["sessionSelector"]["matchLabels"]["team"],
        "api"
    );
    let listed = &result(&steps, "list_tasks")["structured"];
    assert_eq!(listed["items"][0]["name"], "t1", "{listed}");
    let waited = &result(&steps, "wait_task")["structured"];
    assert_eq!(waited["finished"], false, "{waited}");
    assert!(
        waited["note"]
            .as_str()
            .unwrap()
            .contains("call wait_task again")
    );
    assert!(
        result(&steps, "request_failover")["structured"]["plan"]
            .as_str()
            .unwrap()
            .contains("sessions s1 move from account a to account b")
    );
    // Every write is recorded with who asked.
    let events = result(&steps, "recent_events")["structured"]["items"]
        .as_array()
        .unwrap()
        .clone();
    let origin: Vec<&Value> = events
        .iter()
        .filter(|e| e["reason"] == "RequestedOverMcp")
        .collect();
    assert_eq!(origin.len(), 2, "create and cancel: {events:#?}");
    assert!(
        origin.iter().all(|e| e["source"] == "mcp"
            && e["message"]
                .as_str()
                .unwrap()
                .contains("MCP client \"ops\"")),
        "{origin:#?}"
    );
    for (kind, name) in [("session", "s2"), ("account", "a")] {
        let d = env.ok(&["describe", kind, name]);
        assert!(
            d.contains("RequestedOverMcp") && d.contains("MCP client \"ops\""),
            "{d}"
        );
    }
    // The cancel took effect (the dispatcher ends a pending task at once).
    let steps = run(
        &py,
        json!({"server": http(&d, OPS_TOKEN), "steps": [call("wait_task", json!({"name": "t1", "timeoutSeconds": 60}))]}),
    );
    assert_eq!(
        steps[0]["structured"]["task"]["phase"], "Cancelled",
        "{:#}",
        steps[0]
    );

    // Errors a caller can act on: a schema error naming the argument, a
    // failover refused at once with its reason, an unknown tool.
    let steps = run(
        &py,
        json!({"server": http(&d, OPS_TOKEN), "steps": [
            call("create_task", json!({"prompt": "x", "priority": "urgent"})),
            call("create_task", json!({"prompt": "x", "sesion": "s1"})),
            call("wait_task", json!({"name": "t1", "timeoutSeconds": "soon"})),
            call("request_failover", json!({"account": "b", "to": "b"})),
            call("request_failover", json!({"account": "nope"})),
            call("no_such_tool", json!({})),
        ]}),
    );
    let text = |i: usize| steps[i]["text"].as_str().unwrap_or_default().to_string();
    assert_eq!(steps[0]["isError"], true);
    assert!(
        text(0).contains("priority: unknown variant `urgent`"),
        "{}",
        text(0)
    );
    assert!(text(1).contains("unknown field `sesion`"), "{}", text(1));
    assert!(
        text(2).contains("timeoutSeconds: invalid type"),
        "{}",
        text(2)
    );
    assert!(text(3).contains("another account"), "{}", text(3));
    assert_eq!(text(4), "account nope not found in namespace default");
    // An unknown tool is a protocol error (invalid params), naming the tools.
    assert_eq!(steps[5]["ok"], false, "{}", steps[5]);
    assert!(
        steps[5]["error"]
            .as_str()
            .unwrap()
            .contains("unknown tool \"no_such_tool\" (tools: list_sessions"),
        "{}",
        steps[5]
    );

    // The API token is read-only by default: the write tools are not
    // listed, and calling one says why and changes nothing.
    let api_token = token(&env);
    let steps = run(
        &py,
        json!({"server": http(&d, &api_token), "steps": [
            {"op": "tools"},
            call("create_task", json!({"name": "t2", "prompt": "x"})),
        ]}),
    );
    assert_eq!(tool_names(&steps[0]), READ_TOOLS);
    assert_eq!(steps[1]["isError"], true);
    assert!(
        steps[1]["text"].as_str().unwrap().contains("read-only"),
        "{}",
        steps[1]
    );
    assert!(
        env.run(&["get", "task", "t2"]).code != 0,
        "nothing was created"
    );

    // A wrong token: 401 before any MCP is spoken.
    let all = PyClient::start(
        &py,
        json!({"server": http(&d, "wrong-token"), "steps": [{"op": "tools"}]}),
    )
    .rest();
    let err = all[0]["connect_error"].as_str().unwrap_or_default();
    assert!(err.contains("401"), "{all:#?}");
    let (code, _) = common::daemon::call(
        "POST",
        &format!("{}/mcp", d.url),
        None,
        Some(r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#),
    );
    assert_eq!(code, 401);

    // No secret reached any result.
    assert!(!d.log().contains(OPS_TOKEN) && !d.log().contains(SECRET));
}

#[test]
#[cfg_attr(
    not(mcp_sdk),
    ignore = "needs the MCP Python SDK: python3 -m venv tools/mcp-client/.venv && tools/mcp-client/.venv/bin/pip install -r tools/mcp-client/requirements.txt"
)]
fn python_sdk_hears_resource_changes() {
    let py = python();
    let env = pool_env();
    let d = Daemon::start(&env, &[]);
    let account = "claude-failover://accounts/default/a";
    let pool_uri = "claude-failover://pool/default";

    let steps = run(
        &py,
        json!({"server": http(&d, OPS_TOKEN), "steps": [
            {"op": "resources"},
            {"op": "read", "uri": pool_uri},
            {"op": "read", "uri": account},
            {"op": "read", "uri": "claude-failover://nothing/here"},
        ]}),
    );
    let uris: Vec<&str> = steps[0]["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["uri"].as_str().unwrap())
        .collect();
    assert_eq!(
        uris,
        [pool_uri, account, "claude-failover://accounts/default/b"]
    );
    let pool: Value =
        serde_json::from_str(steps[1]["contents"][0]["text"].as_str().unwrap()).unwrap();
    assert_eq!(pool["sessions"]["total"], 2, "{pool}");
    assert_eq!(pool["daemon"], "running");
    let acct: Value =
        serde_json::from_str(steps[2]["contents"][0]["text"].as_str().unwrap()).unwrap();
    assert_eq!(acct["name"], "a");
    assert_eq!(steps[3]["ok"], false);
    assert!(
        steps[3]["error"]
            .as_str()
            .unwrap()
            .contains("unknown resource")
    );

    // Before 2026-07-28: resources/subscribe, then a change of the account.
    let mut c = PyClient::start(
        &py,
        json!({"server": http(&d, OPS_TOKEN), "mode": "legacy", "steps": [
            {"op": "subscribe", "uri": account},
            {"op": "updated", "uri": account, "timeout": 60},
        ]}),
    );
    assert_eq!(c.next()["op"], "connected");
    assert_eq!(c.next()["ok"], true, "subscribed");
    change_account(&env, 5);
    let heard = c.next();
    assert_eq!(
        (heard["op"].as_str(), heard["ok"].as_bool()),
        (Some("updated"), Some(true)),
        "{heard}"
    );

    // From 2026-07-28: subscriptions/listen.
    let mut c = PyClient::start(
        &py,
        json!({"server": http(&d, OPS_TOKEN), "mode": "auto", "steps": [
            {"op": "info"},
            {"op": "listen", "uri": account, "timeout": 60},
        ]}),
    );
    assert_eq!(c.next()["op"], "connected");
    assert_eq!(c.next()["protocolVersion"], "2026-07-28");
    let listening = c.next();
    assert_eq!(listening["op"], "listening", "{listening}");
    change_account(&env, 6);
    let heard = c.next();
    assert_eq!(heard["event"], "ResourceUpdated", "{heard}");
    assert_eq!(heard["uri"], account);

    // A subscriber still connected does not hold the daemon up at SIGTERM.
    let mut c = PyClient::start(
        &py,
        json!({"server": http(&d, OPS_TOKEN), "mode": "legacy", "steps": [
            {"op": "subscribe", "uri": pool_uri},
            {"op": "updated", "uri": "claude-failover://pool/never", "timeout": 600},
        ]}),
    );
    assert_eq!(c.next()["op"], "connected");
    assert_eq!(c.next()["ok"], true, "subscribed");
    let mut d = d;
    d.stop();
}

fn stdio(env: &Env, args: &[&str]) -> Value {
    let mut argv = vec![
        "--store".to_string(),
        env.store().display().to_string(),
        "mcp".into(),
    ];
    argv.extend(args.iter().map(|a| a.to_string()));
    json!({"stdio": {"command": BIN, "args": argv, "env": {
        "HOME": env.dir.path(),
        "XDG_CONFIG_HOME": env.path("config"),
        "XDG_STATE_HOME": env.path("state"),
    }}})
}

#[test]
#[cfg_attr(
    not(mcp_sdk),
    ignore = "needs the MCP Python SDK: python3 -m venv tools/mcp-client/.venv && tools/mcp-client/.venv/bin/pip install -r tools/mcp-client/requirements.txt"
)]
fn python_sdk_over_stdio_with_and_without_the_daemon() {
    let py = python();
    let env = pool_env();

    // No daemon: reads come from the store and say so; writes are refused
    // with the reason.
    let steps = run(
        &py,
        json!({"server": stdio(&env, &["--write"]), "mode": "auto", "steps": [
            {"op": "tools"},
            call("list_sessions", json!({})),
            call("create_task", json!({"name": "t1", "prompt": "x"})),
        ]}),
    );
    let mut all: Vec<&str> = READ_TOOLS.to_vec();
    all.extend(WRITE_TOOLS);
    assert_eq!(tool_names(&steps[0]), all);
    let listed = &steps[1]["structured"];
    assert_eq!(listed["count"], 2, "{listed}");
    assert!(
        listed["note"]
            .as_str()
            .unwrap()
            .contains("no daemon serves this store"),
        "{listed}"
    );
    assert_eq!(steps[2]["isError"], true);
    assert!(
        steps[2]["text"]
            .as_str()
            .unwrap()
            .contains("this needs the daemon"),
        "{}",
        steps[2]
    );

    // With the daemon (found at each call): through its API.
    let d = Daemon::start(&env, &[]);
    let steps = run(
        &py,
        json!({"server": stdio(&env, &["--write"]), "steps": [
            call("create_task", json!({"name": "t1", "prompt": "x", "session": "s2"})),
            call("list_tasks", json!({})),
        ]}),
    );
    assert_eq!(steps[0]["isError"], false, "{}", steps[0]);
    assert!(steps[1]["structured"].get("note").is_none(), "{}", steps[1]);
    let d_out = env.ok(&["describe", "task", "t1"]);
    assert!(
        d_out.contains("created through the API") && d_out.contains("MCP client \"stdio\""),
        "{d_out}"
    );

    // Read-only without --write (or mcp.write).
    let steps = run(
        &py,
        json!({"server": stdio(&env, &[]), "steps": [{"op": "tools"}, call("cancel_task", json!({"name": "t1"}))]}),
    );
    assert_eq!(tool_names(&steps[0]), READ_TOOLS);
    assert!(
        steps[1]["text"].as_str().unwrap().contains("--write"),
        "{}",
        steps[1]
    );
    drop(d);
}

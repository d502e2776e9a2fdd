//! Delegation end to end, with the real Claude Code as the MCP client: a
//! Session with `spec.agent.mcp: true` gets the pool's MCP server in its
//! launch; the fake API answers its prompt with a `tool_use` of the pool's
//! `create_task`; the task runs on another session and its result comes
//! back to the first agent as the tool's result. A delegation loop is
//! stopped by the depth limit.

mod common;
use common::fake_api::{Answer, Recorded};
use common::pool::{LONG, Pool, claude};
use serde_json::{Value, json};

const KEY: (&str, &str) = (
    "ANTHROPIC_API_KEY",
    "sk-ant-api03-test-key-mcp-000000000000000",
);
/// How Claude Code names the pool's tool (`mcp__SERVER__TOOL`).
const CREATE_TASK: &str = "mcp__claude-failover__create_task";

/// A Session of the pool, with the MCP server when `mcp`.
fn session(pool: &Pool, name: &str, mcp: bool) -> String {
    let yaml = pool.session_yaml(name, Some("a"), &[KEY]);
    if mcp {
        yaml.replace("  agent:\n", "  agent:\n    mcp: true\n")
    } else {
        yaml
    }
}

/// Whether the request's newest message is a tool result (the turn goes
/// on after a tool call), not a fresh prompt.
fn continues_a_turn(r: &Recorded) -> bool {
    r.body
        .pointer("/messages")
        .and_then(Value::as_array)
        .and_then(|m| m.last())
        .and_then(|m| m["content"].as_array())
        .is_some_and(|blocks| blocks.iter().any(|b| b["type"] == "tool_result"))
}

/// The tool names a request offered the model. Both forms count: a tool in the request's `tools`, or one Claude Code
/// defers (2.1.332 defers MCP tools: named one per line in a system
/// message, their schema fetched with its ToolSearch tool when called).
fn tools_offered(r: &Recorded) -> Vec<String> {
    let mut names: Vec<String> = r.body["tools"]
        .as_array()
        .map(|t| {
            t.iter()
                .filter_map(|t| t["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    if names.iter().any(|n| n == "ToolSearch") {
        let mut texts = Vec::new();
        for m in r.body["messages"].as_array().into_iter().flatten() {
            match &m["content"] {
                Value::String(t) => texts.push(t.clone()),
                Value::Array(blocks) => texts.extend(
                    blocks
                        .iter()
                        .filter_map(|b| b["text"].as_str().map(str::to_string)),
                ),
                _ => {}
            }
        }
        names.extend(texts.iter().flat_map(|t| {
            t.lines()
                .filter(|l| l.starts_with("mcp__") && !l.contains(char::is_whitespace))
                .map(str::to_string)
                .collect::<Vec<_>>()
        }));
    }
    names
}

/// The text of the tool results in a request.
fn tool_results(r: &Recorded) -> Vec<String> {
    let mut out = Vec::new();
    for m in r.body["messages"].as_array().into_iter().flatten() {
        for b in m["content"].as_array().into_iter().flatten() {
            if b["type"] == "tool_result" {
                out.push(b["content"].to_string());
            }
        }
    }
    out
}

/// A plain JSON-RPC client of the MCP endpoint (protocol 2025-06-18, a
/// session), to call tools with an agent's own token.
struct Rpc {
    url: String,
    auth: String,
    session: Option<String>,
    id: u64,
}

impl Rpc {
    fn new(url: &str, auth: &str) -> Rpc {
        let mut rpc = Rpc {
            url: url.to_string(),
            auth: auth.to_string(),
            session: None,
            id: 0,
        };
        rpc.request(
            "initialize",
            json!({"protocolVersion": "2025-06-18", "capabilities": {},
                   "clientInfo": {"name": "test", "version": "1"}}),
        );
        rpc.send(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
        rpc
    }

    fn send(&mut self, body: Value) -> String {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(common::daemon::T))
            .build()
            .into();
        let mut req = agent
            .post(&self.url)
            .header("authorization", &self.auth)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2025-06-18");
        if let Some(s) = &self.session {
            req = req.header("mcp-session-id", s);
        }
        let mut resp = req.send(body.to_string()).unwrap();
        assert!(resp.status().is_success(), "{}", resp.status());
        if let Some(s) = resp.headers().get("mcp-session-id") {
            self.session = Some(s.to_str().unwrap().to_string());
        }
        resp.body_mut().read_to_string().unwrap_or_default()
    }

    /// A request's result (from a JSON or an event-stream answer).
    fn request(&mut self, method: &str, params: Value) -> Value {
        self.id += 1;
        let id = self.id;
        let text =
            self.send(json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}));
        text.lines()
            .map(|l| l.strip_prefix("data:").unwrap_or(l).trim())
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v["id"] == id)
            .map(|v| {
                v.get("result")
                    .cloned()
                    .unwrap_or_else(|| v["error"].clone())
            })
            .unwrap_or_else(|| panic!("no answer to {method}: {text}"))
    }

    /// A tool's result: (is it an error, its text).
    fn call(&mut self, tool: &str, args: Value) -> (bool, String) {
        let r = self.request("tools/call", json!({"name": tool, "arguments": args}));
        (
            r["isError"] == true,
            r["content"][0]["text"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        )
    }
}

fn annotation<'a>(t: &'a Value, key: &str) -> Option<&'a str> {
    t["metadata"]["annotations"][key].as_str()
}

fn tasks(pool: &Pool) -> Vec<Value> {
    let v: Value = serde_json::from_str(&pool.ok(&["get", "tasks", "-o", "json"])).unwrap();
    v["items"].as_array().cloned().unwrap_or_default()
}

#[test]
#[cfg_attr(
    not(claude_code),
    ignore = "needs Claude Code: npm ci --prefix tools/claude-code"
)]
fn an_agent_delegates_a_task_and_gets_its_result() {
    let claude = claude();
    let mut pool = Pool::new(claude);
    pool.apply(&pool.account_yaml("a", 10));
    pool.apply(&session(&pool, "lead", true));
    pool.apply(&session(&pool, "worker", false));
    // The lead's prompt makes its model call the pool's create_task; the
    // worker answers the delegated prompt; everything else is echoed.
    pool.api.set_answer_fn(|r| {
        let text = r.last_user_text().unwrap_or_default();
        if continues_a_turn(r) {
            return None;
        }
        if text.contains("delegate: find the answer") {
            return Some(Answer::ToolUse {
                text: Some("Asking another agent of the pool.".into()),
                name: CREATE_TASK.into(),
                input: json!({"prompt": "compute the answer to everything", "waitSeconds": 120}),
            });
        }
        if text.contains("compute the answer to everything") {
            return Some(Answer::Text("the answer is 42".into()));
        }
        None
    });
    pool.start_daemon();
    for s in ["lead", "worker"] {
        pool.wait_phase(s, "Idle");
    }
    // Only the agent that opted in has the server, in its own launch.
    let state = pool.path("state/sessions/default");
    assert!(state.join("lead/mcp.json").exists());
    assert!(!state.join("worker/mcp.json").exists());

    pool.apply(&pool.task_yaml("parent", "delegate: find the answer", "  session: lead\n"));
    let parent = pool.wait_task_phase("parent", "Succeeded");
    assert_eq!(parent["status"]["session"], "lead");

    // The delegated task: recorded with its parent, run on the worker,
    // with the worker's answer as its result.
    let child = tasks(&pool)
        .into_iter()
        .find(|t| t["metadata"]["name"] != "parent")
        .expect("a task created by the lead's agent");
    assert_eq!(
        annotation(&child, "claude-failover.io/parent-task"),
        Some("parent")
    );
    assert_eq!(
        annotation(&child, "claude-failover.io/delegation-depth"),
        Some("1")
    );
    assert_eq!(
        annotation(&child, "claude-failover.io/delegated-by"),
        Some("lead")
    );
    assert_eq!(child["status"]["phase"], "Succeeded", "{child}");
    assert_eq!(child["status"]["session"], "worker");
    assert!(
        child["status"]["message"]
            .as_str()
            .unwrap()
            .contains("the answer is 42"),
        "{child}"
    );

    // The lead's model was offered the pool's tools, and its next request
    // carried the tool's result: the worker's answer.
    let main = pool.api.main_requests();
    let first = main
        .iter()
        .find(|r| {
            !continues_a_turn(r)
                && r.last_user_text()
                    .is_some_and(|t| t.contains("delegate: find the answer"))
        })
        .expect("the lead's request");
    let offered = tools_offered(first);
    for t in [CREATE_TASK, "mcp__claude-failover__wait_task"] {
        assert!(offered.iter().any(|o| o == t), "{t} not in {offered:?}");
    }
    assert!(
        !offered
            .iter()
            .any(|o| o == "mcp__claude-failover__restart_session"),
        "agents get no restart tool: {offered:?}"
    );
    let next = main
        .iter()
        .filter(|r| continues_a_turn(r))
        .find(|r| {
            tool_results(r)
                .iter()
                .any(|t| t.contains("the answer is 42"))
        })
        .unwrap_or_else(|| {
            panic!(
                "no request carried the result: {:#?}",
                main.iter().map(tool_results).collect::<Vec<_>>()
            )
        });
    assert!(next.seq > first.seq);

    // The agent's token stays in its private file: never in a log.
    let cfg: Value =
        serde_json::from_slice(&std::fs::read(state.join("lead/mcp.json")).unwrap()).unwrap();
    let auth = cfg["mcpServers"]["claude-failover"]["headers"]["Authorization"]
        .as_str()
        .unwrap();
    let secret = auth.rsplit('.').next().unwrap();
    assert!(secret.len() >= 32, "{auth}");
    assert!(
        !pool.daemon_log(0).contains(secret),
        "the agent's secret was logged"
    );

    // With its token, an agent gets its scope and no more.
    let mut rpc = Rpc::new(&format!("{}/mcp", pool.api_url()), auth);
    let listed = rpc.request("tools/list", json!({}));
    let names: Vec<&str> = listed["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"create_task") && names.contains(&"cancel_task"),
        "{names:?}"
    );
    assert!(
        !names.contains(&"restart_session") && !names.contains(&"request_failover"),
        "{names:?}"
    );
    let (err, why) = rpc.call("restart_session", json!({"name": "worker"}));
    assert!(err && why.contains("not available to agents"), "{why}");
    let (err, why) = rpc.call("create_task", json!({"prompt": "x", "session": "lead"}));
    assert!(
        err && why.contains("session that asks for it (lead)"),
        "{why}"
    );
    let (err, why) = rpc.call("cancel_task", json!({"name": "parent"}));
    assert!(err && why.contains("only the tasks it created"), "{why}");
    let (err, why) = rpc.call("list_sessions", json!({"namespace": "other"}));
    assert!(err && why.contains("its own namespace (default)"), "{why}");
    let (err, _) = rpc.call("list_sessions", json!({}));
    assert!(!err);
    // A wrong secret is no agent.
    let wrong = format!("{}x", auth);
    let (code, _) = common::daemon::call(
        "POST",
        &format!("{}/mcp", pool.api_url()),
        Some(wrong.trim_start_matches("Bearer ")),
        Some(r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#),
    );
    assert_eq!(code, 401);

    // Who asked is recorded on the task.
    let d = pool.ok(&[
        "describe",
        "task",
        child["metadata"]["name"].as_str().unwrap(),
    ]);
    assert!(
        d.contains("RequestedOverMcp") && d.contains("the agent of session default/lead"),
        "{d}"
    );
}

#[test]
#[cfg_attr(
    not(claude_code),
    ignore = "needs Claude Code: npm ci --prefix tools/claude-code"
)]
fn a_delegation_loop_is_stopped_by_the_depth_limit() {
    let claude = claude();
    let mut pool = Pool::new(claude);
    pool.add_config("mcp:\n  delegation:\n    maxDepth: 2\n");
    pool.apply(&pool.account_yaml("a", 10));
    pool.apply(&session(&pool, "x", true));
    pool.apply(&session(&pool, "y", true));
    // Every prompt asks the pool to do it again: a loop between x and y.
    pool.api.set_answer_fn(|r| {
        if continues_a_turn(r) {
            return None;
        }
        r.last_user_text()
            .is_some_and(|t| t.contains("loop"))
            .then(|| Answer::ToolUse {
                text: None,
                name: CREATE_TASK.into(),
                input: json!({"prompt": "loop once more"}),
            })
    });
    pool.start_daemon();
    for s in ["x", "y"] {
        pool.wait_phase(s, "Idle");
    }
    pool.apply(&pool.task_yaml("t0", "loop, please", "  session: x\n"));

    // t0 (depth 0) → 1 → 2, and the third call is refused.
    let refused = common::wait_for("the depth limit's refusal", LONG, || {
        pool.api.main_requests().into_iter().find(|r| {
            continues_a_turn(r)
                && tool_results(r)
                    .iter()
                    .any(|t| t.contains("delegation depth limit reached"))
        })
    });
    let results = tool_results(&refused).join("\n");
    assert!(
        results.contains("mcp.delegation.maxDepth) is 2"),
        "{results}"
    );
    let all = common::wait_for("every task to end", LONG, || {
        let all = tasks(&pool);
        all.iter()
            .all(|t| t["status"]["phase"] == "Succeeded")
            .then_some(all)
    });
    let mut depths: Vec<(String, String, String)> = all
        .iter()
        .map(|t| {
            (
                annotation(t, "claude-failover.io/delegation-depth")
                    .unwrap_or("0")
                    .to_string(),
                t["status"]["session"].as_str().unwrap_or("").to_string(),
                annotation(t, "claude-failover.io/delegated-by")
                    .unwrap_or("-")
                    .to_string(),
            )
        })
        .collect();
    depths.sort();
    assert_eq!(
        depths,
        [
            ("0".into(), "x".into(), "-".into()),
            ("1".into(), "y".into(), "x".into()),
            ("2".into(), "x".into(), "y".into()),
        ],
        "never more than the limit, never on the delegating session"
    );
}

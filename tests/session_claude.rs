//! Sessions end to end: the daemon keeps the real Claude Code alive in
//! real tmux, against a fake Anthropic API on 127.0.0.1.

mod common;
use common::pool::{Pool, require_claude};
use serde_json::Value;

fn cond<'a>(v: &'a Value, t: &str) -> Option<&'a Value> {
    v["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == t)
}

fn ready(v: &Value) -> bool {
    cond(v, "Ready").is_some_and(|c| c["status"] == "True")
}

fn pid(v: &Value) -> u64 {
    v["status"]["pid"].as_u64().unwrap_or(0)
}

#[test]
fn a_session_runs_reports_its_state_and_comes_back() {
    let Some(claude) = require_claude("a_session_runs_reports_its_state_and_comes_back") else {
        return;
    };
    let mut pool = Pool::new(claude);
    pool.apply(&pool.account_yaml("a", 10));
    pool.apply(&pool.session_yaml(
        "ccl-0",
        Some("a"),
        &[(
            "ANTHROPIC_API_KEY",
            "sk-ant-api03-test-key-account-a-0000000000",
        )],
    ));
    pool.start_daemon();

    // Applied → Ready, at its prompt, under account a.
    let out = pool.ok(&[
        "wait",
        "session",
        "ccl-0",
        "--for=condition=Ready",
        "--timeout=90s",
    ]);
    assert!(out.contains("condition met"));
    let v = pool.wait_phase("ccl-0", "Idle");
    assert_eq!(v["status"]["account"], "a");
    assert!(v["metadata"]["finalizers"][0] == "claude-failover.io/session");
    let first_pid = pid(&v);
    assert!(first_pid > 0);
    assert!(cond(&v, "AgentAlive").unwrap()["status"] == "True");

    // Busy while a turn runs, Idle after it: from the hooks.
    pool.api.hold();
    pool.type_prompt("ccl-0", "hello from the test");
    let v = pool.wait_phase("ccl-0", "Busy");
    assert!(ready(&v), "busy is ready: {v}");
    pool.api.release();
    pool.wait_phase("ccl-0", "Idle");
    let main = pool.api.main_requests();
    assert!(main.iter().any(|r| {
        r.last_user_text()
            .is_some_and(|t| t.contains("hello from the test"))
    }));

    // The agent is killed: it comes back (restart counted, new pid).
    unsafe { libc::kill(first_pid as i32, libc::SIGKILL) };
    let v = pool.wait_session("ccl-0", "restarted after SIGKILL", |v| {
        v["status"]["restarts"] == 1 && ready(v) && pid(v) != first_pid
    });
    let second_pid = pid(&v);

    // Its tmux session is killed: it comes back again.
    pool.tmux(&["kill-session", "-t", "=ccl-0"]);
    pool.wait_session("ccl-0", "restarted after kill-session", |v| {
        v["status"]["restarts"] == 2 && ready(v) && pid(v) != second_pid
    });
    let described = pool.ok(&["describe", "session", "ccl-0"]);
    assert!(described.contains("Restarted"), "{described}");

    // Suspend: stopped gracefully, the tmux session gone.
    let suspended = pool
        .session_yaml(
            "ccl-0",
            Some("a"),
            &[(
                "ANTHROPIC_API_KEY",
                "sk-ant-api03-test-key-account-a-0000000000",
            )],
        )
        .replace("  agent:\n", "  suspend: true\n  agent:\n");
    pool.apply(&suspended);
    pool.wait_phase("ccl-0", "Stopped");
    assert!(
        pool.tmux(&["list-sessions", "-F", "#{session_name}"])
            .lines()
            .all(|l| l != "ccl-0")
    );

    // Delete: the finalizer lets the object go once cleaned up.
    pool.apply(&pool.session_yaml(
        "ccl-0",
        Some("a"),
        &[(
            "ANTHROPIC_API_KEY",
            "sk-ant-api03-test-key-account-a-0000000000",
        )],
    ));
    pool.wait_phase("ccl-0", "Idle");
    pool.ok(&["delete", "session", "ccl-0"]);
    pool.ok(&["wait", "session", "ccl-0", "--for=delete", "--timeout=90s"]);
    assert!(
        pool.tmux(&["list-sessions", "-F", "#{session_name}"])
            .lines()
            .all(|l| l != "ccl-0")
    );
    assert!(
        !pool.path("state/sessions/default/ccl-0").exists(),
        "runtime state cleaned up"
    );
}

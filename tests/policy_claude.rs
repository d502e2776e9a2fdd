//! The failover policy end to end against the real Claude Code: drain (no
//! task typed into an account near its limit) and failback (the sessions
//! come back to their preferred account when its window reopens, the
//! conversation going on), with the fake API's per-credential usage.

mod common;
use common::pool::{Pool, claude};

const TOKEN_A: &str = "sk-ant-oat01-policy-test-account-a";
const TOKEN_B: &str = "sk-ant-oat01-policy-test-account-b";

fn on(v: &serde_json::Value, account: &str) -> bool {
    v["status"]["account"] == account
        && v["status"]["phase"] == "Idle"
        && v["status"]["lastSwap"]["state"] == "Done"
        && v["status"]["lastSwap"]["to"] == account
}

#[test]
#[cfg_attr(
    not(claude_code),
    ignore = "needs Claude Code: npm ci --prefix tools/claude-code"
)]
fn a_draining_account_takes_no_task_and_its_sessions_come_back_when_it_reopens() {
    let mut pool = Pool::new(claude());
    pool.api.set_usage_for(TOKEN_A, 0.5, 3600);
    pool.api.set_usage_for(TOKEN_B, 0.1, 3600);
    // a is preferred (lowest priority value); both sessions start there.
    pool.apply(&pool.account_with_token("a", 0, TOKEN_A));
    pool.apply(&pool.account_with_token("b", 10, TOKEN_B));
    pool.apply(&pool.session_yaml("one", None, &[]));
    pool.apply(&pool.session_yaml("two", None, &[]));
    // Polls answer at once; a session may move back right after its move.
    pool.add_config("  pollIntervalSeconds: 1\n  failback:\n    cooldownSeconds: 0\n");
    pool.start_daemon();
    for s in ["one", "two"] {
        pool.wait_session(s, "idle on a", |v| {
            v["status"]["account"] == "a" && v["status"]["phase"] == "Idle"
        });
    }

    // A task on a, whose answer says 95 %: a is near its limit.
    pool.apply(&pool.task_yaml("fill", "first: remember the word QUINCE", ""));
    assert_eq!(
        pool.request_with("remember the word QUINCE").credential(),
        Some(TOKEN_A)
    );
    pool.api.set_usage_for(TOKEN_A, 0.95, 3600);
    pool.apply(&pool.task_yaml("over", "second: and the number SEVEN", ""));
    pool.request_with("and the number SEVEN");
    pool.wait_account("a", "NearLimit", |v| v["status"]["phase"] == "NearLimit");
    // Work queued from here on goes to b only (drain), once the sessions
    // have moved there.
    for (name, prompt) in [
        ("t1", "third: the first queued task"),
        ("t2", "fourth: the second queued task"),
    ] {
        pool.apply(&pool.task_yaml(name, prompt, ""));
    }
    for name in ["t1", "t2"] {
        pool.wait_task_phase(name, "Succeeded");
    }
    for needle in ["the first queued task", "the second queued task"] {
        assert_eq!(
            pool.request_with(needle).credential(),
            Some(TOKEN_B),
            "{needle}: typed into a session on the draining account"
        );
    }
    let swaps = pool.swaps();
    assert_eq!(swaps.len(), 1, "{swaps:?}");
    assert_eq!(
        (swaps[0].from.as_str(), swaps[0].to.as_deref()),
        ("a", Some("b"))
    );

    // a's window reopens: its poll (no session reports on it now) says 5 %.
    pool.api.set_usage_for(TOKEN_A, 0.05, 3600);
    pool.api.route(
        "GET",
        "/api/oauth/usage",
        200,
        serde_json::json!({
            "five_hour": {"utilization": 5.0, "resets_at": "2099-01-01T00:00:00+00:00"},
            "seven_day": {"utilization": 10.0, "resets_at": null},
        }),
    );
    pool.wait_account("a", "Available again", |v| {
        v["status"]["phase"] == "Available"
    });
    // Both come back, at a turn boundary, resuming their conversations.
    let one = pool.wait_session("one", "back on a", |v| on(v, "a"));
    pool.wait_session("two", "back on a", |v| on(v, "a"));
    assert_eq!(one["status"]["lastSwap"]["reason"], "Failback");
    assert_eq!(one["status"]["restarts"], 0, "a failback is not a crash");
    let swaps = pool.swaps();
    assert_eq!(swaps.len(), 2, "one failback, no flapping: {swaps:?}");
    assert_eq!(
        (
            swaps[1].from.as_str(),
            swaps[1].to.as_deref(),
            swaps[1].result.as_str()
        ),
        ("b", Some("a"), "Succeeded")
    );
    // The conversation that did the first task goes on under a's
    // credentials, with its history.
    let who = pool.task("fill").unwrap()["status"]["session"]
        .as_str()
        .unwrap()
        .to_string();
    pool.apply(&pool.task_yaml(
        "after",
        "fifth: which word?",
        &format!("  session: {who}\n"),
    ));
    let fifth = pool.request_with("fifth: which word?");
    assert_eq!(fifth.credential(), Some(TOKEN_A));
    assert!(
        fifth
            .message_texts()
            .iter()
            .any(|t| t.contains("remember the word QUINCE")),
        "the resumed conversation lost its history"
    );
    let events = pool.ok(&["describe", "account", "b"]);
    assert!(events.contains("Failback"), "{events}");
}

//! The failover policy end to end against the real Claude Code: drain (no
//! task typed into an account near its limit), failback (the sessions
//! come back to their preferred account when its window reopens, the
//! conversation going on), the strategies' choice of a target among
//! three accounts, and a per-model weekly window (only the sessions of
//! that model move), with the fake API's per-credential usage.

mod common;
use common::pool::{LONG, Pool, claude};
use common::wait_for;

const TOKEN_A: &str = "sk-ant-oat01-policy-test-account-a";
const TOKEN_B: &str = "sk-ant-oat01-policy-test-account-b";
const TOKEN_C: &str = "sk-ant-oat01-policy-test-account-c";
const HOUR: u64 = 3600;
const DAY: u64 = 24 * HOUR;

/// `yaml` (a Session) with `agent.model` set.
fn with_model(yaml: &str, model: &str) -> String {
    yaml.replacen("  agent:\n", &format!("  agent:\n    model: {model}\n"), 1)
}

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
    // The sessions are back before the failback's record says it ended.
    let swaps = wait_for("the failback's record to end", LONG, || {
        let swaps = pool.swaps();
        (swaps.len() != 2 || swaps[1].result != "Running").then_some(swaps)
    });
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

/// Three accounts: `a` (preferred, priority 0) goes near its limit under
/// its one session; `b` (priority `prio_b`) has the most headroom and its
/// window resets in 4 hours; `c` (priority `prio_c`) has less headroom and
/// resets in 1 hour. Returns the account the session moved to, checked
/// on the credentials of the next turn.
fn failover_target_under(strategy: &str, prio_b: i32, prio_c: i32) -> String {
    let mut pool = Pool::new(claude());
    pool.api.set_usage_for(TOKEN_A, 0.5, 3 * HOUR);
    // What the usage endpoint says of each account (polled while no
    // session reports on it).
    for (token, used, resets_in) in [
        (TOKEN_A, 50.0, 3 * HOUR),
        (TOKEN_B, 10.0, 4 * HOUR),
        (TOKEN_C, 60.0, HOUR),
    ] {
        pool.api.set_usage_endpoint_for(
            token,
            &[("five_hour", used, resets_in), ("seven_day", 10.0, 6 * DAY)],
        );
    }
    pool.apply(&pool.account_with_token("a", 0, TOKEN_A));
    pool.apply(&pool.account_with_token("b", prio_b, TOKEN_B));
    pool.apply(&pool.account_with_token("c", prio_c, TOKEN_C));
    pool.apply(&pool.session_yaml("one", None, &[]));
    pool.add_config(&format!(
        "  pollIntervalSeconds: 1\n  strategy: {strategy}\n  failback:\n    enabled: false\n"
    ));
    pool.start_daemon();
    pool.wait_session("one", "idle on a", |v| {
        v["status"]["account"] == "a" && v["status"]["phase"] == "Idle"
    });
    for (name, used) in [("b", 10.0), ("c", 60.0)] {
        pool.wait_account(name, "its usage polled", |v| {
            v["status"]["usage"]["fiveHour"]["utilization"] == used
        });
    }
    // A turn on a whose answer says 95 %: a is near its limit.
    pool.api.set_usage_for(TOKEN_A, 0.95, 3 * HOUR);
    pool.apply(&pool.task_yaml("fill", "first: near the limit", ""));
    assert_eq!(
        pool.request_with("first: near the limit").credential(),
        Some(TOKEN_A)
    );
    let moved = pool.wait_session("one", "moved off a", |v| {
        v["status"]["lastSwap"]["state"] == "Done" && v["status"]["phase"] == "Idle"
    });
    let to = moved["status"]["account"].as_str().unwrap().to_string();
    let swaps = pool.swaps();
    assert_eq!(swaps.len(), 1, "{swaps:?}");
    assert_eq!(
        (
            swaps[0].from.as_str(),
            swaps[0].to.as_deref(),
            swaps[0].reason.as_str()
        ),
        ("a", Some(to.as_str()), "NearLimit")
    );
    // The next turn runs under the chosen account's credentials.
    pool.apply(&pool.task_yaml("next", "second: after the move", ""));
    let token = match to.as_str() {
        "b" => TOKEN_B,
        "c" => TOKEN_C,
        other => panic!("moved to {other}"),
    };
    assert_eq!(
        pool.request_with("second: after the move").credential(),
        Some(token)
    );
    to
}

#[test]
#[cfg_attr(
    not(claude_code),
    ignore = "needs Claude Code: npm ci --prefix tools/claude-code"
)]
fn headroom_moves_to_the_account_with_the_most_room() {
    // The same accounts as consume-first's: the choice is the strategy's.
    assert_eq!(failover_target_under("headroom", 1, 10), "b");
}

#[test]
#[cfg_attr(
    not(claude_code),
    ignore = "needs Claude Code: npm ci --prefix tools/claude-code"
)]
fn priority_moves_to_the_preferred_account_with_headroom() {
    // Headroom would pick b; c has the higher priority (lower value).
    assert_eq!(failover_target_under("priority", 10, 1), "c");
}

#[test]
#[cfg_attr(
    not(claude_code),
    ignore = "needs Claude Code: npm ci --prefix tools/claude-code"
)]
fn consume_first_moves_to_the_account_whose_window_resets_soonest() {
    // Headroom and priority would both pick b; c's window resets first.
    assert_eq!(failover_target_under("consumeFirst", 1, 10), "c");
}

#[test]
#[cfg_attr(
    not(claude_code),
    ignore = "needs Claude Code: npm ci --prefix tools/claude-code"
)]
fn at_its_opus_weekly_limit_an_account_moves_its_opus_session_and_keeps_the_sonnet_one() {
    let mut pool = Pool::new(claude());
    pool.api.set_usage_for(TOKEN_A, 0.3, 3 * HOUR);
    pool.api.set_usage_for(TOKEN_B, 0.1, 3 * HOUR);
    let usage = |opus: f64| {
        [
            ("five_hour", 30.0, 3 * HOUR),
            ("seven_day", 20.0, 5 * DAY),
            ("seven_day_opus", opus, 5 * DAY),
            ("seven_day_sonnet", 10.0, 5 * DAY),
        ]
    };
    pool.api.set_usage_endpoint_for(TOKEN_A, &usage(50.0));
    pool.api.set_usage_endpoint_for(TOKEN_B, &usage(5.0));
    pool.apply(&format!(
        "{}  thresholds:\n    sevenDayOpus: 90\n",
        pool.account_with_token("a", 0, TOKEN_A)
    ));
    pool.apply(&pool.account_with_token("b", 10, TOKEN_B));
    pool.apply(&with_model(&pool.session_yaml("op", None, &[]), "opus"));
    pool.apply(&with_model(&pool.session_yaml("so", None, &[]), "sonnet"));
    pool.add_config("  pollIntervalSeconds: 1\n");
    pool.start_daemon();
    for s in ["op", "so"] {
        pool.wait_session(s, "idle on a", |v| {
            v["status"]["account"] == "a" && v["status"]["phase"] == "Idle"
        });
    }
    // With sessions live on a, its poll still brings the per-model windows.
    pool.wait_account("a", "its opus window polled", |v| {
        v["status"]["usage"]["sevenDayOpus"]["utilization"] == 50.0
    });
    // The week's Opus use passes a's threshold (90 %).
    pool.api.set_usage_endpoint_for(TOKEN_A, &usage(97.0));
    pool.wait_session("op", "moved to b", |v| on(v, "b"));
    let swaps = pool.ended_swaps();
    assert_eq!(swaps.len(), 1, "{swaps:?}");
    assert_eq!(
        (
            swaps[0].from.as_str(),
            swaps[0].to.as_deref(),
            swaps[0].reason.as_str(),
            swaps[0].sessions.clone()
        ),
        ("a", Some("b"), "ModelLimit", vec!["op".to_string()])
    );
    // a stays Available and says why its Opus sessions left.
    let a = pool.account("a").unwrap();
    assert_eq!(a["status"]["phase"], "Available");
    let cond = &a["status"]["conditions"][0];
    assert_eq!(cond["reason"], "ModelThresholdReached", "{cond}");
    assert!(
        cond["message"]
            .as_str()
            .unwrap()
            .contains("seven_day_opus window at 97%"),
        "{cond}"
    );
    // Each session's next turn: Opus under b, Sonnet still under a.
    for (session, prompt, token) in [
        ("op", "opus turn after the move", TOKEN_B),
        ("so", "sonnet turn on a", TOKEN_A),
    ] {
        pool.apply(&pool.task_yaml(
            &format!("t-{session}"),
            prompt,
            &format!("  session: {session}\n"),
        ));
        assert_eq!(
            pool.request_with(prompt).credential(),
            Some(token),
            "{session}"
        );
    }
    assert_eq!(pool.session("so").unwrap()["status"]["account"], "a");
    // Shown in `get -o wide` and in the metrics.
    let wide = pool.ok(&["get", "accounts", "-o", "wide"]);
    let row = wide.lines().find(|l| l.starts_with("a ")).unwrap();
    assert!(row.contains("97%"), "{wide}");
    let (_, metrics) =
        common::daemon::call("GET", &format!("{}/metrics", pool.api_url()), None, None);
    for series in [
        "claude_failover_account_utilization_ratio{account=\"a\",window=\"seven_day_opus\"} 0.97",
        "claude_failover_account_threshold_ratio{account=\"a\",window=\"seven_day_opus\"} 0.9",
        "claude_failover_failovers_total{reason=\"model_limit\",result=\"succeeded\"} 1",
    ] {
        assert!(metrics.contains(series), "{series} not in\n{metrics}");
    }
}

//! Quota monitoring and failover end to end: the real daemon, the real
//! Claude Code in real tmux, in subscription mode (per-account
//! `.credentials.json`), against a fake Anthropic API on 127.0.0.1 that
//! sends each account's `anthropic-ratelimit-unified-*` headers.

mod common;
use common::fake_api::{Failure, FakeApi};
use common::pool::{Pool, claude};
use common::wait_for;
use serde_json::Value;
use std::time::{Duration, SystemTime};

const TOKEN_A: &str = "sk-ant-oat01-failover-test-account-a";
const TOKEN_B: &str = "sk-ant-oat01-failover-test-account-b";
const MINUTE: Duration = Duration::from_secs(60);

fn epoch_in(secs: u64) -> String {
    (SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + secs)
        .to_string()
}

/// The next main request is rejected for usage (HTTP 429, `rejected`).
fn reject_next(api: &FakeApi, reset_in: u64) {
    let reset = epoch_in(reset_in);
    api.fail_next_with(
        1,
        Failure {
            status: 429,
            body: FakeApi::error_body("rate_limit_error", "You've hit your session limit"),
            headers: vec![
                (
                    "anthropic-ratelimit-unified-status".into(),
                    "rejected".into(),
                ),
                (
                    "anthropic-ratelimit-unified-5h-utilization".into(),
                    "1.0".into(),
                ),
                ("anthropic-ratelimit-unified-5h-reset".into(), reset),
                (
                    "anthropic-ratelimit-unified-representative-claim".into(),
                    "five_hour".into(),
                ),
                ("x-should-retry".into(), "false".into()),
            ],
        },
    );
}

fn events(pool: &Pool, kind: &str, name: &str) -> String {
    pool.ok(&["describe", kind, name])
}

fn ready_on(v: &Value, account: &str) -> bool {
    v["status"]["account"] == account
        && v["status"]["phase"] == "Idle"
        && v["status"]["lastSwap"]["state"] == "Done"
}

#[test]
#[cfg_attr(
    not(claude_code),
    ignore = "needs Claude Code: npm ci --prefix tools/claude-code"
)]
fn crossing_the_threshold_moves_every_session_and_the_conversation_goes_on() {
    let claude = claude();
    let mut pool = Pool::new(claude);
    pool.api.set_usage_for(TOKEN_A, 0.5, 3600);
    pool.api.set_usage_for(TOKEN_B, 0.1, 3600);
    pool.apply(&pool.account_with_token("a", 0, TOKEN_A));
    pool.apply(&pool.account_with_token("b", 10, TOKEN_B));
    pool.apply(&pool.session_yaml("one", None, &[]));
    pool.apply(&pool.session_yaml("two", None, &[]));
    // Notifications go to a JSON webhook (served by the fake API here).
    pool.api
        .route("POST", "/notify", 200, serde_json::json!({}));
    pool.add_config(&format!(
        "notify:\n  webhook:\n    url: {}/notify\n  minIntervalSeconds: 0\n",
        pool.api.url()
    ));
    // The usage endpoint, polled for accounts no live session reports on.
    pool.api.route(
        "GET",
        "/api/oauth/usage",
        200,
        serde_json::json!({
            "five_hour": {"utilization": 12.0, "resets_at": "2099-01-01T00:00:00+00:00"},
            "seven_day": {"utilization": 3.0, "resets_at": null},
        }),
    );
    pool.start_daemon();
    let b = pool.wait_account("b", "its usage polled", |v| {
        v["status"]["usage"]["fiveHour"]["source"] == "poll"
    });
    assert_eq!(b["status"]["usage"]["fiveHour"]["utilization"], 12.0);
    for s in ["one", "two"] {
        pool.wait_session(s, "idle on a", |v| {
            v["status"]["account"] == "a" && v["status"]["phase"] == "Idle"
        });
    }
    // A first turn on a: its statusLine reports 50 % of the 5-hour window.
    pool.type_prompt("one", "first turn: remember the word TANGERINE");
    assert_eq!(
        pool.request_with("remember the word TANGERINE")
            .credential(),
        Some(TOKEN_A)
    );
    let a = pool.wait_account("a", "50% used", |v| {
        v["status"]["usage"]["fiveHour"]["utilization"] == 50.0
    });
    assert_eq!(a["status"]["phase"], "Available");
    assert_eq!(a["status"]["usage"]["fiveHour"]["source"], "statusLine");
    pool.wait_phase("one", "Idle");

    // The next answer says 95 %: over the 90 % threshold.
    pool.api.set_usage_for(TOKEN_A, 0.95, 3600);
    pool.type_prompt("one", "second turn: and the colour ORANGE");
    pool.request_with("and the colour ORANGE");
    pool.wait_account("a", "NearLimit", |v| v["status"]["phase"] == "NearLimit");

    // Both sessions move to b, resumed.
    let one = pool.wait_session("one", "resumed on b", |v| ready_on(v, "b"));
    pool.wait_session("two", "resumed on b", |v| ready_on(v, "b"));
    assert_eq!(one["status"]["restarts"], 0, "a swap is not a crash");
    assert_eq!(one["status"]["lastSwap"]["from"], "a");
    assert_eq!(one["status"]["lastSwap"]["reason"], "NearLimit");

    // The conversation goes on under b's credentials, with its history.
    pool.type_prompt("one", "third turn: which word and colour?");
    let third = pool.request_with("which word and colour?");
    assert_eq!(third.credential(), Some(TOKEN_B), "b's credentials");
    let texts = third.message_texts();
    for earlier in ["remember the word TANGERINE", "and the colour ORANGE"] {
        assert!(
            texts.iter().any(|t| t.contains(earlier)),
            "{earlier:?} missing from the resumed conversation: {texts:?}"
        );
    }

    // One swap, recorded with its epoch, and told in the events.
    let swaps = pool.ended_swaps();
    assert_eq!(swaps.len(), 1, "{swaps:?}");
    let s = &swaps[0];
    assert_eq!(
        (s.epoch, s.from.as_str(), s.to.as_deref(), s.result.as_str()),
        (1, "a", Some("b"), "Succeeded")
    );
    let mut names = s.sessions.clone();
    names.sort();
    assert_eq!(names, ["one", "two"]);
    let a = events(&pool, "account", "a");
    for reason in ["NearLimit", "FailoverStarted", "FailoverDone"] {
        assert!(a.contains(reason), "{reason} missing:\n{a}");
    }
    let one = events(&pool, "session", "one");
    assert!(one.contains("Swapped"), "{one}");
    // The webhook heard the story.
    wait_for("the notifications", MINUTE, || {
        let posts: String = pool
            .api
            .requests_to("/notify")
            .iter()
            .map(|q| q.raw_body.clone())
            .collect();
        (posts.contains("failover-started") && posts.contains("failover-done")).then_some(())
    });
    // The poll kept to its budget: at most one per account here (the
    // interval is 5 minutes), each with the account's own token.
    let polls = pool.api.requests_to("/api/oauth/usage");
    for token in [TOKEN_A, TOKEN_B] {
        let n = polls
            .iter()
            .filter(|q| q.credential() == Some(token))
            .count();
        assert!(n <= 1, "{n} polls with {token}");
    }
    assert!(polls.iter().any(|q| q.credential() == Some(TOKEN_B)));
    for q in &polls {
        assert_eq!(q.header("anthropic-beta"), Some("oauth-2025-04-20"));
    }
    // The session's checkpoint follows it (written on hook events).
    let id = pool.session("one").unwrap()["status"]["agentSessionId"].clone();
    wait_for("the checkpoint on b", MINUTE, || {
        let cp: Value = serde_json::from_slice(
            &std::fs::read(pool.path("state/checkpoints/default/one.json")).ok()?,
        )
        .ok()?;
        (cp["account"] == "b"
            && cp["agentSessionId"] == id
            && cp["lastPrompt"]
                .as_str()
                .is_some_and(|p| p.contains("which word and colour")))
        .then_some(())
    });
}

#[test]
#[cfg_attr(
    not(claude_code),
    ignore = "needs Claude Code: npm ci --prefix tools/claude-code"
)]
fn a_usage_limit_in_the_middle_of_a_task_swaps_and_replays_it() {
    let claude = claude();
    let mut pool = Pool::new(claude);
    pool.api.set_usage_for(TOKEN_A, 0.6, 3600);
    pool.api.set_usage_for(TOKEN_B, 0.1, 3600);
    pool.apply(&pool.account_with_token("a", 0, TOKEN_A));
    pool.apply(&pool.account_with_token("b", 10, TOKEN_B));
    pool.apply(&pool.session_yaml("worker", None, &[]));
    pool.start_daemon();
    pool.wait_session("worker", "idle on a", |v| {
        v["status"]["account"] == "a" && v["status"]["phase"] == "Idle"
    });
    // The task's request is rejected: a's limit is reached mid-task.
    reject_next(&pool.api, 3600);
    pool.apply(&pool.task_yaml("refactor", "refactor the LEMON module", ""));
    let rejected = pool.request_with("refactor the LEMON module");
    assert_eq!(rejected.credential(), Some(TOKEN_A));

    pool.wait_account("a", "Exhausted", |v| v["status"]["phase"] == "Exhausted");
    pool.wait_session("worker", "resumed on b", |v| ready_on(v, "b"));
    // The task is typed again into the same conversation, now on b.
    let t = pool.wait_task_phase("refactor", "Succeeded");
    assert_eq!(t["status"]["session"], "worker");
    assert_eq!(
        t["status"]["attempts"], 1,
        "a usage limit is not an attempt"
    );
    let replayed: Vec<_> = pool
        .api
        .main_requests()
        .into_iter()
        .filter(|q| {
            q.last_user_text()
                .is_some_and(|t| t.contains("refactor the LEMON module"))
        })
        .collect();
    assert_eq!(replayed.len(), 2, "rejected once, replayed once");
    assert_eq!(replayed[1].credential(), Some(TOKEN_B));
    assert_eq!(
        replayed[0].session_id(),
        replayed[1].session_id(),
        "the same conversation"
    );
    let swaps = pool.swaps();
    assert_eq!(swaps.len(), 1, "{swaps:?}");
    assert_eq!(swaps[0].reason, "Exhausted");
    let described = events(&pool, "task", "refactor");
    assert!(described.contains("usage limit"), "{described}");
    assert!(
        described.contains("replayed in session worker"),
        "{described}"
    );
}

#[test]
#[cfg_attr(
    not(claude_code),
    ignore = "needs Claude Code: npm ci --prefix tools/claude-code"
)]
fn a_prompt_cut_by_a_limit_goes_on_after_the_move_never_on_the_spent_account() {
    let claude = claude();
    let mut pool = Pool::new(claude);
    pool.apply(&pool.account_with_token("a", 0, TOKEN_A));
    pool.apply(&pool.account_with_token("b", 10, TOKEN_B));
    pool.apply(&pool.session_yaml("typist", None, &[]));
    pool.start_daemon();
    pool.wait_session("typist", "idle on a", |v| {
        v["status"]["account"] == "a" && v["status"]["phase"] == "Idle"
    });
    // A prompt the user typed is refused for usage while a still reads
    // Available in the store: the session's own report is what turns it
    // Exhausted, so the session must not take a's old word and go on there.
    reject_next(&pool.api, 3600);
    pool.type_prompt("typist", "a PAPAYA turn typed by hand");
    let refused = pool.request_with("a PAPAYA turn typed by hand");
    assert_eq!(refused.credential(), Some(TOKEN_A));
    pool.wait_session("typist", "resumed on b", |v| ready_on(v, "b"));
    let continued = wait_for("the continue message", 2 * MINUTE, || {
        pool.api.main_requests().into_iter().find(|q| {
            q.last_user_text()
                .is_some_and(|t| t.trim_end().ends_with("continue"))
        })
    });
    assert_eq!(continued.credential(), Some(TOKEN_B), "continued on b");
    assert!(
        continued
            .message_texts()
            .iter()
            .any(|t| t.contains("a PAPAYA turn typed by hand")),
        "in the same conversation"
    );
    let on_a: Vec<_> = pool
        .api
        .main_requests()
        .into_iter()
        .filter(|q| q.credential() == Some(TOKEN_A))
        .filter_map(|q| q.last_user_text())
        .collect();
    assert!(
        on_a.iter().all(|t| !t.trim_end().ends_with("continue")),
        "the cut turn went on on the spent account: {on_a:?}"
    );
    assert_eq!(pool.swaps().len(), 1);
}

#[test]
#[cfg_attr(
    not(claude_code),
    ignore = "needs Claude Code: npm ci --prefix tools/claude-code"
)]
fn with_no_account_left_sessions_wait_and_continue_after_the_reset() {
    let claude = claude();
    let mut pool = Pool::new(claude);
    pool.apply(&pool.account_with_token("a", 0, TOKEN_A));
    // The user keeps Claude Code's own continue-at-reset on (its default
    // since about 2.1.234): left alone, it would run the cut turn a second
    // time next to the daemon's replay. The sessions' settings turn it off.
    let user_settings = pool.path("accounts/a/settings.json");
    std::fs::write(&user_settings, r#"{"autoContinueAtUsageLimit": true}"#).unwrap();
    pool.apply(&pool.session_yaml("solo", None, &[]));
    pool.apply(&pool.session_yaml("idle", None, &[]));
    pool.start_daemon();
    for s in ["solo", "idle"] {
        pool.wait_session(s, "idle on a", |v| {
            v["status"]["account"] == "a" && v["status"]["phase"] == "Idle"
        });
    }
    // The window resets a minute from now; the first answer says so.
    let reset_in = 60;
    pool.api.set_usage_for(TOKEN_A, 0.8, reset_in);
    pool.type_prompt("idle", "a first turn on the IDLE session");
    pool.request_with("a first turn on the IDLE session");
    pool.wait_account("a", "a reading with its reset", |v| {
        v["status"]["usage"]["fiveHour"]["utilization"] == 80.0
    });
    pool.wait_phase("idle", "Idle");
    // Then the limit, in the middle of a task on `solo`, and on a plain
    // prompt of `idle`.
    reject_next(&pool.api, reset_in);
    pool.apply(&pool.task_yaml(
        "nightly",
        "run the nightly KIWI report",
        "  session: solo\n",
    ));
    pool.request_with("run the nightly KIWI report");
    let a = pool.wait_account("a", "Exhausted", |v| v["status"]["phase"] == "Exhausted");
    assert!(a["status"]["limit"]["resetsAt"].is_string(), "{a}");
    reject_next(&pool.api, reset_in);
    pool.type_prompt("idle", "a second turn on the IDLE session");
    pool.request_with("a second turn on the IDLE session");

    // No other account: they wait, and say why.
    for s in ["solo", "idle"] {
        let v = pool.wait_session(s, "waiting for the quota", |v| {
            v["status"]["phase"] == "Waiting"
                && v["status"]["conditions"]
                    .as_array()
                    .is_some_and(|c| c.iter().any(|c| c["reason"] == "QuotaExhausted"))
        });
        assert_eq!(v["status"]["account"], "a");
    }
    assert!(
        events(&pool, "account", "a").contains("NoFailoverTarget"),
        "the missing target is told"
    );

    // The reset comes: the task is replayed, the cut turn continued.
    pool.api.set_usage_for(TOKEN_A, 0.0, 3600);
    pool.wait_account("a", "Available again", |v| {
        v["status"]["phase"] == "Available"
    });
    let t = pool.wait_task_phase("nightly", "Succeeded");
    assert_eq!(t["status"]["session"], "solo");
    let continued = wait_for("the continue message", 2 * MINUTE, || {
        pool.api.main_requests().into_iter().find(|q| {
            // Claude Code sends the cut turn and the continue together.
            q.last_user_text().is_some_and(|t| {
                t.contains("a second turn on the IDLE session")
                    && t.trim_end().ends_with("continue")
            })
        })
    });
    assert_eq!(continued.credential(), Some(TOKEN_A));
    assert!(
        continued
            .message_texts()
            .iter()
            .any(|t| t.contains("a first turn on the IDLE session")),
        "continued in the same conversation"
    );
    assert!(pool.swaps().is_empty(), "nothing to swap to");
    let a = events(&pool, "account", "a");
    assert!(a.contains("Recovered"), "{a}");
    // Exactly once: the cut task was sent when refused and once after the
    // reset, and Claude Code never armed its own continuation.
    let typed = pool
        .api
        .main_requests()
        .iter()
        .filter(|q| {
            q.last_user_text()
                .is_some_and(|t| t.contains("run the nightly KIWI report"))
        })
        .count();
    assert_eq!(typed, 2, "refused once, replayed once");
    assert!(
        !pool.api.main_requests().iter().any(|q| q
            .last_user_text()
            .is_some_and(|t| claude_failover::agent::hooks::is_auto_continue(&t))),
        "Claude Code continued by itself"
    );
    for (path, bytes) in common::snapshot(&pool.path("projects")) {
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            !text.contains("continue automatically"),
            "{} shows Claude Code's continuation armed",
            path.display()
        );
    }
    // The user's choice stands in their own settings (Claude Code adds
    // its own keys there, the project none).
    let kept: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&user_settings).unwrap()).unwrap();
    assert_eq!(kept["autoContinueAtUsageLimit"], true, "{kept}");
}

#[test]
#[cfg_attr(
    not(claude_code),
    ignore = "needs Claude Code: npm ci --prefix tools/claude-code"
)]
fn concurrent_triggers_and_two_daemons_never_swap_twice_at_once() {
    let claude = claude();
    const TOKEN_C: &str = "sk-ant-oat01-failover-test-account-c";
    const TOKEN_D: &str = "sk-ant-oat01-failover-test-account-d";
    let mut pool = Pool::new(claude);
    for t in [TOKEN_A, TOKEN_B] {
        pool.api.set_usage_for(t, 0.5, 3600);
    }
    for t in [TOKEN_C, TOKEN_D] {
        pool.api.set_usage_for(t, 0.1, 3600);
    }
    pool.apply(&pool.account_with_token("a", 0, TOKEN_A));
    pool.apply(&pool.account_with_token("b", 0, TOKEN_B));
    pool.apply(&pool.account_with_token("c", 10, TOKEN_C));
    pool.apply(&pool.account_with_token("d", 20, TOKEN_D));
    pool.apply(&pool.session_yaml("on-a", Some("a"), &[]));
    pool.apply(&pool.session_yaml("on-b", Some("b"), &[]));
    let first = pool.start_daemon();
    pool.wait_log(first, "leader lease acquired");
    let second = pool.start_daemon();
    pool.wait_log(second, "standby");
    pool.wait_session("on-a", "idle on a", |v| {
        v["status"]["account"] == "a" && v["status"]["phase"] == "Idle"
    });
    pool.wait_session("on-b", "idle on b", |v| {
        v["status"]["account"] == "b" && v["status"]["phase"] == "Idle"
    });

    // 1. Concurrent triggers: a and b cross their threshold at once. The
    //    swaps take turns under the lease; both sessions land on c (the
    //    most headroom, then priority).
    pool.api.set_usage_for(TOKEN_A, 0.97, 3600);
    pool.api.set_usage_for(TOKEN_B, 0.97, 3600);
    pool.type_prompt("on-a", "the turn that fills account a");
    pool.type_prompt("on-b", "the turn that fills account b");
    for s in ["on-a", "on-b"] {
        pool.wait_session(s, "resumed on c", |v| ready_on(v, "c"));
    }
    let before = pool.swaps().len();
    assert_eq!(before, 2, "{:#?}", pool.swaps());

    // 2. Two daemons: a swap by hand (c to d), and the leader dies in the
    //    middle of it. The standby takes over and finishes it.
    let out = pool
        .cli(&["failover", "c", "--to", "d", "--no-wait"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for("the manual swap under way", 2 * MINUTE, || {
        pool.swaps().into_iter().find(|s| s.result == "Running")
    });
    let killed_at = claude_failover::controller::checkpoint::unix_ms(SystemTime::now());
    pool.signal_daemon(first, libc::SIGKILL);
    pool.wait_log(second, "leader lease acquired");
    for s in ["on-a", "on-b"] {
        pool.wait_session(s, "resumed on d", |v| ready_on(v, "d"));
    }

    // Epochs are unique and increase with time; no two swaps overlap.
    let swaps = wait_for("every swap finished", MINUTE, || {
        let s = pool.swaps();
        s.iter().all(|r| r.result != "Running").then_some(s)
    });
    assert!(swaps.len() > before, "{swaps:#?}");
    for w in swaps.windows(2) {
        let (x, y) = (&w[0], &w[1]);
        assert!(x.epoch < y.epoch, "{swaps:#?}");
        match x.finished_at {
            Some(end) => assert!(end <= y.started_at, "overlapping swaps: {swaps:#?}"),
            // Cut short by the kill: the next one began after it.
            None => {
                assert_eq!(x.result, "Interrupted", "{swaps:#?}");
                assert!(y.started_at >= killed_at, "{swaps:#?}");
            }
        }
    }
    // The lease ends released, at the last swap's epoch.
    let epoch = wait_for("the swap lease released", MINUTE, || {
        let (held, epoch) = pool.swap_lease();
        (!held).then_some(epoch)
    });
    assert_eq!(epoch, swaps.last().unwrap().epoch);
    // The conversations went along.
    for (s, text) in [
        ("on-a", "the turn that fills account a"),
        ("on-b", "the turn that fills account b"),
    ] {
        pool.type_prompt(s, &format!("after the moves: {s}"));
        let q = pool.request_with(&format!("after the moves: {s}"));
        assert_eq!(q.credential(), Some(TOKEN_D));
        assert!(q.message_texts().iter().any(|t| t.contains(text)));
    }
    let listed = pool.ok(&["swaps"]);
    assert!(
        listed.contains("Manual") && listed.contains("NearLimit"),
        "{listed}"
    );
}

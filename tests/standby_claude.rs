//! The warm standby end to end: the real daemon, the real Claude Code in
//! real tmux, subscription accounts with their own credentials, the fake
//! API on 127.0.0.1 telling the credentials apart. A Session with
//! `spec.standby: {mode: warm}` keeps an idle Claude Code under the next
//! target; a move types `/resume <id>` into it; without a usable standby
//! the move relaunches as before.

mod common;
use common::fake_api::{Failure, FakeApi};
use common::pool::{Pool, claude};
use serde_json::Value;
use std::time::SystemTime;

const TOKEN_A: &str = "sk-ant-oat01-standby-test-account-a";
const TOKEN_B: &str = "sk-ant-oat01-standby-test-account-b";
const TOKEN_C: &str = "sk-ant-oat01-standby-test-account-c";

/// Three accounts (a preferred, then b, then c) and `sessions`, each with
/// a warm standby; the daemon started, each session idle on a with a
/// ready standby on b.
fn pool_with_standbys(sessions: &[&str]) -> Pool {
    let mut pool = Pool::new(claude());
    pool.api.set_usage_for(TOKEN_A, 0.5, 3600);
    for t in [TOKEN_B, TOKEN_C] {
        pool.api.set_usage_for(t, 0.1, 3600);
    }
    pool.apply(&pool.account_with_token("a", 0, TOKEN_A));
    pool.apply(&pool.account_with_token("b", 10, TOKEN_B));
    pool.apply(&pool.account_with_token("c", 20, TOKEN_C));
    for s in sessions {
        let yaml = pool.session_yaml(s, None, &[]) + "  standby:\n    mode: warm\n";
        pool.apply(&yaml);
    }
    pool.start_daemon();
    for s in sessions {
        pool.wait_session(
            s,
            "idle on a with a ready standby on b",
            idle_on_a_with_standby_on_b,
        );
    }
    pool
}

fn moved_to(v: &Value, account: &str) -> bool {
    v["status"]["account"] == account
        && v["status"]["phase"] == "Idle"
        && v["status"]["lastSwap"]["state"] == "Done"
}

/// The main requests whose last user text holds `needle`.
fn requests_with(api: &FakeApi, needle: &str) -> Vec<common::fake_api::Recorded> {
    api.main_requests()
        .into_iter()
        .filter(|q| q.last_user_text().is_some_and(|t| t.contains(needle)))
        .collect()
}

fn pid_alive(pid: u64) -> bool {
    !claude_failover::agent::driver::process_gone(pid as u32)
}

/// The conversation goes on under b's credential with the same id and its
/// earlier turns.
fn goes_on_under_b(pool: &Pool, session: &str, id: &Value, earlier: &[&str]) {
    let ask = format!("which words did {session} hear?");
    pool.type_prompt(session, &ask);
    let q = pool.request_with(&ask);
    assert_eq!(q.credential(), Some(TOKEN_B), "b's credential");
    assert_eq!(Some(q.session_id().unwrap_or_default()), id.as_str());
    let texts = q.message_texts();
    for e in earlier {
        assert!(
            texts.iter().any(|t| t.contains(e)),
            "{e:?} missing from the conversation on b: {texts:?}"
        );
    }
}

#[test]
#[cfg_attr(
    not(claude_code),
    ignore = "needs Claude Code: npm ci --prefix tools/claude-code"
)]
fn a_session_with_a_warm_standby_moves_through_it() {
    let pool = pool_with_standbys(&["one"]);
    pool.type_prompt("one", "first turn: remember the word TANGERINE");
    assert_eq!(
        pool.request_with("remember the word TANGERINE")
            .credential(),
        Some(TOKEN_A)
    );
    let before = pool.wait_phase("one", "Idle");
    let id = before["status"]["agentSessionId"].clone();
    let old_pid = before["status"]["pid"].as_u64().unwrap();
    let standby_pid = before["status"]["standby"]["pid"].as_u64().unwrap();
    let standby_pane = before["status"]["standby"]["paneId"].clone();
    assert!(pid_alive(standby_pid));
    // The standby is no agent of the session: nothing typed into it.
    assert!(requests_with(&pool.api, "TANGERINE").len() == 1);
    // Its `/resume` of the conversation waits typed in its composer: the
    // move will be the Enter alone.
    pool.wait_session("one", "the standby primed", |v| {
        v["status"]["standby"]["primed"] == id
    });
    let waiting = pool.tmux(&["capture-pane", "-p", "-t", standby_pane.as_str().unwrap()]);
    assert_eq!(
        claude_failover::agent::screen::composer_text(&waiting),
        Some(format!("/resume {}", id.as_str().unwrap())),
        "{waiting}"
    );

    // The next answer says 95 %: past a's threshold.
    pool.api.set_usage_for(TOKEN_A, 0.95, 3600);
    pool.type_prompt("one", "second turn: and the colour ORANGE");
    pool.request_with("and the colour ORANGE");
    let after = pool.wait_session("one", "moved to b", |v| moved_to(v, "b"));
    // The standby became the agent: its process, its pane.
    assert_eq!(after["status"]["pid"].as_u64(), Some(standby_pid));
    assert_eq!(after["status"]["paneId"], standby_pane);
    assert_eq!(after["status"]["launch"]["takeover"], true);
    assert_eq!(after["status"]["launch"]["resumed"], true);
    assert_eq!(
        after["status"]["agentSessionId"], id,
        "the same conversation"
    );
    assert_eq!(after["status"]["restarts"], 0);
    common::wait_for("the old agent to end", common::pool::LONG, || {
        (!pid_alive(old_pid)).then_some(())
    });
    // Killed at its prompt, it left none of its state files behind in a's
    // config dir (its own exit would have removed them).
    let leftovers: Vec<String> = std::fs::read_dir(pool.path("accounts/a/sessions"))
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&format!("{old_pid}.")))
                .collect()
        })
        .unwrap_or_default();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // Its tmux session is the session's own now; the standby's is gone
    // until the next one starts.
    let described = pool.ok(&["describe", "session", "one"]);
    assert!(described.contains("TookOver"), "{described}");
    goes_on_under_b(
        &pool,
        "one",
        &id,
        &["remember the word TANGERINE", "and the colour ORANGE"],
    );
    // A new standby waits under the next target: c (a is past its limit).
    let next = pool.wait_session("one", "a new standby on c", |v| {
        v["status"]["standby"]["account"] == "c" && v["status"]["standby"]["ready"] == true
    });
    let new_pid = next["status"]["standby"]["pid"].as_u64().unwrap();
    assert_ne!(new_pid, standby_pid);
    assert!(pid_alive(new_pid));
    let swaps = pool.ended_swaps();
    assert_eq!(swaps.len(), 1, "{swaps:?}");
    assert_eq!(swaps[0].result, "Succeeded");
    // The metrics tell the takeover and the standby.
    metrics_tell(&pool, 1);
}

#[test]
#[cfg_attr(
    not(claude_code),
    ignore = "needs Claude Code: npm ci --prefix tools/claude-code"
)]
fn enter_pressed_by_hand_in_a_standby_replaces_it_and_leaves_the_agent_alone() {
    let pool = pool_with_standbys(&["one"]);
    pool.type_prompt("one", "a turn to resume: remember the word QUINCE");
    pool.request_with("remember the word QUINCE");
    // The turn over and its transcript written (an Idle read just after
    // the request can be the one from before the turn): only then has the
    // standby a conversation to take over when Enter is pressed.
    let projects = pool.path("projects");
    let before = pool.wait_session("one", "idle with its standby primed", |v| {
        v["status"]["phase"] == "Idle"
            && v["status"]["standby"]["primed"] == v["status"]["agentSessionId"]
            && v["status"]["agentSessionId"]
                .as_str()
                .is_some_and(|id| claude_failover::agent::seed::transcript_resumable(&projects, id))
    });
    let (agent_pid, standby_pid) = (
        before["status"]["pid"].as_u64().unwrap(),
        before["status"]["standby"]["pid"].as_u64().unwrap(),
    );
    // Someone attached to the standby's tmux session presses Enter under
    // the waiting `/resume`: it takes the conversation over beside the
    // agent, outside any move; the daemon ends it and starts another.
    // Pressed again while the command still waits there (a key can be
    // lost to a UI not listening yet).
    let pane = before["status"]["standby"]["paneId"].as_str().unwrap();
    let waiting = format!(
        "/resume {}",
        before["status"]["agentSessionId"].as_str().unwrap()
    );
    pool.press_enter_until(pane, "Enter taken by the standby", |s| {
        let still = claude_failover::agent::screen::composer_text(s).is_some_and(|t| t == waiting);
        !still || !pid_alive(standby_pid)
    });
    let after = pool.wait_session("one", "another standby, primed", |v| {
        v["status"]["standby"]["pid"]
            .as_u64()
            .is_some_and(|p| p != standby_pid)
            && v["status"]["standby"]["primed"] == v["status"]["agentSessionId"]
    });
    common::wait_for(
        "the standby resumed by hand to end",
        common::pool::LONG,
        || (!pid_alive(standby_pid)).then_some(()),
    );
    assert_eq!(
        after["status"]["pid"].as_u64(),
        Some(agent_pid),
        "the agent runs on"
    );
    assert_eq!(
        after["status"]["agentSessionId"],
        before["status"]["agentSessionId"]
    );
    assert_eq!(after["status"]["account"], "a");
    let described = pool.ok(&["describe", "session", "one"]);
    assert!(described.contains("outside a move"), "{described}");
}

/// The metrics tell `n` takeovers typed, none relaunched, and `n` ready
/// standbys (the gauges follow the store within a moment).
#[test]
#[cfg_attr(
    not(claude_code),
    ignore = "needs Claude Code: npm ci --prefix tools/claude-code"
)]
fn a_standby_waits_with_the_resume_of_the_conversation_typed_and_follows_a_clear() {
    let pool = pool_with_standbys(&["one"]);
    let first = pool.wait_session("one", "the standby primed", |v| {
        v["status"]["standby"]["primed"] == v["status"]["agentSessionId"]
    });
    let (id, standby_pid) = (
        first["status"]["agentSessionId"].clone(),
        first["status"]["standby"]["pid"].as_u64().unwrap(),
    );
    // `/clear` starts a new conversation: the standby typed for the old one
    // is stopped, and the next one waits with the new one's `/resume`.
    pool.type_prompt("one", "/clear");
    let next = pool.wait_session("one", "a standby primed for the new conversation", |v| {
        let new = &v["status"]["agentSessionId"];
        *new != id && v["status"]["standby"]["primed"] == *new
    });
    assert_ne!(next["status"]["standby"]["pid"].as_u64(), Some(standby_pid));
    common::wait_for("the first standby to end", common::pool::LONG, || {
        (!pid_alive(standby_pid)).then_some(())
    });
    let pane = next["status"]["standby"]["paneId"].as_str().unwrap();
    let screen = pool.tmux(&["capture-pane", "-p", "-t", pane]);
    let new_id = next["status"]["agentSessionId"].as_str().unwrap();
    assert_eq!(
        claude_failover::agent::screen::composer_text(&screen),
        Some(format!("/resume {new_id}")),
        "{screen}"
    );
    let described = pool.ok(&["describe", "session", "one"]);
    assert!(
        described.contains("the session's conversation changed"),
        "{described}"
    );
}

fn metrics_tell(pool: &Pool, n: usize) {
    common::wait_for("the standby metrics", common::pool::LONG, || {
        let url = format!("{}/metrics", pool.api_url());
        let metrics = common::daemon::call("GET", &url, None, None).1;
        [
            format!("claude_failover_takeovers_total{{result=\"typed\"}} {n}"),
            "claude_failover_takeovers_total{result=\"relaunched\"} 0".to_string(),
            format!("claude_failover_standbys{{state=\"ready\"}} {n}"),
        ]
        .iter()
        .all(|l| metrics.contains(l.as_str()))
        .then_some(())
    });
}

/// The next main request is rejected for usage (HTTP 429, `rejected`).
fn reject_next(api: &FakeApi) {
    let reset = (SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600)
        .to_string();
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

/// A task cut by a usage limit moves with its session and is typed again
/// once, whichever way the session moved.
fn cut_task_is_replayed_once(pool: &Pool, session: &str, task: &str, marker: &str) {
    reject_next(&pool.api);
    let prompt = format!("refactor the {marker} module");
    pool.apply(&pool.task_yaml(task, &prompt, &format!("  session: {session}\n")));
    assert_eq!(pool.request_with(&prompt).credential(), Some(TOKEN_A));
    pool.wait_session(session, "moved to b", |v| moved_to(v, "b"));
    let t = pool.wait_task_phase(task, "Succeeded");
    assert_eq!(
        t["status"]["attempts"], 1,
        "a usage limit is not an attempt"
    );
    let sent = requests_with(&pool.api, &prompt);
    assert_eq!(sent.len(), 2, "rejected once, replayed once: {sent:?}");
    assert_eq!(sent[1].credential(), Some(TOKEN_B));
    assert_eq!(sent[0].session_id(), sent[1].session_id());
}

#[test]
#[cfg_attr(
    not(claude_code),
    ignore = "needs Claude Code: npm ci --prefix tools/claude-code"
)]
fn a_cut_task_is_replayed_once_after_a_takeover() {
    let pool = pool_with_standbys(&["worker"]);
    let standby_pid = pool.session("worker").unwrap()["status"]["standby"]["pid"].clone();
    cut_task_is_replayed_once(&pool, "worker", "refactor", "LEMON");
    let s = pool.session("worker").unwrap();
    assert_eq!(s["status"]["pid"], standby_pid, "moved through the standby");
    assert_eq!(s["status"]["launch"]["takeover"], true);
}

#[test]
#[cfg_attr(
    not(claude_code),
    ignore = "needs Claude Code: npm ci --prefix tools/claude-code"
)]
fn a_standby_killed_before_the_move_means_a_relaunch() {
    let pool = pool_with_standbys(&["worker"]);
    pool.type_prompt("worker", "first turn: remember the word PLUM");
    pool.request_with("remember the word PLUM");
    let before = pool.wait_phase("worker", "Idle");
    let id = before["status"]["agentSessionId"].clone();
    let standby_pid = before["status"]["standby"]["pid"].as_u64().unwrap();
    // a's 50 % is known before the move (else, unread, a would be the next
    // standby's pick by priority, not c).
    pool.wait_account("a", "a's usage read", |v| {
        v["status"]["usage"]["fiveHour"]["utilization"] == 50.0
    });
    // A turn held at the API: the move waits for its end.
    pool.api.hold();
    pool.type_prompt("worker", "second turn: and the colour PLUM-RED");
    common::wait_for("the held turn", common::pool::LONG, || {
        (pool.api.held_count() > 0).then_some(())
    });
    pool.ok(&["failover", "a", "--no-wait"]);
    common::wait_for("the swap to start", common::pool::LONG, || {
        pool.swaps()
            .into_iter()
            .find(|w| w.result == "Running" && w.sessions == ["worker"])
    });
    // The standby dies while the move waits for the turn's end (no new one
    // starts while the swap runs).
    unsafe { libc::kill(standby_pid as i32, libc::SIGKILL) };
    common::wait_for("the standby to die", common::pool::LONG, || {
        (!pid_alive(standby_pid)).then_some(())
    });
    pool.api.release();
    let after = pool.wait_session("worker", "moved to b", |v| moved_to(v, "b"));
    assert_ne!(after["status"]["pid"].as_u64(), Some(standby_pid));
    assert_eq!(
        after["status"]["launch"]["takeover"],
        Value::Null,
        "a launch"
    );
    assert_eq!(after["status"]["launch"]["resumed"], true);
    assert_eq!(after["status"]["agentSessionId"], id);
    goes_on_under_b(
        &pool,
        "worker",
        &id,
        &["remember the word PLUM", "and the colour PLUM-RED"],
    );
    // Each turn was typed once.
    assert_eq!(requests_with(&pool.api, "remember the word PLUM").len(), 1);
    let described = pool.ok(&["describe", "session", "worker"]);
    assert!(!described.contains("TookOver"), "{described}");
    // A new standby for the next move.
    pool.wait_session("worker", "a new standby on c", |v| {
        v["status"]["standby"]["account"] == "c" && v["status"]["standby"]["ready"] == true
    });
}

#[test]
#[cfg_attr(
    not(claude_code),
    ignore = "needs Claude Code: npm ci --prefix tools/claude-code"
)]
fn a_takeover_not_confirmed_in_time_relaunches_and_replays_once() {
    let pool = pool_with_standbys(&["worker"]);
    let standby_pid = pool.session("worker").unwrap()["status"]["standby"]["pid"]
        .as_u64()
        .unwrap();
    // The standby is frozen: alive and ready as far as anyone can see, but
    // it never answers the /resume typed into it. (Not SIGSTOP: tmux
    // continues a pane's stopped process. A tracer's stop holds its main
    // thread, where Claude Code runs.)
    let pid = standby_pid as libc::pid_t;
    unsafe {
        assert_eq!(
            libc::ptrace(libc::PTRACE_SEIZE, pid, 0, 0),
            0,
            "{}",
            std::io::Error::last_os_error()
        );
        assert_eq!(libc::ptrace(libc::PTRACE_INTERRUPT, pid, 0, 0), 0);
    }
    cut_task_is_replayed_once(&pool, "worker", "refactor", "QUINCE");
    let s = pool.session("worker").unwrap();
    let described = pool.ok(&["describe", "session", "worker"]);
    assert_ne!(
        s["status"]["pid"].as_u64(),
        Some(standby_pid),
        "{described}"
    );
    assert_eq!(s["status"]["launch"]["takeover"], Value::Null, "a launch");
    assert!(described.contains("TakeOverFailed"), "{described}");
    // Its tmux session is gone; the frozen process ends once it runs again
    // (the hang-up tmux sent it waits for that).
    unsafe { libc::ptrace(libc::PTRACE_DETACH, pid, 0, 0) };
    common::wait_for("the frozen standby to end", common::pool::LONG, || {
        (!pid_alive(standby_pid)).then_some(())
    });
}

/// A pool `ccl` of four Sessions on a (the only account it selects; the
/// failover may use any) whose template keeps `standby`; the daemon
/// started.
fn pool_of_four(standby: &str) -> (Pool, Vec<String>) {
    let mut pool = Pool::new(claude());
    pool.api.set_usage_for(TOKEN_A, 0.5, 3600);
    for t in [TOKEN_B, TOKEN_C] {
        pool.api.set_usage_for(t, 0.1, 3600);
    }
    let a = pool.account_with_token("a", 0, TOKEN_A).replace(
        "metadata:\n  name: a\n",
        "metadata:\n  name: a\n  labels: {home: \"yes\"}\n",
    );
    pool.apply(&a);
    pool.apply(&pool.account_with_token("b", 10, TOKEN_B));
    pool.apply(&pool.account_with_token("c", 20, TOKEN_C));
    // The template: a Session spec as the other tests write it, indented.
    let session = pool.session_yaml("x", None, &[]);
    let spec: String = session
        .split_once("spec:\n")
        .unwrap()
        .1
        .lines()
        .map(|l| format!("    {l}\n"))
        .collect();
    pool.apply(&format!(
        "apiVersion: claude-failover.io/v1alpha1\nkind: SessionPool\nmetadata: {{name: ccl}}\nspec:\n  replicas: 4\n  placement:\n    accountSelector: {{matchLabels: {{home: \"yes\"}}}}\n  template:\n    spec:\n{spec}      standby: {standby}\n"
    ));
    pool.start_daemon();
    let names = (0..4).map(|i| format!("ccl-{i}")).collect();
    (pool, names)
}

/// Each of `names` remembers a word on a, then a's usage passes its
/// threshold and one more turn on ccl-0 sets the move off.
fn fill_then_cross_a(pool: &Pool, names: &[String]) {
    for n in names {
        pool.type_prompt(n, &format!("{n} remembers the word FIG"));
        pool.request_with(&format!("{n} remembers the word FIG"));
    }
    for n in names {
        pool.wait_phase(n, "Idle");
    }
    pool.api.set_usage_for(TOKEN_A, 0.95, 3600);
    pool.type_prompt("ccl-0", "ccl-0 adds the colour TEAL");
    pool.request_with("ccl-0 adds the colour TEAL");
}

fn idle_on_a_with_standby_on_b(v: &Value) -> bool {
    v["status"]["account"] == "a"
        && v["status"]["phase"] == "Idle"
        && v["status"]["standby"]["account"] == "b"
        && v["status"]["standby"]["ready"] == true
}

#[test]
#[cfg_attr(
    not(claude_code),
    ignore = "needs Claude Code: npm ci --prefix tools/claude-code"
)]
fn a_pool_of_four_with_standbys_moves_together_through_them() {
    let (pool, names) = pool_of_four("{mode: warm}");
    let mut standby_pids = Vec::new();
    for n in &names {
        let v = pool.wait_session(
            n,
            "idle on a with a ready standby on b",
            idle_on_a_with_standby_on_b,
        );
        standby_pids.push(v["status"]["standby"]["pid"].clone());
    }
    // Past a's threshold: all four move, each through its standby.
    fill_then_cross_a(&pool, &names);
    for (n, pid) in names.iter().zip(&standby_pids) {
        let v = pool.wait_session(n, "moved to b", |v| moved_to(v, "b"));
        assert_eq!(&v["status"]["pid"], pid, "{n} moved through its standby");
        assert_eq!(v["status"]["launch"]["takeover"], true);
    }
    let swaps = pool.swaps();
    assert_eq!(swaps.len(), 1, "one swap for the four: {swaps:?}");
    assert_eq!(swaps[0].sessions.len(), 4);
    for n in &names {
        let id = pool.session(n).unwrap()["status"]["agentSessionId"].clone();
        goes_on_under_b(&pool, n, &id, &[&format!("{n} remembers the word FIG")]);
    }
    for n in &names {
        pool.wait_session(n, "a new standby on c", |v| {
            v["status"]["standby"]["account"] == "c" && v["status"]["standby"]["ready"] == true
        });
    }
}

/// The standbys of `names` that are ready under `account`, and whether
/// any other runs.
fn standbys_under(pool: &Pool, names: &[String], account: &str) -> (Vec<String>, bool) {
    let mut ready = Vec::new();
    let mut other = false;
    for n in names {
        let v = pool.session(n).unwrap_or_default();
        let sb = &v["status"]["standby"];
        if sb["account"] == account && sb["ready"] == true {
            ready.push(n.clone());
        } else if !sb.is_null() {
            other = true;
        }
    }
    (ready, other)
}

#[test]
#[cfg_attr(
    not(claude_code),
    ignore = "needs Claude Code: npm ci --prefix tools/claude-code"
)]
fn a_pool_bounded_to_two_standbys_per_target_moves_two_through_them() {
    let (pool, names) = pool_of_four("{mode: warm, perTarget: 2}");
    // Two standbys on b, for the first two (all four equally near a's
    // limit: by name); the other two keep none.
    for n in &names {
        pool.wait_session(n, "idle on a", |v| {
            v["status"]["account"] == "a" && v["status"]["phase"] == "Idle"
        });
    }
    let mut pids = Vec::new();
    for n in &names[..2] {
        let v = pool.wait_session(n, "a ready standby on b", idle_on_a_with_standby_on_b);
        pids.push(v["status"]["standby"]["pid"].clone());
    }
    assert_eq!(
        standbys_under(&pool, &names, "b"),
        (names[..2].to_vec(), false),
        "two standbys, no more"
    );
    let described = pool.ok(&["describe", "sessionpool", "ccl"]);
    assert!(
        described.contains("Standbys:\n  under b: 2 ready (ccl-0, ccl-1)\n"),
        "{described}"
    );
    fill_then_cross_a(&pool, &names);
    // All four move: two through the standbys, two by a relaunch.
    for (i, n) in names.iter().enumerate() {
        let v = pool.wait_session(n, "moved to b", |v| moved_to(v, "b"));
        let took_over = v["status"]["launch"]["takeover"] == true;
        assert_eq!(took_over, i < 2, "{n}: {}", v["status"]["launch"]);
        if i < 2 {
            assert_eq!(v["status"]["pid"], pids[i], "{n} moved through its standby");
        }
    }
    for n in &names {
        let id = pool.session(n).unwrap()["status"]["agentSessionId"].clone();
        goes_on_under_b(&pool, n, &id, &[&format!("{n} remembers the word FIG")]);
    }
    // The next target is c: two standbys there, and still no more.
    common::wait_for("two ready standbys on c", common::pool::LONG, || {
        let (ready, other) = standbys_under(&pool, &names, "c");
        (ready.len() == 2 && !other).then_some(())
    });
    metrics_tell(&pool, 2);
}

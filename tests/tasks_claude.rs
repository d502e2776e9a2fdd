//! Task dispatch end to end: real Claude Code in real tmux, a fake API on
//! 127.0.0.1, the real daemon.

mod common;
use common::pool::{LONG, Pool, claude};

const KEY: (&str, &str) = (
    "ANTHROPIC_API_KEY",
    "sk-ant-api03-test-key-tasks-0000000000000",
);

#[test]
#[cfg_attr(
    not(claude_code),
    ignore = "needs Claude Code: npm ci --prefix tools/claude-code"
)]
fn tasks_spread_over_sessions_each_delivered_once() {
    let claude = claude();
    let mut pool = Pool::new(claude);
    pool.apply(&pool.account_yaml("a", 10));
    for s in ["w-0", "w-1"] {
        pool.apply(&pool.session_yaml(s, Some("a"), &[KEY]));
    }
    pool.start_daemon();
    for s in ["w-0", "w-1"] {
        pool.wait_phase(s, "Idle");
    }
    // While replies are held, each session holds one task: one per session.
    pool.api.hold();
    for i in 0..6 {
        pool.apply(&pool.task_yaml(&format!("t{i}"), &format!("unique job number {i}"), ""));
    }
    let running = common::wait_for("two tasks running", LONG, || {
        let out = pool.ok(&["get", "tasks", "-o", "json"]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let sessions: Vec<String> = v["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["status"]["phase"] == "Running")
            .map(|t| t["status"]["session"].as_str().unwrap().to_string())
            .collect();
        (sessions.len() == 2).then_some(sessions)
    });
    assert_ne!(running[0], running[1], "one task per session at a time");
    pool.api.release();
    let mut used = std::collections::HashSet::new();
    for i in 0..6 {
        let v = pool.wait_task_phase(&format!("t{i}"), "Succeeded");
        assert_eq!(v["status"]["attempts"], 1);
        // The summary is the start of the agent's reply (the fake API echoes).
        assert!(
            v["status"]["message"].as_str().unwrap().starts_with("ok: "),
            "{v}"
        );
        used.insert(v["status"]["session"].as_str().unwrap().to_string());
    }
    assert_eq!(used.len(), 2, "both sessions worked");
    for i in 0..6 {
        assert_eq!(
            pool.deliveries(&format!("unique job number {i}")),
            1,
            "task t{i}"
        );
    }
    let d = pool.ok(&["describe", "task", "t3"]);
    for want in ["Dispatched", "Confirmed", "Succeeded"] {
        assert!(d.contains(want), "describe lacks {want}:\n{d}");
    }
    let table = pool.ok(&["get", "tasks"]);
    assert!(
        table.lines().filter(|l| l.contains("Succeeded")).count() == 6,
        "{table}"
    );
}

#[test]
#[cfg_attr(
    not(claude_code),
    ignore = "needs Claude Code: npm ci --prefix tools/claude-code"
)]
fn priorities_are_served_first_and_models_follow() {
    let claude = claude();
    let mut pool = Pool::new(claude);
    pool.apply(&pool.account_yaml("a", 10));
    pool.apply(&pool.session_yaml("solo", Some("a"), &[KEY]));
    pool.start_daemon();
    pool.wait_phase("solo", "Idle");
    // Keep the session busy while the queue fills.
    pool.api.hold();
    pool.apply(&pool.task_yaml("blocker", "the blocking job", ""));
    pool.wait_task_phase("blocker", "Running");
    pool.apply(&pool.task_yaml("low", "the low job", "  priority: low\n"));
    pool.apply(&pool.task_yaml("normal", "the normal job", "  priority: normal\n"));
    pool.apply(&pool.task_yaml("critical", "the critical job", "  priority: critical\n"));
    pool.api.release();
    for t in ["blocker", "critical", "normal", "low"] {
        pool.wait_task_phase(t, "Succeeded");
    }
    let order: Vec<String> = pool
        .api
        .main_requests()
        .iter()
        .filter_map(|r| r.last_user_text())
        .filter(|t| t.contains(" job"))
        .collect();
    let pos = |needle: &str| order.iter().position(|t| t.contains(needle)).unwrap();
    assert!(
        pos("the critical job") < pos("the normal job")
            && pos("the normal job") < pos("the low job"),
        "{order:?}"
    );
    // critical → opus by the default priority map, the others sonnet.
    let model_of = |needle: &str| {
        pool.api
            .main_requests()
            .into_iter()
            .find(|r| r.last_user_text().is_some_and(|t| t.contains(needle)))
            .and_then(|r| r.model().map(str::to_string))
            .unwrap()
    };
    assert!(
        model_of("the critical job").contains("opus"),
        "{}",
        model_of("the critical job")
    );
    assert!(
        model_of("the low job").contains("sonnet"),
        "{}",
        model_of("the low job")
    );
}

#[test]
#[cfg_attr(
    not(claude_code),
    ignore = "needs Claude Code: npm ci --prefix tools/claude-code"
)]
fn inbox_files_flow_to_done_and_bad_ones_to_rejected() {
    let claude = claude();
    let mut pool = Pool::new(claude);
    pool.apply(&pool.account_yaml("a", 10));
    pool.apply(&pool.session_yaml("inboxed", Some("a"), &[KEY]));
    pool.start_daemon();
    pool.wait_phase("inboxed", "Idle");
    let queue = pool.workdir().join(".agent-queue");
    let inbox = queue.join("inbox");
    std::fs::create_dir_all(&inbox).unwrap();
    std::fs::write(
        inbox.join("refactor.md"),
        "---\npriority: high\nmodel: sonnet\n---\nPlease do the inbox job\nacross two lines.\n",
    )
    .unwrap();
    std::fs::write(
        inbox.join("broken.md"),
        "---\npriority: urgent\n---\nwhatever\n",
    )
    .unwrap();
    common::wait_for("refactor.md in done/", LONG, || {
        queue.join("done/refactor.md").exists().then_some(())
    });
    let result = std::fs::read_to_string(queue.join("done/refactor.md.result")).unwrap();
    assert!(result.starts_with("ok: "), "{result}");
    assert_eq!(pool.deliveries("across two lines."), 1);
    assert!(!inbox.join("refactor.md").exists() && !inbox.join("refactor.md.dispatched").exists());
    common::wait_for("broken.md in rejected/", LONG, || {
        queue
            .join("rejected/broken.md.error")
            .exists()
            .then_some(())
    });
    let why = std::fs::read_to_string(queue.join("rejected/broken.md.error")).unwrap();
    assert!(
        why.contains("broken.md:2:1: priority: unknown variant `urgent`"),
        "{why}"
    );
    // status.json follows the session for tools that read it.
    common::wait_for("status.json to say idle", LONG, || {
        let status: serde_json::Value =
            serde_json::from_slice(&std::fs::read(queue.join("status.json")).ok()?).ok()?;
        (status["state"] == "idle"
            && status["sessions"]["inboxed"]["phase"] == "Idle"
            && status["sessions"]["inboxed"]["currentTask"].is_null())
        .then_some(())
    });
}

#[test]
#[cfg_attr(
    not(claude_code),
    ignore = "needs Claude Code: npm ci --prefix tools/claude-code"
)]
fn a_running_task_can_be_cancelled() {
    let claude = claude();
    let mut pool = Pool::new(claude);
    pool.apply(&pool.account_yaml("a", 10));
    pool.apply(&pool.session_yaml("c-0", Some("a"), &[KEY]));
    pool.start_daemon();
    pool.api.hold();
    pool.apply(&pool.task_yaml("long", "a very long job", ""));
    pool.wait_task_phase("long", "Running");
    pool.wait_session("c-0", "working on the task", |v| {
        v["status"]["currentTask"] == "long"
    });
    pool.ok(&["cancel", "task", "long"]);
    pool.wait_task_phase("long", "Cancelled");
    // The turn was interrupted: the agent is back at its prompt while the
    // reply it was waiting for is still held by the API.
    pool.wait_session("c-0", "idle without a task, its reply still held", |v| {
        v["status"]["phase"] == "Idle" && v["status"]["currentTask"].is_null()
    });
    pool.api.release();
}

#[test]
#[cfg_attr(
    not(claude_code),
    ignore = "needs Claude Code: npm ci --prefix tools/claude-code"
)]
fn a_subagents_usage_limit_does_not_end_the_task_it_runs_in() {
    let claude = claude();
    let mut pool = Pool::new(claude);
    pool.apply(&pool.account_yaml("a", 10));
    pool.apply(&pool.session_yaml("w-sub", Some("a"), &[KEY]));
    pool.start_daemon();
    pool.wait_phase("w-sub", "Idle");
    // The task's turn starts a subagent; the subagent's request hits a
    // usage limit. Claude Code fires StopFailure for it, under the parent's
    // session id, and the main turn goes on to its own end.
    const SUB: &str = "SUBAGENT: list the files here";
    pool.api.queue_tool_use(
        "Agent",
        serde_json::json!({"description": "look around", "prompt": SUB, "subagent_type": "general-purpose"}),
    );
    pool.api.fail_matching(
        |r| r.last_user_text().is_some_and(|t| t.contains(SUB)),
        common::fake_api::Failure {
            status: 429,
            body: common::fake_api::FakeApi::error_body(
                "rate_limit_error",
                "Number of requests has exceeded your rate limit",
            ),
            headers: vec![("x-should-retry".into(), "false".into())],
        },
    );
    pool.apply(&pool.task_yaml("t-sub", "use a subagent for job SUBTASK-1", ""));
    let t = pool.wait_task_phase("t-sub", "Succeeded");
    assert_eq!(t["status"]["attempts"], 1, "{t}");
    assert!(
        pool.api
            .requests()
            .iter()
            .any(|r| r.status == 429 && r.mentions(SUB)),
        "the subagent was refused: {}",
        pool.api.summary()
    );
    // Typed once: the subagent's failure neither failed nor requeued it.
    assert_eq!(pool.deliveries("use a subagent for job SUBTASK-1"), 1);
    let d = pool.ok(&["describe", "task", "t-sub"]);
    assert!(!d.contains("usage limit:"), "requeued for a limit:\n{d}");
    // Yet the limit is the account's: the next request would be refused too.
    pool.wait_account("a", "Exhausted", |v| v["status"]["phase"] == "Exhausted");
}

#[test]
#[cfg_attr(
    not(claude_code),
    ignore = "needs Claude Code: npm ci --prefix tools/claude-code"
)]
fn a_task_that_ends_while_the_daemon_is_down_keeps_its_reply() {
    let claude = claude();
    let mut pool = Pool::new(claude);
    pool.apply(&pool.account_yaml("a", 10));
    pool.apply(&pool.session_yaml("r-0", Some("a"), &[KEY]));
    let d = pool.start_daemon();
    pool.wait_phase("r-0", "Idle");
    pool.api.set_reply("The answer is FORTY-TWO.");
    pool.api.hold();
    pool.apply(&pool.task_yaml("q", "what is the answer", ""));
    pool.wait_task_phase("q", "Running");
    // The daemon dies mid-turn; the turn ends with nobody to hear its
    // Stop hook.
    pool.signal_daemon(d, libc::SIGKILL);
    pool.api.release();
    // Over before the next daemon starts: the reply is in the transcript.
    common::wait_for("the reply in the transcript", LONG, || {
        let dir = std::fs::read_dir(pool.path("projects")).ok()?;
        dir.flatten()
            .flat_map(|d| std::fs::read_dir(d.path()).into_iter().flatten().flatten())
            .any(|f| std::fs::read_to_string(f.path()).is_ok_and(|t| t.contains("FORTY-TWO")))
            .then_some(())
    });
    pool.start_daemon();
    let v = pool.wait_task_phase("q", "Succeeded");
    assert_eq!(
        v["status"]["message"], "The answer is FORTY-TWO.",
        "the reply, read from the transcript"
    );
}

//! A session's current task is cleared when its task ends, however it
//! ends: by the agent's reply, by a failed turn, by a cancel, and while the
//! daemon was down. An idle session never shows a task in `get sessions`'
//! TASK column. Real Claude Code in real tmux, a fake API on 127.0.0.1,
//! the real daemon.

mod common;
use common::fake_api::{Failure, FakeApi};
use common::pool::{LONG, Pool, claude};

const KEY: (&str, &str) = (
    "ANTHROPIC_API_KEY",
    "sk-ant-api03-test-key-current-task-000000",
);

/// How many times the failing request is refused: Claude Code may retry it.
const FAILED_ASKS: usize = 20;

/// Waits until session `w` is idle with no current task, and checks that
/// `get sessions` shows none in its TASK column.
fn idle_without_a_task(pool: &Pool, after: &str) {
    pool.wait_session("w", &format!("idle without a task after {after}"), |v| {
        v["status"]["phase"] == "Idle" && v["status"]["currentTask"].is_null()
    });
    let table = pool.ok(&["get", "sessions"]);
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    let col = header
        .iter()
        .position(|h| *h == "TASK")
        .expect("a TASK column");
    let row: Vec<&str> = table
        .lines()
        .find(|l| l.starts_with("w "))
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(row[col], "-", "after {after}:\n{table}");
}

/// Waits until `task` runs on `w` and `w` says so.
fn running(pool: &Pool, task: &str) {
    pool.wait_task_phase(task, "Running");
    pool.wait_session("w", &format!("working on {task}"), |v| {
        v["status"]["currentTask"] == task
    });
}

#[test]
#[cfg_attr(
    not(claude_code),
    ignore = "needs Claude Code: npm ci --prefix tools/claude-code"
)]
fn the_current_task_is_cleared_however_the_task_ends() {
    let mut pool = Pool::new(claude());
    pool.apply(&pool.account_yaml("a", 10));
    pool.apply(&pool.session_yaml("w", Some("a"), &[KEY]));
    let d = pool.start_daemon();
    pool.wait_phase("w", "Idle");

    // 1. The agent's reply (its Stop hook).
    pool.apply(&pool.task_yaml("replied", "first: say hello", ""));
    pool.wait_task_phase("replied", "Succeeded");
    idle_without_a_task(&pool, "a reply");

    // 2. A failed turn, its last attempt.
    // Refused for good (not to be retried), however often it is asked.
    for _ in 0..FAILED_ASKS {
        pool.api.fail_matching(
            // The failing turn's own requests: its prompt is the only one
            // in the newest user message (a later turn's joins it to its
            // own; a `/model` typed before it comes first in it).
            |r| {
                r.last_user_text().is_some_and(|t| {
                    t.contains("second: this fails") && t.matches("⟦task").count() == 1
                })
            },
            Failure {
                status: 400,
                body: FakeApi::error_body("invalid_request_error", "this request is refused"),
                headers: vec![("x-should-retry".into(), "false".into())],
            },
        );
    }
    pool.apply(&pool.task_yaml("failed", "second: this fails", "  maxAttempts: 1\n"));
    let v = pool.wait_task_phase("failed", "Failed");
    assert!(
        v["status"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("the turn failed")),
        "{v}"
    );
    idle_without_a_task(&pool, "a failure");

    // 3. A turn that ends while the daemon is down: the next daemon
    // learns it from the agent's state and its transcript.
    pool.api.set_reply("The answer is FORTY-TWO.");
    pool.api.hold();
    pool.apply(&pool.task_yaml("away", "third: what is the answer", ""));
    running(&pool, "away");
    pool.signal_daemon(d, libc::SIGKILL);
    pool.api.release();
    common::wait_for("the reply in the transcript", LONG, || {
        let dir = std::fs::read_dir(pool.path("projects")).ok()?;
        dir.flatten()
            .flat_map(|d| std::fs::read_dir(d.path()).into_iter().flatten().flatten())
            .any(|f| std::fs::read_to_string(f.path()).is_ok_and(|t| t.contains("FORTY-TWO")))
            .then_some(())
    });
    pool.start_daemon();
    pool.wait_task_phase("away", "Succeeded");
    idle_without_a_task(&pool, "an end the daemon missed");

    // 4. A cancel.
    pool.api.hold();
    pool.apply(&pool.task_yaml("cancelled", "fourth: a very long job", ""));
    running(&pool, "cancelled");
    pool.ok(&["cancel", "task", "cancelled"]);
    pool.wait_task_phase("cancelled", "Cancelled");
    idle_without_a_task(&pool, "a cancel");
    pool.api.release();
}

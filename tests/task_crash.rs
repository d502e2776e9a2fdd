//! Exactly once through crashes: the daemon is killed with SIGKILL at
//! random points of dispatch, again and again, while real Claude Code
//! sessions work through a queue. No task may be lost, none typed twice.

mod common;
use common::pool::{Pool, claude};
use std::time::{Duration, Instant};

const KILLS: usize = 50;
const TASKS: usize = 60;

#[test]
#[cfg_attr(
    not(claude_code),
    ignore = "needs Claude Code: npm ci --prefix tools/claude-code"
)]
fn sigkill_at_random_points_loses_no_task_and_types_none_twice() {
    let claude = claude();
    let mut pool = Pool::new(claude);
    pool.apply(&pool.account_yaml("a", 10));
    for s in ["k-0", "k-1"] {
        pool.apply(&pool.session_yaml(
            s,
            Some("a"),
            &[(
                "ANTHROPIC_API_KEY",
                "sk-ant-api03-test-key-crash-00000000000",
            )],
        ));
    }
    let mut all = String::new();
    for i in 0..TASKS {
        all.push_str("---\n");
        all.push_str(&pool.task_yaml(
            &format!("job-{i:02}"),
            &format!("crash test job {i:02}"),
            "",
        ));
    }
    pool.apply(&all);
    // The API answers one reply at a time, paced, so dispatch is still
    // going on through all the kills.
    pool.api.hold();
    let pacing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let pacer = {
        let api_pacing = pacing.clone();
        let api = pool.api.handle();
        std::thread::spawn(move || {
            while api_pacing.load(std::sync::atomic::Ordering::Relaxed) {
                api.release_one();
                std::thread::sleep(Duration::from_millis(150));
            }
        })
    };
    // A cheap deterministic generator for the kill points.
    let mut seed: u64 = 0x9e3779b97f4a7c15;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..KILLS {
        let d = pool.start_daemon();
        // A random moment: while it starts, adopts, dispatches or confirms.
        let at = Duration::from_millis(150 + next() % 900);
        std::thread::sleep(at);
        pool.signal_daemon(d, libc::SIGKILL);
    }
    pacing.store(false, std::sync::atomic::Ordering::Relaxed);
    pacer.join().unwrap();
    pool.api.release();
    pool.start_daemon();
    let started = Instant::now();
    for i in 0..TASKS {
        let name = format!("job-{i:02}");
        let v = pool.wait_task_phase(&name, "Succeeded");
        assert!(v["status"]["attempts"].as_u64().unwrap() >= 1);
    }
    let took = started.elapsed();
    let mut twice = Vec::new();
    let mut lost = Vec::new();
    for i in 0..TASKS {
        let text = format!("crash test job {i:02}");
        let n = pool
            .api
            .main_requests()
            .iter()
            .filter(|r| r.last_user_text().is_some_and(|t| t.contains(&text)))
            .count();
        match n {
            0 => lost.push(text),
            1 => {}
            _ => twice.push((text, n)),
        }
    }
    for (text, _) in &twice {
        let name = format!("job-{}", &text[text.len() - 2..]);
        eprintln!("{}", pool.ok(&["describe", "task", &name]));
    }
    assert!(lost.is_empty(), "never reached the API: {lost:?}");
    assert!(twice.is_empty(), "typed more than once: {twice:?}");
    eprintln!(
        "{KILLS} SIGKILLs, {TASKS} tasks each delivered exactly once (drained in {took:?} after the last kill)"
    );
}

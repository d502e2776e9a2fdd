//! A simulated night: a pool of simulated agents on three accounts works
//! through a steady stream of tasks over several compressed 5-hour windows
//! (a window lasts WINDOW here). The accounts fill, drain, reset; sessions
//! move on and come back. Asserted: no task lost or typed twice, no swap
//! while another runs, no task typed into a draining account, failback at
//! most once per window per session and at least once, no account pushed
//! to its hard limit. The night is printed as a table and drawn as an SVG
//! chart (`CARGO_TARGET_TMPDIR/simulated-night.svg`; also to the path in
//! `SIMULATED_NIGHT_SVG` when set, as docs/simulated-night.svg was made).

mod common;
use common::chart::{self, Sample};
use common::daemon::Daemon;
use common::pool::SwapRecord;
use common::*;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

const ACCOUNTS: [&str; 3] = ["a", "b", "c"];
const SESSIONS: usize = 4;
/// A "5-hour" window of the simulated accounts.
const WINDOW: Duration = Duration::from_secs(24);
/// Tokens per window per account: thirty turns (eighteen before it
/// drains), so that the three accounts' supply is twice the stream's
/// demand even when a loaded machine lets a backlog build and then clears
/// it in a burst.
const BUDGET: u64 = 60_000;
const TOKENS_PER_TURN: u64 = 2_000;
/// Near its limit at 60 %: the turns under way when it drains (one per
/// session at most) stay within the budget.
const THRESHOLD: u8 = 60;
const TASKS: usize = 80;
/// The stream's pace: below the pool's supply, above one account's, so
/// accounts fill, drain and reset.
const TASK_EVERY: Duration = Duration::from_millis(1000);
/// How often the timeline looks at the store.
const SAMPLE_EVERY: Duration = Duration::from_millis(250);
/// A prompt typed this soon after its account turned NearLimit was on its
/// way already (the dispatcher's pass began before the change).
const IN_FLIGHT: Duration = Duration::from_millis(1500);

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn setup(env: &Env) {
    let work = env.path("work");
    std::fs::create_dir_all(&work).unwrap();
    env.write(
        "config/claude-failover/config.yaml",
        "resyncSeconds: 5\ndispatch:\n  cooldownSeconds: 0\nquota:\n  usageBaseUrl: http://127.0.0.1:9\n  turnWaitSeconds: 20\n  confirmSeconds: 30\n  strategy: headroom\n  failback:\n    cooldownSeconds: 5\n    marginPercent: 20\n",
    );
    let mut manifests = String::new();
    for (i, name) in ACCOUNTS.iter().enumerate() {
        let dir = env.path(&format!("accounts/{name}"));
        env.write(
            &format!("accounts/{name}/sim-budget.json"),
            &format!(
                r#"{{"fiveHourTokens": {BUDGET}, "windowSeconds": {}}}"#,
                WINDOW.as_secs()
            ),
        );
        env.write(
            &format!("accounts/{name}/.credentials.json"),
            &format!(
                r#"{{"claudeAiOauth": {{"accessToken": "sk-ant-oat01-night-{name}", "scopes": ["user:inference"], "subscriptionType": "max"}}}}"#
            ),
        );
        manifests.push_str(&format!(
            "---\n{HEAD}kind: Account\nmetadata: {{name: {name}}}\nspec:\n  configDir: {}\n  priority: {}\n  thresholds: {{fiveHour: {THRESHOLD}, sevenDay: 95}}\n",
            dir.display(),
            i * 10
        ));
    }
    for i in 0..SESSIONS {
        manifests.push_str(&format!(
            "---\n{HEAD}kind: Session\nmetadata: {{name: s{i}}}\nspec:\n  workdir: {}\n  agent:\n    command: {BIN}\n    args: [sim-agent]\n    env: {{SIM_AGENT_TURN_MS: \"300\", SIM_AGENT_TOKENS_PER_TURN: \"{TOKENS_PER_TURN}\", SIM_AGENT_STARTUP_MS: \"100\", SIM_AGENT_IDLE_NOTIFY_MS: \"0\"}}\n",
            work.display()
        ));
    }
    let f = env.write("pool.yaml", &manifests);
    env.ok(&["apply", "-f", f.to_str().unwrap()]);
}

fn task_yaml(i: usize) -> String {
    format!(
        "{HEAD}kind: Task\nmetadata: {{name: night-{i:03}}}\nspec:\n  prompt: \"night task {i:03}\"\n"
    )
}

/// Every prompt the simulated agents took, per account: (time ms, text).
fn prompts(env: &Env) -> HashMap<String, Vec<(u64, String)>> {
    ACCOUNTS
        .iter()
        .map(|a| {
            let text = std::fs::read_to_string(env.path(&format!("accounts/{a}/history.jsonl")))
                .unwrap_or_default();
            let lines = text
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .map(|v| {
                    (
                        v["timestamp"].as_u64().unwrap_or_default(),
                        v["display"].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect();
            (a.to_string(), lines)
        })
        .collect()
}

#[test]
fn a_night_of_windows_loses_nothing_and_never_flaps() {
    let env = Env::new();
    setup(&env);
    let t0 = now_ms();
    let start = Instant::now();
    let _d = Daemon::start(&env, &[]);
    let store = claude_failover::store::Store::open(env.store()).unwrap();

    // The timeline, sampled until the night ends.
    let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
    let over = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (samples, over, store) = (samples.clone(), over.clone(), env.store());
        std::thread::spawn(move || {
            let store = claude_failover::store::Store::open(store).unwrap();
            while !over.load(Ordering::Relaxed) {
                let s = chart::sample(&store, start, &ACCOUNTS);
                samples.lock().unwrap().push(s);
                std::thread::sleep(SAMPLE_EVERY);
            }
        })
    };
    // A steady stream of tasks.
    for i in 0..TASKS {
        env.run_stdin(&["apply", "-f", "-"], &task_yaml(i));
        std::thread::sleep(TASK_EVERY);
    }
    let deadline = Duration::from_secs(240);
    wait_for("every task of the night done", deadline, || {
        let tasks = store
            .api::<claude_failover::api::Task>(Some("default"))
            .list()
            .ok()?;
        let done = tasks
            .iter()
            .filter(|t| {
                t.status.as_ref().and_then(|s| s.phase)
                    == Some(claude_failover::api::TaskPhase::Succeeded)
            })
            .count();
        (done == TASKS).then_some(())
    });
    over.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    let samples = samples.lock().unwrap().clone();
    let swaps: Vec<SwapRecord> = common::pool::swaps_in(&env.store());

    // The night, for a person to look at.
    let table = chart::table(&samples, &swaps, &ACCOUNTS, t0, Duration::from_secs(2));
    eprintln!("{table}");
    let svg = chart::svg(&samples, &swaps, &ACCOUNTS, f64::from(THRESHOLD), t0);
    chart::save(
        &std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("simulated-night.svg"),
        &svg,
    );
    if let Ok(p) = std::env::var("SIMULATED_NIGHT_SVG") {
        chart::save(std::path::Path::new(&p), &svg);
    }

    // Within quota: the drain kept every account off its hard limit (where
    // a swap cuts the turns under way, and replays them).
    for (i, name) in ACCOUNTS.iter().enumerate() {
        assert!(
            samples.iter().all(|s| s.accounts[i].1 != "Exhausted"),
            "{name} hit its limit\n{table}"
        );
    }
    // No task lost, none typed twice.
    let taken = prompts(&env);
    for i in 0..TASKS {
        let want = format!("night task {i:03}");
        let n: usize = taken
            .values()
            .map(|v| v.iter().filter(|(_, p)| p.starts_with(&want)).count())
            .sum();
        if n != 1 {
            let story = env.ok(&["describe", "task", &format!("night-{i:03}")]);
            panic!("{want} typed {n} times\n{story}\n{table}");
        }
    }
    // One swap at a time: each starts after the one before ended.
    for pair in swaps.windows(2) {
        let ended = pair[0].finished_at.expect("every swap finished");
        assert!(
            pair[1].started_at >= ended,
            "swap {} began before swap {} ended\n{table}",
            pair[1].epoch,
            pair[0].epoch
        );
    }
    // Failback: it happened, and at most once per window per session.
    let night = start.elapsed();
    let windows = (night.as_secs() / WINDOW.as_secs()) as usize + 1;
    let mut back: HashMap<&str, usize> = HashMap::new();
    for w in swaps.iter().filter(|w| w.reason == "Failback") {
        for s in &w.sessions {
            *back.entry(s.as_str()).or_default() += 1;
        }
    }
    assert!(
        !back.is_empty(),
        "no failback in {windows} windows\n{table}"
    );
    for (s, n) in &back {
        assert!(
            *n <= windows,
            "{s} failed back {n} times in {windows} windows\n{table}"
        );
    }
    // No task typed into a draining account (one with somewhere to go).
    for (i, name) in ACCOUNTS.iter().enumerate() {
        for (at, prompt) in &taken[*name] {
            let t = Duration::from_millis(at.saturating_sub(t0));
            // Draining all through the span around it (the samples lag
            // the daemon by up to a few of their periods).
            let before: Vec<&Sample> = samples
                .iter()
                .filter(|s| s.t + IN_FLIGHT >= t && s.t <= t + 3 * SAMPLE_EVERY)
                .collect();
            let draining = before.len() >= 2
                && before
                    .iter()
                    .all(|s| s.accounts[i].1 == "NearLimit" && !s.accounts[i].2);
            assert!(
                !draining,
                "{prompt:?} typed into {name} at {t:?} while it drained\n{table}"
            );
        }
    }
    let used = ACCOUNTS.iter().filter(|a| !taken[**a].is_empty()).count();
    assert!(used >= 2, "the night stayed on one account\n{table}");
    eprintln!(
        "{TASKS} tasks over {windows} windows of {WINDOW:?}: {} swaps ({} failbacks)",
        swaps.len(),
        swaps.iter().filter(|w| w.reason == "Failback").count()
    );
}

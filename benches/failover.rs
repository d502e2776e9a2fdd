//! Failover figures, with the real Claude Code against the fake API:
//!
//! 1. the floor: one `--resume` launch to an idle prompt, by hand in tmux
//!    (no daemon), median of 3;
//! 2. a failover of 8 sessions, each with a conversation to resume: from
//!    the trigger (`claude-failover failover a --to b`) to all 8 Ready on b,
//!    resumed;
//! 3. from a `StopFailure` hook (`rate_limit`) reaching the daemon to the
//!    swap starting (its record's start), twice.
//!
//! Run: `cargo bench --bench failover` (prints its figures; asserts nothing).

#[path = "../tests/common/mod.rs"]
mod common;

use claude_failover::agent::screen::composer_text;
use claude_failover::tmux::{NewSession, Tmux};
use common::pool::{Pool, claude_bin};
use common::wait_for;
use serde_json::Value;
use std::time::{Duration, Instant, SystemTime};

const N: usize = 8;
const TOKENS: [&str; 3] = [
    "sk-ant-oat01-bench-account-a",
    "sk-ant-oat01-bench-account-b",
    "sk-ant-oat01-bench-account-c",
];

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn ms(d: Duration) -> String {
    format!("{:7.0} ms", d.as_secs_f64() * 1000.0)
}

fn on(v: &Value, account: &str) -> bool {
    v["status"]["account"] == account
        && v["status"]["phase"] == "Idle"
        && v["status"]["lastSwap"]["state"] == "Done"
}

/// CPU time (user + system) a process has used so far.
fn cpu_of(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name: utime and stime are the 12th and 13th.
    let f: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|i| f.get(*i)?.parse::<u64>().ok())
        .sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_millis(ticks * 1000 / hz)
}

/// Launch to idle prompt of `n` copies of `claude --resume ID` started at
/// once, each in its own tmux session (no daemon): until the last is idle;
/// and the CPU time the agents used to get there (all of them).
fn resume_floor(
    pool: &Pool,
    rt: &tokio::runtime::Runtime,
    id: &str,
    n: usize,
) -> (Duration, Duration) {
    let tmux = Tmux::new(pool.path("floor.sock"));
    let mut env = pool.agent_env();
    env.push((
        "CLAUDE_CONFIG_DIR".into(),
        pool.path("accounts/b").display().to_string(),
    ));
    let claude = pool.claude.display().to_string();
    // As the daemon launches it: bypass mode without its confirmation.
    let settings = pool.path("floor-settings.json");
    std::fs::write(&settings, r#"{"skipDangerousModePermissionPrompt": true}"#).unwrap();
    let argv = vec![
        claude,
        "--settings".into(),
        settings.display().to_string(),
        "--dangerously-skip-permissions".into(),
        "--resume".into(),
        id.into(),
    ];
    rt.block_on(async {
        let t = Instant::now();
        let mut panes = Vec::new();
        for i in 0..n {
            let pane = tmux
                .new_session(&NewSession {
                    name: &format!("floor-{i}"),
                    cwd: &pool.workdir(),
                    env: &env,
                    argv: &argv,
                    width: 200,
                    height: 50,
                })
                .await
                .unwrap();
            panes.push(pane);
        }
        let mut idle = vec![false; n];
        while idle.iter().any(|i| !i) {
            for (i, pane) in panes.iter().enumerate() {
                if idle[i] {
                    continue;
                }
                let screen = tmux.capture(&pane.id, false).await.unwrap();
                idle[i] = composer_text(&screen).is_some_and(|c| c.is_empty())
                    && screen.contains("probe turn");
            }
            assert!(t.elapsed() < Duration::from_secs(120), "floor never idle");
            // Each look is a tmux process: looking more often would take
            // the CPU the agents are starting with.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let took = t.elapsed();
        let cpu = panes.iter().map(|p| cpu_of(p.pid)).sum::<Duration>();
        for i in 0..n {
            tmux.kill_session(&format!("floor-{i}")).await.unwrap();
        }
        (took, cpu)
    })
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let claude = claude_bin().expect("Claude Code: npm ci --prefix tools/claude-code");
    let mut pool = Pool::new(claude);
    for (i, name) in ["a", "b", "c"].iter().enumerate() {
        pool.apply(&pool.account_with_token(name, i as i32 * 10, TOKENS[i]));
    }
    let names: Vec<String> = (0..N).map(|i| format!("s{i}")).collect();
    let mut all = String::new();
    for n in &names {
        all.push_str("---\n");
        all.push_str(&pool.session_yaml(n, None, &[]));
    }
    // A probe session gives the floor a conversation of its own.
    all.push_str("---\n");
    all.push_str(&pool.session_yaml("probe", Some("b"), &[]));
    pool.apply(&all);
    pool.start_daemon();
    for n in names.iter().chain(std::iter::once(&"probe".to_string())) {
        pool.wait_phase(n, "Idle");
    }
    // Every session has a conversation to resume.
    for n in &names {
        pool.type_prompt(n, &format!("bench turn of {n}"));
    }
    pool.type_prompt("probe", "probe turn");
    for n in names.iter().chain(std::iter::once(&"probe".to_string())) {
        pool.api.wait_for(
            |r| {
                r.iter()
                    .any(|q| q.is_main() && q.mentions(if n == "probe" { "probe turn" } else { n }))
            },
            Duration::from_secs(120),
        );
    }
    for n in names.iter().chain(std::iter::once(&"probe".to_string())) {
        pool.wait_phase(n, "Idle");
    }
    let probe_id = pool.session("probe").unwrap()["status"]["agentSessionId"]
        .as_str()
        .unwrap()
        .to_string();
    pool.apply(
        &pool
            .session_yaml("probe", Some("b"), &[])
            .replace("spec:\n", "spec:\n  suspend: true\n"),
    );
    pool.wait_phase("probe", "Stopped");

    // 1. The floor.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut floors: Vec<(Duration, Duration)> = (0..3)
        .map(|_| resume_floor(&pool, &rt, &probe_id, 1))
        .collect();
    floors.sort();
    let (floor, cpu_one) = floors[1];
    // What the machine itself takes to start N at once (no daemon).
    let (floor_n, cpu_n) = resume_floor(&pool, &rt, &probe_id, N);

    // 2. The failover of 8.
    let t = Instant::now();
    pool.ok(&["failover", "a", "--to", "b", "--no-wait"]);
    for n in &names {
        wait_for(&format!("{n} on b"), Duration::from_secs(180), || {
            pool.session(n).filter(|v| on(v, "b"))
        });
    }
    let failover = t.elapsed();
    let record = pool.swaps().into_iter().last().unwrap();
    let swap = Duration::from_millis(record.finished_at.unwrap() - record.started_at);

    // 4. The same 8 with warm standbys: each keeps an idle Claude Code
    //    under the next target (a, the preferred one); the move to it types
    //    `/resume` into them.
    let warm = warm_failover(&pool, &names);

    // 3. StopFailure to swap start: the account s0 runs on is told its
    //    limit is hit (twice: three accounts give two moves).
    let mut hook_to_swap = Vec::new();
    for _ in 0..2 {
        // Let the agents just relaunched finish starting (CPU-bound on two
        // cores): the figure is the daemon's reaction, not the queue for a core.
        std::thread::sleep(Duration::from_secs(10));
        let secret =
            std::fs::read_to_string(pool.path("state/sessions/default/s0/secret")).unwrap();
        let url = format!(
            "http://127.0.0.1:{}/v1/agents/default/s0/{}/hook",
            pool.port,
            secret.trim()
        );
        let body = serde_json::json!({
            "hook_event_name": "StopFailure",
            "error": "rate_limit",
            "session_id": pool.session("s0").unwrap()["status"]["agentSessionId"],
            "last_assistant_message": "You've hit your session limit",
        })
        .to_string();
        let before = pool.swaps().len();
        let sent = unix_ms();
        ureq::post(&url)
            .header("content-type", "application/json")
            .send(&body)
            .unwrap();
        let started = wait_for("the swap to start", Duration::from_secs(60), || {
            pool.swaps().into_iter().nth(before).map(|r| r.started_at)
        });
        hook_to_swap.push(Duration::from_millis(started.saturating_sub(sent)));
        let done = wait_for("the swap to end", Duration::from_secs(180), || {
            pool.swaps()
                .into_iter()
                .nth(before)
                .filter(|r| r.result != "Running")
        });
        let to = done.to.clone().expect("a target");
        for n in &names {
            wait_for(&format!("{n} on {to}"), Duration::from_secs(180), || {
                pool.session(n).filter(|v| on(v, &to))
            });
        }
    }

    if let Some(f) = std::env::var_os("FAILOVER_BENCH_DUMP") {
        std::fs::write(f, pool.daemon_log(0)).unwrap();
    }
    if std::env::var_os("FAILOVER_BENCH_LOG").is_some() {
        for l in pool.daemon_log(0).lines().filter(|l| {
            l.contains("StopFailure") || l.contains("Exhausted") || l.contains("FailoverStarted")
        }) {
            eprintln!("{l}");
        }
    }
    println!(
        "failover benchmark ({} cores, Claude Code against the fake API)",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    println!(
        "  floor: one --resume launch to idle        {} (median of 3: {})",
        ms(floor),
        floors
            .iter()
            .map(|(d, _)| ms(*d).trim().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "  failover of {N} sessions, trigger to all Ready on the target  {}  ({:.2}x the floor)",
        ms(failover),
        failover.as_secs_f64() / floor.as_secs_f64()
    );
    println!(
        "  {N} --resume launches at once, by hand, to all idle   {}  (the machine's own floor for {N})",
        ms(floor_n)
    );
    println!(
        "  daemon overhead over that floor                    {}",
        ms(failover.saturating_sub(floor_n))
    );
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    println!(
        "  CPU of one --resume start-up (user+system)         {}; of {N} at once {}",
        ms(cpu_one),
        ms(cpu_n)
    );
    println!(
        "  so {N} start-ups need at least {} of {cores} cores' time ({:.2}x the floor)",
        ms(cpu_n / cores as u32),
        (cpu_n / cores as u32).as_secs_f64() / floor.as_secs_f64()
    );
    println!(
        "  the swap itself (its record: lease to release)    {}",
        ms(swap)
    );
    println!(
        "  with warm standbys: failover of {N}, trigger to all Ready on the target  {}  ({:.2}x the floor; relaunch path {:.2}x)",
        ms(warm.all),
        warm.all.as_secs_f64() / floor.as_secs_f64(),
        failover.as_secs_f64() / floor.as_secs_f64()
    );
    println!(
        "  with warm standbys: each session's pause, trigger to its agent confirmed  median {}, max {}",
        ms(warm.pause_median),
        ms(warm.pause_max)
    );
    println!(
        "  with warm standbys: of which the command {}, trigger to the swap's start {}, to the last confirmation {}",
        ms(warm.cli).trim(),
        ms(warm.to_swap).trim(),
        ms(warm.last_confirmed).trim()
    );
    println!(
        "  with warm standbys: the takeovers' own CPU {}, so at least {} of {cores} cores' time ({:.2}x the floor)",
        ms(warm.takeover_cpu).trim(),
        ms(warm.takeover_cpu / cores as u32).trim(),
        (warm.takeover_cpu / cores as u32).as_secs_f64() / floor.as_secs_f64()
    );
    println!(
        "  with warm standbys: moves through a standby {}/{N}",
        warm.took_over
    );
    println!(
        "  idle standby, each: CPU {:.2} % of a core over {} s, RSS {} MiB (mean of {N})",
        warm.idle_cpu_percent,
        IDLE_WINDOW.as_secs(),
        warm.rss_mib
    );
    for (i, d) in hook_to_swap.iter().enumerate() {
        println!(
            "  StopFailure hook to swap start, sample {}          {}",
            i + 1,
            ms(*d)
        );
    }
}

/// How long the idle standbys are watched for their cost.
const IDLE_WINDOW: Duration = Duration::from_secs(20);

struct Warm {
    all: Duration,
    /// The `failover --no-wait` command, start to exit.
    cli: Duration,
    /// Trigger to the swap's start (its record).
    to_swap: Duration,
    /// Trigger to the last agent confirmed (the daemon's own stamp).
    last_confirmed: Duration,
    /// CPU (user + system) the standbys used from the trigger to all Ready.
    takeover_cpu: Duration,
    pause_median: Duration,
    pause_max: Duration,
    took_over: usize,
    idle_cpu_percent: f64,
    rss_mib: u64,
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The sessions (idle, on one account) get warm standbys; their idle cost
/// is watched; then they move to the standbys' account.
fn warm_failover(pool: &Pool, names: &[String]) -> Warm {
    let mut all = String::new();
    for n in names {
        all.push_str("---\n");
        all.push_str(&pool.session_yaml(n, None, &[]));
        all.push_str("  standby:\n    mode: warm\n");
    }
    pool.apply(&all);
    let ready: Vec<Value> = names
        .iter()
        .map(|n| {
            wait_for(&format!("{n}'s standby"), Duration::from_secs(180), || {
                pool.session(n)
                    .filter(|v| v["status"]["standby"]["ready"] == true)
            })
        })
        .collect();
    let from = ready[0]["status"]["account"].as_str().unwrap().to_string();
    let to = ready[0]["status"]["standby"]["account"]
        .as_str()
        .unwrap()
        .to_string();
    let pids: Vec<u32> = ready
        .iter()
        .map(|v| v["status"]["standby"]["pid"].as_u64().unwrap() as u32)
        .collect();
    // Let the last start-ups settle, then watch them idle.
    std::thread::sleep(Duration::from_secs(5));
    let cpu0: Duration = pids.iter().map(|p| cpu_of(*p)).sum();
    std::thread::sleep(IDLE_WINDOW);
    let cpu = pids.iter().map(|p| cpu_of(*p)).sum::<Duration>() - cpu0;
    let idle_cpu_percent =
        cpu.as_secs_f64() / IDLE_WINDOW.as_secs_f64() / pids.len() as f64 * 100.0;
    let rss_mib = pids.iter().map(|p| rss_kib(*p)).sum::<u64>() / pids.len() as u64 / 1024;

    let cpu_before: Duration = pids.iter().map(|p| cpu_of(*p)).sum();
    let t = Instant::now();
    let started = SystemTime::now();
    pool.ok(&["failover", &from, "--to", &to, "--no-wait"]);
    let cli = t.elapsed();
    let mut pauses = Vec::new();
    let mut took_over = 0;
    for n in names {
        let v = wait_for(&format!("{n} on {to}"), Duration::from_secs(180), || {
            pool.session(n).filter(|v| on(v, &to))
        });
        let confirmed: k8s_openapi::jiff::Timestamp = v["status"]["launch"]["confirmedAt"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        let at = SystemTime::from(confirmed);
        pauses.push(at.duration_since(started).unwrap_or_default());
        took_over += usize::from(v["status"]["launch"]["takeover"] == true);
    }
    let all = t.elapsed();
    // What the eight takeovers cost the standbys themselves (now the agents).
    let takeover_cpu = pids.iter().map(|p| cpu_of(*p)).sum::<Duration>() - cpu_before;
    let record = pool.swaps().into_iter().last().unwrap();
    let since = |ms: u64| {
        (SystemTime::UNIX_EPOCH + Duration::from_millis(ms))
            .duration_since(started)
            .unwrap_or_default()
    };
    let to_swap = since(record.started_at);
    if std::env::var_os("FAILOVER_BENCH_LOG").is_some() {
        let stamp = k8s_openapi::jiff::Timestamp::try_from(started).unwrap();
        for l in pool.daemon_log(0).lines().filter(|l| {
            l.get(..27).is_some_and(|t| t >= stamp.to_string().as_str())
                && ["Swapping", "Stopped", "TookOver", "Swapped", "lease"]
                    .iter()
                    .any(|w| l.contains(w))
        }) {
            eprintln!("{}", l.get(..200).unwrap_or(l));
        }
    }
    pauses.sort();
    Warm {
        all,
        cli,
        to_swap,
        last_confirmed: *pauses.last().unwrap(),
        takeover_cpu,
        pause_median: pauses[pauses.len() / 2],
        pause_max: *pauses.last().unwrap(),
        took_over,
        idle_cpu_percent,
        rss_mib,
    }
}

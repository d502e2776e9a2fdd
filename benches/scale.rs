//! Scale benchmark: one daemon with pools of 50, 200 and 500 simulated
//! sessions and 20,000 queued tasks.
//!
//! For each pool size, in a fresh store: the sessions are applied and
//! awaited Ready; once the daemon's CPU no longer falls from one 5 s
//! sample to the next (the start-up's tail), it is measured over a quiet
//! window (idle CPU per session); then 20,000 tasks are applied and, over a window of
//! dispatching, the tasks confirmed (`claude_failover_dispatch_latency_
//! seconds_count`) and the daemon's CPU give tasks per second and CPU per
//! task; the daemon's RSS closes the round. The figures of 200 and 500 are
//! printed as ratios to those of 50 in the same run.
//!
//! Run: `cargo bench --bench scale` (prints its figures; asserts nothing;
//! `SCALE_POOLS=50,200` to choose sizes). Needs tmux; the agents are the
//! simulated Claude Code (`claude-failover sim-agent`).

use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_claude-failover");
const TASKS: usize = 20_000;
/// The quiet window over which idle CPU is measured: ten resyncs of the
/// daemon's 30 s, the longest an idle session goes without a full look
/// (`controller/session/quiet.rs`), so each session's look is counted.
const IDLE_WINDOW: Duration = Duration::from_secs(300);
/// The window over which dispatching is measured.
const BUSY_WINDOW: Duration = Duration::from_secs(60);
/// Let the apply settle before the busy window.
const SETTLE: Duration = Duration::from_secs(5);
/// Longest wait for every session's first task (see [`round`]).
const FIRST_TASKS_LIMIT: Duration = Duration::from_secs(600);
/// After the start-up, the daemon's CPU is sampled over windows this long
/// until it stops falling (the tail of 500 start-ups lasts a while).
const SETTLE_SAMPLE: Duration = Duration::from_secs(5);
/// Longest wait for the start-up's tail to end.
const SETTLE_LIMIT: Duration = Duration::from_secs(120);

struct Daemon {
    child: Child,
    port: u16,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_daemon(dir: &Path) -> Daemon {
    let port = free_port();
    std::fs::write(
        dir.join("config.yaml"),
        format!(
            "store: {d}/store\nstateDir: {d}/state\nlisten: 127.0.0.1:{port}\ntmuxSocket: {d}/tmux.sock\ntranscriptsDir: {d}/projects\nresyncSeconds: 30\nlog:\n  level: warn\n",
            d = dir.display()
        ),
    )
    .unwrap();
    let child = Command::new(BIN)
        .arg("--config")
        .arg(dir.join("config.yaml"))
        .arg("run")
        .env_remove("TMUX")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("daemon.log")).unwrap())
        .spawn()
        .unwrap();
    Daemon { child, port }
}

fn apply(dir: &Path, yaml: &str) {
    let mut c = Command::new(BIN)
        .arg("--config")
        .arg(dir.join("config.yaml"))
        .args(["apply", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(yaml.as_bytes()).unwrap();
    assert!(c.wait().unwrap().success(), "apply failed");
}

/// One `curl`-free scrape of `/metrics`: the value of `series`.
fn metric(port: u16, series: &str) -> f64 {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "GET /metrics HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n").unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let f: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    ticks as f64 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < limit, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits until the daemon's CPU over [`SETTLE_SAMPLE`] no longer falls
/// (by a fifth) from one sample to the next, or [`SETTLE_LIMIT`].
fn settle(pid: u32) {
    let t = Instant::now();
    let sample = || {
        let c0 = cpu_seconds(pid);
        std::thread::sleep(SETTLE_SAMPLE);
        cpu_seconds(pid) - c0
    };
    let mut last = sample();
    while t.elapsed() < SETTLE_LIMIT {
        let now = sample();
        if now >= last * 0.8 {
            return;
        }
        last = now;
    }
}

struct Round {
    sessions: usize,
    all_ready: Duration,
    idle_cpu_per_session: f64,
    tasks_per_s: f64,
    cpu_ms_per_task: f64,
    rss_mib: f64,
}

/// The Sessions and their Account, logged in (a credentials file in its
/// config dir: an Account without one is Unavailable and no agent starts).
fn sessions_yaml(dir: &Path, n: usize) -> String {
    let conf = dir.join("account-a");
    std::fs::create_dir_all(&conf).unwrap();
    std::fs::write(
        conf.join(".credentials.json"),
        r#"{"claudeAiOauth": {"accessToken": "sk-ant-oat01-bench-scale-a", "scopes": ["user:inference"], "subscriptionType": "max"}}"#,
    )
    .unwrap();
    let mut all = format!(
        "apiVersion: claude-failover.io/v1alpha1\nkind: Account\nmetadata:\n  name: a\nspec:\n  configDir: {}\n",
        dir.join("account-a").display()
    );
    for i in 0..n {
        all.push_str(&format!(
            "---\napiVersion: claude-failover.io/v1alpha1\nkind: Session\nmetadata:\n  name: s{i}\nspec:\n  workdir: {}\n  account: a\n  agent:\n    command: {BIN}\n    args: [sim-agent]\n    env:\n      SIM_AGENT_STARTUP_MS: \"50\"\n      SIM_AGENT_TURN_MS: \"300\"\n      SIM_AGENT_IDLE_NOTIFY_MS: \"0\"\n",
            dir.join("work").display()
        ));
    }
    all
}

fn tasks_yaml() -> String {
    let mut all = String::new();
    for i in 0..TASKS {
        all.push_str(&format!(
            "---\napiVersion: claude-failover.io/v1alpha1\nkind: Task\nmetadata:\n  name: t{i}\nspec:\n  prompt: scale task {i}\n  model: sonnet\n"
        ));
    }
    all
}

fn ready_count(dir: &Path, n: usize) -> usize {
    let out = Command::new(BIN)
        .arg("--config")
        .arg(dir.join("config.yaml"))
        .args(["get", "sessions", "-o", "json"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let ready = v["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter(|s| {
                    s["status"]["conditions"].as_array().is_some_and(|c| {
                        c.iter()
                            .any(|c| c["type"] == "Ready" && c["status"] == "True")
                    })
                })
                .count()
        })
        .unwrap_or(0);
    ready.min(n)
}

fn round(n: usize) -> Round {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::create_dir_all(dir.join("work")).unwrap();
    let daemon = start_daemon(dir);
    let pid = daemon.child.id();
    let t = Instant::now();
    apply(dir, &sessions_yaml(dir, n));
    wait_until("every session Ready", Duration::from_secs(900), || {
        ready_count(dir, n) == n
    });
    let all_ready = t.elapsed();
    settle(pid);
    let c0 = cpu_seconds(pid);
    let t0 = Instant::now();
    std::thread::sleep(IDLE_WINDOW);
    let idle = (cpu_seconds(pid) - c0) / t0.elapsed().as_secs_f64() * 100.0;
    apply(dir, &tasks_yaml());
    std::thread::sleep(SETTLE);
    let confirmed = "claude_failover_dispatch_latency_seconds_count";
    // The busy window measures the steady state: it starts once as many
    // tasks were confirmed as there are sessions. A session's first task
    // carries a one-off `/model` switch (the tasks ask for sonnet), so a
    // window that began at once would count 500 switches at 500 against
    // 50 at 50.
    wait_until("a task for each session", FIRST_TASKS_LIMIT, || {
        metric(daemon.port, confirmed) >= n as f64
    });
    let (d0, c0, t0) = (
        metric(daemon.port, confirmed),
        cpu_seconds(pid),
        Instant::now(),
    );
    std::thread::sleep(BUSY_WINDOW);
    let (d1, c1) = (metric(daemon.port, confirmed), cpu_seconds(pid));
    let secs = t0.elapsed().as_secs_f64();
    let dispatched = (d1 - d0).max(1.0);
    let r = Round {
        sessions: n,
        all_ready,
        idle_cpu_per_session: idle / n as f64,
        tasks_per_s: dispatched / secs,
        cpu_ms_per_task: (c1 - c0) * 1000.0 / dispatched,
        rss_mib: rss_mib(pid),
    };
    drop(daemon);
    let _ = Command::new("tmux")
        .arg("-S")
        .arg(dir.join("tmux.sock"))
        .arg("kill-server")
        .env_remove("TMUX")
        .status();
    r
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let pools: Vec<usize> = std::env::var("SCALE_POOLS")
        .ok()
        .map(|v| v.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![50, 200, 500]);
    let rounds: Vec<Round> = pools.iter().map(|n| round(*n)).collect();
    let base = &rounds[0];
    println!(
        "scale benchmark ({} cores, {TASKS} queued tasks)",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    println!(
        "{:>8} {:>12} {:>14} {:>10} {:>14} {:>9}",
        "sessions", "all Ready", "idle %/sess", "tasks/s", "CPU ms/task", "RSS MiB"
    );
    for r in &rounds {
        println!(
            "{:>8} {:>11.1}s {:>8.4} ({:.2}x) {:>10.1} {:>8.2} ({:.2}x) {:>9.1}",
            r.sessions,
            r.all_ready.as_secs_f64(),
            r.idle_cpu_per_session,
            r.idle_cpu_per_session / base.idle_cpu_per_session.max(1e-9),
            r.tasks_per_s,
            r.cpu_ms_per_task,
            r.cpu_ms_per_task / base.cpu_ms_per_task.max(1e-9),
            r.rss_mib
        );
    }
    if let Some(last) = rounds.last() {
        println!(
            "{} idle sessions: the daemon takes {:.2} % of a core",
            last.sessions,
            last.idle_cpu_per_session * last.sessions as f64
        );
    }
}

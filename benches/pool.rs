//! Pool benchmark: 100 simulated sessions as one SessionPool scaled from 0
//! to 100, against 100 separate Session objects applied at once, in the
//! same run.
//!
//! Each round starts a daemon on a fresh store with one account and waits
//! until the account controller has checked it. Separate: the 100
//! Sessions are applied in one `apply` and timed until every one is Ready
//! (its `Ready` condition in the store). Pool: a SessionPool of 0 replicas
//! is applied and awaited, then `scale sessionpool --replicas 100` is timed
//! the same way. Then, once no Session has changed for 5 s, the daemon's
//! CPU over a quiet minute (`/proc/PID/stat`) and its RSS. Rounds alternate
//! (separate, pool, separate, ...) so a machine that gets busier drifts
//! both alike; the medians are printed with the pool's ratio to the
//! separate sessions' (target: ≤ 1, no slower and no costlier).
//!
//! Run: `cargo bench --bench pool` (prints its figures; asserts nothing;
//! `POOL_BENCH_ROUNDS=N` rounds of each, default 3; `POOL_BENCH_SIZE`,
//! default 100). Needs tmux; the agents are the simulated Claude Code
//! (`claude-failover sim-agent`).

use claude_failover::api::Session;
use claude_failover::store::Store;
use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_claude-failover");
const HEAD: &str = "apiVersion: claude-failover.io/v1alpha1\n";
/// The quiet window over which idle CPU is measured (two resyncs).
const IDLE_WINDOW: Duration = Duration::from_secs(60);
/// Before the window: no Session changed for this long (the last
/// start-ups and their first status writes are over).
const QUIET: Duration = Duration::from_secs(5);
/// How often the store is looked at while waiting.
const POLL: Duration = Duration::from_millis(50);
/// Longest wait for anything.
const LIMIT: Duration = Duration::from_secs(600);

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

fn start_daemon(dir: &Path) -> Daemon {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    std::fs::write(
        dir.join("config.yaml"),
        format!(
            "store: {d}/store\nstateDir: {d}/state\nlisten: 127.0.0.1:{port}\ntmuxSocket: {d}/tmux.sock\ntranscriptsDir: {d}/projects\nresyncSeconds: 30\nquota:\n  usageBaseUrl: http://127.0.0.1:9\nlog:\n  level: warn\n",
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

/// Per controller: reconcile passes and their seconds, from `/metrics`.
type Passes = std::collections::BTreeMap<String, (f64, f64)>;

fn passes(port: u16) -> Passes {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "GET /metrics HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n").unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    let mut out = Passes::new();
    for l in body.lines() {
        for (family, count) in [
            ("claude_failover_reconciles_total{controller=\"", true),
            (
                "claude_failover_reconcile_duration_seconds_sum{controller=\"",
                false,
            ),
        ] {
            let Some(rest) = l.strip_prefix(family) else {
                continue;
            };
            let Some((name, value)) = rest.split_once("\"} ") else {
                continue;
            };
            let v: f64 = value.trim().parse().unwrap_or(0.0);
            let e = out.entry(name.to_string()).or_default();
            if count { e.0 = v } else { e.1 = v }
        }
    }
    out
}

/// What happened between two scrapes, as `controller passes/seconds`.
fn diff(a: &Passes, b: &Passes) -> String {
    b.iter()
        .filter_map(|(k, (n, secs))| {
            let (n0, s0) = a.get(k).copied().unwrap_or_default();
            (n - n0 > 0.0).then(|| format!("{k} {}/{:.2}s", n - n0, secs - s0))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn cli(dir: &Path, args: &[&str], stdin: Option<&str>) {
    let mut c = Command::new(BIN)
        .arg("--config")
        .arg(dir.join("config.yaml"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut input = c.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).unwrap();
    }
    drop(input);
    assert!(
        c.wait().unwrap().success(),
        "claude-failover {args:?} failed"
    );
}

fn apply(dir: &Path, yaml: &str) {
    cli(dir, &["apply", "-f", "-"], Some(yaml));
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

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < LIMIT, "timed out: {what}");
        std::thread::sleep(POLL);
    }
}

/// The agent every session runs: the simulated Claude Code.
fn agent() -> String {
    format!(
        "agent:\n  command: {BIN}\n  args: [sim-agent]\n  env:\n    SIM_AGENT_STARTUP_MS: \"50\"\n    SIM_AGENT_TURN_MS: \"300\"\n    SIM_AGENT_IDLE_NOTIFY_MS: \"0\"\n"
    )
}

fn indent(text: &str, by: usize) -> String {
    text.lines()
        .map(|l| format!("{}{l}\n", " ".repeat(by)))
        .collect()
}

fn account_yaml(dir: &Path) -> String {
    let conf = dir.join("account-a");
    std::fs::create_dir_all(&conf).unwrap();
    std::fs::write(
        conf.join(".credentials.json"),
        r#"{"claudeAiOauth": {"accessToken": "sk-ant-oat01-bench-pool-a", "scopes": ["user:inference"], "subscriptionType": "max"}}"#,
    )
    .unwrap();
    format!(
        "{HEAD}kind: Account\nmetadata:\n  name: a\nspec:\n  configDir: {}\n",
        conf.display()
    )
}

fn sessions_yaml(dir: &Path, n: usize) -> String {
    (0..n)
        .map(|i| {
            format!(
                "---\n{HEAD}kind: Session\nmetadata:\n  name: s-{i}\nspec:\n  workdir: {}\n  account: a\n{}",
                dir.join("work").display(),
                indent(&agent(), 2)
            )
        })
        .collect()
}

fn pool_yaml(dir: &Path, replicas: usize) -> String {
    format!(
        "{HEAD}kind: SessionPool\nmetadata:\n  name: s\nspec:\n  replicas: {replicas}\n  template:\n    spec:\n      workdir: {}\n      account: a\n{}",
        dir.join("work").display(),
        indent(&agent(), 6)
    )
}

/// How many Sessions have their `Ready` condition True, read from the
/// store the daemon writes.
fn ready(store: &Store) -> usize {
    let Ok(all) = store.api::<Session>(Some("default")).list() else {
        return 0;
    };
    all.iter()
        .filter(|s| {
            s.status.as_ref().is_some_and(|st| {
                st.conditions
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
            })
        })
        .count()
}

/// Restarts and launches of every Session (a sound round has none but
/// the first launches).
fn launches(store: &Store) -> (u32, u32) {
    let all = store
        .api::<Session>(Some("default"))
        .list()
        .unwrap_or_default();
    all.iter()
        .filter_map(|s| s.status.as_ref())
        .fold((0, 0), |(r, l), st| {
            (r + st.restarts.unwrap_or(0), l + st.launches.unwrap_or(0))
        })
}

/// Waits until no Session has changed (its resourceVersion) for [`QUIET`].
fn settle(store: &Store) {
    let versions = || -> Vec<Option<String>> {
        let all = store
            .api::<Session>(Some("default"))
            .list()
            .unwrap_or_default();
        all.into_iter()
            .map(|s| s.metadata.resource_version)
            .collect()
    };
    let start = Instant::now();
    let (mut last, mut since) = (versions(), start);
    while since.elapsed() < QUIET {
        assert!(start.elapsed() < LIMIT, "the sessions never settled");
        std::thread::sleep(POLL * 10);
        let now = versions();
        if now != last {
            (last, since) = (now, Instant::now());
        }
    }
}

fn account_checked(store: &Store) -> bool {
    store
        .api::<claude_failover::api::Account>(Some("default"))
        .get("a")
        .ok()
        .flatten()
        .is_some_and(|a| a.status.and_then(|s| s.phase).is_some())
}

#[derive(Clone, Copy, PartialEq)]
enum Shape {
    Separate,
    Pool,
}

struct Round {
    all_ready: Duration,
    idle_cpu: f64,
    rss: f64,
    /// Reconcile passes until all were Ready, and in the idle window.
    scaling: String,
    idle: String,
    /// (restarts, launches) of all the Sessions at the end.
    launches: (u32, u32),
    /// The daemon's first warnings.
    warnings: Vec<String>,
}

fn round(shape: Shape, n: usize) -> Round {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::create_dir_all(dir.join("work")).unwrap();
    let daemon = start_daemon(dir);
    let pid = daemon.child.id();
    apply(dir, &account_yaml(dir));
    let store = Store::open(dir.join("store")).unwrap();
    wait_until("the account checked", || account_checked(&store));
    if shape == Shape::Pool {
        apply(dir, &pool_yaml(dir, 0));
        wait_until("the empty pool seen", || {
            store
                .api::<claude_failover::api::SessionPool>(Some("default"))
                .get("s")
                .ok()
                .flatten()
                .is_some_and(|p| p.status.is_some_and(|s| !s.conditions.is_empty()))
        });
    }
    let p0 = passes(daemon.port);
    let t = Instant::now();
    match shape {
        Shape::Separate => apply(dir, &sessions_yaml(dir, n)),
        Shape::Pool => cli(
            dir,
            &["scale", "sessionpool", "s", "--replicas", &n.to_string()],
            None,
        ),
    }
    wait_until("every session Ready", || ready(&store) >= n);
    let all_ready = t.elapsed();
    let p1 = passes(daemon.port);
    settle(&store);
    let (c0, t0, p2) = (cpu_seconds(pid), Instant::now(), passes(daemon.port));
    std::thread::sleep(IDLE_WINDOW);
    let idle_cpu = (cpu_seconds(pid) - c0) / t0.elapsed().as_secs_f64() * 100.0;
    let r = Round {
        all_ready,
        idle_cpu,
        rss: rss_mib(pid),
        scaling: diff(&p0, &p1),
        idle: diff(&p2, &passes(daemon.port)),
        launches: launches(&store),
        warnings: std::fs::read_to_string(dir.join("daemon.log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("WARN"))
            .take(3)
            .map(str::to_string)
            .collect(),
    };
    drop(daemon);
    let _ = Command::new("tmux")
        .arg("-S")
        .arg(dir.join("tmux.sock"))
        .arg("kill-server")
        .env_remove("TMUX")
        .stderr(Stdio::null())
        .status();
    r
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let env = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let (rounds, n) = (
        env("POOL_BENCH_ROUNDS", 3).max(1),
        env("POOL_BENCH_SIZE", 100),
    );
    let (mut sep, mut pool) = (Vec::new(), Vec::new());
    for i in 0..rounds {
        for shape in [Shape::Separate, Shape::Pool] {
            let r = round(shape, n);
            let name = if shape == Shape::Pool {
                "pool"
            } else {
                "separate"
            };
            eprintln!(
                "round {}: {name:>8}: all Ready {:.2}s, idle CPU {:.2} %, RSS {:.1} MiB\n  passes until Ready: {}\n  passes while idle: {}\n  restarts {}, launches {}{}",
                i + 1,
                r.all_ready.as_secs_f64(),
                r.idle_cpu,
                r.rss,
                r.scaling,
                r.idle,
                r.launches.0,
                r.launches.1,
                r.warnings
                    .iter()
                    .map(|w| format!("\n  {w}"))
                    .collect::<String>()
            );
            match shape {
                Shape::Separate => sep.push(r),
                Shape::Pool => pool.push(r),
            }
        }
    }
    let med = |v: &[Round], f: fn(&Round) -> f64| median(v.iter().map(f).collect());
    let ready = |r: &Round| r.all_ready.as_secs_f64();
    let cpu = |r: &Round| r.idle_cpu;
    let rss = |r: &Round| r.rss;
    println!(
        "pool benchmark: {n} simulated sessions, median of {rounds} alternating rounds ({} cores)",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    println!(
        "{:<34} {:>10} {:>16} {:>9}",
        "", "all Ready", "idle CPU (core)", "RSS MiB"
    );
    for (what, v) in [
        (format!("{n} separate Sessions, one apply"), &sep),
        (format!("SessionPool scaled 0 → {n}"), &pool),
    ] {
        println!(
            "{what:<34} {:>9.2}s {:>15.2}% {:>9.1}",
            med(v, ready),
            med(v, cpu),
            med(v, rss)
        );
    }
    println!(
        "pool / separate: all Ready {:.2}x, idle CPU {:.2}x, RSS {:.2}x",
        med(&pool, ready) / med(&sep, ready).max(1e-9),
        med(&pool, cpu) / med(&sep, cpu).max(1e-9),
        med(&pool, rss) / med(&sep, rss).max(1e-9)
    );
}

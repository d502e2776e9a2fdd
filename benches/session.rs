//! Session benchmark.
//!
//! 1. Session applied → Ready, through the daemon, next to the floor measured
//!    in the same run: the real Claude Code launched straight into tmux
//!    (same binary, same seeded config, same fake API) until its prompt shows.
//! 2. The daemon's CPU and memory with 50 idle simulated sessions.
//!
//! Run: `cargo bench --bench session` (prints its figures; asserts nothing).
//! Needs tmux and Claude Code (tools/claude-code, or CLAUDE_BIN).

#[path = "../tests/common/fake_api.rs"]
#[allow(dead_code)]
mod fake_api;

use claude_failover::agent::screen::{Screen, classify};
use claude_failover::api::{Kind, ObjectKey};
use claude_failover::store::Store;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_claude-failover");
const ROUNDS: usize = 7;
const IDLE_SESSIONS: usize = 50;

fn claude_bin() -> PathBuf {
    std::env::var_os("CLAUDE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tools/claude-code/node_modules/@anthropic-ai/claude-code-linux-x64/claude")
        })
}

fn offline_env(api: &str) -> Vec<(String, String)> {
    [
        ("ANTHROPIC_BASE_URL", api),
        (
            "ANTHROPIC_API_KEY",
            "sk-ant-api03-bench-key-0000000000000000",
        ),
        ("DISABLE_TELEMETRY", "1"),
        ("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1"),
        ("DISABLE_AUTOUPDATER", "1"),
        ("DISABLE_ERROR_REPORTING", "1"),
        ("CLAUDE_CODE_DISABLE_OFFICIAL_MARKETPLACE_AUTOINSTALL", "1"),
        ("IS_SANDBOX", "1"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

fn tmux(socket: &Path, args: &[&str]) -> String {
    let out = Command::new("tmux")
        .arg("-S")
        .arg(socket)
        .args(args)
        .env_remove("TMUX")
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:7.1} ms", d.as_secs_f64() * 1000.0)
}

/// Claude Code alone: tmux new-session → its idle prompt on screen.
fn floor_launch(dir: &Path, api: &str, claude: &Path) -> Duration {
    let socket = dir.join("floor.sock");
    let config = dir.join("floor-account");
    let work = std::fs::canonicalize(dir.join("work")).unwrap();
    claude_failover::agent::seed::seed_account(
        &config,
        &claude_failover::agent::seed::Seed {
            version: "2.1.197",
            workdir: &work,
            also_trusted: &[],
            api_key: Some("sk-ant-api03-bench-key-0000000000000000"),
            shared_projects: &dir.join("floor-projects"),
        },
    )
    .unwrap();
    let settings = dir.join("floor-settings.json");
    std::fs::write(&settings, r#"{"skipDangerousModePermissionPrompt": true}"#).unwrap();
    let mut samples = Vec::new();
    for i in 0..ROUNDS {
        let id = uuid::Uuid::new_v4().to_string();
        let mut args: Vec<String> = vec![
            "new-session".into(),
            "-d".into(),
            "-s".into(),
            format!("f{i}"),
            "-c".into(),
            work.display().to_string(),
            "-x".into(),
            "200".into(),
            "-y".into(),
            "50".into(),
        ];
        for (k, v) in offline_env(api) {
            args.push("-e".into());
            args.push(format!("{k}={v}"));
        }
        args.push("-e".into());
        args.push(format!("CLAUDE_CONFIG_DIR={}", config.display()));
        args.push("--".into());
        for a in [
            claude.display().to_string(),
            "--settings".into(),
            settings.display().to_string(),
            "--session-id".into(),
            id,
            "--dangerously-skip-permissions".into(),
        ] {
            args.push(a);
        }
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let t = Instant::now();
        tmux(&socket, &refs);
        loop {
            let screen = tmux(&socket, &["capture-pane", "-p", "-t", &format!("=f{i}:")]);
            if classify(&screen) == Screen::Idle {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "Claude Code never reached its prompt:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        samples.push(t.elapsed());
        tmux(&socket, &["kill-session", "-t", &format!("=f{i}")]);
    }
    tmux(&socket, &["kill-server"]);
    median(samples)
}

struct Daemon {
    child: Child,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_daemon(dir: &Path, port: u16) -> Daemon {
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
    Daemon { child }
}

fn cli(dir: &Path, args: &[&str], stdin: &str) {
    use std::io::Write;
    let mut c = Command::new(BIN)
        .arg("--config")
        .arg(dir.join("config.yaml"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    assert!(c.wait().unwrap().success());
}

fn session_yaml(
    name: &str,
    dir: &Path,
    command: &str,
    args: &str,
    env: &[(String, String)],
) -> String {
    // Keys go to a file the Session names (the store holds no secret).
    let env: String = env
        .iter()
        .map(|(k, v)| {
            if claude_failover::agent::env::looks_secret(k, v).is_some() {
                use std::os::unix::fs::PermissionsExt;
                let file = dir.join(format!("secrets/{k}"));
                std::fs::create_dir_all(file.parent().unwrap()).unwrap();
                std::fs::write(&file, v).unwrap();
                std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
                format!(
                    "      {k}: {{valueFrom: {{file: \"{}\"}}}}\n",
                    file.display()
                )
            } else {
                format!("      {k}: \"{v}\"\n")
            }
        })
        .collect();
    format!(
        "apiVersion: claude-failover.io/v1alpha1\nkind: Session\nmetadata:\n  name: {name}\nspec:\n  workdir: {}\n  account: a\n  agent:\n    command: {command}\n    args: [{args}]\n    env:\n{env}",
        dir.join("work").display()
    )
}

fn is_ready(store: &Store, name: &str) -> bool {
    store
        .get(&ObjectKey::new(Kind::Session, "default", name))
        .ok()
        .flatten()
        .and_then(|v| {
            v.pointer("/status/conditions")?
                .as_array()?
                .iter()
                .find(|c| c["type"] == "Ready")
                .map(|c| c["status"] == "True")
        })
        .unwrap_or(false)
}

fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < limit, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let claude = claude_bin();
    assert!(
        claude.exists(),
        "Claude Code not found at {} (npm ci --prefix tools/claude-code)",
        claude.display()
    );
    let api = fake_api::FakeApi::start();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::create_dir_all(dir.join("work")).unwrap();

    // --- 1. applied → Ready, next to Claude Code's own launch ---
    let floor = floor_launch(dir, &api.url(), &claude);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let daemon = start_daemon(dir, port);
    let account = format!(
        "apiVersion: claude-failover.io/v1alpha1\nkind: Account\nmetadata:\n  name: a\nspec:\n  configDir: {}\n",
        dir.join("account-a").display()
    );
    cli(dir, &["apply", "-f", "-"], &account);
    let store = Store::open(dir.join("store")).unwrap();
    let env = offline_env(&api.url());
    let mut samples = Vec::new();
    for i in 0..ROUNDS {
        let name = format!("s{i}");
        let yaml = session_yaml(
            &name,
            dir,
            &claude.display().to_string(),
            "\"--dangerously-skip-permissions\"",
            &env,
        );
        let t = Instant::now();
        cli(dir, &["apply", "-f", "-"], &yaml);
        wait_until("Ready", Duration::from_secs(60), || is_ready(&store, &name));
        samples.push(t.elapsed());
        cli(dir, &["delete", "session", &name], "");
        wait_until("deleted", Duration::from_secs(60), || {
            store
                .get(&ObjectKey::new(Kind::Session, "default", &name))
                .unwrap()
                .is_none()
        });
    }
    let applied_ready = median(samples);

    // --- 2. the daemon with 50 idle simulated sessions ---
    let sim_env: Vec<(String, String)> = vec![("SIM_AGENT_STARTUP_MS".into(), "50".into())];
    let mut all = String::new();
    for i in 0..IDLE_SESSIONS {
        all.push_str("---\n");
        all.push_str(&session_yaml(
            &format!("sim-{i}"),
            dir,
            BIN,
            "\"sim-agent\"",
            &sim_env,
        ));
    }
    let t = Instant::now();
    cli(dir, &["apply", "-f", "-"], &all);
    wait_until(
        "50 simulated sessions Ready",
        Duration::from_secs(300),
        || (0..IDLE_SESSIONS).all(|i| is_ready(&store, &format!("sim-{i}"))),
    );
    let all_ready = t.elapsed();
    // Let the start-up settle, then measure a quiet window.
    std::thread::sleep(Duration::from_secs(5));
    let pid = daemon.child.id();
    let ticks_per_s = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let window = Duration::from_secs(60);
    let c0 = cpu_ticks(pid);
    let t0 = Instant::now();
    std::thread::sleep(window);
    let cpu = (cpu_ticks(pid) - c0) as f64 / ticks_per_s / t0.elapsed().as_secs_f64() * 100.0;
    let rss = rss_kib(pid);

    println!(
        "session benchmark (median of {ROUNDS}; {} cores)",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    println!(
        "floor: Claude Code launch → idle prompt (tmux)   {}",
        ms(floor)
    );
    println!(
        "Session applied → Ready (daemon, same binary)    {}   {:.2}x floor",
        ms(applied_ready),
        applied_ready.as_secs_f64() / floor.as_secs_f64()
    );
    println!(
        "{IDLE_SESSIONS} simulated sessions applied → all Ready   {}",
        ms(all_ready)
    );
    println!(
        "daemon with {IDLE_SESSIONS} idle sessions: CPU {cpu:.2}% of a core over {}s, RSS {rss} KiB",
        window.as_secs()
    );
    drop(daemon);
    tmux(&dir.join("tmux.sock"), &["kill-server"]);
}

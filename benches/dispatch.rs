//! Dispatch latency: from a Task written to the store (the clock starts
//! when its durable write returns; that write's own time is printed
//! apart), and from an inbox file created, to its request arriving at the
//! (fake) Anthropic API, on a warm idle session of the real Claude Code;
//! next to the floor measured in the same run: typing straight into the
//! pane with tmux (text, the 100 ms settle Claude Code needs, Enter) to the
//! request. The same rounds on the local store, then on a real 3-member
//! etcd on loopback (tests/common/etcd.rs) when etcd is installed, each
//! with its own floor, and the difference of their paired figures.
//!
//! Run: `cargo bench --bench dispatch` (prints its figures; asserts nothing).

#[path = "../tests/common/mod.rs"]
mod common;

use claude_failover::api::{Kind, ObjectKey};
use claude_failover::store::Store;
use common::{etcd, fake_api};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_claude-failover");
const SAMPLES: usize = 40;

fn claude_bin() -> PathBuf {
    std::env::var_os("CLAUDE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tools/claude-code/node_modules/@anthropic-ai/claude-code-linux-x64/claude")
        })
}

struct Daemon(Child);
impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < Duration::from_secs(60), "timed out: {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn pct(mut v: Vec<Duration>, p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:7.1} ms", d.as_secs_f64() * 1000.0)
}

/// The samples of one run: the floor, the Task path, the inbox path, and
/// the Task writes.
struct Figures {
    floor: Vec<Duration>,
    via_store: Vec<Duration>,
    via_inbox: Vec<Duration>,
    writes: Vec<Duration>,
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let claude = claude_bin();
    assert!(
        claude.exists(),
        "Claude Code not found (npm ci --prefix tools/claude-code)"
    );
    let local = run(None, &claude);
    let local_paired = report("local store", &local);
    let have_etcd = Command::new("etcd")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if have_etcd {
        let cluster = etcd::Cluster::start(3);
        let on_etcd = run(Some(&cluster.url("dispatch")), &claude);
        let etcd_paired = report("etcd (3 members on loopback)", &on_etcd);
        println!(
            "etcd - local, median of paired differences: Task {:+.1} ms, inbox {:+.1} ms",
            etcd_paired.0 - local_paired.0,
            etcd_paired.1 - local_paired.1
        );
    } else {
        println!("etcd not installed: the run on etcd was skipped");
    }
}

/// The rounds on a fresh daemon, session and fake API, on the local store (None) or
/// the etcd store at `url`.
fn run(url: Option<&str>, claude: &Path) -> Figures {
    // Its own fake API: the prompts of one run are not those of another.
    let api = fake_api::FakeApi::start();
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let work = d.join("work");
    std::fs::create_dir_all(&work).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let location = url
        .map(str::to_string)
        .unwrap_or_else(|| d.join("store").display().to_string());
    std::fs::write(
        d.join("config.yaml"),
        format!(
            "store: {location}\nstateDir: {d}/state\nlisten: 127.0.0.1:{port}\ntmuxSocket: {d}/tmux.sock\ntranscriptsDir: {d}/projects\nlog:\n  level: warn\ndispatch:\n  cooldownSeconds: 0\n",
            d = d.display()
        ),
    )
    .unwrap();
    let store = Store::open_location(&location, &Default::default()).unwrap();
    // The key in a file the Session names: the store holds no secret.
    let key_file = d.join("api-key");
    std::fs::write(&key_file, "sk-ant-api03-bench-dispatch-000000000000\n").unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let env = json!({
        "ANTHROPIC_BASE_URL": api.url(), "ANTHROPIC_API_KEY": {"valueFrom": {"file": key_file.display().to_string()}},
        "DISABLE_TELEMETRY": "1", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "DISABLE_AUTOUPDATER": "1",
        "DISABLE_ERROR_REPORTING": "1", "CLAUDE_CODE_DISABLE_OFFICIAL_MARKETPLACE_AUTOINSTALL": "1", "IS_SANDBOX": "1"
    });
    store
        .apply(
            &json!({"apiVersion": "claude-failover.io/v1alpha1", "kind": "Account",
                    "metadata": {"name": "a", "namespace": "default"}, "spec": {"configDir": d.join("acct").display().to_string()}}),
            false,
        )
        .unwrap();
    // The session runs sonnet: tasks (normal → sonnet) need no /model.
    store
        .apply(
            &json!({"apiVersion": "claude-failover.io/v1alpha1", "kind": "Session",
                    "metadata": {"name": "bench", "namespace": "default"},
                    "spec": {"workdir": work.display().to_string(), "account": "a",
                             "agent": {"command": claude.display().to_string(), "model": "sonnet",
                                       "args": ["--dangerously-skip-permissions"], "env": env}}}),
            false,
        )
        .unwrap();
    let _daemon = Daemon(
        Command::new(BIN)
            .arg("--config")
            .arg(d.join("config.yaml"))
            .arg("run")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.join("daemon.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    let session = ObjectKey::new(Kind::Session, "default", "bench");
    let idle = || {
        store.get(&session).ok().flatten().is_some_and(|v| {
            v.pointer("/status/phase").and_then(|p| p.as_str()) == Some("Idle")
                && v.pointer("/status/currentTask").is_none()
        })
    };
    wait_until("the session idle", idle);
    let arrived = |text: &str| {
        api.requests()
            .iter()
            .any(|r| r.is_main() && r.last_user_text().is_some_and(|t| t.contains(text)))
    };
    let tmux = |args: &[&str]| {
        Command::new("tmux")
            .arg("-S")
            .arg(d.join("tmux.sock"))
            .args(args)
            .env_remove("TMUX")
            .output()
            .unwrap();
    };
    // Warm up: one turn.
    let warm = "warm-up turn";
    tmux(&["send-keys", "-t", "=bench:", "-l", "--", warm]);
    std::thread::sleep(Duration::from_millis(100));
    tmux(&["send-keys", "-t", "=bench:", "Enter"]);
    wait_until("warm-up", || arrived(warm));
    wait_until("idle after warm-up", idle);

    let (mut floor, mut via_store, mut via_inbox) = (Vec::new(), Vec::new(), Vec::new());
    let mut writes = Vec::new();
    let inbox = work.join(".agent-queue/inbox");
    std::fs::create_dir_all(&inbox).unwrap();
    for i in 0..SAMPLES {
        // Floor: straight into the pane.
        let text = format!("floor probe {i}");
        let t = Instant::now();
        tmux(&["send-keys", "-t", "=bench:", "-l", "--", &text]);
        std::thread::sleep(Duration::from_millis(100));
        tmux(&["send-keys", "-t", "=bench:", "Enter"]);
        wait_until("floor request", || arrived(&text));
        floor.push(t.elapsed());
        wait_until("idle", idle);
        std::thread::sleep(Duration::from_millis(300)); // let the turn's hooks land

        // A Task written to the store.
        let text = format!("store task probe {i}");
        let task = json!({"apiVersion": "claude-failover.io/v1alpha1", "kind": "Task",
                          "metadata": {"name": format!("probe-{i}"), "namespace": "default"},
                          "spec": {"prompt": text}});
        let t = Instant::now();
        store.apply(&task, false).unwrap();
        // The Task is in the store once the (durable) write returns.
        writes.push(t.elapsed());
        let t = Instant::now();
        wait_until("task request", || arrived(&text));
        via_store.push(t.elapsed());
        wait_until("task done", || {
            store
                .get(&ObjectKey::new(
                    Kind::Task,
                    "default",
                    &format!("probe-{i}"),
                ))
                .ok()
                .flatten()
                .is_some_and(|v| {
                    v.pointer("/status/phase").and_then(|p| p.as_str()) == Some("Succeeded")
                })
        });
        wait_until("idle", idle);
        std::thread::sleep(Duration::from_millis(300));

        // An inbox file (written elsewhere, renamed in: complete at once).
        let text = format!("inbox probe {i}");
        let tmpfile = d.join(format!("probe-{i}.md"));
        std::fs::write(&tmpfile, format!("---\npriority: normal\n---\n{text}\n")).unwrap();
        let t = Instant::now();
        std::fs::rename(&tmpfile, inbox.join(format!("probe-{i}.md"))).unwrap();
        wait_until("inbox request", || arrived(&text));
        via_inbox.push(t.elapsed());
        wait_until("inbox done", || {
            work.join(format!(".agent-queue/done/probe-{i}.md"))
                .exists()
        });
        wait_until("idle", idle);
        std::thread::sleep(Duration::from_millis(300));
    }
    Command::new("tmux")
        .arg("-S")
        .arg(d.join("tmux.sock"))
        .arg("kill-server")
        .env_remove("TMUX")
        .output()
        .unwrap();
    Figures {
        floor,
        via_store,
        via_inbox,
        writes,
    }
}

/// Prints one run's figures; the medians of its paired differences (Task,
/// inbox), ms.
fn report(store: &str, f: &Figures) -> (f64, f64) {
    let p50f = pct(f.floor.clone(), 0.5);
    println!(
        "dispatch latency to the API request on the {store} ({SAMPLES} samples each, warm idle session, real Claude Code)"
    );
    println!(
        "floor: tmux send-keys + settle + Enter   p50 {}  p99 {}",
        ms(p50f),
        ms(pct(f.floor.clone(), 0.99))
    );
    println!(
        "(the Task's write itself, before the clock starts: p50 {})",
        ms(pct(f.writes.clone(), 0.5))
    );
    let mut medians = Vec::new();
    for (name, v) in [
        ("Task written to the store      ", &f.via_store),
        ("inbox file created             ", &f.via_inbox),
    ] {
        let p50 = pct(v.clone(), 0.5);
        // Each sample next to the floor sample of the same round: Claude
        // Code slows as its conversation grows over the run, and the pairs
        // share that drift.
        let mut paired: Vec<f64> = v
            .iter()
            .zip(&f.floor)
            .map(|(d, f)| (d.as_secs_f64() - f.as_secs_f64()) * 1000.0)
            .collect();
        paired.sort_by(f64::total_cmp);
        let median = paired[paired.len() / 2];
        println!(
            "{name}  p50 {}  p99 {}   p50 - floor {:+.1} ms   median of paired differences {median:+.1} ms",
            ms(p50),
            ms(pct(v.clone(), 0.99)),
            (p50.as_secs_f64() - p50f.as_secs_f64()) * 1000.0,
        );
        medians.push(median);
    }
    (medians[0], medians[1])
}

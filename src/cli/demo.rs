//! `demo`: a self-contained run on temporary directories, to watch.
//!
//! Two accounts, a pool of three sessions of the simulated agent (`sim-agent`: the
//! same screens, hooks, statusLine feed and usage limits as Claude Code),
//! eighteen tasks. Account a has a small budget: the tasks push it over its
//! threshold, the failover moves the sessions to b with their
//! conversations, and the rest of the tasks finish there. A live table
//! shows it all; the run ends by itself (within a minute) and cleans up.

use crate::api::{Account, Session, Task};
use crate::store::Store;
use anyhow::{Context as _, Result, bail};
use clap::Args;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Keep the temporary directory (store, state, logs) afterwards
    #[arg(long)]
    pub keep: bool,
    /// Give up after this long
    #[arg(long, default_value = "90s", value_parser = super::wait::parse_duration)]
    pub timeout: Duration,
}

const TASKS: usize = 18;

fn manifests(dir: &Path, exe: &Path) -> String {
    let mut out = String::new();
    for (name, priority, threshold) in [("a", 0, 60), ("b", 10, 90)] {
        out.push_str(&format!(
            "---\napiVersion: claude-failover.io/v1alpha1\nkind: Account\nmetadata:\n  name: {name}\nspec:\n  configDir: {}\n  priority: {priority}\n  thresholds: {{fiveHour: {threshold}, sevenDay: 95}}\n",
            dir.join("accounts").join(name).display()
        ));
    }
    // The sessions: one pool, agent-0..2, packed onto the preferred account.
    out.push_str(&format!(
        "---\napiVersion: claude-failover.io/v1alpha1\nkind: SessionPool\nmetadata:\n  name: agent\nspec:\n  replicas: 3\n  placement: {{strategy: Pack}}\n  template:\n    spec:\n      workdir: {}\n      account: a\n      agent:\n        command: {}\n        args: [\"sim-agent\"]\n        env:\n          SIM_AGENT_TURN_MS: \"2500\"\n          SIM_AGENT_TOKENS_PER_TURN: \"2000\"\n          SIM_AGENT_STARTUP_MS: \"200\"\n          SIM_AGENT_IDLE_NOTIFY_MS: \"0\"\n",
        dir.join("work").join("project").display(),
        exe.display()
    ));
    let priorities = ["high", "normal", "low"];
    for t in 1..=TASKS {
        out.push_str(&format!(
            "---\napiVersion: claude-failover.io/v1alpha1\nkind: Task\nmetadata:\n  name: task-{t:02}\nspec:\n  prompt: \"demo task {t}: tidy up module {t}\"\n  priority: {}\n",
            priorities[t % 3]
        ));
    }
    out
}

fn write(path: &Path, text: &str) -> Result<()> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d)?;
    }
    crate::fsutil::write_atomic(path, text.as_bytes(), None, false)
        .with_context(|| path.display().to_string())
}

struct Run {
    dir: PathBuf,
    daemon: Option<Child>,
    keep: bool,
}

impl Drop for Run {
    fn drop(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(d.id() as libc::pid_t, libc::SIGTERM) };
            let _ = d.wait();
        }
        let _ = Command::new("tmux")
            .arg("-S")
            .arg(self.dir.join("tmux.sock"))
            .arg("kill-server")
            .env_remove("TMUX")
            .stderr(Stdio::null())
            .status();
        if self.keep {
            eprintln!("kept: {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

pub fn demo(a: DemoArgs) -> Result<ExitCode> {
    let exe = std::env::current_exe().context("cannot find this program's path")?;
    let dir = std::env::temp_dir().join(format!(
        "claude-failover-demo-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    ));
    let mut run = Run {
        dir: dir.clone(),
        daemon: None,
        keep: a.keep,
    };
    std::fs::create_dir_all(dir.join("work").join("project"))?;
    // Account a: a small 5-hour budget (its window is 10 minutes here), so
    // the tasks push it over its 60 % threshold; b has room.
    write(
        &dir.join("accounts/a/sim-budget.json"),
        r#"{"fiveHourTokens": 30000, "windowSeconds": 600}"#,
    )?;
    // Credentials, as a real account has them (the simulated agent does not
    // read them; the failover's preflight checks they are there).
    for name in ["a", "b"] {
        write(
            &dir.join(format!("accounts/{name}/.credentials.json")),
            &format!(
                r#"{{"claudeAiOauth": {{"accessToken": "sk-ant-oat01-demo-{name}", "scopes": ["user:inference"], "subscriptionType": "max"}}}}"#
            ),
        )?;
    }
    write(
        &dir.join("accounts/b/sim-budget.json"),
        r#"{"fiveHourTokens": 400000, "windowSeconds": 600}"#,
    )?;
    let config = dir.join("config.yaml");
    write(
        &config,
        &format!(
            "store: {d}/store\nstateDir: {d}/state\nlisten: 127.0.0.1:0\ntmuxSocket: {d}/tmux.sock\ntranscriptsDir: {d}/projects\nresyncSeconds: 30\ndispatch:\n  cooldownSeconds: 0\nquota:\n  turnWaitSeconds: 20\n  confirmSeconds: 30\n  usageBaseUrl: http://127.0.0.1:9\n",
            d = dir.display()
        ),
    )?;
    write(&dir.join("pool.yaml"), &manifests(&dir, &exe))?;
    let cf = |args: &[&str]| {
        let mut c = Command::new(&exe);
        c.arg("--config").arg(&config).args(args).env_remove("TMUX");
        c
    };
    println!("claude-failover demo in {}", dir.display());
    println!(
        "2 accounts (a: small budget, threshold 60%; b: room), 3 simulated agents, {TASKS} tasks\n"
    );
    let log = std::fs::File::create(dir.join("daemon.log"))?;
    run.daemon = Some(
        cf(&["run", "--log-level", "info"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("cannot start the daemon")?,
    );
    let out = cf(&[
        "apply",
        "-f",
        dir.join("pool.yaml").to_str().unwrap_or_default(),
    ])
    .output()?;
    if !out.status.success() {
        bail!("apply failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let store = Store::open(dir.join("store"))?;
    let tty = std::io::stdout().is_terminal();
    let started = Instant::now();
    let mut last = String::new();
    loop {
        let frame = render(&store, &dir.join("state"), started)?;
        let done = frame.finished;
        if tty {
            print!("\x1b[H\x1b[2J{}", frame.text);
        } else if frame.key != last {
            println!("{}", frame.text);
        }
        std::io::stdout().flush()?;
        last = frame.key;
        if done {
            println!("\nEvery task ran; the sessions moved from a to b when a neared its limit.");
            println!(
                "Replay it with your own pool: claude-failover init, then claude-failover run."
            );
            return Ok(ExitCode::SUCCESS);
        }
        if started.elapsed() > a.timeout {
            let log = std::fs::read_to_string(dir.join("daemon.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            eprintln!(
                "the demo did not finish in {}s; daemon log:",
                a.timeout.as_secs()
            );
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
            return Ok(ExitCode::from(1));
        }
        std::thread::sleep(Duration::from_millis(400));
    }
}

struct Frame {
    text: String,
    /// The frame without its clock (printed again only when it changes).
    key: String,
    finished: bool,
}

fn render(store: &Store, state: &Path, started: Instant) -> Result<Frame> {
    let accounts = store.api::<Account>(None).list()?;
    let sessions = store.api::<Session>(None).list()?;
    let tasks = store.api::<Task>(None).list()?;
    let mut swaps = store.api::<crate::api::Swap>(None).list()?;
    swaps.sort_by_key(|s| s.spec.epoch);
    let _ = state;
    let mut t = String::new();
    let acct_rows: Vec<Vec<String>> = accounts
        .iter()
        .map(|a| {
            let st = a.status.clone().unwrap_or_default();
            vec![
                a.metadata.name.clone().unwrap_or_default(),
                st.phase.map(|p| p.to_string()).unwrap_or_default(),
                st.usage
                    .and_then(|u| u.five_hour)
                    .map(|w| format!("{:.0}%", w.utilization))
                    .unwrap_or_else(|| "-".into()),
                format!("{}%", a.spec.thresholds.five_hour),
                st.sessions.unwrap_or(0).to_string(),
            ]
        })
        .collect();
    t.push_str(&super::print::table(
        &["ACCOUNT", "PHASE", "5H USED", "THRESHOLD", "SESSIONS"],
        &acct_rows,
    ));
    t.push('\n');
    let sess_rows: Vec<Vec<String>> = sessions
        .iter()
        .map(|s| {
            let st = s.status.clone().unwrap_or_default();
            vec![
                s.metadata.name.clone().unwrap_or_default(),
                st.phase.map(|p| p.to_string()).unwrap_or_default(),
                st.account.unwrap_or_else(|| "-".into()),
                st.current_task.unwrap_or_else(|| "-".into()),
                st.last_swap
                    .map(|w| format!("{} -> {} ({})", w.from.unwrap_or_default(), w.to, w.state))
                    .unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    t.push_str(&super::print::table(
        &["SESSION", "PHASE", "ACCOUNT", "TASK", "LAST SWAP"],
        &sess_rows,
    ));
    t.push('\n');
    let count = |p: crate::api::TaskPhase| {
        tasks
            .iter()
            .filter(|t| t.status.as_ref().and_then(|s| s.phase) == Some(p))
            .count()
    };
    use crate::api::TaskPhase::*;
    let pending = tasks.len()
        - count(Dispatched)
        - count(Running)
        - count(Succeeded)
        - count(Failed)
        - count(Cancelled);
    t.push_str(&format!(
        "TASKS  pending {pending}  running {}  succeeded {}  failed {}\n",
        count(Dispatched) + count(Running),
        count(Succeeded),
        count(Failed)
    ));
    for s in &swaps {
        t.push_str(&format!(
            "SWAP   epoch {}: {} -> {} ({}), {} session(s): {}\n",
            s.spec.epoch,
            s.spec.from,
            s.spec.to,
            s.spec.reason,
            s.spec.sessions.len(),
            s.status.clone().unwrap_or_default().phase
        ));
    }
    let key = t.clone();
    let finished = tasks.len() == TASKS
        && count(Succeeded) + count(Failed) == TASKS
        && swaps
            .iter()
            .any(|s| s.status.as_ref().map(|x| x.phase) == Some(crate::api::SwapPhase::Succeeded));
    Ok(Frame {
        text: format!(
            "claude-failover demo · {:>4.1}s\n\n{t}",
            started.elapsed().as_secs_f64()
        ),
        key,
        finished,
    })
}

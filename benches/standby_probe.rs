//! Probe of Claude Code's in-process takeover (`/resume <id>` typed into
//! an idle process), the facts the warm standby relies on: the real binary
//! in real tmux, against the fake API, no daemon. A measurement, not a
//! guard (the behaviour the project relies on is tested in
//! tests/standby_claude.rs): run with `cargo bench --bench standby_probe`.
//! Findings: docs/claude-code-probe.md, section 12.

#[path = "../tests/common/mod.rs"]
mod common;
use common::fake_api::FakeApi;
use common::pool::claude_bin;
use common::wait_for;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const LONG: Duration = Duration::from_secs(30);
/// The window a takeover's CPU is taken over after its confirmation (and
/// the standbys' idle cost before).
const AFTER: Duration = Duration::from_secs(2);
const TOKEN_A: &str = "sk-ant-oat01-probe-account-a";
const TOKEN_B: &str = "sk-ant-oat01-probe-account-b";

struct Probe {
    dir: tempfile::TempDir,
    api: FakeApi,
    claude: PathBuf,
    tmux: claude_failover::tmux::Tmux,
    rt: tokio::runtime::Runtime,
}

impl Drop for Probe {
    fn drop(&mut self) {
        let _ = self.rt.block_on(self.tmux.kill_server());
    }
}

impl Probe {
    fn new() -> Probe {
        let dir = tempfile::tempdir().unwrap();
        let tmux = claude_failover::tmux::Tmux::new(dir.path().join("tmux.sock"));
        let p = Probe {
            api: FakeApi::start(),
            claude: claude_bin().expect("Claude Code"),
            tmux,
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
            dir,
        };
        for (name, token) in [("a", TOKEN_A), ("b", TOKEN_B)] {
            let d = p.path(&format!("accounts/{name}"));
            std::fs::create_dir_all(&d).unwrap();
            let creds = json!({"claudeAiOauth": {
                "accessToken": token, "refreshToken": format!("sk-ant-ort01-r-{name}"),
                "expiresAt": 4102444800000u64, "scopes": ["user:inference"], "subscriptionType": "max"}});
            std::fs::write(d.join(".credentials.json"), creds.to_string()).unwrap();
        }
        let hook = p.path("hook.sh");
        common::executable(&hook, "#!/bin/sh\ncat >> \"$1\"\necho >> \"$1\"\n");
        p
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn session(&self, workdir: &Path) -> claude_failover::api::Session {
        let env: std::collections::BTreeMap<String, claude_failover::api::EnvValue> = [
            ("ANTHROPIC_BASE_URL", self.api.url()),
            ("DISABLE_TELEMETRY", "1".into()),
            ("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1".into()),
            ("DISABLE_AUTOUPDATER", "1".into()),
            ("DISABLE_ERROR_REPORTING", "1".into()),
            ("IS_SANDBOX", "1".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), claude_failover::api::EnvValue::Value(v)))
        .collect();
        let spec = serde_json::from_value(json!({
            "workdir": workdir, "agent": {"command": self.claude, "permissionMode": "bypassPermissions"}
        }))
        .unwrap();
        let mut s = claude_failover::api::Session::new("probe", spec);
        s.spec.agent.env = env;
        s
    }

    /// Starts Claude Code under `account` in `workdir` as tmux session
    /// `name`; its hooks append to `hooks-NAME.jsonl`.
    fn seed(&self, account: &str, workdir: &Path) {
        std::fs::create_dir_all(workdir).unwrap();
        let s = self.session(workdir);
        let config = self.path(&format!("accounts/{account}"));
        claude_failover::agent::seed::seed_for_session(
            &config,
            workdir,
            &s,
            &[],
            &self.path("projects"),
        )
        .unwrap();
    }

    fn start(&self, name: &str, account: &str, workdir: &Path, id: &str, resume: bool) -> u32 {
        self.seed(account, workdir);
        let s = self.session(workdir);
        let config = self.path(&format!("accounts/{account}"));
        let log = self.path(&format!("hooks-{name}.jsonl"));
        let hook = format!("{} {}", self.path("hook.sh").display(), log.display());
        let mut hooks = serde_json::Map::new();
        for ev in claude_failover::agent::launch::HOOK_EVENTS {
            hooks.insert(
                ev.to_string(),
                json!([{"matcher": "*", "hooks": [{"type": "command", "command": hook, "timeout": 5}]}]),
            );
        }
        let settings = self.path(&format!("settings-{name}.json"));
        let body = json!({"hooks": hooks, "skipDangerousModePermissionPrompt": true, "autoContinueAtUsageLimit": false});
        std::fs::write(&settings, body.to_string()).unwrap();
        let lp =
            claude_failover::agent::launch::plan(&claude_failover::agent::launch::LaunchInput {
                session: &s,
                config_dir: Some(&config),
                settings_path: &settings,
                agent_session_id: id,
                resume,
            });
        let pane = self
            .rt
            .block_on(
                self.tmux
                    .new_session(&claude_failover::agent::terminal::NewSession {
                        name,
                        cwd: workdir,
                        env: &lp.env,
                        argv: &lp.argv,
                        width: 200,
                        height: 50,
                    }),
            )
            .unwrap();
        let started = wait_for_or(LONG, || {
            self.hooks(name)
                .into_iter()
                .find(|h| h["hook_event_name"] == "SessionStart" && h["source"] == "startup")
        });
        assert!(
            started.is_some(),
            "{name} did not start:\n{}",
            self.screen(name)
        );
        self.wait_composer(name);
        pane.pid
    }

    fn hooks(&self, name: &str) -> Vec<Value> {
        std::fs::read_to_string(self.path(&format!("hooks-{name}.jsonl")))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    fn wait_hook(&self, name: &str, what: &str, f: impl Fn(&Value) -> bool) -> Value {
        wait_for(&format!("{name}: {what}"), LONG, || {
            self.hooks(name).into_iter().find(|h| f(h))
        })
    }

    fn screen(&self, name: &str) -> String {
        let pane = self.rt.block_on(self.tmux.pane(name)).unwrap().unwrap();
        self.rt
            .block_on(self.tmux.capture(&pane.id, false))
            .unwrap()
    }

    fn wait_composer(&self, name: &str) {
        wait_for(&format!("the composer of {name}"), LONG, || {
            claude_failover::agent::screen::composer_text(&self.screen(name))
                .filter(|t| t.is_empty())
        });
    }

    fn type_(&self, name: &str, text: &str) {
        let pane = self.rt.block_on(self.tmux.pane(name)).unwrap().unwrap();
        self.rt
            .block_on(self.tmux.type_and_submit(&pane.id, text))
            .unwrap();
    }

    fn turn(&self, name: &str, text: &str) {
        let n = self.count(name, "Stop");
        self.type_(name, text);
        wait_for(&format!("{name}: the turn {text:?}"), LONG, || {
            (self.count(name, "Stop") > n).then_some(())
        });
    }

    fn count(&self, name: &str, event: &str) -> usize {
        self.hooks(name)
            .iter()
            .filter(|h| h["hook_event_name"] == event)
            .count()
    }

    fn cpu_ticks(pid: u32) -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let rest = stat.rsplit_once(')').unwrap().1;
        let f: Vec<&str> = rest.split_whitespace().collect();
        f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
    }

    fn rss_kib(pid: u32) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap()
    }

    fn transcripts(&self) -> Vec<String> {
        let mut out = Vec::new();
        for d in std::fs::read_dir(self.path("projects"))
            .into_iter()
            .flatten()
            .flatten()
        {
            for f in std::fs::read_dir(d.path()).into_iter().flatten().flatten() {
                out.push(f.file_name().to_string_lossy().into_owned());
            }
        }
        out.sort();
        out
    }
}

fn wait_for_or<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn id() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn probe_takeover() {
    let p = Probe::new();
    let work = p.path("work");
    // A conversation on a, with a tool call.
    let conv = id();
    p.start("main", "a", &work, &conv, false);
    p.api.queue_tool_use(
        "Bash",
        json!({"command": "echo PROBE-TOOL-OUTPUT", "description": "probe"}),
    );
    p.turn("main", "first turn: run the tool");
    p.turn("main", "second turn: remember KUMQUAT");
    // A standby on b in the same directory, and one in another directory.
    // (The other directory first: a running Claude Code rewrites its
    // account's .claude.json and may drop trust seeded meanwhile.)
    let other = p.path("elsewhere");
    p.seed("b", &work);
    p.start("other", "b", &other, &id(), false);
    let standby_id = id();
    let spid = p.start("standby", "b", &work, &standby_id, false);
    // Idle cost: CPU and RSS of the idle standby over a while.
    let idle_for = Duration::from_secs(
        std::env::var("PROBE_IDLE_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(20),
    );
    let (t0, c0) = (Instant::now(), Probe::cpu_ticks(spid));
    std::thread::sleep(idle_for);
    let ticks = Probe::cpu_ticks(spid) - c0;
    println!(
        "idle standby: {ticks} ticks (1/100 s) of CPU in {:.1} s, RSS {} KiB",
        t0.elapsed().as_secs_f64(),
        Probe::rss_kib(spid)
    );
    println!("transcripts before the takeover: {:?}", p.transcripts());
    // The cwd rule: from another directory the id is not found.
    p.type_("other", &format!("/resume {conv}"));
    wait_for("other: not found", LONG, || {
        p.screen("other").contains("was not found").then_some(())
    });
    println!(
        "other directory: {:?}",
        p.screen("other")
            .lines()
            .filter(|l| l.contains("not found"))
            .collect::<Vec<_>>()
    );
    // Takeover while the old process is still exiting: /exit, then at once
    // /resume in the standby.
    let main_pane = p.rt.block_on(p.tmux.pane("main")).unwrap().unwrap();
    p.rt.block_on(p.tmux.send_text(&main_pane.id, "/exit"))
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    p.rt.block_on(p.tmux.send_keys(&main_pane.id, &["Enter"]))
        .unwrap();
    let typed = Instant::now();
    p.type_("standby", &format!("/resume {conv}"));
    let alive_then = !claude_failover::agent::driver::process_gone(main_pane.pid);
    let start = p.wait_hook("standby", "resume", |h| {
        h["hook_event_name"] == "SessionStart" && h["source"] == "resume"
    });
    println!(
        "takeover confirmed {} ms after typing (old process still alive when typed: {alive_then}); start: {start}",
        typed.elapsed().as_millis()
    );
    assert_eq!(start["session_id"], conv.as_str());
    let ends: Vec<Value> = p
        .hooks("standby")
        .into_iter()
        .filter(|h| h["hook_event_name"] == "SessionEnd")
        .collect();
    println!("standby's SessionEnd hooks: {ends:?}");
    p.wait_composer("standby");
    p.api.clear_requests();
    p.turn("standby", "third turn: which fruit?");
    let q = p
        .api
        .main_requests()
        .into_iter()
        .find(|q| q.mentions("which fruit"))
        .unwrap();
    println!(
        "after takeover: credential {:?}, session id {:?}, tool output in history: {}, KUMQUAT: {}",
        q.credential(),
        q.session_id(),
        q.mentions("PROBE-TOOL-OUTPUT"),
        q.mentions("KUMQUAT")
    );
    assert_eq!(q.credential(), Some(TOKEN_B));
    assert_eq!(q.session_id(), Some(conv.as_str()));
    assert!(q.mentions("PROBE-TOOL-OUTPUT") && q.mentions("KUMQUAT"));
    println!(
        "transcripts after: {:?} (standby's own id {standby_id})",
        p.transcripts()
    );
    let sessions_file =
        std::fs::read_to_string(p.path(&format!("accounts/b/sessions/{spid}.json")))
            .unwrap_or_default();
    println!("standby's sessions/<pid>.json: {sessions_file}");
}

fn probe_several_takeovers_at_once() {
    let p = Probe::new();
    let n = std::env::var("PROBE_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let mut convs = Vec::new();
    let mut spids = Vec::new();
    for i in 0..n {
        let work = p.path(&format!("work{i}"));
        let conv = id();
        p.start(&format!("main{i}"), "a", &work, &conv, false);
        p.turn(
            &format!("main{i}"),
            &format!("turn of conversation {i}: remember {i}"),
        );
        let spid = p.start(&format!("standby{i}"), "b", &work, &id(), false);
        spids.push(spid);
        convs.push(conv);
    }
    // The standbys' own start-ups settle, then their idle cost is taken
    // over the window used after the takeovers.
    let ticks = || -> u64 { spids.iter().map(|p| Probe::cpu_ticks(*p)).sum() };
    std::thread::sleep(AFTER);
    let idle0 = ticks();
    std::thread::sleep(AFTER);
    let mut c0 = ticks();
    let idle = c0 - idle0;
    // PROBE_PRETYPE=1: the commands are typed first, their cost taken
    // apart; the takeover is then the Enter alone.
    let pretype = std::env::var_os("PROBE_PRETYPE").is_some();
    let type_resume = |i: usize, conv: &str| {
        let s =
            p.rt.block_on(p.tmux.pane(&format!("standby{i}")))
                .unwrap()
                .unwrap();
        p.rt.block_on(p.tmux.send_text(&s.id, &format!("/resume {conv}")))
            .unwrap();
    };
    if pretype {
        for (i, conv) in convs.iter().enumerate() {
            type_resume(i, conv);
        }
        std::thread::sleep(AFTER);
        let typed = ticks();
        println!(
            "the typing alone: {} (1/100 s), idle over as long {idle}",
            typed - c0
        );
        c0 = typed;
    }
    let t = Instant::now();
    for (i, conv) in convs.iter().enumerate() {
        let pane =
            p.rt.block_on(p.tmux.pane(&format!("main{i}")))
                .unwrap()
                .unwrap();
        p.rt.block_on(p.tmux.send_text(&pane.id, "/exit")).unwrap();
        p.rt.block_on(p.tmux.send_keys(&pane.id, &["Enter"]))
            .unwrap();
        if !pretype {
            type_resume(i, conv);
        }
    }
    if !pretype {
        std::thread::sleep(claude_failover::agent::driver::SETTLE);
    }
    for i in 0..n {
        let s =
            p.rt.block_on(p.tmux.pane(&format!("standby{i}")))
                .unwrap()
                .unwrap();
        p.rt.block_on(p.tmux.send_keys(&s.id, &["Enter"])).unwrap();
    }
    for (i, conv) in convs.iter().enumerate() {
        let h = p.wait_hook(&format!("standby{i}"), "resume", |h| {
            h["hook_event_name"] == "SessionStart" && h["source"] == "resume"
        });
        assert_eq!(h["session_id"], conv.as_str());
    }
    println!(
        "{n} takeovers at once: all confirmed in {} ms",
        t.elapsed().as_millis()
    );
    // What a takeover costs goes on after its SessionStart: the window
    // after it is taken too, less the standbys' idle cost over as long.
    let c1 = ticks();
    std::thread::sleep(AFTER);
    let c2 = ticks();
    println!(
        "their CPU (1/100 s): to all confirmed {}, in the {} s after {} (idle over as long: {idle}); each takeover {:.2} s",
        c1 - c0,
        AFTER.as_secs(),
        c2 - c1,
        (c2 - c0).saturating_sub(idle) as f64 / 100.0 / n as f64
    );
    p.api.clear_requests();
    for i in 0..n {
        p.turn(&format!("standby{i}"), &format!("after the move {i}"));
    }
    for (i, conv) in convs.iter().enumerate() {
        let q = p
            .api
            .main_requests()
            .into_iter()
            .find(|q| q.mentions(&format!("after the move {i}")))
            .unwrap();
        assert_eq!(q.credential(), Some(TOKEN_B));
        assert_eq!(q.session_id(), Some(conv.as_str()));
        assert!(q.mentions(&format!("remember {i}")));
    }
    println!("each went on under b with its own history");
}

fn main() {
    // PROBE_N=8 PROBE_ONLY_SEVERAL=1: the cost of eight at once, alone.
    if std::env::var_os("PROBE_ONLY_SEVERAL").is_none() {
        probe_takeover();
    }
    probe_several_takeovers_at_once();
}

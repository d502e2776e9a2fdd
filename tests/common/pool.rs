//! A pool for the end-to-end tests: the real daemon binary, the real
//! Claude Code in real tmux (on the pool's own socket), a fake Anthropic
//! API on 127.0.0.1, and a private store and state dir.

use super::fake_api::FakeApi;
use super::{BIN, Env, free_port, wait_for};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Generous: a loaded 2-core machine runs several Claude Codes at once.
pub const LONG: Duration = Duration::from_secs(90);

/// How long a prompt or a dialog may stay after Enter before Enter is
/// pressed again (what is drawn does not always listen yet).
pub const ENTER_AGAIN_AFTER: Duration = Duration::from_secs(2);

/// One swap as the tests look at it (times in Unix milliseconds).
#[derive(Debug, Clone)]
pub struct SwapRecord {
    pub epoch: u64,
    pub from: String,
    pub to: Option<String>,
    pub reason: String,
    pub sessions: Vec<String>,
    pub started_at: u64,
    pub finished_at: Option<u64>,
    pub result: String,
}

/// The swap records in the store at `store`, oldest epoch first.
pub fn swaps_in(store: &Path) -> Vec<SwapRecord> {
    let store = claude_failover::store::Store::open(store).unwrap();
    let mut all: Vec<SwapRecord> = store
        .api::<claude_failover::api::Swap>(None)
        .list()
        .unwrap()
        .into_iter()
        .map(SwapRecord::from)
        .collect();
    all.sort_by_key(|r| r.epoch);
    all
}

impl From<claude_failover::api::Swap> for SwapRecord {
    fn from(s: claude_failover::api::Swap) -> Self {
        let st = s.status.unwrap_or_default();
        let ms = |t: &claude_failover::api::MicroTime| t.0.as_millisecond().max(0) as u64;
        SwapRecord {
            epoch: s.spec.epoch,
            from: s.spec.from,
            to: Some(s.spec.to),
            reason: s.spec.reason,
            sessions: s.spec.sessions,
            started_at: st.started_at.as_ref().map(ms).unwrap_or(0),
            finished_at: st.finished_at.as_ref().map(ms),
            result: st.phase.to_string(),
        }
    }
}

/// The Claude Code binary: `CLAUDE_BIN`, or the newest supported release
/// pinned in tools/claude-code (installed by `.ci/run`; the oldest one is
/// in tools/claude-code/oldest, for `CLAUDE_BIN`).
pub fn claude_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CLAUDE_BIN") {
        return Some(PathBuf::from(p));
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tools/claude-code/node_modules/@anthropic-ai/claude-code-linux-x64/claude");
    p.exists().then_some(p)
}

/// The Claude Code binary. Only called by tests that the build marks as
/// needing Claude Code (`cfg(claude_code)`): they are reported as ignored
/// where it is missing.
pub fn claude() -> PathBuf {
    claude_bin().expect(
        "Claude Code is not installed: npm ci --prefix tools/claude-code, or set CLAUDE_BIN",
    )
}

pub struct Pool {
    pub env: Env,
    pub api: FakeApi,
    pub claude: PathBuf,
    pub port: u16,
    daemons: Vec<Option<Child>>,
}

impl Drop for Pool {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for i in 0..self.daemons.len() {
                let log = self.daemon_log(i);
                let tail: Vec<&str> = log.lines().rev().take(60).collect();
                eprintln!("--- daemon {i} log (last 60 lines) ---");
                for l in tail.iter().rev() {
                    eprintln!("{l}");
                }
            }
            eprintln!("--- fake API ---\n{}", self.api.summary());
            for name in self
                .tmux(&["list-sessions", "-F", "#{session_name}"])
                .lines()
            {
                eprintln!("--- screen of {name} ---\n{}", self.screen(name));
            }
        }
        for d in self.daemons.iter_mut().flatten() {
            let _ = d.kill();
            let _ = d.wait();
        }
        let _ = Command::new("tmux")
            .arg("-S")
            .arg(self.socket())
            .arg("kill-server")
            .env_remove("TMUX")
            .stderr(Stdio::null())
            .status();
    }
}

impl Pool {
    pub fn new(claude: PathBuf) -> Pool {
        let env = Env::new();
        let port = free_port();
        let api = FakeApi::start();
        let d = env.dir.path();
        std::fs::create_dir_all(d.join("work")).unwrap();
        // A long resync: the tests must pass on the event paths alone
        // (store watch, hooks, tmux notifications); the resync is a safety net.
        std::fs::write(
            d.join("config.yaml"),
            format!(
                "store: {d}/store\nstateDir: {d}/state\nlisten: 127.0.0.1:{port}\ntmuxSocket: {d}/tmux.sock\ntranscriptsDir: {d}/projects\nresyncSeconds: 120\nquota:\n  usageBaseUrl: {url}\n",
                d = d.display(),
                url = api.url()
            ),
        )
        .unwrap();
        Pool {
            env,
            api,
            claude,
            port,
            daemons: Vec::new(),
        }
    }

    /// Appends to the daemon's config file (before the daemon starts).
    pub fn add_config(&self, yaml: &str) {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(self.path("config.yaml"))
            .unwrap();
        f.write_all(yaml.as_bytes()).unwrap();
    }

    /// The swap records the daemons wrote, oldest epoch first.
    pub fn swaps(&self) -> Vec<SwapRecord> {
        swaps_in(&self.env.store())
    }

    /// The swaps once none is running (a swap's record ends after the
    /// sessions it moved say they are done).
    pub fn ended_swaps(&self) -> Vec<SwapRecord> {
        wait_for("the swaps' records to end", LONG, || {
            let swaps = self.swaps();
            swaps.iter().all(|s| s.result != "Running").then_some(swaps)
        })
    }

    /// Waits for a main request mentioning `needle`; returns the last such.
    pub fn request_with(&self, needle: &str) -> super::fake_api::Recorded {
        let reqs = self.api.wait_for(
            |r| r.iter().any(|q| q.is_main() && q.mentions(needle)),
            LONG,
        );
        reqs.into_iter()
            .rev()
            .find(|q| q.is_main() && q.mentions(needle))
            .unwrap()
    }

    /// The swap lease: (held, epoch).
    pub fn swap_lease(&self) -> (bool, u64) {
        let store = claude_failover::store::Store::open(self.env.store()).unwrap();
        store
            .api::<claude_failover::api::Lease>(Some(claude_failover::api::SYSTEM_NAMESPACE))
            .get(claude_failover::api::SWAP_LEASE)
            .unwrap()
            .map(|l| (l.spec.holder_identity.is_some(), l.spec.epoch))
            .unwrap_or((false, 0))
    }

    pub fn account(&self, name: &str) -> Option<Value> {
        let out = self
            .cli(&["get", "account", name, "-o", "json"])
            .output()
            .unwrap();
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).unwrap())
    }

    /// Waits until the Account's object satisfies `pred`; returns it.
    pub fn wait_account(&self, name: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        wait_for(&format!("account {name}: {what}"), LONG, || {
            self.account(name).filter(|v| pred(v))
        })
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.env.path(rel)
    }

    pub fn socket(&self) -> PathBuf {
        self.path("tmux.sock")
    }

    pub fn workdir(&self) -> PathBuf {
        self.path("work")
    }

    /// The CLI with the pool's config.
    pub fn cli(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.arg("--config").arg(self.path("config.yaml")).args(args);
        c.env_remove("CLAUDE_FAILOVER_STORE")
            .env_remove("TMUX")
            .env("HOME", self.env.dir.path());
        c
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args).output().unwrap();
        assert!(
            out.status.success(),
            "claude-failover {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn apply(&self, yaml: &str) {
        let f = self.path(&format!("m-{}.yaml", uuid_like()));
        std::fs::write(&f, yaml).unwrap();
        self.ok(&["apply", "-f", f.to_str().unwrap()]);
    }

    /// Starts a daemon; returns its index (for `kill_daemon`).
    pub fn start_daemon(&mut self) -> usize {
        self.start_daemon_with(&["--log-level", "claude_failover=debug,info"], &[])
    }

    /// Starts a daemon with more `run` arguments and environment variables.
    pub fn start_daemon_with(&mut self, args: &[&str], vars: &[(&str, &str)]) -> usize {
        let i = self.daemons.len();
        let log = std::fs::File::create(self.path(&format!("daemon-{i}.log"))).unwrap();
        let mut cmd = self.cli(&["run"]);
        cmd.args(args);
        for (k, v) in vars {
            cmd.env(k, v);
        }
        let out = std::fs::File::create(self.path(&format!("daemon-{i}.out"))).unwrap();
        let child = cmd.stdout(out).stderr(log).spawn().unwrap();
        self.daemons.push(Some(child));
        i
    }

    /// Puts the pool's store at `location` (an etcd URL), before a daemon
    /// starts.
    pub fn use_store(&self, location: &str) {
        let config = self.path("config.yaml");
        let d = self.env.dir.path().display().to_string();
        let text = std::fs::read_to_string(&config).unwrap().replace(
            &format!("store: {d}/store\n"),
            &format!("store: {location}\n"),
        );
        std::fs::write(&config, text).unwrap();
    }

    /// The config of a second node beside the first (`config-b.yaml`): its
    /// own state dir, listener and tmux server (`tmux-b.sock`); the same
    /// store, transcripts folder (the machine's) and fake API.
    pub fn second_node_config(&self) -> PathBuf {
        let d = self.env.dir.path().display().to_string();
        let text = std::fs::read_to_string(self.path("config.yaml"))
            .unwrap()
            .replace(
                &format!("stateDir: {d}/state\n"),
                &format!("stateDir: {d}/state-b\n"),
            )
            .replace(
                &format!("listen: 127.0.0.1:{}\n", self.port),
                &format!("listen: 127.0.0.1:{}\n", free_port()),
            )
            .replace(
                &format!("tmuxSocket: {d}/tmux.sock\n"),
                &format!("tmuxSocket: {d}/tmux-b.sock\n"),
            );
        let config = self.path("config-b.yaml");
        std::fs::write(&config, text).unwrap();
        config
    }

    /// Starts a daemon with another config file (another node beside the
    /// first: its own state dir, listener and tmux server).
    pub fn start_daemon_from(&mut self, config: &Path, args: &[&str]) -> usize {
        let i = self.daemons.len();
        let log = std::fs::File::create(self.path(&format!("daemon-{i}.log"))).unwrap();
        let out = std::fs::File::create(self.path(&format!("daemon-{i}.out"))).unwrap();
        let child = Command::new(BIN)
            .arg("--config")
            .arg(config)
            .arg("run")
            .args(args)
            .env_remove("CLAUDE_FAILOVER_STORE")
            .env_remove("TMUX")
            .env("HOME", self.env.dir.path())
            .stdout(out)
            .stderr(log)
            .spawn()
            .unwrap();
        self.daemons.push(Some(child));
        i
    }

    /// How many main requests carried `text` as their newest user message.
    pub fn deliveries(&self, text: &str) -> usize {
        self.api
            .main_requests()
            .iter()
            .filter(|r| r.last_user_text().is_some_and(|t| t.contains(text)))
            .count()
    }

    /// The control plane's URL (`http://127.0.0.1:PORT`).
    pub fn api_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn daemon_log(&self, i: usize) -> String {
        std::fs::read_to_string(self.path(&format!("daemon-{i}.log"))).unwrap_or_default()
    }

    pub fn wait_log(&self, i: usize, needle: &str) {
        wait_for(&format!("daemon {i} to log {needle:?}"), LONG, || {
            self.daemon_log(i).contains(needle).then_some(())
        });
    }

    /// Stops daemon `i` with a signal (`libc::SIGTERM`, `libc::SIGKILL`).
    pub fn signal_daemon(&mut self, i: usize, sig: i32) {
        let mut child = self.daemons[i].take().expect("running");
        unsafe { libc::kill(child.id() as i32, sig) };
        child.wait().unwrap();
    }

    /// An Account whose config dir is `accounts/NAME`.
    pub fn account_yaml(&self, name: &str, priority: i32) -> String {
        format!(
            "apiVersion: claude-failover.io/v1alpha1\nkind: Account\nmetadata:\n  name: {name}\nspec:\n  configDir: {}\n  priority: {priority}\n",
            self.path(&format!("accounts/{name}")).display()
        )
    }

    /// An Account with its own subscription credentials in its config dir
    /// (`.credentials.json`, as on a real Linux machine): the token only has
    /// the inference scope, so Claude Code fetches no profile from the
    /// public host.
    pub fn account_with_token(&self, name: &str, priority: i32, token: &str) -> String {
        let dir = self.path(&format!("accounts/{name}"));
        std::fs::create_dir_all(&dir).unwrap();
        let creds = serde_json::json!({"claudeAiOauth": {
            "accessToken": token,
            "refreshToken": format!("sk-ant-ort01-refresh-{name}"),
            "expiresAt": 4102444800000u64,
            "scopes": ["user:inference"],
            "subscriptionType": "max",
        }});
        std::fs::write(dir.join(".credentials.json"), creds.to_string()).unwrap();
        self.account_yaml(name, priority)
    }

    /// The environment that keeps Claude Code on the fake API.
    pub fn agent_env(&self) -> Vec<(String, String)> {
        [
            ("ANTHROPIC_BASE_URL", self.api.url()),
            ("DISABLE_TELEMETRY", "1".into()),
            ("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1".into()),
            ("DISABLE_AUTOUPDATER", "1".into()),
            ("DISABLE_ERROR_REPORTING", "1".into()),
            (
                "CLAUDE_CODE_DISABLE_OFFICIAL_MARKETPLACE_AUTOINSTALL",
                "1".into(),
            ),
            ("IS_SANDBOX", "1".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// Writes `value` to `secrets/NAME` (mode 0600) and returns its path.
    pub fn secret_file(&self, name: &str, value: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let p = self.path(&format!("secrets/{name}"));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, format!("{value}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        p
    }

    /// A Session running the real Claude Code in the pool's workdir, in
    /// bypass mode (tools run without asking; `extra_env` values that are
    /// keys go to files, `valueFrom`).
    pub fn session_yaml(
        &self,
        name: &str,
        account: Option<&str>,
        extra_env: &[(&str, &str)],
    ) -> String {
        self.session_yaml_in_mode(name, account, extra_env, "bypassPermissions")
    }

    /// The same in another permission mode (`spec.agent.permissionMode`).
    pub fn session_yaml_in_mode(
        &self,
        name: &str,
        account: Option<&str>,
        extra_env: &[(&str, &str)],
        mode: &str,
    ) -> String {
        let mut env: String = self
            .agent_env()
            .iter()
            .map(|(k, v)| format!("      {k}: \"{v}\"\n"))
            .collect();
        for (k, v) in extra_env {
            // Keys and tokens never go into the store: a file read at launch.
            if claude_failover::agent::env::looks_secret(k, v).is_some() {
                let file = self.secret_file(&format!("{name}-{k}"), v);
                env.push_str(&format!(
                    "      {k}: {{valueFrom: {{file: \"{}\"}}}}\n",
                    file.display()
                ));
            } else {
                env.push_str(&format!("      {k}: \"{v}\"\n"));
            }
        }
        let account = account
            .map(|a| format!("  account: {a}\n"))
            .unwrap_or_default();
        format!(
            "apiVersion: claude-failover.io/v1alpha1\nkind: Session\nmetadata:\n  name: {name}\nspec:\n  workdir: {}\n{account}  agent:\n    command: {}\n    permissionMode: {mode}\n    env:\n{env}",
            self.workdir().display(),
            self.claude.display()
        )
    }

    /// A Task (`extra` goes under spec, indented two spaces).
    pub fn task_yaml(&self, name: &str, prompt: &str, extra: &str) -> String {
        format!(
            "apiVersion: claude-failover.io/v1alpha1\nkind: Task\nmetadata:\n  name: {name}\nspec:\n  prompt: \"{prompt}\"\n{extra}"
        )
    }

    pub fn task(&self, name: &str) -> Option<Value> {
        let out = self
            .cli(&["get", "task", name, "-o", "json"])
            .output()
            .unwrap();
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).unwrap())
    }

    pub fn wait_task_phase(&self, name: &str, phase: &str) -> Value {
        wait_for(&format!("task {name}: phase {phase}"), LONG, || {
            self.task(name).filter(|v| v["status"]["phase"] == phase)
        })
    }

    pub fn session(&self, name: &str) -> Option<Value> {
        let out = self
            .cli(&["get", "session", name, "-o", "json"])
            .output()
            .unwrap();
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).unwrap())
    }

    /// Waits until the Session's object satisfies `pred`; returns it.
    pub fn wait_session(&self, name: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        wait_for(&format!("session {name}: {what}"), LONG, || {
            self.session(name).filter(|v| pred(v))
        })
    }

    pub fn wait_phase(&self, name: &str, phase: &str) -> Value {
        self.wait_session(name, &format!("phase {phase}"), |v| {
            v["status"]["phase"] == phase
        })
    }

    /// `tmux` on the pool's socket.
    pub fn tmux(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .arg("-S")
            .arg(self.socket())
            .args(args)
            .env_remove("TMUX")
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Types a prompt into a session's pane and submits it, as the daemon
    /// does (the project's tmux driver types the text in one call), once
    /// its composer is on screen and empty (a hook can say Idle before
    /// Claude Code takes keys). Enter goes once the composer shows the text
    /// (an Enter read with the text is part of a paste), and again while
    /// the composer still holds it ([`Pool::press_enter_until`]; a late
    /// second one lands in an empty composer, where it does nothing).
    pub fn type_prompt(&self, session: &str, text: &str) {
        wait_for(&format!("the composer of {session}"), LONG, || {
            claude_failover::agent::screen::composer_text(&self.screen(session))
                .filter(|t| t.is_empty())
        });
        let tmux = claude_failover::tmux::Tmux::new(self.socket());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let pane = rt.block_on(async {
            let pane = tmux.pane(session).await.unwrap();
            let pane = pane.expect("the session's pane");
            tmux.send_text(&pane.id, text).await.unwrap();
            pane
        });
        // Followed in the pane it was typed into: a move can replace the
        // agent meanwhile (its pane gone, nothing captured), and then the
        // prompt went with the old one.
        let screen = || self.tmux(&["capture-pane", "-p", "-t", &pane.id]);
        wait_for(
            &format!("{text:?} in the composer of {session}"),
            LONG,
            || {
                let s = screen();
                let shown = claude_failover::agent::screen::composer_text(&s)
                    .is_some_and(|t| !t.is_empty());
                (s.is_empty() || shown).then_some(())
            },
        );
        self.press_enter_until(&pane.id, &format!("{text:?} submitted in {session}"), |s| {
            claude_failover::agent::screen::composer_text(s).is_none_or(|t| t.is_empty())
        });
    }

    /// Presses Enter in `target` (a pane id or `=SESSION:`) until `taken`
    /// says of its screen that the key was taken, pressing it again every
    /// [`ENTER_AGAIN_AFTER`]: what is drawn does not always listen yet,
    /// and a key pressed before it does is lost. A target gone shows an
    /// empty screen.
    pub fn press_enter_until(&self, target: &str, what: &str, taken: impl Fn(&str) -> bool) {
        let mut pressed: Option<std::time::Instant> = None;
        wait_for(what, LONG, || {
            let screen = self.tmux(&["capture-pane", "-p", "-t", target]);
            if pressed.is_some() && taken(&screen) {
                return Some(());
            }
            if pressed.is_none_or(|at| at.elapsed() >= ENTER_AGAIN_AFTER) {
                self.tmux(&["send-keys", "-t", target, "Enter"]);
                pressed = Some(std::time::Instant::now());
            }
            None
        });
    }

    pub fn screen(&self, session: &str) -> String {
        self.tmux(&["capture-pane", "-p", "-t", &format!("={session}:")])
    }
}

fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

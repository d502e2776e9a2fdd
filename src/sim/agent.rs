//! The agent itself: start-up checks, then one event loop on the main
//! thread that sleeps in `recv` until a key, a signal, a statusLine output
//! or a usage change arrives (or a timer of a running turn is due).

use super::hooks;
use super::pidfile::PidFile;
use super::render::{self, Frame, Mode};
use super::statusline::StatusLine;
use super::term::{self, Key, Terminal};
use super::transcript::{self, Said, Transcript, Usage};
use super::usage::{self, Account, Spend};
use super::{Knobs, VERSION, clock};
use serde_json::{Map, Value, json};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Ctrl-C (or Ctrl-D) pressed again within this exits.
const CTRL_C_WINDOW: Duration = Duration::from_secs(2);
/// After the reset, when Claude Code's own continuation fires (2.1.332
/// waited about a minute; the simulator, a moment).
const AUTO_CONTINUE_AFTER: Duration = Duration::from_secs(2);
/// What it submits then (2.1.332's words).
const AUTO_CONTINUE: &str = "Your claude.ai usage limit has reset. Continue the task you were \
     working on when the limit was reached; do not repeat work that is already complete.";
/// The limit dialog's choices: stop, wait and continue, upgrade.
const LIMIT_CHOICES: usize = 3;
/// Longest wait for the `SessionEnd` hooks at exit.
const END_HOOKS_WAIT: Duration = Duration::from_secs(10);
/// Lines of conversation kept for the screen.
const HISTORY_KEPT: usize = 400;
/// A reply quotes this much of the prompt's first line.
const REPLY_QUOTE: usize = 60;

pub enum Ev {
    Key(Key),
    Signal(i32),
    StatusLine(Option<String>),
    UsageChanged,
}

/// A model as the statusLine input and the transcript name it.
#[derive(Debug, Clone, PartialEq)]
struct Model {
    id: String,
    display: String,
}

impl Model {
    /// Aliases as Claude Code 2.1.197 resolved them where observed
    /// (`sonnet`, `haiku`); other names are taken as model ids.
    fn resolve(name: &str) -> Model {
        let name = name.trim();
        let name = name.strip_suffix("[1m]").unwrap_or(name);
        let (id, display) = match name {
            "" | "default" | "sonnet" => ("claude-sonnet-5".to_string(), None),
            "opus" => ("claude-opus-5".to_string(), None),
            "haiku" => ("claude-haiku-4-5-20251001".to_string(), None),
            other => (other.to_string(), None::<String>),
        };
        let display = display.unwrap_or_else(|| display_name(&id));
        Model { id, display }
    }
}

/// `claude-sonnet-5` → `Sonnet 5`, `claude-haiku-4-5-20251001` → `Haiku 4.5`.
fn display_name(id: &str) -> String {
    let parts: Vec<&str> = id
        .strip_prefix("claude-")
        .unwrap_or(id)
        .split('-')
        .filter(|p| !(p.len() == 8 && p.chars().all(|c| c.is_ascii_digit())))
        .collect();
    let Some((family, version)) = parts.split_first() else {
        return id.to_string();
    };
    let mut f = family.chars();
    let family: String = f
        .next()
        .map(|c| c.to_uppercase().chain(f).collect())
        .unwrap_or_default();
    if version.is_empty() {
        family
    } else {
        format!("{family} {}", version.join("."))
    }
}

struct Turn {
    prompt: String,
    started: Instant,
    ends: Instant,
    verb: usize,
    usage: Usage,
}

enum Phase {
    Starting { until: Instant },
    Warning { selected: usize },
    Idle,
    Busy(Turn),
    Limit { selected: usize, resets_at: u64 },
}

struct Exit {
    reason: &'static str,
    code: u8,
    /// Print `claude --resume <id>`.
    hint: bool,
    /// Fire `SessionEnd`.
    end: bool,
}

/// Fixed for the life of the process.
struct Setup {
    session_id: String,
    cwd: PathBuf,
    config_dir: PathBuf,
    transcript_path: PathBuf,
    bypass: bool,
    /// `--permission-mode` (Claude Code's default: `auto`).
    mode: String,
    /// Claude Code's own continue-at-reset (`autoContinueAtUsageLimit`,
    /// on unless a settings file turns it off).
    auto_continue: bool,
    /// The bypass-mode warning was accepted in a settings file.
    skip_warning: bool,
    resumed: bool,
    knobs: Knobs,
    refresh_every: Option<Duration>,
}

struct Agent {
    s: Setup,
    model: Model,
    phase: Phase,
    header: Vec<String>,
    history: VecDeque<String>,
    composer: String,
    queue: VecDeque<String>,
    status_text: Option<String>,
    ctrl_c: Option<Instant>,
    hooks: hooks::Runner,
    statusline: Option<StatusLine>,
    next_refresh: Option<Instant>,
    /// When to say `idle_prompt` (armed when a turn ends).
    idle_notify_at: Option<Instant>,
    pid: PidFile,
    transcript: Transcript,
    account: Account,
    limits_key: Option<(u64, u64, Option<u64>, Option<u64>)>,
    next_reset: Option<u64>,
    /// Claude Code's own continuation, armed for this reset (epoch s).
    armed: Option<u64>,
    prompt_id: Option<String>,
    tokens_in: u64,
    tokens_out: u64,
    last_usage: Option<Usage>,
    api_ms: u64,
    started: Instant,
    size: (usize, usize),
    term: Terminal,
    last_paint: String,
    painted_rows: usize,
    exit: Option<Exit>,
    _watcher: Option<std::thread::JoinHandle<()>>,
    reader: term::Reader,
}

fn config_dir() -> PathBuf {
    match std::env::var_os("CLAUDE_CONFIG_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => crate::fsutil::home().join(".claude"),
    }
}

/// The `--settings` value: inline JSON or a file.
fn load_settings(arg: Option<&str>) -> Result<Value, String> {
    let Some(arg) = arg else {
        return Ok(json!({}));
    };
    if arg.trim_start().starts_with('{') {
        return serde_json::from_str(arg)
            .map_err(|e| format!("Error: Invalid JSON in --settings: {e}"));
    }
    let text = std::fs::read_to_string(arg)
        .map_err(|_| format!("Error: Settings file not found: {arg}"))?;
    serde_json::from_str(&text)
        .map_err(|e| format!("Error: Invalid JSON in settings file {arg}: {e}"))
}

/// The account's own `settings.json` (hooks there run too).
fn user_settings(config_dir: &Path) -> Value {
    std::fs::read(config_dir.join("settings.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_else(|| json!({}))
}

/// The hooks of both settings (the account's first), as one settings value.
fn merged_hooks(user: &Value, flag: &Value) -> Value {
    let mut out = Map::new();
    for s in [user, flag] {
        if let Some(h) = s.get("hooks").and_then(Value::as_object) {
            for (event, groups) in h {
                let e = out.entry(event.clone()).or_insert_with(|| json!([]));
                if let (Some(dst), Some(src)) = (e.as_array_mut(), groups.as_array()) {
                    dst.extend(src.iter().cloned());
                }
            }
        }
    }
    json!({ "hooks": out })
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Start-up failures come after the start-up delay, as Claude Code's do.
fn fail(msg: &str) -> ExitCode {
    std::thread::sleep(Knobs::from_env().startup);
    eprintln!("{msg}");
    term::release();
    ExitCode::from(1)
}

/// The conversation the agent starts with (`--resume`, `--continue`,
/// `--session-id` or a new one), and what it said so far; else the error
/// Claude Code prints.
fn conversation(
    a: &super::args::Args,
    config_dir: &Path,
    cwd: &Path,
) -> Result<(String, Option<transcript::Loaded>), String> {
    if let Some(id) = &a.resume {
        let p = transcript::path(config_dir, cwd, id);
        match transcript::load(&p) {
            Some(l) if l.has_message => Ok((id.clone(), Some(l))),
            _ => Err(format!("No conversation found with session ID: {id}")),
        }
    } else if a.continue_latest {
        let found = transcript::latest(config_dir, cwd).and_then(|id| {
            let l = transcript::load(&transcript::path(config_dir, cwd, &id))?;
            l.has_message.then_some((id, l))
        });
        match found {
            Some((id, l)) => Ok((id, Some(l))),
            None => Err("No conversation found to continue".into()),
        }
    } else if let Some(id) = &a.session_id {
        if uuid::Uuid::parse_str(id).is_err() {
            return Err("Error: Invalid session ID. Must be a valid UUID.".into());
        }
        Ok((id.clone(), None))
    } else {
        Ok((uuid::Uuid::new_v4().to_string(), None))
    }
}

/// The screen's history of a resumed conversation, and its last entry.
fn replayed(l: transcript::Loaded) -> (VecDeque<String>, Option<String>) {
    let mut history = VecDeque::new();
    for said in &l.said {
        match said {
            Said::User(t) => {
                push_prompt(&mut history, t);
                history.push_back(String::new());
            }
            Said::Assistant(t) => {
                history.push_back(format!("● {}", t.lines().next().unwrap_or_default()));
                history.push_back(String::new());
            }
        }
    }
    (history, l.last_uuid)
}

/// What the settings files say (the flag's first): the bypass-mode
/// warning accepted, and Claude Code's own continue at a reset (on unless
/// turned off).
fn skip_warning_and_auto_continue(settings: &[&Value]) -> (bool, bool) {
    let skip_warning = settings.iter().any(|s| {
        s.get("skipDangerousModePermissionPrompt")
            .and_then(Value::as_bool)
            == Some(true)
    });
    let auto_continue = settings
        .iter()
        .find_map(|s| s.get("autoContinueAtUsageLimit").and_then(Value::as_bool))
        .unwrap_or(true);
    (skip_warning, auto_continue)
}

/// A settings file's `statusLine`, if it runs a command.
fn statusline_of(s: &Value) -> Option<Value> {
    s.get("statusLine")
        .filter(|l| l.get("type").and_then(Value::as_str).unwrap_or("command") == "command")
        .cloned()
}

/// The statusLine's `refreshInterval` (at least 0.5 s), if set.
fn refresh_every(status_cfg: Option<&Value>) -> Option<Duration> {
    status_cfg
        .and_then(|c| c.get("refreshInterval"))
        .and_then(Value::as_f64)
        .filter(|s| *s > 0.0)
        .map(|s| Duration::from_secs_f64(s.max(0.5)))
}

/// The environment Claude Code gives its hooks and its statusLine command.
fn hook_env(setup: &Setup) -> Vec<(String, String)> {
    vec![
        ("CLAUDECODE".to_string(), "1".to_string()),
        ("CLAUDE_CODE_ENTRYPOINT".into(), "cli".into()),
        ("CLAUDE_CODE_SESSION_ID".into(), setup.session_id.clone()),
        (
            "CLAUDE_PROJECT_DIR".into(),
            setup.cwd.to_string_lossy().into_owned(),
        ),
    ]
}

/// What feeds the loop besides its timers, each sending to `tx`: the
/// statusLine command (if set) with a watch of the account's usage files
/// for it, the keys read from the terminal, and the signals.
fn listen(
    setup: &Setup,
    status_cfg: Option<&Value>,
    hook_env: &[(String, String)],
    tx: &mpsc::Sender<Ev>,
) -> (
    Option<StatusLine>,
    Option<std::thread::JoinHandle<()>>,
    term::Reader,
) {
    let statusline = status_cfg
        .and_then(|c| c.get("command"))
        .and_then(Value::as_str)
        .map(|cmd| {
            let tx = tx.clone();
            StatusLine::start(
                cmd.to_string(),
                hook_env.to_vec(),
                setup.cwd.clone(),
                move |l| {
                    let _ = tx.send(Ev::StatusLine(l));
                },
            )
        });
    let watcher = statusline
        .as_ref()
        .and_then(|_| watch_usage(&setup.config_dir, tx.clone()));
    let reader = {
        let tx = tx.clone();
        term::spawn_reader(move |k| tx.send(Ev::Key(k)).is_ok())
    };
    let signals = tx.clone();
    term::spawn_signal_waiter(move |s| signals.send(Ev::Signal(s)).is_ok());
    (statusline, watcher, reader)
}

/// The agent's terminal and what feeds its loop.
struct Io {
    term: Terminal,
    hooks: hooks::Runner,
    statusline: Option<StatusLine>,
    watcher: Option<std::thread::JoinHandle<()>>,
    reader: term::Reader,
}

impl Agent {
    /// An agent starting: `said`, the screen's history of a resumed
    /// conversation and its last entry; `queue`, the prompt given on the
    /// command line.
    fn new(
        setup: Setup,
        model: Model,
        said: (VecDeque<String>, Option<String>),
        queue: VecDeque<String>,
        io: Io,
    ) -> Agent {
        let (history, last_uuid) = said;
        let Io {
            term,
            hooks,
            statusline,
            watcher,
            reader,
        } = io;
        Agent {
            header: vec![
                " Claude Code (simulated by claude-failover sim-agent)".into(),
                format!(" {} · {}", model.display, setup.cwd.display()),
                String::new(),
            ],
            pid: PidFile::new(&setup.config_dir, &setup.session_id, &setup.cwd),
            transcript: Transcript::new(
                setup.transcript_path.clone(),
                &setup.session_id,
                &setup.cwd,
                last_uuid,
            ),
            account: Account::new(&setup.config_dir),
            phase: Phase::Starting {
                until: Instant::now() + setup.knobs.startup,
            },
            model,
            history,
            composer: String::new(),
            queue,
            status_text: None,
            ctrl_c: None,
            hooks,
            statusline,
            next_refresh: None,
            idle_notify_at: None,
            limits_key: None,
            next_reset: None,
            armed: None,
            prompt_id: None,
            tokens_in: 0,
            tokens_out: 0,
            last_usage: None,
            api_ms: 0,
            started: Instant::now(),
            size: term::size(),
            term,
            last_paint: String::new(),
            painted_rows: 0,
            exit: None,
            _watcher: watcher,
            reader,
            s: setup,
        }
    }
}

pub fn main(argv: &[String]) -> ExitCode {
    // Before any thread exists, so that all of them inherit the mask.
    term::block_signals();
    let a = match super::args::parse(argv) {
        Ok(a) => a,
        Err(e) => return fail(&e),
    };
    if a.version {
        println!(
            "{VERSION} (claude-failover sim-agent, simulating Claude Code {})",
            crate::agent::screen::OBSERVED_ON
        );
        return ExitCode::SUCCESS;
    }
    let Ok(cwd) = std::env::current_dir() else {
        return fail("Error: cannot read the current directory");
    };
    let config_dir = config_dir();
    if a.bypass && is_root() && std::env::var("IS_SANDBOX").as_deref() != Ok("1") {
        return fail(
            "--dangerously-skip-permissions cannot be used with root/sudo privileges for security reasons",
        );
    }
    let flag_settings = match load_settings(a.settings.as_deref()) {
        Ok(v) => v,
        Err(e) => return fail(&e),
    };
    let user = user_settings(&config_dir);
    let (session_id, loaded) = match conversation(&a, &config_dir, &cwd) {
        Ok(x) => x,
        Err(e) => return fail(&e),
    };
    let status_cfg = statusline_of(&flag_settings).or_else(|| statusline_of(&user));
    let (skip_warning, auto_continue) = skip_warning_and_auto_continue(&[&flag_settings, &user]);
    let setup = Setup {
        transcript_path: transcript::path(&config_dir, &cwd, &session_id),
        session_id,
        cwd,
        config_dir,
        bypass: a.bypass,
        mode: a.permission_mode.clone().unwrap_or_else(|| "auto".into()),
        resumed: loaded.is_some(),
        knobs: Knobs::from_env(),
        auto_continue,
        skip_warning,
        refresh_every: refresh_every(status_cfg.as_ref()),
    };
    let _ = std::fs::create_dir_all(&setup.config_dir);
    let (tx, rx) = mpsc::channel::<Ev>();
    let term = Terminal::enter();
    let hook_env = hook_env(&setup);
    let hooks = hooks::Runner::new(
        hooks::Config::from_settings(&merged_hooks(&user, &flag_settings)),
        hook_env.clone(),
        setup.cwd.clone(),
    );
    let (statusline, watcher, reader) = listen(&setup, status_cfg.as_ref(), &hook_env, &tx);
    let said = loaded.map(replayed).unwrap_or_default();
    let model = Model::resolve(a.model.as_deref().unwrap_or("sonnet"));
    let io = Io {
        term,
        hooks,
        statusline,
        watcher,
        reader,
    };
    let agent = Agent::new(setup, model, said, a.prompt.into_iter().collect(), io);
    agent.run(rx)
}

/// Tells the loop when the account's ledger or budget changes (another
/// agent on the same account spent tokens). Only writes are watched, as
/// Claude Code's own file watches do: a watch that also took opens (what
/// `notify` asks the kernel for) made every read of the config dir by the
/// daemon wake each of 500 simulated agents, in the reader's own time.
fn watch_usage(dir: &Path, tx: mpsc::Sender<Ev>) -> Option<std::thread::JoinHandle<()>> {
    use inotify::{Inotify, WatchMask};
    let mut inotify = Inotify::init().ok()?;
    let mask = WatchMask::CLOSE_WRITE | WatchMask::MOVED_TO | WatchMask::CREATE | WatchMask::DELETE;
    inotify.watches().add(dir, mask).ok()?;
    let thread = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(events) = inotify.read_events_blocking(&mut buf) {
            let ours = events.into_iter().any(|e| {
                e.name
                    .is_some_and(|n| n == usage::LEDGER_FILE || n == usage::BUDGET_FILE)
            });
            if ours && tx.send(Ev::UsageChanged).is_err() {
                return;
            }
        }
    });
    Some(thread)
}

/// A submitted prompt as the conversation shows it.
fn push_prompt(history: &mut VecDeque<String>, prompt: &str) {
    const SHOWN: usize = 12;
    let lines: Vec<&str> = prompt.lines().collect();
    for (i, l) in lines.iter().take(SHOWN).enumerate() {
        history.push_back(if i == 0 {
            format!("❯ {l}")
        } else {
            format!("  {l}")
        });
    }
    if lines.len() > SHOWN {
        history.push_back(format!("  … +{} lines", lines.len() - SHOWN));
    }
}

/// `ok: <first line of the prompt>`, shortened.
pub fn reply_to(prompt: &str) -> String {
    let first = prompt.lines().next().unwrap_or_default().trim();
    let mut quote: String = first.chars().take(REPLY_QUOTE).collect();
    if first.chars().count() > REPLY_QUOTE {
        quote.push('…');
    }
    format!("ok: {quote}")
}

fn instant_of_epoch(epoch_s: u64) -> Instant {
    let now = clock::now_ms();
    let at = epoch_s * 1000 + 5;
    Instant::now() + Duration::from_millis(at.saturating_sub(now))
}

impl Agent {
    fn run(mut self, rx: mpsc::Receiver<Ev>) -> ExitCode {
        let mut start = self.base("SessionStart");
        start.insert(
            "source".into(),
            json!(if self.s.resumed { "resume" } else { "startup" }),
        );
        if !self.s.resumed {
            start.insert("model".into(), json!(self.model.id));
        }
        let source = if self.s.resumed { "resume" } else { "startup" };
        self.hooks
            .fire("SessionStart", &Value::Object(start), Some(source));
        self.refresh_status();
        self.paint();
        loop {
            let ev = match self.next_wake() {
                Some(at) => rx
                    .recv_timeout(at.saturating_duration_since(Instant::now()))
                    .ok(),
                None => rx.recv().ok(),
            };
            if let Some(ev) = ev {
                // Take whatever else is waiting too; usage changes are
                // looked at once per batch.
                let mut usage_changed = false;
                for ev in std::iter::once(ev).chain(rx.try_iter()) {
                    match ev {
                        Ev::UsageChanged => usage_changed = true,
                        ev => self.handle(ev),
                    }
                }
                if usage_changed {
                    self.usage_check();
                }
            }
            self.tick();
            if let Some(x) = self.exit.take() {
                return self.finish(x);
            }
            self.paint();
        }
    }

    // ---- payloads -------------------------------------------------------

    /// The fields every hook payload has.
    fn base(&self, event: &str) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("session_id".into(), json!(self.s.session_id));
        m.insert(
            "transcript_path".into(),
            json!(self.s.transcript_path.to_string_lossy()),
        );
        m.insert("cwd".into(), json!(self.s.cwd.to_string_lossy()));
        m.insert("hook_event_name".into(), json!(event));
        m
    }

    fn permission_mode(&self) -> &str {
        &self.s.mode
    }

    fn fire(&self, event: &str, fields: Value, subject: Option<&str>) {
        let mut m = self.base(event);
        if let Value::Object(f) = fields {
            m.extend(f);
        }
        if let Some(p) = &self.prompt_id {
            m.entry("prompt_id").or_insert_with(|| json!(p));
        }
        self.hooks.fire(event, &Value::Object(m), subject);
    }

    /// The statusLine input, as Claude Code builds it.
    fn status_input(&mut self) -> Value {
        let cwd = self.s.cwd.to_string_lossy().into_owned();
        let ctx = self.tokens_in
            + self
                .last_usage
                .map(|u| u.cache_read_input_tokens)
                .unwrap_or(0);
        let mut v = json!({
            "session_id": self.s.session_id,
            "transcript_path": self.s.transcript_path.to_string_lossy(),
            "cwd": cwd,
            "model": {"id": self.model.id, "display_name": self.model.display},
            "workspace": {"current_dir": cwd, "project_dir": cwd, "added_dirs": []},
            "version": VERSION,
            "output_style": {"name": "default"},
            "cost": {
                "total_cost_usd": 0.0,
                "total_duration_ms": self.started.elapsed().as_millis() as u64,
                "total_api_duration_ms": self.api_ms,
                "total_lines_added": 0,
                "total_lines_removed": 0,
            },
            "context_window": {
                "total_input_tokens": self.tokens_in,
                "total_output_tokens": self.tokens_out,
                "context_window_size": 200_000,
                "current_usage": self.last_usage.map(Usage::to_json),
                "used_percentage": (ctx * 100 / 200_000).min(100),
                "remaining_percentage": 100 - (ctx * 100 / 200_000).min(100),
            },
            "exceeds_200k_tokens": false,
        });
        if let Some(p) = &self.prompt_id {
            v["prompt_id"] = json!(p);
        }
        let limits = self.account.limits(clock::now_s());
        self.limits_key = limits.map(|l| l.key());
        self.next_reset = limits.and_then(|l| l.next_reset());
        if let Some(l) = limits {
            v["rate_limits"] = l.to_json();
        }
        v
    }

    fn refresh_status(&mut self) {
        if self.statusline.is_none() {
            return;
        }
        let input = self.status_input();
        if let Some(s) = &self.statusline {
            s.request(&input);
        }
        self.next_refresh = self.s.refresh_every.map(|d| Instant::now() + d);
    }

    /// Refreshes the statusLine when the account's utilization moved.
    fn usage_check(&mut self) {
        if self.statusline.is_none() {
            return;
        }
        let key = self.account.limits(clock::now_s()).map(|l| l.key());
        if key != self.limits_key {
            self.refresh_status();
        }
    }

    // ---- the loop -------------------------------------------------------

    fn next_wake(&self) -> Option<Instant> {
        let mut at: Vec<Instant> = Vec::new();
        match &self.phase {
            Phase::Starting { until } => at.push(*until),
            Phase::Busy(t) => {
                at.push(t.ends);
                let secs = t.started.elapsed().as_secs() + 1;
                at.push(t.started + Duration::from_secs(secs));
            }
            _ => {}
        }
        if let Some(c) = self.ctrl_c {
            at.push(c + CTRL_C_WINDOW);
        }
        if self.statusline.is_some() {
            at.extend(self.next_reset.map(instant_of_epoch));
            at.extend(self.next_refresh);
        }
        at.extend(self.idle_notify_at);
        at.extend(
            self.armed
                .map(|r| instant_of_epoch(r) + AUTO_CONTINUE_AFTER),
        );
        at.into_iter().min()
    }

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Key(k) => self.key(k),
            Ev::Signal(libc::SIGTERM) => self.quit("other", 143, true),
            Ev::Signal(libc::SIGHUP) => {
                self.exit = Some(Exit {
                    reason: "other",
                    code: 129,
                    hint: false,
                    end: true,
                })
            }
            Ev::Signal(libc::SIGINT) => self.key(Key::CtrlC),
            Ev::Signal(_) => {
                // SIGWINCH
                self.size = term::size();
                self.last_paint.clear();
            }
            Ev::StatusLine(l) => self.status_text = l,
            Ev::UsageChanged => self.usage_check(),
        }
    }

    fn tick(&mut self) {
        let now = Instant::now();
        match &self.phase {
            Phase::Starting { until } if now >= *until => self.ready(),
            Phase::Busy(t) if now >= t.ends => self.finish_turn(),
            _ => {}
        }
        if self.ctrl_c.is_some_and(|c| now >= c + CTRL_C_WINDOW) {
            self.ctrl_c = None;
        }
        if self.next_reset.is_some_and(|r| clock::now_s() >= r) {
            self.next_reset = None;
            self.usage_check();
        }
        if self.idle_notify_at.is_some_and(|t| now >= t) {
            self.idle_notify_at = None;
            if matches!(self.phase, Phase::Idle) {
                self.fire(
                    "Notification",
                    json!({
                        "message": "Claude is waiting for your input",
                        "notification_type": "idle_prompt",
                    }),
                    Some("idle_prompt"),
                );
            }
        }
        if self.next_refresh.is_some_and(|r| now >= r) {
            self.refresh_status();
        }
        if self
            .armed
            .is_some_and(|r| clock::now_ms() >= r * 1000 + AUTO_CONTINUE_AFTER.as_millis() as u64)
            && matches!(self.phase, Phase::Idle)
        {
            self.armed = None;
            self.fire(
                "Notification",
                json!({
                    "message": "Usage limit reset — Claude is continuing your task",
                    "notification_type": "quota_auto_resume_fired",
                }),
                Some("quota_auto_resume_fired"),
            );
            self.push_history("● Usage limit reset · Continuing automatically".into());
            self.submit(AUTO_CONTINUE);
        }
    }

    fn quit(&mut self, reason: &'static str, code: u8, end: bool) {
        self.exit = Some(Exit {
            reason,
            code,
            hint: true,
            end,
        });
    }

    fn finish(mut self, x: Exit) -> ExitCode {
        self.paint();
        if x.end {
            self.fire("SessionEnd", json!({"reason": x.reason}), Some(x.reason));
        }
        self.pid.remove();
        let mut tail = format!("\x1b[{};1H\r\n", self.painted_rows.max(1));
        if x.hint {
            tail.push_str(&format!(
                "Resume this session with:\r\nclaude --resume {}\r\n",
                self.s.session_id
            ));
        }
        term::write_out(tail.as_bytes());
        self.term.restore();
        self.hooks.drain(END_HOOKS_WAIT);
        self.reader.stop();
        term::release();
        ExitCode::from(x.code)
    }

    // ---- keys -----------------------------------------------------------

    fn key(&mut self, k: Key) {
        if k == Key::Closed {
            self.exit = Some(Exit {
                reason: "other",
                code: 129,
                hint: false,
                end: true,
            });
            return;
        }
        if matches!(k, Key::CtrlC) || (k == Key::CtrlD && self.composer.is_empty()) {
            return self.ctrl_c();
        }
        match &mut self.phase {
            Phase::Warning { selected } => match k {
                Key::Up | Key::Down => *selected = 1 - *selected,
                Key::Char('1') => *selected = 0,
                Key::Char('2') => *selected = 1,
                Key::Enter if *selected == 1 => self.enter_idle(),
                Key::Enter | Key::Esc => self.quit("other", 1, false),
                _ => {}
            },
            Phase::Limit {
                selected,
                resets_at,
            } => match k {
                Key::Up => *selected = (*selected + LIMIT_CHOICES - 1) % LIMIT_CHOICES,
                Key::Down => *selected = (*selected + 1) % LIMIT_CHOICES,
                Key::Char(c @ '1'..='3') => *selected = c as usize - '1' as usize,
                Key::Enter if *selected == 1 => {
                    // Wait here, then continue automatically.
                    let r = *resets_at;
                    self.dismiss_limit();
                    self.armed = Some(r);
                }
                Key::Enter | Key::Esc => self.dismiss_limit(),
                _ => {}
            },
            Phase::Starting { .. } | Phase::Idle | Phase::Busy(_) => self.edit(k),
        }
    }

    fn edit(&mut self, k: Key) {
        let busy = matches!(self.phase, Phase::Busy(_));
        match k {
            Key::Char(c) => self.composer.push(c),
            Key::Paste(s) => self.composer.push_str(&s),
            Key::Backspace => {
                self.composer.pop();
            }
            Key::CtrlU => self.composer.clear(),
            Key::Enter => {
                let text = std::mem::take(&mut self.composer);
                match self.phase {
                    Phase::Idle => self.submit(&text),
                    _ if text.trim().is_empty() => {}
                    _ => self.queue.push_back(text),
                }
            }
            Key::Esc if busy => self.interrupt(),
            Key::Esc if self.armed.is_some() => self.armed = None,
            Key::Up if busy && !self.queue.is_empty() => self.unqueue(),
            _ => {}
        }
    }

    fn ctrl_c(&mut self) {
        if self.ctrl_c.is_some_and(|c| c.elapsed() < CTRL_C_WINDOW) {
            return self.quit("prompt_input_exit", 0, true);
        }
        self.ctrl_c = Some(Instant::now());
        match self.phase {
            Phase::Busy(_) => self.interrupt(),
            Phase::Idle => self.composer.clear(),
            Phase::Limit { .. } => self.dismiss_limit(),
            Phase::Warning { .. } => self.quit("other", 1, false),
            Phase::Starting { .. } => {}
        }
    }

    /// Queued prompts go back into the composer.
    fn unqueue(&mut self) {
        if self.queue.is_empty() {
            return;
        }
        let mut parts: Vec<String> = self.queue.drain(..).collect();
        if !self.composer.is_empty() {
            parts.push(std::mem::take(&mut self.composer));
        }
        self.composer = parts.join("\n");
    }

    // ---- states ---------------------------------------------------------

    /// Start-up is over: the warning, or the composer.
    fn ready(&mut self) {
        if self.s.bypass && !self.s.skip_warning {
            self.phase = Phase::Warning { selected: 0 };
            return;
        }
        self.enter_idle();
    }

    fn enter_idle(&mut self) {
        self.phase = Phase::Idle;
        self.pid.set("idle", None);
        self.next_from_queue();
    }

    fn next_from_queue(&mut self) {
        while matches!(self.phase, Phase::Idle)
            && self.exit.is_none()
            && let Some(p) = self.queue.pop_front()
        {
            self.submit(&p);
        }
    }

    fn push_history(&mut self, line: String) {
        self.history.push_back(line);
        while self.history.len() > HISTORY_KEPT {
            self.history.pop_front();
        }
    }

    fn submit(&mut self, text: &str) {
        let prompt = text.trim();
        if prompt.is_empty() {
            return;
        }
        transcript::append_history(&self.s.config_dir, prompt, &self.s.cwd, &self.s.session_id);
        if prompt == "/exit" || prompt == "/quit" {
            self.push_history(format!("❯ {prompt}"));
            return self.quit("prompt_input_exit", 0, true);
        }
        if let Some(rest) = prompt.strip_prefix("/model")
            && (rest.is_empty() || rest.starts_with(char::is_whitespace))
        {
            return self.switch_model(rest.trim());
        }
        let prompt_id = uuid::Uuid::new_v4().to_string();
        self.prompt_id = Some(prompt_id.clone());
        self.idle_notify_at = None;
        push_prompt(&mut self.history, prompt);
        self.push_history(String::new());
        let _ = self.transcript.user(prompt, &prompt_id);
        self.fire(
            "UserPromptSubmit",
            json!({"prompt": prompt, "permission_mode": self.permission_mode()}),
            None,
        );
        let tokens = self.s.knobs.tokens_per_turn;
        let spend = self
            .account
            .spend(tokens, clock::now_s())
            .unwrap_or(Spend::Allowed);
        if let Some(msg) = spend.message() {
            return self.rate_limited(&msg, spend.resets_at().unwrap_or_default());
        }
        let now = Instant::now();
        self.phase = Phase::Busy(Turn {
            prompt: prompt.to_string(),
            started: now,
            ends: now + self.s.knobs.turn,
            verb: (uuid::Uuid::new_v4().as_bytes()[0] as usize) % render::VERBS.len(),
            usage: Usage::split(tokens),
        });
        self.pid.set("busy", None);
    }

    fn switch_model(&mut self, name: &str) {
        self.push_history(format!("❯ /model {name}").trim_end().to_string());
        if name.is_empty() {
            self.push_history(format!(
                "  ⎿  Current model: {} ({})",
                self.model.display, self.model.id
            ));
        } else {
            self.model = Model::resolve(name);
            self.push_history(format!(
                "  ⎿  Set model to {} ({})",
                self.model.display, self.model.id
            ));
            self.header[1] = format!(" {} · {}", self.model.display, self.s.cwd.display());
            self.refresh_status();
        }
        self.push_history(String::new());
    }

    /// The account refused the turn: what a subscription shows.
    fn rate_limited(&mut self, msg: &str, resets_at: u64) {
        let _ = self.transcript.rate_limited(msg, resets_at);
        self.push_history(format!("● {msg}"));
        self.push_history(String::new());
        self.fire(
            "StopFailure",
            json!({
                "error": "rate_limit",
                "last_assistant_message": msg,
                "effort": {"level": "high"},
            }),
            Some("rate_limit"),
        );
        self.unqueue();
        if self.s.auto_continue {
            // 2.1.332's default: no dialog, the continuation armed.
            self.push_history(format!(
                "● Usage limit reached · set to continue automatically at {}",
                super::clock::reset_text(resets_at, false)
            ));
            self.armed = Some(resets_at);
            self.phase = Phase::Idle;
            self.pid.set("idle", None);
        } else {
            self.phase = Phase::Limit {
                selected: 0,
                resets_at,
            };
            self.pid.set("waiting", Some("dialog open"));
        }
        self.refresh_status();
    }

    fn dismiss_limit(&mut self) {
        self.phase = Phase::Idle;
        self.pid.set("idle", None);
    }

    fn finish_turn(&mut self) {
        let Phase::Busy(t) = std::mem::replace(&mut self.phase, Phase::Idle) else {
            return;
        };
        let reply = reply_to(&t.prompt);
        let ms = t.started.elapsed().as_millis() as u64;
        let _ = self.transcript.assistant(&self.model.id, &reply, t.usage);
        let _ = self.transcript.turn_duration(ms);
        self.tokens_in += t.usage.input_tokens
            + t.usage.cache_creation_input_tokens
            + t.usage.cache_read_input_tokens;
        self.tokens_out += t.usage.output_tokens;
        self.last_usage = Some(t.usage);
        self.api_ms += ms;
        self.push_history(format!("● {reply}"));
        self.push_history(String::new());
        self.push_history(format!(
            "✻ {} for {}s",
            render::VERBS[t.verb].1,
            (ms + 500) / 1000
        ));
        self.push_history(String::new());
        self.fire(
            "Stop",
            json!({
                "last_assistant_message": reply,
                "permission_mode": self.permission_mode(),
                "effort": {"level": "high"},
                "stop_hook_active": false,
                "background_tasks": [],
                "session_crons": [],
            }),
            None,
        );
        self.pid.set("idle", None);
        self.idle_notify_at = self.s.knobs.idle_notify.map(|d| Instant::now() + d);
        self.refresh_status();
        self.next_from_queue();
    }

    /// Esc during a turn: no answer, no `Stop` hook.
    fn interrupt(&mut self) {
        if !matches!(self.phase, Phase::Busy(_)) {
            return;
        }
        self.phase = Phase::Idle;
        let _ = self.transcript.interrupted();
        self.push_history("  ⎿  Interrupted · What should Claude do instead?".into());
        self.push_history(String::new());
        self.unqueue();
        self.pid.set("idle", None);
    }

    // ---- drawing --------------------------------------------------------

    fn footer(&self) -> Vec<String> {
        let mode = render::mode_line(&self.s.mode);
        let busy = matches!(self.phase, Phase::Busy(_));
        let mut lines = match &self.status_text {
            Some(s) => vec![format!("  {s}"), mode.into()],
            None if busy => vec![format!("{mode} · esc to interrupt")],
            None => vec![mode.into()],
        };
        if let Some(r) = self.armed {
            let at = super::clock::reset_text(r, false);
            lines.insert(0, format!("  ⚠ Usage limit reached · limit resets {at}"));
            lines.insert(
                1,
                format!("    Continuing automatically at {at} · Esc to cancel"),
            );
        }
        if self.ctrl_c.is_some() {
            lines[0] = "  Press Ctrl-C again to exit".into();
        }
        lines
    }

    fn paint(&mut self) {
        let footer = self.footer();
        let mode = match &self.phase {
            Phase::Starting { .. } => Mode::Starting,
            Phase::Warning { selected } => Mode::Warning {
                selected: *selected,
            },
            Phase::Idle => Mode::Idle,
            Phase::Busy(t) => {
                let e = t.started.elapsed();
                let total = t
                    .ends
                    .saturating_duration_since(t.started)
                    .as_millis()
                    .max(1);
                let out = t.usage.output_tokens as u128 * e.as_millis().min(total) / total;
                Mode::Busy {
                    glyph: render::GLYPHS[e.as_secs() as usize % render::GLYPHS.len()],
                    verb: render::VERBS[t.verb].0,
                    secs: e.as_secs(),
                    tokens: out as u64,
                    queued: &self.queue,
                }
            }
            Phase::Limit {
                selected,
                resets_at,
            } => Mode::LimitDialog {
                resets: super::clock::reset_text(*resets_at, false),
                selected: *selected,
            },
        };
        let (lines, cursor) = render::render(&Frame {
            cols: self.size.0,
            rows: self.size.1,
            header: &self.header,
            history: &self.history,
            mode,
            composer: &self.composer,
            footer: &footer,
        });
        let out = render::paint(&lines, cursor);
        if out != self.last_paint {
            if self.last_paint.is_empty() {
                term::write_out(b"\x1b[H\x1b[2J");
            }
            term::write_out(out.as_bytes());
            self.painted_rows = lines.len();
            self.last_paint = out;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn models_and_replies() {
        assert_eq!(
            Model::resolve("sonnet"),
            Model {
                id: "claude-sonnet-5".into(),
                display: "Sonnet 5".into()
            }
        );
        assert_eq!(Model::resolve("haiku").display, "Haiku 4.5");
        assert_eq!(Model::resolve("claude-opus-4-1").display, "Opus 4.1");
        assert_eq!(reply_to("fix it\nplease"), "ok: fix it");
        assert_eq!(reply_to(&"x".repeat(100)).chars().count(), 4 + 60 + 1);
        let user = json!({"hooks": {"Stop": [{"hooks": [{"type": "command", "command": "a"}]}]}});
        let flag = json!({"hooks": {"Stop": [{"hooks": [{"type": "command", "command": "b"}]}],
                                    "SessionEnd": []}});
        let m = merged_hooks(&user, &flag);
        assert_eq!(m["hooks"]["Stop"].as_array().unwrap().len(), 2);
        assert_eq!(m["hooks"]["Stop"][1]["hooks"][0]["command"], "b");
    }
}

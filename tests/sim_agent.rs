//! `claude-failover sim-agent` in real tmux, driven the way the daemon
//! drives Claude Code: the daemon's own settings file (HTTP hooks, a
//! command hook for `SessionStart`, the statusLine forwarder, all pointed
//! at a recorder on 127.0.0.1), the tmux driver to type, the screen
//! classifier to read the screen, the pid-file reader.

use claude_failover::agent::screen::{Screen, classify, composer_text};
use claude_failover::agent::state::read_pid_file;
use claude_failover::tmux::{NewSession, Pane, Tmux};
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

const BIN: &str = env!("CARGO_BIN_EXE_claude-failover");
const LIMIT: Duration = Duration::from_secs(30);
/// What the recorder answers to a statusLine post (shown in the footer).
const STATUS_TEXT: &str = "sim-test-status";

/// Records every POST it receives: (path, JSON body).
#[derive(Clone)]
struct Recorder {
    port: u16,
    got: Arc<Mutex<Vec<(String, Value)>>>,
}

fn serve(mut c: TcpStream, got: Arc<Mutex<Vec<(String, Value)>>>) {
    let _ = c.set_read_timeout(Some(Duration::from_secs(10)));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let (head_len, body_len) = loop {
        let Ok(n) = c.read(&mut chunk) else { return };
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..i]).to_ascii_lowercase();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            break (i + 4, len);
        }
    };
    while buf.len() < head_len + body_len {
        let Ok(n) = c.read(&mut chunk) else { return };
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let path = String::from_utf8_lossy(&buf)
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_string();
    let body: Value =
        serde_json::from_slice(&buf[head_len..head_len + body_len]).unwrap_or(Value::Null);
    let answer = if path.ends_with("/statusline") {
        STATUS_TEXT
    } else {
        "{}"
    };
    got.lock().unwrap().push((path, body));
    let _ = write!(
        c,
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
        answer.len()
    );
}

impl Recorder {
    fn start() -> Recorder {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let r = Recorder {
            port: l.local_addr().unwrap().port(),
            got: Arc::default(),
        };
        let got = r.got.clone();
        std::thread::spawn(move || {
            for c in l.incoming().flatten() {
                let got = got.clone();
                std::thread::spawn(move || serve(c, got));
            }
        });
        r
    }

    /// The agent URL prefix for agent `name` (as the daemon builds one).
    fn url(&self, name: &str) -> String {
        format!("http://127.0.0.1:{}/{name}", self.port)
    }

    /// Hook payloads of agent `name`, in arrival order.
    fn hooks(&self, name: &str) -> Vec<Value> {
        let want = format!("/{name}/hook");
        self.got
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _)| *p == want)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// statusLine inputs of agent `name`, in arrival order.
    fn status_inputs(&self, name: &str) -> Vec<Value> {
        let want = format!("/{name}/statusline");
        self.got
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _)| *p == want)
            .map(|(_, v)| v.clone())
            .collect()
    }

    fn events(&self, name: &str, event: &str) -> Vec<Value> {
        self.hooks(name)
            .into_iter()
            .filter(|h| h["hook_event_name"] == event)
            .collect()
    }
}

/// One test's world: a tmux server on a private socket, an account dir,
/// a work dir, the hook recorder.
struct World {
    tmux: Tmux,
    rec: Recorder,
    dir: tempfile::TempDir,
}

impl Drop for World {
    fn drop(&mut self) {
        let t = self.tmux.clone();
        let _ = std::thread::spawn(move || {
            tokio::runtime::Runtime::new()
                .unwrap()
                .block_on(t.kill_server())
        })
        .join();
    }
}

struct Launch<'a> {
    name: &'a str,
    /// `--session-id ID` or `--resume ID`.
    id_flag: &'a str,
    id: &'a str,
    turn_ms: u64,
    account: &'a str,
}

impl World {
    fn new() -> World {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("work")).unwrap();
        World {
            tmux: Tmux::new(dir.path().join("tmux.sock")),
            rec: Recorder::start(),
            dir,
        }
    }

    /// The physical work dir (Claude Code names transcripts after it).
    fn work(&self) -> PathBuf {
        std::fs::canonicalize(self.dir.path().join("work")).unwrap()
    }

    fn account(&self, name: &str) -> PathBuf {
        let p = self.dir.path().join("accounts").join(name);
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    fn transcript(&self, account: &str, id: &str) -> PathBuf {
        let slug: String = self
            .work()
            .to_string_lossy()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        self.account(account)
            .join("projects")
            .join(slug)
            .join(format!("{id}.jsonl"))
    }

    /// Starts a sim agent with the daemon's own settings file.
    async fn launch(&self, l: &Launch<'_>) -> Pane {
        self.launch_with(l, |_| {}).await
    }

    /// The same, with the settings file changed by `edit`.
    async fn launch_with(&self, l: &Launch<'_>, edit: impl Fn(&mut Value)) -> Pane {
        let mut settings =
            claude_failover::agent::launch::settings(&self.rec.url(l.name), Path::new(BIN), true);
        edit(&mut settings);
        let settings_path = self.dir.path().join(format!("{}-settings.json", l.name));
        std::fs::write(&settings_path, serde_json::to_vec(&settings).unwrap()).unwrap();
        let env: Vec<(String, String)> = [
            (
                "CLAUDE_CONFIG_DIR",
                self.account(l.account).to_string_lossy().into_owned(),
            ),
            ("IS_SANDBOX", "1".into()),
            ("SIM_AGENT_TURN_MS", l.turn_ms.to_string()),
            ("SIM_AGENT_STARTUP_MS", "100".into()),
            ("SIM_AGENT_TOKENS_PER_TURN", "2000".into()),
            ("SIM_AGENT_IDLE_NOTIFY_MS", "1000".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let argv: Vec<String> = [
            BIN,
            "sim-agent",
            "--settings",
            &settings_path.to_string_lossy(),
            l.id_flag,
            l.id,
            "--model",
            "sonnet",
            "--dangerously-skip-permissions",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        self.tmux
            .new_session(&NewSession {
                name: l.name,
                cwd: &self.work(),
                env: &env,
                argv: &argv,
                width: 120,
                height: 40,
            })
            .await
            .unwrap()
    }

    async fn screen(&self, pane: &Pane) -> String {
        self.tmux.capture(&pane.id, false).await.unwrap_or_default()
    }

    /// The screen and the lines scrolled off it (tmux scrolls a dead
    /// pane's screen by a line to say it is dead).
    fn screen_and_history(&self, pane: &Pane) -> String {
        let out = std::process::Command::new("tmux")
            .arg("-S")
            .arg(self.tmux.socket())
            .args(["capture-pane", "-p", "-S", "-", "-t", &pane.id])
            .env_remove("TMUX")
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    async fn wait_screen(&self, pane: &Pane, want: Screen) -> String {
        until(&format!("screen {want:?}"), async || {
            let s = self.screen(pane).await;
            (classify(&s) == want).then_some(s)
        })
        .await
    }

    /// Waits for the `n`-th (1-based) payload of `event` matching `pred`.
    async fn wait_hook(&self, name: &str, event: &str, pred: impl Fn(&Value) -> bool) -> Value {
        until(&format!("{name}: {event}"), async || {
            self.rec.events(name, event).into_iter().find(|h| pred(h))
        })
        .await
    }

    async fn wait_dead(&self, name: &str) -> Pane {
        let deadline = Instant::now() + LIMIT;
        loop {
            let p = self.tmux.pane(name).await.unwrap().unwrap();
            if p.dead && p.exit_status.is_some() {
                return p;
            }
            if Instant::now() > deadline {
                let mut threads = String::new();
                for t in std::fs::read_dir(format!("/proc/{}/task", p.pid))
                    .into_iter()
                    .flatten()
                    .flatten()
                {
                    let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
                    let wchan = std::fs::read_to_string(t.path().join("wchan")).unwrap_or_default();
                    threads.push_str(&format!("{stat} {wchan}\n"));
                }
                panic!(
                    "timed out waiting for {name} to exit: {p:?}\n{}\n{threads}",
                    self.screen(&p).await
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Submits a prompt and waits for the turn's `Stop`.
    async fn turn(&self, name: &str, pane: &Pane, prompt: &str) -> Value {
        self.tmux.type_and_submit(&pane.id, prompt).await.unwrap();
        let reply = format!("ok: {}", prompt.lines().next().unwrap());
        self.wait_hook(name, "Stop", |h| h["last_assistant_message"] == reply)
            .await
    }
}

async fn until<T>(what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn pid_status(account: &Path, pane: &Pane) -> Option<(String, Option<String>)> {
    read_pid_file(account, pane.pid).map(|p| (p.status, p.waiting_for))
}

fn uuid() -> String {
    uuid::Uuid::new_v4().to_string()
}

#[tokio::test]
async fn a_session_starts_takes_turns_queues_interrupts_and_exits() {
    let w = World::new();
    let id = uuid();
    let acct = w.account("a");
    let pane = w
        .launch(&Launch {
            name: "s1",
            id_flag: "--session-id",
            id: &id,
            turn_ms: 1500,
            account: "a",
        })
        .await;

    // Start: SessionStart through the command hook, the idle composer,
    // the statusLine's answer in the footer, the pid file.
    let start = w.wait_hook("s1", "SessionStart", |_| true).await;
    assert_eq!(start["source"], "startup");
    assert_eq!(start["session_id"], id.as_str());
    assert_eq!(start["cwd"], w.work().to_string_lossy().as_ref());
    let transcript = w.transcript("a", &id);
    assert_eq!(
        start["transcript_path"],
        transcript.to_string_lossy().as_ref()
    );
    let idle = w.wait_screen(&pane, Screen::Idle).await;
    assert!(idle.contains('❯'), "{idle}");
    until("the statusLine output in the footer", async || {
        w.screen(&pane).await.contains(STATUS_TEXT).then_some(())
    })
    .await;
    until("the pid file", async || {
        (pid_status(&acct, &pane)? == ("idle".into(), None)).then_some(())
    })
    .await;
    let status = until("a statusLine input", async || {
        w.rec.status_inputs("s1").into_iter().next()
    })
    .await;
    assert_eq!(status["session_id"], id.as_str());
    assert_eq!(status["model"]["id"], "claude-sonnet-5");
    assert_eq!(status["model"]["display_name"], "Sonnet 5");
    assert_eq!(status["version"], "sim");
    assert_eq!(
        status["workspace"]["current_dir"],
        w.work().to_string_lossy().as_ref()
    );
    assert!(
        status.get("rate_limits").is_none(),
        "no budget: unlimited, no rate_limits (like API-key billing)"
    );

    // Typed text waits in the composer until Enter.
    w.tmux.send_text(&pane.id, "hello sim").await.unwrap();
    until("the typed text in the composer", async || {
        (composer_text(&w.screen(&pane).await)? == "hello sim").then_some(())
    })
    .await;
    assert!(w.rec.events("s1", "UserPromptSubmit").is_empty());

    // A turn: UserPromptSubmit, busy (screen and pid file), Stop, idle.
    w.tmux.send_keys(&pane.id, &["Enter"]).await.unwrap();
    let submit = w
        .wait_hook("s1", "UserPromptSubmit", |h| h["prompt"] == "hello sim")
        .await;
    assert_eq!(submit["session_id"], id.as_str());
    let busy = w.wait_screen(&pane, Screen::Busy).await;
    assert!(busy.contains('…'), "{busy}");
    assert_eq!(pid_status(&acct, &pane).unwrap().0, "busy");
    let stop = w
        .wait_hook("s1", "Stop", |h| {
            h["last_assistant_message"] == "ok: hello sim"
        })
        .await;
    assert_eq!(stop["prompt_id"], submit["prompt_id"]);
    let done = w.wait_screen(&pane, Screen::Idle).await;
    assert!(done.contains("● ok: hello sim"), "{done}");
    assert!(done.contains(" for "), "the closing line: {done}");
    until("the pid file to say idle", async || {
        (pid_status(&acct, &pane)?.0 == "idle").then_some(())
    })
    .await;
    let t = lines(&transcript);
    let kinds: Vec<&str> = t.iter().map(|l| l["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["user", "assistant", "system"]);
    assert_eq!(t[0]["message"]["content"], "hello sim");
    assert_eq!(t[1]["message"]["model"], "claude-sonnet-5");
    let usage = &t[1]["message"]["usage"];
    for k in [
        "input_tokens",
        "output_tokens",
        "cache_creation_input_tokens",
        "cache_read_input_tokens",
    ] {
        assert!(usage[k].is_u64(), "usage.{k}: {usage}");
    }
    assert_eq!(t[2]["subtype"], "turn_duration");
    let history = std::fs::read_to_string(acct.join("history.jsonl")).unwrap();
    let h: Value = serde_json::from_str(history.lines().next().unwrap()).unwrap();
    assert_eq!(h["display"], "hello sim");
    assert_eq!(h["sessionId"], id.as_str());
    assert_eq!(h["project"], w.work().to_string_lossy().as_ref());
    assert!(h["timestamp"].is_u64());
    for (i, l) in t.iter().enumerate() {
        assert_eq!(l["sessionId"], id.as_str());
        assert_eq!(l["cwd"], w.work().to_string_lossy().as_ref());
        assert!(l["timestamp"].is_string() && l["uuid"].is_string());
        if i > 0 {
            assert_eq!(l["parentUuid"], t[i - 1]["uuid"]);
        }
    }

    // A multi-line paste is one prompt.
    let pasted = "first line\nsecond line\n  third, indented";
    w.tmux.send_text(&pane.id, pasted).await.unwrap();
    until("the pasted text in the composer", async || {
        (composer_text(&w.screen(&pane).await)? == "first line\nsecond line\nthird, indented")
            .then_some(())
    })
    .await;
    w.tmux.send_keys(&pane.id, &["Enter"]).await.unwrap();
    w.wait_hook("s1", "Stop", |h| {
        h["last_assistant_message"] == "ok: first line"
    })
    .await;
    let prompts: Vec<Value> = w
        .rec
        .events("s1", "UserPromptSubmit")
        .iter()
        .map(|h| h["prompt"].clone())
        .collect();
    assert_eq!(prompts, [json!("hello sim"), json!(pasted)]);
    w.wait_screen(&pane, Screen::Idle).await;

    // Text typed while busy is queued and submitted after the turn.
    w.tmux.type_and_submit(&pane.id, "long one").await.unwrap();
    w.wait_screen(&pane, Screen::Busy).await;
    w.tmux
        .type_and_submit(&pane.id, "queued one")
        .await
        .unwrap();
    w.wait_hook("s1", "Stop", |h| {
        h["last_assistant_message"] == "ok: queued one"
    })
    .await;
    let order: Vec<String> = w
        .rec
        .hooks("s1")
        .iter()
        .filter_map(|h| {
            h["prompt"]
                .as_str()
                .or(h["last_assistant_message"].as_str())
                .map(str::to_string)
        })
        .collect();
    assert_eq!(
        &order[order.len() - 4..],
        ["long one", "ok: long one", "queued one", "ok: queued one"]
    );

    // /model switches the model of later turns and of the statusLine input.
    w.wait_screen(&pane, Screen::Idle).await;
    w.tmux
        .type_and_submit(&pane.id, "/model haiku")
        .await
        .unwrap();
    until("the statusLine input with the new model", async || {
        w.rec
            .status_inputs("s1")
            .iter()
            .any(|s| s["model"]["display_name"] == "Haiku 4.5")
            .then_some(())
    })
    .await;
    w.turn("s1", &pane, "on haiku").await;
    let last_answer = lines(&transcript)
        .into_iter()
        .rfind(|l| l["type"] == "assistant")
        .unwrap();
    assert_eq!(last_answer["message"]["model"], "claude-haiku-4-5-20251001");

    // Esc interrupts a turn: no Stop for it.
    w.wait_screen(&pane, Screen::Idle).await;
    w.tmux
        .type_and_submit(&pane.id, "interrupt me")
        .await
        .unwrap();
    w.wait_screen(&pane, Screen::Busy).await;
    w.tmux.send_keys(&pane.id, &["Escape"]).await.unwrap();
    let s = w.wait_screen(&pane, Screen::Idle).await;
    assert!(s.contains("Interrupted"), "{s}");
    w.turn("s1", &pane, "after the interruption").await;
    assert!(
        w.rec
            .events("s1", "Stop")
            .iter()
            .all(|h| h["last_assistant_message"] != "ok: interrupt me"),
        "an interrupted turn fires no Stop"
    );

    // /exit: SessionEnd prompt_input_exit, exit status 0, pid file gone.
    w.wait_screen(&pane, Screen::Idle).await;
    w.tmux.type_and_submit(&pane.id, "/exit").await.unwrap();
    let end = w.wait_hook("s1", "SessionEnd", |_| true).await;
    assert_eq!(end["reason"], "prompt_input_exit");
    let dead = w.wait_dead("s1").await;
    assert_eq!(dead.exit_status, Some(0));
    assert!(read_pid_file(&acct, pane.pid).is_none());
    let s = w.screen(&pane).await;
    assert!(s.contains(&format!("claude --resume {id}")), "{s}");
}

#[tokio::test]
async fn resume_continues_the_conversation_and_an_unknown_id_is_refused() {
    let w = World::new();
    let id = uuid();
    let first = w
        .launch(&Launch {
            name: "r1",
            id_flag: "--session-id",
            id: &id,
            turn_ms: 200,
            account: "a",
        })
        .await;
    w.wait_screen(&first, Screen::Idle).await;
    w.turn("r1", &first, "first exchange").await;
    w.wait_screen(&first, Screen::Idle).await;
    w.tmux.type_and_submit(&first.id, "/exit").await.unwrap();
    w.wait_dead("r1").await;
    let transcript = w.transcript("a", &id);
    let before = lines(&transcript).len();

    // --resume the same id: SessionStart resume, the earlier exchange on
    // screen, the same transcript grows.
    let second = w
        .launch(&Launch {
            name: "r2",
            id_flag: "--resume",
            id: &id,
            turn_ms: 200,
            account: "a",
        })
        .await;
    let start = w.wait_hook("r2", "SessionStart", |_| true).await;
    assert_eq!(start["source"], "resume");
    assert_eq!(start["session_id"], id.as_str());
    let s = w.wait_screen(&second, Screen::Idle).await;
    assert!(s.contains("ok: first exchange"), "{s}");
    w.turn("r2", &second, "second exchange").await;
    let after = lines(&transcript);
    assert_eq!(after.len(), before + 3);
    assert_eq!(after[before]["message"]["content"], "second exchange");
    assert_eq!(after[before]["parentUuid"], after[before - 1]["uuid"]);
    // Left idle after a turn: Notification idle_prompt.
    let n = w.wait_hook("r2", "Notification", |_| true).await;
    assert_eq!(n["notification_type"], "idle_prompt");

    // SIGTERM: SessionEnd other, exit status 143.
    w.wait_screen(&second, Screen::Idle).await;
    // SAFETY: signalling the agent this test started, by its pid.
    assert_eq!(unsafe { libc::kill(second.pid as i32, libc::SIGTERM) }, 0);
    let end = w.wait_hook("r2", "SessionEnd", |_| true).await;
    assert_eq!(end["reason"], "other");
    assert_eq!(w.wait_dead("r2").await.exit_status, Some(143));

    // An id without a conversation is refused.
    let unknown = uuid();
    let third = w
        .launch(&Launch {
            name: "r3",
            id_flag: "--resume",
            id: &unknown,
            turn_ms: 200,
            account: "a",
        })
        .await;
    assert_eq!(w.wait_dead("r3").await.exit_status, Some(1));
    let s = w.screen_and_history(&third);
    assert!(
        s.contains(&format!("No conversation found with session ID: {unknown}")),
        "{s}"
    );
    assert!(w.rec.hooks("r3").is_empty());
}

/// Seconds since the epoch.
fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test]
async fn the_usage_limit_is_shared_by_the_account_and_resets() {
    let w = World::new();
    let acct = w.account("lim");
    // Three turns of 2000 tokens per window, for both agents together.
    let window = 12;
    std::fs::write(
        acct.join("sim-budget.json"),
        json!({"fiveHourTokens": 6000, "windowSeconds": window}).to_string(),
    )
    .unwrap();
    let (ida, idb) = (uuid(), uuid());
    let launch = |name, id| Launch {
        name,
        id_flag: "--session-id",
        id,
        turn_ms: 100,
        account: "lim",
    };
    let a = w.launch(&launch("la", &ida)).await;
    let b = w.launch(&launch("lb", &idb)).await;
    w.wait_screen(&a, Screen::Idle).await;
    w.wait_screen(&b, Screen::Idle).await;
    let started = Instant::now();
    w.turn("la", &a, "a one").await;
    w.turn("lb", &b, "b one").await;
    w.wait_screen(&a, Screen::Idle).await;
    w.turn("la", &a, "a two").await;
    let full = until("a statusLine input at 100%", async || {
        w.rec.status_inputs("la").into_iter().rfind(|s| {
            s.pointer("/rate_limits/five_hour/used_percentage")
                .and_then(Value::as_u64)
                == Some(100)
        })
    })
    .await;
    let resets_at = full["rate_limits"]["five_hour"]["resets_at"]
        .as_u64()
        .unwrap();
    assert!(
        full["rate_limits"]["seven_day"]["used_percentage"].is_u64(),
        "{full}"
    );

    // Over budget: no answer, StopFailure, the dialog, the pid file waits.
    w.wait_screen(&b, Screen::Idle).await;
    w.tmux.type_and_submit(&b.id, "b two").await.unwrap();
    let failure = w.wait_hook("lb", "StopFailure", |_| true).await;
    assert!(
        started.elapsed() < Duration::from_secs(window),
        "the test was too slow to see the limit before the reset"
    );
    assert_eq!(failure["error"], "rate_limit");
    let msg = failure["last_assistant_message"].as_str().unwrap();
    assert!(
        msg.starts_with("You've hit your 5-hour limit · resets "),
        "{msg}"
    );
    let dialog = w.wait_screen(&b, Screen::UsageLimitDialog).await;
    assert!(dialog.contains(msg), "{dialog}");
    assert_eq!(
        pid_status(&acct, &b).unwrap(),
        ("waiting".into(), Some("dialog open".into()))
    );
    let synthetic = lines(&w.transcript("lim", &idb)).pop().unwrap();
    assert_eq!(synthetic["type"], "assistant");
    assert_eq!(synthetic["message"]["model"], "<synthetic>");
    assert_eq!(synthetic["isApiErrorMessage"], true);
    assert_eq!(synthetic["apiErrorStatus"], 429);
    assert_eq!(synthetic["error"], "rate_limit");
    assert!(
        w.rec
            .events("lb", "Stop")
            .iter()
            .all(|h| h["last_assistant_message"] != "ok: b two")
    );
    until("b's statusLine input at 100% or more", async || {
        w.rec
            .status_inputs("lb")
            .iter()
            .any(|s| {
                s.pointer("/rate_limits/five_hour/used_percentage")
                    .and_then(Value::as_u64)
                    .is_some_and(|p| p >= 100)
            })
            .then_some(())
    })
    .await;

    // Esc dismisses the dialog.
    w.tmux.send_keys(&b.id, &["Escape"]).await.unwrap();
    w.wait_screen(&b, Screen::Idle).await;
    until("the pid file to say idle", async || {
        (pid_status(&acct, &b)? == ("idle".into(), None)).then_some(())
    })
    .await;

    // After the window resets, a turn is answered again.
    until("the window to reset", async || {
        (now_s() >= resets_at).then_some(())
    })
    .await;
    w.turn("lb", &b, "b after the reset").await;
    let s = w.wait_screen(&b, Screen::Idle).await;
    assert!(s.contains("● ok: b after the reset"), "{s}");
    until("the statusLine input after the reset", async || {
        w.rec
            .status_inputs("lb")
            .iter()
            .rfind(|s| {
                s.pointer("/rate_limits/five_hour/used_percentage")
                    .and_then(Value::as_u64)
                    == Some(33)
            })
            .cloned()
    })
    .await;
}

/// Without the daemon's settings, the simulator (as Claude Code 2.1.332)
/// continues a refused turn by itself after the reset: why the daemon's
/// settings turn that off (it replays the turn itself).
#[tokio::test]
async fn left_on_its_own_continuation_fires_at_the_reset() {
    let w = World::new();
    let acct = w.account("own");
    let window = 6;
    std::fs::write(
        acct.join("sim-budget.json"),
        json!({"fiveHourTokens": 2000, "windowSeconds": window}).to_string(),
    )
    .unwrap();
    let id = uuid();
    let p = w
        .launch_with(
            &Launch {
                name: "own",
                id_flag: "--session-id",
                id: &id,
                turn_ms: 100,
                account: "own",
            },
            |s| {
                s.as_object_mut()
                    .unwrap()
                    .remove("autoContinueAtUsageLimit");
            },
        )
        .await;
    w.wait_screen(&p, Screen::Idle).await;
    w.turn("own", &p, "first").await;
    w.wait_screen(&p, Screen::Idle).await;
    w.tmux.type_and_submit(&p.id, "the cut one").await.unwrap();
    w.wait_hook("own", "StopFailure", |_| true).await;
    // No dialog: the continuation is armed, Esc would cancel it.
    let armed = w.wait_screen(&p, Screen::UsageLimitDialog).await;
    assert!(armed.contains("Continuing automatically at"), "{armed}");
    let fired = w
        .wait_hook("own", "UserPromptSubmit", |h| {
            h["prompt"]
                .as_str()
                .is_some_and(claude_failover::agent::hooks::is_auto_continue)
        })
        .await;
    assert_eq!(fired["session_id"], id.as_str());
    assert!(
        w.rec
            .events("own", "Notification")
            .iter()
            .any(|h| h["notification_type"] == "quota_auto_resume_fired")
    );
}

/// Fifty agents: all reach their prompt, and once idle they use no CPU.
#[tokio::test]
async fn fifty_idle_agents_are_cheap() {
    let w = World::new();
    let n = 50;
    let mut panes = Vec::new();
    for i in 0..n {
        let id = uuid();
        let name = format!("m{i}");
        let account = format!("acct{}", i % 5);
        panes.push(
            w.launch(&Launch {
                name: &name,
                id_flag: "--session-id",
                id: &id,
                turn_ms: 100,
                account: &account,
            })
            .await,
        );
    }
    for (i, p) in panes.iter().enumerate() {
        let acct = w.account(&format!("acct{}", i % 5));
        until("every agent's pid file", async || {
            (pid_status(&acct, p)?.0 == "idle").then_some(())
        })
        .await;
        w.wait_hook(&format!("m{i}"), "SessionStart", |_| true)
            .await;
    }
    // Let start-up work (statusLine runs) settle: the statusLine inputs
    // stop arriving.
    until("the statusLine inputs to settle", async || {
        let count = w.rec.got.lock().unwrap().len();
        tokio::time::sleep(Duration::from_millis(500)).await;
        (w.rec.got.lock().unwrap().len() == count).then_some(())
    })
    .await;
    let cpu = |pid: u32| -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // Fields after the command name, which ends with ')'.
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
        let f: Vec<&str> = rest.split_whitespace().collect();
        f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
            + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
    };
    let before: u64 = panes.iter().map(|p| cpu(p.pid)).sum();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after: u64 = panes.iter().map(|p| cpu(p.pid)).sum();
    // Clock ticks (1/100 s) over 2 s for all fifty together.
    assert!(
        after - before <= 10,
        "idle agents used {} ticks",
        after - before
    );
    // And they still answer.
    w.turn("m7", &panes[7], "still there?").await;
}

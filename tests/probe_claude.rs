//! Probes of the real Claude Code in tmux against the fake API.
//! Ignored by default; run inside a network namespace with only loopback.

mod common;
use common::fake_api::*;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const CLAUDE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tools/claude-code/node_modules/@anthropic-ai/claude-code-linux-x64/claude"
);
const VERSION: &str = "2.1.197";
const EVENTS: &[&str] = &[
    "SessionStart",
    "UserPromptSubmit",
    "Stop",
    "StopFailure",
    "Notification",
    "PreToolUse",
    "PostToolUse",
    "SessionEnd",
];

struct Lab {
    root: PathBuf,
    sock: PathBuf,
    api: FakeApi,
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .env_remove("TMUX")
            .arg("-S")
            .arg(&self.sock)
            .arg("kill-server")
            .output();
    }
}

fn log(s: impl AsRef<str>) {
    println!("{}", s.as_ref());
}

impl Lab {
    fn new(name: &str) -> Lab {
        let root = PathBuf::from(format!("/tmp/probe-{name}"));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("work")).unwrap();
        std::fs::create_dir_all(root.join("home")).unwrap();
        std::fs::create_dir_all(root.join("out")).unwrap();
        let api = FakeApi::start();
        for e in EVENTS {
            api.route("POST", &format!("/hooks/{e}"), 200, json!({}));
        }
        Lab {
            sock: root.join("tmux.sock"),
            root,
            api,
        }
    }

    fn work(&self) -> PathBuf {
        self.root.join("work")
    }

    fn tmux(&self, args: &[&str]) -> String {
        let o = Command::new("/usr/bin/tmux")
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("HOME", self.root.join("home"))
            .env("LANG", "C.UTF-8")
            .env("TERM", "xterm-256color")
            .arg("-S")
            .arg(&self.sock)
            .args(args)
            .output()
            .unwrap();
        if !o.status.success() {
            log(format!(
                "tmux {args:?} failed: {}",
                String::from_utf8_lossy(&o.stderr)
            ));
        }
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Seeds an account dir; returns it.
    fn account(&self, name: &str, extra: Value, settings: Option<Value>) -> PathBuf {
        let dir = self.root.join("accounts").join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let work = self.work().canonicalize().unwrap();
        let mut cj = json!({
            "hasCompletedOnboarding": true,
            "lastOnboardingVersion": VERSION,
            "projects": { work.to_str().unwrap(): { "hasTrustDialogAccepted": true } }
        });
        if let (Some(o), Some(e)) = (cj.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                o.insert(k.clone(), v.clone());
            }
        }
        std::fs::write(
            dir.join(".claude.json"),
            serde_json::to_string_pretty(&cj).unwrap(),
        )
        .unwrap();
        if let Some(s) = settings {
            std::fs::write(dir.join("settings.json"), s.to_string()).unwrap();
        }
        dir
    }

    /// Hooks + statusLine settings; returns the path.
    fn settings(&self, name: &str, extra: Value, hook_headers: Option<Value>) -> PathBuf {
        let mut hooks = serde_json::Map::new();
        for e in EVENTS {
            let mut h = json!({"type": "http", "url": format!("{}/hooks/{e}", self.api.url()), "timeout": 5});
            if let Some(hh) = &hook_headers {
                h["headers"] = hh.clone();
                h["allowedEnvVars"] = json!(["PROBE_VAR"]);
            }
            hooks.insert(e.to_string(), json!([{ "hooks": [h] }]));
        }
        let script = self.root.join("statusline.sh");
        let out = self.root.join("out");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\nf={}/status-$(date +%s%N).json\ncat > \"$f\"\necho \"SLINE $(date +%H:%M:%S) $$\"\n",
                out.display()
            ),
        )
        .unwrap();
        Command::new("chmod")
            .arg("+x")
            .arg(&script)
            .status()
            .unwrap();
        let mut s = json!({
            "hooks": hooks,
            "statusLine": {"type": "command", "command": script.to_str().unwrap()},
        });
        if let (Some(o), Some(e)) = (s.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                o.insert(k.clone(), v.clone());
            }
        }
        let p = self.root.join(format!("{name}.json"));
        std::fs::write(&p, serde_json::to_string_pretty(&s).unwrap()).unwrap();
        p
    }

    fn base_env(&self, account: &Path) -> Vec<(String, String)> {
        [
            ("CLAUDE_CONFIG_DIR", account.to_str().unwrap().to_string()),
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

    /// Starts claude in a new tmux session; returns the pane id.
    fn launch(&self, sess: &str, env: &[(String, String)], args: &[&str], wrap: &[&str]) -> String {
        let work = self.work();
        let mut a: Vec<String> = vec![
            "new-session".into(),
            "-d".into(),
            "-P".into(),
            "-F".into(),
            "#{pane_id}".into(),
            "-s".into(),
            sess.into(),
            "-x".into(),
            "120".into(),
            "-y".into(),
            "40".into(),
            "-c".into(),
            work.to_str().unwrap().into(),
        ];
        for (k, v) in env {
            a.push("-e".into());
            a.push(format!("{k}={v}"));
        }
        a.push("--".into());
        for w in wrap {
            a.push(w.to_string());
        }
        a.push(CLAUDE.into());
        for x in args {
            a.push(x.to_string());
        }
        log(format!("LAUNCH: env {env:?}\n  args {args:?}"));
        let refs: Vec<&str> = a.iter().map(|s| s.as_str()).collect();
        let pane = self.tmux(&refs).trim().to_string();
        self.tmux(&["set-option", "-t", sess, "remain-on-exit", "on"]);
        pane
    }

    fn screen(&self, pane: &str) -> String {
        self.tmux(&["capture-pane", "-p", "-t", pane])
    }

    fn wait_screen(
        &self,
        pane: &str,
        what: &str,
        limit: Duration,
        f: impl Fn(&str) -> bool,
    ) -> Option<(String, Duration)> {
        let t0 = Instant::now();
        loop {
            let s = self.screen(pane);
            if f(&s) {
                return Some((s, t0.elapsed()));
            }
            if t0.elapsed() > limit {
                log(format!("TIMEOUT waiting for {what}; screen:\n{}", trim(&s)));
                return None;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    fn type_line(&self, pane: &str, text: &str) -> Instant {
        self.tmux(&["send-keys", "-t", pane, "-l", "--", text]);
        std::thread::sleep(Duration::from_millis(100));
        let t = Instant::now();
        self.tmux(&["send-keys", "-t", pane, "Enter"]);
        t
    }

    fn hooks(&self, event: &str) -> Vec<Recorded> {
        self.api.requests_to(&format!("/hooks/{event}"))
    }

    fn wait_hook(&self, event: &str, n: usize, limit: Duration) -> Option<Vec<Recorded>> {
        let p = format!("/hooks/{event}");
        self.api
            .try_wait_for(
                |r| r.iter().filter(|r| r.path_only() == p).count() >= n,
                limit,
            )
            .map(|all| all.into_iter().filter(|r| r.path_only() == p).collect())
    }

    fn sessions_json(&self, account: &Path) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if let Ok(rd) = std::fs::read_dir(account.join("sessions")) {
            for e in rd.flatten() {
                out.push((
                    e.file_name().to_string_lossy().into_owned(),
                    std::fs::read_to_string(e.path()).unwrap_or_default(),
                ));
            }
        }
        out
    }

    fn dump_requests(&self) {
        for r in self.api.requests() {
            let mut h = r.headers.clone();
            for (k, v) in h.iter_mut() {
                if k == "authorization" || k == "x-api-key" {
                    *v = format!("{v} (len {})", v.len());
                }
            }
            log(format!(
                "REQ #{} {} {} -> {} model={:?} sid={:?} cred={:?} last_user={:?}\n   headers={h:?}",
                r.seq,
                r.method,
                r.path,
                r.status,
                r.model(),
                r.session_id(),
                r.credential(),
                r.last_user_text()
            ));
        }
    }
}

fn trim(s: &str) -> String {
    let lines: Vec<&str> = s.lines().map(|l| l.trim_end()).collect();
    let mut lines: Vec<&str> = lines.into_iter().collect();
    while lines.last().is_some_and(|l| l.is_empty()) {
        lines.pop();
    }
    lines.join("\n")
}

fn idle(s: &str) -> bool {
    s.contains("❯")
        && s.contains("────")
        && !s.contains("esc to interrupt")
        && !s.contains("Do you want")
}

fn uuid() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn pretty_hooks(lab: &Lab, event: &str) {
    for r in lab.hooks(event) {
        let mut h = r.headers.clone();
        h.retain(|(k, _)| k != "host");
        log(format!(
            "HOOK {event} headers={h:?}\n{}",
            serde_json::to_string_pretty(&r.body).unwrap()
        ));
    }
}

fn api_key_account(lab: &Lab, name: &str, key: &str, settings: Option<Value>) -> PathBuf {
    let last20 = &key[key.len() - 20..];
    lab.account(
        name,
        json!({"customApiKeyResponses": {"approved": [last20], "rejected": []}}),
        settings,
    )
}

const KEY_A: &str = "sk-ant-api03-probeAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA-1111111AA";

/// 1, 2, 3, 5, 7: launch, screens, hooks, statusLine, sessions/<pid>.json, timing.
#[test]
#[ignore]
fn probe_launch_hooks_status() {
    let lab = Lab::new("launch");
    let acct = api_key_account(&lab, "a", KEY_A, None);
    let settings = lab.settings(
        "settings",
        json!({"skipDangerousModePermissionPrompt": true}),
        Some(json!({"X-Probe": "fixed", "X-Var": "v=$PROBE_VAR"})),
    );
    let sid = uuid();
    let mut env = lab.base_env(&acct);
    env.push(("ANTHROPIC_API_KEY".into(), KEY_A.into()));
    env.push(("PROBE_VAR".into(), "hello".into()));
    let t0 = Instant::now();
    let pane = lab.launch(
        "s1",
        &env,
        &[
            "--settings",
            settings.to_str().unwrap(),
            "--session-id",
            &sid,
            "--dangerously-skip-permissions",
            "--model",
            "sonnet",
        ],
        &[],
    );
    let (scr, _) = lab
        .wait_screen(&pane, "idle", Duration::from_secs(20), idle)
        .expect("idle");
    log(format!("IDLE after {:?}:\n{}", t0.elapsed(), trim(&scr)));
    lab.wait_hook("SessionStart", 1, Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(1500));
    log(format!("IDLE (1.5 s later):\n{}", trim(&lab.screen(&pane))));
    for (f, c) in lab.sessions_json(&acct) {
        log(format!("SESSIONS idle {f}: {c}"));
    }
    // Busy: hold the reply.
    lab.api.hold();
    let t = lab.type_line(&pane, "first prompt alpha");
    let reqs = lab.api.wait_for_main(1, Duration::from_secs(10));
    log(format!(
        "send->main request: {:?}",
        reqs[0].at.duration_since(t)
    ));
    std::thread::sleep(Duration::from_millis(1500));
    log(format!("BUSY:\n{}", trim(&lab.screen(&pane))));
    for (f, c) in lab.sessions_json(&acct) {
        log(format!("SESSIONS busy {f}: {c}"));
    }
    lab.api.release();
    lab.wait_hook("Stop", 1, Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(1000));
    log(format!("DONE:\n{}", trim(&lab.screen(&pane))));
    for (f, c) in lab.sessions_json(&acct) {
        log(format!("SESSIONS done {f}: {c}"));
    }
    // Second prompt: timing on a warm session.
    for i in 0..3 {
        let n = lab.api.main_requests().len();
        let t = lab.type_line(&pane, &format!("warm prompt {i}"));
        let reqs = lab.api.wait_for_main(n + 1, Duration::from_secs(10));
        log(format!(
            "warm send->main request: {:?}",
            reqs[n].at.duration_since(t)
        ));
        lab.wait_hook("Stop", 2 + i, Duration::from_secs(10));
    }
    // A tool call for Pre/PostToolUse.
    lab.api.queue_tool_use(
        "Bash",
        json!({"command": "echo probe > probe.txt", "description": "write a file"}),
    );
    lab.type_line(&pane, "please run a tool");
    lab.wait_hook("PostToolUse", 1, Duration::from_secs(15));
    lab.wait_hook("Stop", 5, Duration::from_secs(15));
    std::thread::sleep(Duration::from_millis(500));
    log(format!("AFTER TOOL:\n{}", trim(&lab.screen(&pane))));
    // A failing request for StopFailure.
    lab.api.fail_next_with(
        1,
        Failure {
            status: 429,
            body: FakeApi::error_body(
                "rate_limit_error",
                "Number of requests has exceeded your rate limit",
            ),
            headers: vec![("x-should-retry".into(), "false".into())],
        },
    );
    lab.type_line(&pane, "this one fails");
    let ok = lab.wait_hook("StopFailure", 1, Duration::from_secs(20));
    log(format!("StopFailure received: {}", ok.is_some()));
    std::thread::sleep(Duration::from_millis(500));
    log(format!("AFTER FAILURE:\n{}", trim(&lab.screen(&pane))));
    // Exit.
    lab.type_line(&pane, "/exit");
    lab.wait_hook("SessionEnd", 1, Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(800));
    log(format!("AFTER EXIT:\n{}", trim(&lab.screen(&pane))));
    log(format!(
        "pane dead: {}",
        lab.tmux(&[
            "display-message",
            "-p",
            "-t",
            &pane,
            "#{pane_dead} #{pane_dead_status}"
        ])
    ));
    for (f, c) in lab.sessions_json(&acct) {
        log(format!("SESSIONS after exit {f}: {c}"));
    }
    for e in EVENTS {
        pretty_hooks(&lab, e);
    }
    lab.dump_requests();
    // First main request body (abbreviated) and the title request.
    if let Some(r) = lab.api.main_requests().first() {
        let mut b = r.body.clone();
        b["system"] = json!("<omitted>");
        b["tools"] = json!(format!(
            "<{} tools>",
            r.body["tools"].as_array().map_or(0, |a| a.len())
        ));
        log(format!(
            "MAIN BODY: {}",
            serde_json::to_string_pretty(&b).unwrap()
        ));
        log(format!("message texts: {:?}", r.message_texts()));
    }
    for r in lab
        .api
        .requests()
        .iter()
        .filter(|r| r.is_messages() && !r.is_main())
    {
        log(format!(
            "TITLE BODY: {}",
            r.raw_body.chars().take(3000).collect::<String>()
        ));
    }
    let mut files: Vec<_> = std::fs::read_dir(lab.root.join("out"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    log(format!("statusLine calls: {}", files.len()));
    for f in files.iter().take(2).chain(files.iter().rev().take(1)) {
        log(format!(
            "STATUS {}: {}",
            f.display(),
            std::fs::read_to_string(f).unwrap()
        ));
    }
}

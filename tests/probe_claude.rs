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
        // SessionStart: HTTP hooks are skipped for it; add a command hook too.
        let hook_sh = self.root.join("hook.sh");
        std::fs::write(
            &hook_sh,
            format!(
                "#!/bin/sh\nt=$(date +%s%N)\ncat > {out}/hook-$1-$t.json\nenv | sort > {out}/hookenv-$1-$t.txt\n",
                out = self.root.join("out").display()
            ),
        )
        .unwrap();
        Command::new("chmod")
            .arg("+x")
            .arg(&hook_sh)
            .status()
            .unwrap();
        if let Some(arr) = hooks.get_mut("SessionStart").and_then(|v| v.as_array_mut()) {
            arr.push(json!({"hooks": [{"type": "command", "command": format!("{} SessionStart", hook_sh.display()), "timeout": 5}]}));
        }
        if let Some(arr) = hooks.get_mut("SessionEnd").and_then(|v| v.as_array_mut()) {
            arr.push(json!({"hooks": [{"type": "command", "command": format!("{} SessionEnd", hook_sh.display()), "timeout": 5}]}));
        }
        let script = self.root.join("statusline.sh");
        let out = self.root.join("out");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\nf={}/status-$(date +%s%N).json\ncat > \"$f\"\necho \"SLINE $(date +%H:%M:%S.%N | cut -c1-12)\"\n",
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

fn out_files(lab: &Lab, prefix: &str) -> Vec<(String, String)> {
    let mut files: Vec<_> = std::fs::read_dir(lab.root.join("out"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(prefix))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read_to_string(&p).unwrap_or_default(),
            )
        })
        .collect()
}

fn claude_args<'a>(settings: &'a str, flag: &'a str, sid: &'a str) -> Vec<&'a str> {
    vec![
        "--settings",
        settings,
        flag,
        sid,
        "--dangerously-skip-permissions",
        "--model",
        "sonnet",
    ]
}

/// Where skipDangerousModePermissionPrompt must be, and the dialog otherwise.
#[test]
#[ignore]
fn probe_bypass_prompt() {
    for (case, in_settings_file, in_account) in [
        ("neither", false, false),
        ("account", false, true),
        ("flagfile", true, false),
    ] {
        let lab = Lab::new(&format!("bypass-{case}"));
        let acct = api_key_account(
            &lab,
            "a",
            KEY_A,
            in_account.then(|| json!({"skipDangerousModePermissionPrompt": true})),
        );
        let extra = if in_settings_file {
            json!({"skipDangerousModePermissionPrompt": true})
        } else {
            json!({})
        };
        let settings = lab.settings("settings", extra, None);
        let mut env = lab.base_env(&acct);
        env.push(("ANTHROPIC_API_KEY".into(), KEY_A.into()));
        let sid = uuid();
        let t0 = Instant::now();
        let pane = lab.launch(
            "s",
            &env,
            &claude_args(settings.to_str().unwrap(), "--session-id", &sid),
            &[],
        );
        let r = lab.wait_screen(&pane, "idle or dialog", Duration::from_secs(15), |s| {
            idle(s)
                || s.contains("Bypass Permissions")
                || s.contains("WARNING")
                || s.contains("Yes, I accept")
        });
        std::thread::sleep(Duration::from_millis(700));
        let scr = lab.screen(&pane);
        log(format!(
            "CASE {case}: after {:?} idle={} screen:\n{}",
            t0.elapsed(),
            r.map(|r| idle(&r.0)).unwrap_or(false),
            trim(&scr)
        ));
        if !idle(&scr) {
            // What does accepting it do to the files?
            let before = std::fs::read_to_string(acct.join("settings.json")).unwrap_or_default();
            log(format!("account settings before: {before}"));
        }
    }
}

/// API key without customApiKeyResponses: a dialog?
#[test]
#[ignore]
fn probe_api_key_unapproved() {
    let lab = Lab::new("key-unapproved");
    let acct = lab.account("a", json!({}), None);
    let settings = lab.settings(
        "settings",
        json!({"skipDangerousModePermissionPrompt": true}),
        None,
    );
    let mut env = lab.base_env(&acct);
    env.push(("ANTHROPIC_API_KEY".into(), KEY_A.into()));
    let sid = uuid();
    let pane = lab.launch(
        "s",
        &env,
        &claude_args(settings.to_str().unwrap(), "--session-id", &sid),
        &[],
    );
    std::thread::sleep(Duration::from_secs(4));
    log(format!("SCREEN:\n{}", trim(&lab.screen(&pane))));
    lab.dump_requests();
}

/// Launch timings: fresh and resumed.
#[test]
#[ignore]
fn probe_timing() {
    let lab = Lab::new("timing");
    let acct = api_key_account(&lab, "a", KEY_A, None);
    let settings = lab.settings(
        "settings",
        json!({"skipDangerousModePermissionPrompt": true}),
        None,
    );
    let mut env = lab.base_env(&acct);
    env.push(("ANTHROPIC_API_KEY".into(), KEY_A.into()));
    for i in 0..5 {
        let sid = uuid();
        let sess = format!("t{i}");
        let t0 = Instant::now();
        let pane = lab.launch(
            &sess,
            &env,
            &claude_args(settings.to_str().unwrap(), "--session-id", &sid),
            &[],
        );
        let (_, d) = lab
            .wait_screen(&pane, "idle", Duration::from_secs(20), idle)
            .unwrap();
        let n = lab.api.main_requests().len();
        let t = lab.type_line(&pane, &format!("timing prompt {i}"));
        let reqs = lab.api.wait_for_main(n + 1, Duration::from_secs(10));
        let first = reqs[n].at.duration_since(t);
        lab.wait_hook("Stop", i * 2 + 1, Duration::from_secs(10));
        let n = lab.api.main_requests().len();
        let t = lab.type_line(&pane, "second");
        let reqs = lab.api.wait_for_main(n + 1, Duration::from_secs(10));
        let warm = reqs[n].at.duration_since(t);
        lab.wait_hook("Stop", i * 2 + 2, Duration::from_secs(10));
        lab.type_line(&pane, "/exit");
        lab.wait_hook("SessionEnd", 2 * i + 1, Duration::from_secs(10));
        // resume
        let t1 = Instant::now();
        let pane2 = lab.launch(
            &format!("r{i}"),
            &env,
            &claude_args(settings.to_str().unwrap(), "--resume", &sid),
            &[],
        );
        let (_, d2) = lab
            .wait_screen(&pane2, "idle", Duration::from_secs(20), |s| {
                idle(s) && s.contains("timing prompt")
            })
            .unwrap();
        let _ = t1;
        lab.type_line(&pane2, "/exit");
        lab.wait_hook("SessionEnd", 2 * i + 2, Duration::from_secs(10));
        log(format!(
            "TIMING launch->idle {d:?}  first send->request {first:?}  warm send->request {warm:?}  resume->idle {d2:?}"
        ));
    }
}

const OAT_A: &str = "sk-ant-oat01-probeOAuthAccessTokenAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA-AAAAAAAA";
const ORT_A: &str = "sk-ant-ort01-probeOAuthRefreshTokenAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA-AAAAAAAA";

fn write_credentials(acct: &Path, access: &str, refresh: &str) {
    let far = 4_102_444_800_000u64; // 2100-01-01 in ms
    let c = json!({"claudeAiOauth": {
        "accessToken": access, "refreshToken": refresh, "expiresAt": far,
        "scopes": ["user:inference", "user:profile"], "subscriptionType": "max"}});
    std::fs::write(acct.join(".credentials.json"), c.to_string()).unwrap();
}

/// Auth by .credentials.json (PROBE_AUTH=creds) or CLAUDE_CODE_OAUTH_TOKEN (PROBE_AUTH=env).
#[test]
#[ignore]
fn probe_oauth() {
    let mode = std::env::var("PROBE_AUTH").unwrap_or_else(|_| "creds".into());
    let lab = Lab::new(&format!("oauth-{mode}"));
    let acct = lab.account("a", json!({}), None);
    let settings = lab.settings(
        "settings",
        json!({"skipDangerousModePermissionPrompt": true}),
        None,
    );
    let mut env = lab.base_env(&acct);
    if mode == "creds" {
        write_credentials(&acct, OAT_A, ORT_A);
    } else {
        env.push(("CLAUDE_CODE_OAUTH_TOKEN".into(), OAT_A.into()));
        env.push(("CLAUDE_CODE_SUBSCRIPTION_TYPE".into(), "max".into()));
    }
    lab.api.set_headers(&[
        ("anthropic-ratelimit-unified-status", "allowed"),
        ("anthropic-ratelimit-unified-5h-utilization", "0.42"),
        ("anthropic-ratelimit-unified-5h-reset", "1795750000"),
        ("anthropic-ratelimit-unified-7d-utilization", "0.17"),
        ("anthropic-ratelimit-unified-7d-reset", "1796000000"),
        (
            "anthropic-ratelimit-unified-representative-claim",
            "five_hour",
        ),
    ]);
    let sid = uuid();
    let strace_out = lab.root.join("out/strace.txt");
    let so = strace_out.to_str().unwrap().to_string();
    let t0 = Instant::now();
    let pane = lab.launch(
        "s",
        &env,
        &claude_args(settings.to_str().unwrap(), "--session-id", &sid),
        &["strace", "-f", "-qq", "-e", "trace=connect", "-o", &so],
    );
    let r = lab.wait_screen(&pane, "idle", Duration::from_secs(30), |s| {
        idle(s) && !s.contains("Enter to confirm")
    });
    log(format!("after {:?}, idle={}", t0.elapsed(), r.is_some()));
    std::thread::sleep(Duration::from_secs(2));
    log(format!("SCREEN:\n{}", trim(&lab.screen(&pane))));
    if r.is_some() {
        let t = lab.type_line(&pane, "oauth prompt one");
        let got = lab
            .api
            .try_wait_for(|r| r.iter().any(|r| r.is_main()), Duration::from_secs(15));
        log(format!(
            "main request arrived: {} ({:?})",
            got.is_some(),
            t.elapsed()
        ));
        lab.wait_hook("Stop", 1, Duration::from_secs(15));
        std::thread::sleep(Duration::from_millis(1500));
        log(format!("DONE SCREEN:\n{}", trim(&lab.screen(&pane))));
    }
    lab.dump_requests();
    let st = out_files(&lab, "status-");
    log(format!("statusLine calls: {}", st.len()));
    if let Some((f, c)) = st.last() {
        log(format!("LAST STATUS {f}: {c}"));
    }
    lab.type_line(&pane, "/exit");
    lab.wait_hook("SessionEnd", 1, Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(500));
    let trace = std::fs::read_to_string(&strace_out).unwrap_or_default();
    let mut non_loop: Vec<&str> = trace
        .lines()
        .filter(|l| l.contains("sin_addr") || l.contains("sin6_addr") || l.contains("sun_path"))
        .filter(|l| !l.contains("127.0.0.1"))
        .collect();
    non_loop.dedup();
    log(format!(
        "CONNECT attempts not to 127.0.0.1 ({}):",
        non_loop.len()
    ));
    for l in non_loop.iter().take(40) {
        log(format!("  {l}"));
    }
    log(format!(
        "credentials after: {}",
        std::fs::read_to_string(acct.join(".credentials.json")).unwrap_or_default()
    ));
    let cj: Value =
        serde_json::from_str(&std::fs::read_to_string(acct.join(".claude.json")).unwrap()).unwrap();
    log(format!(
        "claude.json keys: {:?}",
        cj.as_object().unwrap().keys().collect::<Vec<_>>()
    ));
    for k in [
        "oauthAccount",
        "userID",
        "cachedExtraUsageDisabledReason",
        "s1mAccessCache",
        "passesEligibilityCache",
    ] {
        if let Some(v) = cj.get(k) {
            log(format!("claude.json {k}: {v}"));
        }
    }
}

const KEY_B: &str = "sk-ant-api03-probeBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB-2222222BB";

/// Resume the same session under a second account sharing projects/.
/// PROBE_B=creds makes account B use .credentials.json instead of an API key.
#[test]
#[ignore]
fn probe_resume_other_account() {
    let lab = Lab::new("resume");
    let shared = lab.root.join("shared-projects");
    std::fs::create_dir_all(&shared).unwrap();
    let a = api_key_account(&lab, "a", KEY_A, None);
    let b_creds = std::env::var("PROBE_B").is_ok_and(|v| v == "creds");
    let b = if b_creds {
        let b = lab.account("b", json!({}), None);
        write_credentials(&b, OAT_A, ORT_A);
        b
    } else {
        api_key_account(&lab, "b", KEY_B, None)
    };
    std::os::unix::fs::symlink(&shared, a.join("projects")).unwrap();
    std::os::unix::fs::symlink(&shared, b.join("projects")).unwrap();
    let settings = lab.settings(
        "settings",
        json!({"skipDangerousModePermissionPrompt": true}),
        None,
    );
    let sid = uuid();
    let mut env_a = lab.base_env(&a);
    env_a.push(("ANTHROPIC_API_KEY".into(), KEY_A.into()));
    let pane = lab.launch(
        "a",
        &env_a,
        &claude_args(settings.to_str().unwrap(), "--session-id", &sid),
        &[],
    );
    lab.wait_screen(&pane, "idle", Duration::from_secs(20), idle)
        .unwrap();
    lab.type_line(&pane, "first exchange under account A");
    lab.wait_hook("Stop", 1, Duration::from_secs(15)).unwrap();
    lab.type_line(&pane, "/exit");
    lab.wait_hook("SessionEnd", 1, Duration::from_secs(10))
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    log(format!("A after exit:\n{}", trim(&lab.screen(&pane))));
    let files: Vec<_> = walk(&shared);
    log(format!("shared projects files: {files:?}"));

    let mut env_b = lab.base_env(&b);
    if !b_creds {
        env_b.push(("ANTHROPIC_API_KEY".into(), KEY_B.into()));
    }
    let t0 = Instant::now();
    let pane_b = lab.launch(
        "b",
        &env_b,
        &claude_args(settings.to_str().unwrap(), "--resume", &sid),
        &[],
    );
    let r = lab.wait_screen(&pane_b, "idle", Duration::from_secs(20), |s| {
        idle(s) && !s.contains("Enter to confirm")
    });
    log(format!("B idle after {:?}: {}", t0.elapsed(), r.is_some()));
    log(format!("B SCREEN:\n{}", trim(&lab.screen(&pane_b))));
    let n = lab.api.main_requests().len();
    lab.type_line(&pane_b, "second exchange under account B");
    let mains = lab.api.wait_for_main(n + 1, Duration::from_secs(15));
    let last = &mains[n];
    log(format!(
        "B request: cred={:?} sid={:?} messages={:?}",
        last.credential(),
        last.session_id(),
        last.messages()
            .iter()
            .map(|(r, t)| (r.clone(), t.chars().take(60).collect::<String>()))
            .collect::<Vec<_>>()
    ));
    lab.wait_hook("Stop", 2, Duration::from_secs(15));
    std::thread::sleep(Duration::from_millis(800));
    log(format!("B DONE SCREEN:\n{}", trim(&lab.screen(&pane_b))));
    for (f, c) in lab.sessions_json(&b) {
        log(format!("B sessions {f}: {c}"));
    }
    lab.type_line(&pane_b, "/exit");
    lab.wait_hook("SessionEnd", 2, Duration::from_secs(10));
    for (f, c) in out_files(&lab, "hook-SessionStart") {
        log(format!("{f}: {c}"));
    }
    for (f, c) in out_files(&lab, "hook-SessionEnd") {
        log(format!("{f}: {c}"));
    }
    let files: Vec<_> = walk(&shared);
    log(format!("shared projects files after: {files:?}"));
    let t = std::fs::read_to_string(shared.join(format!("-tmp-probe-resume-work/{sid}.jsonl")))
        .unwrap_or_default();
    for l in t.lines() {
        let v: Value = serde_json::from_str(l).unwrap_or(Value::Null);
        log(format!(
            "TRANSCRIPT type={} subtype={} sessionId={} model={} keys={:?}",
            v["type"],
            v["subtype"],
            v["sessionId"],
            v["message"]["model"],
            v.as_object()
                .map(|o| o.keys().cloned().collect::<Vec<_>>())
                .unwrap_or_default()
        ));
    }
    lab.dump_requests();
}

fn walk(d: &Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(d) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p.display().to_string());
            }
        }
    }
    out
}

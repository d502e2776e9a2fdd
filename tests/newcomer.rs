//! From the demo to real accounts: what a newcomer meets. `doctor` on a
//! machine missing each piece; `login` through Claude Code's own login
//! flow (against a fake of Anthropic's OAuth hosts); an account without a
//! login; an agent command that is missing or exits at once.

mod common;
use common::fake_oauth::FakeOAuth;
use common::pool::{LONG, Pool, claude, claude_bin};
use common::{BIN, Env, HEAD, wait_for};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// An executable script (a stand-in command).
fn script(path: &Path, body: &str) -> PathBuf {
    common::executable(path, &format!("#!/bin/sh\n{body}\n"));
    path.to_path_buf()
}

/// A `bin/` holding links to the given programs only (a machine without
/// the others).
fn bin_with(env: &Env, programs: &[(&str, &Path)]) -> PathBuf {
    let bin = env.path("bin");
    std::fs::create_dir_all(&bin).unwrap();
    for (name, target) in programs {
        let _ = std::fs::remove_file(bin.join(name));
        std::os::unix::fs::symlink(target, bin.join(name)).unwrap();
    }
    bin
}

fn which(program: &str) -> PathBuf {
    let out = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .unwrap();
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

fn account(env: &Env, name: &str, priority: i32) -> String {
    format!(
        "{HEAD}kind: Account\nmetadata:\n  name: {name}\nspec:\n  configDir: {}\n  priority: {priority}\n---\n",
        env.path(&format!("accounts/{name}")).display()
    )
}

fn logged_in(env: &Env, name: &str, refresh: &str) {
    env.write(
        &format!("accounts/{name}/.credentials.json"),
        &serde_json::json!({"claudeAiOauth": {"accessToken": "sk-ant-oat01-x", "refreshToken": refresh,
            "expiresAt": 4102444800000u64, "scopes": ["user:inference"]}})
        .to_string(),
    );
}

/// `apply -f FILE` with the config file the doctor reads.
fn apply(env: &Env, config: &Path, manifests: &Path) {
    env.ok(&[
        "--config",
        config.to_str().unwrap(),
        "apply",
        "-f",
        manifests.to_str().unwrap(),
    ]);
}

fn doctor(env: &Env, path: &Path, config: &Path) -> common::Out {
    common::Out::from(
        env.cmd(&["--config", config.to_str().unwrap(), "doctor"])
            .env("PATH", path)
            .env_remove("ANTHROPIC_BASE_URL")
            .env_remove("CLAUDE_CONFIG_DIR")
            .stdin(Stdio::null())
            .output()
            .unwrap(),
    )
}

fn problems(out: &common::Out) -> Vec<&str> {
    out.stdout
        .lines()
        .filter(|l| l.starts_with("PROBLEM"))
        .collect()
}

#[test]
fn doctor_names_each_missing_piece_with_its_fix() {
    let env = Env::new();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = busy.local_addr().unwrap().to_string();
    let not_a_dir = env.write("not-a-dir", "");
    let config = env.write(
        "config.yaml",
        &format!(
            "listen: {listen}\ntranscriptsDir: {}/projects\n",
            not_a_dir.display()
        ),
    );
    // Accounts: no config dir; a dir without credentials; a login; a copy
    // of that login in a second account.
    std::fs::create_dir_all(env.path("accounts/empty")).unwrap();
    logged_in(&env, "work", "sk-ant-ort01-one-login");
    logged_in(&env, "copy", "sk-ant-ort01-one-login");
    let manifests = env.write(
        "pool.yaml",
        &[
            account(&env, "nodir", 40),
            account(&env, "empty", 30),
            account(&env, "work", 10),
            account(&env, "copy", 20),
        ]
        .concat(),
    );
    apply(&env, &config, &manifests);
    // No claude and no tmux on this PATH.
    let bin = bin_with(&env, &[("sh", &which("sh"))]);
    let out = doctor(&env, &bin, &config);
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    let p = problems(&out);
    let has = |needle: &str| {
        p.iter()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no problem about {needle:?}:\n{}", out.stdout))
            .to_string()
    };
    assert!(
        has("`claude` is not on the agent's PATH")
            .contains("fix: npm install -g @anthropic-ai/claude-code@")
    );
    assert!(has("tmux is not installed").contains("fix: install it"));
    assert!(
        has("account nodir: config dir").contains("fix: log in with `claude-failover login nodir`")
    );
    assert!(
        has("account empty: no credentials")
            .contains("fix: log in with `claude-failover login empty`")
    );
    assert!(
        has("account copy holds a copy of account work's login")
            .contains("claude-failover login copy")
    );
    assert!(has("shared transcript folder").contains("fix: set transcriptsDir"));
    assert!(
        has(&format!(
            "daemon address {listen} is used by another program"
        ))
        .contains("fix: ")
    );
    assert_eq!(p.len(), 7, "one line per problem:\n{}", out.stdout);
    assert!(
        out.stdout.contains("ok       account work ("),
        "{}",
        out.stdout
    );
    assert!(!out.stdout.contains("sk-ant-ort01"), "no secret shown");
    assert!(out.stderr.contains("7 problems found"), "{}", out.stderr);

    // A Claude Code older than the supported range; a newer one is a note.
    let old = script(&env.path("old/claude"), "echo '2.1.100 (Claude Code)'");
    let bin = bin_with(&env, &[("claude", &old), ("tmux", &which("tmux"))]);
    let out = doctor(&env, &bin, &config);
    assert!(
        problems(&out)
            .iter()
            .any(|l| l.contains("Claude Code 2.1.100")
                && l.contains("older than the supported range (2.1.197 to 2.1.332)")),
        "{}",
        out.stdout
    );
    let new = script(&env.path("new/claude"), "echo '2.1.400 (Claude Code)'");
    let bin = bin_with(&env, &[("claude", &new), ("tmux", &which("tmux"))]);
    let out = doctor(&env, &bin, &config);
    assert!(
        out.stdout.contains("note     Claude Code 2.1.400"),
        "{}",
        out.stdout
    );
    drop(busy);
}

#[test]
#[cfg_attr(
    not(claude_code),
    ignore = "needs Claude Code: npm ci --prefix tools/claude-code"
)]
fn doctor_passes_on_a_ready_machine() {
    let claude = claude();
    let env = Env::new();
    let port = common::free_port();
    let config = env.write(
        "config.yaml",
        &format!(
            "listen: 127.0.0.1:{port}\ntranscriptsDir: {}\n",
            env.path("projects").display()
        ),
    );
    logged_in(&env, "work", "sk-ant-ort01-work");
    logged_in(&env, "spare", "sk-ant-ort01-spare");
    let manifests = env.write(
        "pool.yaml",
        &[account(&env, "work", 10), account(&env, "spare", 20)].concat(),
    );
    apply(&env, &config, &manifests);
    let bin = bin_with(&env, &[("claude", &claude), ("tmux", &which("tmux"))]);
    let out = doctor(&env, &bin, &config);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(problems(&out).is_empty());
    let version = claude_failover::agent::version::of_binary(&claude).unwrap();
    assert!(
        out.stdout
            .contains(&format!("ok       Claude Code {version} at")),
        "{}",
        out.stdout
    );
    for want in [
        "ok       tmux",
        "account work (",
        "account spare (",
        "shared transcript folder",
        "is free",
    ] {
        assert!(out.stdout.contains(want), "{want}:\n{}", out.stdout);
    }
}

/// The `login` command, in the background, on `pool`'s config.
fn start_login(pool: &Pool, account: &str, vars: &[(String, String)]) -> std::process::Child {
    let mut cmd = pool.cli(&["login", account, "--no-attach", "--timeout", "120s"]);
    for (k, v) in vars {
        cmd.env(k, v);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
#[cfg_attr(
    not(claude_code),
    ignore = "needs Claude Code: npm ci --prefix tools/claude-code"
)]
fn login_runs_claude_codes_own_login_and_the_account_becomes_available() {
    let claude = claude();
    let mut pool = Pool::new(claude.clone());
    let oauth = FakeOAuth::start(&[]);
    // The account: no login yet. Its session brings the gateway's address.
    pool.apply(&pool.account_yaml("work", 10));
    pool.apply(&pool.session_yaml("ccl-0", Some("work"), &[]));
    pool.start_daemon();
    let v = pool.wait_account("work", "NotLoggedIn", |v| {
        v["status"]["phase"] == "Unavailable"
    });
    let c = &v["status"]["conditions"][0];
    assert_eq!(c["reason"], "NotLoggedIn", "{v}");
    assert!(
        c["message"]
            .as_str()
            .unwrap()
            .contains("claude-failover login work"),
        "{v}"
    );
    // Its session waits for it, and says why.
    let s = pool.wait_session("ccl-0", "blocked", |s| {
        s["status"]["conditions"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c["reason"] == "AccountUnavailable"))
    });
    assert_eq!(s["status"]["phase"], "Pending", "{s}");
    assert!(s["status"]["pid"].is_null());

    // `login`: Claude Code's own login in the pool's tmux; the browser it
    // opens is this test, which signs in and sends the code back.
    let (browser, url_file) = FakeOAuth::browser(&pool.path(""));
    let mut vars = oauth.env();
    vars.push(("BROWSER".into(), browser.to_string_lossy().into_owned()));
    let child = start_login(&pool, "work", &vars);
    let url = wait_for("the authorize URL", LONG, || {
        std::fs::read_to_string(&url_file)
            .ok()
            .filter(|u| u.contains("state="))
    });
    assert!(
        pool.tmux(&["list-sessions", "-F", "#{session_name}"])
            .lines()
            .any(|l| l == "login-work"),
        "the login runs in the pool's tmux"
    );
    assert_eq!(FakeOAuth::finish_login(url.trim()), 302);
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        stdout.contains("account work is logged in (subscription login"),
        "{stdout}"
    );
    assert!(stderr.contains("login-work"), "{stderr}");
    // Claude Code wrote the credentials it got; nothing printed them.
    let issued = oauth.issued_access_tokens();
    let creds: Value = serde_json::from_slice(
        &std::fs::read(pool.path("accounts/work/.credentials.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(creds["claudeAiOauth"]["accessToken"], issued[0].as_str());
    assert!(!stdout.contains(&issued[0]) && !stderr.contains(&issued[0]));
    assert!(
        oauth
            .token_requests()
            .iter()
            .any(|r| r.grant() == Some("authorization_code")),
        "{:?}",
        oauth.requests()
    );
    assert!(
        pool.tmux(&["list-sessions", "-F", "#{session_name}"])
            .lines()
            .all(|l| l != "login-work"),
        "the login's tmux session is gone"
    );
    // The account is available at once, and its session starts on it.
    pool.wait_account("work", "Available", |v| v["status"]["phase"] == "Available");
    pool.wait_phase("ccl-0", "Idle");
    let d = pool.ok(&["describe", "account", "work"]);
    assert!(d.contains("LoggedIn"), "{d}");
    // Logged in: `login` says so and does nothing.
    let again = pool.ok(&["login", "work", "--no-attach"]);
    assert!(again.contains("already logged in"), "{again}");
}

#[test]
fn a_login_that_fails_says_what_the_login_printed() {
    let mut pool = Pool::new(claude_bin().unwrap_or_else(|| PathBuf::from("claude")));
    pool.apply(&pool.account_yaml("work", 10));
    // A stand-in for Claude Code whose login fails (Claude Code's own can
    // only be driven to success offline: its failures come from the real
    // sign-in pages).
    let fails = script(
        &pool.path("stand-in/claude"),
        "echo 'OAuth error: Request failed with status code 400'; exit 1",
    );
    let out = pool
        .cli(&[
            "login",
            "work",
            "--no-attach",
            "--command",
            fails.to_str().unwrap(),
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("account work: Claude Code's login ended without a login: OAuth error: Request failed with status code 400"),
        "{stderr}"
    );
    pool.start_daemon();
    pool.wait_account("work", "NotLoggedIn", |v| {
        v["status"]["conditions"][0]["reason"] == "NotLoggedIn"
    });
}

fn cond<'a>(v: &'a Value, t: &str) -> &'a Value {
    v["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == t))
        .unwrap_or_else(|| panic!("no {t} condition: {v}"))
}

#[test]
fn an_agent_that_cannot_start_is_a_crash_loop_that_says_why() {
    // Stand-in agent commands: no Claude Code needed.
    let mut pool = Pool::new(PathBuf::from("claude"));
    std::fs::create_dir_all(pool.path("accounts/a")).unwrap();
    std::fs::write(
        pool.path("accounts/a/.credentials.json"),
        r#"{"claudeAiOauth": {"accessToken": "t", "refreshToken": "r"}}"#,
    )
    .unwrap();
    pool.apply(&pool.account_yaml("a", 10));
    let workdir = pool.workdir();
    let session = |name: &str, command: &str| {
        format!(
            "{HEAD}kind: Session\nmetadata:\n  name: {name}\nspec:\n  workdir: {}\n  account: a\n  agent:\n    command: {command}\n",
            workdir.display()
        )
    };
    // Not installed: found missing before anything is launched.
    pool.apply(&session("missing", "claude-not-installed-here"));
    // Installed, but exits at once with a message.
    let quits = script(
        &pool.path("stand-in/claude"),
        "echo 'Invalid API key · Please run /login'; exit 1",
    );
    pool.apply(&session("quits", quits.to_str().unwrap()));
    pool.start_daemon();

    let v = pool.wait_session("missing", "crash loop", |v| {
        v["status"]["phase"] == "CrashLoopBackOff"
    });
    let ready = cond(&v, "Ready");
    assert_eq!(ready["reason"], "CommandNotFound", "{v}");
    let m = ready["message"].as_str().unwrap();
    assert!(
        m.contains("`claude-not-installed-here` is not on the agent's PATH"),
        "{m}"
    );
    assert!(
        m.contains("npm install -g @anthropic-ai/claude-code"),
        "{m}"
    );
    assert!(m.contains("next try at"), "{m}");
    assert!(v["status"]["nextStartAt"].is_string(), "{v}");
    assert!(
        pool.tmux(&["list-sessions", "-F", "#{session_name}"])
            .lines()
            .all(|l| l != "missing"),
        "nothing launched"
    );

    let v = pool.wait_session("quits", "crash loop", |v| {
        v["status"]["phase"] == "CrashLoopBackOff"
            && v["status"]["conditions"]
                .as_array()
                .is_some_and(|c| c.iter().any(|c| c["reason"] == "CrashedAtStart"))
    });
    let m = cond(&v, "Ready")["message"].as_str().unwrap().to_string();
    // The status when tmux has reaped the agent by then (it may lag).
    assert!(
        m.starts_with("agent exited with status 1 ") || m.starts_with("agent exited 0."),
        "{m}"
    );
    assert!(m.contains("Invalid API key · Please run /login"), "{m}");
    assert!(m.contains("next try at"), "{m}");
    // The table says so too (looked at until it does: between two tries
    // the phase is Starting a moment, and the back-off is short at first).
    common::wait_for(
        "the table to show the crash loop",
        common::pool::LONG,
        || {
            let table = pool.ok(&["get", "sessions"]);
            table
                .lines()
                .any(|l| l.starts_with("quits") && l.contains("CrashLoopBackOff"))
                .then_some(())
        },
    );
    // Retried with back-off, each exit told.
    pool.wait_session("quits", "retried", |v| {
        v["status"]["restarts"].as_u64().unwrap_or(0) >= 2
    });
    let d = pool.ok(&["describe", "session", "quits"]);
    assert!(d.contains("CrashedAtStart"), "{d}");

    // Fixed: a command that runs. The loop ends.
    let runs = script(&pool.path("stand-in/agent"), "exec sleep 600");
    pool.apply(&session("quits", runs.to_str().unwrap()));
    let v = pool.wait_session("quits", "running", |v| v["status"]["pid"].is_u64());
    assert_ne!(v["status"]["phase"], "CrashLoopBackOff", "{v}");
    assert!(v["status"]["nextStartAt"].is_null(), "{v}");
    let _ = BIN;
}

//! No secret reaches a log: a whole flow (real Claude Code, the real
//! daemon, its control plane and the CLI) with configured secrets, then
//! every line the daemon and the CLI wrote is searched for them.

mod common;
use common::daemon::{call, json};
use common::pool::{Pool, claude};
use std::os::unix::fs::PermissionsExt;

/// Every secret carries this marker, so a leak of any part of one (a
/// prefix, a suffix) is found too.
const MARK: &str = "SECRET";
const API_KEY: &str = "sk-ant-api03-SECRET-agent-key-5f1c9e7d2b4a6c8e0f1a3b5c7d9e1f2a";
const API_TOKEN: &str = "cf-api-token-SECRET-7e3b1d9f5a2c4e6b8d0f1a3c5e7b9d1f";
const TELEGRAM: &str = "123456:SECRET-telegram-bot-token-AAE9fKx2LmQ8rT";
const WRONG_TOKEN: &str = "cf-wrong-token-SECRET-0b1c2d3e4f5a6b7c";

#[test]
#[cfg_attr(
    not(claude_code),
    ignore = "needs Claude Code: npm ci --prefix tools/claude-code"
)]
fn no_secret_reaches_any_log() {
    let claude = claude();
    let mut pool = Pool::new(claude);
    let token_file = pool.path("secrets/api-token");
    std::fs::create_dir_all(token_file.parent().unwrap()).unwrap();
    std::fs::write(&token_file, format!("{API_TOKEN}\n")).unwrap();
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let config = pool.path("config.yaml");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!(
        "api:\n  tokenFile: {}\nnotify:\n  telegram:\n    baseUrl: {}\n    chatId: \"42\"\n    tokenEnv: CF_TEST_TELEGRAM_TOKEN\n",
        token_file.display(),
        pool.api.url()
    ));
    std::fs::write(&config, text).unwrap();
    pool.apply(&pool.account_yaml("a", 10));
    // A literal key in agent.env is refused, naming the way that works.
    let literal = pool.session_yaml("sec-0", Some("a"), &[]).replace(
        "    env:\n",
        &format!("    env:\n      ANTHROPIC_API_KEY: \"{API_KEY}\"\n"),
    );
    std::fs::write(pool.path("literal.yaml"), literal).unwrap();
    let out = pool
        .cli(&["apply", "-f", pool.path("literal.yaml").to_str().unwrap()])
        .output()
        .unwrap();
    let refusal = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success() && refusal.contains("valueFrom"),
        "{refusal}"
    );
    assert!(
        !refusal.contains(MARK),
        "the refusal repeats the secret: {refusal}"
    );
    // The key is in a file the Session names (valueFrom), read at launch.
    pool.apply(&pool.session_yaml("sec-0", Some("a"), &[("ANTHROPIC_API_KEY", API_KEY)]));
    assert!(
        pool.ok(&["get", "session", "sec-0", "-o", "yaml"])
            .contains("valueFrom"),
        "the key is not read from a file"
    );
    pool.start_daemon_with(
        &["--log-level", "debug"],
        &[("CF_TEST_TELEGRAM_TOKEN", TELEGRAM)],
    );
    let first = pool.wait_phase("sec-0", "Idle");
    let api = format!("{}/api/v1/namespaces/default", pool.api_url());
    let mut cli_output = String::new();
    let mut cli = |args: &[&str]| {
        let out = pool.cli(args).output().unwrap();
        let (o, e) = (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        );
        assert!(out.status.success(), "{args:?}: {o}{e}");
        assert!(e.is_empty(), "{args:?} went through the daemon: {e}");
        cli_output.push_str(&o);
        cli_output.push_str(&e);
    };

    // A task through the API, typed into the real agent, answered.
    let task = |name: &str| {
        format!(
            r#"{{"apiVersion": "claude-failover.io/v1alpha1", "kind": "Task", "metadata": {{"name": "{name}"}}, "spec": {{"prompt": "job {name}"}}}}"#
        )
    };
    let (code, body) = call(
        "POST",
        &format!("{api}/tasks"),
        Some(API_TOKEN),
        Some(&task("s1")),
    );
    assert_eq!(code, 201, "{body}");
    pool.wait_task_phase("s1", "Succeeded");
    // The agent authenticated with the key from its file.
    assert!(
        pool.api
            .main_requests()
            .iter()
            .any(|r| r.credential() == Some(API_KEY)),
        "{}",
        pool.api.summary()
    );

    // What people read of the session shows the file, not the key.
    cli(&["get", "session", "sec-0", "-o", "yaml"]);
    cli(&["get", "session", "sec-0", "-o", "json"]);
    cli(&["describe", "session", "sec-0"]);

    // Restart through the CLI (and so the API).
    cli(&["restart", "session", "sec-0"]);
    pool.wait_session("sec-0", "relaunched", |v| {
        v["status"]["phase"] == "Idle" && v["status"]["pid"] != first["status"]["pid"]
    });

    // Cancel a running task through the CLI.
    pool.api.hold();
    let (code, _) = call(
        "POST",
        &format!("{api}/tasks"),
        Some(API_TOKEN),
        Some(&task("s2")),
    );
    assert_eq!(code, 201);
    pool.wait_task_phase("s2", "Running");
    cli(&["cancel", "task", "s2"]);
    pool.wait_task_phase("s2", "Cancelled");
    pool.api.release();

    // A failover request, reads, the event stream's list, and refusals.
    let (code, _) = call(
        "POST",
        &format!("{api}/accounts/a/failover"),
        Some(API_TOKEN),
        None,
    );
    assert_eq!(code, 202);
    let (code, body) = call(
        "GET",
        &format!("{api}/sessions/sec-0/events"),
        Some(API_TOKEN),
        None,
    );
    assert_eq!(code, 200);
    assert!(json(&body)["items"].as_array().unwrap().len() > 3);
    for (method, tok) in [
        ("GET", Some(WRONG_TOKEN)),
        ("POST", Some(WRONG_TOKEN)),
        ("GET", None),
    ] {
        let (code, _) = call(method, &format!("{api}/tasks"), tok, Some("{}"));
        assert_eq!(code, 401);
    }
    let (code, metrics) = call("GET", &format!("{}/metrics", pool.api_url()), None, None);
    assert_eq!(code, 200);
    assert!(
        metrics.contains("claude_failover_dispatch_latency_seconds_count 2\n"),
        "{metrics}"
    );
    pool.signal_daemon(0, libc::SIGTERM);

    // Nothing the daemon or the CLI wrote holds a secret, or any part of one.
    let logs = [
        ("daemon stderr", pool.daemon_log(0)),
        (
            "daemon stdout",
            std::fs::read_to_string(pool.path("daemon-0.out")).unwrap(),
        ),
        ("CLI output", cli_output),
    ];
    assert!(
        logs[0].1.contains("DEBUG"),
        "debug logging was on: {}",
        logs[0].1
    );
    for (what, text) in &logs {
        for secret in [API_KEY, API_TOKEN, TELEGRAM, WRONG_TOKEN] {
            assert!(!text.contains(secret), "{what} holds a secret");
        }
        if let Some(line) = text.lines().find(|l| l.contains(MARK)) {
            panic!("{what} holds part of a secret: {line}");
        }
    }
    // Nor does the store (events, statuses, specs), which only its owner
    // may enter.
    let mode = std::fs::metadata(pool.path("store"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o700, "store directory mode {mode:o}");
    for (path, bytes) in common::snapshot(&pool.path("store")) {
        assert!(
            !String::from_utf8_lossy(&bytes).contains(MARK),
            "{} holds a secret",
            path.display()
        );
    }
}

/// Sessions of one account share its login: when its access token
/// expires, each Claude Code refreshes it through Claude Code's own lock,
/// reading what the last one wrote, so no refresh is refused and nobody is
/// logged out (measured: docs/claude-code-probe.md). The daemon neither
/// writes the credentials nor logs anyone out. A copy of the same login in
/// a second account is refused: a refresh in one would log the other out.
#[test]
#[cfg_attr(
    not(claude_code),
    ignore = "needs Claude Code: npm ci --prefix tools/claude-code"
)]
fn sessions_of_one_account_share_its_login_through_token_refreshes() {
    use common::fake_oauth::FakeOAuth;
    let claude = claude();
    let mut pool = Pool::new(claude);
    const FIRST_REFRESH: &str = "sk-ant-ort01-fake-refresh-0";
    let oauth = FakeOAuth::start(&[FIRST_REFRESH]);
    // Tokens that expire within Claude Code's refresh margin: each request
    // refreshes first, the harshest case for sessions sharing one login.
    oauth.set_expires_in(200);
    let expired = serde_json::json!({"claudeAiOauth": {
        "accessToken": "sk-ant-oat01-expired-already",
        "refreshToken": FIRST_REFRESH,
        "expiresAt": (std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64)
            - 60_000,
        "scopes": ["user:inference"],
        "subscriptionType": "max",
    }});
    let creds = pool.path("accounts/a/.credentials.json");
    std::fs::create_dir_all(creds.parent().unwrap()).unwrap();
    std::fs::write(&creds, expired.to_string()).unwrap();
    pool.apply(&pool.account_yaml("a", 10));
    // b holds a copy of a's login.
    std::fs::create_dir_all(pool.path("accounts/b")).unwrap();
    std::fs::copy(&creds, pool.path("accounts/b/.credentials.json")).unwrap();
    pool.apply(&pool.account_yaml("b", 20));
    let env: Vec<(String, String)> = oauth.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let names = ["sh-0", "sh-1", "sh-2"];
    for n in names {
        pool.apply(&pool.session_yaml(n, Some("a"), &env));
    }
    pool.apply(&pool.session_yaml("wants-b", Some("b"), &env));
    pool.start_daemon();
    let b = pool.wait_account("b", "a copy of a's login", |v| {
        v["status"]["phase"] == "Unavailable"
    });
    assert_eq!(b["status"]["conditions"][0]["reason"], "CopiedLogin", "{b}");
    // All four up (wants-b on a's login too) before the counting starts:
    // a start's refresh falls before the reads below.
    for n in names.iter().chain(&["wants-b"]) {
        pool.wait_phase(n, "Idle");
    }
    // Two rounds of tasks, one per session at once.
    for round in 0..2 {
        for (i, n) in names.iter().enumerate() {
            pool.apply(&pool.task_yaml(
                &format!("r{round}-{i}"),
                &format!("round {round} job {i}"),
                &format!("  session: {n}\n"),
            ));
        }
        for i in 0..names.len() {
            pool.wait_task_phase(&format!("r{round}-{i}"), "Succeeded");
        }
    }
    // Refreshed in turn: every refresh used the token the one before
    // issued, none was refused.
    let refreshes: Vec<_> = oauth
        .token_requests()
        .into_iter()
        .filter(|r| r.grant() == Some("refresh_token"))
        .collect();
    assert!(refreshes.len() >= 2, "{refreshes:?}");
    assert!(
        refreshes.iter().all(|r| r.status == 200),
        "a refresh was refused: {refreshes:?}"
    );
    let used: std::collections::HashSet<_> = refreshes.iter().map(|r| r.refresh_token()).collect();
    assert_eq!(
        used.len(),
        refreshes.len(),
        "a refresh token was used twice"
    );
    // Every conversation request carried a token the refreshes issued.
    let issued = oauth.issued_access_tokens();
    for r in pool.api.main_requests() {
        let c = r.credential().unwrap_or_default().to_string();
        assert!(
            issued.contains(&c),
            "request with {c}: not a refreshed token"
        );
    }
    // Nobody was logged out; the credentials are the last ones issued,
    // written by Claude Code.
    let a = pool.account("a").unwrap();
    assert_eq!(a["status"]["phase"], "Available", "{a}");
    let d = pool.ok(&["describe", "account", "a"]);
    assert!(!d.contains("NotLoggedIn"), "{d}");
    let now: serde_json::Value = serde_json::from_slice(&std::fs::read(&creds).unwrap()).unwrap();
    assert_eq!(
        now["claudeAiOauth"]["accessToken"],
        issued.last().unwrap().as_str()
    );
    let history = std::fs::read_to_string(pool.path("accounts/a/history.jsonl")).unwrap();
    assert!(!history.contains("/logout"), "{history}");
    // The session that wanted b runs elsewhere: never on the copied login.
    let v = pool.wait_phase("wants-b", "Idle");
    assert_eq!(v["status"]["account"], "a", "{v}");
    assert_eq!(
        std::fs::read(pool.path("accounts/b/.credentials.json")).unwrap(),
        expired.to_string().into_bytes(),
        "b's copy untouched"
    );
}

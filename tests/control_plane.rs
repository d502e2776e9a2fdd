//! The HTTP control plane through the real daemon and real HTTP: token,
//! health, readiness, metrics, the JSON API and its actions, the event
//! stream, the Unix socket, and the CLI's operational verbs on top.

mod common;
use common::daemon::{Daemon, Sse, T, call, json, raw_tcp, raw_unix, state_dir, token};
use common::*;
use std::os::unix::fs::PermissionsExt;
use std::time::Instant;

fn account_yaml(name: &str) -> String {
    format!("{HEAD}kind: Account\nmetadata:\n  name: {name}\nspec:\n  configDir: /tmp/cf-{name}\n")
}

fn task_json(name: &str, extra_spec: &str) -> String {
    format!(
        r#"{{"apiVersion": "claude-failover.io/v1alpha1", "kind": "Task", "metadata": {{"name": "{name}", "labels": {{"team": "api"}}}}, "spec": {{"prompt": "do {name}"{extra_spec}}}}}"#
    )
}

#[test]
fn the_token_guards_the_api_and_health_and_metrics_stay_open() {
    let env = Env::new();
    // `token` creates it before any daemon ran, private, and keeps it.
    let first = env.ok(&["token"]).trim().to_string();
    assert_eq!(first.len(), 64, "{first}");
    let path = state_dir(&env).join("api-token");
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(env.ok(&["token"]).trim(), first);

    let manifests = env.path("pool");
    env.write("pool/accounts.yaml", &account_yaml("work"));
    let d = Daemon::start(&env, &["--manifests", manifests.to_str().unwrap()]);
    assert_eq!(token(&env), first, "the daemon uses the same token");

    let (code, body) = call("GET", &format!("{}/healthz", d.url), None, None);
    assert_eq!((code, body.as_str()), (200, "ok"));
    let last = std::cell::RefCell::new(String::new());
    let ready = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_for("readyz to say ready", T, || {
            let (code, body) = call("GET", &format!("{}/readyz", d.url), None, None);
            *last.borrow_mut() = body.clone();
            (code == 200).then_some(body)
        })
    }))
    .unwrap_or_else(|_| panic!("not ready: {}", last.borrow()));
    let ready = json(&ready);
    assert_eq!(ready["ready"], true, "{ready}");
    assert!(
        ready["checks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["name"] == "manifests" && c["ok"] == true),
        "{ready}"
    );
    let (code, metrics) = call("GET", &format!("{}/metrics", d.url), None, None);
    assert_eq!(code, 200);
    assert!(
        metrics.contains("claude_failover_leader 1\n"),
        "this daemon leads:\n{metrics}"
    );
    assert!(metrics.contains("claude_failover_leader_transitions_total 1\n"));

    // No token, a wrong one, a malformed header: 401, and nothing changes.
    let tasks = format!("{}/api/v1/namespaces/default/tasks", d.url);
    let wrong = "wrong-token-0123456789abcdef";
    for (tok, body) in [(None, None), (Some(wrong), Some(task_json("sneaky", "")))] {
        let (code, body) = call(
            if body.is_some() { "POST" } else { "GET" },
            &tasks,
            tok,
            body.as_deref(),
        );
        assert_eq!(code, 401, "{body}");
        let status = json(&body);
        assert_eq!(status["reason"], "Unauthorized");
    }
    let (code, _) = raw_tcp(
        &d.addr(),
        &format!(
            "GET /api/v1/tasks HTTP/1.0\r\nHost: {}\r\nAuthorization: Basic {first}\r\n\r\n",
            d.addr()
        ),
    );
    assert_eq!(code, 401, "only a bearer token counts");
    assert_eq!(call("GET", &tasks, Some(&first), None).0, 200);
    assert!(env.run(&["get", "task", "sneaky"]).code != 0, "not created");

    // A name that is not loopback (DNS rebinding) is refused, even with the token.
    for path in ["/healthz", "/api/v1/tasks"] {
        let (code, body) = raw_tcp(
            &d.addr(),
            &format!(
                "GET {path} HTTP/1.0\r\nHost: rebind.evil.example:{}\r\nAuthorization: Bearer {first}\r\n\r\n",
                d.addr().rsplit(':').next().unwrap()
            ),
        );
        assert_eq!(code, 403, "{path}: {body}");
    }
    let log = d.log();
    assert!(!log.contains(&first) && !log.contains(wrong), "{log}");
}

#[test]
fn the_api_lists_creates_and_acts_and_the_cli_goes_through_it() {
    let env = Env::new();
    env.ok(&[
        "apply",
        "-f",
        env.write(
            "accounts.yaml",
            &format!("{}---\n{}", account_yaml("work"), account_yaml("spare")),
        )
        .to_str()
        .unwrap(),
    ]);
    let mut d = Daemon::start(&env, &[]);
    let tok = token(&env);
    let api = format!("{}/api/v1", d.url);
    let ns = format!("{api}/namespaces/default");

    // Create a task: 201 with the stored object; its name again: 409.
    let (code, body) = call(
        "POST",
        &format!("{ns}/tasks"),
        Some(&tok),
        Some(&task_json("t1", "")),
    );
    assert_eq!(code, 201, "{body}");
    let created = json(&body);
    assert_eq!(created["metadata"]["namespace"], "default");
    assert!(created["metadata"]["uid"].is_string());
    let (code, body) = call(
        "POST",
        &format!("{ns}/tasks"),
        Some(&tok),
        Some(&task_json("t1", "")),
    );
    assert_eq!(
        (code, json(&body)["reason"].clone()),
        (409, "AlreadyExists".into())
    );
    // Strict decoding, with the field named.
    let (code, body) = call(
        "POST",
        &format!("{ns}/tasks"),
        Some(&tok),
        Some(&task_json("t2", r#", "promt": "typo""#)),
    );
    assert_eq!(code, 422, "{body}");
    assert!(
        json(&body)["message"]
            .as_str()
            .unwrap()
            .contains("spec.promt"),
        "{body}"
    );
    // Only tasks are created here.
    let (code, _) = call("POST", &format!("{ns}/sessions"), Some(&tok), Some("{}"));
    assert_eq!(code, 405);
    // A namespace in the body must match the URL's.
    let (code, _) = call(
        "POST",
        &format!("{api}/namespaces/other/tasks"),
        Some(&tok),
        Some(&task_json("t3", "")),
    );
    assert_eq!(code, 201, "the URL's namespace applies");
    assert!(
        env.ok(&["get", "task", "t3", "-n", "other", "-o", "name"])
            .contains("t3")
    );

    // Read: one object, lists (namespaced, all, by label), 404s.
    let (code, body) = call("GET", &format!("{ns}/tasks/t1"), Some(&tok), None);
    assert_eq!(
        (code, json(&body)["spec"]["prompt"].clone()),
        (200, "do t1".into())
    );
    let names = |body: &str| -> Vec<String> {
        json(body)["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["metadata"]["name"].as_str().unwrap().to_string())
            .collect()
    };
    let (_, body) = call("GET", &format!("{api}/tasks"), Some(&tok), None);
    assert_eq!(
        names(&body),
        ["t1", "t3"],
        "all namespaces: default, then other"
    );
    let (_, body) = call("GET", &format!("{ns}/accounts"), Some(&tok), None);
    assert_eq!(names(&body), ["spare", "work"]);
    let (_, body) = call(
        "GET",
        &format!("{ns}/tasks?labelSelector=team%3Dapi"),
        Some(&tok),
        None,
    );
    assert_eq!(names(&body), ["t1"]);
    let (_, body) = call(
        "GET",
        &format!("{ns}/tasks?labelSelector=team%3Dweb"),
        Some(&tok),
        None,
    );
    assert!(names(&body).is_empty());
    assert_eq!(
        call("GET", &format!("{ns}/tasks/nope"), Some(&tok), None).0,
        404
    );
    // Names are checked before anything touches the store: no path tricks.
    for path in [
        format!("{api}/namespaces/..%2F..%2Fstore/tasks"),
        format!("{ns}/tasks/..%2F..%2Finventory%2Fx"),
        format!("{ns}/tasks/..%2Ft1/events"),
    ] {
        let (code, body) = call("GET", &path, Some(&tok), None);
        assert_eq!(code, 400, "{path}: {body}");
    }
    let (code, body) = call(
        "GET",
        &format!("{ns}/tasks?labelSelektor=x"),
        Some(&tok),
        None,
    );
    assert_eq!(
        (code, json(&body)["reason"].clone()),
        (400, "BadRequest".into())
    );
    assert!(body.contains("labelSelektor"), "{body}");
    let (code, _) = call(
        "POST",
        &format!("{api}/namespaces/..%2Fevil/tasks"),
        Some(&tok),
        Some(&task_json("t9", "")),
    );
    assert_eq!(code, 400);
    assert_eq!(
        call("GET", &format!("{ns}/widgets"), Some(&tok), None).0,
        404
    );

    // Cancel through the API: accepted, and the dispatcher ends it.
    let (code, body) = call("POST", &format!("{ns}/tasks/t1/cancel"), Some(&tok), None);
    assert_eq!(code, 202, "{body}");
    wait_for("t1 cancelled", T, || {
        let (_, body) = call("GET", &format!("{ns}/tasks/t1"), Some(&tok), None);
        (json(&body)["status"]["phase"] == "Cancelled").then_some(())
    });
    let (code, body) = call("POST", &format!("{ns}/tasks/t1/cancel"), Some(&tok), None);
    assert_eq!(code, 409, "already ended: {body}");
    // The dispatcher records its event after the status it wrote.
    let events = wait_for("t1's Cancelled event", T, || {
        let (_, body) = call("GET", &format!("{ns}/tasks/t1/events"), Some(&tok), None);
        Some(json(&body)).filter(|e| e.to_string().contains(r#""reason":"Cancelled""#))
    });
    let by_reason = |r: &str| {
        events["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["reason"] == r)
            .cloned()
            .unwrap_or_else(|| panic!("no {r} event: {events}"))
    };
    assert_eq!(by_reason("Created")["source"], "api");
    assert_eq!(by_reason("CancelRequested")["source"], "api");
    assert_eq!(by_reason("Cancelled")["involvedObject"]["name"], "t1");

    // The CLI's cancel goes through the API while the daemon runs.
    call(
        "POST",
        &format!("{ns}/tasks"),
        Some(&tok),
        Some(&task_json("t4", "")),
    );
    let out = env.run(&["cancel", "task", "t4", "nope"]);
    assert_eq!(out.code, 1);
    assert!(
        out.stdout
            .contains("task.claude-failover.io/t4 cancel requested"),
        "{}",
        out.stdout
    );
    assert!(out.stderr.contains("\"nope\" not found"), "{}", out.stderr);
    assert!(
        !out.stderr.contains("warning"),
        "the daemon was reachable: {}",
        out.stderr
    );
    let (_, body) = call("GET", &format!("{ns}/tasks/t4/events"), Some(&tok), None);
    assert!(
        body.contains(r#""reason":"CancelRequested""#) && body.contains(r#""source":"api""#),
        "{body}"
    );

    // Failover: a request the failover controller takes (here no session
    // runs on the account, so it says there is nothing to move).
    let (code, body) = call(
        "POST",
        &format!("{ns}/accounts/work/failover"),
        Some(&tok),
        Some(r#"{"to": "spare"}"#),
    );
    assert_eq!(code, 202, "{body}");
    wait_for("the failover controller's answer", T, || {
        let described = env.ok(&["describe", "account", "work"]);
        (described.contains("FailoverRequested") && described.contains("FailoverSkipped"))
            .then_some(())
    });
    let (code, _) = call(
        "POST",
        &format!("{ns}/accounts/spare/failover"),
        Some(&tok),
        None,
    );
    assert_eq!(code, 202, "no body: the policy picks the target");
    for (path, body, want) in [
        ("accounts/ghost/failover", "{}", 404),
        ("accounts/work/failover", r#"{"to": "ghost"}"#, 422),
        ("accounts/work/failover", r#"{"to": "work"}"#, 422),
        ("accounts/work/failover", r#"{"target": "spare"}"#, 422),
        ("sessions/ghost/restart", "{}", 404),
        ("tasks/t1/explode", "{}", 404),
    ] {
        let (code, text) = call("POST", &format!("{ns}/{path}"), Some(&tok), Some(body));
        assert_eq!(code, want, "{path} {body}: {text}");
    }
    let described = env.ok(&["describe", "account", "work"]);
    assert!(described.contains("FailoverRequested"), "{described}");

    // The daemon stops: the CLI says so and writes to the store instead.
    d.stop();
    assert!(!state_dir(&env).join("api.json").exists());
    call_cli_offline(&env);
}

fn call_cli_offline(env: &Env) {
    env.ok(&[
        "apply",
        "-f",
        env.write(
            "t5.yaml",
            &format!("{HEAD}kind: Task\nmetadata:\n  name: t5\nspec:\n  prompt: later\n"),
        )
        .to_str()
        .unwrap(),
    ]);
    let out = env.run(&["cancel", "task", "t5"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr.contains("no daemon serves this store")
            && out.stderr.contains("takes effect when the daemon runs"),
        "{}",
        out.stderr
    );
    let v = json(&env.ok(&["get", "task", "t5", "-o", "json"]));
    assert!(
        v["metadata"]["annotations"]["claude-failover.io/cancel"].is_string(),
        "{v}"
    );
    assert!(
        env.ok(&["describe", "task", "t5"])
            .contains("cancel requested through the cli")
    );
}

#[test]
fn the_event_stream_carries_changes_and_events() {
    let env = Env::new();
    let mut d = Daemon::start(&env, &[]);
    let tok = token(&env);
    let mut all = Sse::open(&d.addr(), "/api/v1/watch?namespace=default", &tok);
    let mut accounts = Sse::open(&d.addr(), "/api/v1/watch?kind=accounts", &tok);
    let (code, _) = call(
        "POST",
        &format!("{}/api/v1/namespaces/default/tasks", d.url),
        Some(&tok),
        Some(&task_json("streamed", "")),
    );
    assert_eq!(code, 201);
    let added = all.until("ADDED streamed", |e| {
        e.event == "change" && e.data.contains("\"streamed\"")
    });
    let v = json(&added.data);
    assert_eq!(v["type"], "ADDED");
    assert_eq!(v["object"]["spec"]["prompt"], "do streamed");
    let created = all.until("the Created event", |e| {
        e.event == "event" && e.data.contains("\"Created\"")
    });
    let v = json(&created.data);
    assert_eq!(v["involvedObject"]["kind"], "Task");
    assert_eq!(v["involvedObject"]["name"], "streamed");
    assert_eq!(v["type"], "Normal");
    assert_eq!(v["message"], "created through the API");
    assert!(v["lastTimestamp"].is_string());
    // The dispatcher's cancel is streamed too.
    call(
        "POST",
        &format!("{}/api/v1/namespaces/default/tasks/streamed/cancel", d.url),
        Some(&tok),
        None,
    );
    all.until("MODIFIED to Cancelled", |e| {
        e.event == "change" && json(&e.data)["object"]["status"]["phase"] == "Cancelled"
    });
    all.until("the Cancelled event", |e| {
        e.event == "event" && e.data.contains("\"Cancelled\"")
    });
    // The accounts-only stream saw none of that: its first item is the account.
    env.ok(&[
        "apply",
        "-f",
        env.write("a.yaml", &account_yaml("streamed-account"))
            .to_str()
            .unwrap(),
    ]);
    let first = accounts
        .next(Instant::now() + T)
        .expect("an item on the accounts stream");
    let v = json(&first.data);
    assert_eq!(
        (first.event.as_str(), v["type"].as_str()),
        ("change", Some("ADDED"))
    );
    assert_eq!(v["object"]["metadata"]["name"], "streamed-account");
    // Without the token: 401.
    let (code, _) = call("GET", &format!("{}/api/v1/watch", d.url), None, None);
    assert_eq!(code, 401);
    // Open streams do not hold the daemon up: SIGTERM ends them and it.
    d.stop();
    let deadline = Instant::now() + T;
    while all.next(deadline).is_some() {}
    assert!(all.ended, "the stream ended");
}

#[test]
fn the_api_is_served_on_a_private_unix_socket_too() {
    let env = Env::new();
    let socket = env.path("run/api.sock");
    let token_file = env.path("secrets/token");
    std::fs::create_dir_all(token_file.parent().unwrap()).unwrap();
    let config = env.write(
        "config.yaml",
        &format!(
            "api:\n  socket: {}\n  tokenFile: {}\n",
            socket.display(),
            token_file.display()
        ),
    );
    let config = config.to_str().unwrap();
    let d = Daemon::start(&env, &["--config", config]);
    let tok = std::fs::read_to_string(&token_file)
        .unwrap()
        .trim()
        .to_string();
    assert_eq!(env.ok(&["--config", config, "token"]).trim(), tok);
    assert_eq!(
        std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let (code, body) = raw_unix(&socket, "GET /healthz HTTP/1.0\r\n\r\n");
    assert_eq!((code, body.as_str()), (200, "ok"));
    let (code, _) = raw_unix(
        &socket,
        "GET /api/v1/accounts HTTP/1.0\r\nHost: localhost\r\n\r\n",
    );
    assert_eq!(code, 401);
    let (code, body) = raw_unix(
        &socket,
        &format!(
            "GET /api/v1/accounts HTTP/1.0\r\nHost: localhost\r\nAuthorization: Bearer {tok}\r\n\r\n"
        ),
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(json(&body)["kind"], "List");
    drop(d);
}

#[test]
fn a_session_restarts_through_the_api_and_resumes() {
    let env = Env::new();
    let config = env.write(
        "config.yaml",
        &format!(
            "tmuxSocket: {}\nresyncSeconds: 120\n",
            env.path("tmux.sock").display()
        ),
    );
    let config = config.to_str().unwrap().to_string();
    let _tmux = TmuxServer(env.path("tmux.sock"));
    // An account (logged in): its config dir's projects/ is the shared
    // transcript folder a relaunch resumes from.
    let pool = sim_pool_manifest(&env, "sim-0", &env.path("work-sim-0"));
    env.ok(&["apply", "-f", pool.to_str().unwrap()]);
    let d = Daemon::start(&env, &["--config", &config]);
    let session = || json(&env.ok(&["--config", &config, "get", "session", "sim-0", "-o", "json"]));
    let before = wait_for("sim-0 idle", T, || {
        let v = session();
        (v["status"]["phase"] == "Idle" && v["status"]["pid"].is_u64()).then_some(v)
    });
    // A conversation to resume: a task, typed into the agent and answered.
    let (code, _) = call(
        "POST",
        &format!("{}/api/v1/namespaces/default/tasks", d.url),
        Some(&token(&env)),
        Some(&task_json("warm-up", "")),
    );
    assert_eq!(code, 201);
    wait_for("warm-up done", T, || {
        let v = json(&env.ok(&["--config", &config, "get", "task", "warm-up", "-o", "json"]));
        (v["status"]["phase"] == "Succeeded").then_some(())
    });
    let out = env.run(&["--config", &config, "restart", "session", "sim-0"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        out.stdout.trim(),
        "session.claude-failover.io/sim-0 restart requested"
    );
    assert!(
        out.stderr.is_empty(),
        "went through the daemon: {}",
        out.stderr
    );
    let after = wait_for("sim-0 relaunched and idle", T, || {
        let v = session();
        (v["status"]["phase"] == "Idle"
            && v["status"]["pid"].is_u64()
            && v["status"]["pid"] != before["status"]["pid"])
            .then_some(v)
    });
    assert_eq!(
        after["status"]["agentSessionId"], before["status"]["agentSessionId"],
        "same conversation"
    );
    assert_eq!(after["status"]["restarts"], 0, "asked for, not a crash");
    let described = env.ok(&["--config", &config, "describe", "session", "sim-0"]);
    for want in [
        "RestartRequested",
        "restart requested through the api",
        "Restarting",
        "Relaunched",
        "resuming",
        "PhaseChanged",
    ] {
        assert!(
            described.contains(want),
            "describe lacks {want}:\n{described}"
        );
    }
    // Answered once: the agent keeps running after the next reconciles.
    let (_, body) = call(
        "GET",
        &format!("{}/api/v1/namespaces/default/sessions/sim-0/events", d.url),
        Some(&token(&env)),
        None,
    );
    assert_eq!(body.matches("\"Relaunched\"").count(), 1, "{body}");
    // The session controller and the hooks are counted (the relaunched
    // agent's SessionStart hook may come after its state file said idle).
    let value = |metrics: &str, series: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {series} in\n{metrics}"))
    };
    let metrics = wait_for(
        "the metrics to show the idle session, started twice",
        T,
        || {
            let (_, m) = call("GET", &format!("{}/metrics", d.url), None, None);
            (m.contains("claude_failover_sessions{phase=\"Idle\"} 1\n")
                && value(
                    &m,
                    "claude_failover_hook_events_total{event=\"SessionStart\"}",
                ) == 2.0)
                .then_some(m)
        },
    );
    let value = |series: &str| value(&metrics, series);
    assert!(value("claude_failover_reconciles_total{controller=\"session\"}") >= 2.0);
    assert!(value("claude_failover_reconciles_total{controller=\"task\"}") >= 1.0);
    assert_eq!(
        value("claude_failover_hook_events_total{event=\"UserPromptSubmit\"}"),
        1.0
    );
    assert_eq!(value("claude_failover_session_restarts_total"), 0.0);
    assert_eq!(value("claude_failover_dispatch_latency_seconds_count"), 1.0);
}

/// Each running agent holds a pidfd and each hook a connection: started
/// under a low soft limit of open files, the daemon raises it towards the
/// hard one (up to 16,384).
#[test]
fn the_daemon_raises_its_soft_limit_of_open_files() {
    use std::os::unix::process::CommandExt;
    let env = Env::new();
    let mut hard: libc::rlim_t = 0;
    let d = Daemon::start_with(&env, &[], |c| {
        let mut l = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit(2) into a struct of ours.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) }, 0);
        hard = l.rlim_max;
        let low = libc::rlimit {
            rlim_cur: 256.min(l.rlim_max),
            rlim_max: l.rlim_max,
        };
        // SAFETY: only setrlimit(2) runs between fork and exec.
        unsafe {
            c.pre_exec(move || {
                if libc::setrlimit(libc::RLIMIT_NOFILE, &low) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    });
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", d.pid())).unwrap();
    let soft: u64 = limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{limits}"));
    assert_eq!(soft, hard.min(16_384), "{limits}");
}

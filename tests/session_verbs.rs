//! The session verbs against the real Claude Code in real tmux (fake
//! Anthropic API on 127.0.0.1): `logs` (screen, transcript, following),
//! `attach`, `suspend`/`resume`, `wait --for=condition=Complete` on a task,
//! and `delete` waiting for the agent to be stopped.

mod common;
use common::pool::{LONG, Pool, claude};
use common::wait_for;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

/// A child's standard output, collected by a thread as it comes.
struct Follow {
    child: std::process::Child,
    out: Arc<Mutex<String>>,
}

impl Follow {
    fn start(mut cmd: Command) -> Follow {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let out = Arc::new(Mutex::new(String::new()));
        let sink = out.clone();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        Follow { child, out }
    }

    /// Waits until the follower has a file whose name ends in `suffix`
    /// open (it reads from there on).
    fn wait_open(&self, suffix: &str) {
        let fds = format!("/proc/{}/fd", self.child.id());
        wait_for(&format!("the follower to open *{suffix}"), LONG, || {
            std::fs::read_dir(&fds)
                .ok()?
                .flatten()
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .any(|l| l.to_string_lossy().ends_with(suffix))
                .then_some(())
        });
    }

    fn wait_for(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        wait_for(what, LONG, || {
            let s = self.out.lock().unwrap().clone();
            pred(&s).then_some(s)
        })
    }
}

impl Drop for Follow {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
#[cfg_attr(
    not(claude_code),
    ignore = "needs Claude Code: npm ci --prefix tools/claude-code"
)]
fn logs_attach_suspend_and_delete_a_session() {
    let mut pool = Pool::new(claude());
    pool.apply(&pool.account_yaml("a", 10));
    pool.apply(&pool.session_yaml(
        "verbs",
        Some("a"),
        &[(
            "ANTHROPIC_API_KEY",
            "sk-ant-api03-test-key-account-a-0000000000",
        )],
    ));
    pool.start_daemon();
    pool.ok(&[
        "wait",
        "session",
        "verbs",
        "--for=condition=Ready",
        "--timeout=90s",
    ]);
    pool.wait_phase("verbs", "Idle");

    // The screen, as tmux holds it: `logs` shows its last line. Claude
    // Code 2.1.332 says it started before it draws its screen, and draws it
    // in steps: compare a screen with the logs read right after it, until
    // the two agree (a screen still drawing can change in between).
    wait_for("logs showing the agent's screen", LONG, || {
        let screen = pool.screen("verbs");
        let last = screen.lines().rev().find(|l| !l.trim().is_empty())?;
        let logs = pool.ok(&["logs", "verbs"]);
        logs.contains(last.trim_end()).then_some(())
    });

    // A task runs there; `wait` sees it Complete (Job-style condition).
    pool.apply(&pool.task_yaml("first", "remember the LEMON", "  session: verbs\n"));
    pool.ok(&[
        "wait",
        "task",
        "first",
        "--for=condition=Complete",
        "--timeout=90s",
    ]);
    pool.wait_phase("verbs", "Idle");

    // The conversation's turns.
    let t = wait_for("the transcript's first turn", LONG, || {
        let out = pool
            .cli(&["logs", "verbs", "--transcript"])
            .output()
            .unwrap();
        let s = String::from_utf8_lossy(&out.stdout).into_owned();
        s.contains("assistant: ok: ").then_some(s)
    });
    assert!(
        t.contains("user: ") && t.contains("remember the LEMON"),
        "{t}"
    );

    // Following the transcript: the next turn appears.
    let follow = Follow::start(pool.cli(&["logs", "verbs", "--transcript", "-f", "--tail", "0"]));
    follow.wait_open(".jsonl");
    pool.apply(&pool.task_yaml("second", "now the PEAR", "  session: verbs\n"));
    let out = follow.wait_for("the followed turn", |s| {
        s.contains("assistant: ok: ") && s.contains("PEAR")
    });
    assert!(!out.contains("LEMON"), "--tail 0 starts at the end: {out}");
    drop(follow);
    pool.wait_phase("verbs", "Idle");

    // Following the screen: a long reply scrolls into the history and is
    // printed as it does.
    let follow = Follow::start(pool.cli(&["logs", "verbs", "-f"]));
    // It prints the screen as it is first: from there on it follows.
    follow.wait_for("the screen as it is", |s| !s.trim().is_empty());
    pool.api.set_reply(
        (1..=120)
            .map(|i| format!("numbered line {i}"))
            .collect::<Vec<_>>()
            .join("\n"),
    );
    pool.apply(&pool.task_yaml("third", "count for me", "  session: verbs\n"));
    follow.wait_for("the reply's lines, scrolled", |s| {
        s.contains("numbered line 40")
    });
    drop(follow);
    pool.api.reset_reply();
    pool.wait_phase("verbs", "Idle");

    // attach: a terminal (a pane of another tmux server) attaches to the
    // session on the pool's own server, read-only.
    let outer = pool.path("outer.sock");
    let attach = format!(
        "{} --config {} attach verbs -r",
        common::BIN,
        pool.path("config.yaml").display()
    );
    let ok = Command::new("tmux")
        .arg("-S")
        .arg(&outer)
        .args([
            "new-session",
            "-d",
            "-x",
            "120",
            "-y",
            "40",
            "-s",
            "outer",
            &attach,
        ])
        .env_remove("TMUX")
        .env("HOME", pool.env.dir.path())
        .status()
        .unwrap();
    assert!(ok.success());
    let client = wait_for("a client attached to verbs", LONG, || {
        let c = pool.tmux(&[
            "list-clients",
            "-t",
            "=verbs",
            "-F",
            "#{client_readonly} #{session_name}",
        ]);
        (!c.trim().is_empty()).then_some(c)
    });
    assert_eq!(
        client.trim(),
        "1 verbs",
        "read-only, on the session: {client}"
    );
    let _ = Command::new("tmux")
        .arg("-S")
        .arg(&outer)
        .arg("kill-server")
        .env_remove("TMUX")
        .status();

    // suspend stops the agent; resume brings it back, same conversation.
    let before = pool.session("verbs").unwrap();
    assert_eq!(
        pool.ok(&["suspend", "sessions", "--all"]),
        "session.claude-failover.io/verbs suspended\n"
    );
    pool.wait_phase("verbs", "Stopped");
    assert_eq!(
        pool.ok(&["resume", "session", "verbs"]),
        "session.claude-failover.io/verbs resumed\n"
    );
    let after = pool.wait_phase("verbs", "Idle");
    assert_eq!(
        after["status"]["agentSessionId"],
        before["status"]["agentSessionId"]
    );

    // delete waits for the finalizer: the agent stopped, the object gone.
    let out = pool.ok(&["delete", "session", "verbs"]);
    assert_eq!(out, "session.claude-failover.io \"verbs\" deleted\n");
    assert!(
        pool.session("verbs").is_none(),
        "delete returned before the object went"
    );
    assert!(
        pool.tmux(&["list-sessions", "-F", "#{session_name}"])
            .lines()
            .all(|l| l != "verbs")
    );
}

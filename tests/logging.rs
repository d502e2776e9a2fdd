//! The daemon's logs as an operator meets them: plain text in a pipe or a
//! file (no colour codes), JSON lines with the message at the top level,
//! and a configuration error said once.

mod common;
use common::daemon::{Daemon, T};
use common::*;
use serde_json::Value;

#[test]
fn text_logs_in_a_file_carry_no_colour_codes() {
    let env = Env::new();
    let d = Daemon::start(&env, &["--log-format", "text"]);
    let log = wait_for("the daemon to log its address and its lead", T, || {
        let l = d.log();
        (l.contains("listening") && l.contains("leader lease acquired")).then_some(l)
    });
    assert!(
        !log.contains('\u{1b}'),
        "escape codes in a log file:\n{log:?}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains(" INFO ") && l.contains("leader lease")),
        "{log}"
    );
}

#[test]
fn json_logs_have_the_message_at_the_top_level() {
    let env = Env::new();
    let d = Daemon::start(&env, &["--log-format", "json"]);
    let log = wait_for("the daemon to log its address and its lead", T, || {
        let l = d.log();
        (l.contains("listening") && l.contains("leader lease acquired")).then_some(l)
    });
    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(lines.len() > 2, "{log}");
    for l in &lines {
        assert!(l["message"].is_string(), "no top-level message: {l}");
        assert!(
            l["level"].is_string() && l["timestamp"].is_string() && l["target"].is_string(),
            "{l}"
        );
        assert!(l.get("fields").is_none(), "fields nested: {l}");
    }
    let listening = lines
        .iter()
        .find(|l| l["message"].as_str().unwrap().contains("listening"))
        .unwrap();
    // The event's fields sit beside the message.
    assert!(
        listening["addr"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:"),
        "{listening}"
    );
}

#[test]
fn a_config_error_is_said_once() {
    let env = Env::new();
    let bad = env.write("bad.yaml", "store: /x\nnamspace: y\n");
    let out = std::process::Command::new(BIN)
        .args(["--config", bad.to_str().unwrap(), "run"])
        .env_remove("CLAUDE_FAILOVER_STORE")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let what = format!("{}:2:1: namspace: unknown field `namspace`", bad.display());
    assert_eq!(err.matches(&what).count(), 1, "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

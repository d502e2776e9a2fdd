//! The notifier against a loopback server standing in for Telegram's Bot
//! API and a webhook receiver.
//!
//! The whole binary logs through one subscriber built like the daemon's
//! (the CLI's filter at `trace`, the `log` bridge installed), writing into a
//! buffer; every test checks that none of its tokens ever reached it.
//! Nothing sleeps to synchronise: tests wait on conditions with deadlines,
//! and timing is only asserted as lower bounds (which load cannot break).

#[path = "common/loopback.rs"]
mod loopback;

use claude_failover::config::{NotifyConfig, TelegramConfig, WebhookConfig};
use claude_failover::notify::{Channel, Notice, NoticeKind, Notifier, NotifyError, Outcome};
use loopback::{Loopback, Reply, eventually, refused_port};
use serde_json::{Value, json};
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

const WAIT: Duration = Duration::from_secs(20);
const CHAT: &str = "-1001234567890";

// ---------------------------------------------------------------------------
// Captured logs
// ---------------------------------------------------------------------------

#[derive(Clone)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Write for Buffer {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The log of the whole test binary so far.
fn logs() -> String {
    static BUF: OnceLock<Buffer> = OnceLock::new();
    let buf = BUF.get_or_init(|| {
        let buf = Buffer(Arc::new(Mutex::new(Vec::new())));
        let w = buf.clone();
        tracing_subscriber::fmt()
            .with_env_filter(claude_failover::cli::log_filter("trace"))
            .with_writer(move || w.clone())
            .with_ansi(false)
            .try_init()
            .expect("the only subscriber of this binary");
        buf
    });
    String::from_utf8_lossy(&buf.0.lock().unwrap()).into_owned()
}

fn assert_no_secret(tokens: &[&str]) {
    let log = logs();
    for t in tokens {
        assert!(!log.contains(t), "token {t:?} in the log:\n{log}");
    }
}

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

fn token_file(dir: &Path, name: &str, token: &str) -> String {
    let p = dir.join(name);
    // Token files usually end with a newline; it is not part of the token.
    std::fs::write(&p, format!("{token}\n")).unwrap();
    p.display().to_string()
}

fn telegram(base: &str, file: &str) -> Option<TelegramConfig> {
    Some(TelegramConfig {
        base_url: Some(base.to_string()),
        chat_id: CHAT.into(),
        token_env: Some("CLAUDE_FAILOVER_TEST_UNSET_TELEGRAM".into()),
        token_file: Some(file.to_string()),
    })
}

fn webhook(url: &str, file: Option<&str>) -> Option<WebhookConfig> {
    Some(WebhookConfig {
        url: url.to_string(),
        token_env: None,
        token_file: file.map(String::from),
    })
}

fn pace(min_interval: u64, max_attempts: u32) -> NotifyConfig {
    NotifyConfig {
        min_interval_seconds: Some(min_interval),
        dedup_seconds: Some(300),
        max_attempts: Some(max_attempts),
        ..Default::default()
    }
}

fn bot_path(token: &str) -> String {
    format!("/bot{token}/sendMessage")
}

async fn wait_stats(n: &Notifier, channel: Channel, outcome: Outcome, count: u64) {
    eventually(
        &format!("{count} {outcome} at {channel}"),
        WAIT,
        || (n.stats().get(channel, outcome) >= count).then_some(()),
        || format!("{:?}", n.stats()),
    )
    .await;
}

/// Every notice a webhook received, single or merged, as (kind, object).
fn webhook_notices(server: &Loopback, path: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for r in server.requests_to(path) {
        let list = match r.body.get("notices") {
            Some(Value::Array(a)) => a.clone(),
            _ => vec![r.body.clone()],
        };
        for n in list {
            out.push((
                n["kind"].as_str().unwrap_or_default().to_string(),
                n["object"].as_str().unwrap_or_default().to_string(),
            ));
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telegram_message_reaches_the_bot_api() {
    logs();
    let token = "7000000001:AAH-telegram-path-test";
    let dir = tempfile::tempdir().unwrap();
    let server = Loopback::start();
    let cfg = NotifyConfig {
        telegram: telegram(&server.url(), &token_file(dir.path(), "tg", token)),
        ..pace(1, 5)
    };
    let n = Notifier::start(&cfg).unwrap();
    assert_eq!(n.channels(), [Channel::Telegram]);
    n.send(Notice::new(
        NoticeKind::FailoverStarted,
        "Account default/a",
        "moving 3 sessions to b (5h at 91%)",
    ));
    wait_stats(&n, Channel::Telegram, Outcome::Sent, 1).await;

    let reqs = server.requests_to(&bot_path(token));
    assert_eq!(reqs.len(), 1, "{:?}", server.requests());
    let r = &reqs[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.body["chat_id"], CHAT);
    assert_eq!(
        r.body["text"],
        "failover-started Account default/a: moving 3 sessions to b (5h at 91%)"
    );
    assert_eq!(n.stats().get(Channel::Telegram, Outcome::Failed), 0);
    // The log has the notice itself (so this capture works) and no token.
    let log = logs();
    assert!(
        log.lines()
            .any(|l| l.contains(" INFO ") && l.contains("moving 3 sessions to b")),
        "{log}"
    );
    assert_no_secret(&[token]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_gets_json_and_bearer_token() {
    logs();
    let token = "wh-bearer-json-test-5b1c";
    let dir = tempfile::tempdir().unwrap();
    let server = Loopback::start();
    let cfg = NotifyConfig {
        webhook: webhook(
            &format!("{}/hook", server.url()),
            Some(&token_file(dir.path(), "wh", token)),
        ),
        ..pace(1, 5)
    };
    let n = Notifier::start(&cfg).unwrap();
    let before = SystemTime::now();
    n.send(Notice::new(
        NoticeKind::AccountExhausted,
        "Account default/work",
        "weekly limit reached, resets Nov 27 06:00 UTC",
    ));
    wait_stats(&n, Channel::Webhook, Outcome::Sent, 1).await;
    let after = SystemTime::now();

    let reqs = server.requests_to("/hook");
    assert_eq!(reqs.len(), 1);
    let r = &reqs[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.header("authorization"), Some(&*format!("Bearer {token}")));
    let body = r.body.as_object().expect("a JSON object");
    let mut keys: Vec<_> = body.keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(keys, ["kind", "message", "object", "time"]);
    assert_eq!(body["kind"], "account-exhausted");
    assert_eq!(body["object"], "Account default/work");
    assert_eq!(
        body["message"],
        "weekly limit reached, resets Nov 27 06:00 UTC"
    );
    let time: SystemTime = body["time"]
        .as_str()
        .unwrap()
        .parse::<k8s_openapi::jiff::Timestamp>()
        .expect("RFC 3339")
        .into();
    assert!(
        time >= before - Duration::from_secs(1) && time <= after,
        "{body:?}"
    );
    // An exhausted account is logged as a warning.
    let log = logs();
    assert!(
        log.lines()
            .any(|l| l.contains(" WARN ") && l.contains("weekly limit reached")),
        "{log}"
    );
    assert_no_secret(&[token]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_are_retried_and_delivered_once() {
    logs();
    let tg = "7000000002:AAH-retry-test";
    let wh = "wh-retry-test-9f2e";
    let dir = tempfile::tempdir().unwrap();
    let server = Loopback::start();
    server.script(
        &bot_path(tg),
        [Reply::new(
            502,
            json!({"ok": false, "error_code": 502, "description": "Bad Gateway"}),
        )],
    );
    server.script("/hook", [Reply::new(500, json!({"error": "boom"}))]);
    let cfg = NotifyConfig {
        telegram: telegram(&server.url(), &token_file(dir.path(), "tg", tg)),
        webhook: webhook(
            &format!("{}/hook", server.url()),
            Some(&token_file(dir.path(), "wh", wh)),
        ),
        ..pace(1, 5)
    };
    let n = Notifier::start(&cfg).unwrap();
    n.send(Notice::new(
        NoticeKind::FailoverDone,
        "Session default/ccl-0",
        "now on account b",
    ));
    wait_stats(&n, Channel::Telegram, Outcome::Sent, 1).await;
    wait_stats(&n, Channel::Webhook, Outcome::Sent, 1).await;

    for path in [bot_path(tg), "/hook".to_string()] {
        let reqs = server.requests_to(&path);
        assert_eq!(reqs.len(), 2, "one failure, one delivery at {path}");
        assert_eq!(reqs[0].raw_body, reqs[1].raw_body, "the same message again");
        assert!(
            reqs[1].at - reqs[0].at >= Duration::from_secs(1),
            "back-off"
        );
    }
    let s = n.stats();
    for c in Channel::ALL {
        assert_eq!(s.get(c, Outcome::Sent), 1);
        assert_eq!(s.get(c, Outcome::Failed), 0);
    }
    assert_no_secret(&[tg, wh]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_answers_set_the_wait() {
    logs();
    let tg = "7000000003:AAH-429-test";
    let dir = tempfile::tempdir().unwrap();
    let server = Loopback::start();
    // Telegram says when in its body; the webhook in Retry-After. Both ask
    // for 2 s, twice the back-off the notifier would use by itself.
    server.script(
        &bot_path(tg),
        [Reply::new(
            429,
            json!({"ok": false, "error_code": 429,
                   "description": "Too Many Requests: retry after 2",
                   "parameters": {"retry_after": 2}}),
        )],
    );
    server.script(
        "/hook",
        [Reply::new(429, json!({"error": "slow down"})).header("Retry-After", "2")],
    );
    let cfg = NotifyConfig {
        telegram: telegram(&server.url(), &token_file(dir.path(), "tg", tg)),
        webhook: webhook(&format!("{}/hook", server.url()), None),
        ..pace(1, 3)
    };
    let n = Notifier::start(&cfg).unwrap();
    n.send(Notice::new(
        NoticeKind::AccountRecovered,
        "Account default/a",
        "the 5-hour window reset",
    ));
    wait_stats(&n, Channel::Telegram, Outcome::Sent, 1).await;
    wait_stats(&n, Channel::Webhook, Outcome::Sent, 1).await;

    for path in [bot_path(tg), "/hook".to_string()] {
        let reqs = server.requests_to(&path);
        assert_eq!(reqs.len(), 2, "{path}");
        let gap = reqs[1].at - reqs[0].at;
        assert!(
            gap >= Duration::from_secs(2),
            "{path}: retried after {gap:?}"
        );
    }
    // No token configured for the webhook: no Authorization header.
    assert_eq!(server.requests_to("/hook")[0].header("authorization"), None);
    assert_no_secret(&[tg]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_within_the_window_are_dropped_and_counted() {
    logs();
    let tg = "7000000004:AAH-dedup-test";
    let dir = tempfile::tempdir().unwrap();
    let server = Loopback::start();
    let cfg = NotifyConfig {
        telegram: telegram(&server.url(), &token_file(dir.path(), "tg", tg)),
        webhook: webhook(&format!("{}/hook", server.url()), None),
        ..pace(1, 5)
    };
    let n = Notifier::start(&cfg).unwrap();
    let a = "Account default/a";
    n.send(Notice::new(NoticeKind::AccountExhausted, a, "5h at 100%"));
    n.send(Notice::new(
        NoticeKind::AccountExhausted,
        a,
        "5h still at 100%",
    ));
    n.send(Notice::new(
        NoticeKind::AccountExhausted,
        "Account default/b",
        "7d at 100%",
    ));
    n.send(Notice::new(NoticeKind::AccountRecovered, a, "window reset"));
    n.send(Notice::new(NoticeKind::AccountExhausted, a, "and again"));

    for c in Channel::ALL {
        // Counted at once, by send itself.
        assert_eq!(n.stats().get(c, Outcome::Deduplicated), 2, "{c}");
        wait_stats(&n, c, Outcome::Sent, 3).await;
    }
    let mut got = webhook_notices(&server, "/hook");
    got.sort();
    assert_eq!(
        got,
        [
            ("account-exhausted".into(), "Account default/a".into()),
            ("account-exhausted".into(), "Account default/b".into()),
            ("account-recovered".into(), "Account default/a".into()),
        ]
    );
    let text: String = server
        .requests_to(&bot_path(tg))
        .iter()
        .map(|r| format!("{}\n", r.body["text"].as_str().unwrap()))
        .collect();
    assert_eq!(text.lines().count(), 3, "{text}");
    assert!(
        !text.contains("still at 100%") && !text.contains("and again"),
        "{text}"
    );
    // Duplicates are still logged.
    assert!(logs().contains("5h still at 100%"));
    assert_no_secret(&[tg]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notices_inside_the_interval_go_out_as_one_message() {
    logs();
    let tg = "7000000005:AAH-merge-test";
    let dir = tempfile::tempdir().unwrap();
    let server = Loopback::start();
    // The first message stays in flight until released, so the next three
    // notices surely arrive while the destination may not send.
    server.script(&bot_path(tg), [Reply::new(200, json!({"ok": true})).held()]);
    server.script("/hook", [Reply::new(200, json!({})).held()]);
    let min_interval = Duration::from_secs(1);
    let cfg = NotifyConfig {
        telegram: telegram(&server.url(), &token_file(dir.path(), "tg", tg)),
        webhook: webhook(&format!("{}/hook", server.url()), None),
        ..pace(min_interval.as_secs(), 5)
    };
    let n = Notifier::start(&cfg).unwrap();
    let t0 = Instant::now();
    n.send(Notice::new(
        NoticeKind::TaskFailed,
        "Task default/t1",
        "timed out",
    ));
    eventually(
        "the first messages in flight",
        WAIT,
        || (server.requests().len() == 2).then_some(()),
        || format!("{:?}", server.requests()),
    )
    .await;
    for i in 2..=4 {
        n.send(Notice::new(
            NoticeKind::TaskFailed,
            format!("Task default/t{i}"),
            "timed out",
        ));
    }
    server.release();
    server.release();
    wait_stats(&n, Channel::Telegram, Outcome::Sent, 4).await;
    wait_stats(&n, Channel::Webhook, Outcome::Sent, 4).await;

    let tg_reqs = server.requests_to(&bot_path(tg));
    assert_eq!(tg_reqs.len(), 2, "{tg_reqs:?}");
    assert_eq!(
        tg_reqs[0].body["text"],
        "task-failed Task default/t1: timed out"
    );
    assert_eq!(
        tg_reqs[1].body["text"],
        "task-failed Task default/t2: timed out\n\
         task-failed Task default/t3: timed out\n\
         task-failed Task default/t4: timed out"
    );
    let wh_reqs = server.requests_to("/hook");
    assert_eq!(wh_reqs.len(), 2, "{wh_reqs:?}");
    assert_eq!(wh_reqs[0].body["object"], "Task default/t1");
    let merged = &wh_reqs[1].body;
    assert_eq!(merged["kind"], "merged");
    assert_eq!(merged["object"], "3 notices");
    assert_eq!(merged["message"], tg_reqs[1].body["text"]);
    let objects: Vec<_> = merged["notices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["object"].as_str().unwrap())
        .collect();
    assert_eq!(
        objects,
        ["Task default/t2", "Task default/t3", "Task default/t4"]
    );
    // Not before the interval since the first message started.
    for r in [&tg_reqs[1], &wh_reqs[1]] {
        assert!(
            r.at - t0 >= min_interval,
            "second message after {:?}",
            r.at - t0
        );
    }
    assert_no_secret(&[tg]);
}

#[test]
fn missing_token_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-token");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _guard = rt.enter();

    let cfg = NotifyConfig {
        telegram: telegram("https://api.telegram.org", missing.to_str().unwrap()),
        ..Default::default()
    };
    let err = Notifier::start(&cfg).unwrap_err();
    assert!(matches!(err, NotifyError::MissingToken { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.starts_with("notify.telegram: no bot token: "), "{msg}");
    assert!(msg.contains("CLAUDE_FAILOVER_TEST_UNSET_TELEGRAM"), "{msg}");
    assert!(msg.contains(missing.to_str().unwrap()), "{msg}");

    let empty = dir.path().join("empty-token");
    std::fs::write(&empty, "\n").unwrap();
    let cfg = NotifyConfig {
        webhook: webhook("http://127.0.0.1:9/hook", empty.to_str()),
        ..Default::default()
    };
    let msg = Notifier::start(&cfg).unwrap_err().to_string();
    assert!(
        msg.starts_with("notify.webhook: no bearer token: "),
        "{msg}"
    );
    assert!(msg.contains("is empty"), "{msg}");

    let cfg = NotifyConfig {
        telegram: Some(TelegramConfig {
            chat_id: CHAT.into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let msg = Notifier::start(&cfg).unwrap_err().to_string();
    assert!(
        msg.contains("notify.telegram.tokenEnv") && msg.contains("notify.telegram.tokenFile"),
        "{msg}"
    );
}

#[test]
fn start_needs_a_runtime_only_for_destinations() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = NotifyConfig {
        webhook: webhook(
            "http://127.0.0.1:9/hook",
            Some(&token_file(dir.path(), "wh", "wh-runtime-test")),
        ),
        ..Default::default()
    };
    assert!(matches!(Notifier::start(&cfg), Err(NotifyError::NoRuntime)));
    // Log only: no task, no runtime needed.
    let n = Notifier::start(&NotifyConfig::default()).unwrap();
    assert!(n.channels().is_empty());
    n.send(Notice::new(NoticeKind::FailoverDone, "x", "y"));
    Notifier::disabled().send(Notice::new(NoticeKind::FailoverDone, "x", "y"));
    assert_eq!(n.stats(), Notifier::disabled().stats());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_destinations_log_no_token() {
    logs();
    let tg_refused = "7000000006:AAH-refused-test";
    let wh_refused = "wh-refused-test-77aa";
    let tg_rejected = "7000000007:AAH-rejected-test";
    let dir = tempfile::tempdir().unwrap();
    let port = refused_port();

    // Nothing listens: connection refused, retried, given up.
    let cfg = NotifyConfig {
        telegram: telegram(
            &format!("http://127.0.0.1:{port}"),
            &token_file(dir.path(), "tg1", tg_refused),
        ),
        webhook: webhook(
            &format!("http://127.0.0.1:{port}/hook"),
            Some(&token_file(dir.path(), "wh", wh_refused)),
        ),
        ..pace(1, 2)
    };
    let refused = Notifier::start(&cfg).unwrap();
    refused.send(Notice::new(
        NoticeKind::SessionDegraded,
        "Session default/ccl-3",
        "restarted 5 times in 10 minutes",
    ));

    // A server that rejects the message and echoes the request path (with
    // the token) in its description: not retried, and scrubbed.
    let server = Loopback::start();
    server.script(
        &bot_path(tg_rejected),
        [Reply::new(
            401,
            json!({"ok": false, "error_code": 401,
                   "description": format!("Unauthorized: {}", bot_path(tg_rejected))}),
        )],
    );
    let cfg = NotifyConfig {
        telegram: telegram(&server.url(), &token_file(dir.path(), "tg2", tg_rejected)),
        ..pace(1, 5)
    };
    let rejected = Notifier::start(&cfg).unwrap();
    rejected.send(Notice::new(
        NoticeKind::FailoverFailed,
        "Session default/ccl-4",
        "target b not authenticated",
    ));

    wait_stats(&refused, Channel::Telegram, Outcome::Failed, 1).await;
    wait_stats(&refused, Channel::Webhook, Outcome::Failed, 1).await;
    wait_stats(&rejected, Channel::Telegram, Outcome::Failed, 1).await;
    assert_eq!(server.requests().len(), 1, "a 401 is not retried");
    assert_eq!(refused.stats().get(Channel::Telegram, Outcome::Sent), 0);

    let log = logs();
    let given_up: Vec<_> = log
        .lines()
        .filter(|l| l.contains("notification given up"))
        .collect();
    assert!(
        given_up.iter().any(|l| l.contains("telegram"))
            && given_up.iter().any(|l| l.contains("webhook")),
        "{log}"
    );
    assert!(
        log.lines().any(|l| l.contains("notification rejected")
            && l.contains("HTTP 401: Unauthorized: /bot***/sendMessage")),
        "{log}"
    );
    assert_no_secret(&[tg_refused, wh_refused, tg_rejected]);
}

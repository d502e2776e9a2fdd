//! The usage poll against a loopback server standing in for the usage
//! endpoint: headers, parsing, error mapping and the persisted schedule.

#[path = "common/loopback.rs"]
mod loopback;

use claude_failover::quota::poll::{OAUTH_BETA, PollError, PollSchedule, access_token, poll_usage};
use loopback::{Loopback, Reply, refused_port};
use serde_json::json;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const USAGE: &str = "/api/oauth/usage";

/// Credentials as Claude Code keeps them on Linux (and as
/// tests/common/pool.rs `account_with_token` writes them).
fn write_credentials(config_dir: &Path, token: &str) {
    std::fs::create_dir_all(config_dir).unwrap();
    let creds = json!({"claudeAiOauth": {
        "accessToken": token,
        "refreshToken": "sk-ant-ort01-refresh-a",
        "expiresAt": 4102444800000u64,
        "scopes": ["user:inference"],
        "subscriptionType": "max",
    }});
    std::fs::write(config_dir.join(".credentials.json"), creds.to_string()).unwrap();
}

fn time(s: &str) -> SystemTime {
    s.parse::<k8s_openapi::jiff::Timestamp>().unwrap().into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_is_read_with_the_oauth_headers() {
    let dir = tempfile::tempdir().unwrap();
    let config_dir = dir.path().join("accounts/a");
    let token = "sk-ant-oat01-poll-headers-test";
    write_credentials(&config_dir, token);
    let server = Loopback::start();
    server.script(
        USAGE,
        [Reply::new(
            200,
            json!({
                "five_hour": {"utilization": 37.0, "resets_at": "2026-11-27T06:00:00+00:00"},
                "seven_day": {"utilization": 81.5, "resets_at": "2026-11-30T10:00:00.512345+00:00"},
                "seven_day_oauth_apps": null,
                "seven_day_opus": {"utilization": 0.0, "resets_at": null},
                "extra_usage": {"is_enabled": false, "monthly_limit": null}
            }),
        )],
    );

    let token_read = access_token(&config_dir).expect("a token");
    // A trailing slash on the base URL is fine.
    let u = poll_usage(&format!("{}/", server.url()), &token_read)
        .await
        .unwrap();

    let reqs = server.requests();
    assert_eq!(reqs.len(), 1);
    let r = &reqs[0];
    assert_eq!((r.method.as_str(), r.path.as_str()), ("GET", USAGE));
    assert_eq!(r.header("authorization"), Some(&*format!("Bearer {token}")));
    assert_eq!(r.header("anthropic-beta"), Some(OAUTH_BETA));
    assert_eq!(OAUTH_BETA, "oauth-2025-04-20");

    let five = u.five_hour.expect("five_hour");
    assert_eq!(five.utilization, 37.0);
    assert_eq!(five.resets_at, Some(time("2026-11-27T06:00:00Z")));
    let seven = u.seven_day.expect("seven_day");
    assert_eq!(seven.utilization, 81.5);
    assert_eq!(seven.resets_at, Some(time("2026-11-30T10:00:00.512345Z")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn null_windows_are_absent() {
    let server = Loopback::start();
    server.script(
        USAGE,
        [Reply::new(
            200,
            json!({"five_hour": null, "seven_day": {"utilization": 4.0, "resets_at": null}}),
        )],
    );
    let u = poll_usage(&server.url(), "sk-ant-oat01-null")
        .await
        .unwrap();
    assert_eq!(u.five_hour, None);
    let seven = u.seven_day.unwrap();
    assert_eq!((seven.utilization, seven.resets_at), (4.0, None));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_answers_are_mapped() {
    let token = "sk-ant-oat01-errors-test";
    let server = Loopback::start();
    server.script(
        USAGE,
        [
            Reply::new(429, json!({"error": {"type": "rate_limit_error"}}))
                .header("Retry-After", "120"),
            Reply::new(429, json!({"error": {"type": "rate_limit_error"}})),
            Reply::new(401, json!({"error": {"type": "authentication_error"}})),
            Reply::new(403, json!({"error": {"type": "permission_error"}})),
            Reply::new(503, json!({"error": {"type": "overloaded_error"}})),
            Reply::new(200, json!("<html>maintenance</html>")),
        ],
    );
    let mut got = Vec::new();
    for _ in 0..6 {
        got.push(poll_usage(&server.url(), token).await.unwrap_err());
    }
    assert_eq!(got[0], PollError::RetryAfter(Duration::from_secs(120)));
    assert_eq!(got[1], PollError::Status(429));
    assert_eq!(got[2], PollError::Unauthorized);
    assert_eq!(got[3], PollError::Unauthorized);
    assert_eq!(got[4], PollError::Status(503));
    assert!(matches!(got[5], PollError::Parse(_)), "{:?}", got[5]);
    for e in &got {
        assert!(!e.to_string().contains(token), "{e}");
    }
    assert_eq!(
        got[0].to_string(),
        "rate limited by the usage endpoint: retry after 120s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_endpoint_is_a_transport_error() {
    let token = "sk-ant-oat01-refused-test";
    let err = poll_usage(&format!("http://127.0.0.1:{}", refused_port()), token)
        .await
        .unwrap_err();
    assert!(matches!(err, PollError::Transport(_)), "{err:?}");
    assert!(!err.to_string().contains(token), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedule_survives_a_restart() {
    let state = tempfile::tempdir().unwrap();
    let server = Loopback::start();
    server.script(
        USAGE,
        [Reply::new(429, json!({})).header("Retry-After", "900")],
    );
    let interval = Duration::from_secs(300);
    let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);

    // Nothing saved yet: poll now.
    let mut s = PollSchedule::load(state.path(), "default", "a").unwrap();
    assert_eq!(s, PollSchedule::default());
    assert!(s.due(now));

    let err = poll_usage(&server.url(), "sk-ant-oat01-schedule")
        .await
        .unwrap_err();
    s.after_error(now, interval, &err);
    s.save(state.path(), "default", "a").unwrap();

    let path = state.path().join("quota/default/a.json");
    assert_eq!(PollSchedule::path(state.path(), "default", "a"), path);
    let on_disk: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(on_disk["nextPollAt"], 1_800_000_900u64);
    assert_eq!(on_disk["failures"], 1);

    // A restart reads it back: not due before the Retry-After is over.
    let mut back = PollSchedule::load(state.path(), "default", "a").unwrap();
    assert_eq!(back, s);
    assert!(!back.due(now + Duration::from_secs(899)));
    assert!(back.due(now + Duration::from_secs(900)));

    let later = now + Duration::from_secs(900);
    poll_usage(&server.url(), "sk-ant-oat01-schedule")
        .await
        .expect("the default answer parses");
    back.after_success(later, interval);
    back.save(state.path(), "default", "a").unwrap();
    let again = PollSchedule::load(state.path(), "default", "a").unwrap();
    assert_eq!(again.next_poll_at, 1_800_001_200);
    assert_eq!(again.failures, 0);
    assert_eq!(again.last_result.as_deref(), Some("ok"));
    // Other accounts are separate files.
    assert_eq!(
        PollSchedule::load(state.path(), "default", "b").unwrap(),
        PollSchedule::default()
    );
}

#[test]
fn corrupt_schedule_is_an_error_naming_the_file() {
    let state = tempfile::tempdir().unwrap();
    let path = PollSchedule::path(state.path(), "ns", "x");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, "{oops").unwrap();
    let err = PollSchedule::load(state.path(), "ns", "x")
        .unwrap_err()
        .to_string();
    assert!(err.contains(&path.display().to_string()), "{err}");
}

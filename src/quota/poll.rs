//! The budgeted poll of the usage endpoint.
//!
//! The usage is read from the endpoint Claude Code's `/usage` reads:
//! `GET BASE/api/oauth/usage` with the account's OAuth access token, for an
//! account with no live session (so no statusLine feed), and for the
//! per-model weekly windows, which only it tells. The
//! endpoint is unofficial and rate-limited (about 30 requests an hour per
//! account, shared with Claude Code itself), so each account has a
//! [`PollSchedule`] kept in the state dir (`STATE/quota/NS/NAME.json`): the
//! next poll time survives restarts, a `Retry-After` pushes it further and
//! other failures back off exponentially up to an hour.
//!
//! The access token is read from the account's config dir at each poll
//! ([`access_token`]), never stored elsewhere, and never appears in an
//! error.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Timeout of one poll, connect to last byte.
pub const POLL_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait after repeated failures.
pub const MAX_BACKOFF: Duration = Duration::from_secs(3600);
/// Longest wait a `Retry-After` answer can impose (a day).
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(86_400);
/// The `anthropic-beta` value the endpoint requires.
pub const OAUTH_BETA: &str = "oauth-2025-04-20";
/// Largest response body read.
const BODY_LIMIT: u64 = 1024 * 1024;

/// The OAuth access token of the account whose `CLAUDE_CONFIG_DIR` is
/// `config_dir`: `.credentials.json` → `claudeAiOauth.accessToken`, as
/// Claude Code keeps it on Linux. `None` when the file is missing,
/// unreadable, not JSON or holds no (non-empty) token: such an account is
/// not polled (API-key accounts have no usage windows).
pub fn access_token(config_dir: &Path) -> Option<String> {
    let data = std::fs::read(config_dir.join(".credentials.json")).ok()?;
    let v: Value = serde_json::from_slice(&data).ok()?;
    let token = v.pointer("/claudeAiOauth/accessToken")?.as_str()?.trim();
    (!token.is_empty()).then(|| token.to_string())
}

/// One usage reading of the endpoint.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct UsageSnapshot {
    /// The rolling 5-hour window; `None` when the answer had none.
    pub five_hour: Option<WindowReading>,
    /// The weekly window; `None` when the answer had none.
    pub seven_day: Option<WindowReading>,
    /// The weekly window of Opus models, when the answer has one.
    pub seven_day_opus: Option<WindowReading>,
    /// The weekly window of Sonnet models, when the answer has one.
    pub seven_day_sonnet: Option<WindowReading>,
}

impl UsageSnapshot {
    /// Each window the answer had, with its reading.
    pub fn windows(self) -> Vec<(super::Window, WindowReading)> {
        use super::Window::*;
        [
            (FiveHour, self.five_hour),
            (SevenDay, self.seven_day),
            (SevenDayOpus, self.seven_day_opus),
            (SevenDaySonnet, self.seven_day_sonnet),
        ]
        .into_iter()
        .filter_map(|(w, r)| Some((w, r?)))
        .collect()
    }
}

/// One window of a reading.
#[derive(Clone, Debug, PartialEq)]
pub struct WindowReading {
    /// Percent used, 0..=100 (values outside are clamped).
    pub utilization: f64,
    /// When the window resets; `None` when not started.
    pub resets_at: Option<SystemTime>,
}

/// Why a poll gave no reading. No variant ever carries the token.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum PollError {
    /// 429 with a `Retry-After`: ask again no sooner than this.
    #[error("rate limited by the usage endpoint: retry after {}s", .0.as_secs())]
    RetryAfter(Duration),
    /// 401 or 403: the access token was refused (expired or revoked; Claude
    /// Code refreshes it when it next runs on the account).
    #[error("the usage endpoint refused the access token (expired or revoked)")]
    Unauthorized,
    /// Any other non-2xx answer (a 429 without `Retry-After` included).
    #[error("the usage endpoint answered HTTP {0}")]
    Status(u16),
    /// No answer: connection, TLS, timeout.
    #[error("usage endpoint unreachable: {0}")]
    Transport(String),
    /// An answer that is not the expected JSON.
    #[error("unexpected answer from the usage endpoint: {0}")]
    Parse(String),
}

/// Reads the usage of the account holding `token` from
/// `GET {base_url}/api/oauth/usage` (10 s timeout; runs the blocking HTTP
/// client on tokio's blocking pool).
pub async fn poll_usage(base_url: &str, token: &str) -> Result<UsageSnapshot, PollError> {
    let url = format!("{}/api/oauth/usage", base_url.trim_end_matches('/'));
    let token = token.to_string();
    tokio::task::spawn_blocking(move || poll_blocking(&url, &token))
        .await
        .map_err(|e| PollError::Transport(format!("the poll thread failed: {e}")))?
}

fn agent() -> &'static ureq::Agent {
    static AGENT: OnceLock<ureq::Agent> = OnceLock::new();
    AGENT.get_or_init(|| {
        ureq::Agent::new_with_config(
            ureq::Agent::config_builder()
                .timeout_global(Some(POLL_TIMEOUT))
                .http_status_as_error(false)
                .max_redirects(0)
                .max_redirects_will_error(false)
                .user_agent(concat!("claude-failover/", env!("CARGO_PKG_VERSION")))
                .build(),
        )
    })
}

fn poll_blocking(url: &str, token: &str) -> Result<UsageSnapshot, PollError> {
    let scrub = |s: String| {
        if token.is_empty() {
            s
        } else {
            s.replace(token, "***")
        }
    };
    let mut response = agent()
        .get(url)
        .header("Authorization", format!("Bearer {token}"))
        .header("anthropic-beta", OAUTH_BETA)
        .header("Accept", "application/json")
        .call()
        .map_err(|e| PollError::Transport(scrub(e.to_string())))?;
    let status = response.status().as_u16();
    match status {
        200..=299 => {}
        401 | 403 => return Err(PollError::Unauthorized),
        429 => {
            let after = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| parse_retry_after(v, SystemTime::now()));
            return Err(after.map_or(PollError::Status(429), PollError::RetryAfter));
        }
        _ => return Err(PollError::Status(status)),
    }
    let body = response
        .body_mut()
        .with_config()
        .limit(BODY_LIMIT)
        .read_to_vec()
        .map_err(|e| PollError::Transport(scrub(e.to_string())))?;
    parse_usage(&body)
}

/// Parses the endpoint's answer: `five_hour`, `seven_day` and the
/// per-model `seven_day_opus` and `seven_day_sonnet` objects (or `null`)
/// with `utilization` (percent) and `resets_at` (RFC 3339 or `null`);
/// other keys are ignored. A window object whose `utilization` is
/// `null` counts as absent.
pub fn parse_usage(body: &[u8]) -> Result<UsageSnapshot, PollError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| PollError::Parse(e.to_string()))?;
    if !v.is_object() {
        return Err(PollError::Parse("not a JSON object".into()));
    }
    Ok(UsageSnapshot {
        five_hour: window(&v, "five_hour")?,
        seven_day: window(&v, "seven_day")?,
        seven_day_opus: window(&v, "seven_day_opus")?,
        seven_day_sonnet: window(&v, "seven_day_sonnet")?,
    })
}

fn window(v: &Value, key: &str) -> Result<Option<WindowReading>, PollError> {
    let w = match v.get(key) {
        None | Some(Value::Null) => return Ok(None),
        Some(w @ Value::Object(_)) => w,
        Some(_) => return Err(PollError::Parse(format!("{key}: not an object"))),
    };
    let utilization = match w.get("utilization") {
        None | Some(Value::Null) => return Ok(None),
        Some(u) => u
            .as_f64()
            .ok_or_else(|| PollError::Parse(format!("{key}.utilization: not a number")))?,
    };
    let resets_at = match w.get("resets_at") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(parse_time(s).ok_or_else(|| {
            PollError::Parse(format!("{key}.resets_at: not an RFC 3339 time: {s:?}"))
        })?),
        Some(_) => {
            return Err(PollError::Parse(format!("{key}.resets_at: not a string")));
        }
    };
    Ok(Some(WindowReading {
        utilization: utilization.clamp(0.0, 100.0),
        resets_at,
    }))
}

fn parse_time(s: &str) -> Option<SystemTime> {
    s.parse::<k8s_openapi::jiff::Timestamp>()
        .ok()
        .map(SystemTime::from)
}

/// Parses an HTTP `Retry-After` value, delay-seconds (`120`) or HTTP-date
/// (`Wed, 21 Oct 2015 07:28:00 GMT`), into a wait from `now` (a date in
/// the past is zero). At most [`MAX_RETRY_AFTER`]; `None` when malformed.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    let wait = if let Ok(secs) = value.parse::<u64>() {
        Duration::from_secs(secs)
    } else {
        let at = k8s_openapi::jiff::fmt::rfc2822::DateTimeParser::new()
            .parse_timestamp(value)
            .ok()?;
        SystemTime::from(at).duration_since(now).unwrap_or_default()
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

/// When an account's usage may next be polled, kept in
/// `STATE/quota/NS/NAME.json` across restarts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PollSchedule {
    /// Unix seconds; 0 (the default) means now.
    #[serde(default)]
    pub next_poll_at: u64,
    /// Failed polls in a row.
    #[serde(default)]
    pub failures: u32,
    /// `ok` or the last error, for `describe` and logs.
    #[serde(default)]
    pub last_result: Option<String>,
}

/// Why a schedule could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a poll schedule: {source}")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl PollSchedule {
    /// `STATE/quota/NS/NAME.json`.
    pub fn path(state_dir: &Path, ns: &str, name: &str) -> PathBuf {
        state_dir
            .join("quota")
            .join(ns)
            .join(format!("{name}.json"))
    }

    /// The schedule of account `ns/name`; a missing file is the default
    /// (poll now).
    pub fn load(state_dir: &Path, ns: &str, name: &str) -> Result<PollSchedule, ScheduleError> {
        let path = Self::path(state_dir, ns, name);
        match std::fs::read(&path) {
            Ok(data) => serde_json::from_slice(&data)
                .map_err(|source| ScheduleError::Corrupt { path, source }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(PollSchedule::default()),
            Err(source) => Err(ScheduleError::Io { path, source }),
        }
    }

    /// Writes the schedule atomically (creating the directories).
    pub fn save(&self, state_dir: &Path, ns: &str, name: &str) -> Result<(), ScheduleError> {
        let path = Self::path(state_dir, ns, name);
        let io = |source| ScheduleError::Io {
            path: path.clone(),
            source,
        };
        if let Some(dir) = path.parent() {
            crate::fsutil::ensure_dir(dir).map_err(io)?;
        }
        let data = serde_json::to_vec_pretty(self).expect("a schedule serializes");
        crate::fsutil::write_atomic(&path, &data, None, true).map_err(io)
    }

    /// Whether a poll is allowed at `now`.
    pub fn due(&self, now: SystemTime) -> bool {
        unix(now) >= self.next_poll_at
    }

    /// After a reading: next poll one `interval` later, failures reset.
    pub fn after_success(&mut self, now: SystemTime, interval: Duration) {
        self.next_poll_at = unix(now).saturating_add(interval.as_secs());
        self.failures = 0;
        self.last_result = Some("ok".into());
    }

    /// After a failed poll. `RetryAfter`: no sooner than it says, and no
    /// sooner than `interval`. Any other error: `interval` doubled per
    /// failure in a row (2×, 4×, ...), at most an hour (or `interval` when
    /// that is longer).
    pub fn after_error(&mut self, now: SystemTime, interval: Duration, err: &PollError) {
        self.failures = self.failures.saturating_add(1);
        let wait = match err {
            PollError::RetryAfter(after) => (*after).max(interval),
            _ => {
                let factor = 1u32.checked_shl(self.failures.min(31)).unwrap_or(u32::MAX);
                interval
                    .checked_mul(factor)
                    .unwrap_or(Duration::MAX)
                    .min(MAX_BACKOFF.max(interval))
            }
        };
        self.next_poll_at = unix(now).saturating_add(wait.as_secs());
        self.last_result = Some(err.to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(s)
    }

    #[test]
    fn parses_the_usage_answer() {
        let body = br#"{
            "five_hour": {"utilization": 37.0, "resets_at": "2026-11-27T06:00:00+00:00"},
            "seven_day": {"utilization": 12.5, "resets_at": "2026-11-30T10:00:00.123456+00:00"},
            "seven_day_oauth_apps": null,
            "seven_day_opus": {"utilization": 0.0, "resets_at": null},
            "extra_usage": {"is_enabled": false}
        }"#;
        let u = parse_usage(body).unwrap();
        let five = u.five_hour.clone().unwrap();
        assert_eq!(five.utilization, 37.0);
        let expect: SystemTime = "2026-11-27T06:00:00Z"
            .parse::<k8s_openapi::jiff::Timestamp>()
            .unwrap()
            .into();
        assert_eq!(five.resets_at, Some(expect));
        assert_eq!(u.seven_day.as_ref().unwrap().utilization, 12.5);
        assert_eq!(u.seven_day_opus.as_ref().unwrap().utilization, 0.0);
        assert_eq!(u.seven_day_sonnet, None);
        let windows: Vec<_> = u.windows().into_iter().map(|(w, _)| w.label()).collect();
        assert_eq!(windows, ["five_hour", "seven_day", "seven_day_opus"]);
        let u = parse_usage(
            br#"{"seven_day_sonnet": {"utilization": 96.5, "resets_at": "2026-11-30T10:00:00Z"}}"#,
        )
        .unwrap();
        assert_eq!(u.seven_day_sonnet.unwrap().utilization, 96.5);
    }

    #[test]
    fn null_or_missing_windows_are_none() {
        let u = parse_usage(br#"{"five_hour": null}"#).unwrap();
        assert_eq!(u, UsageSnapshot::default());
        let u = parse_usage(br#"{"five_hour": {"utilization": null, "resets_at": null}}"#).unwrap();
        assert_eq!(u.five_hour, None);
        let u = parse_usage(br#"{"seven_day": {"utilization": 104.0}}"#).unwrap();
        assert_eq!(
            u.seven_day,
            Some(WindowReading {
                utilization: 100.0,
                resets_at: None
            })
        );
    }

    #[test]
    fn malformed_answers_are_parse_errors() {
        for body in [
            &b"<html>"[..],
            b"[]",
            br#"{"five_hour": 3}"#,
            br#"{"five_hour": {"utilization": "x"}}"#,
            br#"{"five_hour": {"utilization": 1, "resets_at": "tomorrow"}}"#,
        ] {
            assert!(
                matches!(parse_usage(body), Err(PollError::Parse(_))),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        let now = at(1_445_412_400); // 2015-10-21T07:26:40Z
        assert_eq!(
            parse_retry_after(" 120 ", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now),
            Some(Duration::from_secs(80))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("99999999", now), Some(MAX_RETRY_AFTER));
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-5", now), None);
    }

    #[test]
    fn schedule_success_and_due() {
        let mut s = PollSchedule::default();
        assert!(s.due(at(0)));
        s.failures = 3;
        s.after_success(at(1000), Duration::from_secs(300));
        assert_eq!(s.next_poll_at, 1300);
        assert_eq!(s.failures, 0);
        assert_eq!(s.last_result.as_deref(), Some("ok"));
        assert!(!s.due(at(1299)));
        assert!(s.due(at(1300)));
    }

    #[test]
    fn schedule_retry_after_is_at_least_the_interval() {
        let mut s = PollSchedule::default();
        let i = Duration::from_secs(300);
        s.after_error(
            at(1000),
            i,
            &PollError::RetryAfter(Duration::from_secs(900)),
        );
        assert_eq!(s.next_poll_at, 1900);
        s.after_error(at(1000), i, &PollError::RetryAfter(Duration::from_secs(10)));
        assert_eq!(s.next_poll_at, 1300);
        assert_eq!(s.failures, 2);
        assert!(s.last_result.unwrap().contains("retry after 10s"));
    }

    #[test]
    fn schedule_other_errors_double_up_to_an_hour() {
        let mut s = PollSchedule::default();
        let i = Duration::from_secs(300);
        let waits: Vec<u64> = (0..6)
            .map(|_| {
                s.after_error(at(0), i, &PollError::Status(503));
                s.next_poll_at
            })
            .collect();
        assert_eq!(waits, [600, 1200, 2400, 3600, 3600, 3600]);
        // Many failures never overflow.
        s.failures = u32::MAX - 1;
        s.after_error(at(0), i, &PollError::Unauthorized);
        assert_eq!(s.next_poll_at, 3600);
        // An interval above the cap is kept.
        let mut s = PollSchedule::default();
        s.after_error(at(0), Duration::from_secs(7200), &PollError::Status(500));
        assert_eq!(s.next_poll_at, 7200);
        s.after_success(at(0), i);
        s.after_error(at(0), i, &PollError::Transport("x".into()));
        assert_eq!(s.next_poll_at, 600);
    }

    #[test]
    fn access_token_reads_claude_credentials() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(access_token(d.path()), None);
        std::fs::write(d.path().join(".credentials.json"), "{not json").unwrap();
        assert_eq!(access_token(d.path()), None);
        std::fs::write(
            d.path().join(".credentials.json"),
            r#"{"claudeAiOauth":{"accessToken":"sk-ant-oat01-x","refreshToken":"r","expiresAt":4102444800000,"scopes":["user:inference"]}}"#,
        )
        .unwrap();
        assert_eq!(access_token(d.path()).as_deref(), Some("sk-ant-oat01-x"));
        std::fs::write(
            d.path().join(".credentials.json"),
            r#"{"claudeAiOauth":{"accessToken":""}}"#,
        )
        .unwrap();
        assert_eq!(access_token(d.path()), None);
    }
}

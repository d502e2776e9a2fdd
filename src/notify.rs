//! Notifications: Telegram, a JSON webhook and the log.
//!
//! [`Notifier::send`] never blocks and never fails: it logs the notice
//! (`warn` for the kinds that need a person, `info` otherwise) and hands it
//! to one background task per configured destination, which delivers it.
//!
//! Guarantees, per destination:
//! - Rate limit: at most one message per `minIntervalSeconds` (default 10).
//!   Notices that arrive while a destination must wait, or while a message
//!   is being delivered, go out together in the next message, one line each
//!   (up to about 3,500 characters per message; the rest follows in the
//!   next one).
//! - De-duplication: a notice with the same kind and object as one accepted
//!   less than `dedupSeconds` ago (default 300) is logged but not sent, and
//!   counted as `deduplicated`. The window runs from the accepted notice,
//!   so a lasting condition is repeated once per window.
//! - Retries: a transport error, a 5xx or a 429 is retried with exponential
//!   back-off (1 s, doubling, at most 60 s) for up to `maxAttempts` attempts
//!   (default 5); a `retry_after` in Telegram's answer or an HTTP
//!   `Retry-After` header sets the wait instead. Any other answer fails the
//!   message at once. A message given up is logged (`warn`) and counted
//!   `failed`; notices are never retried forever.
//! - Secrets: tokens are read from an environment variable or a file, never
//!   from the config. The Telegram bot token is part of the request URL, so
//!   URLs are never logged, and every error text from the HTTP client is
//!   scrubbed (each token replaced by `***`) before it is logged. The HTTP
//!   client logs request paths at its `trace` level: daemons must cap it
//!   with [`quiet_http_client`] (the CLI's log filter does).
//!
//! Wire formats:
//! - Telegram: `POST BASE/bot<TOKEN>/sendMessage` with
//!   `{"chat_id": CHAT, "text": TEXT}`, one line per notice
//!   (`failover-started Account default/a: message`).
//! - Webhook: `POST URL` with `Authorization: Bearer TOKEN` when a token is
//!   configured; a single notice is `{"kind", "object", "message", "time"}`
//!   (`time` in RFC 3339); a merged message has `kind: "merged"`, `object:
//!   "N notices"`, every line in `message`, the newest notice's `time`, and
//!   the notices themselves in `notices` (same four fields each).
//!
//! Counters ([`Notifier::stats`]) count notices, not HTTP requests: a
//! merged message of three notices adds three to `sent` (or `failed`).

use crate::config::{NotifyConfig, TelegramConfig, WebhookConfig};
use serde_json::{Value, json};
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Default of `notify.minIntervalSeconds`.
pub const DEFAULT_MIN_INTERVAL: Duration = Duration::from_secs(10);
/// Default of `notify.dedupSeconds`.
pub const DEFAULT_DEDUP_WINDOW: Duration = Duration::from_secs(300);
/// Default of `notify.maxAttempts`.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;
/// Default of `notify.telegram.baseUrl`.
pub const DEFAULT_TELEGRAM_BASE_URL: &str = "https://api.telegram.org";

/// First back-off wait after a failed attempt.
const BACKOFF_START: Duration = Duration::from_secs(1);
/// Longest back-off wait.
const BACKOFF_CAP: Duration = Duration::from_secs(60);
/// Longest wait a `retry_after` / `Retry-After` can impose.
const RETRY_AFTER_CAP: Duration = Duration::from_secs(3600);
/// Timeout of one HTTP request, connect to last byte.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Characters per message before the rest waits for the next message
/// (Telegram takes at most 4,096).
const MESSAGE_CHARS: usize = 3500;
/// Longest line (one notice) in characters; longer ones are cut.
const LINE_CHARS: usize = 1000;
/// Notices a destination keeps waiting at most; beyond, the oldest are
/// dropped (counted `failed`).
const MAX_PENDING: usize = 1000;
/// Bytes of an error answer read (for its description).
const ERROR_BODY_LIMIT: u64 = 16 * 1024;

// ---------------------------------------------------------------------------
// Notices
// ---------------------------------------------------------------------------

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NoticeKind {
    /// Sessions started moving away from an account.
    FailoverStarted,
    /// Sessions run on their new account.
    FailoverDone,
    /// A failover could not be completed (rolled back).
    FailoverFailed,
    /// A session keeps failing (restarts, unreachable agent).
    SessionDegraded,
    /// A task ended `Failed`.
    TaskFailed,
    /// An account reached its limit.
    AccountExhausted,
    /// An account is usable again (its window reset).
    AccountRecovered,
}

impl NoticeKind {
    /// Every kind, in declaration order.
    pub const ALL: [NoticeKind; 7] = [
        NoticeKind::FailoverStarted,
        NoticeKind::FailoverDone,
        NoticeKind::FailoverFailed,
        NoticeKind::SessionDegraded,
        NoticeKind::TaskFailed,
        NoticeKind::AccountExhausted,
        NoticeKind::AccountRecovered,
    ];

    /// The kebab-case name, e.g. `failover-started` (also its `Display`).
    pub fn as_str(self) -> &'static str {
        match self {
            NoticeKind::FailoverStarted => "failover-started",
            NoticeKind::FailoverDone => "failover-done",
            NoticeKind::FailoverFailed => "failover-failed",
            NoticeKind::SessionDegraded => "session-degraded",
            NoticeKind::TaskFailed => "task-failed",
            NoticeKind::AccountExhausted => "account-exhausted",
            NoticeKind::AccountRecovered => "account-recovered",
        }
    }

    /// Whether the notice asks for attention (logged at `warn`).
    pub fn is_alarm(self) -> bool {
        matches!(
            self,
            NoticeKind::FailoverFailed
                | NoticeKind::SessionDegraded
                | NoticeKind::TaskFailed
                | NoticeKind::AccountExhausted
        )
    }
}

impl fmt::Display for NoticeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One notification.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    pub kind: NoticeKind,
    /// What it is about, e.g. `Account default/a`; with `kind`, the key of
    /// de-duplication.
    pub object: String,
    /// One human sentence.
    pub message: String,
}

impl Notice {
    /// A notice.
    pub fn new(kind: NoticeKind, object: impl Into<String>, message: impl Into<String>) -> Notice {
        Notice {
            kind,
            object: object.into(),
            message: message.into(),
        }
    }

    /// The notice as one line of a message: `KIND OBJECT: MESSAGE`, with
    /// line breaks flattened and at most [`LINE_CHARS`] characters.
    fn line(&self) -> String {
        let line = if self.object.is_empty() {
            format!("{}: {}", self.kind, self.message)
        } else {
            format!("{} {}: {}", self.kind, self.object, self.message)
        };
        let flat: String = line
            .chars()
            .map(|c| if c == '\n' || c == '\r' { ' ' } else { c })
            .collect();
        match flat.char_indices().nth(LINE_CHARS) {
            Some((i, _)) => format!("{}…", &flat[..i]),
            None => flat,
        }
    }
}

// ---------------------------------------------------------------------------
// Counters
// ---------------------------------------------------------------------------

/// A notification destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Channel {
    Telegram,
    Webhook,
}

impl Channel {
    /// Every channel.
    pub const ALL: [Channel; 2] = [Channel::Telegram, Channel::Webhook];

    /// `telegram` or `webhook` (the metric label).
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Telegram => "telegram",
            Channel::Webhook => "webhook",
        }
    }

    /// The config key of the channel.
    fn key(self) -> &'static str {
        match self {
            Channel::Telegram => "notify.telegram",
            Channel::Webhook => "notify.webhook",
        }
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What became of a notice at one destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Delivered (the destination answered 2xx).
    Sent,
    /// Given up (attempts exhausted, rejected, or dropped from a full queue).
    Failed,
    /// Not sent: the same kind and object went out within `dedupSeconds`.
    Deduplicated,
}

impl Outcome {
    /// Every outcome.
    pub const ALL: [Outcome; 3] = [Outcome::Sent, Outcome::Failed, Outcome::Deduplicated];

    /// `sent`, `failed` or `deduplicated` (the metric label).
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Sent => "sent",
            Outcome::Failed => "failed",
            Outcome::Deduplicated => "deduplicated",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A snapshot of the notifier's counters: notices per channel and outcome,
/// since start. Channels that are not configured stay at zero.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NotifyStats {
    counts: [[u64; 3]; 2],
}

impl NotifyStats {
    /// Notices of `channel` that ended as `outcome`.
    pub fn get(&self, channel: Channel, outcome: Outcome) -> u64 {
        self.counts[channel as usize][outcome as usize]
    }

    /// Every (channel, outcome, count), zeros included.
    pub fn iter(&self) -> impl Iterator<Item = (Channel, Outcome, u64)> + '_ {
        Channel::ALL.into_iter().flat_map(move |c| {
            Outcome::ALL
                .into_iter()
                .map(move |o| (c, o, self.get(c, o)))
        })
    }
}

#[derive(Default)]
struct Counters {
    counts: [[AtomicU64; 3]; 2],
    /// `claude_failover_notifications_total`, once the daemon hands it over.
    metrics: std::sync::OnceLock<Arc<crate::metrics::Metrics>>,
}

impl Counters {
    fn add(&self, channel: Channel, outcome: Outcome, n: usize) {
        self.counts[channel as usize][outcome as usize].fetch_add(n as u64, Ordering::Relaxed);
        if let Some(m) = self.metrics.get() {
            m.notifications_total
                .with_label_values(&[channel.as_str(), outcome.as_str()])
                .inc_by(n as u64);
        }
    }

    fn snapshot(&self) -> NotifyStats {
        let mut s = NotifyStats::default();
        for c in Channel::ALL {
            for o in Outcome::ALL {
                s.counts[c as usize][o as usize] =
                    self.counts[c as usize][o as usize].load(Ordering::Relaxed);
            }
        }
        s
    }
}

// ---------------------------------------------------------------------------
// Errors and secrets
// ---------------------------------------------------------------------------

/// Why the notifier could not start. Never contains a token.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// A destination is configured but its token could not be read.
    #[error("{key}: no {what}: {tried}")]
    MissingToken {
        /// `notify.telegram` or `notify.webhook`.
        key: &'static str,
        /// `bot token` or `bearer token`.
        what: &'static str,
        /// Where it was looked for and what was found there.
        tried: String,
    },
    /// A destination's settings cannot work.
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
    /// [`Notifier::start`] was called outside a tokio runtime.
    #[error("notifications need a tokio runtime: Notifier::start was called outside one")]
    NoRuntime,
}

/// Caps the HTTP client's own logging at `info` in a tracing filter.
///
/// ureq (and ureq-proto) log request paths and raw request bytes at their
/// `debug`/`trace` levels; the Telegram bot token is part of the path and
/// bearer tokens are in the bytes. Any filter of a process that uses the
/// notifier or the usage poll must go through here, even when the user asks
/// for `trace` (the added directives override theirs for these targets).
pub fn quiet_http_client(filter: tracing_subscriber::EnvFilter) -> tracing_subscriber::EnvFilter {
    filter
        .add_directive("ureq=info".parse().expect("a valid static directive"))
        .add_directive("ureq_proto=info".parse().expect("a valid static directive"))
}

/// Replaces every known token in a text by `***`.
#[derive(Clone, Default)]
struct Secrets(Vec<String>);

impl Secrets {
    fn add(&mut self, token: &str) {
        if token.is_empty() {
            return;
        }
        let encoded = percent_encode(token);
        if encoded != token {
            self.0.push(encoded);
        }
        self.0.push(token.to_string());
        // Longest first, so a token inside another is not half-replaced.
        self.0.sort_by_key(|s| std::cmp::Reverse(s.len()));
    }

    fn scrub(&self, text: &str) -> String {
        let mut out = text.to_string();
        for s in &self.0 {
            if out.contains(s.as_str()) {
                out = out.replace(s.as_str(), "***");
            }
        }
        out
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Where a destination's token is, as configured.
struct TokenSource<'a> {
    key: &'static str,
    what: &'static str,
    env: Option<&'a str>,
    file: Option<&'a str>,
}

impl TokenSource<'_> {
    /// Reads the token: the environment variable when set and non-empty,
    /// else the file (`~` expanded; surrounding whitespace trimmed). `None`
    /// when neither is configured.
    fn read(&self, getenv: &dyn Fn(&str) -> Option<String>) -> Result<Option<String>, NotifyError> {
        let env = self.env.filter(|e| !e.is_empty());
        let file = self.file.filter(|f| !f.is_empty());
        if env.is_none() && file.is_none() {
            return Ok(None);
        }
        let mut tried = Vec::new();
        if let Some(var) = env {
            match getenv(var).map(|v| v.trim().to_string()) {
                Some(v) if !v.is_empty() => {
                    return self
                        .checked(v, &format!("environment variable {var}"))
                        .map(Some);
                }
                _ => tried.push(format!("the environment variable {var} is unset or empty")),
            }
        }
        if let Some(f) = file {
            let path = crate::fsutil::expand_home(f);
            match std::fs::read_to_string(&path) {
                Ok(s) if !s.trim().is_empty() => {
                    return self
                        .checked(s.trim().to_string(), &format!("file {}", path.display()))
                        .map(Some);
                }
                Ok(_) => tried.push(format!("the file {} is empty", path.display())),
                Err(e) => tried.push(format!("the file {}: {e}", path.display())),
            }
        } else {
            tried.push(format!("{}.tokenFile is not set", self.key));
        }
        Err(NotifyError::MissingToken {
            key: self.key,
            what: self.what,
            tried: tried.join("; "),
        })
    }

    /// A token goes into a URL path or a header: printable ASCII only.
    fn checked(&self, token: String, origin: &str) -> Result<String, NotifyError> {
        if token.bytes().all(|b| b.is_ascii_graphic()) {
            Ok(token)
        } else {
            Err(NotifyError::Invalid {
                key: self.key.to_string(),
                message: format!(
                    "the {} read from the {origin} contains spaces, control or non-ASCII characters",
                    self.what
                ),
            })
        }
    }
}

fn check_http_url(key: &str, what: &str, url: &str) -> Result<(), NotifyError> {
    if url.starts_with("http://") || url.starts_with("https://") {
        Ok(())
    } else {
        Err(NotifyError::Invalid {
            key: key.to_string(),
            message: format!("{what} must start with http:// or https://"),
        })
    }
}

// ---------------------------------------------------------------------------
// Destinations
// ---------------------------------------------------------------------------

enum Target {
    /// `url` holds the bot token: never log it.
    Telegram {
        url: String,
        chat_id: String,
    },
    Webhook {
        url: String,
        token: Option<String>,
    },
}

struct Destination {
    channel: Channel,
    target: Target,
    secrets: Secrets,
    agent: ureq::Agent,
}

impl Destination {
    fn telegram(
        cfg: &TelegramConfig,
        getenv: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Destination, NotifyError> {
        let key = Channel::Telegram.key();
        if cfg.chat_id.trim().is_empty() {
            return Err(NotifyError::Invalid {
                key: format!("{key}.chatId"),
                message: "empty".into(),
            });
        }
        let base = cfg
            .base_url
            .as_deref()
            .unwrap_or(DEFAULT_TELEGRAM_BASE_URL)
            .trim_end_matches('/');
        check_http_url(&format!("{key}.baseUrl"), "the bot API base URL", base)?;
        let token = TokenSource {
            key,
            what: "bot token",
            env: cfg.token_env.as_deref(),
            file: cfg.token_file.as_deref(),
        }
        .read(getenv)?
        .ok_or_else(|| NotifyError::MissingToken {
            key,
            what: "bot token",
            tried: format!("set {key}.tokenEnv or {key}.tokenFile"),
        })?;
        let mut secrets = Secrets::default();
        secrets.add(&token);
        Ok(Destination {
            channel: Channel::Telegram,
            target: Target::Telegram {
                url: format!("{base}/bot{token}/sendMessage"),
                chat_id: cfg.chat_id.trim().to_string(),
            },
            secrets,
            agent: http_agent(),
        })
    }

    fn webhook(
        cfg: &WebhookConfig,
        getenv: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Destination, NotifyError> {
        let key = Channel::Webhook.key();
        check_http_url(&format!("{key}.url"), "the webhook URL", &cfg.url)?;
        let token = TokenSource {
            key,
            what: "bearer token",
            env: cfg.token_env.as_deref(),
            file: cfg.token_file.as_deref(),
        }
        .read(getenv)?;
        let mut secrets = Secrets::default();
        if let Some(t) = &token {
            secrets.add(t);
        }
        Ok(Destination {
            channel: Channel::Webhook,
            target: Target::Webhook {
                url: cfg.url.clone(),
                token,
            },
            secrets,
            agent: http_agent(),
        })
    }

    /// The request body of one message carrying `batch` (never empty).
    fn body(&self, batch: &[Queued]) -> String {
        let text = batch
            .iter()
            .map(|q| q.notice.line())
            .collect::<Vec<_>>()
            .join("\n");
        let v = match &self.target {
            Target::Telegram { chat_id, .. } => json!({"chat_id": chat_id, "text": text}),
            Target::Webhook { .. } => match batch {
                [one] => one.to_json(),
                many => json!({
                    "kind": "merged",
                    "object": format!("{} notices", many.len()),
                    "message": text,
                    "time": many.iter().map(|q| q.at).max().map(rfc3339),
                    "notices": many.iter().map(Queued::to_json).collect::<Vec<_>>(),
                }),
            },
        };
        v.to_string()
    }

    /// One HTTP attempt (blocking).
    fn post(&self, body: &str) -> Attempt {
        let request = match &self.target {
            Target::Telegram { url, .. } => self.agent.post(url),
            Target::Webhook { url, token } => {
                let r = self.agent.post(url);
                match token {
                    Some(t) => r.header("Authorization", format!("Bearer {t}")),
                    None => r,
                }
            }
        };
        let mut response = match request
            .header("Content-Type", "application/json")
            .send(body)
        {
            Ok(r) => r,
            Err(e) => {
                return Attempt::Retry {
                    error: self.secrets.scrub(&e.to_string()),
                    after: None,
                };
            }
        };
        let status = response.status().as_u16();
        let retry_after_header = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| crate::quota::poll::parse_retry_after(v, SystemTime::now()));
        let text = response
            .body_mut()
            .with_config()
            .limit(ERROR_BODY_LIMIT)
            .lossy_utf8(true)
            .read_to_string()
            .unwrap_or_default();
        let answer: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let telegram = matches!(self.target, Target::Telegram { .. });
        let description = || {
            let d = match answer.get("description").and_then(Value::as_str) {
                Some(d) if telegram => d.to_string(),
                _ => text.chars().take(200).collect(),
            };
            let d = self.secrets.scrub(d.trim());
            if d.is_empty() {
                format!("HTTP {status}")
            } else {
                format!("HTTP {status}: {d}")
            }
        };
        if (200..300).contains(&status) {
            if telegram && answer.get("ok") == Some(&Value::Bool(false)) {
                return Attempt::Fatal(description());
            }
            return Attempt::Done;
        }
        if status == 429 || status >= 500 {
            let telegram_after = answer
                .pointer("/parameters/retry_after")
                .and_then(Value::as_u64)
                .filter(|_| telegram)
                .map(Duration::from_secs);
            return Attempt::Retry {
                error: description(),
                after: telegram_after
                    .or(retry_after_header)
                    .map(|d| d.min(RETRY_AFTER_CAP)),
            };
        }
        Attempt::Fatal(description())
    }
}

fn http_agent() -> ureq::Agent {
    ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .timeout_global(Some(REQUEST_TIMEOUT))
            .http_status_as_error(false)
            .max_redirects(0)
            .max_redirects_will_error(false)
            .user_agent(concat!("claude-failover/", env!("CARGO_PKG_VERSION")))
            .build(),
    )
}

/// What one attempt came to.
enum Attempt {
    Done,
    /// Worth another attempt, after `after` when the server said so.
    Retry {
        error: String,
        after: Option<Duration>,
    },
    /// Rejected: another attempt would fail the same way.
    Fatal(String),
}

/// A notice waiting at a destination, with when it was raised.
#[derive(Clone)]
struct Queued {
    notice: Notice,
    at: SystemTime,
}

impl Queued {
    fn to_json(&self) -> Value {
        json!({
            "kind": self.notice.kind.as_str(),
            "object": self.notice.object,
            "message": self.notice.message,
            "time": rfc3339(self.at),
        })
    }
}

fn rfc3339(t: SystemTime) -> String {
    k8s_openapi::jiff::Timestamp::try_from(t)
        .map(|ts| ts.to_string())
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------
// The notifier
// ---------------------------------------------------------------------------

/// Sends notices to the log and the configured destinations. Cheap to
/// clone; the background tasks stop once every clone is dropped and what
/// they hold has been delivered (or given up).
#[derive(Clone)]
pub struct Notifier {
    inner: Arc<Inner>,
}

struct Inner {
    destinations: Vec<(Channel, mpsc::UnboundedSender<Queued>)>,
    dedup_window: Duration,
    /// (kind, object) → when it was last accepted.
    recent: Mutex<HashMap<(NoticeKind, String), std::time::Instant>>,
    counters: Arc<Counters>,
}

impl fmt::Debug for Notifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let channels: Vec<_> = self.inner.destinations.iter().map(|(c, _)| *c).collect();
        f.debug_struct("Notifier")
            .field("channels", &channels)
            .finish_non_exhaustive()
    }
}

/// Delivery settings shared by every destination.
#[derive(Clone, Copy)]
struct Pace {
    min_interval: Duration,
    max_attempts: u32,
}

impl Notifier {
    /// Reads the tokens and starts one background task per configured
    /// destination. Must be called inside a tokio runtime. A configured
    /// destination whose token cannot be read, or whose URL is not HTTP, is
    /// an error naming the config key and where the token was looked for.
    pub fn start(cfg: &NotifyConfig) -> Result<Notifier, NotifyError> {
        Self::start_with_env(cfg, &|var| std::env::var(var).ok())
    }

    fn start_with_env(
        cfg: &NotifyConfig,
        getenv: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Notifier, NotifyError> {
        let mut dests = Vec::new();
        if let Some(t) = &cfg.telegram {
            dests.push(Destination::telegram(t, getenv)?);
        }
        if let Some(w) = &cfg.webhook {
            dests.push(Destination::webhook(w, getenv)?);
        }
        let runtime = if dests.is_empty() {
            None
        } else {
            Some(tokio::runtime::Handle::try_current().map_err(|_| NotifyError::NoRuntime)?)
        };
        let pace = Pace {
            min_interval: cfg
                .min_interval_seconds
                .map(Duration::from_secs)
                .unwrap_or(DEFAULT_MIN_INTERVAL),
            max_attempts: cfg.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS).max(1),
        };
        let counters = Arc::new(Counters::default());
        let mut destinations = Vec::new();
        for d in dests {
            let (tx, rx) = mpsc::unbounded_channel();
            destinations.push((d.channel, tx));
            if let Some(rt) = &runtime {
                rt.spawn(run_destination(d, rx, pace, counters.clone()));
            }
        }
        Ok(Notifier {
            inner: Arc::new(Inner {
                destinations,
                dedup_window: cfg
                    .dedup_seconds
                    .map(Duration::from_secs)
                    .unwrap_or(DEFAULT_DEDUP_WINDOW),
                recent: Mutex::new(HashMap::new()),
                counters,
            }),
        })
    }

    /// Counts notices in `metrics` from now on (the counts so far too).
    pub fn record_to(&self, metrics: Arc<crate::metrics::Metrics>) {
        let c = &self.inner.counters;
        for (channel, outcome, n) in c.snapshot().iter() {
            if n > 0 {
                metrics
                    .notifications_total
                    .with_label_values(&[channel.as_str(), outcome.as_str()])
                    .inc_by(n);
            }
        }
        let _ = c.metrics.set(metrics);
    }

    /// A notifier that only logs.
    pub fn disabled() -> Notifier {
        Notifier {
            inner: Arc::new(Inner {
                destinations: Vec::new(),
                dedup_window: DEFAULT_DEDUP_WINDOW,
                recent: Mutex::new(HashMap::new()),
                counters: Arc::new(Counters::default()),
            }),
        }
    }

    /// The channels this notifier delivers to (empty: log only).
    pub fn channels(&self) -> Vec<Channel> {
        self.inner.destinations.iter().map(|(c, _)| *c).collect()
    }

    /// Logs the notice and queues it for every destination, unless the same
    /// kind and object was accepted within the de-duplication window.
    /// Never blocks on the network.
    pub fn send(&self, n: Notice) {
        let duplicate = !self.inner.destinations.is_empty() && self.is_duplicate(&n);
        if n.kind.is_alarm() {
            tracing::warn!(kind = %n.kind, object = %n.object, duplicate, "{}", n.message);
        } else {
            tracing::info!(kind = %n.kind, object = %n.object, duplicate, "{}", n.message);
        }
        if duplicate {
            for (channel, _) in &self.inner.destinations {
                self.inner.counters.add(*channel, Outcome::Deduplicated, 1);
            }
            return;
        }
        let queued = Queued {
            notice: n,
            at: SystemTime::now(),
        };
        for (channel, tx) in &self.inner.destinations {
            if tx.send(queued.clone()).is_err() {
                // Only when the runtime that ran the task is gone.
                self.inner.counters.add(*channel, Outcome::Failed, 1);
                tracing::warn!(%channel, "notification dropped: the delivery task has stopped");
            }
        }
    }

    /// Records `n` as accepted unless an equal one was accepted within the
    /// window; returns whether it is a duplicate.
    fn is_duplicate(&self, n: &Notice) -> bool {
        let window = self.inner.dedup_window;
        if window.is_zero() {
            return false;
        }
        let now = std::time::Instant::now();
        let mut recent = self.inner.recent.lock().unwrap_or_else(|e| e.into_inner());
        recent.retain(|_, at| now.duration_since(*at) < window);
        let key = (n.kind, n.object.clone());
        if recent.contains_key(&key) {
            return true;
        }
        recent.insert(key, now);
        false
    }

    /// The counters so far.
    pub fn stats(&self) -> NotifyStats {
        self.inner.counters.snapshot()
    }
}

/// Takes the notices of the next message: as many as fit in
/// [`MESSAGE_CHARS`], at least one.
fn take_batch(pending: &mut VecDeque<Queued>) -> Vec<Queued> {
    let mut batch = Vec::new();
    let mut chars = 0;
    while let Some(q) = pending.front() {
        let len = q.notice.line().chars().count() + 1;
        if !batch.is_empty() && chars + len > MESSAGE_CHARS {
            break;
        }
        chars += len;
        batch.extend(pending.pop_front());
    }
    batch
}

/// One destination's delivery loop: wait for a notice, wait for the rate
/// limit while collecting more, deliver them as one message, repeat. Ends
/// when every sender is gone and nothing is pending.
async fn run_destination(
    dest: Destination,
    mut rx: mpsc::UnboundedReceiver<Queued>,
    pace: Pace,
    counters: Arc<Counters>,
) {
    let dest = Arc::new(dest);
    let channel = dest.channel;
    let mut pending: VecDeque<Queued> = VecDeque::new();
    let mut next_allowed = Instant::now();
    loop {
        if pending.is_empty() {
            match rx.recv().await {
                Some(q) => pending.push_back(q),
                None => return,
            }
        }
        tokio::time::sleep_until(next_allowed).await;
        while let Ok(q) = rx.try_recv() {
            pending.push_back(q);
        }
        if pending.len() > MAX_PENDING {
            let dropped = pending.len() - MAX_PENDING;
            pending.drain(..dropped);
            counters.add(channel, Outcome::Failed, dropped);
            tracing::warn!(%channel, dropped, "notifications dropped: too many waiting");
        }
        let batch = take_batch(&mut pending);
        next_allowed = Instant::now() + pace.min_interval;
        let outcome = deliver(&dest, &batch, pace.max_attempts).await;
        counters.add(channel, outcome, batch.len());
    }
}

/// Delivers one message, retrying as the module documents.
async fn deliver(dest: &Arc<Destination>, batch: &[Queued], max_attempts: u32) -> Outcome {
    let channel = dest.channel;
    let body = Arc::new(dest.body(batch));
    let mut backoff = BACKOFF_START;
    for attempt in 1..=max_attempts {
        let (d, b) = (dest.clone(), body.clone());
        let result = tokio::task::spawn_blocking(move || d.post(&b))
            .await
            .unwrap_or_else(|e| Attempt::Fatal(format!("the delivery thread failed: {e}")));
        match result {
            Attempt::Done => {
                tracing::debug!(%channel, notices = batch.len(), attempt, "notification sent");
                return Outcome::Sent;
            }
            Attempt::Retry { error, after } if attempt < max_attempts => {
                let wait = after.unwrap_or(backoff);
                tracing::debug!(
                    %channel, attempt, max_attempts, retry_in_ms = wait.as_millis() as u64, %error,
                    "notification not delivered yet, will retry"
                );
                tokio::time::sleep(wait).await;
                backoff = (backoff * 2).min(BACKOFF_CAP);
            }
            Attempt::Retry { error, .. } => {
                tracing::warn!(
                    %channel, notices = batch.len(), attempts = attempt, %error,
                    "notification given up"
                );
                return Outcome::Failed;
            }
            Attempt::Fatal(error) => {
                tracing::warn!(
                    %channel, notices = batch.len(), attempts = attempt, %error,
                    "notification rejected"
                );
                return Outcome::Failed;
            }
        }
    }
    Outcome::Failed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    fn telegram(env: Option<&str>, file: Option<&str>) -> NotifyConfig {
        NotifyConfig {
            telegram: Some(TelegramConfig {
                base_url: None,
                chat_id: "42".into(),
                token_env: env.map(String::from),
                token_file: file.map(String::from),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn kinds_have_kebab_names() {
        let names: Vec<_> = NoticeKind::ALL.iter().map(|k| k.to_string()).collect();
        assert_eq!(
            names,
            [
                "failover-started",
                "failover-done",
                "failover-failed",
                "session-degraded",
                "task-failed",
                "account-exhausted",
                "account-recovered"
            ]
        );
    }

    #[test]
    fn token_comes_from_env_before_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tok");
        std::fs::write(&file, "from-file\n").unwrap();
        let src = TokenSource {
            key: "notify.telegram",
            what: "bot token",
            env: Some("TOK"),
            file: file.to_str(),
        };
        let got = src.read(&env(&[("TOK", "from-env")])).unwrap();
        assert_eq!(got.as_deref(), Some("from-env"));
        // Empty variable: the file, trimmed.
        let got = src.read(&env(&[("TOK", "")])).unwrap();
        assert_eq!(got.as_deref(), Some("from-file"));
        let got = src.read(&env(&[])).unwrap();
        assert_eq!(got.as_deref(), Some("from-file"));
    }

    #[test]
    fn missing_token_names_key_env_and_file() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _g = rt.enter();
        let err = Notifier::start_with_env(
            &telegram(Some("TG_TOKEN"), Some("/nonexistent/tg-token")),
            &env(&[("TG_TOKEN", " ")]),
        )
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("notify.telegram: no bot token"), "{err}");
        assert!(err.contains("TG_TOKEN"), "{err}");
        assert!(err.contains("/nonexistent/tg-token"), "{err}");
        let err = Notifier::start_with_env(&telegram(None, None), &env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("notify.telegram.tokenEnv"), "{err}");
    }

    #[test]
    fn bad_token_is_rejected_without_showing_it() {
        let src = TokenSource {
            key: "notify.webhook",
            what: "bearer token",
            env: Some("T"),
            file: None,
        };
        let err = src.read(&env(&[("T", "sec ret")])).unwrap_err().to_string();
        assert!(err.contains("environment variable T"), "{err}");
        assert!(!err.contains("sec ret"), "{err}");
    }

    #[test]
    fn webhook_without_token_settings_posts_without_auth() {
        let d = Destination::webhook(
            &WebhookConfig {
                url: "http://127.0.0.1:9/x".into(),
                token_env: None,
                token_file: None,
            },
            &env(&[]),
        )
        .unwrap();
        assert!(matches!(d.target, Target::Webhook { token: None, .. }));
        let bad = Destination::webhook(
            &WebhookConfig {
                url: "ftp://x".into(),
                ..Default::default()
            },
            &env(&[]),
        );
        assert!(bad.is_err());
    }

    #[test]
    fn scrub_replaces_plain_and_encoded_tokens() {
        let mut s = Secrets::default();
        s.add("123:AB/c");
        assert_eq!(
            s.scrub("http://x/bot123:AB/c/sendMessage and bot123%3AAB%2Fc"),
            "http://x/bot***/sendMessage and bot***"
        );
    }

    #[test]
    fn lines_are_flattened_and_cut() {
        let n = Notice::new(NoticeKind::TaskFailed, "Task default/t", "a\nb");
        assert_eq!(n.line(), "task-failed Task default/t: a b");
        let long = Notice::new(NoticeKind::TaskFailed, "", "x".repeat(5000));
        assert_eq!(long.line().chars().count(), LINE_CHARS + 1);
    }

    #[test]
    fn batches_fit_a_message() {
        let q = |m: usize| Queued {
            notice: Notice::new(NoticeKind::FailoverDone, "o", "m".repeat(m)),
            at: SystemTime::UNIX_EPOCH,
        };
        let mut pending: VecDeque<_> = (0..10).map(|_| q(900)).collect();
        let first = take_batch(&mut pending);
        assert_eq!(first.len(), 3);
        assert_eq!(pending.len(), 7);
        let mut one: VecDeque<_> = [q(50)].into_iter().collect();
        assert_eq!(take_batch(&mut one).len(), 1);
    }

    #[test]
    fn dedup_window_is_per_kind_and_object() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _g = rt.enter();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tok");
        std::fs::write(&file, "t").unwrap();
        let n = Notifier::start_with_env(&telegram(None, file.to_str()), &env(&[])).unwrap();
        let a = Notice::new(NoticeKind::AccountExhausted, "Account default/a", "x");
        assert!(!n.is_duplicate(&a));
        assert!(n.is_duplicate(&a));
        let b = Notice {
            kind: NoticeKind::AccountRecovered,
            ..a.clone()
        };
        assert!(!n.is_duplicate(&b));
        let c = Notice {
            object: "Account default/b".into(),
            ..a
        };
        assert!(!n.is_duplicate(&c));
    }
}

//! A fake Anthropic Messages API on 127.0.0.1 for the integration tests.
//!
//! Claude Code (2.1.x) talks to `ANTHROPIC_BASE_URL` with only two calls:
//! `HEAD /` (a connectivity check) and `POST /v1/messages?beta=true` with
//! `"stream": true`, answered with server-sent events. This server answers
//! both, records every request it sees (any method, any path: unknown paths
//! get a 404 and are recorded too) and lets a test steer the answers:
//!
//! - the reply text (default `"ok: " + the last user text`, shortened);
//! - a gate that holds main replies open until released, so a test can see a
//!   session Busy for as long as it needs;
//! - extra response headers (e.g. `anthropic-ratelimit-unified-*`);
//! - an error status (e.g. 429 with a JSON error body) for the next N main
//!   requests;
//! - scripted answers for the next main requests, e.g. a tool call
//!   ([`FakeApi::queue_tool_use`]) so Claude Code runs a tool and fires its
//!   `PreToolUse` / `PostToolUse` hooks;
//! - static answers for other paths (e.g. a usage endpoint, or HTTP hook
//!   receivers: hook bodies are then recorded like any request).
//!
//! It runs on its own thread with its own tokio runtime, so sync tests and
//! `#[tokio::test]` tests can both use it, and stops when dropped.
//!
//! "Main" requests are the `POST /v1/messages` of the conversation itself.
//! Claude Code also sends a session-title request with each prompt (to a
//! haiku model with an API key, to the main model in subscription mode),
//! recognised by its structured-output schema with a `title` field; main
//! requests exclude it and any haiku-model request. The title request is
//! answered `{"title":"Fake session title"}`.
//!
//! Nothing on the request path unwraps: a malformed request gets an error
//! answer and is still recorded, it never brings the server down.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use serde_json::{Value, json};

/// Largest request body read (a long resumed conversation is big).
const BODY_LIMIT: usize = 64 * 1024 * 1024;
/// Longest default reply, in characters (the echoed text is cut there).
const ECHO_LIMIT: usize = 100;

// ---------------------------------------------------------------------------
// What was received
// ---------------------------------------------------------------------------

/// One request as the server received it.
#[derive(Clone, Debug)]
pub struct Recorded {
    /// 0, 1, 2... in arrival order.
    pub seq: usize,
    /// When it arrived.
    pub at: Instant,
    /// `GET`, `HEAD`, `POST`...
    pub method: String,
    /// Path and query, e.g. `/v1/messages?beta=true`.
    pub path: String,
    /// Every header, names lower-cased, in the order received.
    pub headers: Vec<(String, String)>,
    /// The body as text (lossy UTF-8).
    pub raw_body: String,
    /// The body parsed as JSON, `Value::Null` when empty or not JSON.
    pub body: Value,
    /// The status this request was (or is about to be, if held) answered with.
    pub status: u16,
}

impl Recorded {
    /// The path without the query string.
    pub fn path_only(&self) -> &str {
        self.path.split('?').next().unwrap_or("")
    }

    /// The first value of a header (name matched case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// `POST /v1/messages` (any query string).
    pub fn is_messages(&self) -> bool {
        self.method == "POST" && self.path_only() == "/v1/messages"
    }

    /// A messages request that is part of the conversation: a JSON body with
    /// a model that is not a haiku one, and not the session-title request (see [`Recorded::is_title`]).
    pub fn is_main(&self) -> bool {
        self.is_messages() && self.model().is_some_and(|m| !m.contains("haiku")) && !self.is_title()
    }

    /// The session-title request Claude Code sends with a prompt: structured
    /// output asking for `{"title": ...}`. It goes to a haiku model with an API
    /// key, but to the main model in subscription (OAuth) mode.
    pub fn is_title(&self) -> bool {
        self.is_messages() && wants_title(&self.body)
    }

    /// `body.model`.
    pub fn model(&self) -> Option<&str> {
        self.body.get("model").and_then(Value::as_str)
    }

    /// `body.stream` (false when absent).
    pub fn stream(&self) -> bool {
        self.body
            .get("stream")
            .and_then(Value::as_bool)
            .unwrap_or(false)
    }

    /// The `x-claude-code-session-id` header.
    pub fn session_id(&self) -> Option<&str> {
        self.header("x-claude-code-session-id")
    }

    /// The credential used: the `x-api-key` header, else the token of
    /// `authorization: Bearer <token>`.
    pub fn credential(&self) -> Option<&str> {
        if let Some(k) = self.header("x-api-key") {
            return Some(k);
        }
        let auth = self.header("authorization")?;
        auth.strip_prefix("Bearer ")
            .or_else(|| auth.strip_prefix("bearer "))
            .map(str::trim)
    }

    /// Every message of `body.messages` as (role, text), where text is the
    /// message's text blocks joined with `\n`, leaving out the
    /// `<system-reminder>` blocks Claude Code injects, and including the text of
    /// tool results.
    pub fn messages(&self) -> Vec<(String, String)> {
        let Some(msgs) = self.body.get("messages").and_then(Value::as_array) else {
            return Vec::new();
        };
        msgs.iter()
            .map(|m| {
                let role = m.get("role").and_then(Value::as_str).unwrap_or("");
                let text = m.get("content").map(content_text).unwrap_or_default();
                (role.to_string(), text)
            })
            .collect()
    }

    /// The texts of every message, in order (both roles), e.g. to check
    /// that a resumed conversation sent the earlier exchange.
    pub fn message_texts(&self) -> Vec<String> {
        self.messages().into_iter().map(|(_, t)| t).collect()
    }

    /// The text of the last user message that has any text (tool-result-only
    /// user messages carry none of their own).
    pub fn last_user_text(&self) -> Option<String> {
        self.messages()
            .into_iter()
            .rev()
            .find(|(role, text)| role == "user" && !text.is_empty())
            .map(|(_, t)| t)
    }

    /// Whether any message text contains `needle`.
    pub fn mentions(&self, needle: &str) -> bool {
        self.message_texts().iter().any(|t| t.contains(needle))
    }
}

/// The text of a message `content`: a string, or an array of blocks.
fn content_text(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(blocks) => {
            let mut parts = Vec::new();
            for b in blocks {
                match b.get("type").and_then(Value::as_str) {
                    Some("text") => {
                        let t = b.get("text").and_then(Value::as_str).unwrap_or("");
                        if !t.trim_start().starts_with("<system-reminder>") {
                            parts.push(t.to_string());
                        }
                    }
                    Some("tool_result") => {
                        if let Some(c) = b.get("content") {
                            let t = content_text(c);
                            if !t.is_empty() {
                                parts.push(t);
                            }
                        }
                    }
                    _ => {}
                }
            }
            parts.join("\n")
        }
        _ => String::new(),
    }
}

// ---------------------------------------------------------------------------
// Controls
// ---------------------------------------------------------------------------

/// How the next N main requests fail.
#[derive(Clone, Debug)]
pub struct Failure {
    pub status: u16,
    /// JSON error body, e.g. [`FakeApi::error_body`].
    pub body: Value,
    /// Headers added to the failing answer (on top of the common ones).
    pub headers: Vec<(String, String)>,
}

/// A scripted answer for one main request (see [`FakeApi::queue_answer`]).
#[derive(Clone, Debug)]
pub enum Answer {
    /// A text reply.
    Text(String),
    /// A tool call (`stop_reason: "tool_use"`): Claude Code runs the tool and
    /// sends its result in a new request. Optional text before it.
    ToolUse {
        text: Option<String>,
        name: String,
        input: Value,
    },
}

type ReplyFn = Arc<dyn Fn(&Recorded) -> String + Send + Sync>;
type Matcher = Arc<dyn Fn(&Recorded) -> bool + Send + Sync>;
/// Decides a main request's answer from the request (None: the reply text).
type AnswerFn = Arc<dyn Fn(&Recorded) -> Option<Answer> + Send + Sync>;

/// Everything the handler reads and the tests change, under one lock.
struct State {
    log: Vec<Recorded>,
    reply: Option<ReplyFn>,
    /// Consulted for main requests after the scripted answers, before `reply`.
    answer_fn: Option<AnswerFn>,
    /// Scripted answers, one consumed per main request before `reply`.
    answers: std::collections::VecDeque<Answer>,
    /// Added to every `/v1/messages` answer (success or failure).
    headers: Vec<(String, String)>,
    /// Added to the `/v1/messages` answers of one credential (after `headers`).
    headers_for: HashMap<String, Vec<(String, String)>>,
    /// Queue of failures, one consumed per main request.
    failures: Vec<Failure>,
    /// Failures for the first main request that matches each predicate
    /// (checked before `failures`).
    targeted: Vec<(Matcher, Failure)>,
    /// Static answers: (method, path without query) -> (status, JSON body).
    routes: HashMap<(String, String), (u16, Value)>,
    /// Static answers to one credential: (credential, method, path) ->
    /// (status, JSON body); before `routes`.
    routes_for: HashMap<(String, String, String), (u16, Value)>,
    /// Gate for main replies.
    held: bool,
    /// Held requests allowed through while `held` stays true.
    passes: usize,
    /// Requests currently waiting at the gate.
    waiting: usize,
}

struct Shared {
    state: Mutex<State>,
    /// Signalled at each request and each gate change (blocking waiters).
    cond: Condvar,
    /// The same, for async waiters and for the gate.
    notify: tokio::sync::Notify,
    msg_ids: AtomicU64,
}

impl Shared {
    /// The state, even if a panicking test thread poisoned the lock.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn signal(&self) {
        self.cond.notify_all();
        self.notify.notify_waiters();
    }
}

// ---------------------------------------------------------------------------
// The server handle
// ---------------------------------------------------------------------------

/// A running fake API. Stops when dropped.
pub struct FakeApi {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl FakeApi {
    /// Binds 127.0.0.1:0 and serves on a thread of its own.
    pub fn start() -> FakeApi {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        listener.set_nonblocking(true).expect("set_nonblocking");
        let addr = listener.local_addr().expect("local_addr");
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                log: Vec::new(),
                reply: None,
                answer_fn: None,
                answers: Default::default(),
                headers: Vec::new(),
                headers_for: HashMap::new(),
                failures: Vec::new(),
                targeted: Vec::new(),
                routes: HashMap::new(),
                routes_for: HashMap::new(),
                held: false,
                passes: 0,
                waiting: 0,
            }),
            cond: Condvar::new(),
            notify: tokio::sync::Notify::new(),
            msg_ids: AtomicU64::new(1),
        });
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let for_server = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("fake-api-{}", addr.port()))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("fake api runtime");
                rt.block_on(async move {
                    let listener = match tokio::net::TcpListener::from_std(listener) {
                        Ok(l) => l,
                        Err(e) => {
                            eprintln!("fake api: {e}");
                            return;
                        }
                    };
                    let app = Router::new().fallback(move |req: Request<Body>| {
                        let shared = for_server.clone();
                        async move { handle(shared, req).await }
                    });
                    // Stop accepting at once on drop; open connections (e.g. a
                    // held reply) are cut when the runtime goes away below.
                    tokio::select! {
                        r = axum::serve(listener, app) => {
                            if let Err(e) = r { eprintln!("fake api: {e}"); }
                        }
                        _ = stop_rx => {}
                    }
                });
                rt.shutdown_timeout(Duration::from_secs(1));
            })
            .expect("spawn fake api thread");
        FakeApi {
            addr,
            shared,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:PORT` (for `ANTHROPIC_BASE_URL`).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    // --- what was received ---------------------------------------------

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.lock().log.clone()
    }

    /// The main `/v1/messages` requests so far (no haiku title requests).
    pub fn main_requests(&self) -> Vec<Recorded> {
        main_of(&self.shared.lock().log)
    }

    /// Requests to one path (without the query string), e.g. `/hooks/stop`.
    pub fn requests_to(&self, path: &str) -> Vec<Recorded> {
        self.shared
            .lock()
            .log
            .iter()
            .filter(|r| r.path_only() == path)
            .cloned()
            .collect()
    }

    /// Forgets every request recorded so far (controls are kept).
    pub fn clear_requests(&self) {
        self.shared.lock().log.clear();
    }

    /// Blocks until `cond(all requests)` holds, then returns them; panics
    /// after `timeout`, listing what did arrive. Woken at each request, no
    /// polling. Fine in sync tests; in async code use [`FakeApi::wait_for_async`].
    pub fn wait_for(&self, cond: impl Fn(&[Recorded]) -> bool, timeout: Duration) -> Vec<Recorded> {
        match self.try_wait_for(cond, timeout) {
            Some(v) => v,
            None => panic!(
                "fake api: condition not met within {timeout:?}; received:\n{}",
                self.summary()
            ),
        }
    }

    /// Like [`FakeApi::wait_for`] but `None` on timeout.
    pub fn try_wait_for(
        &self,
        cond: impl Fn(&[Recorded]) -> bool,
        timeout: Duration,
    ) -> Option<Vec<Recorded>> {
        let deadline = Instant::now() + timeout;
        let mut st = self.shared.lock();
        loop {
            if cond(&st.log) {
                return Some(st.log.clone());
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            st = match self.shared.cond.wait_timeout(st, left) {
                Ok((g, _)) => g,
                Err(e) => e.into_inner().0,
            };
        }
    }

    /// Async form of [`FakeApi::wait_for`], for `#[tokio::test]` code that
    /// must not block its runtime.
    pub async fn wait_for_async(
        &self,
        cond: impl Fn(&[Recorded]) -> bool,
        timeout: Duration,
    ) -> Vec<Recorded> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.shared.notify.notified();
            tokio::pin!(notified);
            // Register before checking, so a request in between is not missed.
            notified.as_mut().enable();
            {
                let st = self.shared.lock();
                if cond(&st.log) {
                    return st.log.clone();
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!(
                    "fake api: condition not met within {timeout:?}; received:\n{}",
                    self.summary()
                );
            }
        }
    }

    /// Waits until at least `n` main requests have arrived; returns them.
    pub fn wait_for_main(&self, n: usize, timeout: Duration) -> Vec<Recorded> {
        let all = self.wait_for(|r| r.iter().filter(|r| r.is_main()).count() >= n, timeout);
        main_of(&all)
    }

    /// One line per request, for failure messages.
    pub fn summary(&self) -> String {
        let st = self.shared.lock();
        let mut s = String::new();
        for r in &st.log {
            s.push_str(&format!(
                "  #{} {} {} -> {} model={:?} last_user={:?}\n",
                r.seq,
                r.method,
                r.path,
                r.status,
                r.model(),
                r.last_user_text()
            ));
        }
        s
    }

    // --- replies ---------------------------------------------------------

    /// Every later reply is this text.
    pub fn set_reply(&self, text: impl Into<String>) {
        let text = text.into();
        self.shared.lock().reply = Some(Arc::new(move |_| text.clone()));
    }

    /// Every later reply is computed from the request.
    pub fn set_reply_fn(&self, f: impl Fn(&Recorded) -> String + Send + Sync + 'static) {
        self.shared.lock().reply = Some(Arc::new(f));
    }

    /// The next main request (after those already queued) gets `answer`
    /// instead of the reply text; failures queued with `fail_next` come first.
    pub fn queue_answer(&self, answer: Answer) {
        self.shared.lock().answers.push_back(answer);
    }

    /// Shorthand: the next main request asks Claude Code to run `tool`
    /// (e.g. `"Bash"` with `{"command": "true", "description": "noop"}`).
    pub fn queue_tool_use(&self, tool: &str, input: Value) {
        self.queue_answer(Answer::ToolUse {
            text: None,
            name: tool.to_string(),
            input,
        });
    }

    /// Main requests (once the scripted answers are used up) get the answer
    /// `f` computes from the request, or the reply text when it gives None:
    /// e.g. a tool call for a fresh prompt and text after the tool's result.
    pub fn set_answer_fn(&self, f: impl Fn(&Recorded) -> Option<Answer> + Send + Sync + 'static) {
        self.shared.lock().answer_fn = Some(Arc::new(f));
    }

    /// Back to the default reply, `"ok: " + last user text`.
    pub fn reset_reply(&self) {
        self.shared.lock().reply = None;
    }

    /// The default reply for a request: `"ok: "` + its last user text on one
    /// line, cut at [`ECHO_LIMIT`] characters.
    pub fn default_reply(req: &Recorded) -> String {
        let text = req.last_user_text().unwrap_or_default();
        let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
        let mut out: String = flat.chars().take(ECHO_LIMIT).collect();
        if flat.chars().count() > ECHO_LIMIT {
            out.push('…');
        }
        format!("ok: {out}")
    }

    // --- the gate ----------------------------------------------------------

    /// From now on, main requests are recorded but not answered until
    /// [`FakeApi::release`] (or [`FakeApi::release_one`]).
    pub fn hold(&self) {
        let mut st = self.shared.lock();
        st.held = true;
        st.passes = 0;
    }

    /// Opens the gate: every held request is answered, and later ones too.
    pub fn release(&self) {
        {
            let mut st = self.shared.lock();
            st.held = false;
            st.passes = 0;
        }
        self.shared.signal();
    }

    /// Lets one held (or the next) main request through; the gate stays closed.
    pub fn release_one(&self) {
        self.shared.lock().passes += 1;
        self.shared.signal();
    }

    /// A handle that other threads can use to pace the gate.
    pub fn handle(&self) -> ApiHandle {
        ApiHandle {
            shared: self.shared.clone(),
        }
    }

    /// Main requests waiting at the gate right now.
    pub fn held_count(&self) -> usize {
        self.shared.lock().waiting
    }

    // --- headers and failures ---------------------------------------------

    /// Adds a header to every later `/v1/messages` answer (replacing one of
    /// the same name), e.g. `anthropic-ratelimit-unified-status: allowed`.
    pub fn set_header(&self, name: &str, value: &str) {
        let name = name.to_ascii_lowercase();
        let mut st = self.shared.lock();
        st.headers.retain(|(k, _)| *k != name);
        st.headers.push((name, value.to_string()));
    }

    /// Replaces all the added headers at once.
    pub fn set_headers(&self, headers: &[(&str, &str)]) {
        self.shared.lock().headers = headers
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
            .collect();
    }

    /// Replaces the headers added to the answers of requests made with
    /// `credential` (an API key or a bearer token), e.g. one account's
    /// `anthropic-ratelimit-unified-*` figures.
    pub fn set_headers_for(&self, credential: &str, headers: &[(&str, &str)]) {
        self.shared.lock().headers_for.insert(
            credential.to_string(),
            headers
                .iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
                .collect(),
        );
    }

    /// One account's usage as the API reports it on each answer to
    /// `credential`: the 5-hour window at `five_hour` (0..1), resetting in
    /// `reset_in` seconds; the weekly one at 10 %.
    pub fn set_usage_for(&self, credential: &str, five_hour: f64, reset_in: u64) {
        let epoch_in = |secs: u64| {
            (std::time::SystemTime::now()
                .duration_since(std::time::SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_secs()
                + secs)
                .to_string()
        };
        self.set_headers_for(
            credential,
            &[
                ("anthropic-ratelimit-unified-status", "allowed"),
                (
                    "anthropic-ratelimit-unified-5h-utilization",
                    &five_hour.to_string(),
                ),
                ("anthropic-ratelimit-unified-5h-reset", &epoch_in(reset_in)),
                ("anthropic-ratelimit-unified-7d-utilization", "0.1"),
                (
                    "anthropic-ratelimit-unified-7d-reset",
                    &epoch_in(6 * 24 * 3600),
                ),
                (
                    "anthropic-ratelimit-unified-representative-claim",
                    "five_hour",
                ),
            ],
        );
    }

    pub fn clear_headers(&self) {
        self.shared.lock().headers.clear();
    }

    /// The next `n` main requests are answered with `status` and `body`.
    pub fn fail_next(&self, n: usize, status: u16, body: Value) {
        self.fail_next_with(
            n,
            Failure {
                status,
                body,
                headers: Vec::new(),
            },
        );
    }

    /// The next `n` main requests are answered with `failure`.
    pub fn fail_next_with(&self, n: usize, failure: Failure) {
        let mut st = self.shared.lock();
        for _ in 0..n {
            st.failures.push(failure.clone());
        }
    }

    /// The first later main request for which `matches` holds is answered
    /// with `failure` (e.g. the request of a subagent, told by its prompt).
    pub fn fail_matching(
        &self,
        matches: impl Fn(&Recorded) -> bool + Send + Sync + 'static,
        failure: Failure,
    ) {
        self.shared
            .lock()
            .targeted
            .push((Arc::new(matches), failure));
    }

    /// Failures still queued.
    pub fn failures_left(&self) -> usize {
        self.shared.lock().failures.len()
    }

    /// An Anthropic-style error body:
    /// `{"type":"error","error":{"type":KIND,"message":MESSAGE}}`
    /// (KIND e.g. `rate_limit_error`, `authentication_error`, `overloaded_error`).
    pub fn error_body(kind: &str, message: &str) -> Value {
        json!({"type": "error", "error": {"type": kind, "message": message}})
    }

    // --- other paths ---------------------------------------------------------

    /// Answers `method path` (path without query) with `status` and a JSON
    /// body instead of 404, e.g. a usage endpoint or a hook receiver.
    pub fn route(&self, method: &str, path: &str, status: u16, body: Value) {
        self.shared.lock().routes.insert(
            (method.to_ascii_uppercase(), path.to_string()),
            (status, body),
        );
    }
}

impl FakeApi {
    /// Answers `method path` asked with `credential` (an API key or a
    /// bearer token) with `status` and a JSON body: one account's own
    /// answer, e.g. its usage endpoint.
    pub fn route_for(&self, credential: &str, method: &str, path: &str, status: u16, body: Value) {
        self.shared.lock().routes_for.insert(
            (
                credential.to_string(),
                method.to_ascii_uppercase(),
                path.to_string(),
            ),
            (status, body),
        );
    }

    /// One account's answer from the usage endpoint (`/api/oauth/usage`,
    /// asked with its `token`): each `(window, percent, resets in seconds)`
    /// (`five_hour`, `seven_day`, `seven_day_opus`, `seven_day_sonnet`).
    pub fn set_usage_endpoint_for(&self, token: &str, windows: &[(&str, f64, u64)]) {
        let mut body = serde_json::Map::new();
        for (w, used, reset_in) in windows {
            let at =
                k8s_openapi::jiff::Timestamp::now() + std::time::Duration::from_secs(*reset_in);
            body.insert(
                w.to_string(),
                json!({"utilization": used, "resets_at": at.to_string()}),
            );
        }
        self.route_for(token, "GET", "/api/oauth/usage", 200, Value::Object(body));
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        // Let held requests go so their tasks end, then stop the server.
        self.release();
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn main_of(log: &[Recorded]) -> Vec<Recorded> {
    log.iter().filter(|r| r.is_main()).cloned().collect()
}

// ---------------------------------------------------------------------------
// The request path (no unwrap below)
// ---------------------------------------------------------------------------

/// What to answer, decided when the request arrives.
enum Plan {
    Status(u16),
    Json(u16, Value),
    Fail(Failure),
    Reply(Answer),
    /// A text reply from the test's reply function (or the default echo),
    /// computed once the lock is released, so the function may call back
    /// into [`FakeApi`].
    Text(Option<ReplyFn>),
    /// The test's answer function decides (outside the lock too).
    Decide(AnswerFn, Option<ReplyFn>),
}

async fn handle(shared: Arc<Shared>, req: Request<Body>) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, BODY_LIMIT)
        .await
        .unwrap_or_else(|_| Bytes::new());
    let raw_body = String::from_utf8_lossy(&bytes).into_owned();
    let mut rec = Recorded {
        seq: 0,
        at: Instant::now(),
        method: parts.method.as_str().to_string(),
        path: parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| parts.uri.path().to_string()),
        headers: parts
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_ascii_lowercase(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        raw_body,
        status: 200,
    };

    // Decide, record and signal under the lock.
    let (plan, extra_headers, main) = {
        let mut st = shared.lock();
        rec.seq = st.log.len();
        let main = rec.is_main();
        let plan = if rec.is_messages() {
            if rec.body.is_null() {
                Plan::Json(
                    400,
                    FakeApi::error_body("invalid_request_error", "body is not JSON"),
                )
            } else if let Some(i) = main
                .then(|| st.targeted.iter().position(|(m, _)| m(&rec)))
                .flatten()
            {
                Plan::Fail(st.targeted.remove(i).1)
            } else if main && !st.failures.is_empty() {
                Plan::Fail(st.failures.remove(0))
            } else if let Some(a) = main.then(|| st.answers.pop_front()).flatten() {
                Plan::Reply(a)
            } else if let Some(f) = st.answer_fn.clone().filter(|_| main) {
                Plan::Decide(f, st.reply.clone())
            } else if rec.is_title() {
                // The title request asks for `{"title": ...}` (structured output).
                Plan::Reply(Answer::Text(
                    json!({"title": "Fake session title"}).to_string(),
                ))
            } else {
                Plan::Text(st.reply.clone())
            }
        } else if let Some((status, body)) = rec
            .credential()
            .and_then(|c| {
                st.routes_for.get(&(
                    c.to_string(),
                    rec.method.clone(),
                    rec.path_only().to_string(),
                ))
            })
            .or_else(|| {
                st.routes
                    .get(&(rec.method.clone(), rec.path_only().to_string()))
            })
        {
            Plan::Json(*status, body.clone())
        } else if parts.method == Method::HEAD && rec.path_only() == "/" {
            Plan::Status(200)
        } else {
            Plan::Status(404)
        };
        rec.status = match &plan {
            Plan::Status(s) | Plan::Json(s, _) => *s,
            Plan::Fail(f) => f.status,
            Plan::Reply(_) | Plan::Text(_) | Plan::Decide(..) => 200,
        };
        let extra = if rec.is_messages() {
            let mut h = st.headers.clone();
            if let Some(more) = rec.credential().and_then(|c| st.headers_for.get(c)) {
                h.extend(more.iter().cloned());
            }
            h
        } else {
            Vec::new()
        };
        st.log.push(rec.clone());
        (plan, extra, main)
    };
    shared.signal();

    if main {
        gate(&shared).await;
    }

    let text = |f: Option<ReplyFn>| match f {
        Some(f) => f(&rec),
        None => FakeApi::default_reply(&rec),
    };
    let plan = match plan {
        Plan::Text(f) => Plan::Reply(Answer::Text(text(f))),
        Plan::Decide(d, f) => Plan::Reply(d(&rec).unwrap_or_else(|| Answer::Text(text(f)))),
        other => other,
    };
    let id = shared.msg_ids.fetch_add(1, Ordering::Relaxed);
    let mut resp = match plan {
        Plan::Status(s) => plain(s, Body::empty(), "text/plain"),
        Plan::Json(s, v) => plain(s, Body::from(v.to_string()), "application/json"),
        Plan::Fail(f) => {
            let mut r = plain(f.status, Body::from(f.body.to_string()), "application/json");
            add_headers(&mut r, &f.headers);
            r
        }
        Plan::Text(_) | Plan::Decide(..) => plain(500, Body::empty(), "text/plain"), // resolved above
        Plan::Reply(answer) => {
            let model = rec.model().unwrap_or("claude-sonnet-4-5").to_string();
            let input_tokens = (rec.raw_body.len() / 4).max(1) as u64;
            if rec.stream() {
                plain(
                    200,
                    Body::from(sse_reply(id, &model, &answer, input_tokens)),
                    "text/event-stream; charset=utf-8",
                )
            } else {
                plain(
                    200,
                    Body::from(json_reply(id, &model, &answer, input_tokens).to_string()),
                    "application/json",
                )
            }
        }
    };
    if rec.is_messages() {
        add_headers(
            &mut resp,
            &[("request-id".into(), format!("req_fake_{id:06}"))],
        );
        // A failure's own headers (e.g. `...-unified-status: rejected`) win.
        let extra: Vec<(String, String)> = extra_headers
            .into_iter()
            .filter(|(k, _)| !resp.headers().contains_key(k.as_str()))
            .collect();
        add_headers(&mut resp, &extra);
    }
    resp
}

/// Whether a request asks for structured output with a `title` field (the
/// session-title request Claude Code sends to a haiku model).
fn wants_title(body: &Value) -> bool {
    body.pointer("/output_config/format/schema/properties/title")
        .is_some()
}

/// Waits while the gate is closed (unless a pass is available).
async fn gate(shared: &Shared) {
    let mut counted = false;
    loop {
        let notified = shared.notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        {
            let mut st = shared.lock();
            if !st.held || st.passes > 0 {
                if st.held {
                    st.passes -= 1;
                }
                if counted {
                    st.waiting -= 1;
                }
                return;
            }
            if !counted {
                st.waiting += 1;
                counted = true;
            }
        }
        notified.await;
    }
}

fn plain(status: u16, body: Body, content_type: &str) -> Response<Body> {
    let mut r = Response::new(body);
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if let Ok(v) = HeaderValue::from_str(content_type) {
        r.headers_mut().insert(axum::http::header::CONTENT_TYPE, v);
    }
    r
}

/// Adds headers, skipping any name or value that is not valid HTTP.
fn add_headers(r: &mut Response<Body>, headers: &[(String, String)]) {
    for (k, v) in headers {
        if let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            r.headers_mut().insert(k, v);
        }
    }
}

fn output_tokens(answer: &Answer) -> u64 {
    let words = match answer {
        Answer::Text(t) => t.split_whitespace().count(),
        Answer::ToolUse { text, input, .. } => {
            text.as_deref().unwrap_or("").split_whitespace().count() + input.to_string().len() / 4
        }
    };
    (words as u64).max(1)
}

/// The (text, tool call) parts of an answer.
fn answer_parts(answer: &Answer, id: u64) -> (Option<&str>, Option<(String, &str, &Value)>) {
    match answer {
        Answer::Text(t) => (Some(t.as_str()), None),
        Answer::ToolUse { text, name, input } => (
            text.as_deref(),
            Some((format!("toolu_fake_{id:06}"), name.as_str(), input)),
        ),
    }
}

/// The event stream of one answer, as the real API sends it.
fn sse_reply(id: u64, model: &str, answer: &Answer, input_tokens: u64) -> String {
    let (text, tool) = answer_parts(answer, id);
    let mut events: Vec<(&str, Value)> = vec![(
        "message_start",
        json!({"type": "message_start", "message": {
            "id": format!("msg_fake_{id:06}"),
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [],
            "stop_reason": null,
            "stop_sequence": null,
            "usage": {
                "input_tokens": input_tokens,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
                "output_tokens": 1
            }
        }}),
    )];
    let mut index = 0;
    if let Some(text) = text {
        events.push((
            "content_block_start",
            json!({"type": "content_block_start", "index": index,
                   "content_block": {"type": "text", "text": ""}}),
        ));
        events.push(("ping", json!({"type": "ping"})));
        // A few deltas, cut after whitespace, as the real stream does.
        for chunk in chunks(text, 24) {
            events.push((
                "content_block_delta",
                json!({"type": "content_block_delta", "index": index,
                       "delta": {"type": "text_delta", "text": chunk}}),
            ));
        }
        events.push((
            "content_block_stop",
            json!({"type": "content_block_stop", "index": index}),
        ));
        index += 1;
    }
    if let Some((tool_id, name, input)) = &tool {
        events.push((
            "content_block_start",
            json!({"type": "content_block_start", "index": index,
                   "content_block": {"type": "tool_use", "id": tool_id, "name": name,
                                     "input": {}}}),
        ));
        events.push((
            "content_block_delta",
            json!({"type": "content_block_delta", "index": index,
                   "delta": {"type": "input_json_delta", "partial_json": input.to_string()}}),
        ));
        events.push((
            "content_block_stop",
            json!({"type": "content_block_stop", "index": index}),
        ));
    }
    let stop_reason = if tool.is_some() {
        "tool_use"
    } else {
        "end_turn"
    };
    events.push((
        "message_delta",
        json!({"type": "message_delta",
               "delta": {"stop_reason": stop_reason, "stop_sequence": null},
               "usage": {"output_tokens": output_tokens(answer)}}),
    ));
    events.push(("message_stop", json!({"type": "message_stop"})));
    let mut out = String::new();
    for (name, data) in events {
        out.push_str(&format!("event: {name}\ndata: {data}\n\n"));
    }
    out
}

/// The non-streaming form of the same answer.
fn json_reply(id: u64, model: &str, answer: &Answer, input_tokens: u64) -> Value {
    let (text, tool) = answer_parts(answer, id);
    let mut content = Vec::new();
    if let Some(t) = text {
        content.push(json!({"type": "text", "text": t}));
    }
    if let Some((tool_id, name, input)) = &tool {
        content.push(json!({"type": "tool_use", "id": tool_id, "name": name, "input": input}));
    }
    json!({
        "id": format!("msg_fake_{id:06}"),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": if tool.is_some() { "tool_use" } else { "end_turn" },
        "stop_sequence": null,
        "usage": {
            "input_tokens": input_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "output_tokens": output_tokens(answer)
        }
    })
}

/// Splits `text` into pieces of about `size` characters, ending after
/// whitespace where possible (never inside a character).
fn chunks(text: &str, size: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for c in text.chars() {
        cur.push(c);
        if cur.chars().count() >= size && c.is_whitespace() {
            out.push(std::mem::take(&mut cur));
        }
    }
    if !cur.is_empty() || out.is_empty() {
        out.push(cur);
    }
    out
}

/// Lets another thread open the gate one reply at a time.
#[derive(Clone)]
pub struct ApiHandle {
    shared: Arc<Shared>,
}

impl ApiHandle {
    /// As [`FakeApi::release_one`].
    pub fn release_one(&self) {
        self.shared.lock().passes += 1;
        self.shared.signal();
    }
}

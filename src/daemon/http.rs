//! The daemon's loopback HTTP endpoint for Claude Code: hooks and the
//! statusLine feed, and the pool's tmux server notifications. Served on the
//! same listener as the control plane ([`super::api`]), but authenticated
//! differently: each Session's URLs carry its own secret (the agents never
//! see the API token); a post with an unknown session or a wrong secret
//! gets 403 and changes nothing.

use crate::agent::signals::Signals;
use crate::api::{Kind, ObjectKey};
use crate::metrics::Metrics;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::post;
use serde_json::Value;
use std::sync::Arc;

/// What the endpoint feeds and counts.
#[derive(Clone)]
pub struct Endpoint {
    pub signals: Arc<Signals>,
    pub metrics: Arc<Metrics>,
}

/// The routes; their paths follow [`crate::agent::signals::agent_path`].
pub fn router(endpoint: Endpoint) -> Router {
    Router::new()
        .route("/v1/agents/{ns}/{name}/{secret}/hook", post(hook))
        .route("/v1/tmux/{secret}/{session}", post(tmux_event))
        .route(
            "/v1/agents/{ns}/{name}/{secret}/statusline",
            post(statusline),
        )
        .with_state(endpoint)
}

type Params = Path<(String, String, String)>;

/// The Session a post is for, if its secret is right, and its JSON body.
fn accept(
    s: &Signals,
    (ns, name, secret): (String, String, String),
    body: &[u8],
) -> Result<(ObjectKey, Value), StatusCode> {
    // The Session's agent, or its standby (recorded apart).
    let key = s
        .route(&ObjectKey::new(Kind::Session, &ns, &name), &secret)
        .ok_or(StatusCode::FORBIDDEN)?;
    let body = serde_json::from_slice::<Value>(body).map_err(|_| StatusCode::BAD_REQUEST)?;
    Ok((key, body))
}

async fn hook(
    State(e): State<Endpoint>,
    Path(p): Params,
    body: axum::body::Bytes,
) -> (StatusCode, String) {
    let s = &e.signals;
    let (key, payload) = match accept(s, p, &body) {
        Ok(x) => x,
        Err(code) => return (code, String::new()),
    };
    let event = payload
        .get("hook_event_name")
        .and_then(|e| e.as_str())
        .unwrap_or("?");
    tracing::debug!(session = %key, event, "hook");
    e.metrics
        .hook_events_total
        .with_label_values(&[crate::metrics::hook_event_label(event)])
        .inc();
    s.hook(&key, &payload);
    // An empty JSON object: no decision, no extra context.
    (StatusCode::OK, "{}".into())
}

async fn statusline(
    State(e): State<Endpoint>,
    Path(p): Params,
    body: axum::body::Bytes,
) -> (StatusCode, String) {
    let (key, input) = match accept(&e.signals, p, &body) {
        Ok(x) => x,
        Err(code) => return (code, String::new()),
    };
    e.signals.statusline(&key, &input);
    e.metrics.statusline_updates_total.inc();
    (StatusCode::OK, status_text(&key.name, &input))
}

/// The pool's tmux server says a pane died or a session closed.
async fn tmux_event(
    State(e): State<Endpoint>,
    Path((secret, session)): Path<(String, String)>,
) -> StatusCode {
    if !crate::secret::token_matches(e.signals.tmux_secret(), &secret) {
        return StatusCode::FORBIDDEN;
    }
    e.signals
        .terminal_event(&crate::agent::driver::key_of_tmux_name(&session));
    StatusCode::OK
}

/// The path the tmux server posts to (`#{session_name}` expanded by tmux).
pub fn tmux_path(secret: &str) -> String {
    format!("/v1/tmux/{secret}/#{{session_name}}")
}

/// The line Claude Code shows in its footer.
fn status_text(name: &str, input: &Value) -> String {
    let pct = |w: &str| {
        input
            .pointer(&format!("/rate_limits/{w}/used_percentage"))
            .and_then(Value::as_f64)
            .map(|p| format!(" · {} {p:.0}%", if w == "five_hour" { "5h" } else { "7d" }))
            .unwrap_or_default()
    };
    let model = input
        .pointer("/model/display_name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    format!(
        "claude-failover · {name} · {model}{}{}",
        pct("five_hour"),
        pct("seven_day")
    )
}

//! The daemon's loopback HTTP endpoint for Claude Code: hooks and the
//! statusLine feed, and the pool's tmux server notifications. Served on the
//! same listener as the control plane ([`super::api`]), but authenticated
//! differently: each Session's URLs carry its own secret (the agents never
//! see the API token); a post with an unknown session or a wrong secret
//! gets 403 and changes nothing.

use super::signals::Signals;
use crate::api::{Kind, ObjectKey};
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::post;
use serde_json::Value;
use std::sync::Arc;

/// The URL path prefix of one Session's endpoints.
pub fn agent_path(key: &ObjectKey, secret: &str) -> String {
    format!("/v1/agents/{}/{}/{secret}", key.namespace, key.name)
}

pub fn router(signals: Arc<Signals>) -> Router {
    Router::new()
        .route("/v1/agents/{ns}/{name}/{secret}/hook", post(hook))
        .route("/v1/tmux/{secret}/{session}", post(tmux_event))
        .route(
            "/v1/agents/{ns}/{name}/{secret}/statusline",
            post(statusline),
        )
        .with_state(signals)
}

type Params = Path<(String, String, String)>;

/// The Session a post is for, if its secret is right, and its JSON body.
fn accept(
    s: &Signals,
    (ns, name, secret): (String, String, String),
    body: &[u8],
) -> Result<(ObjectKey, Value), StatusCode> {
    let key = ObjectKey::new(Kind::Session, &ns, &name);
    if !s.authorized(&key, &secret) {
        return Err(StatusCode::FORBIDDEN);
    }
    let body = serde_json::from_slice::<Value>(body).map_err(|_| StatusCode::BAD_REQUEST)?;
    Ok((key, body))
}

async fn hook(
    State(s): State<Arc<Signals>>,
    Path(p): Params,
    body: axum::body::Bytes,
) -> (StatusCode, String) {
    let (key, payload) = match accept(&s, p, &body) {
        Ok(x) => x,
        Err(code) => return (code, String::new()),
    };
    let event = payload
        .get("hook_event_name")
        .and_then(|e| e.as_str())
        .unwrap_or("?");
    tracing::debug!(session = %key, event, "hook");
    crate::metrics::metrics()
        .hook_events_total
        .with_label_values(&[crate::metrics::hook_event_label(event)])
        .inc();
    s.hook(&key, &payload);
    // An empty JSON object: no decision, no extra context.
    (StatusCode::OK, "{}".into())
}

async fn statusline(
    State(s): State<Arc<Signals>>,
    Path(p): Params,
    body: axum::body::Bytes,
) -> (StatusCode, String) {
    let (key, input) = match accept(&s, p, &body) {
        Ok(x) => x,
        Err(code) => return (code, String::new()),
    };
    s.statusline(&key, &input);
    crate::metrics::metrics().statusline_updates_total.inc();
    (StatusCode::OK, status_text(&key.name, &input))
}

/// The pool's tmux server says a pane died or a session closed.
async fn tmux_event(
    State(s): State<Arc<Signals>>,
    Path((secret, session)): Path<(String, String)>,
) -> StatusCode {
    if secret != s.tmux_secret() {
        return StatusCode::FORBIDDEN;
    }
    s.poke(&crate::controller::session::key_of_tmux_name(&session));
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

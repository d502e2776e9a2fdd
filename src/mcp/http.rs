//! The MCP server on the daemon's listener: the Streamable HTTP transport
//! at [`PATH`], behind a bearer token.
//!
//! `Authorization: Bearer TOKEN`, where TOKEN is
//! - the control plane's API token (read-only unless `mcp.write: true`),
//! - a token of `mcp.tokens` (its own `write`), or
//! - `agent.NAMESPACE.SESSION.SECRET`: the agent of a Session with
//!   `spec.agent.mcp: true`, with its session's current secret (the daemon
//!   writes it into the agent's `--mcp-config` file at each launch).
//!
//! Anything else is a 401 (`WWW-Authenticate: Bearer`), before the MCP
//! transport sees the request. Tokens are compared in constant time and
//! never logged. The daemon's own loopback `Host` check applies too.

use super::config::{McpConfig, NamedToken, TokenFileError};
use super::delegation::RateLimiter;
use super::pool::Pool;
use super::scope::Caller;
use super::server::McpServer;
use super::tools::Shared;
use crate::api::{Kind, ObjectKey};
use crate::daemon::api::ApiState;
use crate::secret::token_matches;
use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::{StreamableHttpServerConfig, StreamableHttpService};
use std::sync::Arc;

/// Where the MCP server answers.
pub const PATH: &str = "/mcp";
/// The prefix of an agent's token.
pub const AGENT_PREFIX: &str = "agent.";

/// Checks an agent's secret for its Session.
pub type AgentAuth = Arc<dyn Fn(&ObjectKey, &str) -> bool + Send + Sync>;

struct Auth {
    api_token: String,
    api_write: bool,
    tokens: Vec<NamedToken>,
    agent: AgentAuth,
}

impl Auth {
    /// Who presents `token`, if anyone.
    fn caller(&self, token: &str) -> Option<Caller> {
        if token_matches(&self.api_token, token) {
            return Some(Caller::Client {
                name: "api-token".into(),
                write: self.api_write,
            });
        }
        // Every named token is compared, so the time taken does not tell
        // which one came close.
        let mut found = None;
        for t in &self.tokens {
            if token_matches(&t.secret, token) && found.is_none() {
                found = Some(Caller::Client {
                    name: t.name.clone(),
                    write: t.write,
                });
            }
        }
        if found.is_some() {
            return found;
        }
        let key = parse_agent_token(token)?;
        let secret = token.rsplit('.').next()?;
        (self.agent)(&key, secret).then_some(Caller::Agent { session: key })
    }
}

/// The Session an agent token names (`agent.NS.NAME.SECRET`), if it is
/// well formed.
pub fn parse_agent_token(token: &str) -> Option<ObjectKey> {
    let rest = token.strip_prefix(AGENT_PREFIX)?;
    let mut parts = rest.split('.');
    let (ns, name, secret) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || secret.is_empty() {
        return None;
    }
    crate::manifest::validate::dns1123_label(ns).ok()?;
    crate::manifest::validate::dns1123_label(name).ok()?;
    Some(ObjectKey::new(Kind::Session, ns, name))
}

/// An agent's token for its Session and current secret.
pub fn agent_token(key: &ObjectKey, secret: &str) -> String {
    format!("{AGENT_PREFIX}{}.{}.{secret}", key.namespace, key.name)
}

/// What the daemon passes to the endpoint: the `mcp` config and the
/// namespace used when a call names none.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    pub config: McpConfig,
    pub namespace: String,
}

/// The MCP endpoint, to merge into the daemon's router: the API's state
/// (its router is called in-process for every read and write), the
/// settings, and the agents' signals (whose secrets prove an agent).
pub fn router(
    api: Arc<ApiState>,
    settings: &Settings,
    signals: Arc<crate::agent::signals::Signals>,
) -> Result<Router, TokenFileError> {
    let agent: AgentAuth = Arc::new(move |key, secret| signals.authorized(key, secret));
    router_with(api, settings, agent)
}

fn router_with(
    api: Arc<ApiState>,
    settings: &Settings,
    agent: AgentAuth,
) -> Result<Router, TokenFileError> {
    let config = &settings.config;
    let auth = Arc::new(Auth {
        api_token: api.token.clone(),
        api_write: config.write(),
        tokens: config.load_tokens()?,
        agent,
    });
    let limits = config.delegation.limits();
    let shared = Arc::new(Shared {
        pool: Pool::in_process(
            api.store.clone(),
            crate::daemon::api::router(api.clone()),
            api.token.clone(),
        ),
        namespace: settings.namespace.clone(),
        limits,
        rate: RateLimiter::new(&limits),
    });
    let mut cfg = StreamableHttpServerConfig::default();
    // The daemon checks Host itself (loopback names on a loopback listener).
    cfg.allowed_hosts = Vec::new();
    let cancel = cfg.cancellation_token.clone();
    let mut stop = api.stop.clone();
    tokio::spawn(async move {
        let _ = stop.wait_for(|stopped| *stopped).await;
        cancel.cancel();
    });
    let service = StreamableHttpService::new(
        move || Ok(McpServer::new(shared.clone(), None)),
        Arc::new(LocalSessionManager::default()),
        cfg,
    );
    Ok(Router::new()
        .route_service(PATH, service)
        .layer(middleware::from_fn_with_state(auth, authenticate)))
}

async fn authenticate(State(auth): State<Arc<Auth>>, mut req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::trim);
    match presented.and_then(|t| auth.caller(t)) {
        Some(caller) => {
            req.extensions_mut().insert(caller);
            next.run(req).await
        }
        None => {
            tracing::debug!(path = %req.uri().path(), "MCP request without a valid token");
            let body = serde_json::json!({
                "jsonrpc": "2.0",
                "id": null,
                "error": {
                    "code": -32001,
                    "message": "unauthorized (401): a valid bearer token is required: the API token (`claude-failover token`), a token of mcp.tokens, or an agent's own"
                }
            });
            let mut r = (StatusCode::UNAUTHORIZED, axum::Json(body)).into_response();
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"claude-failover\""),
            );
            r
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_tokens_round_trip() {
        let key = ObjectKey::new(Kind::Session, "default", "ccl-0");
        let t = agent_token(&key, "abc123");
        assert_eq!(t, "agent.default.ccl-0.abc123");
        assert_eq!(parse_agent_token(&t), Some(key));
        for bad in [
            "agent.default.ccl-0",
            "agent.default.ccl-0.",
            "agent.Default.x.s",
            "agent.a.b.c.d",
            "agent...s",
            "default.ccl-0.s",
        ] {
            assert_eq!(parse_agent_token(bad), None, "{bad}");
        }
    }

    #[test]
    fn each_token_gets_its_caller() {
        let auth = Auth {
            api_token: "api".into(),
            api_write: false,
            tokens: vec![NamedToken {
                name: "ops".into(),
                secret: "opsecret".into(),
                write: true,
            }],
            agent: Arc::new(|k, s| k.name == "ccl-0" && s == "good"),
        };
        assert_eq!(
            auth.caller("api"),
            Some(Caller::Client {
                name: "api-token".into(),
                write: false
            })
        );
        assert_eq!(
            auth.caller("opsecret"),
            Some(Caller::Client {
                name: "ops".into(),
                write: true
            })
        );
        assert_eq!(
            auth.caller("agent.default.ccl-0.good"),
            Some(Caller::Agent {
                session: ObjectKey::new(Kind::Session, "default", "ccl-0")
            })
        );
        assert_eq!(auth.caller("agent.default.ccl-0.bad"), None);
        assert_eq!(auth.caller("agent.default.ccl-1.good"), None);
        assert_eq!(auth.caller("nope"), None);
    }
}

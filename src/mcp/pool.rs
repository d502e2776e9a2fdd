//! How the MCP server reaches the pool.
//!
//! Through the daemon's HTTP API, always, for writes: the same validation,
//! the same requests in the store and the same events as `apply`, the CLI
//! and any API client. Inside the daemon the API's router is called
//! in-process; `claude-failover mcp` finds the daemon through
//! `STATE/api.json` at each call (so a daemon started or stopped later is
//! noticed). With no daemon, reads come from the store and say so, and
//! writes are refused with the reason.
//!
//! After every write the server records one more event on the object,
//! reason [`ORIGIN_REASON`], source `mcp`, naming who asked (an MCP client
//! and its token, or the agent of a session).

use super::sse::{Parser, WatchItem};
use crate::api::{Kind, ObjectKey};
use crate::daemon::bus::{EventItem, InvolvedObject};
use crate::store::{Store, StoreError};
use axum::body::Body;
use axum::http::{Method, Request, header};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// The reason of the event that records who asked for a write.
pub const ORIGIN_REASON: &str = "RequestedOverMcp";
/// Largest answer read from the API.
const BODY_LIMIT: usize = 64 * 1024 * 1024;
/// Connecting to the daemon gives up after this.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// One API call gives up after this.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// The event stream sends a comment every 15 s: a stream silent this long
/// is dead.
const WATCH_IDLE: Duration = Duration::from_secs(45);
/// Items buffered between the event stream and its reader.
const WATCH_BUFFER: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// The daemon answered with an error Status.
    #[error("{message}")]
    Api {
        code: u16,
        reason: String,
        message: String,
    },
    #[error("cannot reach the daemon: {0}")]
    Unreachable(String),
    #[error("{0}")]
    Store(#[from] StoreError),
    /// A write with no daemon to take it.
    #[error(
        "{0}; this needs the daemon (`claude-failover run`), the store is only read without it"
    )]
    Offline(String),
}

/// The daemon's API, over the network or in-process.
#[derive(Clone)]
pub struct Api {
    transport: Transport,
    /// The bearer token (never logged).
    token: String,
}

#[derive(Clone)]
enum Transport {
    /// `http://HOST:PORT`.
    Network(String),
    /// The daemon's own router.
    Router(axum::Router),
}

/// Where requests go now.
pub enum Link {
    Daemon(Api),
    /// No daemon: why (read from the store).
    Offline(String),
}

type Discover = Arc<dyn Fn() -> Result<Api, String> + Send + Sync>;

#[derive(Clone)]
enum Linker {
    InProcess(Api),
    Discover(Discover),
}

/// The pool as the MCP server sees it.
#[derive(Clone)]
pub struct Pool {
    store: Store,
    linker: Linker,
}

/// A read, and whether it came from the store because no daemon runs.
pub struct Read<T> {
    pub value: T,
    /// Set when read from the store: why no daemon was asked.
    pub offline: Option<String>,
}

impl Api {
    pub fn network(base: impl Into<String>, token: impl Into<String>) -> Api {
        Api {
            transport: Transport::Network(base.into()),
            token: token.into(),
        }
    }

    pub fn in_process(router: axum::Router, token: impl Into<String>) -> Api {
        Api {
            transport: Transport::Router(router),
            token: token.into(),
        }
    }

    /// One call; a non-2xx answer is [`PoolError::Api`] with the Status's
    /// reason and message.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, PoolError> {
        let (code, text) = match &self.transport {
            Transport::Network(base) => {
                let url = format!("{base}{path}");
                let token = self.token.clone();
                tokio::task::spawn_blocking(move || network_call(&method, &url, &token, body))
                    .await
                    .map_err(|e| PoolError::Unreachable(e.to_string()))??
            }
            Transport::Router(router) => {
                let resp = tower::ServiceExt::oneshot(
                    router.clone(),
                    self.request(method, path, body.map(|b| b.to_string())),
                )
                .await
                .map_err(|e| PoolError::Unreachable(e.to_string()))?;
                let code = resp.status().as_u16();
                let bytes = axum::body::to_bytes(resp.into_body(), BODY_LIMIT)
                    .await
                    .map_err(|e| PoolError::Unreachable(e.to_string()))?;
                (code, String::from_utf8_lossy(&bytes).into_owned())
            }
        };
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if (200..300).contains(&code) {
            return Ok(value);
        }
        Err(PoolError::Api {
            code,
            reason: value
                .get("reason")
                .and_then(Value::as_str)
                .unwrap_or("Error")
                .to_string(),
            message: value
                .get("message")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| format!("the daemon answered {code}: {value}")),
        })
    }

    fn request(&self, method: Method, path: &str, body: Option<String>) -> Request<Body> {
        Request::builder()
            .method(method)
            .uri(path)
            .header(header::AUTHORIZATION, format!("Bearer {}", self.token))
            .header(header::CONTENT_TYPE, "application/json")
            .body(body.map(Body::from).unwrap_or_else(Body::empty))
            .expect("a request of known parts")
    }

    /// The daemon's event stream (`query`: `namespace=..&kind=..`), item by
    /// item, until the stream ends or the receiver is dropped.
    pub async fn watch(&self, query: &str) -> Result<mpsc::Receiver<WatchItem>, PoolError> {
        let path = format!("/api/v1/watch?{query}");
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        match &self.transport {
            Transport::Network(base) => {
                let url = format!("{base}{path}");
                let token = self.token.clone();
                let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
                std::thread::Builder::new()
                    .name("mcp-watch".into())
                    .spawn(move || network_watch(&url, &token, tx, ready_tx))
                    .map_err(|e| PoolError::Unreachable(e.to_string()))?;
                ready_rx
                    .await
                    .map_err(|_| PoolError::Unreachable("the event stream closed".into()))??;
            }
            Transport::Router(router) => {
                let resp = tower::ServiceExt::oneshot(
                    router.clone(),
                    self.request(Method::GET, &path, None),
                )
                .await
                .map_err(|e| PoolError::Unreachable(e.to_string()))?;
                if !resp.status().is_success() {
                    return Err(PoolError::Unreachable(format!(
                        "the event stream answered {}",
                        resp.status()
                    )));
                }
                tokio::spawn(router_watch(resp.into_body(), tx));
            }
        }
        Ok(rx)
    }
}

fn agent(global: Option<Duration>) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(CONNECT_TIMEOUT))
        .timeout_global(global)
        .build()
        .into()
}

fn network_call(
    method: &Method,
    url: &str,
    token: &str,
    body: Option<Value>,
) -> Result<(u16, String), PoolError> {
    let a = agent(Some(CALL_TIMEOUT));
    let auth = format!("Bearer {token}");
    let resp = if *method == Method::GET {
        a.get(url).header("authorization", &auth).call()
    } else {
        a.post(url)
            .header("authorization", &auth)
            .header("content-type", "application/json")
            .send(body.unwrap_or_else(|| json!({})).to_string())
    };
    let mut resp = resp.map_err(|e| PoolError::Unreachable(e.to_string()))?;
    let code = resp.status().as_u16();
    let text = resp
        .body_mut()
        .with_config()
        .limit(BODY_LIMIT as u64)
        .read_to_string()
        .map_err(|e| PoolError::Unreachable(e.to_string()))?;
    Ok((code, text))
}

/// Reads the event stream on this (blocking) thread.
fn network_watch(
    url: &str,
    token: &str,
    tx: mpsc::Sender<WatchItem>,
    ready: tokio::sync::oneshot::Sender<Result<(), PoolError>>,
) {
    use std::io::BufRead;
    let a: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(CONNECT_TIMEOUT))
        .timeout_recv_body(Some(WATCH_IDLE))
        .build()
        .into();
    let resp = a
        .get(url)
        .header("authorization", &format!("Bearer {token}"))
        .header("accept", "text/event-stream")
        .call();
    let resp = match resp {
        Ok(r) if r.status().is_success() => r,
        Ok(r) => {
            let _ = ready.send(Err(PoolError::Unreachable(format!(
                "the event stream answered {}",
                r.status()
            ))));
            return;
        }
        Err(e) => {
            let _ = ready.send(Err(PoolError::Unreachable(e.to_string())));
            return;
        }
    };
    let _ = ready.send(Ok(()));
    let reader = std::io::BufReader::new(resp.into_body().into_reader());
    let mut parser = Parser::default();
    for line in reader.lines() {
        let Ok(line) = line else { return };
        if let Some(item) = parser.line(line.trim_end_matches('\r'))
            && tx.blocking_send(item).is_err()
        {
            return;
        }
        if tx.is_closed() {
            return;
        }
    }
}

async fn router_watch(body: Body, tx: mpsc::Sender<WatchItem>) {
    use futures::StreamExt;
    let mut stream = body.into_data_stream();
    let mut parser = Parser::default();
    let mut pending: Vec<u8> = Vec::new();
    while let Some(Ok(chunk)) = stream.next().await {
        pending.extend_from_slice(&chunk);
        while let Some(i) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=i).collect();
            let line = String::from_utf8_lossy(&line);
            if let Some(item) = parser.line(line.trim_end_matches(['\r', '\n']))
                && tx.send(item).await.is_err()
            {
                return;
            }
        }
        if tx.is_closed() {
            return;
        }
    }
}

impl Pool {
    /// Inside the daemon: its API's router, called in-process.
    pub fn in_process(store: Store, router: axum::Router, token: String) -> Pool {
        Pool {
            store,
            linker: Linker::InProcess(Api::in_process(router, token)),
        }
    }

    /// `claude-failover mcp`: `discover` finds the daemon at each call, or
    /// says why there is none.
    pub fn discovering(
        store: Store,
        discover: impl Fn() -> Result<Api, String> + Send + Sync + 'static,
    ) -> Pool {
        Pool {
            store,
            linker: Linker::Discover(Arc::new(discover)),
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Where requests go now.
    pub fn link(&self) -> Link {
        match &self.linker {
            Linker::InProcess(api) => Link::Daemon(api.clone()),
            Linker::Discover(f) => match f() {
                Ok(api) => Link::Daemon(api),
                Err(why) => Link::Offline(why),
            },
        }
    }

    fn api(&self) -> Result<Api, PoolError> {
        match self.link() {
            Link::Daemon(api) => Ok(api),
            Link::Offline(why) => Err(PoolError::Offline(why)),
        }
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, PoolError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|e| PoolError::Unreachable(e.to_string()))?
            .map_err(PoolError::from)
    }

    /// Every object of `kind` (in `namespace`, or all).
    pub async fn list(
        &self,
        kind: Kind,
        namespace: Option<&str>,
    ) -> Result<Read<Vec<Value>>, PoolError> {
        match self.link() {
            Link::Daemon(api) => {
                let path = match namespace {
                    Some(ns) => format!("/api/v1/namespaces/{ns}/{}", kind.plural()),
                    None => format!("/api/v1/{}", kind.plural()),
                };
                let v = api.call(Method::GET, &path, None).await?;
                let items = v
                    .get("items")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                Ok(Read {
                    value: items,
                    offline: None,
                })
            }
            Link::Offline(why) => {
                let ns = namespace.map(str::to_string);
                let value = self.blocking(move |s| s.list(kind, ns.as_deref())).await?;
                Ok(Read {
                    value,
                    offline: Some(why),
                })
            }
        }
    }

    /// One object, or None.
    pub async fn get(&self, key: &ObjectKey) -> Result<Read<Option<Value>>, PoolError> {
        match self.link() {
            Link::Daemon(api) => {
                let path = format!(
                    "/api/v1/namespaces/{}/{}/{}",
                    key.namespace,
                    key.kind.plural(),
                    key.name
                );
                let value = match api.call(Method::GET, &path, None).await {
                    Ok(v) => Some(v),
                    Err(PoolError::Api { code: 404, .. }) => None,
                    Err(e) => return Err(e),
                };
                Ok(Read {
                    value,
                    offline: None,
                })
            }
            Link::Offline(why) => {
                let k = key.clone();
                let value = self.blocking(move |s| s.get(&k)).await?;
                Ok(Read {
                    value,
                    offline: Some(why),
                })
            }
        }
    }

    /// The recent events of one object, oldest first, each with its
    /// `involvedObject` (as the API and the event stream show them).
    pub async fn events(&self, key: &ObjectKey) -> Result<Read<Vec<Value>>, PoolError> {
        match self.link() {
            Link::Daemon(api) => {
                let path = format!(
                    "/api/v1/namespaces/{}/{}/{}/events",
                    key.namespace,
                    key.kind.plural(),
                    key.name
                );
                let items = match api.call(Method::GET, &path, None).await {
                    Ok(v) => v
                        .get("items")
                        .and_then(Value::as_array)
                        .cloned()
                        .unwrap_or_default(),
                    Err(PoolError::Api { code: 404, .. }) => Vec::new(),
                    Err(e) => return Err(e),
                };
                Ok(Read {
                    value: items,
                    offline: None,
                })
            }
            Link::Offline(why) => {
                let k = key.clone();
                let events = self.blocking(move |s| s.events(&k)).await?;
                let value = events
                    .into_iter()
                    .map(|event| {
                        serde_json::to_value(EventItem {
                            involved_object: InvolvedObject::from(key),
                            event,
                        })
                        .expect("events serialize")
                    })
                    .collect();
                Ok(Read {
                    value,
                    offline: Some(why),
                })
            }
        }
    }

    /// Creates a Task (the manifest as JSON) through the daemon's API.
    pub async fn create_task(&self, namespace: &str, task: Value) -> Result<Value, PoolError> {
        self.api()?
            .call(
                Method::POST,
                &format!("/api/v1/namespaces/{namespace}/tasks"),
                Some(task),
            )
            .await
    }

    /// An action on an object (`cancel`, `restart`, `failover`); returns
    /// the daemon's message.
    pub async fn action(
        &self,
        key: &ObjectKey,
        verb: &str,
        body: Value,
    ) -> Result<String, PoolError> {
        let v = self
            .api()?
            .call(
                Method::POST,
                &format!(
                    "/api/v1/namespaces/{}/{}/{}/{verb}",
                    key.namespace,
                    key.kind.plural(),
                    key.name
                ),
                Some(body),
            )
            .await?;
        Ok(v.get("message")
            .and_then(Value::as_str)
            .unwrap_or("accepted")
            .to_string())
    }

    /// The daemon's event stream, filtered by namespace and kind.
    pub async fn watch(
        &self,
        namespace: Option<&str>,
        kind: Option<Kind>,
    ) -> Result<mpsc::Receiver<WatchItem>, PoolError> {
        let mut q = Vec::new();
        if let Some(ns) = namespace {
            q.push(format!("namespace={ns}"));
        }
        if let Some(k) = kind {
            q.push(format!("kind={}", k.plural()));
        }
        self.api()?.watch(&q.join("&")).await
    }

    /// Records who asked for a write on `key` (an event, source `mcp`). A
    /// failure is logged, not returned: the write itself was done.
    pub async fn record_origin(&self, key: &ObjectKey, message: String) {
        let k = key.clone();
        let r = self
            .blocking(move |s| s.record_event(&k, false, ORIGIN_REASON, &message, "mcp"))
            .await;
        if let Err(e) = r {
            tracing::warn!(object = %key, error = %e, "cannot record the MCP request's origin");
        }
    }
}

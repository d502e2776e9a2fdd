//! A scripted HTTP server on 127.0.0.1 standing in for Telegram, a webhook
//! receiver or the usage endpoint.
//!
//! Every request (any method, any path) is recorded. Answers come from a
//! per-path script, consumed in order; when a path's script is empty the
//! answer is `200 {"ok":true}`. A scripted answer may be held until
//! [`Loopback::release`], so a test can keep a delivery in flight. The
//! server runs on its own thread and runtime (usable from sync and async
//! tests) and stops when dropped.
//!
//! Test files include it with `#[path = "common/loopback.rs"] mod loopback;`.

#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::{Request, Response, StatusCode};
use serde_json::Value;

/// One request as received.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub at: Instant,
    pub method: String,
    /// Path and query.
    pub path: String,
    /// Names lower-cased.
    pub headers: Vec<(String, String)>,
    pub raw_body: String,
    /// `Value::Null` when not JSON.
    pub body: Value,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A scripted answer.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Value,
    /// Wait for [`Loopback::release`] before answering.
    pub hold: bool,
}

impl Reply {
    pub fn new(status: u16, body: Value) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body,
            hold: false,
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn held(mut self) -> Reply {
        self.hold = true;
        self
    }
}

struct State {
    requests: Mutex<Vec<Recorded>>,
    script: Mutex<HashMap<String, VecDeque<Reply>>>,
    /// One permit per released held answer.
    release: tokio::sync::Semaphore,
}

pub struct Loopback {
    addr: SocketAddr,
    state: Arc<State>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Loopback {
    pub fn start() -> Loopback {
        let state = Arc::new(State {
            requests: Mutex::default(),
            script: Mutex::default(),
            release: tokio::sync::Semaphore::new(0),
        });
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let st = state.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind");
                addr_tx.send(listener.local_addr().unwrap()).unwrap();
                let app = axum::Router::new().fallback(move |req: Request<Body>| {
                    let st = st.clone();
                    async move { answer(st, req).await }
                });
                axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = stop_rx.await;
                    })
                    .await
                    .expect("serve");
            });
        });
        let addr = addr_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("server started");
        Loopback {
            addr,
            state,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Queues answers for `path` (without query), used in order.
    pub fn script(&self, path: &str, replies: impl IntoIterator<Item = Reply>) {
        self.state
            .script
            .lock()
            .unwrap()
            .entry(path.to_string())
            .or_default()
            .extend(replies);
    }

    /// Lets one held answer go (or the next one, if none is held yet);
    /// each call releases one.
    pub fn release(&self) {
        self.state.release.add_permits(1);
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().unwrap().clone()
    }

    /// Requests to `path` (without query).
    pub fn requests_to(&self, path: &str) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.path.split('?').next() == Some(path))
            .collect()
    }
}

impl Drop for Loopback {
    fn drop(&mut self) {
        // Held answers must not keep the graceful shutdown waiting.
        self.state.release.close();
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn answer(st: Arc<State>, req: Request<Body>) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let bytes: Bytes = axum::body::to_bytes(body, 16 * 1024 * 1024)
        .await
        .unwrap_or_default();
    let raw_body = String::from_utf8_lossy(&bytes).into_owned();
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let path_only = parts.uri.path().to_string();
    st.requests.lock().unwrap().push(Recorded {
        at: Instant::now(),
        method: parts.method.to_string(),
        path,
        headers: parts
            .headers
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_ascii_lowercase(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: serde_json::from_str(&raw_body).unwrap_or(Value::Null),
        raw_body,
    });
    let reply = st
        .script
        .lock()
        .unwrap()
        .get_mut(&path_only)
        .and_then(VecDeque::pop_front)
        .unwrap_or_else(|| Reply::new(200, serde_json::json!({"ok": true})));
    if reply.hold {
        // Closed (the server is stopping): answer at once.
        if let Ok(permit) = st.release.acquire().await {
            permit.forget();
        }
    }
    let mut resp = Response::builder()
        .status(StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header("content-type", "application/json");
    for (n, v) in &reply.headers {
        resp = resp.header(n.as_str(), v.as_str());
    }
    resp.body(Body::from(reply.body.to_string()))
        .unwrap_or_else(|_| Response::new(Body::from("bad scripted reply")))
}

/// Polls `f` every 20 ms until it gives `Some`, or panics after `timeout`
/// with `what` and the last state `show` describes.
pub async fn eventually<T>(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> Option<T>,
    show: impl Fn() -> String,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() >= deadline {
            panic!(
                "timed out after {timeout:?} waiting for {what}; state: {}",
                show()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A port on 127.0.0.1 where nothing listens (bound, then closed).
pub fn refused_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

//! The real daemon without Claude Code (for the control-plane tests): a
//! private store and state dir, a free port, its log in a file; plus
//! plain HTTP helpers (ureq for ordinary calls, raw sockets where a test
//! needs exact control of the request: Host headers, Unix sockets, the
//! event stream).

use super::{Env, wait_for};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

pub const T: Duration = Duration::from_secs(60);

pub struct Daemon {
    child: Option<Child>,
    pub log: PathBuf,
    /// `http://127.0.0.1:PORT`
    pub url: String,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- daemon log ---\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The daemon's state dir in an [`Env`] (the XDG default under it).
pub fn state_dir(env: &Env) -> PathBuf {
    env.path("state/claude-failover")
}

impl Daemon {
    /// Starts `run` on 127.0.0.1:0 with `extra` arguments and waits until it
    /// serves (its endpoint record names its pid).
    pub fn start(env: &Env, extra: &[&str]) -> Daemon {
        Daemon::start_with(env, extra, |_| {})
    }

    /// [`Daemon::start`], with the command prepared by `prepare` first.
    pub fn start_with(
        env: &Env,
        extra: &[&str],
        prepare: impl FnOnce(&mut std::process::Command),
    ) -> Daemon {
        let log = env.path(&format!("daemon-{}.log", uuid::Uuid::new_v4().simple()));
        let mut args = vec!["run", "--listen", "127.0.0.1:0", "--log-level", "debug"];
        args.extend_from_slice(extra);
        let mut cmd = env.cmd(&args);
        prepare(&mut cmd);
        let child = cmd
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let pid = child.id();
        let mut d = Daemon {
            child: Some(child),
            log,
            url: String::new(),
        };
        let record = state_dir(env).join("api.json");
        d.url = wait_for("the daemon to serve", T, || {
            let v: serde_json::Value =
                serde_json::from_slice(&std::fs::read(&record).ok()?).ok()?;
            (v["pid"] == pid).then(|| v["url"].as_str().unwrap().to_string())
        });
        d
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn addr(&self) -> String {
        self.url.trim_start_matches("http://").to_string()
    }

    /// SIGTERM, and wait (bounded) for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let exited = wait_for("the daemon to exit after SIGTERM", T, || {
                c.try_wait().unwrap()
            });
            assert!(exited.success(), "{exited}");
        }
    }
}

/// The token file of an [`Env`]'s daemon (the default place).
pub fn token(env: &Env) -> String {
    std::fs::read_to_string(state_dir(env).join("api-token"))
        .unwrap()
        .trim()
        .to_string()
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

/// A request; returns status and body.
pub fn call(method: &str, url: &str, token: Option<&str>, body: Option<&str>) -> (u16, String) {
    let a = agent();
    let auth = token.map(|t| format!("Bearer {t}"));
    let resp = match method {
        "GET" => {
            let mut r = a.get(url);
            if let Some(h) = &auth {
                r = r.header("authorization", h);
            }
            r.call()
        }
        "POST" | "PUT" | "PATCH" => {
            let mut r = match method {
                "POST" => a.post(url),
                "PUT" => a.put(url),
                _ => a.patch(url),
            }
            .header("content-type", "application/json");
            if let Some(h) = &auth {
                r = r.header("authorization", h);
            }
            r.send(body.unwrap_or(""))
        }
        m => panic!("method {m}"),
    };
    let mut resp = resp.unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let code = resp.status().as_u16();
    (code, resp.body_mut().read_to_string().unwrap_or_default())
}

pub fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// Sends `request` as it is over `stream` (HTTP/1.0 or `Connection:
/// close`) and returns the status and body.
pub fn raw(mut stream: impl Read + Write, request: &str) -> (u16, String) {
    stream.write_all(request.as_bytes()).unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {text:?}"));
    let body = text.split_once("\r\n\r\n").map(|x| x.1).unwrap_or_default();
    (code, body.to_string())
}

pub fn raw_tcp(addr: &str, request: &str) -> (u16, String) {
    let s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    raw(s, request)
}

pub fn raw_unix(path: &Path, request: &str) -> (u16, String) {
    let s = std::os::unix::net::UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    raw(s, request)
}

/// A server-sent event stream, read over HTTP/1.0 (no chunking).
pub struct Sse {
    reader: BufReader<std::net::TcpStream>,
    pending: Vec<u8>,
    /// The server closed the stream.
    pub ended: bool,
    /// Events read but not yet asked for (the stream's two sources, object
    /// changes and recorded events, are not ordered with each other).
    backlog: Vec<SseEvent>,
}

/// One server-sent event.
#[derive(Debug, Clone)]
pub struct SseEvent {
    pub event: String,
    pub data: String,
}

impl Sse {
    /// Opens `path` and waits for the stream's opening `: watching`.
    pub fn open(addr: &str, path: &str, token: &str) -> Sse {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        write!(
            s,
            "GET {path} HTTP/1.0\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nAccept: text/event-stream\r\n\r\n"
        )
        .unwrap();
        let mut sse = Sse {
            reader: BufReader::new(s),
            pending: Vec::new(),
            ended: false,
            backlog: Vec::new(),
        };
        let status = sse.line(Instant::now() + T).expect("a status line");
        assert!(status.contains(" 200 "), "{status}");
        let deadline = Instant::now() + T;
        loop {
            let l = sse.line(deadline).expect("the stream's opening");
            if l == ": watching" {
                return sse;
            }
        }
    }

    fn line(&mut self, deadline: Instant) -> Option<String> {
        // Bytes, not a String: a read timing out mid-character keeps them.
        loop {
            match self.reader.read_until(b'\n', &mut self.pending) {
                Ok(0) => {
                    self.ended = true;
                    return None;
                }
                Ok(_) if self.pending.ends_with(b"\n") => {
                    let line = String::from_utf8_lossy(&self.pending)
                        .trim_end_matches(['\r', '\n'])
                        .to_string();
                    self.pending.clear();
                    return Some(line);
                }
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    if Instant::now() >= deadline {
                        return None;
                    }
                }
                Err(e) => panic!("event stream: {e}"),
            }
        }
    }

    /// The next event, or None at the deadline or the end of the stream.
    pub fn next(&mut self, deadline: Instant) -> Option<SseEvent> {
        let (mut event, mut data) = (String::new(), String::new());
        loop {
            let l = self.line(deadline)?;
            if l.is_empty() {
                if !data.is_empty() {
                    return Some(SseEvent { event, data });
                }
                continue;
            }
            if let Some(v) = l.strip_prefix("event: ") {
                event = v.to_string();
            } else if let Some(v) = l.strip_prefix("data: ") {
                data.push_str(v);
            }
        }
    }

    /// The first event, read before or from now on, for which `pred`
    /// holds; the others stay for later calls.
    pub fn until(&mut self, what: &str, pred: impl Fn(&SseEvent) -> bool) -> SseEvent {
        if let Some(i) = self.backlog.iter().position(&pred) {
            return self.backlog.remove(i);
        }
        let deadline = Instant::now() + T;
        loop {
            match self.next(deadline) {
                Some(e) if pred(&e) => return e,
                Some(e) => self.backlog.push(e),
                None if self.ended => {
                    panic!("the stream ended before {what}; saw {:#?}", self.backlog)
                }
                None => panic!("no event {what} within {T:?}; saw {:#?}", self.backlog),
            }
        }
    }
}

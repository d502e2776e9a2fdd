//! A fake of Anthropic's OAuth hosts for the tests, offline.
//!
//! Claude Code sends its OAuth requests (the token refresh, the login's
//! code exchange, the profile) to fixed public hosts
//! (`platform.claude.com`, `api.anthropic.com`), not to
//! `ANTHROPIC_BASE_URL`. It honours `HTTPS_PROXY` and trusts the extra CA in
//! `NODE_EXTRA_CA_CERTS`, so a test points both here ([`FakeOAuth::env`]):
//! this is an HTTP proxy on 127.0.0.1 that answers each `CONNECT` itself,
//! with TLS under a test-only certificate for those hosts
//! (`tests/fixtures/tls`), and serves:
//!
//! - `POST /v1/oauth/token`: `refresh_token` and `authorization_code`
//!   grants. Refresh tokens rotate (each is good once, as the real server
//!   has them); a used or unknown one is refused (`400 invalid_grant`).
//!   Issued tokens live [`FakeOAuth::set_expires_in`] seconds.
//! - `GET /api/oauth/profile`, `/api/oauth/claude_cli/roles`,
//!   `/api/claude_code/policy_limits`: small JSON answers.
//!
//! It records every request. A CONNECT to any other host is refused.
//! For the login flow, [`FakeOAuth::browser`] is a `BROWSER` command that
//! writes the authorize URL to a file, and [`FakeOAuth::finish_login`]
//! plays the user's browser (the redirect to Claude Code's localhost
//! callback with a code).

use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

const HOSTS: &[&str] = &[
    "platform.claude.com",
    "api.anthropic.com",
    "claude.ai",
    "claude.com",
    "console.anthropic.com",
];

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tls")
        .join(name)
}

/// One request the fake received.
#[derive(Clone, Debug)]
pub struct OAuthRequest {
    pub host: String,
    pub method: String,
    pub path: String,
    pub body: Value,
    /// The status it was answered with.
    pub status: u16,
}

impl OAuthRequest {
    /// `grant_type` of a token request.
    pub fn grant(&self) -> Option<&str> {
        self.body.get("grant_type").and_then(Value::as_str)
    }

    /// `refresh_token` of a refresh request.
    pub fn refresh_token(&self) -> Option<&str> {
        self.body.get("refresh_token").and_then(Value::as_str)
    }
}

struct State {
    log: Vec<OAuthRequest>,
    /// Refresh tokens still good (each once).
    valid: Vec<String>,
    /// Tokens issued so far.
    issued: u64,
    expires_in: u64,
}

#[derive(Clone)]
struct Shared(Arc<Mutex<State>>);

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The running fake. Its threads end with the test process.
pub struct FakeOAuth {
    port: u16,
    shared: Shared,
}

impl FakeOAuth {
    /// Serves on 127.0.0.1; `refresh_tokens` are the ones it takes.
    pub fn start(refresh_tokens: &[&str]) -> FakeOAuth {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().unwrap().port();
        let shared = Shared(Arc::new(Mutex::new(State {
            log: Vec::new(),
            valid: refresh_tokens.iter().map(|s| s.to_string()).collect(),
            issued: 0,
            expires_in: 8 * 3600,
        })));
        let tls = Arc::new(server_config());
        let for_thread = shared.clone();
        std::thread::Builder::new()
            .name(format!("fake-oauth-{port}"))
            .spawn(move || {
                for conn in listener.incoming().flatten() {
                    let (shared, tls) = (for_thread.clone(), tls.clone());
                    std::thread::spawn(move || {
                        let _ = serve(conn, &shared, tls);
                    });
                }
            })
            .expect("spawn");
        FakeOAuth { port, shared }
    }

    /// The environment that sends Claude Code's OAuth requests here.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            (
                "HTTPS_PROXY".into(),
                format!("http://127.0.0.1:{}", self.port),
            ),
            ("NO_PROXY".into(), "127.0.0.1,localhost".into()),
            (
                "NODE_EXTRA_CA_CERTS".into(),
                fixture("ca.pem").to_string_lossy().into_owned(),
            ),
        ]
    }

    /// Lifetime of the tokens issued from now on, seconds.
    pub fn set_expires_in(&self, secs: u64) {
        self.shared.lock().expires_in = secs;
    }

    pub fn requests(&self) -> Vec<OAuthRequest> {
        self.shared.lock().log.clone()
    }

    /// The token requests (refresh and code exchange).
    pub fn token_requests(&self) -> Vec<OAuthRequest> {
        self.requests()
            .into_iter()
            .filter(|r| r.path == "/v1/oauth/token")
            .collect()
    }

    /// Access tokens issued so far, oldest first.
    pub fn issued_access_tokens(&self) -> Vec<String> {
        (1..=self.shared.lock().issued).map(access_token).collect()
    }

    /// A `BROWSER` command for Claude Code's login: it writes the URL it is
    /// asked to open to `dir/browser-url`. Returns (command, that file).
    pub fn browser(dir: &Path) -> (PathBuf, PathBuf) {
        let url_file = dir.join("browser-url");
        let script = dir.join("browser.sh");
        super::executable(
            &script,
            &format!(
                "#!/bin/sh\nprintf '%s\\n' \"$1\" > {}.tmp && mv {0}.tmp {0}\n",
                url_file.display()
            ),
        );
        (script, url_file)
    }

    /// Plays the user's browser after a successful sign-in: redirects to the
    /// `redirect_uri` of `authorize_url` with a code and its `state`.
    /// Returns the callback's HTTP status.
    pub fn finish_login(authorize_url: &str) -> u16 {
        let param = |name: &str| {
            authorize_url
                .split(['?', '&'])
                .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
                .map(percent_decode)
                .unwrap_or_else(|| panic!("no {name} in {authorize_url}"))
        };
        let redirect = param("redirect_uri");
        let state = param("state");
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .max_redirects(0)
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .into();
        agent
            .get(format!(
                "{redirect}?code=fake-authorization-code&state={state}"
            ))
            .call()
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    }
}

fn access_token(n: u64) -> String {
    format!("sk-ant-oat01-fake-access-{n}")
}

fn refresh_token(n: u64) -> String {
    format!("sk-ant-ort01-fake-refresh-{n}")
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(v);
            i += 3;
        } else {
            out.push(if b[i] == b'+' { b' ' } else { b[i] });
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn server_config() -> rustls::ServerConfig {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(fixture("leaf.pem"))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(fixture("leaf.key")).unwrap();
    rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap()
}

/// One proxied connection: `CONNECT host:443`, then TLS, then one request.
fn serve(
    mut tcp: TcpStream,
    shared: &Shared,
    tls: Arc<rustls::ServerConfig>,
) -> std::io::Result<()> {
    tcp.set_read_timeout(Some(Duration::from_secs(30)))?;
    let head = read_head(&mut tcp)?;
    let first = head.lines().next().unwrap_or_default().to_string();
    let host = first
        .strip_prefix("CONNECT ")
        .and_then(|r| r.split(':').next())
        .unwrap_or_default()
        .to_string();
    if !HOSTS.contains(&host.as_str()) {
        tcp.write_all(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")?;
        return Ok(());
    }
    tcp.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")?;
    let conn = rustls::ServerConnection::new(tls).map_err(std::io::Error::other)?;
    let mut stream = rustls::StreamOwned::new(conn, tcp);
    let head = read_head(&mut stream)?;
    let mut lines = head.lines();
    let request_line = lines.next().unwrap_or_default().to_string();
    let mut parts = request_line.split_whitespace();
    let (method, path) = (
        parts.next().unwrap_or_default().to_string(),
        parts.next().unwrap_or_default().to_string(),
    );
    let length: usize = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    stream.read_exact(&mut body)?;
    let body: Value = serde_json::from_slice(&body).unwrap_or_else(|_| {
        // A form body: `a=b&c=d`.
        let text = String::from_utf8_lossy(&body).into_owned();
        Value::Object(
            text.split('&')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_string(), json!(percent_decode(v))))
                .collect(),
        )
    });
    let path_only = path.split('?').next().unwrap_or_default().to_string();
    let (status, answer) = answer(shared, &method, &path_only, &body);
    shared.lock().log.push(OAuthRequest {
        host,
        method,
        path: path_only,
        body,
        status,
    });
    let text = answer.to_string();
    write!(
        stream,
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
        text.len()
    )?;
    stream.flush()?;
    stream.conn.send_close_notify();
    let _ = stream.flush();
    Ok(())
}

fn answer(shared: &Shared, method: &str, path: &str, body: &Value) -> (u16, Value) {
    match (method, path) {
        ("POST", "/v1/oauth/token") => {
            let mut st = shared.lock();
            let grant = body.get("grant_type").and_then(Value::as_str);
            let ok = match grant {
                Some("refresh_token") => {
                    let token = body.get("refresh_token").and_then(Value::as_str);
                    match st.valid.iter().position(|v| Some(v.as_str()) == token) {
                        Some(i) => {
                            st.valid.remove(i);
                            true
                        }
                        None => false,
                    }
                }
                Some("authorization_code") => body.get("code").is_some(),
                _ => false,
            };
            if !ok {
                return (
                    400,
                    json!({"error": "invalid_grant", "error_description": "Refresh token not found or invalid"}),
                );
            }
            st.issued += 1;
            let n = st.issued;
            st.valid.push(refresh_token(n));
            (
                200,
                json!({
                    "token_type": "Bearer",
                    "access_token": access_token(n),
                    "refresh_token": refresh_token(n),
                    "expires_in": st.expires_in,
                    "scope": "user:inference",
                }),
            )
        }
        ("GET", "/api/oauth/profile") => (
            200,
            json!({
                "account": {"uuid": "00000000-0000-4000-8000-00000000000a",
                            "email": "fake@example.invalid", "full_name": "Fake"},
                "organization": {"uuid": "00000000-0000-4000-8000-00000000000b",
                                 "organization_type": "claude_max", "billing_type": "stripe_subscription"}
            }),
        ),
        ("GET", "/api/oauth/claude_cli/roles") => (
            200,
            json!({"organization_role": "admin", "workspace_role": null, "organization_name": "Fake"}),
        ),
        ("GET", "/api/claude_code/policy_limits") => (200, json!({})),
        _ => (404, json!({"error": "not_found"})),
    }
}

/// Reads up to the blank line that ends an HTTP head.
fn read_head(r: &mut impl Read) -> std::io::Result<String> {
    let mut reader = BufReader::new(ByteReader(r));
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" || line == "\n" {
            break;
        }
        head.push_str(&line);
    }
    Ok(head)
}

/// Reads one byte at a time, so nothing past the head is buffered away.
struct ByteReader<'a, R: Read>(&'a mut R);

impl<R: Read> Read for ByteReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        self.0.read(&mut buf[..1])
    }
}

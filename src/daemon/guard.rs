//! What stands before the control plane's routes:
//!
//! - [`require_token_for_api`]: every path under `/api/` asks for the bearer
//!   token before any routing, so an unknown path there is a 401 like the
//!   others, never a 404 that tells what exists;
//! - [`loopback_host_only`]: on a loopback listener, a request is answered
//!   only when its one `Host` (and the authority of an absolute URI) is a
//!   loopback name, parsed strictly: no userinfo, a numeric port, nothing
//!   after it (DNS rebinding);
//! - [`IdleTimeout`]: a listener whose connections close after
//!   [`IDLE_TIMEOUT`] without a byte read or written (an event stream's
//!   keep-alive comments keep it open).

use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A connection with nothing read or written for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

fn refusal(code: StatusCode, reason: &str, message: String) -> Response {
    let body = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Status",
        "status": "Failure",
        "reason": reason,
        "message": message,
        "code": code.as_u16(),
    });
    (code, axum::Json(body)).into_response()
}

/// Whether `path` is under the token-guarded API.
fn is_api_path(path: &str) -> bool {
    path == "/api" || path.starts_with("/api/")
}

/// Refuses every request under `/api` without the right bearer token,
/// before routing (see [`super::api::router`]).
pub async fn require_token_for_api(token: &str, req: Request, next: Next) -> Response {
    if !is_api_path(req.uri().path()) {
        return next.run(req).await;
    }
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::trim);
    match presented {
        Some(t) if crate::secret::token_matches(token, t) => next.run(req).await,
        _ => {
            // The path, never the header.
            tracing::debug!(path = %req.uri().path(), "API request without a valid token");
            let mut r = refusal(
                StatusCode::UNAUTHORIZED,
                "Unauthorized",
                "a valid bearer token is required (`claude-failover token` prints it)".into(),
            );
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"claude-failover\""),
            );
            r
        }
    }
}

/// For a loopback listener: answers only requests addressed to a loopback
/// name, so a page whose domain resolves to 127.0.0.1 (DNS rebinding)
/// cannot talk to the daemon from the user's browser.
pub async fn loopback_host_only(req: Request, next: Next) -> Response {
    match check_host(&req) {
        Ok(()) => next.run(req).await,
        Err(why) => refusal(
            StatusCode::FORBIDDEN,
            "Forbidden",
            format!("{why}; this server answers only 127.0.0.1, [::1] and localhost"),
        ),
    }
}

fn check_host(req: &Request) -> Result<(), String> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err("more than one Host header".into());
    }
    if let Some(h) = host {
        let text = h
            .to_str()
            .map_err(|_| "a Host that is not text".to_string())?;
        if !is_loopback_host(text) {
            return Err(format!("Host {text:?} is not a loopback name"));
        }
    }
    // An absolute-form request target names its host too.
    if let Some(a) = req.uri().authority()
        && !is_loopback_host(a.as_str())
    {
        return Err(format!(
            "the request's authority {:?} is not a loopback name",
            a.as_str()
        ));
    }
    Ok(())
}

/// `127.0.0.1:7817`, `localhost`, `[::1]:80` → true; `evil.example:7817`,
/// `127.0.0.1:7817@evil.example`, `user@localhost`, `localhost:x` → false.
/// The whole value must be `host[:port]`: a loopback name, then at most a
/// colon and 1-5 digits.
pub fn is_loopback_host(value: &str) -> bool {
    let (name, port) = if let Some(rest) = value.strip_prefix('[') {
        let Some((inner, after)) = rest.split_once(']') else {
            return false;
        };
        let port = match after {
            "" => None,
            p => match p.strip_prefix(':') {
                Some(p) => Some(p),
                None => return false,
            },
        };
        let Ok(ip) = inner.parse::<std::net::Ipv6Addr>() else {
            return false;
        };
        if !ip.is_loopback() {
            return false;
        }
        ("", port)
    } else {
        match value.split_once(':') {
            Some((n, p)) => (n, Some(p)),
            None => (value, None),
        }
    };
    if let Some(p) = port
        && (p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()))
    {
        return false;
    }
    if name.is_empty() {
        return value.starts_with('[');
    }
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::Ipv4Addr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// A listener whose connections close after `timeout` of silence.
pub struct IdleTimeout<L> {
    listener: L,
    timeout: Duration,
}

impl<L> IdleTimeout<L> {
    pub fn new(listener: L, timeout: Duration) -> Self {
        IdleTimeout { listener, timeout }
    }
}

impl<L: axum::serve::Listener> axum::serve::Listener for IdleTimeout<L> {
    type Io = IdleIo<L::Io>;
    type Addr = L::Addr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (io, addr) = self.listener.accept().await;
        (IdleIo::new(io, self.timeout), addr)
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.listener.local_addr()
    }
}

/// A connection that fails with `TimedOut` once idle for its timeout (the
/// server then closes it).
pub struct IdleIo<T> {
    inner: T,
    timeout: Duration,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl<T> IdleIo<T> {
    fn new(inner: T, timeout: Duration) -> Self {
        IdleIo {
            inner,
            timeout,
            deadline: Box::pin(tokio::time::sleep(timeout)),
        }
    }

    fn active(&mut self) {
        let next = tokio::time::Instant::now() + self.timeout;
        self.deadline.as_mut().reset(next);
    }

    /// Pending I/O: an error once the deadline has passed.
    fn idle(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Error> {
        match self.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "connection idle",
            )),
            Poll::Pending => Poll::Pending,
        }
    }
}

use std::future::Future;

impl<T: AsyncRead + Unpin> AsyncRead for IdleIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    self.active();
                }
                Poll::Ready(r)
            }
            Poll::Pending => self.idle(cx).map(Err),
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for IdleIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, buf) {
            Poll::Ready(r) => {
                if matches!(r, Ok(n) if n > 0) {
                    self.active();
                }
                Poll::Ready(r)
            }
            Poll::Pending => self.idle(cx).map(Err),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write_vectored(cx, bufs) {
            Poll::Ready(r) => {
                if matches!(r, Ok(n) if n > 0) {
                    self.active();
                }
                Poll::Ready(r)
            }
            Poll::Pending => self.idle(cx).map(Err),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_parsed_strictly() {
        for ok in [
            "127.0.0.1:7817",
            "127.0.0.1",
            "localhost",
            "LOCALHOST:80",
            "[::1]:7817",
            "[::1]",
            "127.1.2.3:9",
        ] {
            assert!(is_loopback_host(ok), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:7817",
            "10.0.0.1:7817",
            "localhost.evil.example",
            "[::2]:1",
            "",
            "127.0.0.1:7817@evil.example",
            "user@localhost",
            "localhost@evil.example:80",
            "localhost:",
            "localhost:80:81",
            "localhost:http",
            "127.0.0.1:123456",
            "[::1]x",
            "[::1]:80@evil",
            "localhost, evil.example",
            "127.0.0.1 evil",
        ] {
            assert!(!is_loopback_host(bad), "{bad}");
        }
    }

    #[test]
    fn api_paths() {
        assert!(is_api_path("/api"));
        assert!(is_api_path("/api/v1/nope"));
        assert!(is_api_path("/api/"));
        assert!(!is_api_path("/apiary"));
        assert!(!is_api_path("/healthz"));
    }
}

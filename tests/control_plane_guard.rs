//! What stands before the control plane's routes: the token is asked for
//! on every path under /api/ (known or not), the Host is one loopback
//! name parsed strictly, and idle connections are closed.

mod common;
use claude_failover::daemon::guard::IdleTimeout;
use common::daemon::{Daemon, raw_tcp, token};
use common::*;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

#[test]
fn every_api_path_asks_for_the_token_before_routing() {
    let env = Env::new();
    let d = Daemon::start(&env, &[]);
    let addr = d.addr();
    let tok = token(&env);
    for path in [
        "/api",
        "/api/",
        "/api/v1/nope",
        "/api/v2/namespaces/default/tasks",
        "/api/v1/namespaces/default/tasks/x/y/z",
        "/api/v1/namespaces/default/tasks/../../../etc",
    ] {
        let (code, body) = raw_tcp(
            &addr,
            &format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n"),
        );
        assert_eq!(code, 401, "{path}: {body}");
        assert!(
            body.contains("\"reason\":\"Unauthorized\""),
            "{path}: {body}"
        );
        // With the token, an unknown path is a 404 Status.
        let (code, body) = raw_tcp(
            &addr,
            &format!(
                "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {tok}\r\n\r\n"
            ),
        );
        assert!(code == 404 || code == 400, "{path}: {code} {body}");
    }
    let (code, _) = raw_tcp(
        &addr,
        "POST /api/v1/unknown HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(code, 401);
    // Open paths stay open; an unknown one elsewhere is a plain 404.
    assert_eq!(
        raw_tcp(&addr, "GET /healthz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").0,
        200
    );
    assert_eq!(
        raw_tcp(&addr, "GET /nope HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").0,
        404
    );
}

#[test]
fn the_host_is_one_loopback_name_parsed_strictly() {
    let env = Env::new();
    let d = Daemon::start(&env, &[]);
    let addr = d.addr();
    let port = addr.rsplit(':').next().unwrap().to_string();
    let get = |headers: &str| {
        raw_tcp(
            &addr,
            &format!("GET /healthz HTTP/1.1\r\n{headers}Connection: close\r\n\r\n"),
        )
    };
    assert_eq!(get(&format!("Host: 127.0.0.1:{port}\r\n")).0, 200);
    assert_eq!(get(&format!("Host: localhost:{port}\r\n")).0, 200);
    for bad in [
        format!("Host: 127.0.0.1:{port}@evil.example\r\n"),
        format!("Host: user@127.0.0.1:{port}\r\n"),
        format!("Host: 127.0.0.1:{port}\r\nHost: evil.example\r\n"),
        format!("Host: evil.example\r\nHost: 127.0.0.1:{port}\r\n"),
        format!("Host: localhost:{port}:1\r\n"),
        "Host: evil.example\r\n".to_string(),
    ] {
        let (code, body) = get(&bad);
        assert!(code == 403 || code == 400, "{bad:?}: {code} {body}");
    }
    // An absolute-form target naming another host.
    let (code, _) = raw_tcp(
        &addr,
        &format!(
            "GET http://evil.example/healthz HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
        ),
    );
    assert!(code == 403 || code == 400, "{code}");
}

/// The idle timeout on a real server (as the daemon's listeners use it).
#[test]
fn idle_connections_are_closed_and_busy_ones_kept() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().route("/", axum::routing::get(|| async { "ok" }));
    let idle = Duration::from_secs(1);
    rt.spawn(async move {
        axum::serve(IdleTimeout::new(listener, idle), app)
            .await
            .unwrap();
    });

    // Silent: closed by the server (EOF) soon after the timeout.
    let mut silent = std::net::TcpStream::connect(addr).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let t = Instant::now();
    let mut buf = [0u8; 64];
    let n = silent.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "the idle connection got data");
    assert!(
        t.elapsed() >= idle,
        "closed before the timeout: {:?}",
        t.elapsed()
    );

    // Half a request, then silence: closed too.
    let mut slow = std::net::TcpStream::connect(addr).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: 127.").unwrap();
    assert_eq!(slow.read(&mut buf).unwrap_or(0), 0);

    // A connection in use past the timeout stays open: requests on one
    // keep-alive connection, each well within it.
    let mut busy = std::net::TcpStream::connect(addr).unwrap();
    busy.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let start = Instant::now();
    for _ in 0..15 {
        busy.write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            .unwrap();
        let mut got = Vec::new();
        while !got.ends_with(b"ok") {
            let n = busy.read(&mut buf).unwrap();
            assert!(n > 0, "closed while in use");
            got.extend_from_slice(&buf[..n]);
        }
        // The client's pace: a request every tenth of the timeout.
        std::thread::sleep(idle / 10);
    }
    // Fifteen requests a tenth of the timeout apart: in use past it.
    assert!(start.elapsed() > idle, "{:?}", start.elapsed());
}

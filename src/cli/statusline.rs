//! `statusline --url URL`: the statusLine command Claude Code runs. It
//! forwards its JSON input to the daemon and prints the line the daemon
//! answers. It never fails loudly: with the daemon away it prints a short
//! fallback, so Claude Code's footer never shows an error.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// POSTs `body` to an `http://host:port/path` URL; returns the response body.
pub fn post(url: &str, body: &[u8], timeout: Duration) -> std::io::Result<String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| std::io::Error::other("only http:// URLs"))?;
    let (host, path) = rest
        .split_once('/')
        .map(|(h, p)| (h, format!("/{p}")))
        .unwrap_or((rest, "/".into()));
    let addr = std::net::ToSocketAddrs::to_socket_addrs(host)?
        .next()
        .ok_or_else(|| std::io::Error::other("no address"))?;
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    s.write_all(body)?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)?;
    let text = String::from_utf8_lossy(&resp);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    if !head.starts_with("HTTP/1.1 200") {
        return Err(std::io::Error::other(
            head.lines().next().unwrap_or_default().to_string(),
        ));
    }
    Ok(body.to_string())
}

pub fn statusline(url: &str) -> std::process::ExitCode {
    let mut input = Vec::new();
    let _ = std::io::stdin().take(1 << 20).read_to_end(&mut input);
    match post(url, &input, Duration::from_millis(800)) {
        Ok(line) => println!("{line}"),
        Err(_) => println!("claude-failover · daemon unreachable"),
    }
    std::process::ExitCode::SUCCESS
}

/// `hook --url URL`: a command hook (for the events Claude Code runs no
/// HTTP hook for). Posts its input to the daemon, prints nothing, and never
/// fails the hook: a failing hook must not disturb the agent.
pub fn hook(url: &str) -> std::process::ExitCode {
    let mut input = Vec::new();
    let _ = std::io::stdin().take(1 << 20).read_to_end(&mut input);
    let _ = post(url, &input, Duration::from_secs(2));
    std::process::ExitCode::SUCCESS
}

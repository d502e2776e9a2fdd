//! Running a hook or statusLine command (`sh -c`, JSON on stdin) with a
//! deadline, and a minimal HTTP POST for `type: http` hooks. Nothing here
//! can block the agent for longer than its timeout or make it fail.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Most stdout kept from a command.
const OUTPUT_KEPT: usize = 64 * 1024;

/// Runs `sh -c command` with `input` on stdin; returns its stdout (None
/// when it could not start or ran out of time, then it is killed).
pub fn run(
    command: &str,
    input: Vec<u8>,
    env: &[(String, String)],
    cwd: &Path,
    timeout: Duration,
) -> Option<Vec<u8>> {
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(command)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .current_dir(cwd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    if let Some(mut stdin) = child.stdin.take() {
        if input.len() <= 16 * 1024 {
            // Fits in the pipe: cannot block.
            let _ = stdin.write_all(&input);
        } else {
            let _ = std::thread::Builder::new()
                .stack_size(64 * 1024)
                .spawn(move || {
                    let _ = stdin.write_all(&input);
                });
        }
    }
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    let mut timed_out = false;
    if let Some(mut stdout) = child.stdout.take() {
        let mut buf = [0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let mut p = libc::pollfd {
                fd: stdout.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let r = unsafe { libc::poll(&mut p, 1, left.as_millis().max(1) as i32) };
            if r < 0 {
                if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                break;
            }
            if r == 0 {
                timed_out = true;
                break;
            }
            match stdout.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if out.len() < OUTPUT_KEPT {
                        out.extend_from_slice(&buf[..n]);
                    }
                }
            }
        }
    }
    // stdout closed: the command is ending; give it what is left.
    let mut pause = Duration::from_millis(2);
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if !timed_out && Instant::now() < deadline => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(50));
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
    Some(out)
}

/// POSTs `body` as JSON to an `http://` URL and waits (up to `timeout`
/// in all) for the answer, which is ignored.
pub fn post(
    url: &str,
    headers: &[(String, String)],
    body: &[u8],
    timeout: Duration,
) -> std::io::Result<()> {
    let deadline = Instant::now() + timeout;
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| std::io::Error::other("only http:// URLs"))?;
    let (host, path) = match rest.split_once('/') {
        Some((h, p)) => (h, format!("/{p}")),
        None => (rest, "/".to_string()),
    };
    let addr_text = if host.contains(':') {
        host.to_string()
    } else {
        format!("{host}:80")
    };
    let addr = std::net::ToSocketAddrs::to_socket_addrs(&addr_text)?
        .next()
        .ok_or_else(|| std::io::Error::other("no address"))?;
    let left = || {
        let l = deadline.saturating_duration_since(Instant::now());
        if l.is_zero() {
            Err(std::io::Error::from(std::io::ErrorKind::TimedOut))
        } else {
            Ok(l)
        }
    };
    let mut s = std::net::TcpStream::connect_timeout(&addr, left()?)?;
    s.set_write_timeout(Some(left()?))?;
    let mut head = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nAccept: application/json, text/plain, */*\r\nContent-Type: application/json\r\nUser-Agent: claude-failover-sim-agent\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        // No header injection through a configured value.
        if !k.contains(['\r', '\n', ':']) && !v.contains(['\r', '\n']) {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    let mut buf = [0u8; 1024];
    loop {
        s.set_read_timeout(Some(left()?))?;
        if s.read(&mut buf)? == 0 {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_get_stdin_and_are_killed_at_their_deadline() {
        let out = run(
            "tr a-z A-Z; echo \"$X\"",
            b"json in".to_vec(),
            &[("X".into(), "env".into())],
            Path::new("/"),
            Duration::from_secs(5),
        );
        assert_eq!(out.as_deref(), Some(&b"JSON INenv\n"[..]));
        let t = Instant::now();
        assert!(
            run(
                "sleep 5",
                vec![],
                &[],
                Path::new("/"),
                Duration::from_millis(200)
            )
            .is_none()
        );
        assert!(t.elapsed() < Duration::from_secs(2));
        // a big input to a command that never reads it does not block
        let t = Instant::now();
        let out = run(
            "echo done",
            vec![b'x'; 1 << 20],
            &[],
            Path::new("/"),
            Duration::from_secs(5),
        );
        assert_eq!(out.as_deref(), Some(&b"done\n"[..]));
        assert!(t.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn post_sends_json_and_survives_a_dead_port() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut c, _) = l.accept().unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 1024];
            while !String::from_utf8_lossy(&got).contains("{\"a\":1}") {
                let n = c.read(&mut buf).unwrap();
                got.extend_from_slice(&buf[..n]);
            }
            c.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
                .unwrap();
            String::from_utf8(got).unwrap()
        });
        post(
            &format!("http://127.0.0.1:{port}/hook"),
            &[("X-Probe".into(), "v".into())],
            br#"{"a":1}"#,
            Duration::from_secs(5),
        )
        .unwrap();
        let req = server.join().unwrap();
        assert!(req.starts_with("POST /hook HTTP/1.1\r\n"));
        assert!(req.contains("X-Probe: v\r\n"));
        // nothing listens there any more
        assert!(
            post(
                &format!("http://127.0.0.1:{port}/hook"),
                &[],
                b"{}",
                Duration::from_millis(500)
            )
            .is_err()
        );
    }
}

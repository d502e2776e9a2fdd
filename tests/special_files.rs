//! FIFOs and other special files among manifests: refused at once by
//! `apply` (named with `-f` or inside a directory) and by the sync, which
//! applies the rest and still stops on SIGTERM.

mod common;
use common::daemon::{Daemon, T, call};
use common::*;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

fn mkfifo(p: &Path) {
    let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
    assert_eq!(
        unsafe { libc::mkfifo(c.as_ptr(), 0o644) },
        0,
        "mkfifo {}",
        p.display()
    );
}

/// Runs the binary; fails the test (and kills it) if it hangs.
fn run_bounded(env: &Env, args: &[&str]) -> Out {
    let mut child = env
        .cmd(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let limit = Duration::from_secs(20);
    let start = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("{args:?} still runs after {limit:?}: it blocks on a special file");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Out::from(child.wait_with_output().unwrap())
}

fn account(name: &str) -> String {
    format!("{HEAD}kind: Account\nmetadata: {{name: {name}}}\nspec: {{configDir: /tmp/{name}}}\n")
}

#[test]
fn apply_refuses_a_fifo_at_once() {
    let env = Env::new();
    let fifo = env.path("pipe.yaml");
    mkfifo(&fifo);
    let o = run_bounded(&env, &["apply", "-f", fifo.to_str().unwrap()]);
    assert_eq!(o.code, 1, "{}", o.stderr);
    assert!(
        o.stderr
            .contains("pipe.yaml:1:1: (file): is a FIFO, not a regular file"),
        "{}",
        o.stderr
    );
    // Inside a directory, beside a good file: the whole apply stops, at once.
    let dir = env.path("dir");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("a.yaml"), account("a")).unwrap();
    mkfifo(&dir.join("b.yaml"));
    let o = run_bounded(&env, &["apply", "-f", dir.to_str().unwrap()]);
    assert_eq!(o.code, 1, "{}", o.stderr);
    assert!(
        o.stderr.contains("b.yaml:1:1: (file): is a FIFO"),
        "{}",
        o.stderr
    );
    assert!(o.stdout.is_empty(), "{}", o.stdout);
    // Devices neither.
    let o = run_bounded(&env, &["apply", "-f", "/dev/zero"]);
    assert!(o.stderr.contains("is a character device"), "{}", o.stderr);
}

#[test]
fn the_sync_skips_a_fifo_applies_the_rest_and_stops_on_sigterm() {
    let env = Env::new();
    let dir = env.path("manifests");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("a.yaml"), account("first")).unwrap();
    mkfifo(&dir.join("m-pipe.yaml"));
    // Sorted after the FIFO: it must be applied too.
    std::fs::write(dir.join("z.yaml"), account("last")).unwrap();
    let mut d = Daemon::start(&env, &["--manifests", dir.to_str().unwrap()]);
    // The first pass done: /readyz's manifests check; the FIFO leaves the
    // sync stalled (a file needs a fix), so /readyz is 503 and names it.
    let (code, body) = wait_for("the sync's first pass (/readyz)", T, || {
        let (code, body) = call("GET", &format!("{}/readyz", d.url), None, None);
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        let checks = v["checks"].as_array()?;
        let passed = checks
            .iter()
            .any(|c| c["name"] == "manifests" && c["ok"] == true);
        let stalled = checks
            .iter()
            .any(|c| c["name"] == "manifestsync/default/manifests" && c["ok"] == false);
        (passed && stalled).then_some((code, body))
    });
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("m-pipe.yaml"), "{body}");
    let names = env.ok(&["get", "accounts", "-o", "name"]);
    assert_eq!(
        names,
        "account.claude-failover.io/first\naccount.claude-failover.io/last\n"
    );
    assert!(
        d.log().contains("m-pipe.yaml:1:1: (file): is a FIFO"),
        "{}",
        d.log()
    );
    // SIGTERM ends it (asserted within a bound by stop()).
    d.stop();
}

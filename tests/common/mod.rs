//! Helpers shared by the integration tests: run the real binary against a
//! private store, wait on conditions with deadlines, snapshot a directory.

#![allow(dead_code)]

pub mod chart;
pub mod daemon;
pub mod etcd;
pub mod fake_api;
pub mod fake_oauth;
pub mod nodes;
pub mod pool;
pub mod prom;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_claude-failover");

/// A private environment: its own store, config and XDG directories.
pub struct Env {
    pub dir: tempfile::TempDir,
    /// The store the commands use (`--store`): None is `store()`, the
    /// env's own directory; else a URL (an etcd store).
    pub store_url: Option<String>,
}

/// A daemon started in the env without a `tmuxSocket` runs its agents on
/// the tmux server of its default state dir: it goes with the env (else it
/// and its agents outlive the test).
impl Drop for Env {
    fn drop(&mut self) {
        let socket = self.dir.path().join("state/claude-failover/tmux.sock");
        if socket.exists() {
            let _ = std::process::Command::new("tmux")
                .arg("-S")
                .arg(&socket)
                .arg("kill-server")
                .env_remove("TMUX")
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

impl Env {
    pub fn new() -> Env {
        Env {
            dir: tempfile::tempdir().expect("tempdir"),
            store_url: None,
        }
    }

    /// An env whose commands use the store at `url` (`etcd://...`).
    pub fn on_store(url: &str) -> Env {
        let mut env = Env::new();
        env.store_url = Some(url.to_string());
        env
    }

    pub fn store(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// A command for the binary with this environment's store and no
    /// inherited config.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        match &self.store_url {
            Some(url) => c.arg("--store").arg(url),
            None => c.arg("--store").arg(self.store()),
        };
        c.args(args);
        c.env_remove("CLAUDE_FAILOVER_STORE")
            .env_remove("CLAUDE_FAILOVER_CONFIG")
            .env_remove("RUST_LOG")
            .env("HOME", self.dir.path())
            .env("XDG_CONFIG_HOME", self.dir.path().join("config"))
            .env("XDG_STATE_HOME", self.dir.path().join("state"));
        c
    }

    pub fn run(&self, args: &[&str]) -> Out {
        Out::from(
            self.cmd(args)
                .stdin(Stdio::null())
                .output()
                .expect("spawn claude-failover"),
        )
    }

    pub fn run_stdin(&self, args: &[&str], input: &str) -> Out {
        use std::io::Write;
        let mut child = self
            .cmd(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        Out::from(child.wait_with_output().unwrap())
    }

    /// Runs and insists on success.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert_eq!(
            o.code, 0,
            "claude-failover {args:?} failed:\n{}\n{}",
            o.stdout, o.stderr
        );
        o.stdout
    }

    pub fn write(&self, rel: &str, text: &str) -> PathBuf {
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
        p
    }

    /// An executable script at `rel` (see [`executable`]).
    pub fn script(&self, rel: &str, text: &str) -> PathBuf {
        let p = self.path(rel);
        executable(&p, text);
        p
    }
}

/// Writes an executable file with `text` from a child process, so that no
/// descriptor open for writing on it is ever in this (multi-threaded) test
/// process: a process forked by another test while the file was being
/// written would hold one until it execs, and running the script in that
/// moment fails with ETXTBSY (a tmux pane then dies at once, status 1,
/// having printed nothing).
#[allow(dead_code)]
pub fn executable(path: &Path, text: &str) {
    use std::io::Write;
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut child = Command::new("sh")
        .args(["-c", "cat > \"$1\" && chmod 755 \"$1\"", "sh"])
        .arg(path)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("sh");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success(), "cannot write {path:?}");
}

pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Out {
    fn from(o: Output) -> Out {
        Out {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

/// A port free on 127.0.0.1 now (the OS picks it).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until `f` returns Some, checking every 20 ms, failing after `limit`.
pub fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Every file under `dir` with its bytes (for byte-identical checks).
pub fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    fn walk(d: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        let Ok(rd) = std::fs::read_dir(d) else { return };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else {
                out.insert(p.clone(), std::fs::read(&p).unwrap());
            }
        }
    }
    walk(dir, &mut out);
    out
}

pub fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests/examples")
}

pub const HEAD: &str = "apiVersion: claude-failover.io/v1alpha1\n";

pub fn session_yaml(name: &str, extra_spec: &str) -> String {
    format!(
        "{HEAD}kind: Session\nmetadata:\n  name: {name}\nspec:\n  workdir: /tmp/{name}\n{extra_spec}"
    )
}

/// Kills a test's private tmux server (its socket) when the test ends.
pub struct TmuxServer(pub PathBuf);

impl Drop for TmuxServer {
    fn drop(&mut self) {
        let _ = std::process::Command::new("tmux")
            .arg("-S")
            .arg(&self.0)
            .arg("kill-server")
            .env_remove("TMUX")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// A logged-in Account `sim` (its config dir `accounts/sim` in the env)
/// and a Session `name` of the simulated Claude Code working in `workdir`
/// (made), as one manifest written to `pool.yaml`: its path.
pub fn sim_pool_manifest(env: &Env, name: &str, workdir: &Path) -> PathBuf {
    env.write(
        "accounts/sim/.credentials.json",
        r#"{"claudeAiOauth": {"accessToken": "t", "refreshToken": "r"}}"#,
    );
    std::fs::create_dir_all(workdir).unwrap();
    env.write(
        "pool.yaml",
        &format!(
            "{HEAD}kind: Account\nmetadata:\n  name: sim\nspec:\n  configDir: {}\n---\n{HEAD}kind: Session\nmetadata:\n  name: {name}\nspec:\n  workdir: {}\n  agent:\n    command: {BIN}\n    args: [\"sim-agent\"]\n    env:\n      SIM_AGENT_STARTUP_MS: \"50\"\n",
            env.path("accounts/sim").display(),
            workdir.display()
        ),
    )
}

/// `/usr/bin/NAME`, or NAME on the PATH. Only called by tests that the
/// build marks as needing it (`cfg(kubectl)`, `cfg(zsh)`, ...): they are
/// reported as ignored where it is missing.
pub fn program(name: &str) -> PathBuf {
    let fixed = Path::new("/usr/bin").join(name);
    if fixed.exists() {
        return fixed;
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join(name))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("{name} is not installed (see .ci/run)"))
}

/// Runs `git -C dir ARGS` with a fixed identity; its trimmed output. Fails
/// the test with git's message when git fails.
#[allow(dead_code)]
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.com")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.com")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

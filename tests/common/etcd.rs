//! A real 3-member etcd cluster for the tests (Debian's `etcd-server`,
//! etcd 3.4 at /usr/bin/etcd; `.ci/run` installs it): members on free
//! 127.0.0.1 ports, data in a temp dir, stopped by pid on drop. Tests that
//! use it are marked `cfg_attr(not(etcd), ignore)`: reported as ignored
//! where etcd is missing (CI requires it: `CLAUDE_FAILOVER_REQUIRE_TOOLS`).

use super::wait_for;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// How long a cluster may take to elect a leader and answer.
const READY_WITHIN: Duration = Duration::from_secs(60);

/// One member of a test cluster.
pub struct Member {
    pub name: String,
    pub client: String,
    peer: String,
    child: Option<Child>,
}

/// A running cluster, stopped (by pid) when dropped.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub members: Vec<Member>,
    token: String,
}

/// `/usr/bin/etcd`, or etcd on the PATH.
pub fn etcd_bin() -> PathBuf {
    let fixed = Path::new("/usr/bin/etcd");
    if fixed.exists() {
        return fixed.to_path_buf();
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join("etcd"))
        .find(|p| p.exists())
        .expect("etcd is not installed (apt-get install etcd-server)")
}

/// Two distinct free ports (the OS picks; held together so they differ).
fn two_ports() -> (u16, u16) {
    let a = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let b = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    (
        a.local_addr().unwrap().port(),
        b.local_addr().unwrap().port(),
    )
}

impl Cluster {
    /// Starts `n` members and waits until the cluster answers.
    pub fn start(n: usize) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let members: Vec<Member> = (0..n)
            .map(|i| {
                let (c, p) = two_ports();
                Member {
                    name: format!("m{i}"),
                    client: format!("127.0.0.1:{c}"),
                    peer: format!("127.0.0.1:{p}"),
                    child: None,
                }
            })
            .collect();
        let token = format!("cf-test-{}", std::process::id());
        let mut c = Cluster {
            dir,
            members,
            token,
        };
        for i in 0..n {
            c.start_member(i, "new");
        }
        c.wait_ready();
        c
    }

    fn initial_cluster(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("{}=http://{}", m.name, m.peer))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn start_member(&mut self, i: usize, state: &str) {
        let initial = self.initial_cluster();
        let data = self.dir.path().join(&self.members[i].name);
        let log = std::fs::File::create(
            self.dir
                .path()
                .join(format!("{}.log", self.members[i].name)),
        )
        .unwrap();
        let m = &mut self.members[i];
        let child = Command::new(etcd_bin())
            .args(["--name", &m.name])
            .arg("--data-dir")
            .arg(&data)
            .args(["--listen-client-urls", &format!("http://{}", m.client)])
            .args(["--advertise-client-urls", &format!("http://{}", m.client)])
            .args(["--listen-peer-urls", &format!("http://{}", m.peer)])
            .args([
                "--initial-advertise-peer-urls",
                &format!("http://{}", m.peer),
            ])
            .args(["--initial-cluster", &initial])
            .args(["--initial-cluster-state", state])
            .args(["--initial-cluster-token", &self.token])
            // Quick elections on loopback; small and quiet.
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            // As etcd 3.5 does by default: a member coming back (or one
            // that missed heartbeats on a busy machine) asks before it
            // starts an election, so it does not depose a working leader
            // (which stalled requests for seconds after a restart).
            .arg("--pre-vote")
            .args(["--quota-backend-bytes", "268435456"])
            // An apply of many manifests is one transaction (see
            // docs/store-backends.md, "Running on etcd").
            .args(["--max-txn-ops", "20000", "--max-request-bytes", "33554432"])
            .args(["--log-level", "warn", "--logger", "zap"])
            .env("ETCD_UNSUPPORTED_ARCH", std::env::consts::ARCH)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start etcd");
        m.child = Some(child);
    }

    /// The client endpoints, `HOST:PORT,...`.
    pub fn endpoints(&self) -> String {
        self.members
            .iter()
            .map(|m| m.client.clone())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// A store URL under `prefix` (each test its own: several share nothing).
    pub fn url(&self, prefix: &str) -> String {
        format!("etcd://{}/{prefix}", self.endpoints())
    }

    /// Waits until a write through the cluster succeeds (a leader elected,
    /// a quorum answering).
    pub fn wait_ready(&self) {
        let eps = self.endpoints();
        wait_for("the etcd cluster to answer", READY_WITHIN, || {
            let out = Command::new("etcdctl")
                .env("ETCDCTL_API", "3")
                .args(["--endpoints", &eps, "--command-timeout=2s"])
                .args(["put", "/cf-test-ready", "1"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .ok()?;
            out.success().then_some(())
        });
    }

    /// Stops member `i` at once (SIGKILL, by pid).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts member `i` again on its data dir.
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        self.start_member(i, "existing");
    }

    /// Compacts the history up to the current revision (what a watch
    /// resuming from before it can no longer have).
    pub fn compact(&self) {
        let eps = self.endpoints();
        let out = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &eps, "-w", "json", "get", "/cf-test-ready"])
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let rev = v["header"]["revision"].as_i64().unwrap();
        let st = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args([
                "--endpoints",
                &eps,
                "compact",
                &rev.to_string(),
                "--physical",
            ])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(st.success(), "etcdctl compact");
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}

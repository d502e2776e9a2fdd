//! Nodes in tests: a node's daemon started by hand, the Nodes as stored,
//! their readiness (docs/distributed.md).

use super::{Env, wait_for};
use claude_failover::api::{NODE_TTL, SYSTEM_NAMESPACE};
use claude_failover::store::Store;
use serde_json::Value;
use std::process::{Child, Stdio};
use std::time::Duration;

/// How long the leader may take to see a heartbeat expire: the TTL, its
/// check period, and room for a loaded machine.
pub fn expiry() -> Duration {
    NODE_TTL + Duration::from_secs(30)
}

pub fn store_of(env: &Env) -> Store {
    let at = match &env.store_url {
        Some(u) => u.clone(),
        None => env.store().display().to_string(),
    };
    Store::open_location(&at, &Default::default()).unwrap()
}

/// The Node as stored (read through the library: a poll spawns nothing).
pub fn node(env: &Env, name: &str) -> Option<Value> {
    let key = claude_failover::api::ObjectKey::new(
        claude_failover::api::Kind::Node,
        SYSTEM_NAMESPACE,
        name,
    );
    store_of(env).get(&key).ok().flatten()
}

pub fn ready(v: &Value) -> Option<&str> {
    v.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready")?
        .get("status")?
        .as_str()
}

pub fn wait_ready(env: &Env, name: &str, want: &str, within: Duration) -> Value {
    wait_for(&format!("node {name} Ready={want}"), within, || {
        node(env, name).filter(|v| ready(v) == Some(want))
    })
}

/// A daemon of a node, started by hand (a standby does not serve, so
/// [`Daemon::start`] cannot wait for it), killed by pid if the test ends
/// first.
pub struct NodeDaemon {
    pub child: Child,
    pub log: std::path::PathBuf,
}

impl NodeDaemon {
    pub fn start(env: &Env, name: &str) -> NodeDaemon {
        let log = env.path(&format!("daemon-{name}.log"));
        let child = env
            .cmd(&[
                "run",
                "--listen",
                "127.0.0.1:0",
                "--log-level",
                "info",
                "--node",
                name,
            ])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        NodeDaemon { child, log }
    }

    pub fn signal(&self, sig: i32) {
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for NodeDaemon {
    fn drop(&mut self) {
        self.signal(libc::SIGCONT);
        if std::thread::panicking() {
            eprintln!("--- {} ---\n{}", self.log.display(), self.log());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn leading(env: &Env, name: &str) -> bool {
    node(env, name).is_some_and(|v| v["status"]["leading"] == true)
}

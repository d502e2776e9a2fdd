//! Nodes (docs/distributed.md): every daemon registers its Node and keeps
//! its heartbeat ([`register`], [`heartbeat`]); the leader keeps each
//! Node's `Ready` condition from the age of its heartbeat
//! ([`lifecycle`], decided by [`plan::ready`]).

pub mod place;
pub mod plan;
pub mod schedule;

use super::Caches;
use crate::api::{
    API_VERSION, Account, NODE_HEARTBEAT_EVERY, NODE_TTL, Node, NodeCapacity, NodeStatus,
    ObjectKey, SYSTEM_NAMESPACE,
};
use crate::store::{Durability, Store, StoreError};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use std::time::Instant;

/// How often the leader looks at the Nodes' heartbeats.
pub const NODE_CHECK_EVERY: Duration = Duration::from_secs(2);
/// The source named in the Nodes' events.
const SOURCE: &str = "node-lifecycle";

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(
        "node {node} is already run by the daemon {daemon} (its heartbeat is fresh): give this daemon another name with `run --node NAME` (config node.name)"
    )]
    Taken { node: String, daemon: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// This daemon as a node: what its heartbeat says.
pub struct NodeState {
    pub name: String,
    /// The daemon's identity (`host:pid:nonce`).
    pub identity: String,
    pub capacity: Option<u32>,
    /// Whether this daemon holds the leader lease.
    pub leading: Arc<AtomicBool>,
    /// The caches, once this daemon runs the controllers: the Sessions it
    /// runs are counted there.
    pub caches: OnceLock<Caches>,
    /// When its heartbeat was last written (see [`crate::controller::Shared::node_fresh`]).
    pub beaten: Arc<Mutex<Option<Instant>>>,
}

impl NodeState {
    pub fn new(name: &str, identity: &str, capacity: Option<u32>) -> Self {
        NodeState {
            name: name.to_string(),
            identity: identity.to_string(),
            capacity,
            leading: Arc::new(AtomicBool::new(false)),
            caches: OnceLock::new(),
            beaten: Arc::default(),
        }
    }

    /// The Sessions placed on this node.
    fn sessions(&self) -> u32 {
        self.caches.get().map_or(0, |c| {
            let mine = c
                .sessions
                .all()
                .iter()
                .filter(|s| s.node() == Some(self.name.as_str()))
                .count();
            u32::try_from(mine).unwrap_or(u32::MAX)
        })
    }
}

/// Registers this daemon's Node (created when missing) with a first
/// heartbeat. Called once this daemon holds its state dir's node lock (a
/// daemon beside it, of the same state dir, waits for that lock first and
/// is gone by then), so another live daemon with a fresh heartbeat under
/// this name runs from another state dir: refused.
pub fn register(store: &Store, me: &NodeState) -> Result<(), NodeError> {
    let api = store.api::<Node>(Some(SYSTEM_NAMESPACE));
    if let Some(n) = api.get(&me.name)? {
        let st = n.status.unwrap_or_default();
        let fresh = crate::api::heartbeat_fresh(
            st.heartbeat_time.as_ref(),
            k8s_openapi::jiff::Timestamp::now(),
            NODE_TTL,
        );
        if let Some(other) = st.daemon.filter(|d| *d != me.identity)
            && fresh
            && daemon_alive(&other)
        {
            return Err(NodeError::Taken {
                node: me.name.clone(),
                daemon: other,
            });
        }
    } else {
        store.apply(
            &serde_json::json!({
                "apiVersion": API_VERSION,
                "kind": "Node",
                "metadata": {"name": me.name, "namespace": SYSTEM_NAMESPACE},
                "spec": {},
            }),
            false,
        )?;
    }
    beat(store, me)?;
    Ok(())
}

/// Whether the daemon `identity` (`host:pid:nonce`) may still run: on
/// this host, its process runs (a killed daemon its parent has not reaped
/// yet is gone); on another, it may.
fn daemon_alive(identity: &str) -> bool {
    let mut parts = identity.split(':');
    let (Some(host), Some(pid)) = (parts.next(), parts.next()) else {
        return true;
    };
    let here = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    if host != here {
        return true;
    }
    pid.parse::<u32>()
        .is_ok_and(|p| !crate::agent::driver::process_gone(p))
}

/// Writes this node's heartbeat and what it knows of itself (its own
/// status fields, not the leader's condition).
fn beat(store: &Store, me: &NodeState) -> Result<(), StoreError> {
    let started = Instant::now();
    let status = NodeStatus {
        heartbeat_time: Some(crate::api::micro_now()),
        daemon: Some(me.identity.clone()),
        version: Some(env!("CARGO_PKG_VERSION").to_string()),
        leading: me.leading.load(Ordering::SeqCst),
        sessions: me.sessions(),
        capacity: me.capacity.map(|n| NodeCapacity { sessions: Some(n) }),
        config_dirs: local_config_dirs(store)?,
        conditions: Vec::new(),
    };
    store
        .api::<Node>(Some(SYSTEM_NAMESPACE))
        .patch_status_fields(
            &me.name,
            &status,
            &NodeStatus::DAEMON_FIELDS,
            Durability::Soon,
        )?;
    *me.beaten.lock().expect("heartbeat lock") = Some(started);
    Ok(())
}

/// `NAMESPACE/ACCOUNT` -> config dir, for each Account whose config dir
/// exists on this machine.
fn local_config_dirs(store: &Store) -> Result<BTreeMap<String, String>, StoreError> {
    let mut out = BTreeMap::new();
    for a in store.api::<Account>(None).list()? {
        let dir = crate::fsutil::expand_home(&a.spec.config_dir);
        if dir.is_dir() {
            let key = ObjectKey::of(&a);
            out.insert(
                format!("{}/{}", key.namespace, key.name),
                dir.display().to_string(),
            );
        }
    }
    Ok(out)
}

/// Keeps this node's heartbeat, every [`NODE_HEARTBEAT_EVERY`], for as
/// long as the daemon runs (leading or not). A Node deleted by hand is
/// registered again.
pub async fn heartbeat(store: Store, me: Arc<NodeState>) {
    let mut tick = tokio::time::interval(NODE_HEARTBEAT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let (store, me) = (store.clone(), me.clone());
        let r = tokio::task::spawn_blocking(move || match beat(&store, &me) {
            Err(StoreError::NotFound(_)) => register(&store, &me),
            r => r.map_err(NodeError::from),
        })
        .await;
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot write this node's heartbeat"),
            Err(e) => tracing::warn!(error = %e, "the heartbeat's write did not finish"),
        }
    }
}

/// The leader's node lifecycle: every [`NODE_CHECK_EVERY`], each Node's
/// `Ready` condition from the age of its heartbeat, with an event when it
/// flips.
pub async fn lifecycle(store: Store) {
    let mut tick = tokio::time::interval(NODE_CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let store = store.clone();
        match tokio::task::spawn_blocking(move || check(&store, NODE_TTL)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot check the nodes' heartbeats"),
            Err(e) => tracing::warn!(error = %e, "the nodes' check did not finish"),
        }
    }
}

/// One pass of the node lifecycle.
pub fn check(store: &Store, ttl: Duration) -> Result<(), StoreError> {
    let api = store.api::<Node>(Some(SYSTEM_NAMESPACE));
    let now = k8s_openapi::jiff::Timestamp::now();
    for n in api.list()? {
        let Some(v) = plan::ready(&n, now, ttl) else {
            continue;
        };
        let name = n.metadata.name.clone().unwrap_or_default();
        let status = NodeStatus {
            conditions: v.conditions.clone(),
            ..Default::default()
        };
        match api.patch_status_fields(&name, &status, &NodeStatus::LEADER_FIELDS, Durability::Now) {
            Ok(_) => {}
            Err(StoreError::NotFound(_)) => continue,
            Err(e) => return Err(e),
        }
        if v.flipped {
            let key = ObjectKey::new(crate::api::Kind::Node, SYSTEM_NAMESPACE, &name);
            let msg = v
                .conditions
                .iter()
                .find(|c| c.type_ == crate::api::NODE_READY)
                .map(|c| c.message.as_str())
                .unwrap_or_default();
            let reason = if v.ready {
                tracing::info!(node = %name, "node Ready");
                "NodeReady"
            } else {
                tracing::warn!(node = %name, "node NotReady: {msg}");
                "NodeNotReady"
            };
            store.record_event(&key, !v.ready, reason, msg, SOURCE)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::daemon_alive;

    #[test]
    fn a_daemon_of_this_host_counts_while_its_process_runs() {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
        let id = |pid: u32| format!("{}:{pid}:nonce", host.trim());
        assert!(daemon_alive(&id(std::process::id())));
        assert!(daemon_alive("another-host:1:nonce"), "may run there");
        // Killed and not reaped yet (a zombie): gone.
        let mut child = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap();
        let pid = child.id();
        child.kill().unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !crate::agent::driver::process_gone(pid) {
            assert!(std::time::Instant::now() < deadline, "sleep never died");
            std::thread::yield_now();
        }
        assert!(!daemon_alive(&id(pid)));
        child.wait().unwrap();
        assert!(!daemon_alive(&id(pid)));
    }
}

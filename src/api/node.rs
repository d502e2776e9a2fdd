//! `Node`: one daemon sharing the store, on one machine, with its
//! heartbeat. Written only by the daemons: the node's own daemon writes
//! what it knows of itself (heartbeat, capacity, config dirs, sessions),
//! the leader writes the `Ready` condition. Lives in
//! [`super::SYSTEM_NAMESPACE`] (docs/distributed.md).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, MicroTime};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// The condition the leader keeps on every Node.
pub const NODE_READY: &str = "Ready";
/// `Ready=True`: the heartbeat is younger than [`NODE_TTL`].
pub const HEARTBEAT_FRESH: &str = "HeartbeatFresh";
/// `Ready=False`: the heartbeat is older than [`NODE_TTL`].
pub const HEARTBEAT_EXPIRED: &str = "HeartbeatExpired";
/// How often a daemon renews its Node's heartbeat.
pub const NODE_HEARTBEAT_EVERY: Duration = Duration::from_secs(3);
/// A Node whose heartbeat is older than this is NotReady.
pub const NODE_TTL: Duration = Duration::from_secs(15);

// kube-derive takes one `printcolumn(...)` per column; clippy mistakes them for duplicates.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "claude-failover.io",
    version = "v1alpha1",
    kind = "Node",
    namespaced,
    status = "NodeStatus",
    derive = "PartialEq",
    derive = "Default",
    shortname = "cfnode",
    category = "claude-failover",
    doc = "A daemon sharing the store, on one machine: its heartbeat, capacity and accounts' config dirs",
    printcolumn(
        name = "Status",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "Sessions", type_ = "integer", json_path = ".status.sessions"),
    printcolumn(
        name = "Heartbeat",
        type_ = "date",
        json_path = ".status.heartbeatTime"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeSpec {}

/// What a Node reports. Each field has one writer: the node's daemon
/// ([`NodeStatus::DAEMON_FIELDS`]) or the leader (`conditions`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeStatus {
    /// When the node's daemon last said it is alive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_time: Option<MicroTime>,
    /// The daemon's identity (`host:pid:nonce`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daemon: Option<String>,
    /// The daemon's version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Whether this node's daemon holds the leader lease.
    #[serde(default)]
    pub leading: bool,
    /// How many Sessions this node's daemon runs.
    #[serde(default)]
    pub sessions: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<NodeCapacity>,
    /// `NAMESPACE/ACCOUNT` -> the account's config dir on this machine,
    /// for each Account whose config dir exists here.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub config_dirs: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

impl NodeStatus {
    /// The fields the node's own daemon writes.
    pub const DAEMON_FIELDS: [&'static str; 7] = [
        "heartbeatTime",
        "daemon",
        "version",
        "leading",
        "sessions",
        "capacity",
        "configDirs",
    ];
    /// The field the leader writes.
    pub const LEADER_FIELDS: [&'static str; 1] = ["conditions"];
}

/// What a node can take.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeCapacity {
    /// The most Sessions this node runs (None: no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sessions: Option<u32>,
}

impl Node {
    /// Whether the leader last found this node Ready.
    pub fn ready(&self) -> bool {
        self.status.as_ref().is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == NODE_READY && c.status == "True")
        })
    }

    /// Whether the leader found its heartbeat expired (`Ready=False`); a
    /// Node just registered, not yet checked, is not.
    pub fn lost(&self) -> bool {
        self.status.as_ref().is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == NODE_READY && c.status == "False")
        })
    }
}

/// A node name from a host name: lowercased, each character that may
/// not appear in a DNS-1123 label replaced with `-`, trimmed of `-` at
/// both ends and cut to 63 characters (`localhost` if nothing is left).
pub fn node_name_from_host(host: &str) -> String {
    let mapped: String = host
        .trim()
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    let name = mapped.trim_matches('-');
    if name.is_empty() {
        "localhost".into()
    } else {
        name.to_string()
    }
}

/// Whether a heartbeat at `heartbeat` is fresh at `now` under `ttl` (a
/// heartbeat from the future, a clock ahead, counts as fresh).
pub fn heartbeat_fresh(
    heartbeat: Option<&MicroTime>,
    now: k8s_openapi::jiff::Timestamp,
    ttl: Duration,
) -> bool {
    let Some(hb) = heartbeat else {
        return false;
    };
    let age = now.duration_since(hb.0);
    age.is_negative() || age.unsigned_abs() < ttl
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::{SignedDuration, Timestamp};

    #[test]
    fn node_names_from_host_names_are_dns_labels() {
        for (host, want) in [
            ("node-a", "node-a"),
            ("Build.Example.COM\n", "build-example-com"),
            ("under_score", "under-score"),
            ("-x-", "x"),
            ("", "localhost"),
            ("...", "localhost"),
        ] {
            let got = node_name_from_host(host);
            assert_eq!(got, want, "{host:?}");
            crate::manifest::validate::dns1123_label(&got).unwrap();
        }
        assert_eq!(node_name_from_host(&"a".repeat(100)).len(), 63);
    }

    #[test]
    fn a_heartbeat_is_fresh_within_the_ttl_only() {
        let now = Timestamp::from_second(1_000_000).unwrap();
        let at = |secs: i64| MicroTime(now - SignedDuration::from_secs(secs));
        let ttl = Duration::from_secs(15);
        assert!(heartbeat_fresh(Some(&at(0)), now, ttl));
        assert!(heartbeat_fresh(Some(&at(14)), now, ttl));
        assert!(!heartbeat_fresh(Some(&at(15)), now, ttl));
        assert!(!heartbeat_fresh(Some(&at(600)), now, ttl));
        assert!(heartbeat_fresh(Some(&at(-5)), now, ttl), "clock ahead");
        assert!(!heartbeat_fresh(None, now, ttl), "never beat");
    }
}

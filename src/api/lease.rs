//! `Lease`: who holds a lock that the daemons share through the store,
//! shaped like Kubernetes' `coordination.k8s.io/v1` Lease (plus the fencing
//! epoch). Written only by the daemon, always with a resourceVersion
//! precondition; lives in [`super::SYSTEM_NAMESPACE`].

use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime as Time;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The leader lease's name.
pub const LEADER_LEASE: &str = "leader";
/// The swap lease's name.
pub const SWAP_LEASE: &str = "swap";

// kube-derive takes one `printcolumn(...)` per column; clippy mistakes them for duplicates.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "claude-failover.io",
    version = "v1alpha1",
    kind = "Lease",
    namespaced,
    status = "LeaseStatus",
    derive = "PartialEq",
    derive = "Default",
    shortname = "cflease",
    category = "claude-failover",
    doc = "A lock shared by the daemons of one store (the leader, the swap) and its fencing epoch",
    printcolumn(name = "Holder", type_ = "string", json_path = ".spec.holderIdentity"),
    printcolumn(name = "Epoch", type_ = "integer", json_path = ".spec.epoch"),
    printcolumn(name = "Renewed", type_ = "date", json_path = ".spec.renewTime"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LeaseSpec {
    /// The daemon holding the lease (`host:pid`); None: free.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder_identity: Option<String>,
    /// Grows by one at every acquisition: the fencing token.
    #[serde(default)]
    pub epoch: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acquire_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renew_time: Option<Time>,
    /// How long the holder may go without renewing (a leader lease).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_duration_seconds: Option<u32>,
    /// Times the lease changed hands.
    #[serde(default)]
    pub lease_transitions: u32,
}

/// Unused (a Lease says everything in its spec); present so every kind
/// has a status subresource.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LeaseStatus {}

//! The resource model: `Account`, `Session` and `Task` under
//! `claude-failover.io/v1alpha1`.
//!
//! The types are shaped exactly like Kubernetes objects (they derive kube's
//! `CustomResource`), so the same structs serve the local store and, later, a
//! cluster as CRDs. Everything that is generic over the three kinds goes
//! through [`Kind`] (static facts about a kind) and [`Object`] (the trait the
//! store and the printers use).

mod account;
mod condition;
pub mod keys;
mod lease;
mod manifestsync;
mod node;
mod session;
mod sessionpool;
mod swap;
mod task;

pub use account::{
    Account, AccountFailover, AccountLimit, AccountPhase, AccountPolicy, AccountSpec,
    AccountStatus, AccountUsage, FailoverNote, RequestAnswer, SetAside, Thresholds, UsageWindow,
    set_aside_now,
};
pub use condition::{Conditions, set_condition};
pub use lease::{LEADER_LEASE, Lease, LeaseSpec, LeaseStatus, SWAP_LEASE};
pub use manifestsync::{
    MANIFESTS_SYNC, ManifestSync, ManifestSyncSpec, ManifestSyncStatus, PassResult, SYNC_READY,
    SYNC_RECONCILING, SYNC_STALLED, SyncFailure, set_sync_conditions,
};
pub use node::{
    HEARTBEAT_EXPIRED, HEARTBEAT_FRESH, NODE_HEARTBEAT_EVERY, NODE_READY, NODE_TTL, Node,
    NodeCapacity, NodeSpec, NodeStatus, heartbeat_fresh, node_name_from_host,
};
pub use session::{
    AgentFailure, AgentSpec, AgentUsage, EnvValue, GitWorkspace, Interruption, LaunchStatus,
    PermissionMode, RefusedPlacement, SWAP_DONE, SWAP_ROLLED_BACK, SWAPPING, Session, SessionPhase,
    SessionSpec, SessionStatus, StandbyMode, StandbySpec, StandbyStatus, SwapStatus, WorkspaceSpec,
};
pub use sessionpool::{
    Autoscale, FORCE_SCALE_DOWN, POOL_FINALIZER, POOL_LABEL, PlacementStrategy, PoolPlacement,
    RESTARTED_AT, RollingUpdate, SessionPool, SessionPoolSpec, SessionPoolStatus, SessionTemplate,
    TEMPLATE_HASH_LABEL, TemplateMeta, UpdateStrategy, UpdateStrategyType, member_name, ordinal_of,
    percent as sessionpool_percent, template_hash,
};
pub use swap::{Swap, SwapPhase, SwapSessionState, SwapSpec, SwapState, SwapStep, swap_name};
pub use task::{
    CANCELLED, COMPLETE, FAILED, Task, TaskPhase, TaskPriority, TaskSpec, TaskStatus,
    TaskWorkspace, job_condition, set_job_conditions,
};

pub use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    Condition, LabelSelector, LabelSelectorRequirement, MicroTime, ObjectMeta, Time,
};
use kube::CustomResourceExt;
use serde::{Serialize, de::DeserializeOwned};

/// The API group of every kind.
pub const GROUP: &str = "claude-failover.io";
/// The one served version.
pub const VERSION: &str = "v1alpha1";
/// `GROUP/VERSION`, the `apiVersion` of every object.
pub const API_VERSION: &str = "claude-failover.io/v1alpha1";
/// The namespace used when a manifest or the command line names none.
pub const DEFAULT_NAMESPACE: &str = "default";
/// Where the daemon keeps its own objects (the leases).
pub const SYSTEM_NAMESPACE: &str = "claude-failover-system";

/// The three kinds, in the order they are applied (accounts before the
/// sessions that name them, sessions before the tasks that target them).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, serde::Deserialize,
)]
pub enum Kind {
    Account,
    Session,
    Task,
    Swap,
    Lease,
    ManifestSync,
    SessionPool,
    Node,
}

/// Static facts about a kind: one row per kind.
struct KindInfo {
    name: &'static str,
    plural: &'static str,
    singular: &'static str,
    short_name: &'static str,
    /// Written by people (manifests, `apply`); else only by the daemon.
    declared: bool,
}

const KINDS: [(Kind, KindInfo); 8] = [
    (
        Kind::Account,
        KindInfo {
            name: "Account",
            plural: "accounts",
            singular: "account",
            short_name: "acct",
            declared: true,
        },
    ),
    (
        Kind::Session,
        KindInfo {
            name: "Session",
            plural: "sessions",
            singular: "session",
            short_name: "sess",
            declared: true,
        },
    ),
    (
        Kind::Task,
        KindInfo {
            name: "Task",
            plural: "tasks",
            singular: "task",
            short_name: "tsk",
            declared: true,
        },
    ),
    (
        Kind::Swap,
        KindInfo {
            name: "Swap",
            plural: "swaps",
            singular: "swap",
            short_name: "swp",
            declared: false,
        },
    ),
    (
        Kind::Lease,
        KindInfo {
            name: "Lease",
            plural: "leases",
            singular: "lease",
            short_name: "cflease",
            declared: false,
        },
    ),
    (
        Kind::ManifestSync,
        KindInfo {
            name: "ManifestSync",
            plural: "manifestsyncs",
            singular: "manifestsync",
            short_name: "msync",
            declared: false,
        },
    ),
    (
        Kind::SessionPool,
        KindInfo {
            name: "SessionPool",
            plural: "sessionpools",
            singular: "sessionpool",
            short_name: "spool",
            declared: true,
        },
    ),
    (
        Kind::Node,
        KindInfo {
            name: "Node",
            plural: "nodes",
            singular: "node",
            short_name: "cfnode",
            declared: false,
        },
    ),
];

impl Kind {
    /// Every kind, in the order `get all` shows them.
    pub const ALL: [Kind; 8] = [
        Kind::Account,
        Kind::SessionPool,
        Kind::Session,
        Kind::Task,
        Kind::Swap,
        Kind::Lease,
        Kind::ManifestSync,
        Kind::Node,
    ];
    /// The kinds people declare in manifests.
    pub const DECLARED: [Kind; 4] = [Kind::Account, Kind::SessionPool, Kind::Session, Kind::Task];

    fn info(self) -> &'static KindInfo {
        &KINDS
            .iter()
            .find(|(k, _)| *k == self)
            .expect("every kind has a row")
            .1
    }

    pub fn name(self) -> &'static str {
        self.info().name
    }

    pub fn plural(self) -> &'static str {
        self.info().plural
    }

    pub fn singular(self) -> &'static str {
        self.info().singular
    }

    pub fn short_name(self) -> &'static str {
        self.info().short_name
    }

    /// Whether people declare objects of this kind (else only the daemon
    /// writes them: `apply` refuses them).
    pub fn declared(self) -> bool {
        self.info().declared
    }

    /// The one namespace objects of this kind live in, whatever namespace
    /// the command line names (Nodes, as a cluster-scoped kind), or None.
    pub fn home_namespace(self) -> Option<&'static str> {
        match self {
            Kind::Node => Some(SYSTEM_NAMESPACE),
            _ => None,
        }
    }

    pub fn qualified(self) -> String {
        format!("{}.{}", self.singular(), GROUP)
    }

    pub fn from_cli(s: &str) -> Option<Kind> {
        let lower = s.to_ascii_lowercase();
        let base = lower
            .strip_suffix(&format!(".{GROUP}"))
            .unwrap_or(lower.as_str());
        Kind::ALL
            .into_iter()
            .find(|k| base == k.singular() || base == k.plural() || base == k.short_name())
    }

    pub fn from_kind_field(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == s)
    }

    pub fn crd(
        self,
    ) -> k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition
    {
        match self {
            Kind::Account => Account::crd(),
            Kind::Session => Session::crd(),
            Kind::Task => Task::crd(),
            Kind::Swap => Swap::crd(),
            Kind::Lease => Lease::crd(),
            Kind::ManifestSync => ManifestSync::crd(),
            Kind::SessionPool => SessionPool::crd(),
            Kind::Node => Node::crd(),
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What the store, the printers and the controllers need of a typed object.
pub trait Object:
    kube::Resource<DynamicType = ()>
    + Serialize
    + DeserializeOwned
    + Clone
    + Send
    + Sync
    + std::fmt::Debug
    + 'static
{
    const KIND: Kind;
    type Status: Serialize + DeserializeOwned + Default + Clone + PartialEq + std::fmt::Debug;

    fn status(&self) -> Option<&Self::Status>;
    fn status_mut(&mut self) -> &mut Option<Self::Status>;
}

macro_rules! impl_object {
    ($ty:ty, $kind:expr, $status:ty) => {
        impl Object for $ty {
            const KIND: Kind = $kind;
            type Status = $status;
            fn status(&self) -> Option<&$status> {
                self.status.as_ref()
            }
            fn status_mut(&mut self) -> &mut Option<$status> {
                &mut self.status
            }
        }
    };
}
impl_object!(Account, Kind::Account, AccountStatus);
impl_object!(Session, Kind::Session, SessionStatus);
impl_object!(Task, Kind::Task, TaskStatus);
impl_object!(Swap, Kind::Swap, SwapState);
impl_object!(Lease, Kind::Lease, LeaseStatus);
impl_object!(ManifestSync, Kind::ManifestSync, ManifestSyncStatus);
impl_object!(SessionPool, Kind::SessionPool, SessionPoolStatus);
impl_object!(Node, Kind::Node, NodeStatus);

/// The current time as a Kubernetes `Time`.
pub fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

/// Now, to the microsecond (for what is compared with other precise times).
pub fn micro_now() -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::now())
}

/// A precise time from a system time.
pub fn micro(t: std::time::SystemTime) -> MicroTime {
    MicroTime(
        k8s_openapi::jiff::Timestamp::try_from(t)
            .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
    )
}

/// Identifies one object in the store.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, serde::Deserialize)]
pub struct ObjectKey {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn new(kind: Kind, namespace: &str, name: &str) -> Self {
        ObjectKey {
            kind,
            namespace: namespace.to_string(),
            name: name.to_string(),
        }
    }
}

impl ObjectKey {
    /// The key of a stored object (its kind, namespace and name).
    pub fn of<K: Object>(o: &K) -> ObjectKey {
        let m = o.meta();
        ObjectKey::new(
            K::KIND,
            m.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE),
            m.name.as_deref().unwrap_or_default(),
        )
    }
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

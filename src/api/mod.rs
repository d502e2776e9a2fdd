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
mod session;
mod task;

pub use account::{
    Account, AccountLimit, AccountPhase, AccountSpec, AccountStatus, AccountUsage, Thresholds,
    UsageWindow,
};
pub use condition::{Conditions, set_condition};
pub use session::{AgentSpec, Session, SessionPhase, SessionSpec, SessionStatus, SwapStatus};
pub use task::{
    CANCELLED, COMPLETE, FAILED, Task, TaskPhase, TaskPriority, TaskSpec, TaskStatus,
    job_condition, set_job_conditions,
};

pub use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    Condition, LabelSelector, LabelSelectorRequirement, ObjectMeta, Time,
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

/// The three kinds, in the order they are applied (accounts before the
/// sessions that name them, sessions before the tasks that target them).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, serde::Deserialize,
)]
pub enum Kind {
    Account,
    Session,
    Task,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Account, Kind::Session, Kind::Task];

    /// The `kind` field, e.g. `Session`.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Account => "Account",
            Kind::Session => "Session",
            Kind::Task => "Task",
        }
    }

    /// Lower-case plural, the directory name in the store and the CRD plural.
    pub fn plural(self) -> &'static str {
        match self {
            Kind::Account => "accounts",
            Kind::Session => "sessions",
            Kind::Task => "tasks",
        }
    }

    pub fn singular(self) -> &'static str {
        match self {
            Kind::Account => "account",
            Kind::Session => "session",
            Kind::Task => "task",
        }
    }

    pub fn short_name(self) -> &'static str {
        match self {
            Kind::Account => "acct",
            Kind::Session => "sess",
            Kind::Task => "tsk",
        }
    }

    /// `session.claude-failover.io`, as kubectl prints it.
    pub fn qualified(self) -> String {
        format!("{}.{}", self.singular(), GROUP)
    }

    /// Resolves what a user types on the command line: `session`,
    /// `sessions`, `sess`, `Session`, `sessions.claude-failover.io`, ...
    pub fn from_cli(s: &str) -> Option<Kind> {
        let lower = s.to_ascii_lowercase();
        let base = lower
            .strip_suffix(&format!(".{GROUP}"))
            .unwrap_or(lower.as_str());
        Kind::ALL
            .into_iter()
            .find(|k| base == k.singular() || base == k.plural() || base == k.short_name())
    }

    /// Resolves the `kind` field of a manifest (exact, case-sensitive).
    pub fn from_kind_field(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == s)
    }

    /// The CustomResourceDefinition of this kind.
    pub fn crd(
        self,
    ) -> k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition
    {
        match self {
            Kind::Account => Account::crd(),
            Kind::Session => Session::crd(),
            Kind::Task => Task::crd(),
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

/// The current time as a Kubernetes `Time`.
pub fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
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

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

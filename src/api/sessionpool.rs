//! `SessionPool`: N Sessions from one template, named `<pool>-0..N-1` like
//! a StatefulSet's pods, created and deleted by the pool controller (which
//! owns them through owner references). Its spec is written by people (and
//! `scale`), its status by the pool controller.

use super::session::SessionSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

// kube-derive takes one `printcolumn(...)` per column; clippy mistakes them for duplicates.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "claude-failover.io",
    version = "v1alpha1",
    kind = "SessionPool",
    namespaced,
    status = "SessionPoolStatus",
    derive = "PartialEq",
    shortname = "spool",
    category = "claude-failover",
    doc = "A pool of Sessions from one template, named <pool>-0..N-1",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(name = "Replicas", type_ = "integer", json_path = ".spec.replicas"),
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.ready"),
    printcolumn(name = "Idle", type_ = "integer", json_path = ".status.idle"),
    printcolumn(name = "Busy", type_ = "integer", json_path = ".status.busy"),
    printcolumn(
        name = "Up-to-date",
        type_ = "integer",
        json_path = ".status.updatedReplicas"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SessionPoolSpec {
    /// How many Sessions the pool keeps.
    pub replicas: u32,
    /// Which Sessions belong to the pool; when given it must match the
    /// template's labels. The pool's own Sessions are those it owns (owner
    /// references) whatever their labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
    /// The Sessions' template.
    pub template: SessionTemplate,
    /// How the Sessions are laid over the accounts.
    #[serde(default)]
    pub placement: PoolPlacement,
    /// Grow while tasks wait for the pool's Sessions, shrink while they sit
    /// idle, within `min..=max` (`replicas` is then only the start).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscale: Option<Autoscale>,
    /// How a changed template reaches the Sessions.
    #[serde(default, skip_serializing_if = "UpdateStrategy::is_default")]
    pub update_strategy: UpdateStrategy,
}

/// How a changed template reaches the pool's Sessions (a StatefulSet's
/// `updateStrategy`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdateStrategy {
    #[serde(default, rename = "type")]
    pub type_: UpdateStrategyType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolling_update: Option<RollingUpdate>,
}

impl UpdateStrategy {
    fn is_default(&self) -> bool {
        *self == UpdateStrategy::default()
    }

    /// How many Sessions may be out of service at once during a rollout,
    /// for a pool of `replicas`: an integer, or a percentage of `replicas`
    /// rounded down; at least 1.
    pub fn max_unavailable(&self, replicas: u32) -> u32 {
        let Some(v) = self
            .rolling_update
            .as_ref()
            .and_then(|r| r.max_unavailable.as_ref())
        else {
            return 1;
        };
        let n = match v {
            IntOrString::Int(n) => (*n).max(0) as u32,
            IntOrString::String(s) => percent(s).map_or(1, |p| replicas * p / 100),
        };
        n.max(1)
    }
}

/// The number of `N%` (0..=100).
pub fn percent(s: &str) -> Option<u32> {
    s.strip_suffix('%')?.parse().ok().filter(|p| *p <= 100)
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum UpdateStrategyType {
    /// A changed template rolls through the Sessions at turn boundaries,
    /// `maxUnavailable` at a time.
    #[default]
    RollingUpdate,
    /// A changed template reaches a Session only when it is deleted (and
    /// the pool creates it again).
    OnDelete,
}

/// The rolling update's parameters.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RollingUpdate {
    /// How many Sessions may be out of service at once (restarting, or not
    /// ready): an integer or a percentage of `replicas` (`25%`, rounded
    /// down, at least 1). Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_unavailable: Option<IntOrString>,
}

/// A pool's autoscaling bounds.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Autoscale {
    pub min: u32,
    pub max: u32,
    /// The least time between two changes of size.
    #[serde(default = "default_cooldown")]
    pub cooldown_seconds: u32,
}

fn default_cooldown() -> u32 {
    60
}

/// A Session template, in Kubernetes' shape.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SessionTemplate {
    #[serde(default)]
    pub metadata: TemplateMeta,
    pub spec: SessionSpec,
}

/// The metadata a template gives each Session.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TemplateMeta {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// How a pool lays its Sessions over the accounts.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PoolPlacement {
    #[serde(default)]
    pub strategy: PlacementStrategy,
    /// The accounts to lay the Sessions over (None: every account of the
    /// namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_selector: Option<LabelSelector>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum PlacementStrategy {
    /// Each new Session prefers the selected account that can take work
    /// and holds the fewest of the pool's Sessions (Available before
    /// NearLimit).
    #[default]
    Spread,
    /// Every Session prefers the template's account (else the first
    /// selected account that can take work).
    Pack,
}

impl std::fmt::Display for PlacementStrategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

/// A pool's status, written by the pool controller.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SessionPoolStatus {
    /// Sessions the pool owns now.
    #[serde(default)]
    pub replicas: u32,
    /// Of them, at their prompt (the Session's Ready condition).
    #[serde(default)]
    pub ready: u32,
    #[serde(default)]
    pub idle: u32,
    #[serde(default)]
    pub busy: u32,
    /// Waiting for someone (a permission prompt) or for an account.
    #[serde(default)]
    pub waiting: u32,
    /// How many of the pool's Sessions run on each account.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub accounts: BTreeMap<String, u32>,
    /// The label selector of the pool's Sessions, as text (the scale
    /// subresource's).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub selector: String,
    /// The size autoscaling chose (with `spec.autoscale`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_replicas: Option<u32>,
    /// When autoscaling last changed the size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_time: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    /// Sessions made from the current template.
    #[serde(default)]
    pub updated_replicas: u32,
    /// Of them, ready and not restarting.
    #[serde(default)]
    pub updated_ready: u32,
    /// The hash of the current template (each Session carries the hash of
    /// the template it was made from in its label
    /// `claude-failover.io/template-hash`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub update_revision: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// The label every Session of a pool carries, naming its pool.
pub const POOL_LABEL: &str = "claude-failover.io/pool";
/// Annotation on a pool: `true` lets a scale down stop busy Sessions
/// without waiting for their turn to end (`scale --force`).
pub const FORCE_SCALE_DOWN: &str = "claude-failover.io/force-scale-down";
/// The label every Session of a pool carries: the hash of the template it
/// was made from (like Kubernetes' `pod-template-hash`).
pub const TEMPLATE_HASH_LABEL: &str = "claude-failover.io/template-hash";
/// Template annotation set by `rollout restart`: a new value rolls every
/// Session of the pool (like kubectl's `kubectl.kubernetes.io/restartedAt`).
pub const RESTARTED_AT: &str = "claude-failover.io/restartedAt";

/// The hash of a template: FNV-1a over its JSON (maps are sorted, so equal
/// templates hash alike), as 10 hex digits.
pub fn template_hash(t: &SessionTemplate) -> String {
    use std::hash::Hasher;
    let mut h = fnv::FnvHasher::default();
    h.write(&serde_json::to_vec(t).expect("a template serializes"));
    format!("{:016x}", h.finish())[..10].to_string()
}

/// The pool controller's finalizer on a pool: its Sessions go first.
pub const POOL_FINALIZER: &str = "claude-failover.io/pool-sessions";

/// The name of a pool's Session of `ordinal`.
pub fn member_name(pool: &str, ordinal: u32) -> String {
    format!("{pool}-{ordinal}")
}

/// The ordinal of a Session name in a pool (`web-3` in `web`: 3).
pub fn ordinal_of(pool: &str, session: &str) -> Option<u32> {
    let rest = session.strip_prefix(pool)?.strip_prefix('-')?;
    if rest.starts_with('0') && rest.len() > 1 {
        return None;
    }
    rest.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinals() {
        assert_eq!(ordinal_of("web", "web-3"), Some(3));
        assert_eq!(ordinal_of("web", "web-0"), Some(0));
        assert_eq!(ordinal_of("web", "web-03"), None);
        assert_eq!(ordinal_of("web", "web-x"), None);
        assert_eq!(ordinal_of("web", "webx-1"), None);
        assert_eq!(member_name("web", 12), "web-12");
    }

    #[test]
    fn max_unavailable_is_a_number_or_a_share_of_the_pool() {
        let s = |v: Option<IntOrString>| UpdateStrategy {
            type_: UpdateStrategyType::RollingUpdate,
            rolling_update: Some(RollingUpdate { max_unavailable: v }),
        };
        let pct = |p: &str| Some(IntOrString::String(p.into()));
        // (strategy, replicas, want)
        let cases = [
            (UpdateStrategy::default(), 10, 1),
            (s(None), 10, 1),
            (s(Some(IntOrString::Int(3))), 10, 3),
            (s(Some(IntOrString::Int(0))), 10, 1),
            (s(pct("25%")), 10, 2),
            (s(pct("25%")), 2, 1),
            (s(pct("100%")), 7, 7),
        ];
        for (strategy, replicas, want) in cases {
            assert_eq!(strategy.max_unavailable(replicas), want, "{strategy:?}");
        }
        assert_eq!(percent("150%"), None);
        assert_eq!(percent("x%"), None);
    }

    #[test]
    fn equal_templates_hash_alike_and_a_change_changes_the_hash() {
        let t = |v: serde_json::Value| -> SessionTemplate { serde_json::from_value(v).unwrap() };
        let a = t(
            serde_json::json!({"metadata": {"labels": {"a": "1", "b": "2"}}, "spec": {"workdir": "/w"}}),
        );
        let b = t(
            serde_json::json!({"metadata": {"labels": {"b": "2", "a": "1"}}, "spec": {"workdir": "/w"}}),
        );
        let c = t(
            serde_json::json!({"metadata": {"labels": {"a": "1", "b": "2"}}, "spec": {"workdir": "/v"}}),
        );
        assert_eq!(template_hash(&a), template_hash(&b));
        assert_ne!(template_hash(&a), template_hash(&c));
        assert_eq!(template_hash(&a).len(), 10);
    }
}

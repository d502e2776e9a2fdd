//! `ManifestSync`: the GitOps sync of one manifests directory as an object
//! (like Flux's Kustomization or Argo CD's Application): where it reads,
//! whether it is suspended, and in its status how the last pass went —
//! kstatus conditions (`Ready`, `Reconciling`, `Stalled`), the git revision
//! when the directory is a checkout, the files it could not read (with
//! FILE:LINE:COL), counts, and the time of the last pass. Written by the
//! daemon (`run --manifests DIR` makes one); people change `spec.suspend`
//! (`claude-failover suspend manifestsync NAME`).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The name of the object the daemon keeps for its `--manifests` directory.
pub const MANIFESTS_SYNC: &str = "manifests";

/// Condition types (kstatus): Ready (the last pass applied everything),
/// Reconciling (a pass is under way), Stalled (a problem only a change of
/// the files can fix).
pub const SYNC_READY: &str = "Ready";
pub const SYNC_RECONCILING: &str = "Reconciling";
pub const SYNC_STALLED: &str = "Stalled";

// kube-derive takes one `printcolumn(...)` per column; clippy mistakes them for duplicates.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "claude-failover.io",
    version = "v1alpha1",
    kind = "ManifestSync",
    namespaced,
    status = "ManifestSyncStatus",
    derive = "PartialEq",
    shortname = "msync",
    category = "claude-failover",
    doc = "The GitOps sync of a manifests directory: its source and how its last pass went",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "Revision", type_ = "string", json_path = ".status.revision"),
    printcolumn(name = "Suspended", type_ = "boolean", json_path = ".spec.suspend"),
    printcolumn(name = "Last-Sync", type_ = "date", json_path = ".status.lastSyncTime"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ManifestSyncSpec {
    /// The manifests directory (absolute), a git checkout for GitOps.
    pub path: String,
    /// True: no pass runs and the objects stay as they are, until resumed.
    #[serde(default)]
    pub suspend: bool,
    /// Delete objects whose declaration left the directory (objects with
    /// the annotation `claude-failover.io/prune: disabled` never are).
    #[serde(default = "default_prune")]
    pub prune: bool,
}

fn default_prune() -> bool {
    true
}

/// How the last pass went.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ManifestSyncStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `BRANCH@sha1:COMMIT` (or `sha1:COMMIT` detached) when the directory
    /// is in a git checkout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// The revision of the last pass that applied everything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_applied_revision: Option<String>,
    /// When the last pass ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync_time: Option<Time>,
    /// Manifest files read by the last pass.
    #[serde(default)]
    pub files: u32,
    /// Objects declared by the readable files.
    #[serde(default)]
    pub objects: u32,
    /// Objects the last pass created or changed.
    #[serde(default)]
    pub applied: u32,
    #[serde(default)]
    pub unchanged: u32,
    #[serde(default)]
    pub pruned: u32,
    /// Files (or objects) the last pass could not apply, each with where
    /// and why; their objects are left as they were.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed: Vec<SyncFailure>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// One problem of a pass.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SyncFailure {
    /// The file, relative to the directory.
    pub file: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column: Option<u32>,
    /// The field (`spec.priority`), or the object (`Task default/x`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub path: String,
    pub message: String,
}

impl std::fmt::Display for SyncFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.file)?;
        if let (Some(l), Some(c)) = (self.line, self.column) {
            write!(f, ":{l}:{c}")?;
        }
        if !self.path.is_empty() {
            write!(f, ": {}", self.path)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// What a pass found, for the conditions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PassResult {
    /// Everything applied.
    Clean,
    /// Manifests that cannot be read or are refused as they are: only a
    /// change of the files fixes them (Stalled).
    Invalid,
    /// Writes that failed for a passing reason (a conflict, I/O): retried
    /// at the next pass.
    Failed,
}

/// The kstatus conditions after a pass (`running`: a pass is under way;
/// `suspended`: none runs). Returns true when anything changed.
pub fn set_sync_conditions(
    status: &mut ManifestSyncStatus,
    result: Option<PassResult>,
    running: bool,
    suspended: bool,
    generation: Option<i64>,
    now: Time,
) -> bool {
    use super::set_condition;
    let c = &mut status.conditions;
    let failures = status
        .failed
        .iter()
        .map(|f| f.to_string())
        .collect::<Vec<_>>()
        .join("; ");
    let mut changed = false;
    let reconciling = if suspended {
        (
            false,
            "Suspended",
            "spec.suspend is true: no pass runs".to_string(),
        )
    } else if running {
        (true, "Progressing", "a sync pass is running".to_string())
    } else {
        (false, "Idle", String::new())
    };
    changed |= set_condition(
        c,
        SYNC_RECONCILING,
        reconciling.0,
        reconciling.1,
        &reconciling.2,
        generation,
        now.clone(),
    );
    if let Some(r) = result {
        let (ready, stalled) = match r {
            PassResult::Clean => (
                (true, "Synced", "every manifest is applied".to_string()),
                (false, "Synced", String::new()),
            ),
            PassResult::Invalid => (
                (false, "ManifestsInvalid", failures.clone()),
                (true, "ManifestsInvalid", failures),
            ),
            PassResult::Failed => (
                (false, "ApplyFailed", failures.clone()),
                (false, "Retrying", String::new()),
            ),
        };
        changed |= set_condition(
            c,
            SYNC_READY,
            ready.0,
            ready.1,
            &ready.2,
            generation,
            now.clone(),
        );
        changed |= set_condition(
            c,
            SYNC_STALLED,
            stalled.0,
            stalled.1,
            &stalled.2,
            generation,
            now,
        );
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Conditions;
    use k8s_openapi::jiff::Timestamp;

    fn t(s: i64) -> Time {
        Time(Timestamp::from_second(s).unwrap())
    }

    #[test]
    fn conditions_follow_the_passes() {
        let mut s = ManifestSyncStatus::default();
        // A pass starts.
        assert!(set_sync_conditions(
            &mut s,
            None,
            true,
            false,
            Some(1),
            t(1)
        ));
        assert!(s.conditions.is_true(SYNC_RECONCILING));
        assert!(s.conditions.condition(SYNC_READY).is_none());
        // It ends clean.
        set_sync_conditions(&mut s, Some(PassResult::Clean), false, false, Some(1), t(2));
        assert!(s.conditions.is_true(SYNC_READY) && !s.conditions.is_true(SYNC_STALLED));
        assert!(!s.conditions.is_true(SYNC_RECONCILING));
        // A bad file: not ready, stalled, and the problem in the message.
        s.failed = vec![SyncFailure {
            file: "t.yaml".into(),
            line: Some(6),
            column: Some(3),
            path: "spec.priority".into(),
            message: "unknown variant `urgent`".into(),
        }];
        set_sync_conditions(
            &mut s,
            Some(PassResult::Invalid),
            false,
            false,
            Some(1),
            t(3),
        );
        let ready = s.conditions.condition(SYNC_READY).unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "ManifestsInvalid")
        );
        assert_eq!(
            ready.message,
            "t.yaml:6:3: spec.priority: unknown variant `urgent`"
        );
        assert!(s.conditions.is_true(SYNC_STALLED));
        // A passing failure is retried: not ready, not stalled.
        set_sync_conditions(
            &mut s,
            Some(PassResult::Failed),
            false,
            false,
            Some(1),
            t(4),
        );
        assert!(!s.conditions.is_true(SYNC_READY) && !s.conditions.is_true(SYNC_STALLED));
        // Suspended: no pass runs; the last result stays.
        set_sync_conditions(&mut s, None, false, true, Some(2), t(5));
        let r = s.conditions.condition(SYNC_RECONCILING).unwrap();
        assert_eq!(
            (r.status.as_str(), r.reason.as_str()),
            ("False", "Suspended")
        );
        assert!(!s.conditions.is_true(SYNC_READY));
        // Same state again: no change.
        assert!(!set_sync_conditions(
            &mut s,
            None,
            false,
            true,
            Some(2),
            t(6)
        ));
    }
}

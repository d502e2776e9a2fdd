//! The sync as an object: the `ManifestSync` the daemon keeps for its
//! manifests directory (spec: the path; status: how each pass went), the
//! events and metrics of each pass, the git revision of the directory, and
//! what `/readyz` says of a stalled sync.

use super::SyncReport;
use crate::api::{
    API_VERSION, Conditions, Kind, ManifestSync, ManifestSyncStatus, ObjectKey, PassResult,
    SYNC_READY, SYNC_RECONCILING, SYNC_STALLED, SyncFailure, set_sync_conditions,
};
use crate::metrics::{Metrics, SYNC_CONDITIONS};
use crate::store::{ApplyRequest, Outcome, Store, StoreError};
use serde_json::{Value, json};
use std::path::Path;
use std::process::Command;

/// The field manager of the object's `spec.path` (the daemon declares it).
pub const DAEMON_MANAGER: &str = "claude-failover-daemon";
/// Where events about the sync come from.
const SOURCE: &str = "sync";

/// Creates the object, or updates its path; returns it as stored.
pub fn declare(store: &Store, key: &ObjectKey, dir: &Path) -> Result<ManifestSync, StoreError> {
    let object = json!({"apiVersion": API_VERSION, "kind": Kind::ManifestSync.name(),
        "metadata": {"name": key.name, "namespace": key.namespace},
        "spec": {"path": dir.display().to_string()}});
    let req = ApplyRequest {
        declared: Some(object.clone()),
        object,
        manager: DAEMON_MANAGER.into(),
        force: true,
    };
    let r = store.apply_request(&req, false)?;
    serde_json::from_value(r.object).map_err(|e| StoreError::Corrupt {
        path: store.root().join(Kind::ManifestSync.plural()),
        message: e.to_string(),
    })
}

/// `BRANCH@sha1:COMMIT` of the git checkout holding `dir` (`sha1:COMMIT`
/// when detached, `+dirty` when files under `dir` differ from it), or None
/// when `dir` is not in a checkout (or git is not installed).
pub fn git_revision(dir: &Path) -> Option<String> {
    let git = |args: &[&str]| -> Option<String> {
        let out = Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .env("GIT_OPTIONAL_LOCKS", "0")
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    let commit = git(&["rev-parse", "HEAD"])?;
    let branch = git(&["rev-parse", "--abbrev-ref", "HEAD"]).unwrap_or_default();
    let dirty = git(&["status", "--porcelain", "--", "."]).is_some_and(|s| !s.is_empty());
    let mut rev = if branch.is_empty() || branch == "HEAD" {
        format!("sha1:{commit}")
    } else {
        format!("{branch}@sha1:{commit}")
    };
    if dirty {
        rev.push_str("+dirty");
    }
    Some(rev)
}

/// A file name as the status shows it: relative to the directory.
fn relative(dir: &Path, file: &str) -> String {
    Path::new(file)
        .strip_prefix(dir)
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| file.to_string())
}

/// What a pass's report says of the pass.
pub fn result_of(report: &SyncReport) -> PassResult {
    if !report.errors.is_empty() {
        PassResult::Invalid
    } else if !report.failed.is_empty() {
        PassResult::Failed
    } else {
        PassResult::Clean
    }
}

/// The status after a pass (from the previous one: conditions keep their
/// transition times).
pub fn status_after(
    previous: &ManifestSyncStatus,
    report: &SyncReport,
    dir: &Path,
    revision: Option<String>,
    generation: Option<i64>,
) -> ManifestSyncStatus {
    let count = |o: Outcome| report.applied.iter().filter(|(_, x)| *x == o).count() as u32;
    let mut failed: Vec<SyncFailure> = report
        .errors
        .iter()
        .map(|e| SyncFailure {
            file: relative(dir, &e.file),
            line: Some(e.pos.line as u32),
            column: Some(e.pos.col as u32),
            path: e.path.clone(),
            message: e.message.clone(),
        })
        .collect();
    failed.extend(report.failed.iter().map(|(key, message)| {
        SyncFailure {
            file: report
                .files_of
                .get(key)
                .map(|f| relative(dir, f))
                .unwrap_or_default(),
            line: None,
            column: None,
            path: key.to_string(),
            message: message.clone(),
        }
    }));
    let result = result_of(report);
    let mut s = ManifestSyncStatus {
        observed_generation: generation,
        revision: revision.clone(),
        last_applied_revision: if result == PassResult::Clean {
            revision
        } else {
            previous.last_applied_revision.clone()
        },
        last_sync_time: Some(crate::api::now()),
        files: report.files as u32,
        objects: report.applied.len() as u32 + report.failed.len() as u32,
        applied: count(Outcome::Created) + count(Outcome::Configured),
        unchanged: count(Outcome::Unchanged),
        pruned: report.pruned.len() as u32,
        failed,
        conditions: previous.conditions.clone(),
    };
    set_sync_conditions(
        &mut s,
        Some(result),
        false,
        false,
        generation,
        crate::api::now(),
    );
    s
}

/// Writes the status (nothing when it is the same).
pub fn write_status(
    store: &Store,
    key: &ObjectKey,
    before: &ManifestSyncStatus,
    status: &ManifestSyncStatus,
) -> Result<(), StoreError> {
    if before == status {
        return Ok(());
    }
    let v = serde_json::to_value(status).expect("status serializes");
    store.write_status(key, &v, None).map(|_| ())
}

/// The events of a pass on the object: what changed, and each problem.
pub fn record_events(
    store: &Store,
    key: &ObjectKey,
    before: &ManifestSyncStatus,
    after: &ManifestSyncStatus,
) {
    let rev = after
        .revision
        .as_deref()
        .map(|r| format!(" at {r}"))
        .unwrap_or_default();
    let event = |warning: bool, reason: &str, message: &str| {
        let _ = store.record_event(key, warning, reason, message, SOURCE);
    };
    if after.applied > 0 || after.pruned > 0 {
        event(
            false,
            "Synced",
            &format!(
                "applied {}, pruned {}, unchanged {}{rev}",
                after.applied, after.pruned, after.unchanged
            ),
        );
    }
    for f in &after.failed {
        let reason = if f.line.is_some() {
            "ManifestInvalid"
        } else {
            "ApplyFailed"
        };
        event(true, reason, &f.to_string());
    }
    let was_ready = before.conditions.is_true(SYNC_READY);
    if after.conditions.is_true(SYNC_READY) && !was_ready && before.last_sync_time.is_some() {
        event(
            false,
            "Recovered",
            &format!("every manifest is applied again{rev}"),
        );
    }
}

/// The metrics of a pass (or of a suspended sync).
pub fn record_metrics(m: &Metrics, name: &str, status: &ManifestSyncStatus, seconds: Option<f64>) {
    if let Some(s) = seconds {
        m.sync_duration_seconds.observe(s);
    }
    for c in SYNC_CONDITIONS {
        m.sync_condition
            .with_label_values(&[name, c])
            .set(i64::from(status.conditions.is_true(c)));
    }
    for (result, n) in [
        ("applied", status.applied),
        ("unchanged", status.unchanged),
        ("pruned", status.pruned),
        ("failed", status.failed.len() as u32),
    ] {
        m.sync_objects
            .with_label_values(&[name, result])
            .set(i64::from(n));
    }
    if status.conditions.is_true(SYNC_READY)
        && let Some(t) = &status.last_sync_time
    {
        m.sync_last_success_timestamp_seconds
            .with_label_values(&[name])
            .set(t.0.as_millisecond() as f64 / 1000.0);
    }
}

/// Marks the object suspended (no pass runs) or reconciling (a pass
/// starts). Returns the status written.
pub fn mark(
    store: &Store,
    obj: &ManifestSync,
    running: bool,
    suspended: bool,
) -> Result<ManifestSyncStatus, StoreError> {
    let key = ObjectKey::of(obj);
    let before = obj.status.clone().unwrap_or_default();
    let mut s = before.clone();
    set_sync_conditions(
        &mut s,
        None,
        running,
        suspended,
        obj.metadata.generation,
        crate::api::now(),
    );
    if suspended && !before.conditions.is_true(SYNC_RECONCILING) {
        let was = before
            .conditions
            .condition(SYNC_RECONCILING)
            .is_some_and(|c| c.reason == "Suspended");
        if !was {
            let _ = store.record_event(
                &key,
                false,
                "Suspended",
                "spec.suspend is true: no pass runs until resumed",
                SOURCE,
            );
        }
    }
    write_status(store, &key, &before, &s)?;
    Ok(s)
}

/// `/readyz`'s view of the syncs: one check per ManifestSync, failing
/// while it is Stalled (its manifests need a fix).
pub fn readiness_checks(store: &Store) -> Vec<Value> {
    let Ok(list) = store.list(Kind::ManifestSync, None) else {
        return Vec::new();
    };
    list.iter()
        .filter_map(|v| serde_json::from_value::<ManifestSync>(v.clone()).ok())
        .map(|s| {
            let key = ObjectKey::of(&s);
            let status = s.status.unwrap_or_default();
            let stalled = status
                .conditions
                .condition(SYNC_STALLED)
                .filter(|c| c.status == "True");
            let message = match stalled {
                Some(c) => format!("stalled: {}", c.message),
                None if s.spec.suspend => "suspended".to_string(),
                None => "not stalled".to_string(),
            };
            json!({"name": format!("manifestsync/{}/{}", key.namespace, key.name),
                "ok": stalled.is_none(), "message": message})
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::ManifestError;
    use crate::manifest::yaml::Pos;

    #[test]
    fn a_pass_becomes_a_status() {
        let dir = Path::new("/m");
        let key = ObjectKey::new(Kind::Task, "default", "t");
        let mut report = SyncReport {
            applied: vec![
                (key.clone(), Outcome::Created),
                (
                    ObjectKey::new(Kind::Task, "default", "u"),
                    Outcome::Unchanged,
                ),
            ],
            files: 2,
            ..Default::default()
        };
        let clean = status_after(
            &ManifestSyncStatus::default(),
            &report,
            dir,
            Some("main@sha1:abc".into()),
            Some(1),
        );
        assert_eq!(
            (clean.files, clean.objects, clean.applied, clean.unchanged),
            (2, 2, 1, 1)
        );
        assert!(clean.conditions.is_true(SYNC_READY));
        assert_eq!(
            clean.last_applied_revision.as_deref(),
            Some("main@sha1:abc")
        );
        report.errors.push(ManifestError {
            file: "/m/bad.yaml".into(),
            pos: Pos { line: 4, col: 3 },
            path: "spec.priority".into(),
            message: "unknown variant".into(),
        });
        let bad = status_after(&clean, &report, dir, Some("main@sha1:def".into()), Some(1));
        assert_eq!(
            bad.failed[0].to_string(),
            "bad.yaml:4:3: spec.priority: unknown variant"
        );
        assert!(bad.conditions.is_true(SYNC_STALLED) && !bad.conditions.is_true(SYNC_READY));
        assert_eq!(
            bad.last_applied_revision.as_deref(),
            Some("main@sha1:abc"),
            "the last good one"
        );
        let m = Metrics::new();
        record_metrics(&m, "manifests", &bad, Some(0.2));
        let text = m.encode();
        assert!(
            text.contains(
                r#"claude_failover_sync_condition{condition="Stalled",sync="manifests"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"claude_failover_sync_objects{result="failed",sync="manifests"} 1"#),
            "{text}"
        );
        assert!(
            text.contains("claude_failover_sync_duration_seconds_count 1"),
            "{text}"
        );
    }

    #[test]
    #[cfg_attr(not(git), ignore = "needs git: apt-get install git")]
    fn revisions_of_a_checkout() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(git_revision(d.path()), None, "not a checkout");
        let git = |args: &[&str]| {
            let ok = Command::new("git")
                .arg("-C")
                .arg(d.path())
                .args(args)
                .env("GIT_AUTHOR_NAME", "t")
                .env("GIT_AUTHOR_EMAIL", "t@e")
                .env("GIT_COMMITTER_NAME", "t")
                .env("GIT_COMMITTER_EMAIL", "t@e")
                .output()
                .unwrap();
            assert!(
                ok.status.success(),
                "{}",
                String::from_utf8_lossy(&ok.stderr)
            );
            String::from_utf8_lossy(&ok.stdout).trim().to_string()
        };
        git(&["init", "-q", "-b", "main"]);
        std::fs::write(d.path().join("a.yaml"), "x: 1\n").unwrap();
        git(&["add", "."]);
        git(&["commit", "-q", "-m", "one"]);
        let head = git(&["rev-parse", "HEAD"]);
        assert_eq!(git_revision(d.path()), Some(format!("main@sha1:{head}")));
        std::fs::write(d.path().join("a.yaml"), "x: 2\n").unwrap();
        assert_eq!(
            git_revision(d.path()),
            Some(format!("main@sha1:{head}+dirty"))
        );
        git(&["checkout", "-q", "--detach"]);
        assert!(git_revision(d.path()).unwrap().starts_with("sha1:"));
    }
}

//! GitOps sync: the desired-state directory (`run --manifests DIR`) is
//! applied to the store on every change and on a period.
//!
//! - Every `*.yaml` / `*.yml` / `*.json` under DIR (recursive,
//!   multi-document) is applied; objects get the annotation
//!   `claude-failover.io/managed-by: sync`.
//! - An inventory (`STORE/inventory/<id>.json`) records which objects the
//!   sync applied and from which file. An object that has left DIR is
//!   pruned, but only if the sync applied it and it still carries the
//!   annotation: objects created by `apply`, the API or the inbox are never
//!   pruned.
//! - Each file is applied in one store transaction, with its inventory
//!   entries: all its objects or none (a conflict, a full disk, a crash).
//! - A bad file (any problem in any of its documents, or a FIFO or other
//!   special file, refused without being read) is reported (one line per
//!   problem) and skipped whole: none of its documents is applied, the
//!   rest of the directory syncs. The objects it declared before are
//!   neither changed nor pruned, so a half-written or broken file loses
//!   nothing.
//! - The sync is a server-side apply by its own field manager
//!   (`claude-failover-sync`, see `store::ownership`): it sets the fields
//!   its files declare and keeps every other writer's (a cancel or restart
//!   request, a label added by hand, the daemon's finalizers). Drift (a
//!   field the files declare changed in the store) is taken back on the
//!   next pass, with an event naming the fields and who had set them.
//! - The directory is only read, never written.
//! - The sync is an object ([`status`]): a `ManifestSync` (named
//!   `manifests`) whose status tells how the last pass went (Ready /
//!   Reconciling / Stalled, the git revision, the files it could not read
//!   with FILE:LINE:COL, counts, the time), with events and metrics of each
//!   pass; `spec.suspend` pauses it, `spec.prune: false` keeps it from
//!   deleting; an object annotated `claude-failover.io/prune: disabled` is
//!   never pruned.

pub mod status;

use crate::api::{Kind, ManifestSync, ObjectKey};
use crate::manifest::{Decoded, LoadOptions, ManifestError, load_paths};
use crate::store::{ApplyRequest, Outcome, Store, StoreError};
use notify::{RecursiveMode, Watcher};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The annotation that marks objects owned by the manifest sync.
pub const MANAGED_BY: &str = "claude-failover.io/managed-by";
pub const MANAGED_BY_SYNC: &str = "sync";
/// The field manager of the sync's applies (see `store::ownership`).
pub const FIELD_MANAGER: &str = "claude-failover-sync";
/// The annotation that keeps an object from being pruned (by the sync and
/// by `apply --prune`), whatever its manifests say.
pub const PRUNE: &str = "claude-failover.io/prune";
pub const PRUNE_DISABLED: &str = "disabled";
/// How long a change under the directory settles (an editor or `git
/// checkout` finishing its writes) before a pass.
const SETTLE: Duration = Duration::from_millis(100);

#[derive(Debug, Default, Serialize, Deserialize)]
struct Inventory {
    dir: String,
    /// Object → the file that declared it.
    objects: BTreeMap<String, InventoryEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct InventoryEntry {
    key: ObjectKey,
    file: String,
}

/// What one pass did.
#[derive(Debug, Default)]
pub struct SyncReport {
    pub applied: Vec<(ObjectKey, Outcome)>,
    pub pruned: Vec<ObjectKey>,
    pub errors: Vec<ManifestError>,
    /// Objects that could not be written (conflicts, terminating, I/O).
    pub failed: Vec<(ObjectKey, String)>,
    /// Manifest files read.
    pub files: usize,
    /// The file that declared each object.
    pub files_of: BTreeMap<ObjectKey, String>,
}

#[derive(Clone)]
pub struct Syncer {
    store: Store,
    dir: PathBuf,
    namespace: String,
    /// The inventory's record name (`STORE/inventory/<id>.json`).
    inventory_id: String,
    /// The ManifestSync object that stands for this sync.
    key: ObjectKey,
    metrics: Option<std::sync::Arc<crate::metrics::Metrics>>,
}

/// FNV-1a: a stable id for a directory path.
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    })
}

const INVENTORY: &str = "inventory";

impl Syncer {
    pub fn new(store: Store, dir: &Path, namespace: &str) -> std::io::Result<Syncer> {
        let dir = std::fs::canonicalize(dir)?;
        let inventory_id = format!("{:016x}", fnv1a(&dir.display().to_string()));
        Ok(Syncer {
            store,
            dir,
            namespace: namespace.to_string(),
            inventory_id,
            key: ObjectKey::new(Kind::ManifestSync, namespace, crate::api::MANIFESTS_SYNC),
            metrics: None,
        })
    }

    /// Records each pass's metrics (`claude_failover_sync_*`) here.
    pub fn with_metrics(mut self, metrics: std::sync::Arc<crate::metrics::Metrics>) -> Syncer {
        self.metrics = Some(metrics);
        self
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The ManifestSync object of this sync.
    pub fn key(&self) -> &ObjectKey {
        &self.key
    }

    fn load_inventory(&self) -> Inventory {
        self.store
            .record(INVENTORY, &self.inventory_id)
            .ok()
            .flatten()
            .and_then(|v| serde_json::from_value(v).ok())
            .unwrap_or_default()
    }

    fn inventory_value(inv: &Inventory) -> Value {
        serde_json::to_value(inv).expect("inventory serializes")
    }

    /// One full pass: each good file applied all or nothing, then prune,
    /// then the inventory.
    pub fn sync_once(&self) -> SyncReport {
        self.sync_with(true)
    }

    /// One pass as the daemon runs it: the ManifestSync object declared,
    /// nothing done while it is suspended (None), else marked reconciling,
    /// synced (pruning as its spec says), and its status, events and
    /// metrics written.
    pub fn pass(&self) -> Result<Option<SyncReport>, StoreError> {
        let obj: ManifestSync = status::declare(&self.store, &self.key, &self.dir)?;
        if obj.spec.suspend {
            let st = status::mark(&self.store, &obj, false, true)?;
            if let Some(m) = &self.metrics {
                status::record_metrics(m, &self.key.name, &st, None);
            }
            return Ok(None);
        }
        let started = std::time::Instant::now();
        let before = status::mark(&self.store, &obj, true, false)?;
        let report = self.sync_with(obj.spec.prune);
        let after = status::status_after(
            &before,
            &report,
            &self.dir,
            status::git_revision(&self.dir),
            obj.metadata.generation,
        );
        status::write_status(&self.store, &self.key, &before, &after)?;
        status::record_events(&self.store, &self.key, &before, &after);
        if let Some(m) = &self.metrics {
            status::record_metrics(
                m,
                &self.key.name,
                &after,
                Some(started.elapsed().as_secs_f64()),
            );
        }
        Ok(Some(report))
    }

    fn sync_with(&self, prune: bool) -> SyncReport {
        let loaded = load_paths(
            std::slice::from_ref(&self.dir),
            &LoadOptions {
                recursive: true,
                namespace: self.namespace.clone(),
            },
        );
        let mut report = SyncReport {
            errors: loaded.errors.clone(),
            files: loaded.files.len(),
            files_of: loaded
                .objects
                .iter()
                .map(|d| (d.object.key(), d.source.file.clone()))
                .collect(),
            ..Default::default()
        };
        // A file with any problem is skipped whole: none of its objects is
        // applied (its good documents neither), none of its old ones pruned.
        let mut skipped: HashSet<String> =
            loaded.bad_files().into_iter().map(str::to_string).collect();
        let old = self.load_inventory();
        // While applying, the inventory holds the old entries and what is
        // declared so far: a pass cut short loses track of nothing.
        let mut inv = Inventory {
            dir: self.dir.display().to_string(),
            objects: old.objects.clone(),
        };
        let mut declared = BTreeMap::new();
        for (file, objects) in by_file(&loaded.objects, &skipped) {
            match self.apply_file(&file, &objects, &mut inv, &mut report) {
                Ok(entries) => declared.extend(entries),
                Err(()) => {
                    skipped.insert(file);
                }
            }
        }
        let mut kept = BTreeMap::new();
        for (name, entry) in old.objects {
            if declared.contains_key(&name) {
                continue;
            }
            // Its file is broken or was not applied, or the object is
            // declared twice (or the sync does not prune): keep it, and keep
            // it in the inventory so it is pruned once truly gone.
            if !prune
                || skipped.contains(entry.file.as_str())
                || loaded.contested.contains(&entry.key)
            {
                kept.insert(name, entry);
                continue;
            }
            match self.prune(&entry.key) {
                Ok(true) => report.pruned.push(entry.key),
                Ok(false) => {}
                Err(e) => {
                    report.failed.push((entry.key.clone(), e.to_string()));
                    kept.insert(name, entry);
                }
            }
        }
        declared.extend(kept);
        let inv = Inventory {
            dir: inv.dir,
            objects: declared,
        };
        if let Err(e) = self.save_inventory(&inv) {
            report.failed.push((
                ObjectKey::new(crate::api::Kind::Account, "-", "inventory"),
                format!("{INVENTORY}/{}: {e}", self.inventory_id),
            ));
        }
        report
    }

    fn save_inventory(&self, inv: &Inventory) -> Result<(), StoreError> {
        let v = Self::inventory_value(inv);
        if self.store.record(INVENTORY, &self.inventory_id)?.as_ref() == Some(&v) {
            return Ok(());
        }
        self.store
            .with_batch(|batch| batch.write_record(INVENTORY, &self.inventory_id, &v))
    }

    /// Applies one file's objects in one batch (with the inventory, when
    /// they add to it): all or none. Returns their inventory entries.
    fn apply_file(
        &self,
        file: &str,
        objects: &[&Decoded],
        inv: &mut Inventory,
        report: &mut SyncReport,
    ) -> Result<BTreeMap<String, InventoryEntry>, ()> {
        let fail = |report: &mut SyncReport, key: ObjectKey, e: StoreError| {
            report.failed.push((
                key,
                format!("{e}; nothing of {file} was applied (all or nothing)"),
            ));
            Err(())
        };
        // Built again on fresh reads if it lost a race on etcd.
        let mut failed_key = None;
        let built = self.store.with_batch(|batch| {
            failed_key = None;
            let mut entries = BTreeMap::new();
            let mut outcomes = Vec::new();
            for d in objects {
                let (key, req) = sync_request(d);
                match batch.apply_request(&req) {
                    Ok(r) => outcomes.push((key.clone(), r.outcome, &d.source, r.taken_over)),
                    Err(e) => {
                        failed_key = Some(key);
                        return Err(e);
                    }
                }
                entries.insert(
                    key.to_string(),
                    InventoryEntry {
                        key,
                        file: file.to_string(),
                    },
                );
            }
            let grows = entries
                .iter()
                .any(|(name, e)| inv.objects.get(name).is_none_or(|old| old.file != e.file));
            if grows {
                let mut next = inv.objects.clone();
                next.extend(entries.clone());
                let v = Self::inventory_value(&Inventory {
                    dir: inv.dir.clone(),
                    objects: next,
                });
                batch.write_record(INVENTORY, &self.inventory_id, &v)?;
            }
            Ok((entries, outcomes))
        });
        let (entries, outcomes) = match built {
            Ok(b) => b,
            Err(e) => {
                let key = failed_key.unwrap_or_else(|| objects[0].object.key());
                return fail(report, key, e);
            }
        };
        inv.objects.extend(entries.clone());
        for (key, outcome, source, taken_over) in outcomes {
            if outcome != Outcome::Unchanged {
                let reason = if outcome == Outcome::Created {
                    "Created"
                } else {
                    "Synced"
                };
                let message = applied_message(outcome, source, &taken_over);
                let _ = self
                    .store
                    .record_event(&key, false, reason, &message, "sync");
            }
            report.applied.push((key, outcome));
        }
        Ok(entries)
    }

    /// Deletes `key` if the sync still owns it. True when it was deleted
    /// (or is now terminating). The ownership check and the delete are tied
    /// by the resourceVersion; a controller's status write in between is a
    /// conflict, and the check is made again.
    fn prune(&self, key: &ObjectKey) -> Result<bool, StoreError> {
        let mut attempts = 0;
        loop {
            match self.prune_once(key) {
                Err(StoreError::Conflict { .. }) if attempts < 5 => attempts += 1,
                r => return r,
            }
        }
    }

    fn prune_once(&self, key: &ObjectKey) -> Result<bool, StoreError> {
        let Some(current) = self.store.get(key)? else {
            return Ok(false);
        };
        let owned = current
            .pointer("/metadata/annotations")
            .and_then(|a| a.get(MANAGED_BY))
            .and_then(Value::as_str)
            == Some(MANAGED_BY_SYNC);
        let opted_out = current
            .pointer("/metadata/annotations")
            .and_then(|a| a.get(PRUNE))
            .and_then(Value::as_str)
            == Some(PRUNE_DISABLED);
        if !owned || opted_out {
            return Ok(false);
        }
        let rv = current
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str);
        match self.store.delete(key, rv, false) {
            Ok(_) => Ok(true),
            Err(StoreError::NotFound(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Syncs now, then on every change under the directory (debounced),
    /// every change of its ManifestSync object's spec (a suspend, a
    /// resume) and every `resync`, until `shutdown` resolves. `after_pass`
    /// runs after each pass (the daemon's readiness waits for the first; a
    /// suspended sync counts as passed, with nothing done).
    pub async fn run(
        self,
        resync: Duration,
        shutdown: impl std::future::Future<Output = ()>,
        after_pass: impl Fn(&SyncReport),
    ) {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        // The object's spec file, written by `suspend`/`resume` (not its
        // status file: the passes write that).
        let spec_file = self
            .store
            .root()
            .join(Kind::ManifestSync.plural())
            .join(&self.key.namespace)
            .join(format!("{}.json", self.key.name));
        // On etcd a suspend is seen at the next pass (no file to watch).
        let object_dir = spec_file
            .parent()
            .filter(|_| !self.store.is_etcd())
            .map(Path::to_path_buf);
        if let Some(d) = &object_dir {
            let _ = crate::fsutil::ensure_dir(d);
        }
        let dir = self.dir.clone();
        let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            // Our own reads of the directory are not changes.
            let ours = res.as_ref().is_ok_and(|e| {
                e.paths
                    .iter()
                    .any(|p| p.starts_with(&dir) || *p == spec_file)
            });
            if ours && crate::fsutil::is_change(&res) {
                let _ = tx.send(());
            }
        })
        .and_then(|mut w| {
            w.watch(&self.dir, RecursiveMode::Recursive)?;
            if let Some(d) = &object_dir {
                w.watch(d, RecursiveMode::NonRecursive)?;
            }
            Ok(w)
        });
        let _watcher = match watcher {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(dir = %self.dir.display(), error = %e, "cannot watch the manifests directory; syncing every resync period only");
                None
            }
        };
        let this = std::sync::Arc::new(self);
        tokio::pin!(shutdown);
        let mut tick = tokio::time::interval(resync);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tick.tick() => {}
                Some(()) = rx.recv() => {
                    tokio::time::sleep(SETTLE).await;
                    while rx.try_recv().is_ok() {}
                }
            }
            let s = this.clone();
            let report = match tokio::task::spawn_blocking(move || s.pass()).await {
                Ok(Ok(Some(r))) => r,
                Ok(Ok(None)) => {
                    tracing::debug!(target: "claude_failover::sync", "suspended: no pass");
                    after_pass(&SyncReport::default());
                    continue;
                }
                Ok(Err(e)) => {
                    tracing::warn!(target: "claude_failover::sync", error = %e, "cannot record the sync's status; syncing anyway");
                    let s = this.clone();
                    match tokio::task::spawn_blocking(move || s.sync_once()).await {
                        Ok(r) => r,
                        Err(e) => {
                            tracing::error!(error = %e, "sync pass panicked");
                            continue;
                        }
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "sync pass panicked");
                    continue;
                }
            };
            log_report(&this.dir, &report);
            after_pass(&report);
        }
    }
}

/// The good objects by file, files in the order they are applied: those
/// declaring accounts first, then sessions, then tasks (objects that name
/// others come after them), each file's objects in that order too.
fn by_file<'a>(
    objects: &'a [Decoded],
    skipped: &HashSet<String>,
) -> Vec<(String, Vec<&'a Decoded>)> {
    let mut files: BTreeMap<&str, Vec<&Decoded>> = BTreeMap::new();
    for d in objects {
        if !skipped.contains(&d.source.file) {
            files.entry(&d.source.file).or_default().push(d);
        }
    }
    let mut out: Vec<(String, Vec<&Decoded>)> = files
        .into_iter()
        .map(|(f, mut objs)| {
            objs.sort_by_key(|d| d.object.kind());
            (f.to_string(), objs)
        })
        .collect();
    out.sort_by_key(|(f, objs)| (objs[0].object.kind(), f.clone()));
    out
}

fn log_report(dir: &Path, r: &SyncReport) {
    for e in &r.errors {
        tracing::warn!(target: "claude_failover::sync", "{e}");
    }
    for (key, outcome) in &r.applied {
        if *outcome != Outcome::Unchanged {
            tracing::info!(target: "claude_failover::sync", object = %key, "{outcome}");
        }
    }
    for key in &r.pruned {
        tracing::info!(target: "claude_failover::sync", object = %key, "pruned (no longer in the manifests)");
    }
    for (key, e) in &r.failed {
        tracing::warn!(target: "claude_failover::sync", object = %key, error = %e, "not synced");
    }
    let changed = r
        .applied
        .iter()
        .filter(|(_, o)| *o != Outcome::Unchanged)
        .count();
    tracing::info!(
        target: "claude_failover::sync",
        dir = %dir.display(),
        objects = r.applied.len(),
        changed,
        pruned = r.pruned.len(),
        errors = r.errors.len() + r.failed.len(),
        "sync pass complete"
    );
}

/// A file's object as the sync applies it: marked as the sync's, its
/// resourceVersion dropped (the directory is authoritative), the fields
/// the file declares owned by the sync with force, so fields another
/// writer changed are taken back (drift correction) and the rest (a
/// cancel, a label added by hand, the daemon's finalizers) is kept.
fn sync_request(d: &Decoded) -> (ObjectKey, ApplyRequest) {
    let mut obj = d.object.clone();
    let meta = obj.meta_mut();
    meta.resource_version = None;
    meta.annotations
        .get_or_insert_with(Default::default)
        .insert(MANAGED_BY.into(), MANAGED_BY_SYNC.into());
    let mut declared = d.declared.clone();
    declared["metadata"]["annotations"][MANAGED_BY] = MANAGED_BY_SYNC.into();
    let req = ApplyRequest {
        object: obj.to_value(),
        declared: Some(declared),
        manager: FIELD_MANAGER.into(),
        force: true,
    };
    (obj.key(), req)
}

/// The event's message for an object applied from `source`, with the
/// fields it took back from other writers.
fn applied_message<T: std::fmt::Display>(
    outcome: Outcome,
    source: &impl std::fmt::Display,
    taken_over: &[T],
) -> String {
    if taken_over.is_empty() {
        return format!("{outcome} from {source}");
    }
    let taken: Vec<String> = taken_over.iter().map(T::to_string).collect();
    format!("{outcome} from {source} (took back {})", taken.join(", "))
}

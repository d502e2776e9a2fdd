//! Write transactions: all-or-nothing against conflicts, write failures
//! (ENOSPC) and a writer killed at any point.
//!
//! A transaction holds the store's kernel lock from start to end. Its
//! writes are staged as files under `STORE/.txn/` (readers never look
//! there) and reach their places at [`Txn::commit`]:
//!
//! 1. every staged file is written (and, for [`Durability::Now`], made
//!    durable);
//! 2. a transaction of more than one change writes its commit record
//!    `STORE/.txn/<id>.commit` (the list of renames and removals), durably:
//!    from then on the transaction is committed;
//! 3. the staged files are renamed into place and removed files removed;
//! 4. the record is removed.
//!
//! The next transaction (or [`Store::open`]) that finds anything under
//! `.txn/` was started by a writer that died (or failed mid-commit): a
//! record is rolled forward (its steps are idempotent), staged files
//! without a record are rolled back (deleted). A failure before the record
//! exists leaves nothing behind; one after it is completed by the next
//! writer. A single change needs no record: its rename is atomic by itself.

use super::local::{Raw, Result, Store, StoreError, io};
use crate::api::ObjectKey;
use crate::fsutil;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// The staging directory, inside the store.
pub(super) const TXN_DIR: &str = ".txn";

/// Above this many staged files one `syncfs` is cheaper than an fsync each.
const SYNCFS_ABOVE: usize = 8;

/// When a write reaches the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Durable when the call returns (fsync of the files and directories).
    Now,
    /// Visible and atomic when the call returns (a process killed at any
    /// point leaves the old or the new state), made durable by a `syncfs`
    /// within [`LAZY_FLUSH`]. For what can be observed again after a power
    /// loss (events, an agent's progress): it keeps fsyncs, and the journal
    /// commits they force, out of the moments an agent is writing its own
    /// files.
    Soon,
}

/// How long a [`Durability::Soon`] write may wait for the disk.
pub const LAZY_FLUSH: std::time::Duration = std::time::Duration::from_millis(500);

/// One step of a commit, paths relative to the store root.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
enum Step {
    /// Rename the staged file `.txn/<staged>` to `path`.
    Put { staged: String, path: String },
    /// Remove `path` (gone already is fine).
    Remove { path: String },
}

/// The commit record of a transaction.
#[derive(Debug, Serialize, Deserialize)]
struct Record {
    steps: Vec<Step>,
}

/// Where an injected crash stops a commit (property tests).
#[cfg(test)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Crash {
    /// Everything staged, no commit record yet.
    BeforeRecord,
    /// The record written, then this many steps done.
    AfterSteps(usize),
}

#[cfg(test)]
thread_local! {
    /// Injected crash for the property tests: the commit stops there, as a
    /// killed writer would, leaving what it staged and recorded.
    pub(super) static CRASH: std::cell::Cell<Option<Crash>> = const { std::cell::Cell::new(None) };
}

#[cfg(test)]
fn injected(at: Crash) -> bool {
    CRASH.with(|c| match (c.get(), at) {
        (Some(Crash::BeforeRecord), Crash::BeforeRecord) => true,
        (Some(Crash::AfterSteps(n)), Crash::AfterSteps(done)) => done >= n,
        _ => false,
    })
}

static TXN_SEQ: AtomicU64 = AtomicU64::new(0);

/// What an etcd transaction read (store-relative key → revision, 0:
/// absent) and writes (None: a delete), one operation per key.
#[derive(Default)]
struct EtcdWrites {
    read: std::collections::BTreeMap<String, i64>,
    /// What was read, as read: a transaction sees one value of each key.
    cache: HashMap<String, Option<Value>>,
    ops: std::collections::BTreeMap<String, Option<Vec<u8>>>,
}

/// A write transaction: holds the store lock until dropped. Writes are
/// staged (visible to reads through the transaction) and made visible
/// together at [`Txn::commit`]; dropped without a commit, it leaves
/// nothing behind.
pub(crate) struct Txn<'a> {
    store: &'a Store,
    /// The writers' lock (local store); None on etcd.
    lock: Option<File>,
    /// What an etcd transaction read and writes; None on the local store.
    etcd: Option<EtcdWrites>,
    counter: u64,
    id: String,
    steps: Vec<Step>,
    /// Staged content by final path (None: removed).
    overlay: HashMap<PathBuf, Option<Value>>,
    dirs_ensured: HashSet<PathBuf>,
    /// Directories this transaction created (their parents must learn of
    /// them durably too).
    dirs_created: BTreeSet<PathBuf>,
    dry_run: bool,
    pub(super) durability: Durability,
}

impl<'a> Txn<'a> {
    /// Takes the store lock, completing or undoing what a dead writer left.
    pub(super) fn begin(store: &'a Store, dry_run: bool) -> Result<Txn<'a>> {
        if store.is_etcd() {
            return Ok(Txn {
                store,
                lock: None,
                etcd: Some(EtcdWrites::default()),
                counter: 0,
                id: String::new(),
                steps: Vec::new(),
                overlay: HashMap::new(),
                dirs_ensured: HashSet::new(),
                dirs_created: BTreeSet::new(),
                dry_run,
                durability: Durability::Now,
            });
        }
        let path = store.root().join(".lock");
        let mut lock = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io(&path))?;
        lock.lock().map_err(io(&path))?;
        let mut s = String::new();
        lock.read_to_string(&mut s).map_err(io(&path))?;
        let counter = s.trim().parse().unwrap_or(0);
        recover(store.root())?;
        Ok(Txn {
            store,
            lock: Some(lock),
            etcd: None,
            counter,
            id: format!(
                "{}-{}",
                std::process::id(),
                TXN_SEQ.fetch_add(1, Ordering::Relaxed)
            ),
            steps: Vec::new(),
            overlay: HashMap::new(),
            dirs_ensured: HashSet::new(),
            dirs_created: BTreeSet::new(),
            dry_run,
            durability: Durability::Now,
        })
    }

    pub(super) fn next_rv(&mut self) -> String {
        if self.etcd.is_some() {
            // The commit's revision, known once committed (see `stamp`).
            return super::backend::PENDING_RV.to_string();
        }
        let now_us = k8s_openapi::jiff::Timestamp::now().as_microsecond().max(0) as u64;
        self.counter = (self.counter + 1).max(now_us);
        self.counter.to_string()
    }

    /// Reads a file as this transaction sees it.
    pub(super) fn read_json(&mut self, path: &Path) -> Result<Option<Value>> {
        if let Some(v) = self.overlay.get(path) {
            return Ok(v.clone());
        }
        let Some(w) = &mut self.etcd else {
            return Store::read_json(path);
        };
        let rel = self.store.rel_key(path)?;
        if let Some(doc) = w.cache.get(&rel) {
            return Ok(doc.clone());
        }
        let (doc, revision) = self.store.read_doc(path)?;
        // The commit holds only if what was read is still there as read.
        w.read.insert(rel.clone(), revision);
        w.cache.insert(rel, doc.clone());
        Ok(doc)
    }

    /// Reads the documents of `keys` ahead, in few requests (etcd; the
    /// local store reads files as asked): what the transaction reads of
    /// them later comes from what was read here.
    pub(super) fn prefetch(&mut self, keys: &[ObjectKey]) -> Result<()> {
        let Some(etcd) = self.store.etcd() else {
            return Ok(());
        };
        let mut paths = Vec::with_capacity(keys.len() * 2);
        for k in keys {
            paths.push(self.store.spec_path(k)?);
            paths.push(self.store.status_path(k)?);
        }
        let Some(w) = &self.etcd else { return Ok(()) };
        let mut wanted = Vec::new();
        for p in paths {
            let rel = self.store.rel_key(&p)?;
            if !w.cache.contains_key(&rel) && !self.overlay.contains_key(&p) {
                wanted.push((p, rel));
            }
        }
        let rels: Vec<String> = wanted.iter().map(|(_, r)| r.clone()).collect();
        let got = etcd.get_many(&rels)?;
        let w = self.etcd.as_mut().expect("checked above");
        for ((path, rel), kv) in wanted.into_iter().zip(got) {
            let (doc, revision) = match kv {
                Some(kv) => {
                    match super::backend::parse_doc(&path, &rel, &kv.value, kv.mod_revision) {
                        Ok(doc) => (Some(doc), kv.mod_revision),
                        // Told when the object itself is read (with its place
                        // in the batch).
                        Err(_) => continue,
                    }
                }
                None => (None, 0),
            };
            w.read.insert(rel.clone(), revision);
            w.cache.insert(rel, doc);
        }
        Ok(())
    }

    pub(super) fn read_raw(&mut self, key: &ObjectKey) -> Result<Option<Raw>> {
        let Some(spec_doc) = self.read_json(&self.store.spec_path(key)?)? else {
            return Ok(None);
        };
        let status_doc = self.read_json(&self.store.status_path(key)?)?;
        Ok(Some(Raw {
            spec_doc,
            status_doc,
        }))
    }

    fn relative(&self, path: &Path) -> Result<String> {
        path.strip_prefix(self.store.root())
            .ok()
            .and_then(Path::to_str)
            .map(str::to_string)
            .ok_or_else(|| StoreError::Io {
                path: path.to_path_buf(),
                source: std::io::Error::other("a transaction writes only inside its store"),
            })
    }

    /// Stages `v` for `path` (inside the store): written to `.txn/` now,
    /// renamed into place at commit.
    pub(super) fn write_json(&mut self, path: &Path, v: &Value) -> Result<()> {
        let rel = self.relative(path)?;
        self.overlay.insert(path.to_path_buf(), Some(v.clone()));
        if self.dry_run {
            return Ok(());
        }
        if let Some(w) = &mut self.etcd {
            let data = serde_json::to_vec(v).expect("JSON values serialize");
            w.ops.insert(rel, Some(data));
            return Ok(());
        }
        let dir = path.parent().expect("store paths have a parent");
        if !self.dirs_ensured.contains(dir) {
            let missing: Vec<&Path> = dir.ancestors().take_while(|d| !d.exists()).collect();
            fsutil::ensure_dir(dir).map_err(io(dir))?;
            self.dirs_created
                .extend(missing.into_iter().map(Path::to_path_buf));
            self.dirs_ensured.insert(dir.to_path_buf());
        }
        let staging = self.store.root().join(TXN_DIR);
        if self.steps.is_empty() {
            fsutil::ensure_dir(&staging).map_err(io(&staging))?;
        }
        let staged = format!("{}-{}", self.id, self.steps.len());
        let data = serde_json::to_vec_pretty(v).expect("JSON values serialize");
        let staged_path = staging.join(&staged);
        // The step is recorded first: a failed write is removed on drop.
        self.steps.push(Step::Put { staged, path: rel });
        write_new(&staged_path, &data).map_err(io(&staged_path))
    }

    pub(super) fn remove(&mut self, path: &Path) -> Result<()> {
        let rel = self.relative(path)?;
        self.overlay.insert(path.to_path_buf(), None);
        if let Some(w) = &mut self.etcd {
            if !self.dry_run {
                w.ops.insert(rel, None);
            }
            return Ok(());
        }
        if !self.dry_run {
            self.steps.push(Step::Remove { path: rel });
        }
        Ok(())
    }

    pub(super) fn store(&self) -> &Store {
        self.store
    }

    /// Makes the staged changes visible, all or none, and durable as
    /// [`Txn::durability`] says; releases the lock.
    pub(super) fn commit(self) -> Result<()> {
        self.commit_rv().map(drop)
    }

    /// [`Txn::commit`], returning (etcd) the revision it committed at, which
    /// replaces the pending resourceVersion of what it wrote (see
    /// [`super::backend::stamp`]). On etcd, a commit that lost a race to
    /// another writer is [`StoreError::Contended`]: nothing was written.
    pub(super) fn commit_rv(mut self) -> Result<Option<String>> {
        if let Some(w) = self.etcd.take() {
            if self.dry_run || w.ops.is_empty() {
                return Ok(None);
            }
            let etcd = self
                .store
                .etcd()
                .expect("an etcd transaction's store is on etcd");
            let what = w.ops.keys().next().cloned().unwrap_or_default();
            let writes = super::etcd::Writes {
                read: w.read,
                puts: w
                    .ops
                    .iter()
                    .filter_map(|(k, v)| v.clone().map(|v| (k.clone(), v)))
                    .collect(),
                deletes: w
                    .ops
                    .iter()
                    .filter(|(_, v)| v.is_none())
                    .map(|(k, _)| k.clone())
                    .collect(),
            };
            return match etcd.commit(writes)? {
                Some(rev) => Ok(Some(rev.to_string())),
                None => Err(StoreError::Contended(
                    self.store.root().join(what).display().to_string(),
                )),
            };
        }
        self.commit_local().map(|()| None)
    }

    fn commit_local(mut self) -> Result<()> {
        if self.dry_run || self.steps.is_empty() {
            return Ok(());
        }
        let root = self.store.root().to_path_buf();
        let staging = root.join(TXN_DIR);
        let now = self.durability == Durability::Now;
        let puts = self
            .steps
            .iter()
            .filter(|s| matches!(s, Step::Put { .. }))
            .count();
        if now && puts > SYNCFS_ABOVE {
            fsutil::sync_filesystem(&root).map_err(io(&root))?;
        } else if now {
            for s in &self.steps {
                if let Step::Put { staged, .. } = s {
                    let p = staging.join(staged);
                    File::open(&p).and_then(|f| f.sync_all()).map_err(io(&p))?;
                }
            }
        }
        #[cfg(test)]
        if injected(Crash::BeforeRecord) {
            std::mem::take(&mut self.steps); // left staged, as by a killed writer
            return Err(StoreError::Io {
                path: root,
                source: std::io::Error::other("injected crash"),
            });
        }
        let record = (self.steps.len() > 1).then(|| staging.join(format!("{}.commit", self.id)));
        if let Some(r) = &record {
            let data = serde_json::to_vec(&Record {
                steps: self.steps.clone(),
            })
            .expect("records serialize");
            fsutil::write_atomic(r, &data, None, now).map_err(io(r))?;
        }
        // Committed: from here on a failure is completed by the next writer.
        let steps = std::mem::take(&mut self.steps);
        let mut dirs = BTreeSet::new();
        #[cfg_attr(not(test), allow(unused_variables))]
        for (n, step) in steps.iter().enumerate() {
            #[cfg(test)]
            if injected(Crash::AfterSteps(n)) {
                // As a killed writer: the rest is left to recovery.
                return Err(StoreError::Io {
                    path: root,
                    source: std::io::Error::other("injected crash"),
                });
            }
            if let Some(d) = apply_step(&root, step).map_err(|e| unfinished(&root, e))? {
                dirs.insert(d);
            }
        }
        if let Some(r) = &record {
            std::fs::remove_file(r).map_err(|e| unfinished(r, e))?;
            dirs.insert(staging.clone());
        }
        let lock_path = root.join(".lock");
        self.lock
            .as_ref()
            .expect("a local transaction holds the lock")
            .write_all_at(format!("{:<20}\n", self.counter).as_bytes(), 0)
            .map_err(io(&lock_path))?;
        if !now {
            super::flusher::flush_soon(&root);
            return Ok(());
        }
        // A directory created in this transaction must be durable in its
        // parent too.
        for d in std::mem::take(&mut self.dirs_created) {
            dirs.extend(d.parent().map(Path::to_path_buf));
            dirs.insert(d);
        }
        for d in &dirs {
            fsutil::sync_dir(d).map_err(io(d))?;
        }
        Ok(())
    }
}

/// A committed transaction that could not be completed now.
fn unfinished(path: &Path, e: std::io::Error) -> StoreError {
    StoreError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::new(
            e.kind(),
            format!("{e} (the change is committed and completes with the store's next write)"),
        ),
    }
}

impl Drop for Txn<'_> {
    /// An abandoned transaction leaves nothing behind.
    fn drop(&mut self) {
        let staging = self.store.root().join(TXN_DIR);
        for s in &self.steps {
            if let Step::Put { staged, .. } = s {
                let _ = std::fs::remove_file(staging.join(staged));
            }
        }
    }
}

/// Creates `path` with `data` (never replacing a file).
fn write_new(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let r = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .and_then(|mut f| f.write_all(data));
    if r.is_err() {
        let _ = std::fs::remove_file(path);
    }
    r
}

/// One step; returns the directory it changed. Idempotent: a step already
/// done (its staged file gone, its file removed) does nothing.
fn apply_step(root: &Path, step: &Step) -> std::io::Result<Option<PathBuf>> {
    let (path, done) = match step {
        Step::Put { staged, path } => {
            let to = root.join(path);
            match std::fs::rename(root.join(TXN_DIR).join(staged), &to) {
                Ok(()) => (to, false),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => (to, true),
                Err(e) => return Err(e),
            }
        }
        Step::Remove { path } => {
            let p = root.join(path);
            match std::fs::remove_file(&p) {
                Ok(()) => (p, false),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => (p, true),
                Err(e) => return Err(e),
            }
        }
    };
    Ok((!done)
        .then(|| path.parent().map(Path::to_path_buf))
        .flatten())
}

/// What recovery did.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Recovered {
    pub rolled_forward: usize,
    pub rolled_back: usize,
}

/// Completes committed transactions of dead writers and removes what
/// uncommitted ones staged. Called with the store lock held.
pub(super) fn recover(root: &Path) -> Result<Recovered> {
    let staging = root.join(TXN_DIR);
    let mut names: Vec<String> = match std::fs::read_dir(&staging) {
        Ok(rd) => rd
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Recovered::default()),
        Err(e) => return Err(io(&staging)(e)),
    };
    if names.is_empty() {
        return Ok(Recovered::default());
    }
    names.sort();
    let mut out = Recovered::default();
    let mut dirs = BTreeSet::new();
    for name in names.iter().filter(|n| n.ends_with(".commit")) {
        let path = staging.join(name);
        let record: Option<Record> = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        // A record that does not read was never renamed into place: the
        // transaction did not commit.
        if let Some(record) = record {
            for step in &record.steps {
                if !safe_relative(step) {
                    continue;
                }
                if let Some(d) = apply_step(root, step).map_err(io(&path))? {
                    dirs.insert(d);
                }
            }
            tracing::warn!(store = %root.display(), record = %name, steps = record.steps.len(), "completed a transaction a writer left unfinished");
            out.rolled_forward += 1;
        }
        std::fs::remove_file(&path).map_err(io(&path))?;
    }
    // What is left was staged by transactions that never committed.
    for e in std::fs::read_dir(&staging)
        .map_err(io(&staging))?
        .filter_map(|e| e.ok())
    {
        let p = e.path();
        match std::fs::remove_file(&p) {
            Ok(()) => out.rolled_back += 1,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(io(&p)(err)),
        }
    }
    if out.rolled_back > 0 {
        tracing::info!(store = %root.display(), files = out.rolled_back, "removed what unfinished writers had staged");
    }
    dirs.insert(staging);
    for d in &dirs {
        fsutil::sync_dir(d).map_err(io(d))?;
    }
    Ok(out)
}

/// A record's paths stay inside the store (a damaged or forged record must
/// not move files elsewhere).
fn safe_relative(step: &Step) -> bool {
    let ok = |p: &str| {
        let p = Path::new(p);
        !p.as_os_str().is_empty()
            && p.components()
                .all(|c| matches!(c, std::path::Component::Normal(_)))
    };
    match step {
        Step::Put { staged, path } => ok(path) && ok(staged) && !staged.contains('/'),
        Step::Remove { path } => ok(path),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(staged: &str, path: &str) -> Step {
        Step::Put {
            staged: staged.into(),
            path: path.into(),
        }
    }

    #[test]
    fn recovery_rolls_a_record_forward_and_the_rest_back() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        let staging = root.join(TXN_DIR);
        std::fs::create_dir_all(root.join("a")).unwrap();
        std::fs::create_dir_all(&staging).unwrap();
        std::fs::write(root.join("a/gone.json"), "old").unwrap();
        std::fs::write(root.join("a/x.json"), "old").unwrap();
        // Committed: x is still staged, y was renamed already.
        std::fs::write(staging.join("1-0"), "new x").unwrap();
        std::fs::write(root.join("a/y.json"), "new y").unwrap();
        let record = Record {
            steps: vec![
                put("1-0", "a/x.json"),
                put("1-1", "a/y.json"),
                Step::Remove {
                    path: "a/gone.json".into(),
                },
            ],
        };
        std::fs::write(
            staging.join("1.commit"),
            serde_json::to_vec(&record).unwrap(),
        )
        .unwrap();
        // Not committed: its staged file goes.
        std::fs::write(staging.join("2-0"), "never").unwrap();
        let r = recover(root).unwrap();
        assert_eq!(
            r,
            Recovered {
                rolled_forward: 1,
                rolled_back: 1
            }
        );
        assert_eq!(
            std::fs::read_to_string(root.join("a/x.json")).unwrap(),
            "new x"
        );
        assert_eq!(
            std::fs::read_to_string(root.join("a/y.json")).unwrap(),
            "new y"
        );
        assert!(!root.join("a/gone.json").exists());
        assert_eq!(std::fs::read_dir(&staging).unwrap().count(), 0);
        // Nothing to do the second time.
        assert_eq!(recover(root).unwrap(), Recovered::default());
    }

    #[test]
    fn records_cannot_reach_outside_the_store() {
        assert!(!safe_relative(&put("1-0", "../x")));
        assert!(!safe_relative(&put("1-0", "/etc/x")));
        assert!(!safe_relative(&put("../1-0", "a/x.json")));
        assert!(safe_relative(&put("1-0", "tasks/default/a.json")));
    }
}

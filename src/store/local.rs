use crate::api::{API_VERSION, Kind, Object, ObjectKey};
use crate::fsutil;
use serde_json::{Map, Value, json};
use std::collections::BTreeSet;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "{key}: conflict: the object has been modified (resourceVersion is {actual}, the write carried {expected}); read it again and retry"
    )]
    Conflict {
        key: ObjectKey,
        expected: String,
        actual: String,
    },
    #[error("{0} not found")]
    NotFound(ObjectKey),
    #[error("{0} already exists")]
    AlreadyExists(ObjectKey),
    #[error("{key}: {message}")]
    Invalid { key: ObjectKey, message: String },
    /// An apply would change fields other writers own.
    #[error("{key}: {conflicts}")]
    FieldConflicts {
        key: ObjectKey,
        conflicts: super::ownership::Conflicts,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: stored object cannot be read: {message}")]
    Corrupt { path: PathBuf, message: String },
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What an apply did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Created,
    Configured,
    Unchanged,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Outcome::Created => "created",
            Outcome::Configured => "configured",
            Outcome::Unchanged => "unchanged",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteOutcome {
    Deleted,
    /// Finalizers remain: `deletionTimestamp` is set, the object stays until
    /// they are removed.
    Terminating,
}

/// A handle on a store directory. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    root: Arc<PathBuf>,
}

/// A write transaction: holds the store lock until dropped. Writes are
/// staged (visible to reads through the transaction) and made durable and
/// visible together at [`Txn::commit`].
pub(super) struct Txn<'a> {
    store: &'a Store,
    lock: File,
    counter: u64,
    ops: Vec<Op>,
    /// Staged content by final path (None: removed).
    overlay: std::collections::HashMap<PathBuf, Option<Value>>,
    dirs_ensured: std::collections::HashSet<PathBuf>,
    /// Directories this transaction created (their parents must learn of
    /// them durably too).
    dirs_created: BTreeSet<PathBuf>,
    dry_run: bool,
    pub(super) durability: Durability,
}

/// When a write reaches the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Durable when the call returns (fsync of the files and directories).
    Now,
    /// Visible and atomic when the call returns (temp file and rename: a
    /// process killed at any point leaves the old or the new file), made
    /// durable by a `syncfs` within [`LAZY_FLUSH`]. For what can be
    /// observed again after a power loss (events, an agent's progress):
    /// it keeps fsyncs, and the journal commits they force, out of the
    /// moments an agent is writing its own files.
    Soon,
}

/// How long a [`Durability::Soon`] write may wait for the disk.
pub const LAZY_FLUSH: std::time::Duration = std::time::Duration::from_millis(500);

enum Op {
    Write { tmp: PathBuf, path: PathBuf },
    Remove(PathBuf),
}

/// Above this many staged files one `syncfs` is cheaper than an fsync each.
const SYNCFS_ABOVE: usize = 8;

impl Txn<'_> {
    pub(super) fn next_rv(&mut self) -> String {
        let now_us = k8s_openapi::jiff::Timestamp::now().as_microsecond().max(0) as u64;
        self.counter = (self.counter + 1).max(now_us);
        self.counter.to_string()
    }

    /// Reads a file as this transaction sees it.
    pub(super) fn read_json(&self, path: &Path) -> Result<Option<Value>> {
        match self.overlay.get(path) {
            Some(v) => Ok(v.clone()),
            None => Store::read_json(path),
        }
    }

    pub(super) fn read_raw(&self, key: &ObjectKey) -> Result<Option<Raw>> {
        let Some(spec_doc) = self.read_json(&self.store.spec_path(key))? else {
            return Ok(None);
        };
        let status_doc = self.read_json(&self.store.status_path(key))?;
        Ok(Some(Raw {
            spec_doc,
            status_doc,
        }))
    }

    /// Stages `v` for `path`: written to a hidden temp file now, renamed
    /// into place at commit.
    pub(super) fn write_json(&mut self, path: &Path, v: &Value) -> Result<()> {
        self.overlay.insert(path.to_path_buf(), Some(v.clone()));
        if self.dry_run {
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
        let data = serde_json::to_vec_pretty(v).expect("JSON values serialize");
        let tmp = fsutil::write_temp(path, &data, None).map_err(io(path))?;
        self.ops.push(Op::Write {
            tmp,
            path: path.to_path_buf(),
        });
        Ok(())
    }

    pub(super) fn remove(&mut self, path: &Path) -> Result<()> {
        self.overlay.insert(path.to_path_buf(), None);
        if !self.dry_run {
            self.ops.push(Op::Remove(path.to_path_buf()));
        }
        Ok(())
    }

    pub(super) fn store(&self) -> &Store {
        self.store
    }

    /// Makes the staged writes durable, then visible (renames, in order),
    /// then the renames durable; releases the lock. A crash at any point
    /// leaves each file either old or new, never torn.
    pub(super) fn commit(mut self) -> Result<()> {
        if self.dry_run || self.ops.is_empty() {
            return Ok(());
        }
        let now = self.durability == Durability::Now;
        let writes = self
            .ops
            .iter()
            .filter(|o| matches!(o, Op::Write { .. }))
            .count();
        if now && writes > SYNCFS_ABOVE {
            fsutil::sync_filesystem(&self.store.root).map_err(io(&self.store.root))?;
        } else if now {
            for op in &self.ops {
                if let Op::Write { tmp, .. } = op {
                    File::open(tmp)
                        .and_then(|f| f.sync_all())
                        .map_err(io(tmp))?;
                }
            }
        }
        let mut dirs = BTreeSet::new();
        for op in std::mem::take(&mut self.ops) {
            match op {
                Op::Write { tmp, path } => {
                    std::fs::rename(&tmp, &path).map_err(io(&path))?;
                    dirs.insert(
                        path.parent()
                            .expect("store paths have a parent")
                            .to_path_buf(),
                    );
                }
                Op::Remove(path) => match std::fs::remove_file(&path) {
                    Ok(()) => {
                        dirs.insert(
                            path.parent()
                                .expect("store paths have a parent")
                                .to_path_buf(),
                        );
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io(&path)(e)),
                },
            }
        }
        let lock_path = self.store.root.join(".lock");
        self.lock
            .write_all_at(format!("{:<20}\n", self.counter).as_bytes(), 0)
            .map_err(io(&lock_path))?;
        if !now {
            super::flusher::flush_soon(&self.store.root);
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

impl Drop for Txn<'_> {
    /// An abandoned transaction leaves nothing behind.
    fn drop(&mut self) {
        for op in &self.ops {
            if let Op::Write { tmp, .. } = op {
                let _ = std::fs::remove_file(tmp);
            }
        }
    }
}

fn rv_of(v: &Value) -> u64 {
    v.pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// An object as stored: the spec document and the status document.
pub(super) struct Raw {
    pub spec_doc: Value,
    pub status_doc: Option<Value>,
}

impl Raw {
    /// The whole object, with the resourceVersion of its latest write.
    pub fn merged(self) -> Value {
        let mut obj = self.spec_doc;
        if let Some(st) = self.status_doc {
            let status_rv = st
                .get("resourceVersion")
                .and_then(Value::as_str)
                .and_then(|s| s.parse::<u64>().ok())
                .unwrap_or(0);
            if status_rv > rv_of(&obj) {
                obj["metadata"]["resourceVersion"] = json!(status_rv.to_string());
            }
            if let Some(s) = st.get("status")
                && !s.is_null()
            {
                obj["status"] = s.clone();
            }
        }
        obj
    }
}

impl Store {
    /// Opens (creating if needed) the store at `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Store> {
        let root: PathBuf = root.into();
        fsutil::ensure_dir(&root).map_err(io(&root))?;
        let lock = root.join(".lock");
        if !lock.exists() {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&lock)
                .map_err(io(&lock))?;
        }
        Ok(Store {
            root: Arc::new(root),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub(super) fn kind_dir(&self, kind: Kind) -> PathBuf {
        self.root.join(kind.plural())
    }

    pub(super) fn spec_path(&self, key: &ObjectKey) -> PathBuf {
        self.kind_dir(key.kind)
            .join(&key.namespace)
            .join(format!("{}.json", key.name))
    }

    fn status_path(&self, key: &ObjectKey) -> PathBuf {
        self.kind_dir(key.kind)
            .join(&key.namespace)
            .join(format!("{}.status.json", key.name))
    }

    pub(super) fn txn(&self, dry_run: bool) -> Result<Txn<'_>> {
        let path = self.root.join(".lock");
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
        Ok(Txn {
            store: self,
            lock,
            counter,
            ops: Vec::new(),
            overlay: std::collections::HashMap::new(),
            dirs_ensured: std::collections::HashSet::new(),
            dirs_created: BTreeSet::new(),
            dry_run,
            durability: Durability::Now,
        })
    }

    pub(super) fn read_json(path: &Path) -> Result<Option<Value>> {
        match std::fs::read(path) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| StoreError::Corrupt {
                    path: path.to_path_buf(),
                    message: e.to_string(),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(path)(e)),
        }
    }

    pub(super) fn read_raw(&self, key: &ObjectKey) -> Result<Option<Raw>> {
        let Some(spec_doc) = Self::read_json(&self.spec_path(key))? else {
            return Ok(None);
        };
        let status_doc = Self::read_json(&self.status_path(key))?;
        Ok(Some(Raw {
            spec_doc,
            status_doc,
        }))
    }

    /// The whole object (spec, metadata and status), or None.
    pub fn get(&self, key: &ObjectKey) -> Result<Option<Value>> {
        Ok(self.read_raw(key)?.map(Raw::merged))
    }

    /// Namespaces that hold objects of `kind`.
    pub fn namespaces(&self, kind: Kind) -> Result<Vec<String>> {
        let dir = self.kind_dir(kind);
        let mut out = Vec::new();
        match std::fs::read_dir(&dir) {
            Ok(rd) => {
                for e in rd {
                    let e = e.map_err(io(&dir))?;
                    if let Some(n) = e.file_name().to_str()
                        && !n.starts_with('.')
                        && e.path().is_dir()
                    {
                        out.push(n.to_string());
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&dir)(e)),
        }
        out.sort();
        Ok(out)
    }

    /// Every object of `kind`, in one namespace or (None) all, sorted by
    /// namespace and name.
    pub fn list(&self, kind: Kind, namespace: Option<&str>) -> Result<Vec<Value>> {
        let namespaces = match namespace {
            Some(ns) => vec![ns.to_string()],
            None => self.namespaces(kind)?,
        };
        let mut out = Vec::new();
        for ns in namespaces {
            let dir = self.kind_dir(kind).join(&ns);
            let rd = match std::fs::read_dir(&dir) {
                Ok(rd) => rd,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io(&dir)(e)),
            };
            let mut names = Vec::new();
            let mut with_status = std::collections::HashSet::new();
            for e in rd {
                let e = e.map_err(io(&dir))?;
                let fname = e.file_name();
                let Some(f) = fname.to_str() else { continue };
                if f.starts_with('.') {
                    continue;
                }
                if let Some(n) = f.strip_suffix(".status.json") {
                    with_status.insert(n.to_string());
                } else if let Some(n) = f.strip_suffix(".json") {
                    names.push(n.to_string());
                }
            }
            names.sort();
            for name in names {
                let spec_path = dir.join(format!("{name}.json"));
                let Some(spec_doc) = Self::read_json(&spec_path)? else {
                    continue; // deleted since the listing
                };
                let status_doc = if with_status.contains(&name) {
                    Self::read_json(&dir.join(format!("{name}.status.json")))?
                } else {
                    None
                };
                out.push(
                    Raw {
                        spec_doc,
                        status_doc,
                    }
                    .merged(),
                );
            }
        }
        Ok(out)
    }

    pub(super) fn check_precondition(
        key: &ObjectKey,
        current: Option<&Value>,
        expected: Option<&str>,
    ) -> Result<()> {
        let Some(expected) = expected else {
            return Ok(());
        };
        let actual = current.map(|c| rv_of(c).to_string());
        if actual.as_deref() != Some(expected) {
            return Err(StoreError::Conflict {
                key: key.clone(),
                expected: expected.to_string(),
                actual: actual.unwrap_or_else(|| "(deleted)".into()),
            });
        }
        Ok(())
    }

    /// Creates or updates the object declared by `desired` (a whole object
    /// as JSON, as decoded from a manifest), as [`DEFAULT_MANAGER`]
    /// applying all its fields: see [`Store::apply_request`].
    pub fn apply(&self, desired: &Value, dry_run: bool) -> Result<(Outcome, Value)> {
        let r = self.apply_request(&ApplyRequest::whole(desired), dry_run)?;
        Ok((r.outcome, r.object))
    }

    /// Creates or updates an object by server-side apply (see
    /// [`super::ownership`]): the declared fields take their values, the
    /// manager's fields it no longer declares go, everything else (other
    /// writers' fields, status, server-set metadata) is kept. A
    /// `metadata.resourceVersion` in the object is a precondition.
    pub fn apply_request(&self, req: &ApplyRequest, dry_run: bool) -> Result<ApplyResult> {
        let mut txn = self.txn(dry_run)?;
        let r = txn_apply(&mut txn, req)?;
        txn.commit()?;
        Ok(r)
    }

    /// Creates the object declared by `desired`; fails with
    /// [`StoreError::AlreadyExists`] when one of that kind and name is
    /// there (checked under the lock, so two creators never both succeed).
    pub fn create(&self, desired: &Value) -> Result<Value> {
        self.create_as(&ApplyRequest::whole(desired))
    }

    /// [`Store::create`] of an apply request (its manager owns the fields
    /// it declares).
    pub fn create_as(&self, req: &ApplyRequest) -> Result<Value> {
        let mut txn = self.txn(false)?;
        let key = key_of_desired(&req.object);
        if txn.read_raw(&key)?.is_some() {
            return Err(StoreError::AlreadyExists(key));
        }
        let r = txn_apply(&mut txn, req)?;
        txn.commit()?;
        Ok(r.object)
    }

    /// Applies many objects under one lock (all-or-nothing is the caller's
    /// job: validate first). Stops at the first error, reporting the
    /// outcomes so far.
    pub fn apply_all(
        &self,
        desired: &[Value],
        dry_run: bool,
    ) -> (Vec<(Outcome, Value)>, Option<StoreError>) {
        let reqs: Vec<ApplyRequest> = desired.iter().map(ApplyRequest::whole).collect();
        let (done, err) = self.apply_requests(&reqs, dry_run);
        (
            done.into_iter().map(|r| (r.outcome, r.object)).collect(),
            err,
        )
    }

    /// [`Store::apply_request`] for many objects under one lock.
    pub fn apply_requests(
        &self,
        reqs: &[ApplyRequest],
        dry_run: bool,
    ) -> (Vec<ApplyResult>, Option<StoreError>) {
        let mut txn = match self.txn(dry_run) {
            Ok(t) => t,
            Err(e) => return (vec![], Some(e)),
        };
        let mut done = Vec::new();
        for r in reqs {
            match txn_apply(&mut txn, r) {
                Ok(r) => done.push(r),
                Err(e) => {
                    let _ = txn.commit();
                    return (done, Some(e));
                }
            }
        }
        let err = txn.commit().err();
        (done, err)
    }

    /// Replaces the status of an object. With `expected_rv`, fails with a
    /// conflict unless the object is still at that version. Never touches
    /// the spec.
    pub fn write_status(
        &self,
        key: &ObjectKey,
        status: &Value,
        expected_rv: Option<&str>,
    ) -> Result<Value> {
        self.write_status_as(key, status, expected_rv, Durability::Now)
    }

    /// [`Store::write_status`] with a choice of [`Durability`].
    pub fn write_status_as(
        &self,
        key: &ObjectKey,
        status: &Value,
        expected_rv: Option<&str>,
        durability: Durability,
    ) -> Result<Value> {
        let mut txn = self.txn(false)?;
        txn.durability = durability;
        let obj = self.status_in(&mut txn, key, status, expected_rv)?;
        txn.commit()?;
        Ok(obj)
    }

    /// The status write, staged in `txn`.
    pub(super) fn status_in(
        &self,
        txn: &mut Txn<'_>,
        key: &ObjectKey,
        status: &Value,
        expected_rv: Option<&str>,
    ) -> Result<Value> {
        let raw = txn
            .read_raw(key)?
            .ok_or_else(|| StoreError::NotFound(key.clone()))?;
        let current = raw.merged();
        Self::check_precondition(key, Some(&current), expected_rv)?;
        if current.get("status").unwrap_or(&Value::Null) == status {
            return Ok(current);
        }
        let rv = txn.next_rv();
        let path = self.status_path(key);
        txn.write_json(&path, &json!({"resourceVersion": rv, "status": status}))?;
        let mut obj = current;
        obj["metadata"]["resourceVersion"] = json!(rv);
        obj["status"] = status.clone();
        Ok(obj)
    }

    /// [`Store::update_metadata`] then [`Store::write_status`], in one
    /// transaction (one wait for the disk): both happen or neither. None
    /// when the metadata change completed a deletion.
    pub fn update_metadata_and_status(
        &self,
        key: &ObjectKey,
        expected_rv: Option<&str>,
        f: impl FnOnce(&mut Map<String, Value>),
        status: &Value,
    ) -> Result<Option<Value>> {
        let mut txn = self.txn(false)?;
        let out = match self.metadata_in(&mut txn, key, expected_rv, f)? {
            Some(_) => Some(self.status_in(&mut txn, key, status, None)?),
            None => None,
        };
        txn.commit()?;
        Ok(out)
    }

    /// Changes metadata (labels, annotations, finalizers) under the lock.
    /// When the object is terminating and its last finalizer goes, it is
    /// removed.
    pub fn update_metadata(
        &self,
        key: &ObjectKey,
        expected_rv: Option<&str>,
        f: impl FnOnce(&mut Map<String, Value>),
    ) -> Result<Option<Value>> {
        let mut txn = self.txn(false)?;
        let out = self.metadata_in(&mut txn, key, expected_rv, f)?;
        txn.commit()?;
        Ok(out)
    }

    /// The metadata change, staged in `txn`.
    fn metadata_in(
        &self,
        txn: &mut Txn<'_>,
        key: &ObjectKey,
        expected_rv: Option<&str>,
        f: impl FnOnce(&mut Map<String, Value>),
    ) -> Result<Option<Value>> {
        let raw = txn
            .read_raw(key)?
            .ok_or_else(|| StoreError::NotFound(key.clone()))?;
        let status_doc = raw.status_doc.clone();
        let current = raw.merged();
        Self::check_precondition(key, Some(&current), expected_rv)?;
        let mut spec_doc = current.clone();
        spec_doc
            .as_object_mut()
            .expect("objects are maps")
            .remove("status");
        let meta = spec_doc["metadata"]
            .as_object_mut()
            .expect("metadata is a map");
        let before = meta.clone();
        f(meta);
        for k in [
            "name",
            "namespace",
            "uid",
            "creationTimestamp",
            "generation",
            "resourceVersion",
        ] {
            match before.get(k) {
                Some(v) => meta.insert(k.to_string(), v.clone()),
                None => meta.remove(k),
            };
        }
        drop_empty(meta, "finalizers");
        drop_empty(meta, "labels");
        drop_empty(meta, "annotations");
        if *meta == before {
            return Ok(Some(current));
        }
        let terminating = meta.contains_key("deletionTimestamp");
        let no_finalizers = !meta.contains_key("finalizers");
        if terminating && no_finalizers {
            txn.remove(&self.status_path(key))?;
            super::events::remove(txn, key)?;
            txn.remove(&self.spec_path(key))?;
            return Ok(None);
        }
        let rv = txn.next_rv();
        spec_doc["metadata"]["resourceVersion"] = json!(rv);
        txn.write_json(&self.spec_path(key), &spec_doc)?;
        Ok(Some(
            Raw {
                spec_doc,
                status_doc,
            }
            .merged(),
        ))
    }

    /// Deletes an object (or marks it terminating when it has finalizers).
    pub fn delete(
        &self,
        key: &ObjectKey,
        expected_rv: Option<&str>,
        dry_run: bool,
    ) -> Result<DeleteOutcome> {
        let mut txn = self.txn(dry_run)?;
        let raw = txn
            .read_raw(key)?
            .ok_or_else(|| StoreError::NotFound(key.clone()))?;
        let current = raw.merged();
        Self::check_precondition(key, Some(&current), expected_rv)?;
        let has_finalizers = current
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .is_some_and(|a| !a.is_empty());
        if has_finalizers {
            if current.pointer("/metadata/deletionTimestamp").is_none() {
                let mut spec_doc = current;
                spec_doc
                    .as_object_mut()
                    .expect("objects are maps")
                    .remove("status");
                spec_doc["metadata"]["deletionTimestamp"] =
                    serde_json::to_value(crate::api::now()).expect("time serializes");
                spec_doc["metadata"]["resourceVersion"] = json!(txn.next_rv());
                txn.write_json(&self.spec_path(key), &spec_doc)?;
            }
            txn.commit()?;
            return Ok(DeleteOutcome::Terminating);
        }
        txn.remove(&self.status_path(key))?;
        super::events::remove(&mut txn, key)?;
        txn.remove(&self.spec_path(key))?;
        txn.commit()?;
        Ok(DeleteOutcome::Deleted)
    }

    /// A typed view of one kind in one namespace (None: all namespaces, for
    /// reading).
    pub fn api<K: Object>(&self, namespace: Option<&str>) -> Api<K> {
        Api {
            store: self.clone(),
            namespace: namespace.map(str::to_string),
            _k: std::marker::PhantomData,
        }
    }
}

fn drop_empty(meta: &mut Map<String, Value>, field: &str) {
    let empty = match meta.get(field) {
        Some(Value::Array(a)) => a.is_empty(),
        Some(Value::Object(o)) => o.is_empty(),
        Some(Value::Null) => true,
        _ => false,
    };
    if empty {
        meta.remove(field);
    }
}

/// The key of a decoded object (as `apply` and `create` take them).
fn key_of_desired(desired: &Value) -> ObjectKey {
    let kind = desired
        .get("kind")
        .and_then(Value::as_str)
        .and_then(Kind::from_kind_field)
        .expect("apply takes decoded objects");
    let meta = &desired["metadata"];
    ObjectKey::new(
        kind,
        meta["namespace"]
            .as_str()
            .unwrap_or(crate::api::DEFAULT_NAMESPACE),
        meta["name"].as_str().expect("decoded objects have a name"),
    )
}

/// An apply: the object (decoded and valid), the fields its manifest set
/// (None: all of them), and who applies it (see [`super::ownership`]).
#[derive(Debug, Clone)]
pub struct ApplyRequest {
    pub object: Value,
    pub declared: Option<Value>,
    pub manager: String,
    /// Take over fields other managers set to other values, instead of
    /// failing with [`StoreError::FieldConflicts`].
    pub force: bool,
}

/// The field manager of writes that name none.
pub const DEFAULT_MANAGER: &str = "claude-failover";

impl ApplyRequest {
    /// All of `object`'s fields, by [`DEFAULT_MANAGER`].
    pub fn whole(object: &Value) -> ApplyRequest {
        ApplyRequest {
            object: object.clone(),
            declared: None,
            manager: DEFAULT_MANAGER.into(),
            force: false,
        }
    }
}

/// What one apply did.
#[derive(Debug, Clone)]
pub struct ApplyResult {
    pub outcome: Outcome,
    pub object: Value,
    /// Fields a forced apply took over from other managers.
    pub taken_over: Vec<super::ownership::Conflict>,
}

fn txn_apply(txn: &mut Txn<'_>, req: &ApplyRequest) -> Result<ApplyResult> {
    use super::ownership;
    let desired = &req.object;
    let declared = req.declared.as_ref().unwrap_or(desired);
    let key = key_of_desired(desired);
    let kind = key.kind;
    let expected = desired["metadata"]
        .get("resourceVersion")
        .and_then(Value::as_str);
    let store = txn.store().clone();
    let spec_path = store.spec_path(&key);
    let existing = txn.read_raw(&key)?;
    let now = crate::api::now();
    let invalid = |message: String| StoreError::Invalid {
        key: key.clone(),
        message,
    };
    let conflicts = |c: ownership::Conflicts| StoreError::FieldConflicts {
        key: key.clone(),
        conflicts: c,
    };
    match existing {
        None => {
            if let Some(exp) = expected {
                return Err(StoreError::Conflict {
                    key,
                    expected: exp.to_string(),
                    actual: "(none: the object does not exist)".into(),
                });
            }
            let skeleton = json!({"apiVersion": API_VERSION, "kind": kind.name(),
                "metadata": {"name": key.name, "namespace": key.namespace}, "spec": {}});
            let applied = ownership::apply(&skeleton, declared, &req.manager, req.force, &now)
                .map_err(conflicts)?;
            let mut doc = ownership::normalize(kind, &applied.doc).map_err(invalid)?;
            let m = doc["metadata"].as_object_mut().expect("metadata is a map");
            drop_empty(m, "finalizers");
            drop_empty(m, "labels");
            drop_empty(m, "annotations");
            m.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
            m.insert(
                "creationTimestamp".into(),
                serde_json::to_value(&now).expect("time serializes"),
            );
            m.insert("generation".into(), json!(1));
            m.insert("resourceVersion".into(), json!(txn.next_rv()));
            // No stale status can be inherited here: deletes remove the
            // status file before the spec file, in one commit.
            txn.write_json(&spec_path, &doc)?;
            Ok(ApplyResult {
                outcome: Outcome::Created,
                object: doc,
                taken_over: applied.taken_over,
            })
        }
        Some(raw) => {
            let status_doc = raw.status_doc.clone();
            let current = raw.merged();
            Store::check_precondition(&key, Some(&current), expected)?;
            if current.pointer("/metadata/deletionTimestamp").is_some() {
                return Err(invalid(
                    "is being deleted (waiting for its finalizers); apply again once it is gone"
                        .into(),
                ));
            }
            let live = raw_spec_doc(&current);
            let applied = ownership::apply(&live, declared, &req.manager, req.force, &now)
                .map_err(conflicts)?;
            let mut doc = ownership::normalize(kind, &applied.doc).map_err(invalid)?;
            let m = doc["metadata"].as_object_mut().expect("metadata is a map");
            drop_empty(m, "finalizers");
            drop_empty(m, "labels");
            drop_empty(m, "annotations");
            let result = |outcome, object| ApplyResult {
                outcome,
                object,
                taken_over: applied.taken_over.clone(),
            };
            if doc == live {
                return Ok(result(Outcome::Unchanged, current));
            }
            let without_owners = |v: &Value| {
                let mut v = v.clone();
                if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
                    m.remove(ownership::MANAGED_FIELDS);
                }
                v
            };
            let changed = without_owners(&doc) != without_owners(&live);
            if doc["spec"] != live["spec"] {
                let g = live["metadata"]["generation"].as_i64().unwrap_or(0);
                doc["metadata"]["generation"] = json!(g + 1);
            }
            doc["metadata"]["resourceVersion"] = json!(txn.next_rv());
            txn.write_json(&spec_path, &doc)?;
            let object = Raw {
                spec_doc: doc,
                status_doc,
            }
            .merged();
            // Only the record of who owns what changed: nothing to report.
            let outcome = if changed {
                Outcome::Configured
            } else {
                Outcome::Unchanged
            };
            Ok(result(outcome, object))
        }
    }
}

/// The spec document of a merged object: without status, with the spec
/// file's own resourceVersion irrelevant (it is rewritten on every write).
fn raw_spec_doc(current: &Value) -> Value {
    let mut doc = current.clone();
    doc.as_object_mut()
        .expect("objects are maps")
        .remove("status");
    doc
}

/// A typed view over one kind, like kube's `Api<K>`.
#[derive(Clone, Debug)]
pub struct Api<K> {
    store: Store,
    namespace: Option<String>,
    _k: std::marker::PhantomData<fn() -> K>,
}

impl<K: Object> Api<K> {
    pub(super) fn key(&self, name: &str) -> ObjectKey {
        ObjectKey::new(
            K::KIND,
            self.namespace
                .as_deref()
                .unwrap_or(crate::api::DEFAULT_NAMESPACE),
            name,
        )
    }

    pub(super) fn decode(&self, v: Value) -> Result<K> {
        serde_json::from_value(v).map_err(|e| StoreError::Corrupt {
            path: self.store.kind_dir(K::KIND),
            message: e.to_string(),
        })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn get(&self, name: &str) -> Result<Option<K>> {
        self.store
            .get(&self.key(name))?
            .map(|v| self.decode(v))
            .transpose()
    }

    pub fn list(&self) -> Result<Vec<K>> {
        self.store
            .list(K::KIND, self.namespace.as_deref())?
            .into_iter()
            .map(|v| self.decode(v))
            .collect()
    }

    /// Writes `status` without a precondition (the status is the writer's).
    pub fn patch_status(&self, name: &str, status: &K::Status) -> Result<K> {
        self.patch_status_as(name, status, Durability::Now)
    }

    /// [`Api::patch_status`] with a choice of [`Durability`].
    pub fn patch_status_as(
        &self,
        name: &str,
        status: &K::Status,
        durability: Durability,
    ) -> Result<K> {
        let v = serde_json::to_value(status).expect("status serializes");
        self.decode(
            self.store
                .write_status_as(&self.key(name), &v, None, durability)?,
        )
    }

    /// Writes `obj`'s status, failing with a conflict if `obj` is stale.
    pub fn replace_status(&self, obj: &K) -> Result<K> {
        self.replace_status_as(obj, Durability::Now)
    }

    /// [`Api::replace_status`] with a choice of [`Durability`].
    pub fn replace_status_as(&self, obj: &K, durability: Durability) -> Result<K> {
        let name = obj.meta().name.as_deref().unwrap_or_default();
        let v = serde_json::to_value(obj.status().cloned().unwrap_or_default())
            .expect("status serializes");
        let rv = obj.meta().resource_version.as_deref();
        self.decode(
            self.store
                .write_status_as(&self.key(name), &v, rv, durability)?,
        )
    }

    /// Adds or removes a finalizer. Returns the object, or None when the
    /// removal of the last finalizer completed a deletion.
    pub fn set_finalizer(&self, name: &str, finalizer: &str, present: bool) -> Result<Option<K>> {
        let v = self.store.update_metadata(
            &self.key(name),
            None,
            finalizer_edit(finalizer, present),
        )?;
        v.map(|v| self.decode(v)).transpose()
    }

    /// Adds `finalizer` to `obj` and writes its status, in one transaction,
    /// failing with a conflict if `obj` is stale.
    pub fn add_finalizer_with_status(&self, obj: &K, finalizer: &str) -> Result<Option<K>> {
        let name = obj.meta().name.as_deref().unwrap_or_default();
        let status = serde_json::to_value(obj.status().cloned().unwrap_or_default())
            .expect("status serializes");
        let v = self.store.update_metadata_and_status(
            &self.key(name),
            obj.meta().resource_version.as_deref(),
            finalizer_edit(finalizer, true),
            &status,
        )?;
        v.map(|v| self.decode(v)).transpose()
    }

    pub fn delete(&self, name: &str) -> Result<DeleteOutcome> {
        self.store.delete(&self.key(name), None, false)
    }
}

/// Adds (or removes) one finalizer, keeping the others.
fn finalizer_edit(finalizer: &str, present: bool) -> impl FnOnce(&mut Map<String, Value>) {
    let f = finalizer.to_string();
    move |m| {
        let list = m.entry("finalizers").or_insert_with(|| json!([]));
        let arr = list.as_array_mut().expect("finalizers is a list");
        arr.retain(|x| x.as_str() != Some(&f));
        if present {
            arr.push(json!(f));
        }
    }
}

use super::quarantine::{CorruptObject, Level, Listing, Quarantine};
// What the store's other modules (status patches) take from here.
use super::backend::{Backend, stamp};
use super::txn::Txn;
use crate::api::{Kind, ObjectKey};
use crate::fsutil;
use serde_json::{Map, Value, json};
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
    /// What was handed to the store is not an object it can keep.
    #[error("{0}")]
    Malformed(String),
    /// The store's backend did not answer (etcd without quorum, not
    /// reachable): nothing was written.
    #[error("{location}: the store is unavailable: {message}")]
    Unavailable { location: String, message: String },
    /// Other writers kept changing what a transaction read (etcd): it was
    /// tried [`CONTENDED_TRIES`] times and wrote nothing.
    #[error("{0}: other writers kept changing it; nothing was written, try again")]
    Contended(String),
}

impl StoreError {
    /// The store did not answer (etcd without a quorum): nothing was
    /// written, and the store itself logged the outage once.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Unavailable { .. })
    }
}

/// How many times a transaction that lost a race on etcd is run again on
/// fresh reads before [`StoreError::Contended`] (16 were lost in a row by
/// one of four writers racing on one key on a loaded 2-core machine).
pub const CONTENDED_TRIES: usize = 64;

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

pub(super) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
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

/// A handle on a store: a directory, or an etcd cluster (see
/// docs/store-backends.md). Cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    pub(super) root: Arc<PathBuf>,
    pub(super) quarantine: Quarantine,
    pub(super) backend: Backend,
}

pub(super) fn rv_of(v: &Value) -> u64 {
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

/// Whether `doc`, read from the spec file of `key`, is that object: a
/// mapping of the right kind and name, with a metadata map and a status
/// file that is a mapping too.
pub(super) fn check_shape(key: &ObjectKey, raw: &Raw) -> std::result::Result<(), String> {
    let doc = &raw.spec_doc;
    if !doc.is_object() {
        return Err("not a JSON object".into());
    }
    if doc.get("kind").and_then(Value::as_str) != Some(key.kind.name()) {
        return Err(format!("its kind is not {}", key.kind));
    }
    if !doc.get("metadata").is_some_and(Value::is_object) {
        return Err("it has no metadata".into());
    }
    if doc.pointer("/metadata/name").and_then(Value::as_str) != Some(&key.name) {
        return Err(format!("its metadata.name is not {}", key.name));
    }
    if raw.status_doc.as_ref().is_some_and(|s| !s.is_object()) {
        return Err("its status file is not a JSON object".into());
    }
    Ok(())
}

impl Store {
    /// Opens (creating if needed, mode 0700) the store at `root`, and
    /// completes or undoes what writers that died left unfinished.
    pub fn open(root: impl Into<PathBuf>) -> Result<Store> {
        let root: PathBuf = root.into();
        create_private_dir(&root).map_err(io(&root))?;
        let store = Store {
            root: Arc::new(root),
            quarantine: Quarantine::default(),
            backend: Backend::Local,
        };
        // Taking the lock recovers; a dry run writes nothing.
        drop(Txn::begin(&store, true)?);
        Ok(store)
    }

    /// The store's directory, or (etcd) its URL as a path: what errors
    /// name.
    pub fn root(&self) -> &Path {
        &self.root
    }

    pub(super) fn quarantine(&self) -> &Quarantine {
        &self.quarantine
    }

    pub(super) fn kind_dir(&self, kind: Kind) -> PathBuf {
        self.root.join(kind.plural())
    }

    /// The spec file of a key already checked (one found by a listing).
    pub(super) fn spec_file(&self, key: &ObjectKey) -> PathBuf {
        self.kind_dir(key.kind)
            .join(&key.namespace)
            .join(format!("{}.json", key.name))
    }

    pub(super) fn spec_path(&self, key: &ObjectKey) -> Result<PathBuf> {
        super::names::check_key(key)?;
        Ok(self.spec_file(key))
    }

    pub(super) fn status_path(&self, key: &ObjectKey) -> Result<PathBuf> {
        super::names::check_key(key)?;
        Ok(self
            .kind_dir(key.kind)
            .join(&key.namespace)
            .join(format!("{}.status.json", key.name)))
    }

    pub(super) fn txn(&self, dry_run: bool) -> Result<Txn<'_>> {
        Txn::begin(self, dry_run)
    }

    /// Reads one JSON file: None when it is not there; a file that is not
    /// JSON (empty, torn, another format) is [`StoreError::Corrupt`].
    pub(super) fn read_json(path: &Path) -> Result<Option<Value>> {
        match std::fs::read(path) {
            Ok(b) if b.is_empty() => Err(StoreError::Corrupt {
                path: path.to_path_buf(),
                message: "the file is empty".into(),
            }),
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

    /// Reads an object's files; a spec file that is not that object is
    /// [`StoreError::Corrupt`] too.
    pub(super) fn read_raw(&self, key: &ObjectKey) -> Result<Option<Raw>> {
        let spec_path = self.spec_path(key)?;
        let Some(spec_doc) = self.read_doc(&spec_path)?.0 else {
            return Ok(None);
        };
        let status_doc = self.read_doc(&self.status_path(key)?)?.0;
        let raw = Raw {
            spec_doc,
            status_doc,
        };
        check_shape(key, &raw).map_err(|message| StoreError::Corrupt {
            path: spec_path,
            message,
        })?;
        Ok(Some(raw))
    }

    /// The whole object (spec, metadata and status), or None. A corrupt
    /// object is an error naming its file (and is quarantined).
    pub fn get(&self, key: &ObjectKey) -> Result<Option<Value>> {
        let r = self.read_raw(key).map(|r| r.map(Raw::merged));
        self.note_read(key, &r);
        r
    }

    /// Namespaces that hold objects of `kind`.
    pub fn namespaces(&self, kind: Kind) -> Result<Vec<String>> {
        if let Some(etcd) = self.etcd() {
            let (kvs, _) = etcd.range(kind.plural())?;
            let mut out: Vec<String> = kvs
                .iter()
                .filter_map(|kv| kv.rel.split('/').nth(1).map(str::to_string))
                .filter(|n| crate::manifest::validate::dns1123_label(n).is_ok())
                .collect();
            out.dedup();
            return Ok(out);
        }
        let dir = self.kind_dir(kind);
        let mut out = Vec::new();
        match std::fs::read_dir(&dir) {
            Ok(rd) => {
                for e in rd {
                    let e = e.map_err(io(&dir))?;
                    if let Some(n) = e.file_name().to_str()
                        && crate::manifest::validate::dns1123_label(n).is_ok()
                        && e.file_type().is_ok_and(|t| t.is_dir())
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

    /// Every object of `kind` that reads, in one namespace or (None) all,
    /// sorted by namespace and name. Corrupt ones are skipped (see
    /// [`Store::list_report`]).
    pub fn list(&self, kind: Kind, namespace: Option<&str>) -> Result<Vec<Value>> {
        Ok(self.list_report(kind, namespace)?.objects)
    }

    /// Every object of `kind` (as [`Store::list`]), and the corrupt ones
    /// found on the way: quarantined, logged and recorded as an event the
    /// first time.
    pub fn list_report(&self, kind: Kind, namespace: Option<&str>) -> Result<Listing> {
        let namespaces = match namespace {
            Some(ns) => {
                super::names::check_key(&ObjectKey::new(kind, ns, "x"))?;
                vec![ns.to_string()]
            }
            None => self.namespaces(kind)?,
        };
        let mut out = Listing::default();
        for ns in &namespaces {
            self.list_namespace(kind, ns, &mut out)?;
        }
        let scope = match namespace {
            Some(ns) => self.kind_dir(kind).join(ns),
            None => self.kind_dir(kind),
        };
        let fresh = self.quarantine.relisted(&scope, Level::File, &out.corrupt);
        self.report_corrupt(&fresh);
        Ok(out)
    }

    fn list_namespace(&self, kind: Kind, ns: &str, out: &mut Listing) -> Result<()> {
        if self.is_etcd() {
            return self.list_namespace_etcd(kind, ns, out);
        }
        let dir = self.kind_dir(kind).join(ns);
        let rd = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io(&dir)(e)),
        };
        let mut names = Vec::new();
        for e in rd {
            let e = e.map_err(io(&dir))?;
            let fname = e.file_name();
            let Some(f) = fname.to_str() else { continue };
            if f.ends_with(".status.json") {
                continue;
            }
            if let Some(n) = f.strip_suffix(".json")
                && crate::manifest::validate::dns1123_label(n).is_ok()
            {
                names.push(n.to_string());
            }
        }
        names.sort();
        for name in names {
            let key = ObjectKey::new(kind, ns, &name);
            match self.read_raw(&key) {
                Ok(Some(raw)) => out.objects.push(raw.merged()),
                Ok(None) => {} // deleted since the listing
                Err(StoreError::Corrupt { path, message }) => out.corrupt.push(CorruptObject {
                    key,
                    path,
                    reason: message,
                }),
                Err(e) => return Err(e),
            }
        }
        Ok(())
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

    /// Replaces the status of an object. With `expected_rv`, fails with a
    /// conflict unless the object is still at that version. Never touches
    /// the spec.
    pub fn write_status(
        &self,
        key: &ObjectKey,
        status: &Value,
        expected_rv: Option<&str>,
    ) -> Result<Value> {
        self.write_status_as(key, status, expected_rv, super::Durability::Now)
    }

    /// [`Store::write_status`] with a choice of [`super::Durability`].
    pub fn write_status_as(
        &self,
        key: &ObjectKey,
        status: &Value,
        expected_rv: Option<&str>,
        durability: super::Durability,
    ) -> Result<Value> {
        self.retrying(|| {
            let mut txn = self.txn(false)?;
            txn.durability = durability;
            let mut obj = self.status_in(&mut txn, key, status, expected_rv)?;
            stamp(&mut obj, txn.commit_rv()?.as_deref());
            Ok(obj)
        })
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
        let path = self.status_path(key)?;
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
        mut f: impl FnMut(&mut Map<String, Value>),
        status: &Value,
    ) -> Result<Option<Value>> {
        self.retrying(|| {
            let mut txn = self.txn(false)?;
            let mut out = match self.metadata_in(&mut txn, key, expected_rv, &mut f)? {
                Some(_) => Some(self.status_in(&mut txn, key, status, None)?),
                None => None,
            };
            let rev = txn.commit_rv()?;
            if let Some(o) = &mut out {
                stamp(o, rev.as_deref());
            }
            Ok(out)
        })
    }

    /// Changes metadata (labels, annotations, finalizers) under the lock.
    /// When the object is terminating and its last finalizer goes, it is
    /// removed.
    pub fn update_metadata(
        &self,
        key: &ObjectKey,
        expected_rv: Option<&str>,
        mut f: impl FnMut(&mut Map<String, Value>),
    ) -> Result<Option<Value>> {
        self.retrying(|| {
            let mut txn = self.txn(false)?;
            let mut out = self.metadata_in(&mut txn, key, expected_rv, &mut f)?;
            let rev = txn.commit_rv()?;
            if let Some(o) = &mut out {
                stamp(o, rev.as_deref());
            }
            Ok(out)
        })
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
            self.remove_in(txn, key)?;
            return Ok(None);
        }
        let rv = txn.next_rv();
        spec_doc["metadata"]["resourceVersion"] = json!(rv);
        txn.write_json(&self.spec_path(key)?, &spec_doc)?;
        Ok(Some(
            Raw {
                spec_doc,
                status_doc,
            }
            .merged(),
        ))
    }

    /// Stages the removal of every file of `key`.
    fn remove_in(&self, txn: &mut Txn<'_>, key: &ObjectKey) -> Result<()> {
        txn.remove(&self.status_path(key)?)?;
        super::events::remove(txn, key)?;
        txn.remove(&self.spec_path(key)?)
    }

    /// Deletes an object (or marks it terminating when it has finalizers).
    /// A corrupt object is removed whatever its files hold (its finalizers
    /// cannot be read), unless `expected_rv` asks for a version.
    pub fn delete(
        &self,
        key: &ObjectKey,
        expected_rv: Option<&str>,
        dry_run: bool,
    ) -> Result<DeleteOutcome> {
        self.retrying(|| self.delete_once(key, expected_rv, dry_run))
    }

    fn delete_once(
        &self,
        key: &ObjectKey,
        expected_rv: Option<&str>,
        dry_run: bool,
    ) -> Result<DeleteOutcome> {
        let mut txn = self.txn(dry_run)?;
        let raw = match txn.read_raw(key) {
            Ok(Some(raw)) => raw,
            Ok(None) => return Err(StoreError::NotFound(key.clone())),
            Err(StoreError::Corrupt { path, message }) if expected_rv.is_none() => {
                tracing::warn!(path = %path.display(), object = %key, reason = %message, "deleting a corrupt object");
                self.remove_in(&mut txn, key)?;
                txn.commit()?;
                if !dry_run {
                    self.quarantine.forget(key);
                }
                return Ok(DeleteOutcome::Deleted);
            }
            Err(e) => return Err(e),
        };
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
                txn.write_json(&self.spec_path(key)?, &spec_doc)?;
            }
            txn.commit()?;
            return Ok(DeleteOutcome::Terminating);
        }
        self.remove_in(&mut txn, key)?;
        txn.commit()?;
        if !dry_run {
            self.quarantine.forget(key);
        }
        Ok(DeleteOutcome::Deleted)
    }
}

/// Creates `dir` with mode 0700 (the store holds what others need not
/// read); an existing one of this user loses group and other access.
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        fsutil::ensure_dir(parent)?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let meta = std::fs::metadata(dir)?;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if meta.is_dir() && meta.uid() == me && meta.mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(meta.mode() & 0o700))?;
    }
    Ok(())
}

pub(super) fn drop_empty(meta: &mut Map<String, Value>, field: &str) {
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

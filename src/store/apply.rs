//! Applying declared objects: one, many in one transaction (all or
//! nothing), and [`Batch`] for callers that write more with them.

use super::backend::stamp;
use super::local::{Outcome, Raw, Result, Store, StoreError, drop_empty};
use super::ownership;
use super::txn::Txn;
use crate::api::{API_VERSION, Kind, ObjectKey};
use serde_json::{Value, json};

impl Store {
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
        self.retrying(|| {
            let mut txn = self.txn(dry_run)?;
            let mut r = txn_apply_request(&mut txn, req)?;
            stamp(&mut r.object, txn.commit_rv()?.as_deref());
            Ok(r)
        })
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
        self.retrying(|| {
            let mut txn = self.txn(false)?;
            let key = key_of_desired(&req.object)?;
            if txn.read_raw(&key)?.is_some() {
                return Err(StoreError::AlreadyExists(key));
            }
            let mut r = txn_apply_request(&mut txn, req)?;
            stamp(&mut r.object, txn.commit_rv()?.as_deref());
            Ok(r.object)
        })
    }

    /// Applies many objects in one transaction: all or nothing. A conflict,
    /// a write failure (a full disk) or a writer killed at any point leaves
    /// none of them applied, or (once committed) all. The error carries the
    /// index of the object that failed (None: the commit itself).
    pub fn apply_all(
        &self,
        desired: &[Value],
        dry_run: bool,
    ) -> Result<Vec<(Outcome, Value)>, BatchError> {
        let reqs: Vec<ApplyRequest> = desired.iter().map(ApplyRequest::whole).collect();
        let done = self.apply_requests(&reqs, dry_run)?;
        Ok(done.into_iter().map(|r| (r.outcome, r.object)).collect())
    }

    /// [`Store::apply_request`] for many objects in one transaction: all or
    /// nothing, as [`Store::apply_all`].
    pub fn apply_requests(
        &self,
        reqs: &[ApplyRequest],
        dry_run: bool,
    ) -> Result<Vec<ApplyResult>, BatchError> {
        let mut tries = 1;
        loop {
            match self.apply_requests_once(reqs, dry_run) {
                Err((None, StoreError::Contended(_))) if tries < super::CONTENDED_TRIES => {
                    super::backend::contended_backoff(tries);
                    tries += 1
                }
                r => return r,
            }
        }
    }

    fn apply_requests_once(
        &self,
        reqs: &[ApplyRequest],
        dry_run: bool,
    ) -> Result<Vec<ApplyResult>, BatchError> {
        let mut batch = self.batch(dry_run).map_err(|e| (None, e))?;
        // Every object's documents in few requests (etcd), not one each.
        let keys: Vec<ObjectKey> = reqs
            .iter()
            .filter_map(|r| key_of_desired(&r.object).ok())
            .collect();
        batch.txn.prefetch(&keys).map_err(|e| (None, e))?;
        let mut done = Vec::with_capacity(reqs.len());
        for (i, r) in reqs.iter().enumerate() {
            done.push(batch.apply_request(r).map_err(|e| (Some(i), e))?);
        }
        let rev = batch.txn.commit_rv().map_err(|e| (None, e))?;
        for r in &mut done {
            stamp(&mut r.object, rev.as_deref());
        }
        Ok(done)
    }

    /// Starts a batch: writes that become visible together at
    /// [`Batch::commit`], or not at all.
    pub fn batch(&self, dry_run: bool) -> Result<Batch<'_>> {
        Ok(Batch {
            txn: self.txn(dry_run)?,
        })
    }

    /// Stages writes with `build` in a new batch and commits it, all or
    /// nothing. On etcd a batch that lost a race to another writer is built
    /// again on fresh reads and committed again (as every write of the
    /// object layer is, up to [`super::CONTENDED_TRIES`] times), so a
    /// caller-driven batch does not fail because a controller wrote
    /// meanwhile. `build` may run more than once.
    pub fn with_batch<T>(&self, mut build: impl FnMut(&mut Batch<'_>) -> Result<T>) -> Result<T> {
        self.retrying(|| {
            let mut batch = self.batch(false)?;
            let out = build(&mut batch)?;
            batch.commit()?;
            Ok(out)
        })
    }
}

/// Why a batch applied nothing: the index of the object that failed (None:
/// the commit itself) and the error.
pub type BatchError = (Option<usize>, StoreError);

/// `STORE/<dir>/<name>.json`: both DNS-1123 labels, outside the objects'
/// and events' directories.
fn record_path(store: &Store, dir: &str, name: &str) -> Result<std::path::PathBuf> {
    let ok = |s: &str| crate::manifest::validate::dns1123_label(s).is_ok();
    if !ok(dir) || !ok(name) || Kind::ALL.iter().any(|k| k.plural() == dir) || dir == "events" {
        return Err(StoreError::Malformed(format!(
            "`{dir}/{name}` is not a record name of the store"
        )));
    }
    Ok(store.root().join(dir).join(format!("{name}.json")))
}

impl Store {
    /// A record of the store (see [`Batch::read_record`]).
    pub fn record(&self, dir: &str, name: &str) -> Result<Option<Value>> {
        Ok(self.read_doc(&record_path(self, dir, name)?)?.0)
    }
}

/// Writes made visible together ([`Store::batch`]): declared objects, and
/// the store's own records (a sync's inventory). Holds the store lock.
pub struct Batch<'a> {
    txn: Txn<'a>,
}

impl Batch<'_> {
    /// As [`Store::apply`], inside the batch.
    pub fn apply(&mut self, desired: &Value) -> Result<(Outcome, Value)> {
        txn_apply(&mut self.txn, desired)
    }

    /// As [`Store::apply_request`], inside the batch.
    pub fn apply_request(&mut self, req: &ApplyRequest) -> Result<ApplyResult> {
        txn_apply_request(&mut self.txn, req)
    }

    /// As [`Store::create_as`], inside the batch: fails with
    /// [`StoreError::AlreadyExists`], staging nothing, when one of that
    /// kind and name is there (the batch goes on).
    pub fn create_request(&mut self, req: &ApplyRequest) -> Result<ApplyResult> {
        let key = key_of_desired(&req.object)?;
        if self.txn.read_raw(&key)?.is_some() {
            return Err(StoreError::AlreadyExists(key));
        }
        txn_apply_request(&mut self.txn, req)
    }

    /// A record of the store (`STORE/<dir>/<name>.json`, for what is not an
    /// object: a sync's inventory), as the batch sees it.
    pub fn read_record(&mut self, dir: &str, name: &str) -> Result<Option<Value>> {
        let path = self.record_path(dir, name)?;
        self.txn.read_json(&path)
    }

    /// Stages a record (see [`Batch::read_record`]).
    pub fn write_record(&mut self, dir: &str, name: &str, v: &Value) -> Result<()> {
        let path = self.record_path(dir, name)?;
        self.txn.write_json(&path, v)
    }

    fn record_path(&self, dir: &str, name: &str) -> Result<std::path::PathBuf> {
        record_path(self.txn.store(), dir, name)
    }

    /// Makes everything visible, all or nothing. On etcd, a batch that
    /// lost a race to another writer fails with [`StoreError::Contended`]
    /// and wrote nothing ([`Store::with_batch`] builds it again then).
    pub fn commit(self) -> Result<()> {
        self.txn.commit()
    }
}

/// The key of a declared object (as `apply` and `create` take them).
pub(super) fn key_of_desired(desired: &Value) -> Result<ObjectKey> {
    let kind = desired
        .get("kind")
        .and_then(Value::as_str)
        .and_then(Kind::from_kind_field)
        .ok_or_else(|| {
            StoreError::Malformed("the object's kind is not Account, Session or Task".into())
        })?;
    let meta = &desired["metadata"];
    let name = meta["name"]
        .as_str()
        .ok_or_else(|| StoreError::Malformed("the object has no metadata.name".into()))?;
    let key = ObjectKey::new(
        kind,
        meta["namespace"]
            .as_str()
            .unwrap_or(crate::api::DEFAULT_NAMESPACE),
        name,
    );
    super::names::check_key(&key)?;
    Ok(key)
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
    pub taken_over: Vec<ownership::Conflict>,
}

/// [`txn_apply_request`] of a whole object by [`DEFAULT_MANAGER`].
pub(super) fn txn_apply(txn: &mut Txn<'_>, desired: &Value) -> Result<(Outcome, Value)> {
    let r = txn_apply_request(txn, &ApplyRequest::whole(desired))?;
    Ok((r.outcome, r.object))
}

fn txn_apply_request(txn: &mut Txn<'_>, req: &ApplyRequest) -> Result<ApplyResult> {
    let desired = &req.object;
    let declared = req.declared.as_ref().unwrap_or(desired);
    let key = key_of_desired(desired)?;
    let expected = desired["metadata"]
        .get("resourceVersion")
        .and_then(Value::as_str);
    let spec_path = txn.store().spec_path(&key)?;
    let now = crate::api::now();
    let conflicts = |c: ownership::Conflicts| StoreError::FieldConflicts {
        key: key.clone(),
        conflicts: c,
    };
    let Some(raw) = txn.read_raw(&key)? else {
        if let Some(exp) = expected {
            return Err(StoreError::Conflict {
                key,
                expected: exp.to_string(),
                actual: "(none: the object does not exist)".into(),
            });
        }
        return create(txn, key, req, &now);
    };
    let status_doc = raw.status_doc.clone();
    let current = raw.merged();
    Store::check_precondition(&key, Some(&current), expected)?;
    if current.pointer("/metadata/deletionTimestamp").is_some() {
        return Err(StoreError::Invalid {
            key,
            message: "is being deleted (waiting for its finalizers); apply again once it is gone"
                .into(),
        });
    }
    let live = raw_spec_doc(&current);
    let applied =
        ownership::apply(&live, declared, &req.manager, req.force, &now).map_err(conflicts)?;
    let mut doc = normalized(&key, &applied.doc)?;
    let result = |outcome, object| ApplyResult {
        outcome,
        object,
        taken_over: applied.taken_over.clone(),
    };
    if doc == live {
        return Ok(result(Outcome::Unchanged, current));
    }
    let bare = ownership::without_managed_fields;
    let changed = bare(&doc) != bare(&live);
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

/// [`txn_apply_request`] of an object that does not exist yet: made from
/// what the request declares, with its uid, creation time and generation 1.
fn create(
    txn: &mut Txn<'_>,
    key: ObjectKey,
    req: &ApplyRequest,
    now: &crate::api::Time,
) -> Result<ApplyResult> {
    let desired = &req.object;
    let declared = req.declared.as_ref().unwrap_or(desired);
    let spec_path = txn.store().spec_path(&key)?;
    let mut skeleton = json!({"apiVersion": API_VERSION, "kind": key.kind.name(),
        "metadata": {"name": key.name, "namespace": key.namespace}, "spec": {}});
    // Owner references are given at creation (by the controller that
    // creates the object, e.g. a pool its Sessions) and kept after.
    if let Some(o) = desired.pointer("/metadata/ownerReferences") {
        skeleton["metadata"]["ownerReferences"] = o.clone();
    }
    let applied =
        ownership::apply(&skeleton, declared, &req.manager, req.force, now).map_err(|c| {
            StoreError::FieldConflicts {
                key: key.clone(),
                conflicts: c,
            }
        })?;
    let mut doc = normalized(&key, &applied.doc)?;
    let m = doc["metadata"].as_object_mut().expect("metadata is a map");
    m.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
    m.insert(
        "creationTimestamp".into(),
        serde_json::to_value(now).expect("time serializes"),
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

/// The applied document in the kind's normal form, without empty
/// finalizers, labels or annotations.
fn normalized(key: &ObjectKey, applied: &Value) -> Result<Value> {
    let mut doc =
        ownership::normalize(key.kind, applied).map_err(|message| StoreError::Invalid {
            key: key.clone(),
            message,
        })?;
    let m = doc["metadata"].as_object_mut().expect("metadata is a map");
    drop_empty(m, "finalizers");
    drop_empty(m, "labels");
    drop_empty(m, "annotations");
    Ok(doc)
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

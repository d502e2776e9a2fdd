//! Applying declared objects: one, many in one transaction (all or
//! nothing), and [`Batch`] for callers that write more with them.

use super::local::{Outcome, Raw, Result, Store, StoreError, drop_empty};
use super::txn::Txn;
use crate::api::{API_VERSION, Kind, ObjectKey};
use serde_json::{Map, Value, json};

impl Store {
    /// Creates or updates the object declared by `desired` (a whole object
    /// as JSON, as decoded from a manifest). The declared labels, annotations,
    /// finalizers and spec replace the stored ones; status and server-set
    /// metadata are kept. A `metadata.resourceVersion` in `desired` is a
    /// precondition.
    pub fn apply(&self, desired: &Value, dry_run: bool) -> Result<(Outcome, Value)> {
        let mut txn = self.txn(dry_run)?;
        let r = txn_apply(&mut txn, desired)?;
        txn.commit()?;
        Ok(r)
    }

    /// Creates the object declared by `desired`; fails with
    /// [`StoreError::AlreadyExists`] when one of that kind and name is
    /// there (checked under the lock, so two creators never both succeed).
    pub fn create(&self, desired: &Value) -> Result<Value> {
        let mut txn = self.txn(false)?;
        let key = key_of_desired(desired)?;
        if txn.read_raw(&key)?.is_some() {
            return Err(StoreError::AlreadyExists(key));
        }
        let (_, obj) = txn_apply(&mut txn, desired)?;
        txn.commit()?;
        Ok(obj)
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
        let mut batch = self.batch(dry_run).map_err(|e| (None, e))?;
        let mut done = Vec::with_capacity(desired.len());
        for (i, d) in desired.iter().enumerate() {
            done.push(batch.apply(d).map_err(|e| (Some(i), e))?);
        }
        batch.commit().map_err(|e| (None, e))?;
        Ok(done)
    }

    /// Starts a batch: writes that become visible together at
    /// [`Batch::commit`], or not at all.
    pub fn batch(&self, dry_run: bool) -> Result<Batch<'_>> {
        Ok(Batch {
            txn: self.txn(dry_run)?,
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
        Store::read_json(&record_path(self, dir, name)?)
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

    /// A record of the store (`STORE/<dir>/<name>.json`, for what is not an
    /// object: a sync's inventory), as the batch sees it.
    pub fn read_record(&self, dir: &str, name: &str) -> Result<Option<Value>> {
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

    /// Makes everything visible, all or nothing.
    pub fn commit(self) -> Result<()> {
        self.txn.commit()
    }
}

/// Fields of metadata that a manifest declares (the rest is the server's).
const DECLARED_META: &[&str] = &["labels", "annotations", "finalizers"];

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

pub(super) fn txn_apply(txn: &mut Txn<'_>, desired: &Value) -> Result<(Outcome, Value)> {
    let key = key_of_desired(desired)?;
    let kind = key.kind;
    let meta = &desired["metadata"];
    let expected = meta.get("resourceVersion").and_then(Value::as_str);
    let store = txn.store().clone();
    let spec_path = store.spec_path(&key)?;
    let existing = txn.read_raw(&key)?;
    let spec = desired.get("spec").cloned().unwrap_or(json!({}));
    match existing {
        None => {
            if let Some(exp) = expected {
                return Err(StoreError::Conflict {
                    key,
                    expected: exp.to_string(),
                    actual: "(none: the object does not exist)".into(),
                });
            }
            let rv = txn.next_rv();
            let mut m = Map::new();
            m.insert("name".into(), json!(key.name));
            m.insert("namespace".into(), json!(key.namespace));
            for f in DECLARED_META {
                if let Some(v) = meta.get(*f) {
                    m.insert(f.to_string(), v.clone());
                }
            }
            drop_empty(&mut m, "finalizers");
            drop_empty(&mut m, "labels");
            drop_empty(&mut m, "annotations");
            m.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
            m.insert(
                "creationTimestamp".into(),
                serde_json::to_value(crate::api::now()).expect("time serializes"),
            );
            m.insert("generation".into(), json!(1));
            m.insert("resourceVersion".into(), json!(rv));
            let doc = json!({"apiVersion": API_VERSION, "kind": kind.name(), "metadata": m, "spec": spec});
            // No stale status can be inherited here: deletes remove the
            // status file before the spec file, in one commit.
            txn.write_json(&spec_path, &doc)?;
            Ok((Outcome::Created, doc))
        }
        Some(raw) => {
            let status_doc = raw.status_doc.clone();
            let current = raw.merged();
            Store::check_precondition(&key, Some(&current), expected)?;
            if current.pointer("/metadata/deletionTimestamp").is_some() {
                return Err(StoreError::Invalid {
                    key,
                    message:
                        "is being deleted (waiting for its finalizers); apply again once it is gone"
                            .into(),
                });
            }
            let mut doc = raw_spec_doc(&current);
            let m = doc["metadata"].as_object_mut().expect("metadata is a map");
            for f in DECLARED_META {
                // finalizers are also owned by controllers: a manifest that
                // does not list any leaves them alone.
                match meta.get(*f) {
                    Some(v) => {
                        m.insert(f.to_string(), v.clone());
                    }
                    None if *f != "finalizers" => {
                        m.remove(*f);
                    }
                    None => {}
                }
            }
            drop_empty(m, "finalizers");
            drop_empty(m, "labels");
            drop_empty(m, "annotations");
            let spec_changed = doc["spec"] != spec;
            if !spec_changed && doc["metadata"] == raw_spec_doc(&current)["metadata"] {
                return Ok((Outcome::Unchanged, current));
            }
            if spec_changed {
                let g = doc["metadata"]["generation"].as_i64().unwrap_or(0);
                doc["metadata"]["generation"] = json!(g + 1);
                doc["spec"] = spec;
            }
            let rv = txn.next_rv();
            doc["metadata"]["resourceVersion"] = json!(rv);
            txn.write_json(&spec_path, &doc)?;
            Ok((
                Outcome::Configured,
                Raw {
                    spec_doc: doc,
                    status_doc,
                }
                .merged(),
            ))
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

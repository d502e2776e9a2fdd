//! Updates of a whole object by a named writer (`label`, `annotate`,
//! `patch`, `edit`, `suspend`): the change is made under the store's lock,
//! its changed fields are recorded as the writer's (see
//! [`super::ownership`]), and the result must be a valid object of its
//! kind.

use super::backend::stamp;
use super::local::{Raw, Result, Store, StoreError};
use super::ownership;
use crate::api::ObjectKey;
use serde_json::{Value, json};

/// Metadata the server keeps, whatever an update says.
const SERVER_META: &[&str] = &[
    "uid",
    "creationTimestamp",
    "generation",
    "resourceVersion",
    "deletionTimestamp",
    ownership::MANAGED_FIELDS,
];

/// Of the spec of a kind only the daemon writes, the fields people may set.
fn people_set(kind: crate::api::Kind) -> &'static [&'static str] {
    match kind {
        crate::api::Kind::ManifestSync => &["suspend", "prune"],
        _ => &[],
    }
}

/// What an update did.
#[derive(Debug, Clone)]
pub struct Updated {
    /// False when the change left the object as it was (nothing written).
    pub changed: bool,
    /// The object (as it is now, or would be after a dry run).
    pub object: Value,
}

impl Store {
    /// Changes an object by `manager`. `f` gets the object without status
    /// and edits its labels, annotations, finalizers or spec (changing the
    /// apiVersion, kind, name or namespace is an error; the server's
    /// metadata is kept). With `expected_rv`, a stale object is a conflict.
    pub fn update_object(
        &self,
        key: &ObjectKey,
        expected_rv: Option<&str>,
        manager: &str,
        dry_run: bool,
        mut f: impl FnMut(&mut Value) -> std::result::Result<(), String>,
    ) -> Result<Updated> {
        self.retrying(|| self.update_once(key, expected_rv, manager, dry_run, &mut f))
    }

    fn update_once(
        &self,
        key: &ObjectKey,
        expected_rv: Option<&str>,
        manager: &str,
        dry_run: bool,
        f: &mut impl FnMut(&mut Value) -> std::result::Result<(), String>,
    ) -> Result<Updated> {
        let invalid = |message: String| invalid(key, message);
        let mut txn = self.txn(dry_run)?;
        let raw = txn
            .read_raw(key)?
            .ok_or_else(|| StoreError::NotFound(key.clone()))?;
        let status_doc = raw.status_doc.clone();
        let current = raw.merged();
        Store::check_precondition(key, Some(&current), expected_rv)?;
        let mut live = current.clone();
        live.as_object_mut()
            .expect("objects are maps")
            .remove("status");
        let edited = edit(key, &live, f)?;
        let mut doc = ownership::normalize(key.kind, &edited).map_err(invalid)?;
        if let Some(m) = doc["metadata"].as_object_mut() {
            drop_empty(m);
        }
        ownership::record_update(Some(&live), &mut doc, manager, &crate::api::now());
        if ownership::without_managed_fields(&doc) == ownership::without_managed_fields(&live) {
            return Ok(Updated {
                changed: false,
                object: current,
            });
        }
        check_spec_writer(key, &doc, &live)?;
        if doc["spec"] != live["spec"] {
            let g = live["metadata"]["generation"].as_i64().unwrap_or(0);
            doc["metadata"]["generation"] = json!(g + 1);
        }
        doc["metadata"]["resourceVersion"] = json!(txn.next_rv());
        txn.write_json(&self.spec_path(key)?, &doc)?;
        let rev = txn.commit_rv()?;
        let mut object = Raw {
            spec_doc: doc,
            status_doc,
        }
        .merged();
        stamp(&mut object, rev.as_deref());
        Ok(Updated {
            changed: true,
            object,
        })
    }
}

fn invalid(key: &ObjectKey, message: String) -> StoreError {
    StoreError::Invalid {
        key: key.clone(),
        message,
    }
}

/// `live` (without status) as `f` edits it: still the same object (its
/// apiVersion, kind, name and namespace), the server's metadata kept,
/// empty labels, annotations and finalizers dropped.
fn edit(
    key: &ObjectKey,
    live: &Value,
    f: &mut impl FnMut(&mut Value) -> std::result::Result<(), String>,
) -> Result<Value> {
    let mut edited = live.clone();
    f(&mut edited).map_err(|m| invalid(key, m))?;
    if let Some(o) = edited.as_object_mut() {
        o.remove("status");
    }
    for (what, pointer) in [
        ("apiVersion", "/apiVersion"),
        ("kind", "/kind"),
        ("metadata.name", "/metadata/name"),
        ("metadata.namespace", "/metadata/namespace"),
    ] {
        let at = |v: &Value| v.pointer(pointer).cloned().unwrap_or(Value::Null);
        let (a, b) = (at(live), at(&edited));
        if a != b {
            return Err(invalid(
                key,
                format!("{what} cannot be changed ({a} → {b})"),
            ));
        }
    }
    let meta = edited["metadata"]
        .as_object_mut()
        .ok_or_else(|| invalid(key, "metadata must be a map".into()))?;
    for k in SERVER_META {
        match live["metadata"].get(*k) {
            Some(v) => meta.insert(k.to_string(), v.clone()),
            None => meta.remove(*k),
        };
    }
    drop_empty(meta);
    Ok(edited)
}

/// Removes labels, annotations and finalizers that are empty (or null).
fn drop_empty(meta: &mut serde_json::Map<String, Value>) {
    for k in ["labels", "annotations", "finalizers"] {
        super::local::drop_empty(meta, k);
    }
}

/// The daemon's own kinds: their spec is the daemon's, except the fields
/// people set (a ManifestSync's `suspend` and `prune`).
fn check_spec_writer(key: &ObjectKey, doc: &Value, live: &Value) -> Result<()> {
    let daemons = |v: &Value| {
        let mut s = v["spec"].clone();
        if let Some(m) = s.as_object_mut() {
            for f in people_set(key.kind) {
                m.remove(*f);
            }
        }
        s
    };
    if key.kind.declared() || daemons(doc) == daemons(live) {
        return Ok(());
    }
    let open = people_set(key.kind);
    let plural = key.kind.plural();
    Err(invalid(
        key,
        if open.is_empty() {
            format!("{plural} are written by the daemon only: their spec cannot be changed")
        } else {
            format!(
                "{plural} are written by the daemon: of their spec, only {} can be changed",
                open.join(" and ")
            )
        },
    ))
}

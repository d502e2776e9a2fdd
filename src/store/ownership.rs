//! Field ownership: who set which field of an object, so that `apply` and
//! the GitOps sync change only the fields their manifests declare and keep
//! what other writers set (a cancel request, a label added by hand, the
//! daemon's finalizers).
//!
//! # Why managed fields, not a last-applied annotation
//!
//! kubectl's client-side apply keeps one `last-applied-configuration`
//! annotation and merges three ways against it. That record has room for
//! one applier, and this project has several writing the same objects: the
//! CLI's `apply`, the sync of a manifests directory, the API, `label`,
//! `patch`, `edit`. With one record, a sync pass after a CLI apply cannot
//! tell its own fields from the CLI's, and removes or keeps the wrong ones.
//! Server-side apply's managed fields record, per named writer (a
//! *manager*), the set of fields it owns: each applier removes only what
//! it owns and no longer declares, and a writer that changes a field
//! another one applied takes it over. The record is Kubernetes' own
//! (`metadata.managedFields`, `fieldsType: FieldsV1`), so the objects stay
//! what a cluster would store, and a manager's name says who to ask.
//!
//! # Rules (those of server-side apply, for the fields a manifest declares:
//! `metadata.labels`, `metadata.annotations`, `metadata.finalizers` and
//! `spec`)
//!
//! - A field is a leaf of the declared object: a map is walked key by key
//!   (an empty map declares nothing), a list is one field (atomic), except
//!   `metadata.finalizers`, a set whose items are owned one by one.
//! - **Apply** by manager M with declared fields D: every field in D takes
//!   its declared value; a field M owned before and not in D is removed,
//!   unless another manager owns it too; M now owns exactly D. A field in
//!   D owned by another manager with a different value is a conflict: the
//!   apply fails naming the field and its manager, unless forced, when M
//!   takes it over. Owners of a field M sets to the same value share it.
//! - **Update** by manager U (label, annotate, patch, edit, API actions):
//!   every field whose value changed goes to U, away from its previous
//!   owners; a removed field is owned by nobody.
//! - Fields nobody owns (defaults, what was written before this record
//!   existed, the daemon's finalizers and status) are never removed by an
//!   apply.

use crate::api::{Kind, Time};
use serde_json::{Map, Value, json};
use std::collections::BTreeSet;

/// `metadata.managedFields`
pub const MANAGED_FIELDS: &str = "managedFields";
pub const APPLY: &str = "Apply";
pub const UPDATE: &str = "Update";

/// One step of a field's path: a map key, or an item of a set list (its
/// JSON form).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Seg {
    Field(String),
    Item(String),
}

pub type FieldPath = Vec<Seg>;
pub type FieldSet = BTreeSet<FieldPath>;

/// `.spec.agent.env.HOME`, `.metadata.finalizers[="x"]`
pub fn path_string(p: &[Seg]) -> String {
    p.iter()
        .map(|s| match s {
            Seg::Field(f) => format!(".{f}"),
            Seg::Item(v) => format!("[={v}]"),
        })
        .collect()
}

/// One manager's record.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub manager: String,
    pub operation: String,
    pub time: Time,
    pub fields: FieldSet,
}

/// A field another manager owns with another value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict {
    pub manager: String,
    pub path: FieldPath,
}

impl std::fmt::Display for Conflict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "conflict with \"{}\": {}",
            self.manager,
            path_string(&self.path)
        )
    }
}

/// An apply's conflicts, in kubectl's words.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", conflicts_message(.0))]
pub struct Conflicts(pub Vec<Conflict>);

fn conflicts_message(c: &[Conflict]) -> String {
    let n = c.len();
    let list: Vec<String> = c.iter().map(|c| format!("- {c}")).collect();
    format!(
        "Apply failed with {n} conflict{}:\n{}\nThese fields were last set by another writer. To take them over, apply again with --force-conflicts; to keep their values, remove them from the manifest (or set the same values).",
        if n == 1 { "" } else { "s" },
        list.join("\n")
    )
}

// ------------------------------------------------------------ field sets

/// The set-like lists (owned item by item).
fn is_set_list(path: &[Seg]) -> bool {
    path == [
        Seg::Field("metadata".into()),
        Seg::Field("finalizers".into()),
    ]
}

fn leaves(v: &Value, prefix: &mut FieldPath, out: &mut FieldSet) {
    match v {
        // An empty map declares nothing (merged into what is there, it
        // changes nothing).
        Value::Object(m) => {
            for (k, x) in m {
                prefix.push(Seg::Field(k.clone()));
                leaves(x, prefix, out);
                prefix.pop();
            }
        }
        Value::Array(a) if is_set_list(prefix) => {
            for x in a {
                prefix.push(Seg::Item(x.to_string()));
                out.insert(prefix.clone());
                prefix.pop();
            }
        }
        _ => {
            out.insert(prefix.clone());
        }
    }
}

/// The owned fields of an object: the leaves of its labels, annotations,
/// finalizers and spec.
pub fn fields_of(obj: &Value) -> FieldSet {
    let mut out = FieldSet::new();
    for (top, sub) in [
        ("metadata", Some("labels")),
        ("metadata", Some("annotations")),
        ("metadata", Some("finalizers")),
        ("spec", None),
    ] {
        let mut path = vec![Seg::Field(top.into())];
        let mut v = obj.get(top);
        if let Some(s) = sub {
            path.push(Seg::Field(s.into()));
            v = v.and_then(|m| m.get(s));
        }
        if let Some(v) = v {
            leaves(v, &mut path, &mut out);
        }
    }
    out
}

/// True when `x` is the set item written `item` (its JSON form).
fn is_item(x: &Value, item: &str) -> bool {
    serde_json::from_str::<Value>(item).is_ok_and(|v| v == *x)
}

/// The value at `path` (for a set item: the item, when present).
pub fn get<'a>(obj: &'a Value, path: &[Seg]) -> Option<&'a Value> {
    let mut cur = obj;
    for s in path {
        cur = match s {
            Seg::Field(f) => cur.get(f)?,
            Seg::Item(item) => cur.as_array()?.iter().find(|x| x.to_string() == *item)?,
        };
    }
    Some(cur)
}

/// Sets the value at `path`, creating maps on the way.
fn set(obj: &mut Value, path: &[Seg], value: &Value) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut cur = obj;
    for s in parents {
        let Seg::Field(f) = s else { return };
        if !cur.is_object() {
            *cur = json!({});
        }
        cur = cur
            .as_object_mut()
            .expect("made a map")
            .entry(f.clone())
            .or_insert_with(|| json!({}));
    }
    match last {
        Seg::Field(f) => {
            if !cur.is_object() {
                *cur = json!({});
            }
            cur.as_object_mut()
                .expect("made a map")
                .insert(f.clone(), value.clone());
        }
        Seg::Item(item) => {
            if !cur.is_array() {
                *cur = json!([]);
            }
            let a = cur.as_array_mut().expect("made a list");
            if !a.iter().any(|x| is_item(x, item)) {
                a.push(value.clone());
            }
        }
    }
}

/// Removes the value at `path`; true when something was removed.
fn remove(obj: &mut Value, path: &[Seg]) -> bool {
    let Some((last, parents)) = path.split_last() else {
        return false;
    };
    let mut cur = obj;
    for s in parents {
        let Seg::Field(f) = s else { return false };
        match cur.get_mut(f) {
            Some(x) => cur = x,
            None => return false,
        }
    }
    match last {
        Seg::Field(f) => cur.as_object_mut().is_some_and(|m| m.remove(f).is_some()),
        Seg::Item(item) => match cur.as_array_mut() {
            Some(a) => {
                let before = a.len();
                a.retain(|x| !is_item(x, item));
                a.len() != before
            }
            None => false,
        },
    }
}

// ------------------------------------------------------------- FieldsV1

fn seg_key(s: &Seg) -> String {
    match s {
        Seg::Field(f) => format!("f:{f}"),
        Seg::Item(v) => format!("v:{v}"),
    }
}

/// Kubernetes' `FieldsV1` tree of a set (`{"f:spec":{"f:prompt":{}}}`).
pub fn to_fields_v1(set: &FieldSet) -> Value {
    let mut root = Map::new();
    for path in set {
        let mut cur = &mut root;
        for s in path {
            cur = cur
                .entry(seg_key(s))
                .or_insert_with(|| json!({}))
                .as_object_mut()
                .expect("FieldsV1 nodes are maps");
        }
    }
    Value::Object(root)
}

/// The set a `FieldsV1` tree describes (a node with no children, or with
/// a `.` child, is owned itself).
pub fn from_fields_v1(v: &Value) -> FieldSet {
    fn walk(v: &Value, prefix: &mut FieldPath, out: &mut FieldSet) {
        let Some(m) = v.as_object() else { return };
        let mut children = 0;
        for (k, x) in m {
            let seg = if let Some(f) = k.strip_prefix("f:") {
                Seg::Field(f.to_string())
            } else if let Some(i) = k.strip_prefix("v:") {
                Seg::Item(i.to_string())
            } else {
                continue;
            };
            children += 1;
            prefix.push(seg);
            walk(x, prefix, out);
            prefix.pop();
        }
        if (children == 0 || m.contains_key(".")) && !prefix.is_empty() {
            out.insert(prefix.clone());
        }
    }
    let mut out = FieldSet::new();
    walk(v, &mut Vec::new(), &mut out);
    out
}

/// The records kept in `metadata.managedFields` (entries for a
/// subresource, such as status, are not about these fields and are
/// dropped).
pub fn entries(obj: &Value) -> Vec<Entry> {
    let Some(list) = obj
        .pointer("/metadata/managedFields")
        .and_then(Value::as_array)
    else {
        return Vec::new();
    };
    list.iter()
        .filter(|e| e.get("subresource").is_none())
        .filter_map(|e| {
            Some(Entry {
                manager: e.get("manager")?.as_str()?.to_string(),
                operation: e.get("operation")?.as_str()?.to_string(),
                time: serde_json::from_value(e.get("time")?.clone()).ok()?,
                fields: from_fields_v1(e.get("fieldsV1")?),
            })
        })
        .collect()
}

/// Writes the records into the object's metadata (none: removed).
pub fn set_entries(obj: &mut Value, list: &[Entry]) {
    let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) else {
        return;
    };
    let kept: Vec<Value> = list
        .iter()
        .filter(|e| !e.fields.is_empty())
        .map(|e| {
            json!({
                "manager": e.manager,
                "operation": e.operation,
                "apiVersion": crate::api::API_VERSION,
                "time": e.time,
                "fieldsType": "FieldsV1",
                "fieldsV1": to_fields_v1(&e.fields),
            })
        })
        .collect();
    if kept.is_empty() {
        meta.remove(MANAGED_FIELDS);
    } else {
        meta.insert(MANAGED_FIELDS.into(), Value::Array(kept));
    }
}

/// The object without `metadata.managedFields`: what it says, without
/// the record of who owns what.
pub fn without_managed_fields(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove(MANAGED_FIELDS);
    }
    v
}

// ------------------------------------------------------------ operations

/// What an apply made.
#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    /// The object (its spec document) after the apply.
    pub doc: Value,
    /// Fields taken over from other managers (a forced apply).
    pub taken_over: Vec<Conflict>,
}

/// Removes an empty map left at `path`'s parents by a removal, up to the
/// owned roots, unless a manager owns that map itself.
fn prune_empty_parents(doc: &mut Value, path: &[Seg], owned: &[Entry]) {
    for depth in (2..path.len()).rev() {
        let parent = &path[..depth];
        let empty = get(doc, parent).is_some_and(|v| v.as_object().is_some_and(Map::is_empty));
        if !empty || owned.iter().any(|e| e.fields.contains(parent)) {
            return;
        }
        remove(doc, parent);
    }
}

/// Server-side apply of `declared` (an object holding only the fields its
/// manifest sets) by `manager` onto `live` (the stored spec document, or a
/// new object's skeleton). Status is not part of either.
pub fn apply(
    live: &Value,
    declared: &Value,
    manager: &str,
    force: bool,
    now: &Time,
) -> Result<Applied, Conflicts> {
    let wanted = fields_of(declared);
    let mut list = entries(live);
    let mine_before: FieldSet = list
        .iter()
        .filter(|e| e.manager == manager && e.operation == APPLY)
        .flat_map(|e| e.fields.iter().cloned())
        .collect();
    let mut conflicts = Vec::new();
    for e in list
        .iter()
        .filter(|e| !(e.manager == manager && e.operation == APPLY))
    {
        for p in e.fields.intersection(&wanted) {
            if get(live, p) != get(declared, p) {
                conflicts.push(Conflict {
                    manager: e.manager.clone(),
                    path: p.clone(),
                });
            }
        }
    }
    if !conflicts.is_empty() && !force {
        return Err(Conflicts(conflicts));
    }
    for c in &conflicts {
        for e in list.iter_mut().filter(|e| e.manager == c.manager) {
            e.fields.remove(&c.path);
        }
    }
    let others: Vec<Entry> = list
        .iter()
        .filter(|e| !(e.manager == manager && e.operation == APPLY))
        .cloned()
        .collect();
    let mut doc = live.clone();
    for p in mine_before.difference(&wanted) {
        let shared = others.iter().any(|e| e.fields.contains(p));
        if !shared && remove(&mut doc, p) {
            prune_empty_parents(&mut doc, p, &others);
        }
    }
    for p in &wanted {
        if let Some(v) = get(declared, p) {
            let v = v.clone();
            set(&mut doc, p, &v);
        }
    }
    let unchanged = mine_before == wanted && doc == *live && conflicts.is_empty();
    // The record keeps its place (and, when nothing changed, its time).
    match list
        .iter_mut()
        .find(|e| e.manager == manager && e.operation == APPLY)
    {
        Some(e) => {
            e.fields = wanted;
            if !unchanged {
                e.time = now.clone();
            }
        }
        None => list.push(Entry {
            manager: manager.to_string(),
            operation: APPLY.into(),
            time: now.clone(),
            fields: wanted,
        }),
    }
    set_entries(&mut doc, &list);
    Ok(Applied {
        doc,
        taken_over: conflicts,
    })
}

/// Records a write by `manager` that turned `before` (None: the object is
/// new) into `after`: each changed field goes to `manager`.
pub fn record_update(before: Option<&Value>, after: &mut Value, manager: &str, now: &Time) {
    let empty = json!({});
    let old = before.unwrap_or(&empty);
    let mut list = entries(before.unwrap_or(&*after));
    let all: FieldSet = fields_of(old).union(&fields_of(after)).cloned().collect();
    let changed: Vec<&FieldPath> = all
        .iter()
        .filter(|p| get(old, p) != get(after, p))
        .collect();
    if changed.is_empty() {
        set_entries(after, &list);
        return;
    }
    for e in list.iter_mut() {
        for p in &changed {
            e.fields.remove(*p);
        }
    }
    let present: FieldSet = changed
        .into_iter()
        .filter(|p| get(after, p).is_some())
        .cloned()
        .collect();
    match list
        .iter_mut()
        .find(|e| e.manager == manager && e.operation == UPDATE)
    {
        Some(e) => {
            e.fields.extend(present);
            e.time = now.clone();
        }
        None => list.push(Entry {
            manager: manager.to_string(),
            operation: UPDATE.into(),
            time: now.clone(),
            fields: present,
        }),
    }
    set_entries(after, &list);
}

/// The object as its kind's type reads it: defaults filled in, empty
/// optional fields dropped, and checked (unknown fields, ranges, names).
/// What an apply or an update leaves must be a valid object too.
pub fn normalize(kind: Kind, doc: &Value) -> Result<Value, String> {
    use crate::api::{Account, Lease, Session, Swap, Task};
    use crate::manifest::validate;
    fn typed<T: serde::de::DeserializeOwned + serde::Serialize>(
        doc: &Value,
        check: impl Fn(&T) -> Vec<validate::Problem>,
    ) -> Result<Value, String> {
        let obj: T = serde_path_to_error::deserialize(doc.clone()).map_err(|e| {
            let path = e.path().to_string();
            format!("{path}: {}", e.into_inner())
        })?;
        if let Some((path, msg)) = check(&obj).into_iter().next() {
            return Err(format!(
                "{}: {msg}",
                crate::manifest::yaml::path_string(&path)
            ));
        }
        Ok(serde_json::to_value(&obj).expect("API types serialize"))
    }
    let mut out = match kind {
        Kind::Account => typed::<Account>(doc, validate::account)?,
        Kind::Session => typed::<Session>(doc, validate::session)?,
        Kind::Task => typed::<Task>(doc, validate::task)?,
        Kind::Swap => typed::<Swap>(doc, |_| Vec::new())?,
        Kind::Lease => typed::<Lease>(doc, |_| Vec::new())?,
        Kind::ManifestSync => typed::<crate::api::ManifestSync>(doc, |_| Vec::new())?,
        Kind::SessionPool => typed::<crate::api::SessionPool>(doc, validate::session_pool)?,
        Kind::Node => typed::<crate::api::Node>(doc, |_| Vec::new())?,
    };
    if let Some(o) = out.as_object_mut() {
        o.remove("status");
    }
    Ok(out)
}

#[cfg(test)]
mod tests;

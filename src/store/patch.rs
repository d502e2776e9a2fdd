//! Status writes by field owner: each status field has one writer, and a
//! writer sets only its own top-level fields (each replaced whole, or
//! removed), so two controllers writing one object's status never undo each
//! other (see docs/state.md). Also: a JSON merge patch of a status, and
//! objects created with their status in one transaction.

use super::backend::stamp;
use super::local::{Result, Store, StoreError};
use super::txn::Durability;
use super::typed::Api;
use crate::api::{Object, ObjectKey};
use serde_json::{Map, Value};

/// Applies a JSON merge patch (RFC 7386) to `target`: maps merge key by
/// key, `null` removes, anything else replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let t = target.as_object_mut().expect("made a map above");
    for (k, v) in p {
        if v.is_null() {
            t.remove(k);
        } else {
            merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

/// Sets each of `fields` of `target` (a status) to its value in `status`,
/// replaced whole, or removes it where `status` has none.
pub fn set_fields(target: &mut Value, status: &Value, fields: &[&str]) {
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let t = target.as_object_mut().expect("made a map above");
    for f in fields {
        match status.get(*f) {
            Some(v) if !v.is_null() => {
                t.insert(f.to_string(), v.clone());
            }
            _ => {
                t.remove(*f);
            }
        }
    }
}

impl Store {
    /// Merges `patch` into the status of `key` under the lock (see
    /// [`merge_patch`]). With `expected_rv`, fails with a conflict unless
    /// the object is still at that version. Unchanged: nothing written.
    pub fn patch_status(
        &self,
        key: &ObjectKey,
        patch: &Value,
        expected_rv: Option<&str>,
        durability: Durability,
    ) -> Result<Value> {
        self.retrying(|| {
            let mut txn = self.txn(false)?;
            txn.durability = durability;
            let current = txn
                .read_raw(key)?
                .ok_or_else(|| StoreError::NotFound(key.clone()))?
                .merged();
            let mut status = current.get("status").cloned().unwrap_or(Value::Null);
            merge_patch(&mut status, patch);
            let mut obj = self.status_in(&mut txn, key, &status, expected_rv)?;
            stamp(&mut obj, txn.commit_rv()?.as_deref());
            Ok(obj)
        })
    }
}

impl Store {
    /// Sets the status fields `fields` of `key` as they are in `status`
    /// (each replaced whole, or removed), under the lock; the others stay.
    pub fn set_status_fields(
        &self,
        key: &ObjectKey,
        status: &Value,
        fields: &[&str],
        durability: Durability,
    ) -> Result<Value> {
        self.retrying(|| {
            let mut txn = self.txn(false)?;
            txn.durability = durability;
            let current = txn
                .read_raw(key)?
                .ok_or_else(|| StoreError::NotFound(key.clone()))?
                .merged();
            let mut next = current.get("status").cloned().unwrap_or(Value::Null);
            set_fields(&mut next, status, fields);
            let mut obj = self.status_in(&mut txn, key, &next, None)?;
            stamp(&mut obj, txn.commit_rv()?.as_deref());
            Ok(obj)
        })
    }

    /// Creates or updates each object of `objects` (as `apply` does) and
    /// writes the status each carries, all in one transaction: every
    /// object with its status, or (an error) none. A
    /// `metadata.resourceVersion` in an object is a precondition.
    pub fn apply_with_status(&self, objects: &[Value]) -> Result<Vec<Value>> {
        self.retrying(|| {
            let mut txn = self.txn(false)?;
            let mut out = Vec::new();
            for o in objects {
                let (_, obj) = super::apply::txn_apply(&mut txn, o)?;
                let obj = match o.get("status") {
                    Some(st) if !st.is_null() => {
                        let key = super::apply::key_of_desired(o)?;
                        self.status_in(&mut txn, &key, st, None)?
                    }
                    _ => obj,
                };
                out.push(obj);
            }
            let rev = txn.commit_rv()?;
            for o in &mut out {
                stamp(o, rev.as_deref());
            }
            Ok(out)
        })
    }
}

impl<K: Object> Api<K> {
    /// Writes the status fields `fields` (top-level names, camelCase) as
    /// they are in `status`, and no other: the write of one field owner.
    pub fn patch_status_fields(
        &self,
        name: &str,
        status: &K::Status,
        fields: &[&str],
        durability: Durability,
    ) -> Result<K> {
        let v = serde_json::to_value(status).expect("status serializes");
        self.decode(
            self.store()
                .set_status_fields(&self.key(name), &v, fields, durability)?,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_follows_rfc_7386() {
        let cases = [
            (json!({"a": 1, "b": 2}), json!({"a": null}), json!({"b": 2})),
            (
                json!({"a": {"x": 1}}),
                json!({"a": {"y": 2}}),
                json!({"a": {"x": 1, "y": 2}}),
            ),
            (json!({"a": [1, 2]}), json!({"a": [3]}), json!({"a": [3]})),
            (json!(null), json!({"a": 1}), json!({"a": 1})),
            (
                json!({"a": 1}),
                json!({"b": {"c": null}}),
                json!({"a": 1, "b": {}}),
            ),
        ];
        for (mut target, patch, want) in cases {
            merge_patch(&mut target, &patch);
            assert_eq!(target, want, "patch {patch}");
        }
    }

    #[test]
    fn owned_fields_are_replaced_whole_or_removed_and_others_kept() {
        let status = json!({"phase": "Idle", "pid": 3, "launch": {"at": "t2"}});
        let mut stored = json!({
            "phase": "Busy",
            "account": "a",
            "launch": {"at": "t1", "confirmedAt": "t1"},
            "lastSwap": {"epoch": 2},
        });
        set_fields(&mut stored, &status, &["phase", "pid", "account", "launch"]);
        assert_eq!(
            stored,
            json!({"phase": "Idle", "pid": 3, "launch": {"at": "t2"}, "lastSwap": {"epoch": 2}}),
            "a field is replaced, not merged: the old launch's confirmation goes"
        );
    }
}

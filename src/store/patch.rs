//! Status writes by field owner: each status field has one writer, and a
//! writer changes only its own fields (a JSON merge patch of them), so two
//! controllers writing one object's status never undo each other (see
//! docs/state.md).

use super::local::{Api, Durability, Result, Store, StoreError};
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

/// The merge patch that sets each of `fields` to its value in `status`, or
/// removes it where `status` has none.
pub fn owned_fields_patch(status: &Value, fields: &[&str]) -> Value {
    let mut patch = Map::new();
    for f in fields {
        patch.insert(
            f.to_string(),
            status.get(*f).cloned().unwrap_or(Value::Null),
        );
    }
    Value::Object(patch)
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
        let mut txn = self.txn(false)?;
        txn.durability = durability;
        let current = txn
            .read_raw(key)?
            .ok_or_else(|| StoreError::NotFound(key.clone()))?
            .merged();
        let mut status = current.get("status").cloned().unwrap_or(Value::Null);
        merge_patch(&mut status, patch);
        let obj = self.status_in(&mut txn, key, &status, expected_rv)?;
        txn.commit()?;
        Ok(obj)
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
        let patch = owned_fields_patch(&v, fields);
        self.decode(
            self.store()
                .patch_status(&self.key(name), &patch, None, durability)?,
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
    fn owned_fields_are_set_or_removed_and_others_kept() {
        let status = json!({"phase": "Idle", "pid": 3});
        let patch = owned_fields_patch(&status, &["phase", "pid", "account"]);
        assert_eq!(patch, json!({"phase": "Idle", "pid": 3, "account": null}));
        let mut stored = json!({"phase": "Busy", "account": "a", "lastSwap": {"epoch": 2}});
        merge_patch(&mut stored, &patch);
        assert_eq!(
            stored,
            json!({"phase": "Idle", "pid": 3, "lastSwap": {"epoch": 2}})
        );
    }
}

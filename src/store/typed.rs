//! A typed view over one kind, like kube's `Api<K>`.

use super::Durability;
use super::local::{DeleteOutcome, Result, Store, StoreError};
use super::quarantine::{CorruptObject, Level, Listing};
use crate::api::{Object, ObjectKey};
use serde_json::{Map, Value, json};

impl Store {
    /// [`Store::list_report`], with the objects that do not decode as their
    /// kind (JSON of the wrong shape) moved to the corrupt ones, as the
    /// typed [`Api::list`] finds them.
    pub fn list_checked(&self, kind: crate::api::Kind, namespace: Option<&str>) -> Result<Listing> {
        use crate::api::{Account, Kind, Lease, ManifestSync, Session, Swap, Task};
        let mut listing = match kind {
            Kind::Account => self.api::<Account>(namespace).typed_listing(true)?.1,
            Kind::Session => self.api::<Session>(namespace).typed_listing(true)?.1,
            Kind::Task => self.api::<Task>(namespace).typed_listing(true)?.1,
            Kind::Swap => self.api::<Swap>(namespace).typed_listing(true)?.1,
            Kind::Lease => self.api::<Lease>(namespace).typed_listing(true)?.1,
            Kind::ManifestSync => self.api::<ManifestSync>(namespace).typed_listing(true)?.1,
            Kind::Node => {
                self.api::<crate::api::Node>(namespace)
                    .typed_listing(true)?
                    .1
            }
            Kind::SessionPool => {
                self.api::<crate::api::SessionPool>(namespace)
                    .typed_listing(true)?
                    .1
            }
        };
        listing.corrupt.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(listing)
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

/// A typed view over one kind.
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
        let key = key_in(K::KIND, &v);
        serde_json::from_value(v).map_err(|e| StoreError::Corrupt {
            path: self.store.spec_file(&key),
            message: format!("not a valid {}: {e}", K::KIND),
        })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// One object; one that does not decode as `K` is an error naming its
    /// file (and is quarantined).
    pub fn get(&self, name: &str) -> Result<Option<K>> {
        let key = self.key(name);
        let Some(v) = self.store.get(&key)? else {
            self.store.note_decoded(&key, Ok(()));
            return Ok(None);
        };
        let r = self.decode(v);
        self.store.note_decoded(
            &key,
            r.as_ref().map(|_| ()).map_err(|e| match e {
                StoreError::Corrupt { message, .. } => message.clone(),
                e => e.to_string(),
            }),
        );
        r.map(Some)
    }

    /// Every object that decodes as `K`; the others are quarantined (logged,
    /// recorded, counted by [`Store::corrupt`]) and skipped, so one bad file
    /// never stalls a controller.
    pub fn list(&self) -> Result<Vec<K>> {
        Ok(self.typed_listing(false)?.0)
    }

    /// The objects that decode, and the listing (every corrupt one, and
    /// with `keep_json` the JSON of the good ones: without it, each
    /// object's JSON is dropped as it is decoded, so a long listing is not
    /// held in both forms).
    fn typed_listing(&self, keep_json: bool) -> Result<(Vec<K>, Listing)> {
        let ns = self.namespace.as_deref();
        let mut listing = self.store.list_report(K::KIND, ns)?;
        let mut out = Vec::with_capacity(listing.objects.len());
        let mut good = Vec::with_capacity(if keep_json { listing.objects.len() } else { 0 });
        let mut bad = Vec::new();
        for v in std::mem::take(&mut listing.objects) {
            let (decoded, key) = if keep_json {
                let d = self.decode(v.clone());
                if d.is_ok() {
                    good.push(v);
                    (d, None)
                } else {
                    (d, Some(key_in(K::KIND, &v)))
                }
            } else {
                let key = key_in(K::KIND, &v);
                (self.decode(v), Some(key))
            };
            match decoded {
                Ok(o) => out.push(o),
                Err(StoreError::Corrupt { path, message }) => bad.push(CorruptObject {
                    key: key.expect("kept for an object that does not decode"),
                    path,
                    reason: message,
                }),
                Err(e) => return Err(e),
            }
        }
        let kind_dir = self.store.kind_dir(K::KIND);
        let scope = match ns {
            Some(ns) => kind_dir.join(ns),
            None => kind_dir,
        };
        let fresh = self.store.quarantine().relisted(&scope, Level::Typed, &bad);
        self.store.report_corrupt(&fresh);
        listing.objects = good;
        listing.corrupt.extend(bad);
        Ok((out, listing))
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
fn finalizer_edit(finalizer: &str, present: bool) -> impl FnMut(&mut Map<String, Value>) {
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

/// The key a listed object (one that read as its kind and name) names.
fn key_in(kind: crate::api::Kind, v: &Value) -> ObjectKey {
    let s = |p: &str| v.pointer(p).and_then(Value::as_str).unwrap_or_default();
    ObjectKey::new(kind, s("/metadata/namespace"), s("/metadata/name"))
}

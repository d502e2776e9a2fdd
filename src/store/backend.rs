//! Where a store's bytes live (see docs/store-backends.md): the local
//! directory (`local.rs`, `txn.rs`) or an etcd cluster (`etcd.rs`), and what
//! the object layer does the same way over both: documents read with their
//! revision, listings of a namespace on etcd, resourceVersions known only
//! at commit, transactions run again when they lose a race.

use super::etcd::{Etcd, EtcdOptions, EtcdUrl};
use super::local::{CONTENDED_TRIES, Raw, Result, Store, StoreError, check_shape};
use super::quarantine::{CorruptObject, Listing, Quarantine};
use crate::api::{Kind, ObjectKey};
use serde_json::{Value, json};
use std::path::Path;
use std::sync::Arc;

/// Where a store's bytes live.
#[derive(Clone, Debug)]
pub(crate) enum Backend {
    /// The directory `root`.
    Local,
    Etcd(Arc<Etcd>),
}

/// The resourceVersion an etcd transaction writes before it knows its
/// revision: newer than any (so a merge of spec and status picks it), and
/// replaced by the commit's revision in what the write returns.
pub(super) const PENDING_RV: &str = "18446744073709551615";

/// Replaces a pending resourceVersion in `obj` by the commit's revision.
pub(super) fn stamp(obj: &mut Value, revision: Option<&str>) {
    if let Some(rev) = revision
        && let Some(rv) = obj.pointer_mut("/metadata/resourceVersion")
        && rv.as_str() == Some(PENDING_RV)
    {
        *rv = json!(rev);
    }
}

impl Store {
    /// Connects to the etcd store at `url` (see [`EtcdUrl`]).
    pub fn connect(url: &EtcdUrl, opts: &EtcdOptions) -> Result<Store> {
        let etcd = Etcd::connect(url, opts)?;
        // A first read: an unreachable cluster is told now, not at the
        // first write.
        etcd.revision()?;
        Ok(Store {
            root: Arc::new(etcd.root()),
            quarantine: Quarantine::default(),
            backend: Backend::Etcd(Arc::new(etcd)),
        })
    }

    /// Opens the store a setting names: `etcd://...` (see [`EtcdUrl`]) or
    /// a directory.
    pub fn open_location(location: &str, opts: &EtcdOptions) -> Result<Store> {
        match EtcdUrl::parse(location) {
            Some(url) => Store::connect(&url.map_err(StoreError::Malformed)?, opts),
            None => Store::open(crate::fsutil::expand_home(location)),
        }
    }

    /// The etcd connection, when the store is on etcd.
    pub(crate) fn etcd(&self) -> Option<&Arc<Etcd>> {
        match &self.backend {
            Backend::Etcd(e) => Some(e),
            Backend::Local => None,
        }
    }

    /// Whether the store is on etcd (else a local directory).
    pub fn is_etcd(&self) -> bool {
        self.etcd().is_some()
    }

    /// Why the store does not answer, if it does not (etcd without a
    /// quorum, or no member reachable; a local directory always answers).
    pub fn outage(&self) -> Option<super::Outage> {
        self.etcd().and_then(|e| e.outage())
    }

    /// Asks an etcd store every [`super::PROBE_EVERY`] whether it answers,
    /// so that [`Store::outage`] is current while nothing else asks (what
    /// `/readyz` reports); runs until dropped. Nothing on a local store.
    pub async fn probe_forever(self) {
        let Some(etcd) = self.etcd().cloned() else {
            return std::future::pending().await;
        };
        loop {
            let e = etcd.clone();
            let _ = tokio::task::spawn_blocking(move || e.probe()).await;
            tokio::time::sleep(super::PROBE_EVERY).await;
        }
    }

    /// The store-relative key of a location inside the store.
    pub(super) fn rel_key(&self, path: &Path) -> Result<String> {
        path.strip_prefix(self.root())
            .ok()
            .and_then(Path::to_str)
            .map(str::to_string)
            .ok_or_else(|| StoreError::Io {
                path: path.to_path_buf(),
                source: std::io::Error::other("outside the store"),
            })
    }

    /// Reads one document (None when it is not there), as
    /// [`Store::read_json`] on the local store; on etcd the key's revision
    /// becomes its resourceVersion. Also returns that revision (0: none).
    pub(super) fn read_doc(&self, path: &Path) -> Result<(Option<Value>, i64)> {
        let Some(etcd) = self.etcd() else {
            return Ok((Self::read_json(path)?, 0));
        };
        let rel = self.rel_key(path)?;
        let Some(kv) = etcd.get(&rel)? else {
            return Ok((None, 0));
        };
        Ok((
            Some(parse_doc(path, &rel, &kv.value, kv.mod_revision)?),
            kv.mod_revision,
        ))
    }

    /// Runs a write again while it loses races to other writers (etcd; a
    /// local transaction holds the lock and never does).
    pub(super) fn retrying<T>(&self, mut op: impl FnMut() -> Result<T>) -> Result<T> {
        let mut tries = 1;
        loop {
            match op() {
                Err(StoreError::Contended(_)) if tries < CONTENDED_TRIES => {
                    contended_backoff(tries);
                    tries += 1
                }
                r => return r,
            }
        }
    }

    /// [`Store::list_namespace`] on etcd: one range read of the namespace,
    /// spec and status documents paired by name.
    pub(super) fn list_namespace_etcd(
        &self,
        kind: Kind,
        ns: &str,
        out: &mut Listing,
    ) -> Result<()> {
        let etcd = self.etcd().expect("called on etcd only");
        let dir = format!("{}/{ns}", kind.plural());
        let (kvs, _) = etcd.range(&dir)?;
        let mut specs = std::collections::BTreeMap::new();
        let mut statuses = std::collections::HashMap::new();
        for kv in kvs {
            let Some(file) = kv.rel.strip_prefix(&format!("{dir}/")) else {
                continue;
            };
            if let Some(n) = file.strip_suffix(".status.json") {
                statuses.insert(n.to_string(), kv);
            } else if let Some(n) = file.strip_suffix(".json")
                && crate::manifest::validate::dns1123_label(n).is_ok()
            {
                specs.insert(n.to_string(), kv);
            }
        }
        for (name, kv) in specs {
            let key = ObjectKey::new(kind, ns, &name);
            let spec_path = self.root().join(&kv.rel);
            let raw =
                parse_doc(&spec_path, &kv.rel, &kv.value, kv.mod_revision).and_then(|spec_doc| {
                    let status_doc = match statuses.remove(&name) {
                        Some(st) => Some(parse_doc(
                            &self.root().join(&st.rel),
                            &st.rel,
                            &st.value,
                            st.mod_revision,
                        )?),
                        None => None,
                    };
                    let raw = Raw {
                        spec_doc,
                        status_doc,
                    };
                    check_shape(&key, &raw).map_err(|message| StoreError::Corrupt {
                        path: spec_path.clone(),
                        message,
                    })?;
                    Ok(raw)
                });
            match raw {
                Ok(raw) => out.objects.push(raw.merged()),
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
}

/// The longest pause before a transaction that lost a race runs again.
const CONTENDED_PAUSE: std::time::Duration = std::time::Duration::from_millis(50);

/// A random pause, longer with each try (up to [`CONTENDED_PAUSE`]), so
/// writers racing on one key do not keep colliding in step.
pub(super) fn contended_backoff(tries: usize) {
    let mut b = [0u8; 2];
    let _ = getrandom::fill(&mut b);
    let cap = CONTENDED_PAUSE.as_micros() as u64 * (tries.min(8) as u64) / 8;
    let pause = u64::from(u16::from_le_bytes(b)) % cap.max(1);
    std::thread::sleep(std::time::Duration::from_micros(pause));
}

/// Decodes a document read from etcd (`rel` at `path`): JSON, or
/// [`StoreError::Corrupt`] as on disk. An object's documents take the key's
/// revision as their resourceVersion.
pub(super) fn parse_doc(path: &Path, rel: &str, bytes: &[u8], revision: i64) -> Result<Value> {
    let corrupt = |message: String| StoreError::Corrupt {
        path: path.to_path_buf(),
        message,
    };
    if bytes.is_empty() {
        return Err(corrupt("the value is empty".into()));
    }
    let mut v: Value = serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
    let first = rel.split('/').next().unwrap_or_default();
    if Kind::ALL.iter().any(|k| k.plural() == first) {
        let rev = json!(revision.to_string());
        if rel.ends_with(".status.json") {
            if let Some(m) = v.as_object_mut() {
                m.insert("resourceVersion".into(), rev);
            }
        } else if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
            m.insert("resourceVersion".into(), rev);
        }
    }
    Ok(v)
}

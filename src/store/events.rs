//! Events: what happened to an object, kept bounded beside it in the store
//! and shown by `describe`. Repeats of the same reason and message are
//! folded into one entry with a count, as Kubernetes does.

use super::local::{Result, Store, StoreError};
use super::txn::Txn;
use crate::api::{ObjectKey, Time};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Events kept per object.
pub const EVENTS_KEPT: usize = 20;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredEvent {
    /// `Normal` or `Warning`.
    #[serde(rename = "type")]
    pub type_: String,
    pub reason: String,
    pub message: String,
    pub count: u32,
    pub first_timestamp: Time,
    pub last_timestamp: Time,
    /// Who reported it (`sync`, a controller name).
    pub source: String,
}

fn path(store: &Store, key: &ObjectKey) -> Result<PathBuf> {
    super::names::check_key(key)?;
    Ok(store
        .root()
        .join("events")
        .join(key.kind.plural())
        .join(&key.namespace)
        .join(format!("{}.json", key.name)))
}

pub(super) fn remove(txn: &mut Txn<'_>, key: &ObjectKey) -> Result<()> {
    let p = path(txn.store(), key)?;
    txn.remove(&p)
}

impl Store {
    /// The recent events of an object, oldest first.
    pub fn events(&self, key: &ObjectKey) -> Result<Vec<StoredEvent>> {
        let p = path(self, key)?;
        if self.is_etcd() {
            return Ok(match self.read_doc(&p) {
                Ok((Some(v), _)) => serde_json::from_value(v).unwrap_or_default(),
                Ok((None, _)) | Err(StoreError::Corrupt { .. }) => Vec::new(),
                Err(e) => return Err(e),
            });
        }
        match std::fs::read(p) {
            Ok(b) => Ok(serde_json::from_slice(&b).unwrap_or_default()),
            Err(_) => Ok(Vec::new()),
        }
    }

    /// On etcd: the objects whose recorded events change from now on (a
    /// `None`: list again, the watch's revision was compacted away). None
    /// on a local store (its events are files: watch the directory).
    pub fn event_changes(
        &self,
    ) -> Result<Option<tokio::sync::mpsc::UnboundedReceiver<Option<ObjectKey>>>> {
        let Some(mut keys) = super::watch_etcd::keys_changing(self, "events/")? else {
            return Ok(None);
        };
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let runtime = self.etcd().map(|e| e.runtime().clone());
        let spawn = async move {
            while let Some(k) = keys.recv().await {
                let key = match k {
                    None => None,
                    Some(rel) => match event_key_of(&rel) {
                        Some(key) => Some(key),
                        None => continue,
                    },
                };
                if tx.send(key).is_err() {
                    return;
                }
            }
        };
        if let Some(rt) = runtime {
            rt.spawn(spawn);
        }
        Ok(Some(rx))
    }

    /// Every object that has recorded events (in no particular order).
    pub fn event_keys(&self) -> Result<Vec<ObjectKey>> {
        let parse = event_key;
        if let Some(etcd) = self.etcd() {
            let (kvs, _) = etcd.range("events")?;
            return Ok(kvs.iter().filter_map(|kv| event_key_of(&kv.rel)).collect());
        }
        let read = |d: &std::path::Path| {
            std::fs::read_dir(d)
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|e| e.file_name().to_str().map(str::to_string))
                .collect::<Vec<_>>()
        };
        let dir = self.root().join("events");
        let mut out = Vec::new();
        for plural in read(&dir) {
            for ns in read(&dir.join(&plural)) {
                for file in read(&dir.join(&plural).join(&ns)) {
                    out.extend(parse(&plural, &ns, &file));
                }
            }
        }
        Ok(out)
    }

    /// Records an event about `key` (`warning`: type Warning, else Normal).
    pub fn record_event(
        &self,
        key: &ObjectKey,
        warning: bool,
        reason: &str,
        message: &str,
        source: &str,
    ) -> Result<()> {
        self.retrying(|| self.record_event_once(key, warning, reason, message, source))
    }

    fn record_event_once(
        &self,
        key: &ObjectKey,
        warning: bool,
        reason: &str,
        message: &str,
        source: &str,
    ) -> Result<()> {
        // Events are told, not relied on: they wait for the disk.
        let mut txn = self.txn(false)?;
        txn.durability = super::Durability::Soon;
        let p = path(self, key)?;
        let mut list: Vec<StoredEvent> = if self.is_etcd() {
            // Read through the transaction: two writers never lose one.
            match txn.read_json(&p) {
                Ok(v) => v
                    .and_then(|v| serde_json::from_value(v).ok())
                    .unwrap_or_default(),
                Err(StoreError::Corrupt { .. }) => Vec::new(),
                Err(e) => return Err(e),
            }
        } else {
            self.events(key)?
        };
        let now = crate::api::now();
        let type_ = if warning { "Warning" } else { "Normal" };
        match list
            .iter_mut()
            .find(|e| e.reason == reason && e.message == message && e.type_ == type_)
        {
            Some(e) => {
                e.count += 1;
                e.last_timestamp = now;
            }
            None => list.push(StoredEvent {
                type_: type_.into(),
                reason: reason.into(),
                message: message.into(),
                count: 1,
                first_timestamp: now.clone(),
                last_timestamp: now,
                source: source.into(),
            }),
        }
        list.sort_by(|a, b| a.last_timestamp.cmp(&b.last_timestamp));
        if list.len() > EVENTS_KEPT {
            list.drain(..list.len() - EVENTS_KEPT);
        }
        txn.write_json(&p, &serde_json::to_value(&list).expect("events serialize"))?;
        txn.commit()
    }
}

/// The object whose events are in `PLURAL/NS/NAME.json` (None for temp
/// files and anything else).
fn event_key(plural: &str, ns: &str, file: &str) -> Option<ObjectKey> {
    if file.starts_with('.') {
        return None;
    }
    let kind = crate::api::Kind::ALL
        .into_iter()
        .find(|k| k.plural() == plural)?;
    let key = ObjectKey::new(kind, ns, file.strip_suffix(".json")?);
    super::names::check_key(&key).ok().map(|()| key)
}

/// The object of an etcd key `events/PLURAL/NS/NAME.json`.
fn event_key_of(rel: &str) -> Option<ObjectKey> {
    let parts: Vec<&str> = rel.split('/').collect();
    let ["events", plural, ns, file] = parts.as_slice() else {
        return None;
    };
    event_key(plural, ns, file)
}

//! The daemon's feed of what changes in the store, for the control plane's
//! event stream (`GET /api/v1/watch`) and for whatever must wake on a change.
//!
//! Two producers, both level-triggered like the rest of the daemon:
//! - the reflector cache of each kind ([`crate::store::cache`]): every
//!   object added, modified or deleted becomes a [`Change`];
//! - a watch of `STORE/events/`: every event recorded by any process (the
//!   controllers, the sync, the CLI, the API) becomes an [`EventItem`] as
//!   soon as its file changes; an event seen again (folded, count up) is
//!   sent again with its new count.
//!
//! Both relist every `resync` period, so a missed file notification only
//! delays an item. Subscribers that fall behind by more than
//! [`CAPACITY`] items are told how many they missed.

use crate::api::{Kind, Object, ObjectKey};
use crate::store::cache::{Cache, Changed};
use crate::store::{Store, StoredEvent};
use futures::StreamExt;
use serde::Serialize;
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::broadcast;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

/// Items kept for a slow subscriber before it starts missing them.
pub const CAPACITY: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum ChangeType {
    Added,
    Modified,
    Deleted,
}

/// An object that changed, whole (as `get -o json` shows it).
#[derive(Debug, Clone, Serialize)]
pub struct Change {
    #[serde(rename = "type")]
    pub type_: ChangeType,
    pub object: Value,
}

/// Which object an event is about.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InvolvedObject {
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
}

impl From<&ObjectKey> for InvolvedObject {
    fn from(k: &ObjectKey) -> Self {
        InvolvedObject {
            kind: k.kind.name(),
            namespace: k.namespace.clone(),
            name: k.name.clone(),
        }
    }
}

/// One recorded event: object, type, reason, message, times, count, source.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EventItem {
    pub involved_object: InvolvedObject,
    #[serde(flatten)]
    pub event: StoredEvent,
}

#[derive(Debug, Clone)]
pub enum Item {
    Change(Kind, Change),
    Event(EventItem),
}

impl Item {
    pub fn kind(&self) -> Kind {
        match self {
            Item::Change(k, _) => *k,
            Item::Event(e) => {
                Kind::from_kind_field(e.involved_object.kind).expect("events name one of the kinds")
            }
        }
    }

    pub fn namespace(&self) -> &str {
        match self {
            Item::Change(_, c) => c
                .object
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .unwrap_or_default(),
            Item::Event(e) => &e.involved_object.namespace,
        }
    }
}

/// The feed. Cheap to clone.
#[derive(Clone)]
pub struct Bus {
    tx: broadcast::Sender<Item>,
}

impl Default for Bus {
    fn default() -> Self {
        Bus::new()
    }
}

impl Bus {
    pub fn new() -> Bus {
        Bus {
            tx: broadcast::channel(CAPACITY).0,
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Item> {
        self.tx.subscribe()
    }

    fn send(&self, item: Item) {
        // No subscriber is not an error.
        let _ = self.tx.send(item);
    }

    /// Follows a cache of kind `K`: sends every change of its objects.
    /// `listed` runs once the cache holds its first listing (changes before
    /// it are the starting point, not sent). Runs until the task is aborted.
    pub async fn follow<K: Object>(self, cache: Cache<K>, listed: impl FnOnce()) {
        let mut changes = Box::pin(cache.changes());
        cache.listed().await;
        listed();
        while let Some(c) = changes.next().await {
            let (type_, o) = match &c {
                Changed::Added(o) => (ChangeType::Added, o),
                Changed::Modified(_, o) => (ChangeType::Modified, o),
                Changed::Deleted(o) => (ChangeType::Deleted, o),
                Changed::Listed | Changed::Lagged => continue,
            };
            self.send(Item::Change(K::KIND, change(type_, o.as_ref())));
        }
    }

    /// Follows the events recorded in `store`; `listed` runs once the
    /// existing events are read (the starting point: what is recorded from
    /// then on is sent). Runs until the task is aborted.
    pub async fn follow_events(self, store: Store, resync: Duration, listed: impl FnOnce()) {
        let dir = store.root().join("events");
        let (ntx, mut nrx) = tokio::sync::mpsc::unbounded_channel::<Option<PathBuf>>();
        let Some(watcher) = watch_events(&store, &dir, ntx).await else {
            return;
        };
        let mut known = list_events(&store).await;
        tracing::debug!(objects = known.len(), "events feed listed");
        listed();
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + resync, resync);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let batch = tokio::select! {
                _ = tick.tick() => Batch { rescan: true, ..Batch::default() },
                Some(first) = nrx.recv() => Batch::of(&dir, first, &mut nrx),
            };
            let rescan = batch.rescan;
            let read = read_events(&store, &watcher, batch).await;
            if rescan {
                known.retain(|k, _| read.iter().any(|(r, _)| r == k));
            }
            for (key, list) in read {
                let before = known.get(&key).map(Vec::as_slice).unwrap_or_default();
                for event in new_events(before, &list) {
                    tracing::trace!(object = %key, reason = %event.reason, "event streamed");
                    let involved_object = InvolvedObject::from(&key);
                    self.send(Item::Event(EventItem {
                        involved_object,
                        event,
                    }));
                }
                if list.is_empty() {
                    known.remove(&key);
                } else {
                    known.insert(key, list);
                }
            }
        }
    }
}

/// The files' watcher of a local store's events (None on etcd, or when
/// the watch could not be set up), shared with the blocking reads.
type EventsWatcher = Arc<Mutex<Option<notify::RecommendedWatcher>>>;

/// Sends what changes under the events to `ntx`: a path per changed
/// object (its file, or on etcd its stand-in path), None for "read them
/// all again". Set up before the listing, so nothing falls between. None
/// when the daemon is shutting down.
async fn watch_events(
    store: &Store,
    dir: &Path,
    ntx: UnboundedSender<Option<PathBuf>>,
) -> Option<EventsWatcher> {
    if !store.is_etcd() {
        let _ = std::fs::create_dir_all(dir);
    } else {
        let s = store.clone();
        match tokio::task::spawn_blocking(move || s.event_changes()).await {
            Ok(Ok(Some(mut keys))) => {
                let (ntx, dir) = (ntx.clone(), dir.to_path_buf());
                tokio::spawn(async move {
                    while let Some(k) = keys.recv().await {
                        if ntx.send(k.map(|k| event_file(&dir, &k))).is_err() {
                            return;
                        }
                    }
                });
            }
            Ok(Ok(None)) => {}
            Ok(Err(e)) => {
                tracing::warn!(store = %dir.display(), error = %e, "cannot watch the events; streaming them every resync period only")
            }
            Err(_) => return None,
        }
        // On etcd there are no files: the etcd watch tells.
        return Some(Arc::new(Mutex::new(None)));
    }
    let watcher = {
        use notify::Watcher;
        notify::recommended_watcher(move |res: notify::Result<notify::Event>| match res {
            ref r if !crate::fsutil::is_change(r) => {}
            Ok(ev) if !ev.need_rescan() => {
                for p in ev.paths {
                    let _ = ntx.send(Some(p));
                }
            }
            _ => {
                let _ = ntx.send(None);
            }
        })
        .and_then(|mut w| w.watch(dir, notify::RecursiveMode::Recursive).map(|_| w))
    };
    let watcher = watcher
        .inspect_err(|e| tracing::warn!(dir = %dir.display(), error = %e, "cannot watch the events; streaming them every resync period only"))
        .ok();
    Some(Arc::new(Mutex::new(watcher)))
}

/// Every object's events as recorded now.
async fn list_events(store: &Store) -> HashMap<ObjectKey, Vec<StoredEvent>> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || {
        let keys = store.event_keys().unwrap_or_default();
        keys.into_iter()
            .filter_map(|k| Some((k.clone(), store.events(&k).ok()?)))
            .collect()
    })
    .await
    .unwrap_or_default()
}

/// What one wake-up of the events' feed must read.
#[derive(Default)]
struct Batch {
    /// The objects whose events changed.
    keys: Vec<ObjectKey>,
    /// Directories that appeared (to be watched too).
    new_dirs: Vec<PathBuf>,
    /// Read every object's events (a resync, a watch that overflowed, a
    /// new directory whose files may predate its watch).
    rescan: bool,
}

impl Batch {
    /// `first` and every notification already queued behind it.
    fn of(
        dir: &Path,
        first: Option<PathBuf>,
        rx: &mut UnboundedReceiver<Option<PathBuf>>,
    ) -> Batch {
        let mut batch = Batch::default();
        let mut next = Some(first);
        while let Some(p) = next {
            match p {
                None => batch.rescan = true,
                Some(p) => match key_of_event_file(dir, &p) {
                    Some(k) => batch.keys.push(k),
                    None if p.is_dir() => {
                        batch.rescan = true;
                        batch.new_dirs.push(p);
                    }
                    // Temp files of atomic writes.
                    None => {}
                },
            }
            next = rx.try_recv().ok();
        }
        batch
    }
}

/// The events of the objects `batch` names (of all, on a rescan), once its
/// new directories are watched.
async fn read_events(
    store: &Store,
    watcher: &EventsWatcher,
    batch: Batch,
) -> Vec<(ObjectKey, Vec<StoredEvent>)> {
    let (store, watcher) = (store.clone(), watcher.clone());
    tokio::task::spawn_blocking(move || {
        if let Some(w) = watcher.lock().expect("watcher lock").as_mut() {
            for d in &batch.new_dirs {
                crate::fsutil::watch_new_dir(w, d);
            }
        }
        let mut keys = match batch.rescan {
            true => store.event_keys().unwrap_or_default(),
            false => batch.keys,
        };
        keys.sort();
        keys.dedup();
        keys.into_iter()
            .map(|k| {
                let list = store.events(&k).unwrap_or_default();
                (k, list)
            })
            .collect()
    })
    .await
    .unwrap_or_default()
}

fn change<K: Object>(type_: ChangeType, o: &K) -> Change {
    Change {
        type_,
        object: serde_json::to_value(o).expect("objects serialize"),
    }
}

/// The file (local store) or the stand-in path (etcd) of `key`'s events
/// under `dir`, as [`key_of_event_file`] reads it back.
fn event_file(dir: &Path, key: &ObjectKey) -> PathBuf {
    dir.join(key.kind.plural())
        .join(&key.namespace)
        .join(format!("{}.json", key.name))
}

/// `STORE/events/<plural>/<ns>/<name>.json` → its object (None for
/// anything else: directories, temp files).
fn key_of_event_file(dir: &Path, p: &Path) -> Option<ObjectKey> {
    let rel = p.strip_prefix(dir).ok()?;
    let parts: Vec<&str> = rel.iter().filter_map(|c| c.to_str()).collect();
    let [plural, ns, file] = parts.as_slice() else {
        return None;
    };
    if file.starts_with('.') {
        return None;
    }
    let kind = Kind::ALL.into_iter().find(|k| k.plural() == *plural)?;
    Some(ObjectKey::new(kind, ns, file.strip_suffix(".json")?))
}

/// The events of `after` that are new or were seen again since `before`.
fn new_events(before: &[StoredEvent], after: &[StoredEvent]) -> Vec<StoredEvent> {
    after
        .iter()
        .filter(|e| {
            !before.iter().any(|b| {
                b.type_ == e.type_
                    && b.reason == e.reason
                    && b.message == e.message
                    && b.count == e.count
                    && b.last_timestamp == e.last_timestamp
            })
        })
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_files_and_new_events() {
        let dir = Path::new("/s/events");
        assert_eq!(
            key_of_event_file(dir, Path::new("/s/events/tasks/default/t1.json")),
            Some(ObjectKey::new(Kind::Task, "default", "t1"))
        );
        assert_eq!(
            key_of_event_file(dir, Path::new("/s/events/tasks/default/.t1.json.tmp.1.2")),
            None
        );
        assert_eq!(
            key_of_event_file(dir, Path::new("/s/events/tasks/default")),
            None
        );
        let ev = |reason: &str, count: u32| StoredEvent {
            type_: "Normal".into(),
            reason: reason.into(),
            message: "m".into(),
            count,
            first_timestamp: crate::api::now(),
            last_timestamp: crate::api::now(),
            source: "test".into(),
        };
        let a = ev("A", 1);
        let b = ev("B", 1);
        let mut a2 = a.clone();
        a2.count = 2;
        let before = vec![a.clone()];
        let after = vec![a.clone(), b.clone()];
        assert_eq!(new_events(&before, &after), vec![b.clone()]);
        assert_eq!(new_events(&[a.clone(), b.clone()], &[a2.clone(), b]), [a2]);
    }
}

//! The daemon's feed of what changes in the store, for the control plane's
//! event stream (`GET /api/v1/watch`) and for whatever must wake on a change.
//!
//! Two producers, both level-triggered like the rest of the daemon:
//! - one store watch per kind ([`crate::store::watch`]): every object
//!   added, modified or deleted becomes a [`Change`], and wakes the
//!   [`Notify`]s registered for that kind (the task dispatcher, the object
//!   gauges);
//! - a watch of `STORE/events/`: every event recorded by any process (the
//!   controllers, the sync, the CLI, the API) becomes an [`EventItem`] as
//!   soon as its file changes; an event seen again (folded, count up) is
//!   sent again with its new count.
//!
//! Both relist every `resync` period, so a missed file notification only
//! delays an item. Subscribers that fall behind by more than
//! [`CAPACITY`] items are told how many they missed.

use crate::api::{Kind, Object, ObjectKey};
use crate::store::watch::{WatchConfig, watch};
use crate::store::{Store, StoredEvent};
use futures::StreamExt;
use kube::runtime::watcher::Event;
use serde::Serialize;
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, broadcast};

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

    /// Follows objects of kind `K`: sends their changes, wakes `wake` on
    /// every watch item, and hands the `summary` of every object of the
    /// kind to `settled` whenever a batch of items is applied (never in the
    /// middle of a relist). Only summaries are kept in memory (the phase,
    /// for counting), not the objects. Runs until the task is aborted.
    pub async fn follow<K: Object, S>(
        self,
        store: Store,
        resync: Duration,
        wake: Vec<Arc<Notify>>,
        summary: impl Fn(&K) -> S,
        settled: impl Fn(&mut dyn Iterator<Item = &S>),
    ) {
        let events = watch::<K>(
            store,
            WatchConfig {
                namespace: None,
                resync,
            },
        );
        // What is already queued is one batch: a burst (an apply of many
        // objects) is settled once.
        let mut batches = std::pin::pin!(events.ready_chunks(256));
        let mut tracker = ChangeTracker::default();
        let mut first = true;
        while let Some(batch) = batches.next().await {
            for w in &wake {
                w.notify_one();
            }
            for ev in batch.into_iter().flatten() {
                for change in tracker.track(ev, &summary) {
                    self.send(Item::Change(K::KIND, change));
                }
            }
            if tracker.listed && tracker.relisting.is_none() {
                if first {
                    first = false;
                    tracing::debug!(kind = %K::KIND, objects = tracker.known.len(), "feed listed");
                }
                settled(&mut tracker.known.values().map(|(_, s)| s));
            }
        }
    }

    /// Follows the events recorded in `store`; `listed` runs once the
    /// existing events are read (the starting point: what is recorded from
    /// then on is sent). Runs until the task is aborted.
    pub async fn follow_events(self, store: Store, resync: Duration, listed: impl FnOnce()) {
        let dir = store.root().join("events");
        let _ = std::fs::create_dir_all(&dir);
        let (ntx, mut nrx) = tokio::sync::mpsc::unbounded_channel::<Option<PathBuf>>();
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
            .and_then(|mut w| w.watch(&dir, notify::RecursiveMode::Recursive).map(|_| w))
        };
        let _watcher = match watcher {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot watch the events; streaming them every resync period only");
                None
            }
        };
        let mut known: HashMap<ObjectKey, Vec<StoredEvent>> = HashMap::new();
        for key in event_files(&dir) {
            if let Ok(list) = store.events(&key) {
                known.insert(key, list);
            }
        }
        tracing::debug!(objects = known.len(), "events feed listed");
        listed();
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + resync, resync);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let mut keys = Vec::new();
            let mut rescan = false;
            tokio::select! {
                _ = tick.tick() => rescan = true,
                Some(first) = nrx.recv() => {
                    let mut batch = vec![first];
                    while let Ok(more) = nrx.try_recv() {
                        batch.push(more);
                    }
                    for p in batch {
                        match p {
                            None => rescan = true,
                            Some(p) => match key_of_event_file(&dir, &p) {
                                Some(k) => keys.push(k),
                                // A directory appeared: its files may predate the watch.
                                None if p.is_dir() => rescan = true,
                                // Temp files of atomic writes.
                                None => {}
                            },
                        }
                    }
                }
            }
            if rescan {
                keys = event_files(&dir);
                known.retain(|k, _| keys.contains(k));
            }
            keys.sort();
            keys.dedup();
            for key in keys {
                let list = store.events(&key).unwrap_or_default();
                let before = known.get(&key).map(Vec::as_slice).unwrap_or_default();
                for event in new_events(before, &list) {
                    tracing::trace!(object = %key, reason = %event.reason, "event streamed");
                    self.send(Item::Event(EventItem {
                        involved_object: InvolvedObject::from(&key),
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

/// Turns a watch stream into added / modified / deleted changes. The
/// first listing is the starting point and sends nothing; a later relist
/// sends what differs from what was known. Keeps the resourceVersion and
/// a summary of each object, not the object.
struct ChangeTracker<S> {
    known: HashMap<(String, String), (String, S)>,
    relisting: Option<HashMap<(String, String), (String, S)>>,
    listed: bool,
}

impl<S> Default for ChangeTracker<S> {
    fn default() -> Self {
        ChangeTracker {
            known: HashMap::new(),
            relisting: None,
            listed: false,
        }
    }
}

fn id_rv<K: Object>(o: &K) -> ((String, String), String) {
    let m = o.meta();
    let s = |x: &Option<String>| x.clone().unwrap_or_default();
    ((s(&m.namespace), s(&m.name)), s(&m.resource_version))
}

fn change<K: Object>(type_: ChangeType, o: &K) -> Change {
    Change {
        type_,
        object: serde_json::to_value(o).expect("objects serialize"),
    }
}

impl<S> ChangeTracker<S> {
    fn track<K: Object>(&mut self, ev: Event<K>, summary: &impl Fn(&K) -> S) -> Vec<Change> {
        let mut out = Vec::new();
        match ev {
            Event::Init => self.relisting = Some(HashMap::new()),
            Event::InitApply(o) => {
                let (id, rv) = id_rv(&o);
                if self.listed {
                    match self.known.get(&id) {
                        None => out.push(change(ChangeType::Added, &o)),
                        Some((old, _)) if *old != rv => out.push(change(ChangeType::Modified, &o)),
                        Some(_) => {}
                    }
                }
                if let Some(r) = self.relisting.as_mut() {
                    r.insert(id, (rv, summary(&o)));
                }
            }
            Event::InitDone => {
                let fresh = self.relisting.take().unwrap_or_default();
                if self.listed {
                    // Gone while a notification was missed: only its name
                    // and last resourceVersion are known.
                    for ((ns, name), (rv, _)) in &self.known {
                        if !fresh.contains_key(&(ns.clone(), name.clone())) {
                            out.push(Change {
                                type_: ChangeType::Deleted,
                                object: serde_json::json!({
                                    "apiVersion": crate::api::API_VERSION,
                                    "kind": K::KIND.name(),
                                    "metadata": {"namespace": ns, "name": name, "resourceVersion": rv},
                                }),
                            });
                        }
                    }
                }
                self.known = fresh;
                self.listed = true;
            }
            Event::Apply(o) => {
                let (id, rv) = id_rv(&o);
                let type_ = if self.known.contains_key(&id) {
                    ChangeType::Modified
                } else {
                    ChangeType::Added
                };
                out.push(change(type_, &o));
                self.known.insert(id, (rv, summary(&o)));
            }
            Event::Delete(o) => {
                let (id, _) = id_rv(&o);
                self.known.remove(&id);
                out.push(change(ChangeType::Deleted, &o));
            }
        }
        out
    }
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

/// Every object that has an events file.
fn event_files(dir: &Path) -> Vec<ObjectKey> {
    let mut out = Vec::new();
    let read = |d: &Path| {
        std::fs::read_dir(d)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .collect::<Vec<_>>()
    };
    for kind_dir in read(dir) {
        for ns_dir in read(&kind_dir) {
            for file in read(&ns_dir) {
                if let Some(k) = key_of_event_file(dir, &file) {
                    out.push(k);
                }
            }
        }
    }
    out
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
    use crate::api::{Task, TaskSpec};

    fn task(name: &str, rv: &str) -> Task {
        let mut t = Task::new(
            name,
            TaskSpec {
                prompt: "p".into(),
                priority: Default::default(),
                model: None,
                session: None,
                session_selector: None,
                workdir: None,
                timeout_seconds: None,
                max_attempts: None,
            },
        );
        t.metadata.namespace = Some("default".into());
        t.metadata.resource_version = Some(rv.into());
        t
    }

    fn types(c: &[Change]) -> Vec<(ChangeType, String)> {
        c.iter()
            .map(|c| {
                (
                    c.type_,
                    c.object["metadata"]["name"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }

    #[test]
    fn changes_from_watch_events_and_relists() {
        let mut t = ChangeTracker::default();
        let s = |t: &Task| t.metadata.resource_version.clone().unwrap();
        assert!(t.track::<Task>(Event::Init, &s).is_empty());
        assert!(t.track(Event::InitApply(task("a", "1")), &s).is_empty());
        assert!(t.track(Event::InitApply(task("b", "1")), &s).is_empty());
        assert!(
            t.track::<Task>(Event::InitDone, &s).is_empty(),
            "the first list is the start"
        );
        assert_eq!(
            types(&t.track(Event::Apply(task("c", "2")), &s)),
            [(ChangeType::Added, "c".into())]
        );
        assert_eq!(
            types(&t.track(Event::Apply(task("a", "3")), &s)),
            [(ChangeType::Modified, "a".into())]
        );
        // A relist that finds b gone, a changed and d new.
        let mut got = types(&t.track::<Task>(Event::Init, &s));
        for (name, rv) in [("a", "4"), ("c", "2"), ("d", "5")] {
            got.extend(types(&t.track(Event::InitApply(task(name, rv)), &s)));
        }
        got.extend(types(&t.track::<Task>(Event::InitDone, &s)));
        got.sort_by(|x, y| x.1.cmp(&y.1));
        assert_eq!(
            got,
            [
                (ChangeType::Modified, "a".into()),
                (ChangeType::Deleted, "b".into()),
                (ChangeType::Added, "d".into())
            ]
        );
        assert_eq!(
            types(&t.track(Event::Delete(task("d", "5")), &s)),
            [(ChangeType::Deleted, "d".into())]
        );
        // Summaries, not objects, are kept.
        let mut kept: Vec<&String> = t.known.values().map(|(_, s)| s).collect();
        kept.sort();
        assert_eq!(kept, ["2", "4"]);
    }

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

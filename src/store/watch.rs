//! A Kubernetes-style watch over the local store.
//!
//! The stream speaks `kube_runtime::watcher::Event`, so it plugs straight
//! into `kube_runtime::reflector` and from there into the `applier`: the
//! controllers run on the local store exactly as they would on a cluster.
//!
//! Sources, all level-triggered (an event only says "look again"):
//! - inotify notifications for the kind's directory: each changed file is
//!   re-read and, if its resourceVersion moved, an `Apply` (or `Delete`) is
//!   emitted;
//! - a relist (`Init`, `InitApply`..., `InitDone`) at start, whenever the
//!   notification queue overflows, and every `resync` period, so a missed
//!   notification is corrected within one period.
//!
//! A corrupt object (see the store's `quarantine.rs`) is skipped by the relist
//! and, when it turns corrupt while watched, keeps its last good version:
//! no event is sent for it, and the watch goes on with the others.

use super::Store;
use crate::api::{Object, ObjectKey};
use futures::Stream;
use kube::runtime::watcher::{Error as WatchError, Event};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// How a watch behaves.
#[derive(Clone, Debug)]
pub struct WatchConfig {
    /// Only this namespace (None: all).
    pub namespace: Option<String>,
    /// Full relist period.
    pub resync: Duration,
}

impl Default for WatchConfig {
    fn default() -> Self {
        WatchConfig {
            namespace: None,
            resync: Duration::from_secs(60),
        }
    }
}

pub(super) fn invalid(msg: String) -> WatchError {
    WatchError::WatchError(Box::new(kube::core::Status::failure(&msg, "Invalid")))
}

/// Watches objects of kind `K`. Must be polled inside a tokio runtime; the
/// background task ends when the stream is dropped.
pub fn watch<K: Object>(
    store: Store,
    cfg: WatchConfig,
) -> impl Stream<Item = Result<Event<K>, WatchError>> + Send + 'static {
    watch_from(store, cfg, None)
}

/// [`watch`], resumed after the resourceVersion a previous watch saw last:
/// on etcd, only the changes made since then are sent (no relist), unless
/// that revision was compacted away, which relists. The local store always
/// relists (its resume).
pub fn watch_from<K: Object>(
    store: Store,
    cfg: WatchConfig,
    resource_version: Option<String>,
) -> impl Stream<Item = Result<Event<K>, WatchError>> + Send + 'static {
    let (tx, mut rx) = mpsc::channel(256);
    if store.is_etcd() {
        let from = resource_version.and_then(|rv| rv.parse::<i64>().ok());
        tokio::spawn(super::watch_etcd::run::<K>(store, cfg, from, tx));
    } else {
        tokio::spawn(run::<K>(store, cfg, tx));
    }
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

pub(super) type Tx<K> = mpsc::Sender<Result<Event<K>, WatchError>>;

pub(super) struct State<K> {
    pub(super) store: Store,
    pub(super) cfg: WatchConfig,
    pub(super) known: HashMap<ObjectKey, (String, K)>,
}

impl<K: Object> State<K> {
    pub(super) async fn relist(&mut self, tx: &Tx<K>) -> bool {
        // Corrupt objects are skipped (and quarantined) by the typed list:
        // one bad file never holds up the listing. Off the async workers.
        let (store, ns) = (self.store.clone(), self.cfg.namespace.clone());
        let listed = tokio::task::spawn_blocking(move || store.api::<K>(ns.as_deref()).list())
            .await
            .expect("a store listing panicked");
        let list = match listed {
            Ok(l) => l,
            Err(e) => return tx.send(Err(invalid(e.to_string()))).await.is_ok(),
        };
        if tx.send(Ok(Event::Init)).await.is_err() {
            return false;
        }
        let mut known = HashMap::with_capacity(list.len());
        for obj in list {
            let rv = obj.meta().resource_version.clone().unwrap_or_default();
            known.insert(key_of(&obj), (rv, obj.clone()));
            if tx.send(Ok(Event::InitApply(obj))).await.is_err() {
                return false;
            }
        }
        self.known = known;
        tx.send(Ok(Event::InitDone)).await.is_ok()
    }

    /// Re-reads one object and emits what changed.
    pub(super) async fn refresh(&mut self, key: ObjectKey, tx: &Tx<K>) -> bool {
        if let Some(ns) = &self.cfg.namespace
            && *ns != key.namespace
        {
            return true;
        }
        let (store, k) = (self.store.clone(), key.clone());
        let got =
            tokio::task::spawn_blocking(move || store.api::<K>(Some(&k.namespace)).get(&k.name))
                .await
                .expect("a store read panicked");
        match got {
            Ok(Some(obj)) => {
                let rv = obj.meta().resource_version.clone().unwrap_or_default();
                if self
                    .known
                    .get(&key)
                    .is_some_and(|(known_rv, _)| *known_rv == rv)
                {
                    return true;
                }
                self.known.insert(key, (rv, obj.clone()));
                tx.send(Ok(Event::Apply(obj))).await.is_ok()
            }
            Ok(None) => match self.known.remove(&key) {
                Some((_, obj)) => tx.send(Ok(Event::Delete(obj))).await.is_ok(),
                None => true,
            },
            // Quarantined by the read: the last good version stays (its
            // controllers are not told it went), nothing is sent.
            Err(crate::store::StoreError::Corrupt { .. }) => true,
            // A name that is not a key (a stray file): not an object.
            Err(crate::store::StoreError::Invalid { .. }) => true,
            Err(e) => tx.send(Err(invalid(e.to_string()))).await.is_ok(),
        }
    }

    /// Re-reads every file of a namespace directory that just appeared (it
    /// may have received files before inotify watched it), once it is
    /// surely watched ([`crate::fsutil::watch_new_dir`]).
    async fn refresh_dir(
        &mut self,
        dir: &Path,
        watcher: &Arc<Mutex<Option<RecommendedWatcher>>>,
        tx: &Tx<K>,
    ) -> bool {
        let Some(ns) = dir.file_name().and_then(|n| n.to_str()) else {
            return true;
        };
        let (d, watcher) = (dir.to_path_buf(), watcher.clone());
        let names: Vec<String> = tokio::task::spawn_blocking(move || {
            if let Some(w) = watcher.lock().expect("watcher lock").as_mut() {
                crate::fsutil::watch_new_dir(w, &d);
            }
            let Ok(rd) = std::fs::read_dir(&d) else {
                return Vec::new();
            };
            rd.filter_map(|e| e.ok())
                .filter_map(|e| {
                    e.file_name()
                        .to_str()
                        .and_then(object_name)
                        .map(str::to_string)
                })
                .collect()
        })
        .await
        .unwrap_or_default();
        for name in names {
            if !self.refresh(ObjectKey::new(K::KIND, ns, &name), tx).await {
                return false;
            }
        }
        true
    }
}

fn key_of<K: Object>(o: &K) -> ObjectKey {
    let m = o.meta();
    ObjectKey::new(
        K::KIND,
        m.namespace.as_deref().unwrap_or_default(),
        m.name.as_deref().unwrap_or_default(),
    )
}

/// `ccl-0.json` / `ccl-0.status.json` → `ccl-0`; temp files → None.
pub(super) fn object_name(file: &str) -> Option<&str> {
    if file.starts_with('.') {
        return None;
    }
    file.strip_suffix(".status.json")
        .or_else(|| file.strip_suffix(".json"))
}

enum Change {
    Object(ObjectKey),
    Dir(PathBuf),
    Rescan,
}

fn classify<K: Object>(kind_dir: &Path, path: &Path) -> Option<Change> {
    let rel = path.strip_prefix(kind_dir).ok()?;
    let parts: Vec<&str> = rel.iter().filter_map(|p| p.to_str()).collect();
    match parts.as_slice() {
        [ns] if !ns.starts_with('.') => Some(Change::Dir(path.to_path_buf())),
        [ns, file] => {
            object_name(file).map(|name| Change::Object(ObjectKey::new(K::KIND, ns, name)))
        }
        _ => None,
    }
}

async fn run<K: Object>(store: Store, cfg: WatchConfig, tx: Tx<K>) {
    let kind_dir = store.root().join(K::KIND.plural());
    let _ = std::fs::create_dir_all(&kind_dir);
    let (ntx, mut nrx) = mpsc::unbounded_channel::<notify::Result<notify::Event>>();
    let watcher = notify::recommended_watcher(move |res| {
        let _ = ntx.send(res);
    })
    .and_then(|mut w| w.watch(&kind_dir, RecursiveMode::Recursive).map(|_| w));
    let watcher = Arc::new(Mutex::new(match watcher {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(dir = %kind_dir.display(), error = %e, "file notifications unavailable; relying on periodic resync");
            None
        }
    }));
    let resync = cfg.resync;
    let mut state = State::<K> {
        store,
        cfg,
        known: HashMap::new(),
    };
    if !state.relist(&tx).await {
        return;
    }
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + resync, resync);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let mut changes = Vec::new();
        tokio::select! {
            _ = tx.closed() => return,
            _ = tick.tick() => changes.push(Change::Rescan),
            Some(first) = nrx.recv() => {
                // Take everything already queued: one re-read per object.
                let mut batch = vec![first];
                while let Ok(more) = nrx.try_recv() {
                    batch.push(more);
                }
                for res in batch {
                    match res {
                        Err(_) => changes.push(Change::Rescan),
                        Ok(ev) if ev.need_rescan() => changes.push(Change::Rescan),
                        ref r if !crate::fsutil::is_change(r) => {}
                        Ok(ev) => {
                            let dir_created = matches!(ev.kind, EventKind::Create(notify::event::CreateKind::Folder));
                            for p in &ev.paths {
                                match classify::<K>(&kind_dir, p) {
                                    Some(Change::Dir(d)) if dir_created || d.is_dir() => changes.push(Change::Dir(d)),
                                    Some(Change::Dir(_)) | None => {}
                                    Some(c) => changes.push(c),
                                }
                            }
                        }
                    }
                }
            }
        }
        if changes.iter().any(|c| matches!(c, Change::Rescan)) {
            if !state.relist(&tx).await {
                return;
            }
            continue;
        }
        let mut seen = std::collections::HashSet::new();
        for c in changes {
            let ok = match c {
                Change::Object(key) => !seen.insert(key.clone()) || state.refresh(key, &tx).await,
                Change::Dir(d) => state.refresh_dir(&d, &watcher, &tx).await,
                Change::Rescan => true,
            };
            if !ok {
                return;
            }
        }
    }
}

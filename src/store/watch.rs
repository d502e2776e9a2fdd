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
//! - a relist (`Init`, `InitApply`..., `InitDone`) at start and whenever
//!   the notification queue overflows (notifications were lost);
//! - every `resync` period, a resync: each object's files are looked at
//!   (their inode, size and times: a store write replaces a file) and only
//!   those that differ from when the watch last read them are read again,
//!   as if notified; objects whose files went are deleted. A missed
//!   notification is corrected within one period, and an idle store costs
//!   a directory scan, not a read and parse of every object.
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
    /// The consumer keeps its own copy of every object (a reflector
    /// cache): the watch then holds of each only what a `Delete` must say
    /// (metadata without managed fields, the spec), not its status. Off: a
    /// `Delete` carries the object as it last was (`get -w`).
    pub lean: bool,
}

impl Default for WatchConfig {
    fn default() -> Self {
        WatchConfig {
            namespace: None,
            resync: Duration::from_secs(60),
            lean: false,
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
    /// The local store only: what each object's files looked like just
    /// before the watch last read them (see [`State::resync`]).
    pub(super) stamps: HashMap<ObjectKey, Stamp>,
}

/// What one file looked like: a store write replaces the file (a new
/// inode, new times), so an unchanged stamp means an unchanged file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct FileStamp {
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl FileStamp {
    fn of(m: &std::fs::Metadata) -> FileStamp {
        use std::os::unix::fs::MetadataExt;
        FileStamp {
            ino: m.ino(),
            len: m.len(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        }
    }
}

/// An object's two files (spec, status), as they looked.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Stamp {
    spec: Option<FileStamp>,
    status: Option<FileStamp>,
}

/// The stamps of one object's files (a file that is not there, or a key
/// that names no file: None).
fn stamp_of(store: &Store, key: &ObjectKey) -> Stamp {
    let look = |p: Option<std::path::PathBuf>| {
        p.and_then(|p| std::fs::symlink_metadata(p).ok())
            .map(|m| FileStamp::of(&m))
    };
    Stamp {
        spec: look(store.spec_path(key).ok()),
        status: look(store.status_path(key).ok()),
    }
}

/// The stamps of every object's files of kind `K` (in one namespace, or
/// those [`Store::namespaces`] lists), from one scan of their
/// directories; None when one cannot be read.
fn scan<K: Object>(store: &Store, namespace: Option<&str>) -> Option<HashMap<ObjectKey, Stamp>> {
    let namespaces = match namespace {
        Some(ns) => vec![ns.to_string()],
        None => store.namespaces(K::KIND).ok()?,
    };
    let kind_dir = store.root().join(K::KIND.plural());
    let mut out: HashMap<ObjectKey, Stamp> = HashMap::new();
    for ns in namespaces {
        let rd = match std::fs::read_dir(kind_dir.join(&ns)) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(_) => return None,
        };
        for e in rd.filter_map(|e| e.ok()) {
            let fname = e.file_name();
            let Some(f) = fname.to_str() else { continue };
            let Some(name) = object_name(f) else { continue };
            let Ok(m) = e.metadata() else { continue };
            let stamp = out.entry(ObjectKey::new(K::KIND, &ns, name)).or_default();
            if f.ends_with(".status.json") {
                stamp.status = Some(FileStamp::of(&m));
            } else {
                stamp.spec = Some(FileStamp::of(&m));
            }
        }
    }
    Some(out)
}

impl<K: Object> State<K> {
    /// The copy of `obj` the watch keeps (see [`WatchConfig::lean`]).
    fn held(&self, obj: &K) -> K {
        let mut o = obj.clone();
        if self.cfg.lean {
            *o.status_mut() = None;
            o.meta_mut().managed_fields = None;
        }
        o
    }

    pub(super) async fn relist(&mut self, tx: &Tx<K>) -> bool {
        // Corrupt objects are skipped (and quarantined) by the typed list:
        // one bad file never holds up the listing. Off the async workers.
        let (store, ns) = (self.store.clone(), self.cfg.namespace.clone());
        let (stamps, listed) = tokio::task::spawn_blocking(move || {
            // Looked at before the read: a file changed in between is read
            // again by the next resync, never missed.
            let stamps = if store.is_etcd() {
                None
            } else {
                scan::<K>(&store, ns.as_deref())
            };
            (stamps, store.api::<K>(ns.as_deref()).list())
        })
        .await
        .expect("a store listing panicked");
        self.stamps = stamps.unwrap_or_default();
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
            known.insert(key_of(&obj), (rv, self.held(&obj)));
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
        let (stamp, got) = tokio::task::spawn_blocking(move || {
            let stamp = (!store.is_etcd()).then(|| stamp_of(&store, &k));
            (stamp, store.api::<K>(Some(&k.namespace)).get(&k.name))
        })
        .await
        .expect("a store read panicked");
        if let Some(stamp) = stamp {
            self.stamps.insert(key.clone(), stamp);
        }
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
                self.known.insert(key, (rv, self.held(&obj)));
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

    /// The local store's periodic look (see the module's doc): the objects
    /// whose files changed since they were last read, or went, are read
    /// again; nothing else is. A directory that cannot be scanned: a relist.
    async fn resync(&mut self, tx: &Tx<K>) -> bool {
        let (store, ns) = (self.store.clone(), self.cfg.namespace.clone());
        let scanned = tokio::task::spawn_blocking(move || scan::<K>(&store, ns.as_deref()))
            .await
            .expect("a store scan panicked");
        let Some(scanned) = scanned else {
            return self.relist(tx).await;
        };
        let mut look: Vec<ObjectKey> = scanned
            .iter()
            .filter(|(k, s)| self.stamps.get(*k) != Some(*s))
            .map(|(k, _)| k.clone())
            .collect();
        look.extend(
            self.known
                .keys()
                .filter(|k| !scanned.contains_key(*k))
                .cloned(),
        );
        self.stamps.retain(|k, _| scanned.contains_key(k));
        for key in look {
            if !self.refresh(key, tx).await {
                return false;
            }
        }
        true
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
        stamps: HashMap::new(),
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
            _ = tick.tick() => {
                if !state.resync(&tx).await {
                    return;
                }
                continue;
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Kind, Session};
    use serde_json::json;

    fn session(name: &str, workdir: &str) -> serde_json::Value {
        json!({
            "apiVersion": "claude-failover.io/v1alpha1", "kind": "Session",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"workdir": workdir}
        })
    }

    /// What one resync sends: (name, deleted?, workdir).
    async fn resync(state: &mut State<Session>) -> Vec<(String, bool, String)> {
        let (tx, mut rx) = mpsc::channel(64);
        assert!(state.resync(&tx).await);
        drop(tx);
        let mut out = Vec::new();
        while let Some(ev) = rx.recv().await {
            let (o, gone) = match ev.expect("no error") {
                Event::Apply(o) => (o, false),
                Event::Delete(o) => (o, true),
                other => panic!("a resync sends no {other:?}"),
            };
            out.push((o.metadata.name.unwrap(), gone, o.spec.workdir));
        }
        out.sort();
        out
    }

    /// The periodic look reads again only what changed on disk since the
    /// watch read it, and finds what went, without any notification.
    #[tokio::test]
    async fn a_resync_reads_only_the_objects_whose_files_changed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for n in ["a", "b", "c"] {
            store.apply(&session(n, "/w"), false).unwrap();
        }
        let mut state = State::<Session> {
            store: store.clone(),
            cfg: WatchConfig::default(),
            known: HashMap::new(),
            stamps: HashMap::new(),
        };
        let (tx, mut rx) = mpsc::channel(64);
        assert!(state.relist(&tx).await);
        drop(tx);
        let mut listed = 0;
        while let Some(ev) = rx.recv().await {
            listed += matches!(ev, Ok(Event::InitApply(_))) as usize;
        }
        assert_eq!(listed, 3);
        assert_eq!(state.stamps.len(), 3);

        assert_eq!(resync(&mut state).await, vec![], "nothing changed");

        store.apply(&session("b", "/changed"), false).unwrap();
        store.apply(&session("d", "/new"), false).unwrap();
        store
            .delete(&ObjectKey::new(Kind::Session, "default", "c"), None, false)
            .unwrap();
        assert_eq!(
            resync(&mut state).await,
            vec![
                ("b".into(), false, "/changed".into()),
                ("c".into(), true, "/w".into()),
                ("d".into(), false, "/new".into()),
            ]
        );
        // A status written apart from the spec is a change too.
        store
            .api::<Session>(Some("default"))
            .patch_status("a", &crate::api::SessionStatus::default())
            .unwrap();
        assert_eq!(
            resync(&mut state).await,
            vec![("a".into(), false, "/w".into())]
        );
        assert_eq!(resync(&mut state).await, vec![], "read once");
        assert_eq!(state.stamps.len(), 3);
    }

    /// A lean watch (a reflector cache's) holds no status: a deletion
    /// still names the object, with its spec.
    #[tokio::test]
    async fn a_lean_watch_holds_no_status() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.apply(&session("a", "/w"), false).unwrap();
        let status = crate::api::SessionStatus {
            agent_session_id: Some("conversation".into()),
            ..Default::default()
        };
        let api = store.api::<Session>(Some("default"));
        api.patch_status("a", &status).unwrap();
        let mut state = State::<Session> {
            store: store.clone(),
            cfg: WatchConfig {
                lean: true,
                ..Default::default()
            },
            known: HashMap::new(),
            stamps: HashMap::new(),
        };
        let (tx, mut rx) = mpsc::channel(64);
        assert!(state.relist(&tx).await);
        drop(tx);
        let mut sent = None;
        while let Some(ev) = rx.recv().await {
            if let Ok(Event::InitApply(o)) = ev {
                sent = Some(o);
            }
        }
        let sent = sent.expect("listed");
        assert_eq!(
            sent.status.and_then(|s| s.agent_session_id).as_deref(),
            Some("conversation"),
            "what is sent is whole"
        );
        let held = &state.known.values().next().unwrap().1;
        assert!(held.status.is_none() && held.metadata.managed_fields.is_none());
        store
            .delete(&ObjectKey::new(Kind::Session, "default", "a"), None, false)
            .unwrap();
        assert_eq!(
            resync(&mut state).await,
            vec![("a".into(), true, "/w".into())]
        );
    }
}

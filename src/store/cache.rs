//! Reflector caches over the store's watch.
//!
//! One [`Cache`] per kind: a watch of the store feeds `kube_runtime`'s
//! reflector store (an in-memory copy of every object of the kind), keeps
//! the indexes asked for up to date, and broadcasts what changed to every
//! subscriber: the controllers' trigger queues, the event stream, the
//! gauges. Controllers read through caches, never by listing the store on
//! each pass.
//!
//! Guarantees: a subscriber sees every change made after it subscribed, in
//! the order the watch saw them, unless it falls more than
//! [`CHANGES_KEPT`] behind; then it is told ([`Changed::Lagged`]) and must
//! look at everything again. A relist (at start, on a missed notification,
//! every resync) sends only what differs from what the cache held.

use super::Store;
use super::watch::{WatchConfig, watch};
use crate::api::Object;
use futures::{Stream, StreamExt};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::watcher::Event;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use tokio::sync::broadcast;

/// Changes kept for a slow subscriber before it is told it lagged.
pub const CHANGES_KEPT: usize = 4096;

/// What happened to one object of a cache.
#[derive(Debug, Clone)]
pub enum Changed<K> {
    Added(Arc<K>),
    /// The object before and after.
    Modified(Arc<K>, Arc<K>),
    Deleted(Arc<K>),
    /// The cache holds a complete listing (after the first and every
    /// later relist).
    Listed,
    /// This subscriber missed changes: everything must be looked at again.
    Lagged,
}

impl<K> Changed<K> {
    /// The object as it is now (or was, when deleted).
    pub fn object(&self) -> Option<&Arc<K>> {
        match self {
            Changed::Added(o) | Changed::Modified(_, o) | Changed::Deleted(o) => Some(o),
            Changed::Listed | Changed::Lagged => None,
        }
    }
}

/// An index: the values an object is filed under (e.g. a Task under
/// `NAMESPACE/SESSION`).
pub type IndexFn<K> = fn(&K) -> Vec<String>;

struct Index<K: Object> {
    name: &'static str,
    of: IndexFn<K>,
    by_value: HashMap<String, HashSet<ObjectRef<K>>>,
    by_object: HashMap<ObjectRef<K>, Vec<String>>,
}

impl<K: Object> Index<K> {
    fn update(&mut self, r: &ObjectRef<K>, obj: Option<&K>) {
        if let Some(old) = self.by_object.remove(r) {
            for v in old {
                if let Some(set) = self.by_value.get_mut(&v) {
                    set.remove(r);
                    if set.is_empty() {
                        self.by_value.remove(&v);
                    }
                }
            }
        }
        if let Some(o) = obj {
            let values = (self.of)(o);
            for v in &values {
                self.by_value
                    .entry(v.clone())
                    .or_default()
                    .insert(r.clone());
            }
            if !values.is_empty() {
                self.by_object.insert(r.clone(), values);
            }
        }
    }
}

/// The in-memory copy of one kind. Cheap to clone.
///
/// Read-your-writes: a writer hands what a write returned to
/// [`Cache::wrote`]; until the watch brings that version (or a newer one),
/// [`Cache::get`] answers with it, so a controller never decides from an
/// older copy of what it just wrote.
pub struct Cache<K: Object> {
    reader: reflector::Store<K>,
    written: Arc<std::sync::Mutex<HashMap<ObjectRef<K>, Arc<K>>>>,
    indexes: Arc<RwLock<Vec<Index<K>>>>,
    tx: broadcast::Sender<Changed<K>>,
    listed: tokio::sync::watch::Receiver<bool>,
}

impl<K: Object> Clone for Cache<K> {
    fn clone(&self) -> Self {
        Cache {
            reader: self.reader.clone(),
            written: self.written.clone(),
            indexes: self.indexes.clone(),
            tx: self.tx.clone(),
            listed: self.listed.clone(),
        }
    }
}

impl<K: Object> Cache<K> {
    /// Starts following the store (a task that runs until the process
    /// ends or the returned handle is aborted). `indexes`: the indexes to
    /// keep, by name.
    pub fn start(
        store: Store,
        cfg: WatchConfig,
        indexes: &[(&'static str, IndexFn<K>)],
    ) -> (Cache<K>, tokio::task::JoinHandle<()>) {
        let (reader, writer) = reflector::store::<K>();
        let (tx, _) = broadcast::channel(CHANGES_KEPT);
        let (listed_tx, listed) = tokio::sync::watch::channel(false);
        let cache = Cache {
            reader,
            written: Arc::default(),
            indexes: Arc::new(RwLock::new(
                indexes
                    .iter()
                    .map(|(name, of)| Index {
                        name,
                        of: *of,
                        by_value: HashMap::new(),
                        by_object: HashMap::new(),
                    })
                    .collect(),
            )),
            tx,
            listed,
        };
        let task = tokio::spawn(cache.clone().follow(store, cfg, writer, listed_tx));
        (cache, task)
    }

    async fn follow(
        self,
        store: Store,
        cfg: WatchConfig,
        mut writer: reflector::store::Writer<K>,
        listed: tokio::sync::watch::Sender<bool>,
    ) {
        // The reflector holds the objects: the watch keeps only what a
        // deletion must name.
        let cfg = WatchConfig { lean: true, ..cfg };
        let mut stream = Box::pin(watch::<K>(store.clone(), cfg));
        // The objects of a relist under way, by reference only: their copy
        // is the one the reflector files (one form, one copy per object).
        let mut relisted: Option<Vec<(ObjectRef<K>, Option<String>)>> = None;
        while let Some(item) = stream.next().await {
            let ev = match item {
                Ok(mut ev) => {
                    without_managed_fields(&mut ev);
                    ev
                }
                Err(e) => {
                    // A store that does not answer is told once, by itself.
                    if store.outage().is_none() {
                        tracing::warn!(kind = %K::KIND, error = %e, "store watch");
                    }
                    continue;
                }
            };
            let changes = self.apply(&mut writer, &ev, &mut relisted);
            self.forget_written(&changes);
            for c in &changes {
                self.index(c);
            }
            if matches!(ev, Event::InitDone) {
                // Indexes follow the listing whole (an object gone while a
                // notification was missed is in `changes` as Deleted).
                listed.send_replace(true);
            }
            for c in changes {
                let _ = self.tx.send(c);
            }
        }
    }

    /// Files `ev` in the reflector and says what it changed. The objects
    /// in the changes are the reflector's own copies.
    fn apply(
        &self,
        writer: &mut reflector::store::Writer<K>,
        ev: &Event<K>,
        relisted: &mut Option<Vec<(ObjectRef<K>, Option<String>)>>,
    ) -> Vec<Changed<K>> {
        let reader = &self.reader;
        match ev {
            Event::Init => {
                *relisted = Some(Vec::new());
                writer.apply_watcher_event(ev);
                vec![]
            }
            Event::InitApply(o) => {
                if let Some(r) = relisted.as_mut() {
                    r.push((ObjectRef::from(o), rv(o)));
                }
                writer.apply_watcher_event(ev);
                vec![]
            }
            Event::InitDone => {
                let mut before: HashMap<ObjectRef<K>, Arc<K>> = reader
                    .state()
                    .into_iter()
                    .map(|o| (ObjectRef::from(o.as_ref()), o))
                    .collect();
                writer.apply_watcher_event(ev);
                let mut out = Vec::new();
                for (r, version) in relisted.take().unwrap_or_default() {
                    let Some(now) = reader.get(&r) else { continue };
                    match before.remove(&r) {
                        None => out.push(Changed::Added(now)),
                        Some(prev) if rv(prev.as_ref()) != version => {
                            out.push(Changed::Modified(prev, now))
                        }
                        Some(_) => {}
                    }
                }
                out.extend(before.into_values().map(Changed::Deleted));
                out.push(Changed::Listed);
                out
            }
            Event::Apply(o) => {
                let r = ObjectRef::from(o);
                let prev = reader.get(&r);
                writer.apply_watcher_event(ev);
                let now = reader.get(&r).unwrap_or_else(|| Arc::new(o.clone()));
                vec![match prev {
                    Some(prev) => Changed::Modified(prev, now),
                    None => Changed::Added(now),
                }]
            }
            Event::Delete(o) => {
                let prev = reader.get(&ObjectRef::from(o));
                writer.apply_watcher_event(ev);
                vec![Changed::Deleted(
                    prev.unwrap_or_else(|| Arc::new(o.clone())),
                )]
            }
        }
    }

    /// Drops the written copies the watch has caught up with.
    fn forget_written(&self, changes: &[Changed<K>]) {
        let mut w = self.written.lock().expect("cache lock");
        if w.is_empty() {
            return;
        }
        for c in changes {
            let Some(o) = c.object() else { continue };
            let r = ObjectRef::from(o.as_ref());
            let caught_up = match (w.get(&r), c) {
                (None, _) => continue,
                (Some(_), Changed::Deleted(_)) => true,
                (Some(mine), _) => version(o.as_ref()) >= version(mine.as_ref()),
            };
            if caught_up {
                w.remove(&r);
            }
        }
    }

    /// Records what a write of this process returned (see the type's doc).
    pub fn wrote(&self, obj: K) {
        let r = ObjectRef::from(&obj);
        let newer = self
            .reader
            .get(&r)
            .is_none_or(|seen| version(seen.as_ref()) < version(&obj));
        if newer {
            self.written
                .lock()
                .expect("cache lock")
                .insert(r, Arc::new(obj));
        }
    }

    fn index(&self, c: &Changed<K>) {
        let (obj, gone) = match c {
            Changed::Added(o) | Changed::Modified(_, o) => (o, false),
            Changed::Deleted(o) => (o, true),
            Changed::Listed | Changed::Lagged => return,
        };
        let r = ObjectRef::from(obj.as_ref());
        let mut idx = self.indexes.write().expect("index lock");
        for i in idx.iter_mut() {
            i.update(&r, (!gone).then_some(obj.as_ref()));
        }
    }

    /// Resolves once the cache holds the first complete listing.
    pub async fn listed(&self) {
        let mut l = self.listed.clone();
        let _ = l.wait_for(|v| *v).await;
    }

    pub fn is_listed(&self) -> bool {
        *self.listed.borrow()
    }

    /// The reflector store (what an applier reads).
    pub fn reader(&self) -> &reflector::Store<K> {
        &self.reader
    }

    /// The newest copy of one object: the watch's, or this process's own
    /// later write.
    pub fn get(&self, namespace: &str, name: &str) -> Option<Arc<K>> {
        self.get_ref(&ObjectRef::new(name).within(namespace))
    }

    pub fn get_ref(&self, r: &ObjectRef<K>) -> Option<Arc<K>> {
        let seen = self.reader.get(r);
        let mine = self.written.lock().expect("cache lock").get(r).cloned();
        match (seen, mine) {
            (Some(s), Some(m)) if version(m.as_ref()) > version(s.as_ref()) => Some(m),
            (None, Some(m)) => Some(m),
            (s, _) => s,
        }
    }

    /// Every object (the newest copy of each), in no particular order.
    pub fn all(&self) -> Vec<Arc<K>> {
        let mut out = self.reader.state();
        let w = self.written.lock().expect("cache lock");
        if w.is_empty() {
            return out;
        }
        // Our newer copies, by the address of the watch's copy they
        // replace: no key is built for each object (the scheduler asks for
        // all 500 Sessions every two seconds).
        let mut newer: HashMap<*const K, Arc<K>> = HashMap::new();
        for (r, mine) in w.iter() {
            match self.reader.get(r) {
                Some(seen) if version(mine.as_ref()) > version(seen.as_ref()) => {
                    newer.insert(Arc::as_ptr(&seen), mine.clone());
                }
                Some(_) => {}
                None => out.push(mine.clone()),
            }
        }
        drop(w);
        for o in out.iter_mut() {
            if let Some(m) = newer.remove(&Arc::as_ptr(o)) {
                *o = m;
            }
        }
        // The watch filed another copy between the two reads: by key.
        for m in newer.into_values() {
            let r = ObjectRef::from(m.as_ref());
            if let Some(o) = out.iter_mut().find(|o| ObjectRef::from(o.as_ref()) == r)
                && version(m.as_ref()) > version(o.as_ref())
            {
                *o = m;
            }
        }
        out
    }

    /// The objects filed under `value` in index `index` (this process's own
    /// later writes included).
    pub fn indexed(&self, index: &str, value: &str) -> Vec<Arc<K>> {
        let (mut refs, of): (HashSet<ObjectRef<K>>, IndexFn<K>) = {
            let idx = self.indexes.read().expect("index lock");
            let Some(i) = idx.iter().find(|i| i.name == index) else {
                panic!("no index {index} on the {} cache", K::KIND);
            };
            (i.by_value.get(value).cloned().unwrap_or_default(), i.of)
        };
        for (r, mine) in self.written.lock().expect("cache lock").iter() {
            if (of)(mine).iter().any(|v| v == value) {
                refs.insert(r.clone());
            } else {
                refs.remove(r);
            }
        }
        // A written copy may be older than the watch's (get_ref decides);
        // keep only what the newest copy files under `value`.
        refs.iter()
            .filter_map(|r| self.get_ref(r))
            .filter(|o| (of)(o).iter().any(|v| v == value))
            .collect()
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Changed<K>> {
        self.tx.subscribe()
    }

    /// The changes as a stream; a lag becomes [`Changed::Lagged`].
    pub fn changes(&self) -> impl Stream<Item = Changed<K>> + Send + 'static {
        futures::stream::unfold(self.subscribe(), |mut rx| async move {
            match rx.recv().await {
                Ok(c) => Some((c, rx)),
                Err(broadcast::error::RecvError::Lagged(_)) => Some((Changed::Lagged, rx)),
                Err(broadcast::error::RecvError::Closed) => None,
            }
        })
    }

    /// Triggers for a controller of kind `T`: each change mapped by `map`
    /// to the objects to look at again; after a lag, `all` of them.
    pub fn triggers<T: Object>(
        &self,
        map: impl Fn(&K) -> Vec<ObjectRef<T>> + Send + 'static,
        all: impl Fn() -> Vec<ObjectRef<T>> + Send + 'static,
    ) -> impl Stream<Item = ObjectRef<T>> + Send + 'static {
        self.changes().flat_map(move |c| {
            let refs = match &c {
                Changed::Added(o) | Changed::Deleted(o) => map(o),
                Changed::Modified(before, after) => {
                    let mut r = map(before);
                    for x in map(after) {
                        if !r.contains(&x) {
                            r.push(x);
                        }
                    }
                    r
                }
                Changed::Lagged => all(),
                Changed::Listed => vec![],
            };
            futures::stream::iter(refs)
        })
    }
}

/// The caches' objects carry no `managedFields`: no controller reads them
/// (the store's writes merge ownership from the stored object), and 20,000
/// Tasks held them for nothing.
fn without_managed_fields<K: Object>(ev: &mut Event<K>) {
    match ev {
        Event::Apply(o) | Event::InitApply(o) | Event::Delete(o) => {
            o.meta_mut().managed_fields = None
        }
        Event::Init | Event::InitDone => {}
    }
}

fn rv<K: Object>(o: &K) -> Option<String> {
    o.meta().resource_version.clone()
}

/// A resourceVersion as a number (both backends' versions grow).
fn version<K: Object>(o: &K) -> u64 {
    o.meta()
        .resource_version
        .as_deref()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// `NAMESPACE/NAME`: the value under which an index files a related object.
pub fn index_key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

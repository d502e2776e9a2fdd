//! The watch over an etcd store: the same event stream as the local one
//! (`watch.rs`), fed by an etcd watch of the kind's prefix.
//!
//! - At start the watch takes the store's revision, then lists: whatever
//!   changed after that revision comes through the etcd watch started from
//!   it (a change seen twice is sent once: its resourceVersion did not move).
//! - A broken stream (a member died, a network cut) is resumed from the
//!   revision after the last one seen, on any member; a revision compacted
//!   away meanwhile means a relist (`Init`...`InitDone`), then a watch from
//!   the new listing's revision.
//! - Every `resync` period the kind is listed again, as on the local store.
//! - Like the local watch, a change only says "look again": the object is
//!   re-read through the store (spec and status together).

use super::Store;
use super::watch::{State, Tx, WatchConfig, invalid, object_name};
use crate::api::{Object, ObjectKey};
use etcd_client::{EventType, WatchOptions};
use std::collections::HashMap;
use std::time::Duration;
use tokio::sync::mpsc;

/// How long a watch waits before it tries an unreachable cluster again.
const RETRY: Duration = Duration::from_secs(1);

/// What the etcd side tells the watch.
enum Feed {
    /// These keys changed (store-relative), up to this revision; a deleted
    /// key carries its last value.
    Changed(Vec<(String, Option<Vec<u8>>)>),
    /// The revision to resume from was compacted away: list again.
    Compacted,
}

pub(super) async fn run<K: Object>(store: Store, cfg: WatchConfig, from: Option<i64>, tx: Tx<K>) {
    let etcd = store.etcd().expect("an etcd watch runs on etcd").clone();
    let resync = cfg.resync;
    let mut state = State::<K> {
        store,
        cfg,
        known: HashMap::new(),
        stamps: HashMap::new(),
    };
    let mut resume = from.map(|rv| rv + 1);
    loop {
        let start = match resume.take() {
            Some(r) => r,
            None => {
                let e = etcd.clone();
                match tokio::task::spawn_blocking(move || e.revision()).await {
                    Ok(Ok(rev)) => {
                        if !state.relist(&tx).await {
                            return;
                        }
                        rev + 1
                    }
                    Ok(Err(err)) => {
                        if tx.send(Err(invalid(err.to_string()))).await.is_err() {
                            return;
                        }
                        tokio::time::sleep(RETRY).await;
                        continue;
                    }
                    Err(_) => return,
                }
            }
        };
        let (ftx, mut frx) = mpsc::unbounded_channel();
        let prefix = etcd.key(&format!("{}/", K::KIND.plural()));
        let feeder = etcd.runtime().spawn(feed(etcd.clone(), prefix, start, ftx));
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + resync, resync);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let relist = loop {
            tokio::select! {
                _ = tx.closed() => { feeder.abort(); return; }
                _ = tick.tick() => if !state.relist(&tx).await { feeder.abort(); return; },
                msg = frx.recv() => match msg {
                    Some(Feed::Changed(keys)) => if !changed(&mut state, keys, &tx).await {
                        feeder.abort();
                        return;
                    },
                    Some(Feed::Compacted) | None => break true,
                }
            }
        };
        feeder.abort();
        if relist {
            resume = None;
        }
    }
}

/// Re-reads each changed object once.
async fn changed<K: Object>(
    state: &mut State<K>,
    keys: Vec<(String, Option<Vec<u8>>)>,
    tx: &Tx<K>,
) -> bool {
    let mut seen = std::collections::HashSet::new();
    for (rel, prev) in keys {
        let parts: Vec<&str> = rel.split('/').collect();
        let [plural, ns, file] = parts.as_slice() else {
            continue;
        };
        if *plural != K::KIND.plural() {
            continue;
        }
        let Some(name) = object_name(file) else {
            continue;
        };
        let key = ObjectKey::new(K::KIND, ns, name);
        // A deletion of an object this watch never listed (it resumed from
        // a revision): its last value says what went.
        if let Some(prev) = prev
            && !file.ends_with(".status.json")
            && !state.known.contains_key(&key)
            && let Ok(obj) = serde_json::from_slice::<K>(&prev)
        {
            state.known.insert(key.clone(), (String::new(), obj));
        }
        if seen.insert(key.clone()) && !state.refresh(key, tx).await {
            return false;
        }
    }
    true
}

/// Follows the etcd watch of `prefix` from revision `from`, resuming after
/// the last revision seen when the stream breaks; ends when the receiver
/// goes or the revision was compacted.
async fn feed(
    etcd: std::sync::Arc<super::etcd::Etcd>,
    prefix: String,
    mut from: i64,
    tx: mpsc::UnboundedSender<Feed>,
) {
    let mut client = etcd.client();
    loop {
        let opts = WatchOptions::new()
            .with_prefix()
            .with_prev_key()
            .with_start_revision(from);
        let mut stream = match client.watch(prefix.clone(), Some(opts)).await {
            Ok(s) => s,
            Err(e) => {
                // A store without a quorum is told once, by its health.
                if super::etcd::unavailability(&e) {
                    tracing::debug!(store = %etcd.url(), error = %e, "store watch: cannot start; retrying");
                } else {
                    tracing::warn!(store = %etcd.url(), error = %e, "store watch: cannot start; retrying");
                }
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        loop {
            match stream.message().await {
                Ok(Some(resp)) => {
                    if resp.compact_revision() > 0 {
                        tracing::info!(store = %etcd.url(), compacted = resp.compact_revision(), "store watch: revision compacted away; listing again");
                        let _ = tx.send(Feed::Compacted);
                        return;
                    }
                    if resp.canceled() {
                        tracing::warn!(store = %etcd.url(), reason = resp.cancel_reason(), "store watch cancelled; resuming");
                        break;
                    }
                    let mut keys = Vec::new();
                    for ev in resp.events() {
                        let Some(kv) = ev.kv() else { continue };
                        from = from.max(kv.mod_revision() + 1);
                        let Some(rel) = etcd.rel_of(kv.key()) else {
                            continue;
                        };
                        let prev = match ev.event_type() {
                            EventType::Delete => ev.prev_kv().map(|p| p.value().to_vec()),
                            EventType::Put => None,
                        };
                        keys.push((rel, prev));
                    }
                    if !keys.is_empty() && tx.send(Feed::Changed(keys)).is_err() {
                        return;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    if super::etcd::unavailability(&e) {
                        tracing::debug!(store = %etcd.url(), error = %e, "store watch broke; resuming");
                    } else {
                        tracing::warn!(store = %etcd.url(), error = %e, "store watch broke; resuming");
                    }
                    break;
                }
            }
        }
        if tx.is_closed() {
            return;
        }
        tokio::time::sleep(RETRY).await;
    }
}

/// The store-relative keys that change under `rel_prefix` (`events/`),
/// from the store's revision now on: what a caller that lists next misses
/// nothing of. `None` in the stream: the revision was compacted away, list
/// again. Blocks for the revision; None on a local store.
pub(crate) fn keys_changing(
    store: &Store,
    rel_prefix: &str,
) -> Result<Option<mpsc::UnboundedReceiver<Option<String>>>, super::StoreError> {
    let Some(etcd) = store.etcd().cloned() else {
        return Ok(None);
    };
    let mut from = etcd.revision()? + 1;
    let prefix = etcd.key(rel_prefix);
    let (out, rx) = mpsc::unbounded_channel();
    etcd.runtime().clone().spawn(async move {
        loop {
            let (ftx, mut frx) = mpsc::unbounded_channel();
            let feeder = tokio::spawn(feed(etcd.clone(), prefix.clone(), from, ftx));
            while let Some(f) = frx.recv().await {
                let Feed::Changed(keys) = f else { break };
                for (rel, _) in keys {
                    if out.send(Some(rel)).is_err() {
                        feeder.abort();
                        return;
                    }
                }
            }
            feeder.abort();
            if out.send(None).is_err() {
                return;
            }
            // Compacted: from the revision now (the caller lists again).
            loop {
                let e = etcd.clone();
                match tokio::task::spawn_blocking(move || e.revision()).await {
                    Ok(Ok(rev)) => {
                        from = rev + 1;
                        break;
                    }
                    Ok(Err(_)) => tokio::time::sleep(RETRY).await,
                    Err(_) => return,
                }
            }
        }
    });
    Ok(Some(rx))
}

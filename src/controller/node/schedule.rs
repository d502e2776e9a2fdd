//! The leader's scheduler: each Session without a node (or whose spec
//! names another, once its agent is stopped) gets one, as
//! [`super::place::place`] decides, written to `status.nodeName`; the
//! daemon of that node runs it. Woken by changes of Sessions and Nodes.

use super::place::{NodeView, Placement, place};
use crate::api::{ObjectKey, Session, SessionStatus};
use crate::controller::Shared;
use crate::store::{Durability, StoreError};
use futures::{Stream, StreamExt};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// The source named in the Sessions' scheduling events.
const SOURCE: &str = "scheduler";
/// The shortest time between two passes: a Session written within it waits
/// for its end (one pass over every Session serves a burst of changes).
const COALESCE: std::time::Duration = std::time::Duration::from_millis(100);

/// Runs the scheduler until aborted (the leader's work).
pub async fn run(sh: Arc<Shared>, me: String, wake: impl Stream<Item = ()> + Send + 'static) {
    let mut wake = Box::pin(wake);
    let mut told: HashMap<ObjectKey, String> = HashMap::new();
    let mut pace = crate::controller::Pace::new(COALESCE);
    loop {
        pace.before_pass(&mut wake).await;
        if let Err(e) = pass(&sh, &me, &mut told).await {
            let unavailable = e.is_unavailable();
            let next = crate::controller::failed_pass(
                "scheduler",
                &e,
                unavailable,
                super::NODE_CHECK_EVERY,
            )
            .await;
            tokio::time::sleep(next).await;
        }
        tokio::select! {
            _ = wake.next() => {}
            _ = tokio::time::sleep(super::NODE_CHECK_EVERY) => {}
        }
    }
}

/// One pass over every Session. `told`: the last reason given for each
/// Session that waits (an event only when it changes).
async fn pass(
    sh: &Shared,
    me: &str,
    told: &mut HashMap<ObjectKey, String>,
) -> Result<(), StoreError> {
    let nodes: Vec<NodeView> = sh
        .caches
        .nodes
        .all()
        .iter()
        .map(|n| {
            let mut v = NodeView::of(n);
            // Its own node runs (its Ready condition may not be written yet).
            v.ready |= v.name == me;
            v
        })
        .collect();
    let sessions = sh.caches.sessions.all();
    let mut placed: BTreeMap<String, u32> = BTreeMap::new();
    for s in &sessions {
        if let Some(n) = s.node() {
            *placed.entry(n.to_string()).or_default() += 1;
        }
    }
    // Read in place: a pass every two seconds cloned 500 statuses.
    let unset = SessionStatus::default();
    for s in &sessions {
        let st = s.status.as_ref().unwrap_or(&unset);
        let decision = place(s, &nodes, &placed, me);
        // Kept where it is, nothing to tell, its node's state as written:
        // nothing to do (most Sessions, every two seconds).
        if matches!(decision, Placement::Keep) && told.is_empty() && !lost_changed(sh, st) {
            continue;
        }
        let key = ObjectKey::of(s.as_ref());
        let mut node = st.node_name.clone();
        match decision {
            Placement::Keep => {
                told.remove(&key);
            }
            Placement::Place(n) => {
                told.remove(&key);
                if let Some(c) = s.node().and_then(|old| placed.get_mut(old)) {
                    *c = c.saturating_sub(1);
                }
                *placed.entry(n.clone()).or_default() += 1;
                node = Some(n);
            }
            Placement::Wait(why) => {
                if told.get(&key) != Some(&why) {
                    let msg = format!("waiting for a node: {why}");
                    sh.record(&key, true, "FailedScheduling", &msg, SOURCE)
                        .await;
                    told.insert(key.clone(), why);
                }
            }
        }
        settle(sh, &key, st, node).await?;
    }
    told.retain(|k, _| sessions.iter().any(|s| ObjectKey::of(s.as_ref()) == *k));
    Ok(())
}

/// Whether the Session's node is lost, or back, unlike its status says.
fn lost_changed(sh: &Shared, st: &SessionStatus) -> bool {
    let lost = st
        .node_name
        .as_deref()
        .is_some_and(|n| sh.caches.node_lost(n));
    lost != st.node_lost.is_some()
}

/// Writes what changed of a Session's node (`node`, as decided) and of
/// whether that node is lost, with an event for each change.
async fn settle(
    sh: &Shared,
    key: &ObjectKey,
    st: &SessionStatus,
    node: Option<String>,
) -> Result<(), StoreError> {
    let lost = node.as_deref().is_some_and(|n| sh.caches.node_lost(n));
    let node_lost = match (&st.node_lost, lost) {
        (Some(since), true) => Some(since.clone()),
        (None, true) => Some(crate::api::now()),
        (_, false) => None,
    };
    if node == st.node_name && node_lost.is_some() == st.node_lost.is_some() {
        return Ok(());
    }
    let want = SessionStatus {
        node_name: node.clone(),
        node_lost,
        ..Default::default()
    };
    if !write(sh, key, want).await? {
        return Ok(());
    }
    let n = node.clone().unwrap_or_default();
    if node != st.node_name {
        let msg = format!("placed on node {n}");
        sh.record(key, false, "Scheduled", &msg, SOURCE).await;
    }
    if lost && st.node_lost.is_none() {
        let msg = format!(
            "its node {n} is lost (no heartbeat, or the Node is gone): no task goes to it; its unconfirmed tasks go back to the queue"
        );
        sh.record(key, true, "NodeLost", &msg, SOURCE).await;
    } else if !lost && st.node_lost.is_some() {
        let msg = format!("its node {n} is back");
        sh.record(key, false, "NodeBack", &msg, SOURCE).await;
    }
    Ok(())
}

/// Writes a Session's node and whether it is lost. False when the
/// Session is gone.
async fn write(sh: &Shared, key: &ObjectKey, status: SessionStatus) -> Result<bool, StoreError> {
    let k = key.clone();
    let written = sh
        .blocking(move |store| {
            store
                .api::<Session>(Some(&k.namespace))
                .patch_status_fields(&k.name, &status, SessionStatus::SCHEDULER, Durability::Now)
        })
        .await;
    match written {
        Ok(obj) => {
            sh.caches.sessions.wrote(obj);
            Ok(true)
        }
        Err(StoreError::NotFound(_)) => Ok(false),
        Err(e) => Err(e),
    }
}

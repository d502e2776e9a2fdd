//! A pool's bound on its standbys (`spec.standby.perTarget`): the Sessions
//! that share it, read from the Sessions' cache. Each member decides
//! alone, from the same Sessions, with [`standby::within_bound`]; a member
//! that takes or leaves a place wakes the others ([`wakes_peers`]), and
//! each one's standby and account are part of what a quiet pass read
//! ([`print`]).

use super::standby::{self, Member};
use crate::api::{ObjectKey, POOL_LABEL, Session};
use crate::config::FailoverStrategy;
use crate::quota::policy::TargetCandidate;
use std::sync::Arc;

/// The pool a Session belongs to (its `claude-failover.io/pool` label).
fn pool_of(s: &Session) -> Option<&str> {
    s.metadata
        .labels
        .as_ref()?
        .get(POOL_LABEL)
        .map(String::as_str)
}

/// Whether `o` shares `s`'s bound: the same namespace, pool, node and
/// workdir (a standby takes over only in its own directory, on its own
/// machine).
fn same_group(s: &Session, o: &Session) -> bool {
    o.metadata.namespace == s.metadata.namespace
        && pool_of(s).is_some()
        && pool_of(o) == pool_of(s)
        && o.node() == s.node()
        && crate::workspace::agent_dir(o) == crate::workspace::agent_dir(s)
}

/// The other Sessions of `s`'s group (none without a bound or a pool).
pub fn others(all: &[Arc<Session>], s: &Session) -> Vec<Arc<Session>> {
    if s.spec.standby_bound().is_none() {
        return vec![];
    }
    all.iter()
        .filter(|o| o.metadata.name != s.metadata.name && same_group(s, o))
        .cloned()
        .collect()
}

/// Whether `s` wants a standby now: warm, not suspended, not being
/// deleted.
pub fn wants(s: &Session) -> bool {
    s.spec.wants_standby() && !s.spec.suspend && s.metadata.deletion_timestamp.is_none()
}

/// The account `s` was last launched on (confirmed or not: a pool
/// starting up ranks its members alike from their first launch on).
fn running(s: &Session) -> Option<&str> {
    s.status.as_ref()?.launch.as_ref()?.account.as_deref()
}

/// The account of `s`'s standby.
fn holds(s: &Session) -> Option<&str> {
    Some(s.status.as_ref()?.standby.as_ref()?.account.as_str())
}

/// `o` as a member: the account its standby should wait under (what it
/// holds before its first launch), what it holds, and how near its
/// account is to the limit.
pub fn member(o: &Session, cands: &[TargetCandidate], strategy: FailoverStrategy) -> Member {
    let wants = wants(o);
    let holds = holds(o).map(str::to_string);
    let target = match running(o) {
        _ if !wants => None,
        Some(r) => standby::choose(cands, r, holds.as_deref(), strategy),
        None => holds.clone(),
    };
    Member {
        name: o.metadata.name.clone().unwrap_or_default(),
        target,
        holds,
        headroom: headroom(cands, running(o)),
    }
}

/// The headroom of the account a session runs on (unknown: none left, it
/// moves first).
pub fn headroom(cands: &[TargetCandidate], running: Option<&str>) -> f64 {
    cands
        .iter()
        .find(|c| Some(c.name.as_str()) == running)
        .map_or(0.0, |c| c.headroom)
}

/// What of a member its peers' decisions read: its standby's account, the
/// account it runs on, and whether it still wants one.
pub type Standing = (Option<String>, Option<String>, bool);

fn standing(s: &Session) -> Standing {
    (
        holds(s).map(str::to_string),
        running(s).map(str::to_string),
        wants(s),
    )
}

/// What a quiet pass of `s` read of its peers: each one's standing.
pub fn print(all: &[Arc<Session>], s: &Session) -> Vec<(String, Standing)> {
    let mut v: Vec<_> = others(all, s)
        .iter()
        .map(|o| (o.metadata.name.clone().unwrap_or_default(), standing(o)))
        .collect();
    v.sort();
    v
}

/// Whether a change of a Session (`before` → `after`; None: added or
/// deleted) concerns its peers, in a bounded pool: it took a place (a
/// standby started) or left one (used, stopped, or the Session gone).
/// Other changes only reorder those waiting for a place; each one looks
/// again at its own next pass.
pub fn wakes_peers(before: Option<&Session>, after: Option<&Session>) -> bool {
    let bounded = |s: Option<&Session>| s.is_some_and(|s| s.spec.standby_bound().is_some());
    (bounded(before) || bounded(after)) && before.and_then(holds) != after.and_then(holds)
}

/// The keys of the peers of a Session that changed from `before` to
/// `after` (either side's group: a changed bound or workdir counts).
pub fn keys(
    all: &[Arc<Session>],
    before: Option<&Session>,
    after: Option<&Session>,
) -> Vec<ObjectKey> {
    let mut out: Vec<ObjectKey> = [before, after]
        .into_iter()
        .flatten()
        .flat_map(|s| others(all, s))
        .map(|o| ObjectKey::of(o.as_ref()))
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn session(name: &str, pool: Option<&str>, bound: Option<u32>, holds: Option<&str>) -> Session {
        let mut labels = json!({});
        if let Some(p) = pool {
            labels[POOL_LABEL] = json!(p);
        }
        let mut standby = json!({"mode": "warm"});
        if let Some(b) = bound {
            standby["perTarget"] = json!(b);
        }
        let mut status = json!({
            "nodeName": "n1",
            "launch": {"account": "a", "at": "2026-12-01T00:00:00Z", "resumed": false,
                       "confirmedAt": "2026-12-01T00:00:01Z"},
        });
        if let Some(h) = holds {
            status["standby"] = json!({"account": h, "paneId": "%1", "pid": 7,
                "agentSessionId": "x", "launchedAt": "2026-12-01T00:00:00Z", "ready": true});
        }
        serde_json::from_value(json!({
            "apiVersion": "claude-failover.io/v1alpha1", "kind": "Session",
            "metadata": {"name": name, "namespace": "default", "labels": labels},
            "spec": {"workdir": "/w", "standby": standby},
            "status": status,
        }))
        .unwrap()
    }

    #[test]
    fn the_group_is_the_pool_on_one_node_in_one_workdir() {
        let me = session("p-0", Some("p"), Some(2), None);
        let mut elsewhere = session("p-2", Some("p"), Some(2), None);
        elsewhere.status.as_mut().unwrap().node_name = Some("n2".into());
        let mut other_dir = session("p-3", Some("p"), Some(2), None);
        other_dir.spec.workdir = "/v".into();
        let all: Vec<Arc<Session>> = [
            me.clone(),
            session("p-1", Some("p"), Some(2), Some("b")),
            elsewhere,
            other_dir,
            session("q-0", Some("q"), Some(2), None),
            session("lone", None, Some(2), None),
        ]
        .into_iter()
        .map(Arc::new)
        .collect();
        let names: Vec<_> = keys(&all, Some(&me), Some(&me))
            .into_iter()
            .map(|k| k.name)
            .collect();
        assert_eq!(names, ["p-1"]);
        // Unbounded, or outside a pool: alone.
        let free = session("p-0", Some("p"), None, None);
        assert!(keys(&all, Some(&free), None).is_empty());
        let lone = session("lone", None, Some(2), None);
        assert!(keys(&all, None, Some(&lone)).is_empty());
        // Bounded from now on: its new group hears it.
        assert_eq!(keys(&all, Some(&free), Some(&me)).len(), 1);
    }

    #[test]
    fn peers_are_woken_when_a_place_is_taken_or_left() {
        let idle = session("p-0", Some("p"), Some(2), None);
        let holding = session("p-0", Some("p"), Some(2), Some("b"));
        assert!(
            wakes_peers(Some(&idle), Some(&holding)),
            "a standby started"
        );
        assert!(wakes_peers(Some(&holding), Some(&idle)), "used or stopped");
        assert!(wakes_peers(Some(&holding), None), "deleted");
        assert!(
            wakes_peers(None, Some(&holding)),
            "heard of, with a standby"
        );
        assert!(!wakes_peers(None, Some(&idle)), "heard of, without");
        let mut moved = holding.clone();
        moved
            .status
            .as_mut()
            .unwrap()
            .launch
            .as_mut()
            .unwrap()
            .account = Some("b".into());
        assert!(
            !wakes_peers(Some(&holding), Some(&moved)),
            "moved, still holding"
        );
        let mut phase = holding.clone();
        phase.status.as_mut().unwrap().pid = Some(9);
        assert!(!wakes_peers(Some(&holding), Some(&phase)), "anything else");
        let free = session("p-0", Some("p"), None, None);
        let free_holding = session("p-0", Some("p"), None, Some("b"));
        assert!(!wakes_peers(Some(&free), Some(&free_holding)), "unbounded");
    }
}

//! What the leader decides about a Node (pure): its `Ready` condition from
//! the age of its heartbeat.

use crate::api::{
    HEARTBEAT_EXPIRED, HEARTBEAT_FRESH, NODE_READY, Node, Time, heartbeat_fresh, set_condition,
};
use std::time::Duration;

/// A Node's conditions as they should be at `now`, and whether its Ready
/// status flipped (None: nothing to write).
pub struct Verdict {
    pub conditions: Vec<crate::api::Condition>,
    pub ready: bool,
    /// The Ready status changed (or was set for the first time).
    pub flipped: bool,
}

/// The Ready condition of `node` at `now` under `ttl`; None when the
/// stored one already says it.
pub fn ready(node: &Node, now: k8s_openapi::jiff::Timestamp, ttl: Duration) -> Option<Verdict> {
    let status = node.status.clone().unwrap_or_default();
    let fresh = heartbeat_fresh(status.heartbeat_time.as_ref(), now, ttl);
    let (reason, message) = if fresh {
        (
            HEARTBEAT_FRESH,
            "the node's daemon is heartbeating".to_string(),
        )
    } else {
        (
            HEARTBEAT_EXPIRED,
            match &status.heartbeat_time {
                Some(_) => format!(
                    "no heartbeat from the node's daemon for {}s or more",
                    ttl.as_secs()
                ),
                None => "the node's daemon never sent a heartbeat".to_string(),
            },
        )
    };
    let was = node.ready();
    let existed = status.conditions.iter().any(|c| c.type_ == NODE_READY);
    let mut conditions = status.conditions;
    let changed = set_condition(
        &mut conditions,
        NODE_READY,
        fresh,
        reason,
        &message,
        None,
        Time(now),
    );
    changed.then_some(Verdict {
        conditions,
        ready: fresh,
        flipped: !existed || was != fresh,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{MicroTime, NodeStatus};
    use k8s_openapi::jiff::{SignedDuration, Timestamp};

    fn node(beat_secs_ago: Option<i64>, now: Timestamp) -> Node {
        let mut n = Node::new("a", Default::default());
        n.status = Some(NodeStatus {
            heartbeat_time: beat_secs_ago.map(|s| MicroTime(now - SignedDuration::from_secs(s))),
            ..Default::default()
        });
        n
    }

    #[test]
    fn a_fresh_node_becomes_ready_once_then_nothing_to_write() {
        let now = Timestamp::from_second(1_000_000).unwrap();
        let ttl = Duration::from_secs(15);
        let mut n = node(Some(1), now);
        let v = ready(&n, now, ttl).expect("first verdict");
        assert!(v.ready && v.flipped);
        n.status.as_mut().unwrap().conditions = v.conditions;
        assert!(n.ready());
        assert!(ready(&n, now, ttl).is_none(), "settled: no write");
    }

    #[test]
    fn an_expired_heartbeat_flips_ready_to_false_and_back() {
        let now = Timestamp::from_second(1_000_000).unwrap();
        let ttl = Duration::from_secs(15);
        let mut n = node(Some(1), now);
        n.status.as_mut().unwrap().conditions = ready(&n, now, ttl).unwrap().conditions;
        let later = now + SignedDuration::from_secs(30);
        let v = ready(&n, later, ttl).expect("expired");
        assert!(!v.ready && v.flipped);
        let c = &v.conditions[0];
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", HEARTBEAT_EXPIRED)
        );
        assert_eq!(c.last_transition_time.0, later);
        n.status.as_mut().unwrap().conditions = v.conditions;
        assert!(!n.ready());
        n.status.as_mut().unwrap().heartbeat_time = Some(MicroTime(later));
        let back = ready(&n, later, ttl).expect("back");
        assert!(back.ready && back.flipped);
    }

    #[test]
    fn a_node_that_never_beat_is_not_ready() {
        let now = Timestamp::from_second(1_000_000).unwrap();
        let v = ready(&node(None, now), now, Duration::from_secs(15)).unwrap();
        assert!(!v.ready);
        assert!(v.conditions[0].message.contains("never"));
    }
}

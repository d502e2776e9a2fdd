//! What `/readyz` answers: whether this daemon runs its node, leads or
//! follows, has synced its manifests and listed the store (see
//! [`super::api`] for the route).

use crate::api::Kind;
use serde_json::{Value, json};
use std::sync::atomic::{AtomicBool, Ordering};

/// What `/readyz` waits for: this daemon runs its node (leading, or
/// following another daemon that leads), the manifests synced
/// once (when there is a manifests directory), the session controller's
/// first listing of the store, and the feeds' (see [`super::bus`]) first
/// listing: the event stream's starting point, and the object gauges.
pub struct Readiness {
    /// Whether it runs its node's sessions.
    node: AtomicBool,
    leader: AtomicBool,
    /// Another daemon holds the leader lease (this one campaigns).
    following: AtomicBool,
    manifests: Option<AtomicBool>,
    sessions: AtomicBool,
    /// One bit per feed that has listed the store ([`Feed::bit`]).
    feeds: std::sync::atomic::AtomicU8,
    feeds_changed: tokio::sync::Notify,
}

/// One of the daemon's feeds: objects of one kind, or the recorded events.
#[derive(Debug, Clone, Copy)]
pub enum Feed {
    Objects(Kind),
    Events,
}

impl Feed {
    fn bit(self) -> u8 {
        match self {
            Feed::Objects(k) => {
                let i = Kind::DECLARED.iter().position(|d| *d == k);
                1 << i.expect("feeds follow the declared kinds")
            }
            Feed::Events => 1 << Kind::DECLARED.len(),
        }
    }

    const ALL_BITS: u8 = (1 << (Kind::DECLARED.len() + 1)) - 1;
}

impl Readiness {
    pub fn new(with_manifests: bool) -> Readiness {
        Readiness {
            node: AtomicBool::new(false),
            leader: AtomicBool::new(false),
            following: AtomicBool::new(false),
            manifests: with_manifests.then(|| AtomicBool::new(false)),
            sessions: AtomicBool::new(false),
            feeds: std::sync::atomic::AtomicU8::new(0),
            feeds_changed: tokio::sync::Notify::new(),
        }
    }

    pub fn set_leader(&self, v: bool) {
        self.leader.store(v, Ordering::SeqCst);
    }

    /// Whether another daemon is known to hold the leader lease.
    pub fn set_following(&self, v: bool) {
        self.following.store(v, Ordering::SeqCst);
    }

    /// It runs its node's sessions (and campaigns for the leader lease).
    pub fn node_running(&self) {
        self.node.store(true, Ordering::SeqCst);
    }

    pub fn manifests_synced(&self) {
        if let Some(m) = &self.manifests {
            m.store(true, Ordering::SeqCst);
        }
    }

    pub fn sessions_listed(&self) {
        self.sessions.store(true, Ordering::SeqCst);
    }

    /// `feed` has listed the store (its changes from now on are streamed).
    pub fn feed_listed(&self, feed: Feed) {
        self.feeds.fetch_or(feed.bit(), Ordering::SeqCst);
        self.feeds_changed.notify_waiters();
    }

    fn all_feeds_listed(&self) -> bool {
        self.feeds.load(Ordering::SeqCst) == Feed::ALL_BITS
    }

    /// Resolves once every feed has listed the store.
    pub async fn feeds_listed(&self) {
        loop {
            let changed = self.feeds_changed.notified();
            if self.all_feeds_listed() {
                return;
            }
            changed.await;
        }
    }

    /// Whether all checks pass, and each check with its state.
    pub fn check(&self) -> (bool, Value) {
        self.check_with(&[])
    }

    /// [`Readiness::check`], degraded by the store's corrupt objects: the
    /// daemon works on with the others, but is not ready until each is
    /// fixed or deleted.
    pub fn check_with(&self, corrupt: &[crate::store::CorruptObject]) -> (bool, Value) {
        let get = |b: &AtomicBool| b.load(Ordering::SeqCst);
        let (leads, follows) = (get(&self.leader), get(&self.following));
        let role = if leads {
            "held by this daemon"
        } else if follows {
            "held by another daemon: this one runs its node's sessions"
        } else {
            "not known yet (campaigning)"
        };
        let mut checks = vec![
            ("leaderLease", get(&self.node) && (leads || follows), role),
            (
                "sessionController",
                get(&self.sessions),
                "the store's sessions are listed",
            ),
            (
                "feeds",
                self.all_feeds_listed(),
                "the store's objects and events are listed (event stream, object gauges)",
            ),
        ];
        match &self.manifests {
            Some(_) if follows && !leads => {
                checks.push(("manifests", true, "synced by the leading daemon"))
            }
            Some(m) => checks.push(("manifests", get(m), "the first sync pass is done")),
            None => checks.push(("manifests", true, "no manifests directory")),
        }
        let ready = checks.iter().all(|c| c.1) && corrupt.is_empty();
        let mut list: Vec<Value> = checks
            .iter()
            .map(|(name, ok, what)| json!({"name": name, "ok": ok, "message": what}))
            .collect();
        let store_message = match corrupt {
            [] => "every stored object reads".to_string(),
            bad => format!(
                "{} corrupt object(s) quarantined (skipped by the controllers; fix or delete them): {}",
                bad.len(),
                bad.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
        };
        list.push(json!({"name": "store", "ok": corrupt.is_empty(), "message": store_message}));
        let mut body = json!({"ready": ready, "checks": list});
        if !corrupt.is_empty() {
            body["degraded"] = json!(true);
            body["corrupt"] = serde_json::to_value(corrupt).expect("corrupt objects serialize");
        }
        (ready, body)
    }
}

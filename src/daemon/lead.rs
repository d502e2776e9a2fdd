//! The leader's work (docs/distributed.md, "Who runs what"): every daemon
//! campaigns for the store's leader lease while it runs its node; the one
//! that holds it runs what is global (the scheduler, task assignment's
//! bookkeeping, the account, failover and pool controllers, the node
//! lifecycle, the manifests sync, the janitor). A daemon that loses the
//! lease (etcd: not renewed in time) stops that work, keeps its node's
//! sessions and agents, and campaigns again.

use super::api::Readiness;
use super::run::{any_of, changes};
use crate::controller::{Shared, account, failover, node, pool};
use crate::metrics::Metrics;
use crate::store::Store;
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// What the leader's work is built from.
pub struct LeaderWork {
    pub store: Store,
    pub shared: Arc<Shared>,
    pub me: Arc<node::NodeState>,
    pub readiness: Arc<Readiness>,
    pub metrics: Arc<Metrics>,
    pub quota: account::QuotaSettings,
    pub failover: failover::FailoverSettings,
    pub janitor: crate::janitor::Settings,
    pub syncer: Option<crate::sync::Syncer>,
    pub stop: tokio::sync::watch::Receiver<bool>,
}

/// Campaigns, leads until the lease is lost, and campaigns again, until
/// aborted (the daemon's shutdown: the lease goes with this future).
pub async fn lead_forever(w: LeaderWork) {
    loop {
        let lock = match campaign(&w).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "cannot campaign for the leader lease; trying again");
                tokio::time::sleep(crate::store::UNAVAILABLE_BACKOFF).await;
                continue;
            }
        };
        tracing::info!(holder = %lock.identity, "leader lease acquired");
        w.me.leading.store(true, Ordering::SeqCst);
        w.readiness.set_leader(true);
        w.readiness.set_following(false);
        w.metrics.leader.set(1);
        w.metrics.leader_transitions_total.inc();
        let tasks = start(&w);
        lock.lost().await;
        for t in tasks {
            t.abort();
        }
        w.me.leading.store(false, Ordering::SeqCst);
        w.readiness.set_leader(false);
        w.metrics.leader.set(0);
        tracing::warn!(
            "the leader lease on the store was lost (not renewed in time; another daemon may lead now): this daemon stops the leader's work, keeps running its node's sessions, and campaigns again"
        );
    }
}

/// Waits until this daemon leads the store.
async fn campaign(w: &LeaderWork) -> Result<crate::store::LeaderLock, crate::store::StoreError> {
    let identity = w.me.identity.clone();
    let store = w.store.clone();
    let id = identity.clone();
    let tried = tokio::task::spawn_blocking(move || store.try_lead(&id))
        .await
        .expect("the leader's try panicked")?;
    if let Some(l) = tried {
        return Ok(l);
    }
    w.readiness.set_following(true);
    let holder = w.store.leader().ok().flatten().unwrap_or_default();
    tracing::info!(leader = %holder, "another daemon leads this store: this one runs its node's sessions and waits for the lease");
    w.store.lead(&identity).await
}

/// Starts the leader's controllers, each on its own task.
fn start(w: &LeaderWork) -> Vec<tokio::task::JoinHandle<()>> {
    let sh = &w.shared;
    let c = &sh.caches;
    let accounts = Arc::new(account::Context::new(sh.clone(), w.quota.clone()));
    let failovers = Arc::new(failover::Context {
        shared: sh.clone(),
        settings: w.failover.clone(),
        me: w.me.identity.clone(),
    });
    let pools = Arc::new(pool::Context { shared: sh.clone() });
    let mut tasks = vec![
        tokio::spawn(node::lifecycle(w.store.clone())),
        tokio::spawn(node::schedule::run(
            sh.clone(),
            w.me.name.clone(),
            any_of(vec![changes(&c.sessions), changes(&c.nodes)]),
        )),
        tokio::spawn(pool::run(
            pools,
            any_of(vec![
                changes(&c.pools),
                changes(&c.sessions),
                changes(&c.accounts),
            ]),
        )),
        tokio::spawn(account::run(
            accounts,
            any_of(vec![changes(&c.accounts), changes(&c.sessions)]),
        )),
        tokio::spawn(failover::run(
            failovers,
            changes(&c.sessions),
            any_of(vec![
                changes(&c.accounts),
                changes(&c.swaps),
                changes(&c.leases),
            ]),
        )),
        tokio::spawn(crate::janitor::run(w.store.clone(), w.janitor.clone())),
    ];
    if let Some(s) = w.syncer.clone() {
        let s = s.with_metrics(w.metrics.clone());
        let mut stop = w.stop.clone();
        let readiness = w.readiness.clone();
        tasks.push(tokio::spawn(s.run(
            sh.settings.resync,
            async move {
                let _ = stop.changed().await;
            },
            move |_| readiness.manifests_synced(),
        )));
    }
    tasks
}

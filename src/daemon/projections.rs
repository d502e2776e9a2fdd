//! What is derived from the caches' change feeds and shown elsewhere: the
//! object gauges of the metrics (sessions and tasks by phase, every
//! account's usage and phase, the Nodes' readiness and Sessions). A burst of changes is counted once.

use crate::controller::Caches;
use crate::metrics::Metrics;
use crate::store::cache::{Cache, Changed};
use futures::{FutureExt, StreamExt};
use std::sync::Arc;
use std::time::Duration;

/// The gauges are counted again at most this often: each count looks at
/// every object, and a queue of 20,000 tasks being applied is 20,000
/// changes (counting on each was quadratic in the queue's length).
const COUNT_EVERY: Duration = Duration::from_millis(500);

/// Follows the caches and keeps the object gauges equal to what they hold.
/// Runs until aborted.
pub async fn gauges(caches: Caches, metrics: Arc<Metrics>) {
    let sessions = {
        let m = metrics.clone();
        follow(caches.sessions.clone(), move |all| {
            let phases: Vec<_> = all
                .iter()
                .map(|s| {
                    s.status
                        .as_ref()
                        .and_then(|st| st.phase)
                        .unwrap_or_default()
                })
                .collect();
            m.count_sessions(&phases);
            m.count_standbys(
                all.iter()
                    .filter_map(|s| s.status.as_ref()?.standby.as_ref()),
            );
        })
    };
    let tasks = {
        let m = metrics.clone();
        follow(caches.tasks.clone(), move |all| {
            let phases: Vec<_> = all
                .iter()
                .map(|t| {
                    t.status
                        .as_ref()
                        .and_then(|st| st.phase)
                        .unwrap_or_default()
                })
                .collect();
            m.count_tasks(&phases);
        })
    };
    let accounts = {
        let m = metrics.clone();
        follow(caches.accounts.clone(), move |all| {
            m.fill_accounts(all.iter().map(Arc::as_ref));
        })
    };
    let pools = {
        let m = metrics.clone();
        follow(caches.pools.clone(), move |all| {
            crate::controller::pool::fill_gauge(&m.pool_sessions, all.iter().map(Arc::as_ref));
        })
    };
    let nodes = {
        let (m, c) = (metrics.clone(), caches.clone());
        follow(caches.nodes.clone(), move |all| count_nodes(&m, all, &c))
    };
    let node_sessions = {
        let (m, c) = (metrics.clone(), caches.clone());
        follow(caches.sessions.clone(), move |_| {
            count_nodes(&m, &c.nodes.all(), &c)
        })
    };
    futures::join!(sessions, tasks, accounts, pools, nodes, node_sessions);
}

fn count_nodes(m: &Metrics, nodes: &[Arc<crate::api::Node>], c: &Caches) {
    let nodes: Vec<(String, bool)> = nodes
        .iter()
        .map(|n| (n.metadata.name.clone().unwrap_or_default(), n.ready()))
        .collect();
    let sessions = c.sessions.all();
    let on: Vec<Option<&str>> = sessions.iter().map(|s| s.node()).collect();
    m.count_nodes(&nodes, &on);
}

/// Calls `settle` with every object of `cache` once it is listed, then
/// after each burst of changes: [`COUNT_EVERY`] after the first change,
/// once for all that arrived meanwhile.
async fn follow<K>(cache: Cache<K>, settle: impl Fn(&[Arc<K>]))
where
    K: crate::api::Object,
{
    let mut changes = Box::pin(cache.changes());
    cache.listed().await;
    settle(&cache.all());
    while let Some(first) = changes.next().await {
        let mut changed = !matches!(first, Changed::Listed);
        tokio::time::sleep(COUNT_EVERY).await;
        while let Some(Some(c)) = changes.next().now_or_never() {
            changed |= !matches!(c, Changed::Listed);
        }
        if changed {
            settle(&cache.all());
        }
    }
}

//! What is derived from the caches' change feeds and shown elsewhere: the
//! object gauges of the metrics (sessions and tasks by phase, every
//! account's usage and phase). A burst of changes is counted once.

use crate::controller::Caches;
use crate::metrics::Metrics;
use crate::store::cache::{Cache, Changed};
use futures::StreamExt;
use std::sync::Arc;

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
    futures::join!(sessions, tasks, accounts, pools);
}

/// Calls `settle` with every object of `cache` once it is listed, then
/// after each burst of changes (all that arrived while it ran, once).
async fn follow<K>(cache: Cache<K>, settle: impl Fn(&[Arc<K>]))
where
    K: crate::api::Object,
{
    let changes = cache.changes().ready_chunks(1024);
    let mut changes = Box::pin(changes);
    cache.listed().await;
    settle(&cache.all());
    while let Some(batch) = changes.next().await {
        if batch.iter().any(|c| !matches!(c, Changed::Listed)) {
            settle(&cache.all());
        }
    }
}

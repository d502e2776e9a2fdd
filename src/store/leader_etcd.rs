//! Leadership of an etcd store: the leader holds `PREFIX/.leader`, a key
//! attached to an etcd lease it keeps alive. The key is created only where
//! none is (one transaction), so one daemon leads; when the leader dies or
//! is cut off, its lease expires within [`LEADER_TTL`], etcd deletes the
//! key, and a standby watching it takes over. A leader that cannot renew
//! its lease before it expires is told ([`super::LeaderLock::lost`]) and
//! must stop acting.

use super::etcd::{Etcd, REQUEST_TIMEOUT};
use super::{Store, StoreError};
use etcd_client::{Compare, CompareOp, EventType, PutOptions, Txn, TxnOp, WatchOptions};
use std::sync::Arc;
use std::time::Duration;

/// How long a leader that no longer renews keeps the store.
pub const LEADER_TTL: Duration = Duration::from_secs(10);

/// How often the leader renews (a third of the TTL: two renewals may fail).
const RENEW_EVERY: Duration = Duration::from_secs(3);

/// How soon a renewal that failed is tried again (the cluster may be
/// electing a leader, or regaining its quorum, before the TTL ends).
const RENEW_RETRY: Duration = Duration::from_millis(500);

/// The key of the leader, under the prefix.
const LEADER_KEY: &str = ".leader";

/// Held while leading an etcd store.
pub(super) struct EtcdLeadership {
    etcd: Arc<Etcd>,
    lease: i64,
    renew: tokio::task::JoinHandle<()>,
}

impl Drop for EtcdLeadership {
    /// Gives the store up at once (a standby need not wait for the TTL).
    fn drop(&mut self) {
        self.renew.abort();
        let mut c = self.etcd.client();
        let lease = self.lease;
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.etcd.runtime().spawn(async move {
            let _ = tokio::time::timeout(REQUEST_TIMEOUT, c.lease_revoke(lease)).await;
            let _ = tx.send(());
        });
        let _ = rx.recv();
    }
}

/// Tries once to lead: Some(the leadership and a receiver that turns true
/// when it is lost), or None when another daemon leads.
pub(super) fn try_lead(
    store: &Store,
    identity: &str,
) -> Result<Option<(EtcdLeadership, tokio::sync::watch::Receiver<bool>)>, StoreError> {
    let etcd = store.etcd().expect("called on etcd").clone();
    let key = etcd.key(LEADER_KEY);
    let (id, who) = (identity.to_string(), identity.to_string());
    let c = etcd.client();
    let e2 = etcd.clone();
    let taken = block(&etcd, move || {
        let (mut c, key, id) = (c.clone(), key.clone(), id.clone());
        async move {
            let lease = c.lease_grant(LEADER_TTL.as_secs() as i64, None).await?.id();
            let txn = Txn::new()
                .when([Compare::version(key.clone(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(
                    key,
                    id,
                    Some(PutOptions::new().with_lease(lease)),
                )]);
            if c.txn(txn).await?.succeeded() {
                Ok(Some(lease))
            } else {
                c.lease_revoke(lease).await?;
                Ok(None)
            }
        }
    })?;
    let Some(lease) = taken else {
        return Ok(None);
    };
    let (lost_tx, lost_rx) = tokio::sync::watch::channel(false);
    let renew = etcd.runtime().spawn(renew(e2, lease, who, lost_tx));
    Ok(Some((EtcdLeadership { etcd, lease, renew }, lost_rx)))
}

/// Waits until the leader key is gone (or a wait of [`LEADER_TTL`] passed).
pub(super) async fn wait_for_vacancy(store: &Store) -> Result<(), StoreError> {
    let etcd = store.etcd().expect("called on etcd").clone();
    let key = etcd.key(LEADER_KEY);
    let mut c = etcd.client();
    let e2 = etcd.clone();
    let fut = async move {
        let r = c.get(key.clone(), None).await?;
        if r.kvs().is_empty() {
            return Ok(());
        }
        let from = r.header().map_or(0, |h| h.revision()) + 1;
        let mut w = c
            .watch(key, Some(WatchOptions::new().with_start_revision(from)))
            .await?;
        let gone = async {
            while let Some(resp) = w.message().await? {
                if resp
                    .events()
                    .iter()
                    .any(|e| e.event_type() == EventType::Delete)
                {
                    break;
                }
            }
            Ok::<(), etcd_client::Error>(())
        };
        // A watch that hears nothing (a partition) is checked again.
        let _ = tokio::time::timeout(LEADER_TTL, gone).await;
        Ok::<(), etcd_client::Error>(())
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    e2.runtime().spawn(async move {
        let _ = tx.send(fut.await);
    });
    match rx.await {
        Ok(r) => r.map_err(|e| etcd.unavailable(e.to_string())),
        Err(_) => Err(etcd.unavailable("its client stopped".into())),
    }
}

/// Keeps the lease alive; says `lost` when a renewal fails past the TTL or
/// etcd says the lease expired.
async fn renew(
    etcd: Arc<Etcd>,
    lease: i64,
    identity: String,
    lost: tokio::sync::watch::Sender<bool>,
) {
    let mut c = etcd.client();
    let mut last_ok = tokio::time::Instant::now();
    let mut keeper = None;
    loop {
        if last_ok.elapsed() >= LEADER_TTL {
            tracing::error!(store = %etcd.url(), holder = %identity, "leader lease not renewed within its TTL: leadership lost");
            let _ = lost.send(true);
            return;
        }
        // No try outlasts the lease: a renewal that hangs (no quorum) is
        // given up in time to try again before the TTL ends.
        let within = REQUEST_TIMEOUT
            .min(LEADER_TTL.saturating_sub(last_ok.elapsed()))
            .max(RENEW_RETRY);
        let mut pause = RENEW_EVERY;
        if keeper.is_none() {
            keeper = tokio::time::timeout(within, c.lease_keep_alive(lease))
                .await
                .ok()
                .and_then(Result::ok);
        }
        if let Some((k, stream)) = &mut keeper {
            let once = async {
                k.keep_alive().await?;
                stream.message().await
            };
            match tokio::time::timeout(within, once).await {
                Ok(Ok(Some(resp))) if resp.ttl() > 0 => last_ok = tokio::time::Instant::now(),
                Ok(Ok(Some(_))) => {
                    tracing::error!(store = %etcd.url(), holder = %identity, "leader lease expired: leadership lost");
                    let _ = lost.send(true);
                    return;
                }
                r => {
                    // Without a quorum the store says so itself, once.
                    if etcd.outage().is_none() {
                        tracing::warn!(store = %etcd.url(), result = ?r.map(|r| r.map(|_| ())), "cannot renew the leader lease; trying again");
                    }
                    keeper = None;
                    pause = RENEW_RETRY;
                }
            }
        } else {
            pause = RENEW_RETRY;
        }
        tokio::time::sleep(pause).await;
    }
}

/// Runs `f` on the connection's runtime and waits for it (see
/// `Etcd::call`).
fn block<T: Send + 'static, F>(
    etcd: &Arc<Etcd>,
    make: impl Fn() -> F + Send + 'static,
) -> Result<T, StoreError>
where
    F: std::future::Future<Output = Result<T, etcd_client::Error>> + Send + 'static,
{
    let tries = etcd.url().endpoints.len() * 2 + 1;
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    etcd.runtime().spawn(async move {
        let once = async move {
            let mut n = 1;
            loop {
                match make().await {
                    // Never reached a member (one is down): another one.
                    Err(etcd_client::Error::GRpcStatus(s))
                        if n < tries && s.message().contains("connect error") =>
                    {
                        n += 1;
                        tokio::time::sleep(super::etcd::RESEND_AFTER).await;
                    }
                    r => return r,
                }
            }
        };
        let _ = tx.send(tokio::time::timeout(REQUEST_TIMEOUT * 2, once).await);
    });
    match rx.recv() {
        Ok(Ok(r)) => r.map_err(|e| etcd.unavailable(e.to_string())),
        Ok(Err(_)) => Err(etcd.unavailable("no answer (is a quorum of its members up?)".into())),
        Err(_) => Err(etcd.unavailable("its client stopped".into())),
    }
}

/// How long a standby waits between two tries when the store does not answer.
pub(super) const RETRY: Duration = Duration::from_secs(1);

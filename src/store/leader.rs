//! Leadership of a store: one daemon leads each store, whatever state dir
//! it was started with.
//!
//! Local store: the leader holds an exclusive kernel lock (`flock`) on
//! `STORE/.leader.lock` for as long as it runs; the kernel releases it the
//! moment the process dies, however it dies (SIGKILL included). A standby
//! waits on the same lock (in a thread of its own, so a signal ends the
//! standby at once) and leads as soon as it is free. The `Lease`
//! `claude-failover-system/leader` says who leads, for people and tools.

use super::{Store, StoreError};
use crate::api::{LEADER_LEASE, Lease, LeaseSpec, SYSTEM_NAMESPACE};
use serde_json::json;
use std::fs::File;
use std::path::PathBuf;

/// Held while leading; dropping it (or the process ending) lets a standby
/// lead.
pub struct LeaderLock {
    _held: Held,
    lost: Option<tokio::sync::watch::Receiver<bool>>,
    pub identity: String,
}

enum Held {
    File(#[allow(dead_code)] File),
    Etcd(#[allow(dead_code)] super::leader_etcd::EtcdLeadership),
}

impl LeaderLock {
    /// Resolves when the leadership is lost (an etcd lease not renewed in
    /// time: this daemon was cut off, and another may lead now). A local
    /// leader loses it only with its process: never.
    pub fn lost(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let rx = self.lost.clone();
        async move {
            match rx {
                Some(mut rx) => {
                    if rx.wait_for(|lost| *lost).await.is_err() {
                        std::future::pending::<()>().await
                    }
                }
                None => std::future::pending().await,
            }
        }
    }
}

/// This process, as leases name their holder: host, pid and a random tag
/// (a pid is reused; the tag is not).
pub fn identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".into());
    format!(
        "{host}:{}:{}",
        std::process::id(),
        &crate::secret::random_hex(3)
    )
}

impl Store {
    fn leader_lock_path(&self) -> PathBuf {
        self.root().join(".leader.lock")
    }

    fn open_leader_lock(&self) -> Result<File, StoreError> {
        let p = self.leader_lock_path();
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .map_err(|source| StoreError::Io { path: p, source })
    }

    /// Leads the store if nobody does.
    pub fn try_lead(&self, identity: &str) -> Result<Option<LeaderLock>, StoreError> {
        if self.is_etcd() {
            return match super::leader_etcd::try_lead(self, identity)? {
                Some((held, lost)) => self
                    .lead_with(Held::Etcd(held), Some(lost), identity)
                    .map(Some),
                None => Ok(None),
            };
        }
        let f = self.open_leader_lock()?;
        match f.try_lock() {
            Ok(()) => self.lead_with(Held::File(f), None, identity).map(Some),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(source)) => Err(StoreError::Io {
                path: self.leader_lock_path(),
                source,
            }),
        }
    }

    /// Waits until the store is free to lead, and leads it. The wait runs
    /// in a thread of its own: dropping the future leaves it behind (it ends
    /// with the process), so nothing waits for it at shutdown.
    pub async fn lead(&self, identity: &str) -> Result<LeaderLock, StoreError> {
        if self.is_etcd() {
            loop {
                let (store, id) = (self.clone(), identity.to_string());
                let tried = tokio::task::spawn_blocking(move || store.try_lead(&id))
                    .await
                    .map_err(|e| StoreError::Malformed(format!("the leader wait failed: {e}")))?;
                match tried {
                    Ok(Some(l)) => return Ok(l),
                    Ok(None) => {
                        if let Err(e) = super::leader_etcd::wait_for_vacancy(self).await {
                            tracing::warn!(error = %e, "standby: cannot watch the leader");
                            tokio::time::sleep(super::leader_etcd::RETRY).await;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "standby: cannot reach the store");
                        tokio::time::sleep(super::leader_etcd::RETRY).await;
                    }
                }
            }
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        let (store, id) = (self.clone(), identity.to_string());
        std::thread::Builder::new()
            .name("leader-wait".into())
            .spawn(move || {
                let r = store.open_leader_lock().and_then(|f| {
                    f.lock().map_err(|source| StoreError::Io {
                        path: store.leader_lock_path(),
                        source,
                    })?;
                    store.lead_with(Held::File(f), None, &id)
                });
                let _ = tx.send(r);
            })
            .map_err(|source| StoreError::Io {
                path: self.leader_lock_path(),
                source,
            })?;
        rx.await.unwrap_or_else(|_| {
            Err(StoreError::Io {
                path: self.leader_lock_path(),
                source: std::io::Error::other("the leader wait ended"),
            })
        })
    }

    fn lead_with(
        &self,
        held: Held,
        lost: Option<tokio::sync::watch::Receiver<bool>>,
        identity: &str,
    ) -> Result<LeaderLock, StoreError> {
        let current = self
            .api::<Lease>(Some(SYSTEM_NAMESPACE))
            .get(LEADER_LEASE)?;
        let now = crate::api::micro_now();
        let spec = LeaseSpec {
            holder_identity: Some(identity.to_string()),
            epoch: current.as_ref().map_or(0, |l| l.spec.epoch) + 1,
            acquire_time: Some(now.clone()),
            renew_time: Some(now),
            lease_duration_seconds: None,
            lease_transitions: current.as_ref().map_or(0, |l| l.spec.lease_transitions + 1),
        };
        self.apply(
            &json!({
                "apiVersion": crate::api::API_VERSION,
                "kind": "Lease",
                "metadata": {"name": LEADER_LEASE, "namespace": SYSTEM_NAMESPACE},
                "spec": spec,
            }),
            false,
        )?;
        Ok(LeaderLock {
            _held: held,
            lost,
            identity: identity.to_string(),
        })
    }

    /// Who leads the store, as its leader lease says (None: nobody ever did).
    pub fn leader(&self) -> Result<Option<String>, StoreError> {
        Ok(self
            .api::<Lease>(Some(SYSTEM_NAMESPACE))
            .get(LEADER_LEASE)?
            .and_then(|l| l.spec.holder_identity))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_leader_per_store_whatever_the_state_dir() {
        let d = tempfile::tempdir().unwrap();
        let a = Store::open(d.path()).unwrap();
        let b = Store::open(d.path()).unwrap();
        let first = a.try_lead("one").unwrap().expect("free");
        assert!(b.try_lead("two").unwrap().is_none(), "held");
        assert_eq!(a.leader().unwrap().as_deref(), Some("one"));
        drop(first);
        let second = b.try_lead("two").unwrap().expect("released");
        assert_eq!(b.leader().unwrap().as_deref(), Some("two"));
        drop(second);
    }
}

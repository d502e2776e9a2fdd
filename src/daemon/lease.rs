//! The leader lease on a local store: one daemon is active per store.
//!
//! The leader holds an exclusive kernel lock (`flock`) on
//! `STATE/leader.lock` for as long as it runs; the kernel releases it the
//! moment the process dies, however it dies (SIGKILL included). A standby
//! daemon blocks on the same lock and becomes leader as soon as it is
//! free. `STATE/leader.json` records who holds it, for people and tools.

use crate::fsutil::write_atomic;
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LeaseRecord {
    pub holder: String,
    pub pid: u32,
    pub acquired_at: crate::api::Time,
}

/// Held while leader; dropping it releases the lease.
pub struct LeaderLease {
    _lock: File,
    pub record: LeaseRecord,
}

fn paths(state_dir: &Path) -> (PathBuf, PathBuf) {
    (state_dir.join("leader.lock"), state_dir.join("leader.json"))
}

fn open(state_dir: &Path) -> std::io::Result<File> {
    std::fs::create_dir_all(state_dir)?;
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(paths(state_dir).0)
}

fn take(state_dir: &Path, lock: File) -> std::io::Result<LeaderLease> {
    let record = LeaseRecord {
        holder: format!("{}:{}", hostname(), std::process::id()),
        pid: std::process::id(),
        acquired_at: crate::api::now(),
    };
    let data = serde_json::to_vec_pretty(&record).expect("lease record serializes");
    write_atomic(&paths(state_dir).1, &data, None, true)?;
    Ok(LeaderLease {
        _lock: lock,
        record,
    })
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

/// Takes the lease if it is free.
pub fn try_acquire(state_dir: &Path) -> std::io::Result<Option<LeaderLease>> {
    let f = open(state_dir)?;
    match f.try_lock() {
        Ok(()) => take(state_dir, f).map(Some),
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(e)) => Err(e),
    }
}

/// Waits until the lease is free and takes it.
pub async fn acquire(state_dir: &Path) -> std::io::Result<LeaderLease> {
    let dir = state_dir.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let f = open(&dir)?;
        f.lock()?;
        take(&dir, f)
    })
    .await
    .map_err(std::io::Error::other)?
}

/// Who holds the lease now, as recorded (None when nobody ever did).
pub fn current(state_dir: &Path) -> Option<LeaseRecord> {
    std::fs::read(paths(state_dir).1)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_at_a_time() {
        let d = tempfile::tempdir().unwrap();
        let first = try_acquire(d.path()).unwrap().expect("free");
        assert!(try_acquire(d.path()).unwrap().is_none(), "held");
        assert_eq!(current(d.path()).unwrap().pid, std::process::id());
        drop(first);
        assert!(try_acquire(d.path()).unwrap().is_some(), "released on drop");
    }
}

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

/// The swap lease: one account swap at a time per store, across daemons.
///
/// A kernel lock on `STATE/swap.lock` held for the swap's duration, and
/// `STATE/swap.json` with the fencing epoch: each acquisition takes the
/// next epoch, written durably before the swap does anything, and every
/// swap and placement carries it. A record left `active` is a swap whose
/// daemon died in the middle.
pub struct SwapLease {
    _lock: File,
    pub record: SwapLeaseRecord,
    /// The record found on acquisition, when its swap never released.
    pub interrupted: Option<SwapLeaseRecord>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct SwapLeaseRecord {
    pub epoch: u64,
    pub holder: String,
    pub pid: u32,
    pub active: bool,
}

fn swap_paths(state_dir: &Path) -> (PathBuf, PathBuf) {
    (state_dir.join("swap.lock"), state_dir.join("swap.json"))
}

/// The latest swap lease record (epoch 0: never taken).
pub fn swap_record(state_dir: &Path) -> SwapLeaseRecord {
    std::fs::read(swap_paths(state_dir).1)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// Waits for the swap lease and takes it with the next epoch.
pub async fn acquire_swap(state_dir: &Path) -> std::io::Result<SwapLease> {
    let dir = state_dir.to_path_buf();
    tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(&dir)?;
        let (lock_path, record_path) = swap_paths(&dir);
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(lock_path)?;
        f.lock()?;
        let previous = swap_record(&dir);
        let record = SwapLeaseRecord {
            epoch: previous.epoch + 1,
            holder: format!("{}:{}", hostname(), std::process::id()),
            pid: std::process::id(),
            active: true,
        };
        let data = serde_json::to_vec_pretty(&record).expect("swap record serializes");
        write_atomic(&record_path, &data, None, true)?;
        Ok(SwapLease {
            _lock: f,
            record,
            interrupted: previous.active.then_some(previous),
        })
    })
    .await
    .map_err(std::io::Error::other)?
}

/// Releases a swap lease record left active by a dead holder (the lock is
/// free); returns that record. Does nothing while a live holder has it.
pub fn clear_stale_swap(state_dir: &Path) -> std::io::Result<Option<SwapLeaseRecord>> {
    let (lock_path, record_path) = swap_paths(state_dir);
    let record = swap_record(state_dir);
    if !record.active {
        return Ok(None);
    }
    std::fs::create_dir_all(state_dir)?;
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(lock_path)?;
    match f.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => return Ok(None),
        Err(std::fs::TryLockError::Error(e)) => return Err(e),
    }
    // Read again under the lock: a holder may have finished meanwhile.
    let record = swap_record(state_dir);
    if !record.active {
        return Ok(None);
    }
    let released = SwapLeaseRecord {
        active: false,
        ..record.clone()
    };
    let data = serde_json::to_vec_pretty(&released).expect("swap record serializes");
    write_atomic(&record_path, &data, None, true)?;
    Ok(Some(record))
}

impl SwapLease {
    /// Marks the swap over, then lets the lock go.
    pub fn release(self, state_dir: &Path) -> std::io::Result<()> {
        let record = SwapLeaseRecord {
            active: false,
            ..self.record.clone()
        };
        let data = serde_json::to_vec_pretty(&record).expect("swap record serializes");
        write_atomic(&swap_paths(state_dir).1, &data, None, true)
    }
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

    #[tokio::test]
    async fn swap_epochs_increase_and_interruptions_show() {
        let d = tempfile::tempdir().unwrap();
        let a = acquire_swap(d.path()).await.unwrap();
        assert_eq!(a.record.epoch, 1);
        assert!(a.interrupted.is_none());
        a.release(d.path()).unwrap();
        let b = acquire_swap(d.path()).await.unwrap();
        assert_eq!(b.record.epoch, 2);
        drop(b); // as if the daemon died mid-swap
        let c = acquire_swap(d.path()).await.unwrap();
        assert_eq!(c.record.epoch, 3);
        assert_eq!(c.interrupted.as_ref().map(|r| r.epoch), Some(2));
        // Held: nothing stale to clear.
        assert_eq!(clear_stale_swap(d.path()).unwrap(), None);
        drop(c); // died after its last step
        assert_eq!(
            clear_stale_swap(d.path()).unwrap().map(|r| r.epoch),
            Some(3)
        );
        assert!(!swap_record(d.path()).active);
    }
}

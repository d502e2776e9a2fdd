//! Makes [`Durability::Soon`](super::Durability::Soon) writes durable: one
//! `syncfs` per store directory, [`LAZY_FLUSH`](super::LAZY_FLUSH) after
//! the first write that waits, on a thread of its own (so a slow disk
//! never holds up a caller).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::Instant;

struct Pending {
    roots: Mutex<(BTreeSet<PathBuf>, Option<Instant>)>,
    wake: Condvar,
}

fn pending() -> &'static Pending {
    static P: OnceLock<Pending> = OnceLock::new();
    P.get_or_init(|| {
        std::thread::Builder::new()
            .name("store-flusher".into())
            .spawn(run)
            .expect("spawn the store flusher");
        Pending {
            roots: Mutex::new((BTreeSet::new(), None)),
            wake: Condvar::new(),
        }
    })
}

/// Schedules a `syncfs` of the filesystem holding `root`.
pub(super) fn flush_soon(root: &Path) {
    let p = pending();
    let mut g = p.roots.lock().unwrap_or_else(|e| e.into_inner());
    if g.0.insert(root.to_path_buf()) && g.1.is_none() {
        g.1 = Some(Instant::now() + super::LAZY_FLUSH);
    }
    p.wake.notify_one();
}

fn take_due(wait_until_due: bool) -> BTreeSet<PathBuf> {
    let p = pending();
    let mut g = p.roots.lock().unwrap_or_else(|e| e.into_inner());
    if wait_until_due {
        loop {
            match g.1 {
                None => g = p.wake.wait(g).unwrap_or_else(|e| e.into_inner()),
                Some(due) if Instant::now() < due => {
                    g = p
                        .wake
                        .wait_timeout(g, due - Instant::now())
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
                Some(_) => break,
            }
        }
    }
    g.1 = None;
    std::mem::take(&mut g.0)
}

fn sync(roots: BTreeSet<PathBuf>) -> std::io::Result<()> {
    let mut result = Ok(());
    for root in roots {
        if let Err(e) = crate::fsutil::sync_filesystem(&root) {
            tracing::warn!(store = %root.display(), error = %e, "cannot flush the store's lazy writes");
            result = Err(e);
        }
    }
    result
}

fn run() {
    loop {
        let _ = sync(take_due(true));
    }
}

/// Makes every write that waits durable now (a daemon's exit).
pub fn flush_now() -> std::io::Result<()> {
    sync(take_due(false))
}

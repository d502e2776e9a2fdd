//! When the agents' processes end, without polling: one pidfd per watched
//! process (Linux 5.3 and later), which becomes readable once the process
//! has exited, awaited on the runtime's reactor. Where a pidfd cannot be
//! opened (an older kernel), that process is looked at in `/proc` every
//! [`POLL_EVERY`] instead, off the async workers.
//!
//! tmux's own pane-death notification does not always come (a pane whose
//! process tmux never reaps shows no death at all), so the session
//! controller watches each running agent here and wakes its reconcile when
//! the process ends. An idle pool costs nothing: no timer, no read.

use crate::api::ObjectKey;
use std::collections::HashMap;
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::Mutex;
use std::time::Duration;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::task::JoinHandle;

/// How often a process without a pidfd is looked at.
pub const POLL_EVERY: Duration = Duration::from_secs(2);

/// The processes watched, one per key.
#[derive(Default)]
pub struct Exits {
    watched: Mutex<HashMap<ObjectKey, (u32, JoinHandle<()>)>>,
}

impl Exits {
    /// Watches `pid` for `key`: `gone` runs once when it has exited. A
    /// watch of another pid for the key is dropped; the same pid still
    /// watched is left as it is. Must run inside the tokio runtime.
    pub fn watch(&self, key: &ObjectKey, pid: u32, gone: impl FnOnce() + Send + 'static) {
        let mut w = self.watched.lock().expect("exits lock");
        if let Some((watched, task)) = w.get(key) {
            if *watched == pid && !task.is_finished() {
                return;
            }
            task.abort();
        }
        let task = tokio::spawn(async move {
            exited(pid).await;
            gone();
        });
        w.insert(key.clone(), (pid, task));
    }

    /// Stops watching the key's process.
    pub fn forget(&self, key: &ObjectKey) {
        if let Some((_, task)) = self.watched.lock().expect("exits lock").remove(key) {
            task.abort();
        }
    }

    /// How many processes are watched.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.watched.lock().expect("exits lock").len()
    }
}

impl Drop for Exits {
    fn drop(&mut self) {
        for (_, (_, task)) in self.watched.get_mut().expect("exits lock").drain() {
            task.abort();
        }
    }
}

/// Resolves once process `pid` has exited (at once if it is gone).
pub async fn exited(pid: u32) {
    match pidfd(pid) {
        // SAFETY: an owned descriptor, open until the AsyncFd drops it.
        Ok(fd) => match unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) } {
            Ok(fd) => {
                let _ = fd.readable().await;
                return;
            }
            Err(e) => tracing::debug!(pid, error = %e, "pidfd not pollable; polling /proc"),
        },
        // No such process: already gone.
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return,
        Err(e) => tracing::debug!(pid, error = %e, "no pidfd; polling /proc"),
    }
    loop {
        let gone = tokio::task::spawn_blocking(move || super::driver::process_gone(pid))
            .await
            .unwrap_or(true);
        if gone {
            return;
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

fn pidfd(pid: u32) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open(2) with no flags; it returns a new descriptor we
    // own, or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a descriptor just returned to us, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Kind;
    use std::process::Command;
    use tokio::sync::mpsc;

    fn key(n: &str) -> ObjectKey {
        ObjectKey::new(Kind::Session, "default", n)
    }

    /// A real process's end is told once, promptly, without polling; a
    /// process already gone is told at once; a forgotten watch says
    /// nothing.
    #[tokio::test]
    async fn the_end_of_a_watched_process_is_told_once() {
        let exits = Exits::default();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut child = Command::new("sleep").arg("600").spawn().unwrap();
        let mut other = Command::new("sleep").arg("600").spawn().unwrap();
        let t = tx.clone();
        exits.watch(&key("a"), child.id(), move || t.send("a").unwrap());
        let t = tx.clone();
        exits.watch(&key("b"), other.id(), move || t.send("b").unwrap());
        // The same pid again: still one watch.
        let t = tx.clone();
        exits.watch(&key("a"), child.id(), move || t.send("a twice").unwrap());
        assert_eq!(exits.len(), 2);
        exits.forget(&key("b"));
        child.kill().unwrap();
        let told = tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .expect("told within the deadline");
        assert_eq!(told, Some("a"));
        child.wait().unwrap();
        other.kill().unwrap();
        other.wait().unwrap();
        // A pid that no longer runs: at once.
        let t = tx.clone();
        exits.watch(&key("c"), other.id(), move || t.send("c").unwrap());
        let told = tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .expect("told within the deadline");
        assert_eq!(told, Some("c"), "b was forgotten, a told once");
        drop(tx);
        drop(exits);
        assert_eq!(rx.recv().await, None);
    }
}

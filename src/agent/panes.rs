//! The last pane each terminal session showed with its agent alive. While
//! that same process runs (the process table says so: its pid with the
//! same start time, not a zombie), the pane is what the terminal would
//! say again, so a reconcile of an idle session asks `/proc` (one read)
//! instead of the terminal (a tmux process each time: most of an idle
//! pool's CPU). Whatever changes a terminal session (started, ended,
//! renamed) goes through the driver, which forgets what it knew of it, and
//! an answer asked of the terminal before such a change is not kept.

use super::terminal::Pane;
use std::collections::HashMap;
use std::sync::Mutex;

#[derive(Debug, Default)]
pub struct Panes {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Bumped by every change of a terminal session.
    epoch: u64,
    /// By terminal session name: its pane, and its process's start time.
    seen: HashMap<String, (Pane, u64)>,
}

impl Panes {
    /// The pane of `name`, while the process it showed still runs.
    pub fn get(&self, name: &str) -> Option<Pane> {
        let (pane, start) = self.inner.lock().expect("lock").seen.get(name).cloned()?;
        (process_start(pane.pid) == Some(start)).then_some(pane)
    }

    /// Taken before the terminal is asked; handed to [`Panes::remember`].
    pub fn epoch(&self) -> u64 {
        self.inner.lock().expect("lock").epoch
    }

    /// What the terminal said of `name`, asked at `epoch`: kept when no
    /// terminal session changed since, and its process runs.
    pub fn remember(&self, name: &str, pane: Option<&Pane>, epoch: u64) {
        let live = pane
            .filter(|p| !p.dead)
            .and_then(|p| Some((p.clone(), process_start(p.pid)?)));
        let mut inner = self.inner.lock().expect("lock");
        if inner.epoch != epoch {
            return;
        }
        match live {
            Some(entry) => inner.seen.insert(name.to_string(), entry),
            None => inner.seen.remove(name),
        };
    }

    /// Terminal sessions `names` change: what was known of them goes, and
    /// answers asked before are not kept. Called before and after the
    /// change.
    pub fn changed(&self, names: &[&str]) {
        let mut inner = self.inner.lock().expect("lock");
        inner.epoch += 1;
        for n in names {
            inner.seen.remove(*n);
        }
    }
}

/// The start time of running process `pid` (clock ticks after boot,
/// `/proc/PID/stat` field 22); None when it is gone or a zombie.
pub fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace();
    let state = fields.next()?;
    if state == "Z" || state == "X" {
        return None;
    }
    // After the state (field 3), field 22 is the 19th.
    fields.nth(18)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn pane(pid: u32, dead: bool) -> Pane {
        Pane {
            session: "s".into(),
            id: "%1".into(),
            pid,
            dead,
            exit_status: None,
        }
    }

    #[test]
    fn a_pane_is_known_while_its_process_runs_and_nothing_changed_it() {
        let mut child = Command::new("sleep").arg("60").spawn().unwrap();
        let pid = child.id();
        assert!(process_start(pid).is_some());
        let panes = Panes::default();
        let e = panes.epoch();
        panes.remember("s", Some(&pane(pid, false)), e);
        assert_eq!(panes.get("s"), Some(pane(pid, false)));
        assert_eq!(panes.get("other"), None);
        // A dead pane, or none, is not kept.
        panes.remember("s", Some(&pane(pid, true)), e);
        assert_eq!(panes.get("s"), None);
        panes.remember("s", Some(&pane(pid, false)), e);
        panes.remember("s", None, e);
        assert_eq!(panes.get("s"), None);
        // An answer asked before a change is not kept.
        panes.changed(&["x"]);
        panes.remember("s", Some(&pane(pid, false)), e);
        assert_eq!(panes.get("s"), None);
        let e = panes.epoch();
        panes.remember("s", Some(&pane(pid, false)), e);
        panes.changed(&["s"]);
        assert_eq!(panes.get("s"), None, "a change forgets it");
        // The process ends: no longer known.
        let e = panes.epoch();
        panes.remember("s", Some(&pane(pid, false)), e);
        child.kill().unwrap();
        // Killed and not yet reaped: a zombie, which is not running.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
            s.rsplit_once(')')
                .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
        }) {
            assert!(
                std::time::Instant::now() < deadline,
                "the child never became a zombie"
            );
            std::thread::yield_now();
        }
        assert_eq!(panes.get("s"), None, "a zombie");
        child.wait().unwrap();
        assert_eq!(panes.get("s"), None);
        assert_eq!(process_start(pid), None);
    }
}

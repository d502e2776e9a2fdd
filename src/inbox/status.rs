//! `WORKDIR/.agent-queue/status.json`, for tools that read it: each
//! session's state (`idle` or `working`, its phase, current task and
//! account), and `working` at the top when any session of the workdir is.
//!
//! The file holds every session of its workdir, so it is written in
//! batches: a session's new entry waits on the [`Board`], and [`keep`]
//! writes each workdir that has waiting entries once per
//! [`STATUS_FLUSH_EVERY`] (500 sessions of one workdir finishing tasks
//! rewrote the whole file for each of them).

use super::{queue_dir, queue_subdir, warn_once};
use crate::fsutil::write_atomic;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How often waiting entries are written (at most once per workdir).
pub const STATUS_FLUSH_EVERY: Duration = Duration::from_millis(500);

/// Entries waiting to be written: workdir (as the Session names it) ->
/// session -> entry.
#[derive(Default)]
pub struct Board {
    waiting: Mutex<HashMap<PathBuf, BTreeMap<String, Value>>>,
    posted: tokio::sync::Notify,
}

impl Board {
    /// Posts one session's state, written at the next flush.
    pub fn post(
        &self,
        workdir: PathBuf,
        session: &str,
        phase: &str,
        current_task: Option<&str>,
        account: Option<&str>,
    ) {
        let e = entry(phase, current_task, account);
        self.waiting
            .lock()
            .expect("status board lock")
            .entry(workdir)
            .or_default()
            .insert(session.to_string(), e);
        self.posted.notify_one();
    }

    /// Writes every waiting entry (blocking file I/O, no lock held while
    /// writing).
    pub fn flush(&self) {
        let waiting = std::mem::take(&mut *self.waiting.lock().expect("status board lock"));
        for (workdir, entries) in waiting {
            if let Ok(w) = std::fs::canonicalize(&workdir) {
                write(&w, entries);
            }
        }
    }
}

/// Writes the board's entries as they come, a batch per
/// [`STATUS_FLUSH_EVERY`], until aborted.
pub async fn keep(board: Arc<Board>) {
    loop {
        board.posted.notified().await;
        let b = board.clone();
        let _ = tokio::task::spawn_blocking(move || b.flush()).await;
        tokio::time::sleep(STATUS_FLUSH_EVERY).await;
    }
}

fn entry(phase: &str, current_task: Option<&str>, account: Option<&str>) -> Value {
    let working = current_task.is_some() || phase == "Busy";
    json!({
        "state": if working { "working" } else { "idle" },
        "phase": phase,
        "currentTask": current_task,
        "account": account,
    })
}

/// One writer of the file at a time in this process (it merges what
/// others wrote).
static STATUS_LOCK: Mutex<()> = Mutex::new(());

/// Merges `entries` (session -> entry) into the workdir's `status.json`;
/// written only when one of them changed.
fn write(workdir: &Path, entries: BTreeMap<String, Value>) {
    let _g = STATUS_LOCK.lock().expect("lock");
    let queue = match queue_subdir(workdir, ".agent-queue") {
        Ok(q) => q,
        Err(e) => {
            warn_once(
                &queue_dir(workdir),
                &format!("status.json not written: {e}"),
            );
            return;
        }
    };
    let path = queue.join("status.json");
    let mut doc: Value = std::fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .filter(Value::is_object)
        .unwrap_or_else(|| json!({}));
    if !doc.get("sessions").is_some_and(Value::is_object) {
        doc["sessions"] = json!({});
    }
    let mut changed = false;
    for (session, e) in entries {
        if doc["sessions"].get(&session) != Some(&e) {
            doc["sessions"][session] = e;
            changed = true;
        }
    }
    if !changed {
        return;
    }
    let any_working = doc["sessions"]
        .as_object()
        .is_some_and(|m| m.values().any(|v| v["state"] == "working"));
    doc["state"] = json!(if any_working { "working" } else { "idle" });
    doc["updatedAt"] = serde_json::to_value(crate::api::now()).expect("time");
    let _ = write_atomic(
        &path,
        &serde_json::to_vec_pretty(&doc).expect("JSON"),
        None,
        false,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_keeps_other_sessions_and_says_working_when_any_is() {
        let dir = tempfile::tempdir().unwrap();
        let board = Board::default();
        board.post(dir.path().into(), "a", "Busy", Some("t1"), Some("x"));
        board.post(dir.path().into(), "b", "Idle", None, Some("x"));
        board.flush();
        let read = || -> Value {
            let f = dir.path().join(".agent-queue/status.json");
            serde_json::from_slice(&std::fs::read(f).unwrap()).unwrap()
        };
        let doc = read();
        assert_eq!(doc["state"], "working");
        assert_eq!(doc["sessions"]["a"]["currentTask"], "t1");
        assert_eq!(doc["sessions"]["b"]["state"], "idle");
        // The latest post of a session wins; the others stay.
        board.post(dir.path().into(), "a", "Idle", Some("t1"), Some("x"));
        board.post(dir.path().into(), "a", "Idle", None, Some("x"));
        board.flush();
        let doc = read();
        assert_eq!(doc["state"], "idle");
        assert_eq!(doc["sessions"]["a"]["currentTask"], Value::Null);
        assert_eq!(doc["sessions"]["b"]["phase"], "Idle");
        let before = doc["updatedAt"].clone();
        // Nothing changed: not written again.
        board.post(dir.path().into(), "b", "Idle", None, Some("x"));
        board.flush();
        assert_eq!(read()["updatedAt"], before);
    }
}

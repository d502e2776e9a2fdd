//! `CLAUDE_CONFIG_DIR/sessions/<pid>.json`: Claude Code's live state file,
//! written atomically on every change and removed on exit.

use super::clock;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};

pub struct PidFile {
    path: PathBuf,
    base: Value,
    /// (status, waitingFor) last written.
    written: Option<(String, Option<String>)>,
}

impl PidFile {
    pub fn new(config_dir: &Path, session_id: &str, cwd: &Path) -> PidFile {
        let pid = std::process::id();
        PidFile {
            path: config_dir.join("sessions").join(format!("{pid}.json")),
            base: json!({
                "pid": pid,
                "sessionId": session_id,
                "cwd": cwd.to_string_lossy(),
                "startedAt": clock::now_ms(),
                "version": super::VERSION,
                "kind": "interactive",
                "entrypoint": "cli",
            }),
            written: None,
        }
    }

    #[cfg(test)]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records `status` (`idle`, `busy`, `waiting`) if it changed.
    pub fn set(&mut self, status: &str, waiting_for: Option<&str>) {
        let want = (status.to_string(), waiting_for.map(str::to_string));
        if self.written.as_ref() == Some(&want) {
            return;
        }
        let now = clock::now_ms();
        let mut v = self.base.clone();
        v["status"] = json!(status);
        v["updatedAt"] = json!(now);
        v["statusUpdatedAt"] = json!(now);
        if let Some(w) = waiting_for {
            v["waitingFor"] = json!(w);
        }
        if let Some(dir) = self.path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let data = serde_json::to_vec(&v).expect("JSON serializes");
        if crate::fsutil::write_atomic(&self.path, &data, None, false).is_ok() {
            self.written = Some(want);
        }
    }

    pub fn remove(&mut self) {
        if self.written.take().is_some() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_on_change_and_removed() {
        let d = tempfile::tempdir().unwrap();
        let mut p = PidFile::new(d.path(), "u", Path::new("/w"));
        p.set("idle", None);
        let read = || crate::agent::state::read_pid_file(d.path(), std::process::id()).unwrap();
        assert_eq!(read().status, "idle");
        assert_eq!(read().session_id.as_deref(), Some("u"));
        p.set("waiting", Some("usage limit"));
        assert_eq!(read().waiting_for.as_deref(), Some("usage limit"));
        p.set("idle", None);
        assert_eq!(read().waiting_for, None);
        p.remove();
        assert!(!p.path().exists());
    }
}

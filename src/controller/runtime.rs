//! The session controller's own durable memory of each agent, kept in the
//! state dir (never in the store: it holds the hook secret).
//!
//! `STATE/sessions/NS/NAME/runtime.json` (mode 0600) and, beside it, the
//! settings file passed to Claude Code with `--settings`.

use crate::api::ObjectKey;
use crate::fsutil::write_atomic;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Runtime {
    /// Authenticates this session's hook and statusLine posts.
    pub secret: String,
    /// Claude Code's conversation id, pinned with `--session-id`.
    pub agent_session_id: String,
    /// The account the agent was launched under (None: Claude Code's default config).
    pub account: Option<String>,
    /// Its config dir, as launched.
    pub config_dir: Option<PathBuf>,
    pub pane_id: Option<String>,
    pub pid: Option<u32>,
    /// Launches so far (0: never launched).
    pub launches: u32,
    /// Restarts after an exit or a lost tmux session.
    pub restarts: u32,
    /// Unix seconds of the latest launch.
    pub launched_at: u64,
    /// Current restart back-off, seconds.
    pub backoff_seconds: u64,
    /// Unix seconds before which no restart happens.
    pub next_start_at: u64,
    /// The latest restart request (the Session's restart annotation) a
    /// launch has answered.
    #[serde(default)]
    pub restart_handled: Option<String>,
    /// Why the latest launch failed or the agent exited at start
    /// (reason, message): a crash loop (see [`crate::agent::exit`]).
    #[serde(default)]
    pub crash: Option<(String, String)>,
}

pub fn dir(state_dir: &Path, key: &ObjectKey) -> PathBuf {
    state_dir
        .join("sessions")
        .join(&key.namespace)
        .join(&key.name)
}

pub fn settings_path(state_dir: &Path, key: &ObjectKey) -> PathBuf {
    dir(state_dir, key).join("settings.json")
}

/// `bytes` random bytes from the OS generator, as lower-case hex.
pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    // uuid's v4 source is the OS random generator.
    for chunk in buf.chunks_mut(16) {
        let u = uuid::Uuid::new_v4();
        let n = chunk.len();
        chunk.copy_from_slice(&u.as_bytes()[..n]);
    }
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

impl Runtime {
    /// Loads the record, or makes a new one (fresh secret and conversation id).
    pub fn load(state_dir: &Path, key: &ObjectKey) -> Runtime {
        std::fs::read(dir(state_dir, key).join("runtime.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<Runtime>(&b).ok())
            .filter(|r| !r.secret.is_empty() && !r.agent_session_id.is_empty())
            .unwrap_or_else(|| Runtime {
                secret: random_hex(24),
                agent_session_id: uuid::Uuid::new_v4().to_string(),
                ..Default::default()
            })
    }

    pub fn save(&self, state_dir: &Path, key: &ObjectKey) -> std::io::Result<()> {
        let d = dir(state_dir, key);
        std::fs::create_dir_all(&d)?;
        // Secrets inside: only the owner may look.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            state_dir.join("sessions"),
            std::fs::Permissions::from_mode(0o700),
        )?;
        let data = serde_json::to_vec_pretty(self).expect("runtime serializes");
        write_atomic(&d.join("runtime.json"), &data, Some(0o600), false)
    }

    /// Forgets the session (on delete). Transcripts live elsewhere and stay.
    pub fn remove(state_dir: &Path, key: &ObjectKey) -> std::io::Result<()> {
        match std::fs::remove_dir_all(dir(state_dir, key)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

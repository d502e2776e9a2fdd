//! Checkpoints: what a session was doing, kept in the state dir so a swap
//! (or a person) can pick up where it stopped.
//!
//! `STATE/checkpoints/NS/NAME.json`, written atomically by the session
//! controller when its agent said something new (hooks), and when what it
//! says changed otherwise at least every `checkpointSeconds` (an unchanged
//! one is not written again). The janitor removes those of sessions gone for a while.

use crate::agent::signals::AgentSignals;
use crate::api::ObjectKey;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Checkpoint {
    pub session: String,
    pub namespace: String,
    /// Claude Code's conversation id.
    pub agent_session_id: String,
    pub account: Option<String>,
    /// Where the agent runs (its own worktree when it has a workspace).
    pub workdir: String,
    pub current_task: Option<String>,
    pub last_prompt: Option<String>,
    /// Tool name and input of the latest tool call.
    pub last_tool: Option<(String, serde_json::Value)>,
    pub last_assistant_message: Option<String>,
    /// `error` of a turn that failed after the latest prompt (e.g.
    /// `rate_limit`): the turn was cut short.
    pub interrupted_by: Option<String>,
    /// Unix milliseconds.
    pub at: u64,
}

pub fn path(state_dir: &Path, key: &ObjectKey) -> PathBuf {
    state_dir
        .join("checkpoints")
        .join(&key.namespace)
        .join(format!("{}.json", key.name))
}

pub fn unix_ms(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Checkpoint {
    /// What the signals say, on top of the fields the caller fills.
    pub fn from_signals(mut self, sig: &AgentSignals) -> Checkpoint {
        let last_prompt_at = sig.prompts.last().map(|(_, at)| *at);
        self.last_prompt = sig.prompts.last().map(|(p, _)| p.clone());
        self.last_tool = sig.last_tool.clone();
        self.last_assistant_message = sig.last_stop.as_ref().map(|(m, _)| m.clone());
        self.interrupted_by = sig.last_failure.as_ref().and_then(|(e, _, at)| {
            let after_prompt = last_prompt_at.is_none_or(|p| *at >= p);
            let after_stop = sig.last_stop.as_ref().is_none_or(|(_, s)| at >= s);
            (after_prompt && after_stop).then(|| e.clone())
        });
        self
    }

    pub fn load(state_dir: &Path, key: &ObjectKey) -> Option<Checkpoint> {
        serde_json::from_slice(&std::fs::read(path(state_dir, key)).ok()?).ok()
    }

    pub fn save(&self, state_dir: &Path, key: &ObjectKey) -> std::io::Result<()> {
        let p = path(state_dir, key);
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d)?;
        }
        // Prompts and replies are the user's work: owner only.
        let data = serde_json::to_vec_pretty(self).expect("checkpoint serializes");
        crate::fsutil::write_atomic(&p, &data, Some(0o600), false)
    }
}

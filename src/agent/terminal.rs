//! The terminal an agent runs in, as the agent driver needs it: sessions
//! by exact name, their one pane, the screen, text and keys. tmux
//! implements it (`Tmux`, in `src/tmux.rs`).

use std::future::Future;
use std::path::Path;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum TerminalError {
    #[error("cannot run tmux: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("tmux {cmd} timed out after {timeout:?}")]
    Timeout { cmd: String, timeout: Duration },
    #[error("tmux {cmd} failed: {stderr}")]
    Failed { cmd: String, stderr: String },
}

pub type Result<T, E = TerminalError> = std::result::Result<T, E>;

/// One pane (the agent's), as the terminal reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pane {
    pub session: String,
    /// `%N`: stable for the pane's life; every command targets it.
    pub id: String,
    /// The agent's process id (the pane's first process).
    pub pid: u32,
    /// The agent has exited; the pane remains.
    pub dead: bool,
    /// Exit status of a dead pane.
    pub exit_status: Option<i32>,
}

/// How an agent's window is created.
#[derive(Debug, Clone)]
pub struct NewSession<'a> {
    pub name: &'a str,
    pub cwd: &'a Path,
    pub env: &'a [(String, String)],
    /// The program and its arguments (executed directly, no shell).
    pub argv: &'a [String],
    pub width: u16,
    pub height: u16,
}

/// The operations the agent driver uses. Every call is bounded in time.
pub trait Terminal: Send + Sync + 'static {
    /// Starts a detached session running `argv`; returns its pane.
    fn new_session(&self, s: &NewSession<'_>) -> impl Future<Output = Result<Pane>> + Send;
    /// The pane of session `name`; None when there is no such session.
    fn pane(&self, name: &str) -> impl Future<Output = Result<Option<Pane>>> + Send;
    /// Session `name`'s pane and its visible screen, in one call.
    fn pane_and_screen(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Option<(Pane, String)>>> + Send;
    /// Ends session `name`; absent is fine.
    fn kill_session(&self, name: &str) -> impl Future<Output = Result<()>> + Send;
    /// Renames session `from` to `to`; its pane and process stay.
    fn rename_session(&self, from: &str, to: &str) -> impl Future<Output = Result<()>> + Send;
    /// Types `text` into the pane without submitting it.
    fn send_text(&self, pane: &str, text: &str) -> impl Future<Output = Result<()>> + Send;
    /// Sends named keys (`Enter`, `Escape`, ...).
    fn send_keys(&self, pane: &str, keys: &[&str]) -> impl Future<Output = Result<()>> + Send;
    /// The visible screen; with `escapes`, with attributes.
    fn capture(&self, pane: &str, escapes: bool) -> impl Future<Output = Result<String>> + Send;
}

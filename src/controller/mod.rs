//! Controllers: each one reconciles one kind, driven by
//! `kube_runtime::applier` over the store's watch (see docs/daemon.md).

pub mod runtime;
pub mod session;
pub mod task;

use crate::daemon::signals::Signals;
use crate::store::Store;
use crate::tmux::Tmux;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Settings of the controllers.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Controller-owned state (runtime records, settings files).
    pub state_dir: PathBuf,
    /// The transcript folder every account's `projects/` points to.
    pub shared_projects: PathBuf,
    /// `http://127.0.0.1:PORT` of the daemon's agent endpoint.
    pub agent_base_url: String,
    /// This binary (the statusLine command).
    pub exe: PathBuf,
    /// Requeue period of a settled session.
    pub resync: Duration,
    /// Each step of a graceful stop (`/exit`, SIGTERM, SIGKILL) waits this long.
    pub stop_step: Duration,
    /// Longest restart back-off.
    pub max_backoff: Duration,
}

/// Everything a reconcile needs, shared by all of them.
pub struct Context {
    pub store: Store,
    pub tmux: Tmux,
    pub signals: Arc<Signals>,
    pub settings: Settings,
    pub memory: std::sync::Mutex<std::collections::HashMap<crate::api::ObjectKey, session::Memory>>,
}

/// Logs an event about an object and records it in the store (shown by
/// `describe`); one call, so the log line and the event never drift.
pub fn record(
    ctx: &Context,
    key: &crate::api::ObjectKey,
    warning: bool,
    reason: &str,
    message: &str,
    source: &str,
) {
    if warning {
        tracing::warn!(object = %key, reason, "{message}");
    } else {
        tracing::info!(object = %key, reason, "{message}");
    }
    if let Err(e) = ctx
        .store
        .record_event(key, warning, reason, message, source)
    {
        tracing::warn!(object = %key, error = %e, "cannot record an event");
    }
}

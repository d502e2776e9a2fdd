//! Controllers: each one reconciles one kind, driven by
//! `kube_runtime::applier` over the store's watch (see docs/daemon.md).

pub mod account;
pub mod checkpoint;
pub mod failover;
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
    /// A session's checkpoint is rewritten at least this often.
    pub checkpoint_every: Duration,
}

/// Everything a reconcile needs, shared by all of them.
pub struct Context {
    pub store: Store,
    pub tmux: Tmux,
    pub signals: Arc<Signals>,
    pub settings: Settings,
    pub memory: std::sync::Mutex<std::collections::HashMap<crate::api::ObjectKey, session::Memory>>,
    /// The agent process of each running session, for the liveness watch.
    pub pids: std::sync::Mutex<std::collections::HashMap<crate::api::ObjectKey, u32>>,
    /// Usage memory, failover wake-ups and the notifier.
    pub quota: account::Hub,
}

/// True when process `pid` has exited (gone, or a zombie nobody reaped).
pub fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state == "Z" || state == "X"),
    }
}

/// Watches the agents' processes (a cheap /proc read each, no process
/// spawned) and wakes the reconcile of any session whose agent died: tmux's
/// own notification does not always come (a pane whose process tmux never
/// reaps shows no death at all).
pub async fn liveness(ctx: std::sync::Arc<Context>, every: std::time::Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let dead: Vec<crate::api::ObjectKey> = ctx
            .pids
            .lock()
            .expect("lock")
            .iter()
            .filter(|(_, pid)| process_gone(**pid))
            .map(|(k, _)| k.clone())
            .collect();
        for key in dead {
            ctx.pids.lock().expect("lock").remove(&key);
            ctx.signals.poke(&key);
        }
    }
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

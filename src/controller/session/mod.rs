//! The session controller: keeps each Session's agent alive in tmux under
//! the right account.
//!
//! A reconcile observes (the Session and the Accounts from the caches, the
//! tmux pane, the agent's signals and state file), asks the pure
//! [`plan::plan`] what to do, executes the steps through the agent driver,
//! and writes its own status fields (docs/state.md) and conditions:
//! `AgentAlive` (the process runs) and `Ready` (at its prompt, idle or
//! working), reasons in CamelCase. It acts on the failover controller's
//! placement (`status.lastSwap`), which it never writes.

mod cut_turn;
mod execute;
mod observe;
pub mod peers;
pub mod plan;
mod private;
mod quiet;
pub mod report;
pub mod standby;
mod start;
mod status;
mod takeover;
pub mod usage;
mod workspace;

use super::Shared;
use crate::agent::screen::Screen;
use crate::agent::terminal::TerminalError;
use crate::api::{Account, ObjectKey, Session, SessionStatus};
use crate::store::StoreError;
use kube::runtime::controller::Action;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

pub use plan::{keep_account, pick_account};
pub use private::settings_path;

/// Source of this controller's events.
const SOURCE: &str = "session-controller";
/// Requeue after a failed reconcile.
const RETRY: Duration = Duration::from_secs(2);
/// How soon a session looks again when the store holds Accounts its cache
/// has not yet heard of.
const ACCOUNTS_LAG: Duration = Duration::from_millis(200);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Terminal(#[from] TerminalError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Per-session memory that need not survive a restart.
#[derive(Debug, Default, Clone)]
struct Memory {
    /// Screen debounce.
    last_screen: Option<(Screen, Instant)>,
    /// When the checkpoint was last written, at which signal count, and
    /// what it said (its time left out).
    checkpoint: Option<(u64, Instant, crate::controller::checkpoint::Checkpoint)>,
    /// The interruption a continue was typed for.
    continued: Option<SystemTime>,
    /// Why the latest launch failed, or the agent exited at start (reason,
    /// message): a crash loop (see [`crate::agent::exit`]).
    crash: Option<(String, String)>,
    /// The last full pass holds until a change or a deadline.
    quiet: Option<quiet::Quiet>,
    /// What this session's entry of `.agent-queue/status.json` was last
    /// written with (that file holds every session of the workdir: read,
    /// parsed and written again only when the entry changes).
    inbox_said: Option<InboxEntry>,
    /// The conversation whose `/resume` a standby's composer did not show
    /// as typed: its standbys wait without it (the move types it), rather
    /// than be started again and again.
    unprimable: Option<String>,
}

/// A session's entry of its workdir's `.agent-queue/status.json`: the
/// workdir, then phase, current task and account.
type InboxEntry = (std::path::PathBuf, String, Option<String>, Option<String>);

/// The session controller's dependencies and memory.
pub struct Context {
    pub shared: Arc<Shared>,
    memory: Mutex<HashMap<ObjectKey, Memory>>,
    /// The agent process of each running session, watched for its end
    /// (tmux's own notification does not always come).
    exits: crate::agent::exits::Exits,
    /// Where this controller posts the sessions' `.agent-queue/status.json`
    /// entries (written in batches by [`crate::inbox::status::keep`]).
    status_board: Arc<crate::inbox::status::Board>,
}

impl Context {
    pub fn new(shared: Arc<Shared>, status_board: Arc<crate::inbox::status::Board>) -> Context {
        Context {
            shared,
            memory: Mutex::default(),
            exits: Default::default(),
            status_board,
        }
    }

    /// Changes what is remembered of session `key`.
    fn remember<R>(&self, key: &ObjectKey, f: impl FnOnce(&mut Memory) -> R) -> R {
        f(self
            .memory
            .lock()
            .expect("lock")
            .entry(key.clone())
            .or_default())
    }

    /// Reads what is remembered of session `key` (nothing yet: the default).
    fn recall<R>(&self, key: &ObjectKey, f: impl FnOnce(&Memory) -> R) -> R {
        match self.memory.lock().expect("lock").get(key) {
            Some(m) => f(m),
            None => f(&Memory::default()),
        }
    }

    /// How long the session's last full pass still holds (None: a full
    /// pass is due); a full pass forgets the quiet it replaces.
    fn quiet_left(&self, key: &ObjectKey, print: &quiet::Fingerprint) -> Option<Duration> {
        let mut mem = self.memory.lock().expect("lock");
        let m = mem.get_mut(key)?;
        let left = quiet::left(m.quiet.as_ref(), print, Instant::now());
        if left.is_none() && m.quiet.take().is_some() {
            self.shared.metrics.sessions_quiet.dec();
        }
        left
    }

    /// The session is gone from this node (deleted, or run by another):
    /// its settled pass no longer holds.
    fn unquiet(&self, key: &ObjectKey) {
        let mut mem = self.memory.lock().expect("lock");
        if mem.get_mut(key).and_then(|m| m.quiet.take()).is_some() {
            self.shared.metrics.sessions_quiet.dec();
        }
    }

    /// After a full pass that read `print`: quiet for `hold`, or not.
    fn settle(&self, key: &ObjectKey, print: quiet::Fingerprint, hold: Option<Duration>) {
        let mut mem = self.memory.lock().expect("lock");
        let m = mem.entry(key.clone()).or_default();
        let was = m.quiet.is_some();
        m.quiet = hold.map(|h| quiet::Quiet {
            print,
            until: Instant::now() + quiet::spread(h),
        });
        match (was, m.quiet.is_some()) {
            (false, true) => self.shared.metrics.sessions_quiet.inc(),
            (true, false) => self.shared.metrics.sessions_quiet.dec(),
            _ => {}
        }
    }

    async fn record(&self, key: &ObjectKey, warning: bool, reason: &str, message: &str) {
        self.shared
            .record(key, warning, reason, message, SOURCE)
            .await;
    }
}

pub async fn reconcile(s: Arc<Session>, ctx: Arc<Context>) -> Result<Action, Error> {
    let key = ObjectKey::of(s.as_ref());
    let span = tracing::info_span!("reconcile", session = %key);
    let started = Instant::now();
    let r = tracing::Instrument::instrument(reconcile_inner(&ctx, &key), span).await;
    ctx.shared
        .metrics
        .observe_reconcile("session", started.elapsed().as_secs_f64(), r.is_err());
    r
}

async fn reconcile_inner(ctx: &Context, key: &ObjectKey) -> Result<Action, Error> {
    let sh = &ctx.shared;
    // The newest copy (the applier's may predate our own last write).
    let Some(s) = sh.caches.sessions.get(&key.namespace, &key.name) else {
        ctx.unquiet(key);
        return Ok(Action::await_change());
    };
    // Another node's (or not placed yet): its own daemon runs it.
    if !sh.runs(&s) {
        ctx.unquiet(key);
        return Ok(Action::await_change());
    }
    let owned = sh.caches.accounts_in(&key.namespace);
    let peers = match s.spec.standby_bound() {
        Some(_) => peers::print(&sh.caches.sessions.all(), &s),
        None => vec![],
    };
    let print = quiet::Fingerprint::of(&s, sh.signals.wakes(key), sh.caches.swap_epoch(), &owned)
        .with_peers(peers);
    if let Some(left) = ctx.quiet_left(key, &print) {
        return Ok(Action::requeue(left));
    }
    if owned.is_empty() && accounts_not_yet_heard_of(sh, &key.namespace).await {
        return Ok(Action::requeue(ACCOUNTS_LAG));
    }
    let accounts: Vec<&Account> = owned.iter().map(Arc::as_ref).collect();
    execute::hear(ctx, key).await;
    let mut st = s.status.clone().unwrap_or_default();
    let before = st.clone();
    let pane = sh.driver.pane(key).await?;
    let placement = plan::effective_placement(&s, sh.caches.swap_epoch())
        .filter(|p| {
            accounts
                .iter()
                .any(|a| a.metadata.name.as_ref() == Some(&p.to))
        })
        .cloned();
    let now = sh.now();
    execute::schedule_restart(ctx, &s, &mut st, pane.as_ref(), now);
    let (mut observed, sig) = execute::observe(ctx, key, &mut st, pane, &accounts, now).await?;
    let standby = takeover::observe(ctx, key, &mut st).await;
    observed.standby_ready = standby
        .as_ref()
        .filter(|b| b.alive && b.ready)
        .map(|b| b.account.clone());
    observed.takeover_overdue = standby::takeover_overdue(st.launch.as_ref(), now);
    let desired = execute::desired(&s, &st, &accounts, placement.as_ref(), &observed);
    let steps = plan::plan(&desired, &observed);
    let report = match execute::run(ctx, &s, &mut st, &desired, &observed, &accounts, steps).await?
    {
        execute::Outcome::Report(r) => r,
        execute::Outcome::Gone => return Ok(Action::await_change()),
    };
    let running_on = accounts
        .iter()
        .copied()
        .find(|a| st.account.is_some() && a.metadata.name == st.account);
    let mut report = report::overlay(report, placement.as_ref(), running_on);
    if observed.settling {
        report.requeue = report.requeue.min(report::SETTLING_LOOK);
    }
    cut_turn::continue_cut_turn(ctx, &s, &mut st, &observed, running_on).await?;
    takeover::prime(ctx, key, &mut st, standby.as_ref(), placement.as_ref()).await;
    let standby = standby.filter(|_| st.standby.is_some());
    takeover::keep(
        ctx,
        &s,
        &mut st,
        &accounts,
        placement.as_ref(),
        standby.as_ref(),
    )
    .await;
    let resync = sh.settings.resync;
    let awaits_prime = takeover::awaits_prime(ctx, key, &st);
    let settled = quiet::eligible(
        &report,
        resync,
        &st,
        &sig,
        standby.as_ref(),
        awaits_prime,
        now,
    );
    status::finish(ctx, &s, &before, st, &report, &sig).await?;
    ctx.settle(key, print, settled.then_some(resync * quiet::QUIET_RESYNCS));
    Ok(Action::requeue(report.requeue))
}

/// No Account in the cache means Claude Code's default config dir; but the
/// kinds are watched apart, so a pool applied to a running daemon may show
/// its Sessions before its Accounts. The store decides.
async fn accounts_not_yet_heard_of(sh: &Shared, namespace: &str) -> bool {
    let ns = namespace.to_string();
    sh.blocking(move |store| {
        store
            .list(crate::api::Kind::Account, Some(&ns))
            .is_ok_and(|l| !l.is_empty())
    })
    .await
}

/// Requeue after a failed reconcile (store or tmux trouble).
pub fn error_policy(s: Arc<Session>, e: &Error, _ctx: Arc<Context>) -> Action {
    // A store that does not answer is logged once, by the store, and tried
    // again after its backoff.
    if let Error::Store(s) = e
        && s.is_unavailable()
    {
        return Action::requeue(crate::store::UNAVAILABLE_BACKOFF);
    }
    tracing::warn!(session = s.metadata.name.as_deref().unwrap_or_default(), error = %e, "reconcile failed; retrying");
    Action::requeue(RETRY)
}

/// Registers the hook secret of every session's running agent (kept in the
/// state dir), so a daemon taking over hears the agents from its first
/// request on, before any reconcile has run.
pub async fn register_secrets(
    signals: &crate::agent::signals::Signals,
    state_dir: &std::path::Path,
    sessions: &[Arc<Session>],
) {
    let keys: Vec<ObjectKey> = sessions.iter().map(|s| ObjectKey::of(s.as_ref())).collect();
    let dir = state_dir.to_path_buf();
    let found = tokio::task::spawn_blocking(move || {
        keys.into_iter()
            .filter_map(|k| private::load_secret(&dir, &k).map(|s| (k, s)))
            .collect::<Vec<_>>()
    })
    .await
    .unwrap_or_default();
    for (k, secret) in found {
        signals.register(&k, &secret);
    }
}

/// The status fields this controller writes, for the caller's patch.
pub const OWNED: &[&str] = SessionStatus::SESSION_CONTROLLER;

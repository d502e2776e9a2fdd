//! The task dispatcher: Pending tasks go to free sessions, each exactly
//! once, and are followed to their end.
//!
//! Choosing which task goes to which session is one decision over all
//! tasks and sessions (priority order, one task per session), so this
//! controller is one level-triggered loop rather than a per-object
//! reconcile. Each pass reads the caches: in-flight tasks move along by
//! the pure [`advance::advance`], pending ones are paired with free
//! sessions by the pure [`assign`] and [`queue`] modules, and each
//! Session's `currentTask` is kept equal to the task in flight on it. The
//! [`queue::Queue`] is kept between passes and filed again only for the
//! tasks that changed, so a pass costs what changed and the sessions, not
//! the length of the queue. Passes run on changes of Tasks, Sessions or
//! Accounts, agent signals (a burst within [`COALESCE`]: one pass), and a
//! short tick while anything is in flight.
//!
//! Delivery is exactly once:
//! 1. the intent (phase Dispatched, attempt, a fresh marker, the agent's
//!    pid) is written to the store before anything is typed, together with
//!    the task's finalizer, against the task as the pass saw it;
//! 2. the prompt is typed with the marker at its end, in one terminal call;
//! 3. it is confirmed by the `UserPromptSubmit` hook carrying the marker, or
//!    after a daemon crash by the marker in the account's `history.jsonl`
//!    (Claude Code writes it at submit) or on screen in the composer (then
//!    only Enter is sent again, never the text). Text that provably never
//!    reached the agent is delivered again.

pub mod advance;
pub mod assign;
mod deliver;
mod execute;
mod follow;
mod placement;
pub mod queue;

use super::Shared;
use crate::agent::terminal::TerminalError;
use crate::api::ObjectKey;
use crate::api::Task;
use crate::store::StoreError;
use crate::store::cache::Changed;
use futures::{Stream, StreamExt};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

pub use assign::DispatchSettings;

/// How long the dispatcher holds its next pass after submitting a task.
/// The agent is then building its request (its hooks, its transcript, its
/// statusLine): passes woken meanwhile took the CPU from it and put 20 to
/// 40 ms between its Enter and its request (`cargo bench --bench
/// dispatch`). What arrives meanwhile waits for the pass after.
pub const AFTER_SUBMIT: Duration = Duration::from_millis(150);
/// Next pass while a task is in flight, without an event.
pub const IN_FLIGHT_TICK: Duration = Duration::from_millis(500);
/// Next pass when nothing is in flight, without an event.
pub const IDLE_TICK: Duration = Duration::from_secs(5);
/// Next pass right after assigning.
pub const AFTER_ASSIGN: Duration = Duration::from_millis(200);
/// Next pass after a failed one.
const RETRY: Duration = Duration::from_secs(1);
/// The shortest time between the starts of two passes: what wakes the
/// dispatcher within it (a burst of agent signals, of store changes) is
/// served by one pass at its end. A wake after a quiet spell is served at
/// once.
pub const COALESCE: Duration = Duration::from_millis(25);
/// Source of this controller's events.
const SOURCE: &str = "task-controller";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Terminal(#[from] TerminalError),
}

/// What the dispatcher remembers between passes (lost on restart, by
/// design: everything here can be re-derived or safely redone).
#[derive(Default)]
struct Memory {
    /// The model each agent (by pid) was last switched to, and when.
    models: HashMap<u32, (String, SystemTime)>,
    /// When Enter was last re-sent for a task.
    enter_sent: HashMap<ObjectKey, SystemTime>,
    /// When each running task was submitted, precisely (the status keeps
    /// whole seconds).
    started: HashMap<ObjectKey, SystemTime>,
    /// When each dispatched task's intent was written, precisely: the
    /// start of its dispatch latency.
    dispatched: HashMap<ObjectKey, SystemTime>,
    /// When each dispatched task's text was typed and submitted: on a
    /// loaded machine the typing itself can take seconds, and the wait for
    /// the agent's confirmation runs from here, not from the intent.
    typed: HashMap<ObjectKey, SystemTime>,
    /// When the last task was submitted (Enter).
    submitted: Option<tokio::time::Instant>,
    /// The tasks as the dispatcher files them (None: to be filed again
    /// from the cache, at the start and after a failed pass).
    queue: Option<queue::Queue>,
    /// The changes of the tasks' cache not yet filed.
    changes: Option<tokio::sync::broadcast::Receiver<Changed<Task>>>,
}

/// The dispatcher's dependencies.
pub struct Context {
    pub shared: Arc<Shared>,
    pub settings: DispatchSettings,
    /// Tasks this dispatcher wrote since it last filed them.
    touched: Mutex<Vec<queue::TaskKey>>,
}

impl Context {
    pub fn new(shared: Arc<Shared>, settings: DispatchSettings) -> Context {
        Context {
            shared,
            settings,
            touched: Mutex::default(),
        }
    }

    /// Records a write of a task: in the cache (read-your-writes) and for
    /// the queue's next filing.
    fn wrote(&self, t: Task) {
        self.touched.lock().expect("touched lock").push((
            t.metadata.namespace.clone().unwrap_or_default(),
            t.metadata.name.clone().unwrap_or_default(),
        ));
        self.shared.caches.tasks.wrote(t);
    }

    async fn record(&self, key: &ObjectKey, warning: bool, reason: &str, message: &str) {
        self.shared
            .record(key, warning, reason, message, SOURCE)
            .await;
    }
}

/// Runs passes until the process ends, woken by `wake` (changes of the
/// objects it reads), the agents' signals and the inbox folders.
pub async fn run(ctx: Arc<Context>, wake: impl Stream<Item = ()> + Send + 'static) {
    let mut memory = Memory::default();
    let inbox_changed = Arc::new(tokio::sync::Notify::new());
    let mut inboxes = crate::inbox::InboxWatcher::new(inbox_changed.clone());
    let mut wake = Box::pin(wake);
    let mut pace = super::Pace::new(COALESCE);
    loop {
        // One pass for a burst (every wake within COALESCE of the last).
        pace.before_pass(&mut wake).await;
        let inbox_waiting = import_inboxes(&ctx, &mut inboxes).await;
        let started = std::time::Instant::now();
        let result = execute::pass(&ctx, &mut memory).await;
        ctx.shared.metrics.observe_reconcile(
            "task",
            started.elapsed().as_secs_f64(),
            result.is_err(),
        );
        let mut next = match result {
            Ok(next) => next,
            Err(e) => {
                let unavailable = matches!(&e, Error::Store(s) if s.is_unavailable());
                super::failed_pass("task dispatch", &e, unavailable, RETRY).await
            }
        };
        if inbox_waiting {
            next = next.min(crate::inbox::YOUNG);
        }
        // Right after a submission, leave the agent the CPU (AFTER_SUBMIT);
        // wakes meanwhile are kept, and the next pass runs at once after.
        if let Some(at) = memory.submitted.take() {
            tokio::time::sleep_until(at + AFTER_SUBMIT).await;
        }
        let signals = ctx.shared.signals.clone();
        tokio::select! {
            _ = signals.changed().notified() => {}
            _ = wake.next() => {}
            _ = inbox_changed.notified() => {}
            _ = tokio::time::sleep(next) => {}
        }
    }
}

/// Inbox files become Tasks first (and new inboxes get watched). True
/// when a fresh file should be read again shortly.
async fn import_inboxes(ctx: &Context, inboxes: &mut Option<crate::inbox::InboxWatcher>) -> bool {
    // The cache's own copies: a pass (several a minute) cloned them all.
    let mut sessions = ctx.shared.caches.sessions.all();
    sessions.retain(|s| ctx.shared.runs(s));
    let mut watcher = inboxes.take();
    let (watcher, waiting) = ctx
        .shared
        .blocking(move |store| {
            if let Some(w) = watcher.as_mut() {
                w.sync(&sessions);
            }
            (watcher, crate::inbox::import(store, &sessions).waiting)
        })
        .await;
    *inboxes = watcher;
    waiting
}

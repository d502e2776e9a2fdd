//! The failover controller: moves the sessions off an account that is near
//! its limit, exhausted, failing authentication or being drained, one swap
//! at a time (see docs/failover.md and docs/state.md).
//!
//! Who owns what:
//! - the account controller decides each account's phase;
//! - this controller decides *where* a session runs: it writes the
//!   session's placement (`status.lastSwap`) under the swap lease, with the
//!   lease's fencing epoch, and follows the swap to its end (confirmed, or
//!   rolled back), all recorded in the swap's `Swap` object;
//! - the session controller executes: it reads the placement, checks the
//!   target, stops the agent and relaunches it there with `--resume`, and
//!   reports the launch and its confirmation in its own status fields;
//! - the task dispatcher replays an interrupted task (`status.replayOn`).
//!
//! A pass is observe (the caches) → [`plan::plan`] (pure) → execute (store
//! writes, events, notices). It never waits: each wait of a swap is a step
//! with a deadline in its `Swap`, and the next pass comes with the next
//! change or at the nearest deadline.

mod execute;
pub mod failback;
pub mod plan;
pub mod target;
#[cfg(test)]
mod tests;

use super::Shared;
use crate::api::{Kind, ObjectKey};
use futures::{Stream, StreamExt};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use plan::{FailoverSettings, TARGET_PENALTY};

/// The next pass runs at most this long after the last without an event
/// (a missed change is caught then).
const SAFETY: Duration = Duration::from_secs(30);
/// After a failed pass.
const RETRY: Duration = Duration::from_secs(1);
/// A deadline is acted on this long after it passes (clocks and rounding).
const LATE: Duration = Duration::from_millis(50);
/// Passes that wrote something run again at once (what they wrote may let
/// the swap go further), this many in a row; then they pause this long,
/// so a decision that keeps writing can never spin.
const AT_ONCE: u32 = 8;
const PAUSE: Duration = Duration::from_millis(200);
/// The shortest time between two passes on Session writes: those within
/// it wait for its end. A change of an Account, a Swap or the lease is
/// served at once (an account past its limit starts a swap without delay),
/// and so are Session writes while a swap runs and a follow-up on a
/// pass's own writes.
const COALESCE: Duration = Duration::from_millis(100);

/// The failover controller's dependencies.
pub struct Context {
    pub shared: Arc<Shared>,
    pub settings: FailoverSettings,
    /// This daemon, as the swap lease names its holder.
    pub me: String,
}

/// Runs until the process ends, woken by `sessions` (changes of Sessions:
/// paced, see [`COALESCE`]) and `urgent` (changes of Accounts, Swaps and
/// Leases: served at once).
pub async fn run(
    ctx: Arc<Context>,
    sessions: impl Stream<Item = ()> + Send + 'static,
    urgent: impl Stream<Item = ()> + Send + 'static,
) {
    let (mut sessions, mut urgent) = (Box::pin(sessions), Box::pin(urgent));
    let mut in_a_row = 0;
    let mut at_once = false;
    let mut pace = super::Pace::new(COALESCE);
    loop {
        if in_a_row == 0 && !at_once {
            pace.before_pass_or(&mut sessions, &mut urgent).await;
        } else {
            pace.started();
        }
        let started = Instant::now();
        let result = pass(&ctx).await;
        let acted = matches!(result, Ok(d) if d.is_zero());
        in_a_row = if acted { in_a_row + 1 } else { 0 };
        let result = result.map(|d| if in_a_row > AT_ONCE { PAUSE } else { d });
        ctx.shared.metrics.observe_reconcile(
            "failover",
            started.elapsed().as_secs_f64(),
            result.is_err(),
        );
        let next = match result {
            Ok(next) => next,
            Err(e) => super::failed_pass("failover", &e, e.is_unavailable(), RETRY).await,
        };
        at_once = tokio::select! {
            _ = urgent.next() => {
                super::drain(&mut urgent);
                super::drain(&mut sessions);
                true
            }
            // While a swap runs, its sessions' writes move it on.
            _ = sessions.next() => swap_running(&ctx),
            _ = tokio::time::sleep(next) => true,
        };
    }
}

/// A Swap is running (not finished, as its status says).
fn swap_running(ctx: &Context) -> bool {
    ctx.shared
        .caches
        .swaps
        .all()
        .iter()
        .any(|w| w.status.as_ref().is_none_or(|st| !st.phase.finished()))
}

/// One pass: how soon the next is due without an event.
async fn pass(ctx: &Context) -> Result<Duration, crate::store::StoreError> {
    let sh = &ctx.shared;
    let c = &sh.caches;
    let (accounts, sessions, swaps) = (c.accounts.all(), c.sessions.all(), c.swaps.all());
    let lease = c
        .leases
        .get(crate::api::SYSTEM_NAMESPACE, crate::api::SWAP_LEASE)
        .map(|l| plan::LeaseView {
            holder: l.spec.holder_identity.clone(),
            epoch: l.spec.epoch,
        })
        .unwrap_or_default();
    let world = plan::World {
        me: &ctx.me,
        now: sh.now(),
        lease,
        accounts: accounts.iter().map(Arc::as_ref).collect(),
        sessions: sessions.iter().map(Arc::as_ref).collect(),
        swaps: swaps.iter().map(Arc::as_ref).collect(),
        tasks_on: tasks_on(ctx, &sessions),
        models: models(ctx, &sessions),
    };
    let actions = plan::plan(&world, &ctx.settings);
    let wait = plan::next_deadline(&world)
        .and_then(|t| t.duration_since(world.now).ok())
        .map(|d| d + LATE)
        .unwrap_or(SAFETY)
        .min(SAFETY);
    let acted = !actions.is_empty();
    execute::run(ctx, actions).await?;
    // Something was written: look again at once (the caches carry it).
    Ok(if acted { Duration::ZERO } else { wait })
}

/// The task in flight on each session.
fn tasks_on(
    ctx: &Context,
    sessions: &[Arc<crate::api::Session>],
) -> HashMap<(String, String), String> {
    sessions
        .iter()
        .filter_map(|s| {
            let key = ObjectKey::of(s.as_ref());
            let task = task_on(ctx, &key)?;
            Some(((key.namespace, key.name), task))
        })
        .collect()
}

/// The task in flight on session `key` (looked up in the tasks' in-flight
/// index, not by a scan of every task).
fn task_on(ctx: &Context, key: &ObjectKey) -> Option<String> {
    use crate::api::TaskPhase;
    let index = crate::store::cache::index_key(&key.namespace, &key.name);
    let task = ctx
        .shared
        .caches
        .tasks
        .indexed(super::BY_SESSION, &index)
        .into_iter()
        .find(|t| {
            t.status.as_ref().is_some_and(|st| {
                matches!(st.phase, Some(TaskPhase::Dispatched | TaskPhase::Running))
                    && st.session.as_deref() == Some(key.name.as_str())
            })
        })?;
    task.metadata.name.clone()
}

/// The model each session's agent says it runs (`model.id` of its
/// statusLine input), lower-case.
fn models(ctx: &Context, sessions: &[Arc<crate::api::Session>]) -> target::Models {
    sessions
        .iter()
        .filter_map(|s| {
            let key = ObjectKey::of(s.as_ref());
            let id = ctx.shared.signals.read(&key, |sig| {
                let (input, _) = sig.statusline.as_ref()?;
                Some(input.pointer("/model/id")?.as_str()?.to_ascii_lowercase())
            })?;
            Some(((key.namespace, key.name), id))
        })
        .collect()
}

/// The key of the swap lease.
pub fn lease_key() -> ObjectKey {
    ObjectKey::new(
        Kind::Lease,
        crate::api::SYSTEM_NAMESPACE,
        crate::api::SWAP_LEASE,
    )
}

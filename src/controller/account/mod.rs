//! The account controller: fuses each account's usage signals into one
//! reading per window and sets its phase (see docs/failover.md).
//!
//! Signals:
//! - what each live session's agent said, as its node's session
//!   controller wrote it in the Session (`status.usage`, on whichever
//!   node it runs): its statusLine's `rate_limits` (subscription mode),
//!   the `StopFailure` hook with `error: rate_limit` (a hard limit, with
//!   the reset its transcript gives) or `authentication_failed`;
//! - the budgeted poll of the usage endpoint (see [`crate::quota::poll`]);
//! - the token ledger of the account's transcripts (the projection).
//!
//! A pass: per account, take in the signals ([`memory`]), decide
//! ([`decide`], pure), write its own status fields (docs/state.md), and
//! tell phase changes as events and notices. The failover controller and
//! the sessions react to the written phase through their caches.

pub mod decide;
mod login;
pub mod memory;
mod poll;

use super::{BY_ACCOUNT, Shared};
use crate::api::{Account, AccountPhase, AccountStatus, ObjectKey, Session};
use crate::notify::{Notice, NoticeKind};
use crate::store::cache::index_key;
use futures::{Stream, StreamExt};
use memory::Memory;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

pub use decide::QuotaSettings;

/// Source of this controller's events.
const SOURCE: &str = "account-controller";
/// The next pass runs at most this long after the last without an event.
const SAFETY: Duration = Duration::from_secs(30);
/// After a failed pass.
const RETRY: Duration = Duration::from_secs(2);
/// A reset or expiry is acted on this long after it comes.
const LATE: Duration = Duration::from_millis(50);
/// Passes never come closer than this without an event.
const FLOOR: Duration = Duration::from_millis(100);
/// The shortest time between two passes: wakes within it wait for its end.
const COALESCE: Duration = Duration::from_millis(100);
/// How often the transcripts are read for the projection, at most.
const LEDGER_EVERY: Duration = Duration::from_secs(30);

/// The account controller's dependencies and memory.
pub struct Context {
    pub shared: Arc<Shared>,
    pub settings: QuotaSettings,
    memory: Mutex<HashMap<ObjectKey, Memory>>,
    /// A usage poll finished: its readings wait to be taken in.
    polled: tokio::sync::Notify,
}

impl Context {
    pub fn new(shared: Arc<Shared>, settings: QuotaSettings) -> Context {
        Context {
            shared,
            settings,
            memory: Mutex::default(),
            polled: tokio::sync::Notify::new(),
        }
    }

    async fn record(&self, key: &ObjectKey, warning: bool, reason: &str, message: &str) {
        self.shared
            .record(key, warning, reason, message, SOURCE)
            .await;
    }
}

/// Runs until the process ends, woken by `wake` (Account and Session
/// changes: the agents' usage news comes as a Session's `status.usage`)
/// and finished polls.
pub async fn run(ctx: Arc<Context>, wake: impl Stream<Item = ()> + Send + 'static) {
    let mut wake = Box::pin(wake);
    let mut pace = super::Pace::new(COALESCE);
    loop {
        pace.before_pass(&mut wake).await;
        let started = std::time::Instant::now();
        let result = pass(&ctx).await;
        ctx.shared.metrics.observe_reconcile(
            "account",
            started.elapsed().as_secs_f64(),
            result.is_err(),
        );
        let next = match result {
            Ok(next) => next,
            Err(e) => super::failed_pass("account", &e, e.is_unavailable(), RETRY).await,
        };
        tokio::select! {
            _ = ctx.polled.notified() => {}
            _ = wake.next() => super::drain(&mut wake),
            _ = tokio::time::sleep(next) => {}
        }
    }
}

/// One pass over every account; returns when the next is due without an
/// event (a reset time, a reading ageing out, a poll).
async fn pass(ctx: &Arc<Context>) -> Result<Duration, crate::store::StoreError> {
    let now = ctx.shared.now();
    let mut next = SAFETY;
    for a in ctx.shared.caches.accounts.all() {
        if let Some(d) = account(ctx, &a, now).await? {
            next = next.min(d);
        }
    }
    Ok(next.max(FLOOR))
}

/// The live sessions on an account.
fn live_on(ctx: &Context, ns: &str, name: &str) -> Vec<Arc<Session>> {
    ctx.shared
        .caches
        .sessions
        .indexed(BY_ACCOUNT, &index_key(ns, name))
        .into_iter()
        .filter(|s| s.status.as_ref().is_some_and(|st| st.pid.is_some()))
        .collect()
}

/// One account's pass: when it wants the next one.
async fn account(
    ctx: &Arc<Context>,
    a: &Account,
    now: SystemTime,
) -> Result<Option<Duration>, crate::store::StoreError> {
    let key = ObjectKey::of(a);
    let before = a.status.clone().unwrap_or_default();
    let live = live_on(ctx, &key.namespace, &key.name);
    let (inputs, wants_poll, models_only, ledger_due) = {
        let mut all = ctx.memory.lock().expect("lock");
        let m = all
            .entry(key.clone())
            .or_insert_with(|| Memory::from_status(&before));
        for s in &live {
            if let Some(u) = s.status.as_ref().and_then(|st| st.usage.as_ref()) {
                m.absorb(&key.name, &ObjectKey::of(s.as_ref()), u);
            }
        }
        let inputs = decide::inputs(m, a, &ctx.settings, now);
        // Every account is polled on its budget: only the endpoint tells
        // the per-model windows. With live sessions (and a limit whose end
        // is known) the statusLine tells the others.
        let wants_poll = !m.polling && !a.spec.suspend;
        let models_only =
            !live.is_empty() && inputs.limit.as_ref().is_none_or(|l| l.resets_at.is_some());
        let ledger_due = m.ledger.is_none_or(|(at, _)| at.elapsed() >= LEDGER_EVERY);
        (inputs, wants_poll, models_only, ledger_due)
    };
    let poll_in = if wants_poll {
        poll::maybe_start(ctx, &key, a, now, models_only).await
    } else {
        None
    };
    let threshold = f64::from(a.spec.thresholds.five_hour);
    let projection = if ledger_due {
        let p = ledger_projection(ctx, &live, threshold, inputs.five_hour.clone(), now)
            .await
            .or_else(|| {
                ctx.memory
                    .lock()
                    .expect("lock")
                    .get(&key)?
                    .projection(threshold)
            });
        if let Some(m) = ctx.memory.lock().expect("lock").get_mut(&key) {
            m.ledger = Some((std::time::Instant::now(), p));
        }
        p
    } else {
        ctx.memory
            .lock()
            .expect("lock")
            .get(&key)
            .and_then(|m| m.ledger.and_then(|(_, p)| p))
    };
    let verdict = match login::unavailable(ctx, a).await {
        Some(v) => v,
        None => crate::quota::phase(&inputs, now),
    };
    let status = decide::status(a, &inputs, &verdict, projection, live.len() as u32, now);
    if decide::worth_writing(&before, &status, now) {
        write(ctx, &key, &status).await?;
    }
    let previous = before.phase.unwrap_or_default();
    if verdict.phase != previous || before.phase.is_none() {
        announce(ctx, &key, previous, &verdict, before.phase.is_none()).await;
    }
    let wake = decide::wake_at(&inputs, &ctx.settings)
        .and_then(|t| t.duration_since(now).ok())
        .map(|d| d + LATE);
    Ok([wake, poll_in].into_iter().flatten().min())
}

async fn write(
    ctx: &Context,
    key: &ObjectKey,
    status: &AccountStatus,
) -> Result<(), crate::store::StoreError> {
    let (k, s) = (key.clone(), status.clone());
    let written = ctx
        .shared
        .blocking(move |store| {
            store
                .api::<Account>(Some(&k.namespace))
                .patch_status_fields(
                    &k.name,
                    &s,
                    AccountStatus::ACCOUNT_CONTROLLER,
                    crate::store::Durability::Now,
                )
        })
        .await;
    match written {
        Ok(obj) => ctx.shared.caches.accounts.wrote(obj),
        Err(crate::store::StoreError::NotFound(_)) => {}
        Err(e) => return Err(e),
    }
    Ok(())
}

/// When the 5-hour window reaches `threshold` at the burn rate of the
/// account's transcripts (tokens of its live sessions since they came to
/// it, the last 30 minutes), scaled by the utilization the current block
/// shows. None without a reading or a burn.
async fn ledger_projection(
    ctx: &Context,
    live: &[Arc<Session>],
    threshold: f64,
    five_hour: Option<crate::quota::Reading>,
    now: SystemTime,
) -> Option<SystemTime> {
    let reading = five_hour?;
    let shared = ctx.shared.settings.shared_projects.clone();
    let conversations: Vec<(String, SystemTime)> = live
        .iter()
        .filter_map(|s| {
            let st = s.status.as_ref()?;
            let since = st.launch.as_ref().map(|l| SystemTime::from(l.at.0))?;
            Some((st.agent_session_id.clone()?, since))
        })
        .collect();
    ctx.shared
        .blocking(move |_| {
            use crate::quota::ledger;
            let mut entries = Vec::new();
            for (id, since) in conversations {
                if let Some(path) = crate::agent::seed::transcript(&shared, &id) {
                    entries.extend(ledger::read_entries(&path, since));
                }
            }
            entries.sort_by_key(|e| e.at);
            let block = ledger::blocks(&entries).into_iter().last()?;
            let rate = ledger::burn_rate(&entries, now, Duration::from_secs(1800));
            let at =
                ledger::projected_time_to(threshold, reading.utilization, block.tokens, rate, now)?;
            match reading.resets_at {
                Some(r) if at >= r => None,
                _ => Some(at),
            }
        })
        .await
}

/// Events and notifications of a phase change.
async fn announce(
    ctx: &Context,
    key: &ObjectKey,
    previous: AccountPhase,
    v: &crate::quota::Verdict,
    first: bool,
) {
    let object = key.to_string();
    let bad = |p: AccountPhase| {
        matches!(
            p,
            AccountPhase::NearLimit | AccountPhase::Exhausted | AccountPhase::Unavailable
        )
    };
    let notify = |kind, message: String| {
        ctx.shared.notifier.send(Notice {
            kind,
            object: object.clone(),
            message,
        })
    };
    match v.phase {
        AccountPhase::Available if first => ctx.record(key, false, "Available", &v.message).await,
        AccountPhase::Available => {
            let msg = format!("available again: {}", v.message);
            ctx.record(key, false, "Recovered", &msg).await;
            if bad(previous) {
                notify(
                    NoticeKind::AccountRecovered,
                    format!("available again ({})", v.message),
                );
            }
        }
        AccountPhase::NearLimit => ctx.record(key, true, "NearLimit", &v.message).await,
        AccountPhase::Exhausted => {
            ctx.record(key, true, "Exhausted", &v.message).await;
            notify(NoticeKind::AccountExhausted, v.message.clone());
        }
        AccountPhase::Unavailable => {
            ctx.record(key, true, "Unavailable", &v.message).await;
            notify(
                NoticeKind::SessionDegraded,
                format!("account unavailable: {}", v.message),
            );
        }
        AccountPhase::Suspended => ctx.record(key, false, "Suspended", &v.message).await,
    }
}

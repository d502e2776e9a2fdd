//! Carries out the failover controller's actions: store writes (the swap
//! lease and its Swap in one transaction, placements, notes), events,
//! notices and counts.

use super::Context;
use super::plan::{Action, Seen, reason_label};
use crate::api::{
    Account, AccountStatus, Lease, LeaseSpec, ObjectKey, Session, SessionStatus, Swap, SwapStatus,
};
use crate::notify::Notice;
use crate::store::{Durability, StoreError};
use serde_json::json;

/// Source of this controller's events.
const SOURCE: &str = "failover-controller";

/// Carries out `actions` in order; stops at the first failed write (the
/// next pass decides again from what is there).
pub async fn run(ctx: &Context, actions: Vec<Action>) -> Result<(), StoreError> {
    for a in actions {
        match a {
            Action::Start(swap) => start(ctx, *swap).await?,
            Action::Update {
                namespace,
                name,
                state,
            } => {
                let key = ObjectKey::new(crate::api::Kind::Swap, &namespace, &name);
                let v = serde_json::to_value(&state).expect("state serializes");
                let obj = ctx
                    .shared
                    .blocking(move |store| store.write_status(&key, &v, None))
                    .await?;
                ctx.shared.caches.swaps.wrote(decode(obj)?);
            }
            Action::Release => release(ctx).await?,
            Action::Place {
                session,
                placement,
                first,
            } => {
                if !place(ctx, session, placement, first).await? {
                    // The world moved under the plan: the next pass
                    // decides again from what is there.
                    return Ok(());
                }
            }
            Action::Note { account, failover } => note(ctx, account, failover).await?,
            Action::Event {
                key,
                warning,
                reason,
                message,
            } => {
                ctx.shared
                    .record(&key, warning, reason, &message, SOURCE)
                    .await
            }
            Action::Notify {
                kind,
                object,
                message,
            } => ctx.shared.notifier.send(Notice {
                kind,
                object,
                message,
            }),
            Action::Count {
                reason,
                result,
                seconds,
            } => {
                let m = &ctx.shared.metrics;
                m.failovers_total
                    .with_label_values(&[reason_label(&reason), result])
                    .inc();
                if let Some(s) = seconds {
                    m.swap_duration_seconds.observe(s);
                }
            }
        }
    }
    Ok(())
}

fn decode<K: serde::de::DeserializeOwned>(v: serde_json::Value) -> Result<K, StoreError> {
    serde_json::from_value(v).map_err(|e| StoreError::Corrupt {
        path: "(written object)".into(),
        message: e.to_string(),
    })
}

/// The lease object as it should be written, over `current` (None: new).
fn lease_doc(current: Option<&Lease>, spec: LeaseSpec) -> serde_json::Value {
    let mut meta =
        json!({"name": crate::api::SWAP_LEASE, "namespace": crate::api::SYSTEM_NAMESPACE});
    if let Some(rv) = current.and_then(|l| l.metadata.resource_version.clone()) {
        // A precondition: the lease as this pass saw it, or nothing.
        meta["resourceVersion"] = json!(rv);
    }
    json!({
        "apiVersion": crate::api::API_VERSION,
        "kind": "Lease",
        "metadata": meta,
        "spec": spec,
    })
}

/// Takes the swap lease at the swap's epoch and creates the swap, in one
/// store transaction; then writes the swap's first state.
async fn start(ctx: &Context, swap: Swap) -> Result<(), StoreError> {
    let sh = &ctx.shared;
    let current = sh
        .caches
        .leases
        .get(crate::api::SYSTEM_NAMESPACE, crate::api::SWAP_LEASE);
    let now = crate::api::micro_now();
    let changed_hands = current
        .as_ref()
        .is_some_and(|l| l.spec.holder_identity.as_deref() != Some(ctx.me.as_str()));
    let spec = LeaseSpec {
        holder_identity: Some(ctx.me.clone()),
        epoch: swap.spec.epoch,
        acquire_time: Some(now.clone()),
        renew_time: Some(now),
        lease_duration_seconds: None,
        lease_transitions: current.as_ref().map_or(0, |l| l.spec.lease_transitions)
            + u32::from(changed_hands),
    };
    let lease = lease_doc(current.as_deref(), spec);
    let swap_doc = serde_json::to_value(&swap).expect("swap serializes");
    let written = sh
        .blocking(move |store| store.apply_with_status(&[lease, swap_doc]))
        .await?;
    let mut written = written.into_iter();
    if let Some(l) = written.next() {
        sh.caches.leases.wrote(decode(l)?);
    }
    if let Some(s) = written.next() {
        sh.caches.swaps.wrote(decode(s)?);
    }
    sh.metrics.swap_lease_epoch.set(swap.spec.epoch as i64);
    tracing::info!(epoch = swap.spec.epoch, from = %swap.spec.from, to = %swap.spec.to, reason = %swap.spec.reason, "swap lease taken");
    Ok(())
}

/// Frees the swap lease (whoever holds it: only a leader writes it, and
/// this daemon leads); its epoch stays.
async fn release(ctx: &Context) -> Result<(), StoreError> {
    let sh = &ctx.shared;
    let Some(current) = sh
        .caches
        .leases
        .get(crate::api::SYSTEM_NAMESPACE, crate::api::SWAP_LEASE)
    else {
        return Ok(());
    };
    let spec = LeaseSpec {
        holder_identity: None,
        renew_time: Some(crate::api::micro_now()),
        ..current.spec.clone()
    };
    let doc = lease_doc(Some(&current), spec);
    let obj = sh.blocking(move |store| store.apply(&doc, false)).await?.1;
    sh.caches.leases.wrote(decode(obj)?);
    Ok(())
}

/// Writes a placement. A session's first placement in a swap is written
/// under its keyboard, after one more look at what is in flight on it: a
/// task the dispatcher typed after the plan looked (it holds the keyboard
/// from its last look at the session to the end of its typing, and its
/// intent is in the tasks' cache before it lets go) would be cut by the
/// move and typed again; then nothing is written (false) and the next pass
/// waits for that turn. A task dispatched after this write sees the
/// placement, or the swap, and goes elsewhere.
///
/// A first placement is visible and atomic at once, durable within
/// [`crate::store::LAZY_FLUSH`] (`Durability::Soon`): a swap places all
/// its sessions in a row, and an fsync each (16 ms apiece, 0.13 s for
/// eight) held back the first takeover. What a power loss takes is found
/// again: the Swap, written durably when it started, still lists the
/// session, and the recovery of an interrupted swap places it again
/// (`plan::recover`). Every later one (done, rolled back, re-stamped by a
/// recovery) is durable at once: the swap's end, written durably after
/// it, must never be on disk without it (a session left "swapping" under
/// a finished swap would take no work).
async fn place(
    ctx: &Context,
    session: ObjectKey,
    placement: SwapStatus,
    first: Option<Seen>,
) -> Result<bool, StoreError> {
    let durability = match first {
        Some(_) => Durability::Soon,
        None => Durability::Now,
    };
    let _keyboard = match &first {
        Some(_) => Some(ctx.shared.driver.keyboard(&session).await),
        None => None,
    };
    if let Some(seen) = first {
        let now = super::task_on(ctx, &session);
        if now.is_some() && now != seen.task {
            tracing::info!(session = %session, task = now.as_deref().unwrap_or_default(), "a task reached the session as the swap placed it: its turn ends first");
            return Ok(false);
        }
    }
    let status = SessionStatus {
        last_swap: Some(placement),
        ..Default::default()
    };
    let written = ctx
        .shared
        .blocking(move |store| {
            store
                .api::<Session>(Some(&session.namespace))
                .patch_status_fields(
                    &session.name,
                    &status,
                    SessionStatus::FAILOVER_CONTROLLER,
                    durability,
                )
        })
        .await;
    match written {
        Ok(obj) => ctx.shared.caches.sessions.wrote(obj),
        Err(StoreError::NotFound(_)) => {}
        Err(e) => return Err(e),
    }
    Ok(true)
}

async fn note(
    ctx: &Context,
    account: ObjectKey,
    failover: Option<crate::api::AccountFailover>,
) -> Result<(), StoreError> {
    let status = AccountStatus {
        failover,
        ..Default::default()
    };
    let written = ctx
        .shared
        .blocking(move |store| {
            store
                .api::<Account>(Some(&account.namespace))
                .patch_status_fields(
                    &account.name,
                    &status,
                    AccountStatus::FAILOVER_CONTROLLER,
                    Durability::Now,
                )
        })
        .await;
    match written {
        Ok(obj) => ctx.shared.caches.accounts.wrote(obj),
        Err(StoreError::NotFound(_)) => {}
        Err(e) => return Err(e),
    }
    Ok(())
}

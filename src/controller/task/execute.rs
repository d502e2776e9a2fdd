//! The dispatcher's pass over the caches: the queue filed, in-flight tasks
//! handed to [`super::follow`], pending ones to free sessions and typed by
//! [`super::deliver`], which node moves which task along.

use super::assign::{self, Candidate, finished, in_flight, phase};
use super::deliver::{deliver_some, model_drained};
use super::follow::{progress, release, requeue, stop_task, write};
use super::placement::{self, Place};
use super::queue::{Answer, Queue, TaskKey, needs_moving};
use super::{AFTER_ASSIGN, Context, Error, IDLE_TICK, IN_FLIGHT_TICK, Memory};
use crate::api::keys::CANCEL;
use crate::api::{Account, Kind, ObjectKey, Session, SessionStatus, Task, TaskPhase, Time};
use crate::store::cache::Changed;
use crate::store::{Durability, StoreError};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::broadcast::error::TryRecvError;

pub(super) fn time(t: SystemTime) -> Time {
    Time(crate::quota::jiff_of(t))
}

pub(super) fn system(t: &Time) -> SystemTime {
    SystemTime::from(t.0)
}

pub(super) fn session_key(ns: &str, name: &str) -> ObjectKey {
    ObjectKey::new(Kind::Session, ns, name)
}

/// Files what changed among the tasks since the last filing: the cache's
/// changes and this dispatcher's own writes (everything again at the
/// start, after a lag and after a failed pass).
fn sync(ctx: &Context, mem: &mut Memory) {
    let cache = &ctx.shared.caches.tasks;
    let rx = mem.changes.get_or_insert_with(|| cache.subscribe());
    let mut dirty: HashSet<TaskKey> =
        std::mem::take(&mut *ctx.touched.lock().expect("touched lock"))
            .into_iter()
            .collect();
    let mut again = mem.queue.is_none();
    loop {
        match rx.try_recv() {
            Ok(Changed::Lagged) | Err(TryRecvError::Lagged(_)) => again = true,
            Ok(c) => {
                if let Some(o) = c.object() {
                    dirty.insert(task_key(o));
                }
            }
            Err(TryRecvError::Empty | TryRecvError::Closed) => break,
        }
    }
    if again {
        mem.queue = Some(Queue::of(&cache.all()));
        return;
    }
    let q = mem.queue.as_mut().expect("filed above");
    for k in dirty {
        match cache.get(&k.0, &k.1) {
            Some(t) => q.upsert(&t),
            None => q.remove(&k),
        }
    }
}

fn task_key(t: &Task) -> TaskKey {
    (
        t.metadata.namespace.clone().unwrap_or_default(),
        t.metadata.name.clone().unwrap_or_default(),
    )
}

fn queue(mem: &Memory) -> &Queue {
    mem.queue
        .as_ref()
        .expect("the queue is filed at the start of a pass")
}

/// One pass; returns how soon the next one should run without an event.
pub async fn pass(ctx: &Context, mem: &mut Memory) -> Result<Duration, Error> {
    sync(ctx, mem);
    let result = steps(ctx, mem).await;
    if result.is_err() {
        // What the queue was told may not have been written: file again.
        mem.queue = None;
    }
    result
}

async fn steps(ctx: &Context, mem: &mut Memory) -> Result<Duration, Error> {
    let tasks = &ctx.shared.caches.tasks;
    mem.dispatched.retain(|k, _| {
        tasks
            .get(&k.namespace, &k.name)
            .is_some_and(|t| phase(&t) == TaskPhase::Dispatched)
    });
    let mut any_in_flight = false;
    // 1. Move in-flight and cancelled/deleted tasks along.
    for (ns, name) in queue(mem).active() {
        let Some(t) = tasks.get(&ns, &name) else {
            continue;
        };
        if !ours(ctx, &t) {
            continue;
        }
        let p = phase(&t);
        let deleting = t.metadata.deletion_timestamp.is_some();
        let cancel = t
            .metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key(CANCEL));
        if (deleting || cancel) && !finished(p) {
            stop_task(ctx, &t, deleting).await?;
        } else if in_flight(p) {
            any_in_flight = true;
            match session_node(ctx, &t).filter(|n| *n != ctx.shared.settings.node) {
                Some(lost) => on_lost_node(ctx, &t, &lost).await?,
                None => progress(ctx, mem, &t).await?,
            }
        } else if needs_moving(&t) {
            release(ctx, &t).await?;
        }
    }
    sync(ctx, mem);
    // 2. What each session is doing, as the tasks say.
    current_tasks(ctx, queue(mem)).await?;
    // 3. Pending tasks to free sessions.
    let assigned = assign_pending(ctx, mem).await?;
    Ok(if assigned {
        AFTER_ASSIGN
    } else if any_in_flight {
        IN_FLIGHT_TICK
    } else {
        cooldown_wake(ctx, queue(mem))
            .unwrap_or(IDLE_TICK)
            .min(IDLE_TICK)
    })
}

/// Whether this daemon moves task `t` along: one on a Session this node
/// runs is its node's; one on no Session (pending), or on one gone, is the
/// leader's.
fn ours(ctx: &Context, t: &Task) -> bool {
    let sh = &ctx.shared;
    match session_node(ctx, t) {
        Some(n) if n == sh.settings.node => true,
        Some(n) => sh.leads() && sh.caches.node_lost(&n),
        None => sh.leads(),
    }
}

/// The node of the Session task `t` is on (None: on none, or on one gone
/// or not placed).
fn session_node(ctx: &Context, t: &Task) -> Option<String> {
    let ns = t.metadata.namespace.as_deref().unwrap_or_default();
    let name = t.status.as_ref()?.session.as_deref()?;
    let s = ctx.shared.caches.sessions.get(ns, name)?;
    s.node().map(str::to_string)
}

/// A task in flight on a lost node (the leader's): one never confirmed
/// there goes back to the queue (the attempt does not count); one
/// confirmed running there stays, for its node to finish when it
/// returns, unless its spec allows another attempt (`maxAttempts`).
async fn on_lost_node(ctx: &Context, t: &Task, node: &str) -> Result<(), Error> {
    let st = t.status.clone().unwrap_or_default();
    let attempts = st.attempts.unwrap_or(1);
    if !ctx
        .shared
        .caches
        .dispatched_before_loss(node, st.dispatched_at.as_ref())
    {
        return Ok(()); // dispatched by the node since it came back
    }
    match placement::on_lost_node(phase(t), attempts, t.spec.max_attempts, node) {
        Some((why, rewind)) => requeue(ctx, t, &why, rewind, None).await,
        None => Ok(()),
    }
}

/// Keeps each Session's `currentTask` equal to the task in flight on it
/// (the Sessions this node runs).
async fn current_tasks(ctx: &Context, q: &Queue) -> Result<(), Error> {
    for s in ctx.shared.caches.sessions.all() {
        if !ctx.shared.runs(&s) {
            continue;
        }
        let key = ObjectKey::of(s.as_ref());
        let want = q
            .in_flight_on(&key.namespace, &key.name)
            .map(str::to_string);
        let have = s.status.as_ref().and_then(|st| st.current_task.clone());
        if want == have {
            continue;
        }
        let status = SessionStatus {
            current_task: want,
            ..Default::default()
        };
        let written = ctx
            .shared
            .blocking(move |store| {
                store
                    .api::<Session>(Some(&key.namespace))
                    .patch_status_fields(
                        &key.name,
                        &status,
                        SessionStatus::TASK_CONTROLLER,
                        Durability::Soon,
                    )
            })
            .await;
        match written {
            Ok(obj) => ctx.shared.caches.sessions.wrote(obj),
            Err(StoreError::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// When a session's cooldown ends (it ends without an event).
fn cooldown_wake(ctx: &Context, q: &Queue) -> Option<Duration> {
    if ctx.settings.cooldown.is_zero() {
        return None;
    }
    let now = ctx.shared.now();
    q.last_finished_all()
        .filter_map(|t| (t + ctx.settings.cooldown).duration_since(now).ok())
        .filter(|d| !d.is_zero())
        .min()
}

pub(super) fn account_of<'a>(accounts: &'a [Arc<Account>], s: &Session) -> Option<&'a Account> {
    let name = s.status.as_ref()?.account.as_deref()?;
    accounts
        .iter()
        .find(|a| {
            a.metadata.name.as_deref() == Some(name) && a.metadata.namespace == s.metadata.namespace
        })
        .map(Arc::as_ref)
}

/// Whether a running swap has yet to move session `ns/name` (see
/// [`crate::api::Swap::moving`]).
fn moving(swaps: &[Arc<crate::api::Swap>], ns: &str, name: &str) -> bool {
    swaps
        .iter()
        .any(|w| w.metadata.namespace.as_deref() == Some(ns) && w.moving(name))
}

/// Whether session `skey`'s agent is about to go, as the caches say once
/// its keyboard is held: a restart or a delete written while the pass
/// waited for it (a pool's rollout writes under the keyboard), or a swap
/// that began meanwhile (the failover places a session under its keyboard,
/// after looking once more for a task typed into it).
pub(super) fn about_to_go(sh: &crate::controller::Shared, skey: &ObjectKey) -> bool {
    if !sh.node_fresh() {
        tracing::warn!(session = %skey, "this node's heartbeat is stale (the daemon was stopped or cut off): typing nothing until it beats again");
        return true;
    }
    let fresh = sh.caches.sessions.get(&skey.namespace, &skey.name);
    fresh.is_none_or(|f| {
        f.metadata.deletion_timestamp.is_some()
            || f.spec.suspend
            || f.restart_pending()
            || f.status
                .as_ref()
                .and_then(|st| st.last_swap.as_ref())
                .is_some_and(|p| p.swapping())
    }) || moving(&sh.caches.swaps.all(), &skey.namespace, &skey.name)
}

/// Pairs pending tasks with free sessions and delivers. True when any was.
async fn assign_pending(ctx: &Context, mem: &mut Memory) -> Result<bool, Error> {
    let sh = &ctx.shared;
    let sessions = sh.caches.sessions.all();
    let accounts = sh.caches.accounts.all();
    let now = sh.now();
    if sh.leads() {
        clear_lost_replays(ctx, queue(mem), &sessions).await?;
    }
    sync(ctx, mem);
    let q = queue(mem);
    if q.pending() == 0 {
        return Ok(false);
    }
    let swaps = sh.caches.swaps.all();
    let candidates: Vec<Candidate> = sessions
        .iter()
        .map(|s| {
            let ns = s.metadata.namespace.clone().unwrap_or_default();
            let name = s.metadata.name.clone().unwrap_or_default();
            let busy = q.in_flight_on(&ns, &name).is_some() || moving(&swaps, &ns, &name);
            let last = q.last_finished(&ns, &name);
            let account = account_of(&accounts, s);
            let free = assign::session_free(
                s,
                account,
                &ctx.settings.policy,
                busy,
                last,
                now,
                ctx.settings.cooldown,
            ) && sh.runs(s)
                && !account.is_some_and(|a| model_drained(ctx, s, a));
            Candidate {
                namespace: ns,
                name,
                labels: s.metadata.labels.clone().unwrap_or_default(),
                workdir: assign::norm(&crate::workspace::agent_dir(s).to_string_lossy()),
                worktrees_in: s
                    .spec
                    .workspace
                    .as_ref()
                    .map(|_| assign::norm(&s.spec.workdir)),
                free,
                capped: account
                    .map(|a| {
                        crate::controller::failover::target::drained_windows(
                            a,
                            &ctx.settings.policy,
                        )
                    })
                    .unwrap_or_default(),
                workspace: s.spec.workspace.is_some(),
            }
        })
        .collect();
    let pairs = q.assign(&candidates);
    // Every pair is placed, delivered in this pass or a later one.
    let delivering: HashSet<TaskKey> = pairs.iter().map(|(k, _)| k.clone()).collect();
    deliver_some(ctx, mem, &pairs, &sessions, &accounts).await?;
    let nodes = sh.caches.nodes.all();
    let places: Vec<Place> = sessions
        .iter()
        .zip(candidates)
        .map(|(s, candidate)| Place {
            blocked: session_blocked(s, &accounts, &nodes),
            candidate,
        })
        .collect();
    sync(ctx, mem);
    if !sh.leads() {
        // What no session may take is the leader's to say (one writer).
        return Ok(!pairs.is_empty());
    }
    let tell = mem
        .queue
        .as_mut()
        .expect("filed above")
        .to_tell(&places, &delivering);
    tell_unplaceable(ctx, tell).await?;
    Ok(!pairs.is_empty())
}

/// Why a session cannot take work for a while, if it cannot.
fn session_blocked(
    s: &Session,
    accounts: &[Arc<Account>],
    nodes: &[Arc<crate::api::Node>],
) -> Option<String> {
    if s.metadata.deletion_timestamp.is_some() {
        return Some("being deleted".into());
    }
    if s.spec.suspend {
        return Some("suspended".into());
    }
    let Some(node) = s.node() else {
        return Some("not placed on a node yet".into());
    };
    let ready = nodes
        .iter()
        .any(|n| n.metadata.name.as_deref() == Some(node) && n.ready());
    if !ready {
        return Some(format!("its node {node} is not Ready"));
    }
    account_of(accounts, s).and_then(placement::account_blocked)
}

/// Writes the `Scheduled` condition of the pending tasks that cannot be
/// placed (and takes it off those that now can), as the queue answers
/// for each.
async fn tell_unplaceable(ctx: &Context, tell: Vec<(TaskKey, Answer)>) -> Result<(), Error> {
    for ((ns, name), why) in tell {
        let Some(t) = ctx.shared.caches.tasks.get(&ns, &name) else {
            continue;
        };
        if phase(&t) != TaskPhase::Pending || !placement::needs_write(&t, why.as_ref()) {
            continue;
        }
        let mut st = t.status.clone().unwrap_or_default();
        st.phase = Some(TaskPhase::Pending);
        match why {
            Some((reason, message)) => {
                crate::api::set_condition(
                    &mut st.conditions,
                    placement::SCHEDULED,
                    false,
                    reason,
                    &message,
                    t.metadata.generation,
                    crate::api::now(),
                );
            }
            None => st.conditions.retain(|c| c.type_ != placement::SCHEDULED),
        }
        write(ctx, &t, st, Durability::Soon).await?;
    }
    Ok(())
}

/// A replay whose session is gone (or going) may run anywhere.
async fn clear_lost_replays(
    ctx: &Context,
    q: &Queue,
    sessions: &[Arc<Session>],
) -> Result<(), Error> {
    for (ns, name) in q.replays() {
        let Some(t) = ctx.shared.caches.tasks.get(&ns, &name) else {
            continue;
        };
        let Some(name) = t.status.as_ref().and_then(|s| s.replay_on.clone()) else {
            continue;
        };
        let home = sessions.iter().any(|s| {
            s.metadata.name.as_ref() == Some(&name)
                && s.metadata.namespace == t.metadata.namespace
                && s.metadata.deletion_timestamp.is_none()
                && !s.spec.suspend
        });
        if phase(&t) == TaskPhase::Pending && !home {
            let mut st = t.status.clone().unwrap_or_default();
            st.replay_on = None;
            write(ctx, &t, st, Durability::Now).await?;
        }
    }
    Ok(())
}

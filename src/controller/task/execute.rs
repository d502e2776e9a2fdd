//! The dispatcher's side effects: a pass over the caches, the typing, the
//! looks [`advance`] asks for, and the task writes.

use super::advance::{self, Composer, Look, Observation, SessionView, Step};
use super::assign::{self, Candidate, finished, in_flight, phase};
use super::placement::{self, Place};
use super::queue::{Answer, Queue, TaskKey, needs_moving};
use super::{AFTER_ASSIGN, Context, Error, IDLE_TICK, IN_FLIGHT_TICK, Memory};
use crate::agent::driver::in_history;
use crate::api::keys::{CANCEL, INBOX_FILE, TASK_FINALIZER};
use crate::api::{
    Account, Kind, ObjectKey, Session, SessionStatus, Task, TaskPhase, TaskStatus, Time,
};
use crate::store::cache::Changed;
use crate::store::{Durability, StoreError};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::broadcast::error::TryRecvError;

/// How long the composer may take to be empty before a task is typed.
const COMPOSER_READY: Duration = Duration::from_secs(2);
/// How long a `/model` switch may take to be taken.
const MODEL_TAKEN: Duration = Duration::from_secs(3);

fn time(t: SystemTime) -> Time {
    Time(crate::quota::jiff_of(t))
}

fn system(t: &Time) -> SystemTime {
    SystemTime::from(t.0)
}

fn session_key(ns: &str, name: &str) -> ObjectKey {
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

fn account_of<'a>(accounts: &'a [Arc<Account>], s: &Session) -> Option<&'a Account> {
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
fn about_to_go(sh: &crate::controller::Shared, skey: &ObjectKey) -> bool {
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
    let mut delivering = HashSet::new();
    for (key, si) in &pairs {
        delivering.insert(key.clone());
        let Some(t) = sh.caches.tasks.get(&key.0, &key.1) else {
            continue;
        };
        deliver(ctx, mem, &t, &sessions[*si], &accounts).await?;
    }
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

/// Puts the session's worktree on the fresh branch `branch` the task asks
/// for (before anything is typed, holding the keyboard). False when it
/// cannot be now: the task's `Scheduled` condition says why, and the task
/// waits (a worktree with uncommitted changes is never switched).
async fn take_branch(ctx: &Context, t: &Task, s: &Session, branch: &str) -> Result<bool, Error> {
    use crate::workspace::Branched;
    let Some(w) = s.spec.workspace.clone() else {
        return Ok(false);
    };
    let session = s.metadata.name.clone().unwrap_or_default();
    let dir = crate::workspace::agent_dir(s);
    let (d, base, b) = (dir.clone(), w.git.base.clone(), branch.to_string());
    let r = ctx
        .shared
        .blocking(move |_| crate::workspace::fresh_branch(&d, &base, &b))
        .await;
    let why = match r {
        Ok(Branched::Created) => {
            let message = format!(
                "branch {branch} made from {} in the worktree {} of session {session}",
                w.git.base,
                dir.display()
            );
            ctx.record(&ObjectKey::of(t), false, "BranchCreated", &message)
                .await;
            return Ok(true);
        }
        Ok(Branched::AlreadyOn | Branched::CheckedOut) => return Ok(true),
        Ok(Branched::NotClean(what)) => (
            placement::WORKSPACE_NOT_CLEAN,
            format!(
                "the worktree {} of session {session} has {what}: the fresh branch {branch} is made from {} only in a clean worktree (commit or stash them)",
                dir.display(),
                w.git.base
            ),
        ),
        Err(e) => (
            placement::WORKSPACE_ERROR,
            format!("session {session}: cannot make the branch {branch}: {e}"),
        ),
    };
    if placement::needs_write(t, Some(&why)) {
        let mut st = t.status.clone().unwrap_or_default();
        st.phase = Some(TaskPhase::Pending);
        crate::api::set_condition(
            &mut st.conditions,
            placement::SCHEDULED,
            false,
            why.0,
            &why.1,
            t.metadata.generation,
            crate::api::now(),
        );
        write(ctx, t, st, Durability::Soon).await?;
    }
    Ok(false)
}

/// The config dir the agent of `s` runs with.
fn config_dir(s: &Session, accounts: &[Arc<Account>]) -> PathBuf {
    account_of(accounts, s)
        .map(|a| crate::fsutil::expand_home(&a.spec.config_dir))
        .unwrap_or_else(|| crate::fsutil::home().join(".claude"))
}

/// The model the agent says it runs (statusLine input), lower-case.
/// Whether `s`'s model has reached its weekly window on `a`, which drains
/// it: its sessions of that model take no new task (they are moving).
fn model_drained(ctx: &Context, s: &Session, a: &Account) -> bool {
    let model = running_model(ctx, &ObjectKey::of(s)).or_else(|| s.spec.agent.model.clone());
    crate::controller::failover::target::model_drained(a, model.as_deref(), &ctx.settings.policy)
}

fn running_model(ctx: &Context, session: &ObjectKey) -> Option<String> {
    let (input, _) = ctx.shared.signals.get(session).statusline?;
    let id = input
        .pointer("/model/id")
        .and_then(serde_json::Value::as_str)?;
    Some(id.to_ascii_lowercase())
}

async fn deliver(
    ctx: &Context,
    mem: &mut Memory,
    t: &Task,
    s: &Session,
    accounts: &[Arc<Account>],
) -> Result<(), Error> {
    let sh = &ctx.shared;
    let key = ObjectKey::of(t);
    let skey = ObjectKey::of(s);
    let Some(pid) = s.status.as_ref().and_then(|x| x.pid) else {
        return Ok(());
    };
    // Held until the task is typed: a stop's `/exit` waits for it, and a
    // stop that came first has left no pane to type into.
    let _keyboard = sh.driver.keyboard(&skey).await;
    if about_to_go(sh, &skey) {
        return Ok(());
    }
    // Still pending, as this copy says? Another node's dispatcher may have
    // taken it since this pass filed it (the intent below is written
    // against this copy: a later change fails it).
    let Some(t) = sh.caches.tasks.get(&key.namespace, &key.name) else {
        return Ok(());
    };
    let t = t.as_ref();
    if phase(t) != TaskPhase::Pending || t.metadata.deletion_timestamp.is_some() {
        return Ok(());
    }
    let Some((pane, screen)) = sh.driver.pane_and_screen(&skey).await? else {
        return Ok(());
    };
    if pane.dead || pane.pid != pid {
        return Ok(()); // the session controller will catch up first
    }
    // The session's status may lag behind the agent: its own state file,
    // read now, must agree that it is idle (text typed into a busy agent
    // would be queued, not submitted).
    let dir = config_dir(s, accounts);
    let d = dir.clone();
    if let Some(pidf) = sh
        .blocking(move |_| crate::agent::state::read_pid_file(&d, pid))
        .await
        && pidf.status != "idle"
    {
        return Ok(());
    }
    if !composer_ready(ctx, &pane, &screen, &skey).await? {
        return Ok(());
    }
    let model = assign::model_for(t, &ctx.settings);
    if !switch_model(ctx, mem, &key, &skey, s, &pane, model.as_deref()).await? {
        return Ok(());
    }
    let branch = t.spec.fresh_branch(&skey.name, &key.name);
    if let Some(b) = &branch
        && !take_branch(ctx, t, s, b).await?
    {
        return Ok(());
    }
    let marker = format!("{:08x}", uuid::Uuid::new_v4().as_u128() as u32);
    let mut status = t.status.clone().unwrap_or_default();
    status.phase = Some(TaskPhase::Dispatched);
    status.session = Some(skey.name.clone());
    status.branch = branch;
    status.session_pid = Some(pid);
    status.attempts = Some(status.attempts.unwrap_or(0) + 1);
    status.marker = Some(marker.clone());
    status.model = model.clone();
    status.dispatched_at = Some(crate::api::now());
    status.started_at = None;
    status.finished_at = None;
    status.message = None;
    let replay = status.replay_on.take().is_some();
    status.observed_generation = t.metadata.generation;
    crate::api::set_condition(
        &mut status.conditions,
        placement::SCHEDULED,
        true,
        placement::DISPATCHED,
        &format!("dispatched to session {}", skey.name),
        t.metadata.generation,
        crate::api::now(),
    );
    // The intent, durable before anything is typed, with the finalizer (a
    // delete from now on waits for us), in one write: the task as this
    // pass saw it, or nothing.
    let mut next = t.clone();
    next.status = Some(status.clone());
    let written = sh
        .blocking(move |store| {
            store
                .api::<Task>(next.metadata.namespace.as_deref())
                .add_finalizer_with_status(&next, TASK_FINALIZER)
        })
        .await;
    match written {
        Ok(Some(obj)) => ctx.wrote(obj),
        Ok(None) | Err(StoreError::Conflict { .. }) | Err(StoreError::NotFound(_)) => {
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    }
    mem.dispatched.insert(key.clone(), SystemTime::now());
    if !sh.node_fresh() {
        // Stopped between the intent and the keys: the leader may have
        // sent the task elsewhere meanwhile. Nothing typed: the intent is
        // followed like any other (redelivered here only if still ours).
        return Ok(());
    }
    // The prompt and its marker in ONE terminal call (a crash leaves all
    // of it in the composer or none of it), then Enter.
    let text = format!(
        "{}{}",
        t.spec.prompt.trim_end(),
        assign::marker_text(&marker)
    );
    sh.driver.type_then_enter(&pane, &text).await?;
    mem.submitted = Some(tokio::time::Instant::now());
    mem.typed.insert(key.clone(), SystemTime::now());
    if let Some(file) = inbox_file(t) {
        let (name, m) = (key.name.clone(), marker.clone());
        sh.blocking(move |_| crate::inbox::mark_dispatched(Path::new(&file), &name, &m))
            .await;
    }
    let message = format!(
        "{} session {} (attempt {}{})",
        if replay { "replayed in" } else { "typed into" },
        skey.name,
        status.attempts.unwrap_or(1),
        model.map(|m| format!(", model {m}")).unwrap_or_default()
    );
    ctx.record(&key, false, "Dispatched", &message).await;
    Ok(())
}

fn inbox_file(t: &Task) -> Option<String> {
    t.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(INBOX_FILE))
        .cloned()
}

/// The composer must be on screen and empty: text typed into anything
/// else (a dialog, a half-typed line, a UI still starting) goes astray.
async fn composer_ready(
    ctx: &Context,
    pane: &crate::agent::terminal::Pane,
    screen: &str,
    skey: &ObjectKey,
) -> Result<bool, Error> {
    let d = &ctx.shared.driver;
    let empty = crate::agent::screen::composer_text(screen).is_some_and(|t| t.is_empty());
    if empty || d.wait_composer_empty(pane, COMPOSER_READY).await? {
        return Ok(true);
    }
    // A `/model` switch typed by a daemon that died before its Enter:
    // finish it. Anything else there is someone's typing: leave it.
    let leftover = d.composer(pane).await?.unwrap_or_default();
    if leftover.starts_with("/model ") && !leftover.contains('\n') {
        d.enter(pane).await?;
    } else if !leftover.is_empty() {
        tracing::debug!(session = %skey, "composer not empty: not typing a task into it");
    }
    Ok(false)
}

/// Switches the agent to `model` when it runs another one (the
/// statusLine feed says which; else what it was launched or last switched
/// with). A local command: nothing reaches the API, nothing to deliver
/// once. False when the agent did not take it.
#[allow(clippy::too_many_arguments)]
async fn switch_model(
    ctx: &Context,
    mem: &mut Memory,
    key: &ObjectKey,
    skey: &ObjectKey,
    s: &Session,
    pane: &crate::agent::terminal::Pane,
    model: Option<&str>,
) -> Result<bool, Error> {
    let Some(m) = model else { return Ok(true) };
    let d = &ctx.shared.driver;
    let running = running_model(ctx, skey)
        .or_else(|| mem.models.get(&pane.pid).cloned())
        .or_else(|| s.spec.agent.model.clone());
    if running.as_deref().is_some_and(|r| r.contains(m)) {
        return Ok(true);
    }
    d.type_then_enter(pane, &format!("/model {m}")).await?;
    // Taken when the composer is empty again; an Enter the UI missed is
    // sent once more.
    let mut taken = d.wait_composer_empty(pane, MODEL_TAKEN).await?;
    if !taken {
        d.enter(pane).await?;
        taken = d.wait_composer_empty(pane, MODEL_TAKEN).await?;
    }
    if !taken {
        let why = format!(
            "session {} did not take `/model {m}`; will try again",
            skey.name
        );
        ctx.record(key, true, "ModelSwitchFailed", &why).await;
        return Ok(false);
    }
    mem.models.insert(pane.pid, m.to_string());
    Ok(true)
}

/// Moves one in-flight task along.
async fn progress(ctx: &Context, mem: &mut Memory, t: &Task) -> Result<(), Error> {
    let sh = &ctx.shared;
    let key = ObjectKey::of(t);
    let status = t.status.clone().unwrap_or_default();
    let ns = key.namespace.clone();
    let sess = status
        .session
        .as_deref()
        .and_then(|n| sh.caches.sessions.get(&ns, n));
    let accounts = sh.caches.accounts.all();
    let mut o = observe(ctx, mem, t, sess.as_deref(), &accounts).await;
    let timeout = t
        .spec
        .timeout_seconds
        .map(Duration::from_secs)
        .unwrap_or(ctx.settings.default_timeout);
    let now = sh.now();
    let step = loop {
        match advance::advance(t, &o, now, timeout) {
            Step::Look(what) => {
                let s = sess.as_deref().expect("looks are asked for with a session");
                look(ctx, &mut o, what, t, s, &accounts).await?;
            }
            step => break step,
        }
    };
    carry_out(ctx, mem, t, sess.as_deref(), step).await
}

/// What is known of `t`'s session and agent, before any look.
async fn observe(
    ctx: &Context,
    mem: &mut Memory,
    t: &Task,
    s: Option<&Session>,
    accounts: &[Arc<Account>],
) -> Observation {
    let key = ObjectKey::of(t);
    let status = t.status.clone().unwrap_or_default();
    let Some(s) = s else {
        return Observation::default();
    };
    let skey = ObjectKey::of(s);
    let st = s.status.clone().unwrap_or_default();
    let sig = ctx.shared.signals.get(&skey);
    let marker = status.marker.clone().unwrap_or_default();
    let hooked = sig
        .prompts
        .iter()
        .find(|(p, _)| !marker.is_empty() && p.contains(&marker))
        .map(|(_, at)| *at);
    // When the turn began: remembered, else (after a restart) the agent's
    // history, precise to the millisecond, else the status (whole seconds).
    let started = match (status.phase, mem.started.get(&key)) {
        (Some(TaskPhase::Running), Some(at)) => Some(*at),
        (Some(TaskPhase::Running), None) => {
            let (dir, m) = (config_dir(s, accounts), marker.clone());
            let precise = ctx
                .shared
                .blocking(move |_| in_history(&dir, &m))
                .await
                .or_else(|| status.started_at.as_ref().map(system))
                .unwrap_or_else(SystemTime::now);
            mem.started.insert(key.clone(), precise);
            Some(precise)
        }
        _ => None,
    };
    Observation {
        session: Some(SessionView {
            pid: st.pid,
            phase: st.phase.unwrap_or_default(),
            placed: st.last_swap.as_ref().map(|p| {
                (
                    SystemTime::from(p.started_at.0),
                    p.from.clone(),
                    p.to.clone(),
                )
            }),
        }),
        hooked,
        last_stop: sig.last_stop.clone(),
        last_failure: sig.last_failure.clone(),
        typed_at: mem.typed.get(&key).copied(),
        enter_sent: mem.enter_sent.get(&key).copied(),
        started,
        probes: Default::default(),
    }
}

/// Answers one look of [`advance::advance`].
async fn look(
    ctx: &Context,
    o: &mut Observation,
    what: Look,
    t: &Task,
    s: &Session,
    accounts: &[Arc<Account>],
) -> Result<(), Error> {
    let sh = &ctx.shared;
    let dir = config_dir(s, accounts);
    match what {
        Look::History => {
            let marker = t
                .status
                .as_ref()
                .and_then(|x| x.marker.clone())
                .unwrap_or_default();
            o.probes.history = Some(sh.blocking(move |_| in_history(&dir, &marker)).await);
        }
        Look::Composer => {
            o.probes.composer = Some(match sh.driver.pane(&ObjectKey::of(s)).await? {
                Some(p) if !p.dead => Composer::Text(sh.driver.composer(&p).await?),
                _ => Composer::Gone,
            });
        }
        Look::Transcript => {
            let marker = t.status.as_ref().and_then(|x| x.marker.clone());
            let id = s.status.as_ref().and_then(|x| x.agent_session_id.clone());
            let shared = sh.settings.shared_projects.clone();
            o.probes.reply = Some(match (marker, id) {
                (Some(marker), Some(id)) => {
                    sh.blocking(move |_| {
                        let path = crate::agent::seed::transcript(&shared, &id)?;
                        crate::agent::transcript::reply_to(&path, &marker)
                    })
                    .await
                }
                _ => None,
            });
        }
        Look::PidFile => {
            let pid = s.status.as_ref().and_then(|x| x.pid);
            o.probes.pid_file = Some(match pid {
                Some(pid) => {
                    sh.blocking(move |_| crate::agent::state::read_pid_file(&dir, pid))
                        .await
                }
                None => None,
            });
        }
    }
    Ok(())
}

async fn carry_out(
    ctx: &Context,
    mem: &mut Memory,
    t: &Task,
    s: Option<&Session>,
    step: Step,
) -> Result<(), Error> {
    let key = ObjectKey::of(t);
    match step {
        Step::Wait | Step::Look(_) => Ok(()),
        Step::Confirm { at, by_hook } => confirm(ctx, mem, t, s, at, by_hook).await,
        Step::PressEnter => {
            if let Some(s) = s
                && let Some(p) = ctx.shared.driver.pane(&ObjectKey::of(s)).await?
            {
                ctx.shared.driver.enter(&p).await?;
                mem.enter_sent.insert(key.clone(), SystemTime::now());
                let why = "the prompt was still in the composer: sent Enter again (not the text)";
                ctx.record(&key, false, "EnterResent", why).await;
            }
            Ok(())
        }
        Step::Requeue {
            why,
            rewind,
            replay_on,
        } => requeue(ctx, t, &why, rewind, replay_on).await,
        Step::Finish { phase, message } => finish(ctx, t, phase, &message).await,
        Step::RetryOrFail { why, interrupt } => {
            if interrupt
                && let Some(s) = s
                && let Some(p) = ctx.shared.driver.pane(&ObjectKey::of(s)).await?
            {
                ctx.shared.driver.interrupt(&p).await?;
            }
            retry_or_fail(ctx, t, &why).await
        }
    }
}

async fn confirm(
    ctx: &Context,
    mem: &mut Memory,
    t: &Task,
    s: Option<&Session>,
    at: SystemTime,
    by_hook: bool,
) -> Result<(), Error> {
    let key = ObjectKey::of(t);
    let mut st = t.status.clone().unwrap_or_default();
    st.phase = Some(TaskPhase::Running);
    st.started_at = Some(time(at));
    // The agent's own records tell it again after a crash: it need not
    // hold up the agent that is starting on it.
    if !write(ctx, t, st, Durability::Soon).await? {
        return Ok(());
    }
    mem.started.insert(key.clone(), at);
    // Only dispatches this process made: after a restart the time since the
    // intent includes the daemon's absence.
    mem.typed.remove(&key);
    if let Some(intent) = mem.dispatched.remove(&key) {
        ctx.shared
            .metrics
            .dispatch_latency_seconds
            .observe(at.duration_since(intent).unwrap_or_default().as_secs_f64());
    }
    let how = if by_hook {
        "the agent's UserPromptSubmit hook"
    } else {
        "the agent's prompt history"
    };
    let on = s.and_then(|s| s.metadata.name.clone()).unwrap_or_default();
    ctx.record(
        &key,
        false,
        "Confirmed",
        &format!("received by session {on} ({how})"),
    )
    .await;
    Ok(())
}

/// Writes a task's status, unless it changed under us (then the next pass
/// decides again). Returns whether it was written.
async fn write(
    ctx: &Context,
    t: &Task,
    status: TaskStatus,
    durability: Durability,
) -> Result<bool, Error> {
    let mut status = status;
    crate::api::set_job_conditions(&mut status, t.metadata.generation, crate::api::now());
    let ended = |s: Option<&TaskStatus>| s.and_then(|s| s.phase).is_some_and(assign::finished);
    // Its end is observed once: by the write that records it.
    let ends = (ended(Some(&status)) && !ended(t.status.as_ref())).then(|| status.clone());
    let mut next = t.clone();
    next.status = Some(status);
    let result = ctx
        .shared
        .blocking(move |store| {
            store
                .api::<Task>(next.metadata.namespace.as_deref())
                .replace_status_as(&next, durability)
        })
        .await;
    match result {
        Ok(obj) => {
            if let Some(end) = ends {
                ctx.shared
                    .metrics
                    .observe_task_end(obj.metadata.creation_timestamp.as_ref(), &end);
            }
            ctx.wrote(obj);
            Ok(true)
        }
        Err(StoreError::Conflict { .. }) | Err(StoreError::NotFound(_)) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

async fn release(ctx: &Context, t: &Task) -> Result<(), Error> {
    let key = ObjectKey::of(t);
    let result = ctx
        .shared
        .blocking(move |store| {
            store
                .api::<Task>(Some(&key.namespace))
                .set_finalizer(&key.name, TASK_FINALIZER, false)
        })
        .await;
    match result {
        Ok(Some(obj)) => {
            ctx.wrote(obj);
            Ok(())
        }
        Ok(None) | Err(StoreError::NotFound(_)) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Back to the queue, to be replayed on session `replay_on` (the same
/// conversation) if given. `rewind`: the attempt does not count.
async fn requeue(
    ctx: &Context,
    t: &Task,
    why: &str,
    rewind: bool,
    replay_on: Option<String>,
) -> Result<(), Error> {
    let mut s = t.status.clone().unwrap_or_default();
    s.replay_on = replay_on;
    s.phase = Some(TaskPhase::Pending);
    s.session = None;
    s.session_pid = None;
    s.marker = None;
    s.message = Some(why.to_string());
    if rewind {
        s.attempts = Some(s.attempts.unwrap_or(1).saturating_sub(1));
    }
    if write(ctx, t, s, Durability::Now).await? {
        ctx.record(&ObjectKey::of(t), false, "Requeued", why).await;
    }
    Ok(())
}

async fn finish(ctx: &Context, t: &Task, phase: TaskPhase, message: &str) -> Result<(), Error> {
    let mut s = t.status.clone().unwrap_or_default();
    s.phase = Some(phase);
    s.finished_at = Some(crate::api::now());
    s.message = Some(message.to_string());
    if !write(ctx, t, s, Durability::Now).await? {
        return Ok(());
    }
    let (warn, reason) = match phase {
        TaskPhase::Succeeded => (false, "Succeeded"),
        TaskPhase::Cancelled => (false, "Cancelled"),
        _ => (true, "Failed"),
    };
    ctx.record(&ObjectKey::of(t), warn, reason, message).await;
    if let Some(file) = inbox_file(t) {
        let (ok, m) = (phase == TaskPhase::Succeeded, message.to_string());
        ctx.shared
            .blocking(move |_| crate::inbox::mark_finished(Path::new(&file), ok, &m))
            .await;
    }
    Ok(())
}

/// Failed for good, or back to the queue while attempts remain.
async fn retry_or_fail(ctx: &Context, t: &Task, why: &str) -> Result<(), Error> {
    let attempts = t.status.as_ref().and_then(|s| s.attempts).unwrap_or(1);
    let max = t.spec.max_attempts.unwrap_or(ctx.settings.max_attempts);
    if attempts >= max {
        let why = format!("{why} (attempt {attempts} of {max})");
        finish(ctx, t, TaskPhase::Failed, &why).await
    } else {
        requeue(ctx, t, why, false, None).await
    }
}

/// Cancel or delete: interrupt the session if the task is on it.
async fn stop_task(ctx: &Context, t: &Task, deleting: bool) -> Result<(), Error> {
    let ns = t.metadata.namespace.clone().unwrap_or_default();
    if in_flight(phase(t))
        && let Some(name) = t.status.as_ref().and_then(|s| s.session.clone())
        && let Some(p) = ctx.shared.driver.pane(&session_key(&ns, &name)).await?
        && !p.dead
    {
        ctx.shared.driver.interrupt(&p).await?;
    }
    let why = if deleting { "deleted" } else { "cancelled" };
    finish(ctx, t, TaskPhase::Cancelled, why).await?;
    if deleting {
        release(ctx, t).await?;
    }
    Ok(())
}

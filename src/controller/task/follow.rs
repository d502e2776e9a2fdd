//! Following a task in flight: the looks [`advance`] asks for, its
//! confirmation, its end, a requeue or a retry, a cancel, and the task
//! writes.

use super::advance::{self, Composer, Look, Observation, SessionView, Step};
use super::assign::{self, in_flight, phase};
use super::deliver::{config_dir, inbox_file};
use super::execute::{session_key, system, time};
use super::{Context, Error, Memory};
use crate::agent::driver::in_history;
use crate::api::keys::TASK_FINALIZER;
use crate::api::{Account, ObjectKey, Session, SessionStatus, Task, TaskPhase, TaskStatus};
use crate::store::{Durability, StoreError};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Moves one in-flight task along.
pub(super) async fn progress(ctx: &Context, mem: &mut Memory, t: &Task) -> Result<(), Error> {
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
    let unset = SessionStatus::default();
    let st = s.status.as_ref().unwrap_or(&unset);
    let marker = status.marker.clone().unwrap_or_default();
    // The three fields it needs, not a copy of every signal (its latest
    // statusLine and tool inputs), for each task in flight on each pass.
    let (hooked, last_stop, last_failure) = ctx.shared.signals.read(&skey, |sig| {
        let hooked = sig
            .prompts
            .iter()
            .find(|(p, _)| !marker.is_empty() && p.contains(&marker))
            .map(|(_, at)| *at);
        (hooked, sig.last_stop.clone(), sig.last_failure.clone())
    });
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
        last_stop,
        last_failure,
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
pub(super) async fn write(
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

pub(super) async fn release(ctx: &Context, t: &Task) -> Result<(), Error> {
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
pub(super) async fn requeue(
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
pub(super) async fn stop_task(ctx: &Context, t: &Task, deleting: bool) -> Result<(), Error> {
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

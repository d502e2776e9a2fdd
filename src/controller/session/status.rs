//! Writing what the session controller found: its status fields (only
//! when they changed), the events that tell a change, the agent's
//! checkpoint and the inbox's status board.

use super::report::Report;
use super::{Context, Error, OWNED, usage};
use crate::agent::signals::AgentSignals;
use crate::api::{ObjectKey, Session, SessionPhase, SessionStatus, set_condition};
use crate::store::Durability;
use std::time::SystemTime;

/// Writes this controller's status fields (as they are in `st`).
pub(super) async fn write(
    ctx: &Context,
    key: &ObjectKey,
    st: &SessionStatus,
    durability: Durability,
) -> Result<(), crate::store::StoreError> {
    let (k, status) = (key.clone(), st.clone());
    let obj = ctx
        .shared
        .blocking(move |store| {
            store
                .api::<Session>(Some(&k.namespace))
                .patch_status_fields(&k.name, &status, OWNED, durability)
        })
        .await?;
    ctx.shared.caches.sessions.wrote(obj);
    Ok(())
}

/// The status as the report says, the checkpoint, the inbox's status
/// file, and an event on a phase change.
pub async fn finish(
    ctx: &Context,
    s: &Session,
    before: &SessionStatus,
    mut st: SessionStatus,
    r: &Report,
    sig: &AgentSignals,
) -> Result<(), Error> {
    let key = ObjectKey::of(s);
    let running = st.launches.unwrap_or(0) > 0 && !s.spec.suspend && r.alive.ok;
    match (running, st.pid) {
        (true, Some(pid)) => {
            let (shared, k) = (ctx.shared.clone(), key.clone());
            ctx.exits
                .watch(&key, pid, move || shared.signals.terminal_event(&k));
        }
        _ => ctx.exits.forget(&key),
    }
    st.phase = Some(r.phase);
    st.restarts = Some(st.restarts.unwrap_or(0));
    if !running {
        st.account = None;
        st.pane_id = None;
        st.pid = None;
    } else {
        st.account = st.launch.as_ref().and_then(|l| l.account.clone());
    }
    st.usage = if running {
        // What the agent running now said (a launch in this pass started
        // another than the one observed).
        let said = ctx.shared.signals.get(&key);
        let now = ctx.shared.now();
        let reset = usage::logged_reset(ctx, before.usage.as_ref(), &said, now).await;
        usage::report(
            before.usage.as_ref(),
            &said,
            st.account.as_deref(),
            reset,
            now,
        )
    } else {
        None
    };
    let generation = s.metadata.generation;
    st.observed_generation = generation;
    let t = crate::api::now();
    for (kind, c) in [("AgentAlive", &r.alive), ("Ready", &r.ready)] {
        set_condition(
            &mut st.conditions,
            kind,
            c.ok,
            &c.reason,
            &c.message,
            generation,
            t.clone(),
        );
    }
    let swapping = r.phase == SessionPhase::Swapping;
    if running && !swapping {
        checkpoint(ctx, s, &key, &st, sig).await;
    }
    inbox_status(ctx, s, &st);
    if owned_changed(before, &st) {
        // What the agent is doing is observed again after any crash (what
        // must survive one, the conversation id, was written durably
        // before the launch): it waits for the disk rather than stall the
        // agent's own writes.
        write(ctx, &key, &st, Durability::Soon).await?;
        tell_change(ctx, &key, before, &st, r).await;
    }
    Ok(())
}

/// After a write of what changed: the start-up's time of a launch that
/// became Ready (a metric), and the phase's change (an event).
async fn tell_change(
    ctx: &Context,
    key: &ObjectKey,
    before: &SessionStatus,
    st: &SessionStatus,
    r: &Report,
) {
    if r.ready.ok
        && !crate::api::Conditions::is_true(before.conditions.as_slice(), "Ready")
        && let Some(l) = &st.launch
    {
        ctx.shared
            .metrics
            .observe_launch_ready(&l.at, &crate::api::micro_now());
    }
    let was = before.phase.unwrap_or_default();
    if was != r.phase {
        let detail = match r.phase {
            SessionPhase::Waiting | SessionPhase::Failed => format!(": {}", r.ready.message),
            _ => String::new(),
        };
        ctx.record(
            key,
            r.phase == SessionPhase::Failed,
            "PhaseChanged",
            &format!("{was} → {}{detail}", r.phase),
        )
        .await;
    }
}

fn owned_changed(before: &SessionStatus, after: &SessionStatus) -> bool {
    let a = serde_json::to_value(before).unwrap_or_default();
    let b = serde_json::to_value(after).unwrap_or_default();
    OWNED.iter().any(|f| a.get(*f) != b.get(*f))
}

/// Rewrites the session's checkpoint when its agent said something new,
/// or when what it says changed otherwise (its task, its account) and the
/// last one is `checkpoint_every` old. An unchanged checkpoint is not
/// written again (an idle pool of 500 rewrote 8 a second).
async fn checkpoint(
    ctx: &Context,
    s: &Session,
    key: &ObjectKey,
    st: &SessionStatus,
    sig: &AgentSignals,
) {
    let every = ctx.shared.settings.checkpoint_every;
    let look = ctx.recall(key, |m| {
        m.checkpoint
            .as_ref()
            .is_none_or(|(count, at, _)| *count != sig.count || at.elapsed() >= every)
    });
    if !look {
        return;
    }
    let mut cp = crate::controller::checkpoint::Checkpoint {
        session: key.name.clone(),
        namespace: key.namespace.clone(),
        agent_session_id: st.agent_session_id.clone().unwrap_or_default(),
        account: st.account.clone(),
        // Where the agent runs: its worktree when it has a workspace.
        workdir: crate::workspace::agent_dir(s)
            .to_string_lossy()
            .into_owned(),
        current_task: st.current_task.clone(),
        at: 0,
        ..Default::default()
    }
    .from_signals(sig);
    let unchanged = ctx.remember(key, |m| {
        let unchanged = m
            .checkpoint
            .as_ref()
            .is_some_and(|(count, _, last)| *count == sig.count && *last == cp);
        // Looked at now: the next look is a period away.
        m.checkpoint = Some((sig.count, std::time::Instant::now(), cp.clone()));
        unchanged
    });
    if unchanged {
        return;
    }
    cp.at = crate::controller::checkpoint::unix_ms(SystemTime::now());
    let (dir, k) = (ctx.shared.settings.state_dir.clone(), key.clone());
    if let Err(e) = ctx.shared.blocking(move |_| cp.save(&dir, &k)).await {
        tracing::warn!(session = %key, error = %e, "cannot write the checkpoint");
        // Not written: the next pass tries again.
        if let Some(m) = ctx.memory.lock().expect("lock").get_mut(key) {
            m.checkpoint = None;
        }
    }
}

/// `.agent-queue/status.json` for tools that read it, when this session's
/// entry changed since this daemon last posted it.
fn inbox_status(ctx: &Context, s: &Session, st: &SessionStatus) {
    let key = ObjectKey::of(s);
    let entry: super::InboxEntry = (
        crate::workspace::agent_dir(s),
        st.phase.unwrap_or_default().to_string(),
        st.current_task.clone(),
        st.account.clone(),
    );
    let said = ctx.remember(&key, |m| {
        m.inbox_said
            .replace(entry.clone())
            .is_some_and(|was| was == entry)
    });
    if said {
        return;
    }
    let (workdir, phase, task, account) = entry;
    ctx.status_board.post(
        workdir,
        &key.name,
        &phase,
        task.as_deref(),
        account.as_deref(),
    );
}

//! Typing a task into a session: its fresh branch, the model it asks for,
//! an empty composer, the text and Enter, all under the session's
//! keyboard, after one more look at the Session.

use super::assign::{self, phase};
use super::execute::{about_to_go, account_of};
use super::follow::write;
use super::placement;
use super::queue::TaskKey;
use super::{Context, Error, Memory};
use crate::api::keys::{INBOX_FILE, TASK_FINALIZER};
use crate::api::{Account, ObjectKey, Session, Task, TaskPhase};
use crate::store::{Durability, StoreError};
use futures::StreamExt;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// How long the composer may take to be empty before a task is typed.
const COMPOSER_READY: Duration = Duration::from_secs(2);
/// How long a `/model` switch may take to be taken.
const MODEL_TAKEN: Duration = Duration::from_secs(3);
/// How long after a `/model` switch of its own the dispatcher believes it
/// over the agent's statusLine, which may still name the model before it.
const SWITCH_SHOWS: Duration = Duration::from_secs(5);
/// How many deliveries run at once: each waits on its own agent (its
/// composer, a model switch: seconds at most), under its own keyboard.
const DELIVERIES_AT_ONCE: usize = 8;
/// How many deliveries a pass starts: the rest wait for the next pass,
/// which first reads what the earlier ones confirmed (a pool of 500 free
/// sessions would otherwise hold every confirmation for minutes).
const DELIVERIES_PER_PASS: usize = 32;

/// What a delivery leaves for the dispatcher's memory (deliveries run
/// side by side; their outcomes are filed after).
#[derive(Default)]
pub(super) struct Delivery {
    /// The model the agent (by pid) was switched to, and when.
    switched: Option<(u32, String, SystemTime)>,
    /// The task whose intent was written, and when.
    dispatched: Option<(ObjectKey, SystemTime)>,
    /// When its text was typed and submitted.
    typed: Option<SystemTime>,
}

impl Delivery {
    fn file(self, mem: &mut Memory) {
        if let Some((pid, model, at)) = self.switched {
            mem.models.insert(pid, (model, at));
        }
        if let Some((key, at)) = self.dispatched {
            if let Some(typed) = self.typed {
                mem.submitted = Some(tokio::time::Instant::now());
                mem.typed.insert(key.clone(), typed);
            }
            mem.dispatched.insert(key, at);
        }
    }
}

/// Delivers the pairs (task, index into `sessions`) the queue made, up to
/// [`DELIVERIES_PER_PASS`], [`DELIVERIES_AT_ONCE`] at a time. Every
/// outcome is filed, then the first error (if any) returned.
pub(super) async fn deliver_some(
    ctx: &Context,
    mem: &mut Memory,
    pairs: &[(TaskKey, usize)],
    sessions: &[Arc<Session>],
    accounts: &[Arc<Account>],
) -> Result<(), Error> {
    let models = &mem.models;
    let mut todo = pairs
        .iter()
        .take(DELIVERIES_PER_PASS)
        .filter_map(|((ns, name), si)| Some((ctx.shared.caches.tasks.get(ns, name)?, *si)));
    let mut running = futures::stream::FuturesUnordered::new();
    let mut outcomes = Vec::new();
    loop {
        while running.len() < DELIVERIES_AT_ONCE {
            let Some((t, si)) = todo.next() else { break };
            running.push(deliver_one(ctx, models, t, &sessions[si], accounts));
        }
        match running.next().await {
            Some(o) => outcomes.push(o),
            None => break,
        }
    }
    drop(running);
    let mut first = Ok(());
    for (out, r) in outcomes {
        out.file(mem);
        if first.is_ok() {
            first = r;
        }
    }
    first
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
pub(super) fn config_dir(s: &Session, accounts: &[Arc<Account>]) -> PathBuf {
    account_of(accounts, s)
        .map(|a| crate::fsutil::expand_home(&a.spec.config_dir))
        .unwrap_or_else(|| crate::fsutil::home().join(".claude"))
}

/// Whether `s`'s model has reached its weekly window on `a`, which drains
/// it: its sessions of that model take no new task (they are moving).
pub(super) fn model_drained(ctx: &Context, s: &Session, a: &Account) -> bool {
    let model = running_model(ctx, &ObjectKey::of(s)).or_else(|| s.spec.agent.model.clone());
    crate::controller::failover::target::model_drained(a, model.as_deref(), &ctx.settings.policy)
}

/// The model the agent says it runs (statusLine input), lower-case.
fn running_model(ctx: &Context, session: &ObjectKey) -> Option<String> {
    said_model(ctx, session).map(|(m, _)| m)
}

/// The model the agent's statusLine names, lower-case, and when it came.
fn said_model(ctx: &Context, session: &ObjectKey) -> Option<(String, SystemTime)> {
    ctx.shared.signals.read(session, |sig| {
        let (input, at) = sig.statusline.as_ref()?;
        let id = input.pointer("/model/id")?.as_str()?;
        Some((id.to_ascii_lowercase(), *at))
    })
}

/// The model an agent runs, as the dispatcher knows it: what its
/// statusLine says, unless the dispatcher switched it since (a statusLine
/// within [`SWITCH_SHOWS`] after the switch may still show the model
/// before it); else the last switch; else what it was launched with. Pure.
fn believed_model(
    said: Option<(String, SystemTime)>,
    switched: Option<&(String, SystemTime)>,
    launched: Option<&str>,
) -> Option<String> {
    match (said, switched) {
        (Some((_, at)), Some((m, to))) if at < *to + SWITCH_SHOWS => Some(m.clone()),
        (Some((m, _)), _) => Some(m),
        (None, Some((m, _))) => Some(m.clone()),
        (None, None) => launched.map(str::to_string),
    }
}

async fn deliver_one(
    ctx: &Context,
    models: &HashMap<u32, (String, SystemTime)>,
    t: Arc<Task>,
    s: &Session,
    accounts: &[Arc<Account>],
) -> (Delivery, Result<(), Error>) {
    let mut out = Delivery::default();
    let r = deliver(ctx, models, &t, s, accounts, &mut out).await;
    (out, r)
}

async fn deliver(
    ctx: &Context,
    models: &HashMap<u32, (String, SystemTime)>,
    t: &Task,
    s: &Session,
    accounts: &[Arc<Account>],
    out: &mut Delivery,
) -> Result<(), Error> {
    let key = ObjectKey::of(t);
    let skey = ObjectKey::of(s);
    let Some(pid) = s.status.as_ref().and_then(|x| x.pid) else {
        return Ok(());
    };
    // Held until the task is typed: a stop's `/exit` waits for it, and a
    // stop that came first has left no pane to type into.
    let _keyboard = ctx.shared.driver.keyboard(&skey).await;
    let Some((t, pane)) = ready_to_type(ctx, &key, s, pid, accounts).await? else {
        return Ok(());
    };
    let t = t.as_ref();
    let model = assign::model_for(t, &ctx.settings);
    if !switch_model(ctx, models, out, &key, &skey, s, &pane, model.as_deref()).await? {
        return Ok(());
    }
    let branch = t.spec.fresh_branch(&skey.name, &key.name);
    if let Some(b) = &branch
        && !take_branch(ctx, t, s, b).await?
    {
        return Ok(());
    }
    let marker = format!("{:08x}", uuid::Uuid::new_v4().as_u128() as u32);
    let mut status = dispatched_status(t, &skey.name, pid, branch, &marker, model.clone());
    let replay = status.replay_on.take().is_some();
    if !write_intent(ctx, t, &status).await? {
        return Ok(());
    }
    out.dispatched = Some((key.clone(), SystemTime::now()));
    if !ctx.shared.node_fresh() {
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
    ctx.shared.driver.type_then_enter(&pane, &text).await?;
    out.typed = Some(SystemTime::now());
    if let Some(file) = inbox_file(t) {
        let (name, m) = (key.name.clone(), marker.clone());
        ctx.shared
            .blocking(move |_| crate::inbox::mark_dispatched(Path::new(&file), &name, &m))
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

/// One more look, under the session's keyboard, before anything is typed:
/// the session is not about to go, the task is still pending as the cache
/// has it now (another node's dispatcher may have taken it since this pass
/// filed it), the agent (by pid) is alive, its own state file says idle
/// (the Session's status may lag behind it: text typed into a busy agent
/// is queued, not submitted), its composer is empty and its account still
/// takes work. The task as it is now, and the pane.
async fn ready_to_type(
    ctx: &Context,
    key: &ObjectKey,
    s: &Session,
    pid: u32,
    accounts: &[Arc<Account>],
) -> Result<Option<(Arc<Task>, crate::agent::terminal::Pane)>, Error> {
    let sh = &ctx.shared;
    let skey = ObjectKey::of(s);
    if about_to_go(sh, &skey) {
        return Ok(None);
    }
    let Some(t) = sh.caches.tasks.get(&key.namespace, &key.name) else {
        return Ok(None);
    };
    if phase(&t) != TaskPhase::Pending || t.metadata.deletion_timestamp.is_some() {
        return Ok(None);
    }
    let Some((pane, screen)) = sh.driver.pane_and_screen(&skey).await? else {
        return Ok(None);
    };
    if pane.dead || pane.pid != pid {
        return Ok(None); // the session controller will catch up first
    }
    let d = config_dir(s, accounts);
    if let Some(pidf) = sh
        .blocking(move |_| crate::agent::state::read_pid_file(&d, pid))
        .await
        && pidf.status != "idle"
    {
        return Ok(None);
    }
    if !composer_ready(ctx, &pane, &screen, &skey).await? {
        return Ok(None);
    }
    // The composer may have kept us up to COMPOSER_READY: the account may
    // have turned NearLimit (drained) or been left since the pairing.
    if !account_still_takes_work(ctx, &skey) {
        return Ok(None);
    }
    Ok(Some((t, pane)))
}

/// [`assign::account_takes_work`] asked again of the session and its
/// account as the caches have them now.
fn account_still_takes_work(ctx: &Context, skey: &ObjectKey) -> bool {
    let caches = &ctx.shared.caches;
    let Some(s) = caches.sessions.get(&skey.namespace, &skey.name) else {
        return false;
    };
    let accounts = caches.accounts.all();
    assign::account_takes_work(&s, account_of(&accounts, &s), &ctx.settings.policy)
}

/// The task's status once dispatched to `session` (its agent `pid`):
/// attempt counted, marker, branch and model, times reset, `Scheduled`.
fn dispatched_status(
    t: &Task,
    session: &str,
    pid: u32,
    branch: Option<String>,
    marker: &str,
    model: Option<String>,
) -> crate::api::TaskStatus {
    let mut status = t.status.clone().unwrap_or_default();
    status.phase = Some(TaskPhase::Dispatched);
    status.session = Some(session.to_string());
    status.branch = branch;
    status.session_pid = Some(pid);
    status.attempts = Some(status.attempts.unwrap_or(0) + 1);
    status.marker = Some(marker.to_string());
    status.model = model;
    status.dispatched_at = Some(crate::api::now());
    status.started_at = None;
    status.finished_at = None;
    status.message = None;
    status.observed_generation = t.metadata.generation;
    crate::api::set_condition(
        &mut status.conditions,
        placement::SCHEDULED,
        true,
        placement::DISPATCHED,
        &format!("dispatched to session {session}"),
        t.metadata.generation,
        crate::api::now(),
    );
    status
}

/// The intent, durable before anything is typed, with the finalizer (a
/// delete from now on waits for us), in one write: the task as this pass
/// saw it, or nothing (false: it changed or went since).
async fn write_intent(
    ctx: &Context,
    t: &Task,
    status: &crate::api::TaskStatus,
) -> Result<bool, Error> {
    let mut next = t.clone();
    next.status = Some(status.clone());
    let written = ctx
        .shared
        .blocking(move |store| {
            store
                .api::<Task>(next.metadata.namespace.as_deref())
                .add_finalizer_with_status(&next, TASK_FINALIZER)
        })
        .await;
    match written {
        Ok(Some(obj)) => {
            ctx.wrote(obj);
            Ok(true)
        }
        Ok(None) | Err(StoreError::Conflict { .. }) | Err(StoreError::NotFound(_)) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

pub(super) fn inbox_file(t: &Task) -> Option<String> {
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
    models: &HashMap<u32, (String, SystemTime)>,
    out: &mut Delivery,
    key: &ObjectKey,
    skey: &ObjectKey,
    s: &Session,
    pane: &crate::agent::terminal::Pane,
    model: Option<&str>,
) -> Result<bool, Error> {
    let Some(m) = model else { return Ok(true) };
    let d = &ctx.shared.driver;
    let running = believed_model(
        said_model(ctx, skey),
        models.get(&pane.pid),
        s.spec.agent.model.as_deref(),
    );
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
    // The statusLine's time is when it came (the system clock): so is this.
    out.switched = Some((pane.pid, m.to_string(), SystemTime::now()));
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + s)
    }

    #[test]
    fn the_model_believed_is_the_latest_word_with_the_statusline_lagging_a_switch() {
        let said = |m: &str, t: u64| Some((m.to_string(), at(t)));
        let switched = ("opus".to_string(), at(100));
        let lag = SWITCH_SHOWS.as_secs();
        let cases = [
            // The statusLine still shows the model before the switch.
            (said("sonnet", 99), Some(&switched), Some("opus")),
            (said("sonnet", 100 + lag - 1), Some(&switched), Some("opus")),
            // Well after it: the agent's own word (the user switched back).
            (said("sonnet", 100 + lag), Some(&switched), Some("sonnet")),
            (said("opus", 101), None, Some("opus")),
            (None, Some(&switched), Some("opus")),
            (None, None, Some("haiku")),
        ];
        for (i, (said, switched, want)) in cases.into_iter().enumerate() {
            assert_eq!(
                believed_model(said, switched, Some("haiku")).as_deref(),
                want,
                "case {i}"
            );
        }
        assert_eq!(believed_model(None, None, None), None);
    }
}

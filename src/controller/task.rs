//! The task dispatcher: Pending tasks go to free sessions, each exactly
//! once, and are followed to their end.
//!
//! Choosing which task goes to which session is one decision over all
//! tasks and sessions (priority order, one task per session), so this
//! controller is one level-triggered loop rather than a per-object
//! reconcile: each pass re-reads every Task and Session from the store and
//! the agents' signals, moves in-flight tasks along, then assigns. Passes
//! run on every store change, every agent signal, and a short tick while
//! anything is in flight.
//!
//! Delivery is exactly once:
//! 1. the intent (phase Dispatched, attempt, a fresh marker, the agent's
//!    pid) is written to the store before anything is typed;
//! 2. the prompt is typed with the marker at its end;
//! 3. it is confirmed by the `UserPromptSubmit` hook carrying the marker, or
//!    after a daemon crash by the marker in the account's `history.jsonl`
//!    (Claude Code writes it at submit) or on screen in the composer (then
//!    only Enter is sent again, never the text). Text that provably never
//!    reached the agent is delivered again.

use super::Context;
use crate::api::{
    Account, ObjectKey, Session, SessionPhase, Task, TaskPhase, TaskPriority, TaskStatus,
};
use crate::selector::Selector;
use crate::store::{Durability, StoreError};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Held by every task in flight: deleting it interrupts the session first.
pub const FINALIZER: &str = "claude-failover.io/task";
/// Set (by `cancel`) to stop a task.
pub const CANCEL: &str = "claude-failover.io/cancel";
/// Set on tasks imported from an inbox file: the file's path.
pub const INBOX_FILE: &str = "claude-failover.io/inbox-file";

/// What a cancel request found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelOutcome {
    /// Asked for now (the dispatcher stops the task at its next pass).
    Requested,
    /// Asked for before; still on its way.
    AlreadyRequested,
    /// The task had already ended, in this phase: nothing to stop.
    Finished(TaskPhase),
}

/// Asks for the Task `key` to be cancelled (the [`CANCEL`] annotation) and
/// records an event saying who asked (`source`: `api`, `cli`).
pub fn request_cancel(
    store: &crate::store::Store,
    key: &ObjectKey,
    source: &str,
) -> Result<CancelOutcome, StoreError> {
    let current = store
        .get(key)?
        .ok_or_else(|| StoreError::NotFound(key.clone()))?;
    let phase = current
        .pointer("/status/phase")
        .and_then(|p| serde_json::from_value::<TaskPhase>(p.clone()).ok())
        .unwrap_or_default();
    if finished(phase) {
        return Ok(CancelOutcome::Finished(phase));
    }
    let when = serde_json::to_value(crate::api::now()).expect("time serializes");
    let mut fresh = false;
    store.update_metadata(key, None, |m| {
        let ann = m
            .entry("annotations")
            .or_insert_with(|| serde_json::json!({}));
        if let Some(a) = ann.as_object_mut()
            && !a.contains_key(CANCEL)
        {
            a.insert(CANCEL.into(), when);
            fresh = true;
        }
    })?;
    if !fresh {
        return Ok(CancelOutcome::AlreadyRequested);
    }
    store.record_event(
        key,
        false,
        "CancelRequested",
        &format!("cancel requested through the {source}"),
        source,
    )?;
    Ok(CancelOutcome::Requested)
}

/// Settings of the dispatcher.
#[derive(Debug, Clone)]
pub struct DispatchSettings {
    /// A session takes its next task this long after its last one finished.
    pub cooldown: Duration,
    pub default_timeout: Duration,
    pub max_attempts: u32,
    /// Model per priority when a task names none.
    pub models: HashMap<TaskPriority, String>,
}

impl Default for DispatchSettings {
    fn default() -> Self {
        DispatchSettings {
            cooldown: Duration::ZERO,
            default_timeout: Duration::from_secs(3600),
            max_attempts: 3,
            models: [
                (TaskPriority::Critical, "opus"),
                (TaskPriority::High, "sonnet"),
                (TaskPriority::Normal, "sonnet"),
                (TaskPriority::Low, "sonnet"),
            ]
            .into_iter()
            .map(|(p, m)| (p, m.to_string()))
            .collect(),
        }
    }
}

/// What the dispatcher remembers between passes (lost on restart, by design:
/// everything here can be re-derived or safely redone).
#[derive(Default)]
pub struct Memory {
    /// The model each agent (by pid) was last switched to.
    models: HashMap<u32, String>,
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
}

/// How long the dispatcher holds its next pass after submitting a task.
/// The agent is then building its request (its hooks, its transcript, its
/// statusLine): the passes its own hook and writes would wake (every object
/// listed again, the confirmation written) took the CPU from it and put
/// 20 to 40 ms between its Enter and its request (`cargo bench --bench
/// dispatch`). What arrives meanwhile waits for the pass after.
pub const AFTER_SUBMIT: Duration = Duration::from_millis(150);

// ---------------------------------------------------------------- planning

/// A session as the assignment sees it.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub key: ObjectKey,
    pub labels: std::collections::BTreeMap<String, String>,
    pub workdir: PathBuf,
    pub free: bool,
}

fn norm(p: &str) -> PathBuf {
    let p = crate::fsutil::expand_home(p);
    std::fs::canonicalize(&p).unwrap_or(p)
}

/// Whether `task` may run on `session`.
pub fn eligible(task: &Task, session: &Candidate) -> bool {
    let ns = task
        .metadata
        .namespace
        .as_deref()
        .unwrap_or(crate::api::DEFAULT_NAMESPACE);
    if session.key.namespace != ns {
        return false;
    }
    if !crate::mcp::delegation::may_run_on(task, &session.key.name) {
        return false;
    }
    if let Some(name) = &task.spec.session {
        return *name == session.key.name;
    }
    // Cut short by a usage limit or a failover: back to its conversation.
    if let Some(name) = task.status.as_ref().and_then(|s| s.replay_on.as_ref()) {
        return *name == session.key.name;
    }
    if let Some(sel) = &task.spec.session_selector
        && !Selector::from_label_selector(sel).matches(Some(&session.labels))
    {
        return false;
    }
    if let Some(w) = &task.spec.workdir
        && norm(w) != session.workdir
    {
        return false;
    }
    true
}

/// The order tasks are served in: priority, then age, then name.
pub fn queue_order(a: &Task, b: &Task) -> std::cmp::Ordering {
    let created = |t: &Task| t.metadata.creation_timestamp.clone();
    a.spec
        .priority
        .cmp(&b.spec.priority)
        .then_with(|| created(a).cmp(&created(b)))
        .then_with(|| a.metadata.name.cmp(&b.metadata.name))
}

/// Pairs pending tasks (already in queue order) with free sessions: each
/// task takes the first eligible free session; each session takes one task.
pub fn assign(pending: &[&Task], sessions: &[Candidate]) -> Vec<(usize, usize)> {
    let mut taken = vec![false; sessions.len()];
    let mut out = Vec::new();
    for (ti, t) in pending.iter().enumerate() {
        if let Some(si) = (0..sessions.len())
            .find(|&si| !taken[si] && sessions[si].free && eligible(t, &sessions[si]))
        {
            taken[si] = true;
            out.push((ti, si));
        }
    }
    out
}

/// The model a task runs with.
pub fn model_for(task: &Task, s: &DispatchSettings) -> Option<String> {
    task.spec
        .model
        .clone()
        .or_else(|| s.models.get(&task.spec.priority).cloned())
}

/// The marker typed after the prompt.
pub fn marker_text(marker: &str) -> String {
    format!(" ⟦task {marker}⟧")
}

// --------------------------------------------------------------- execution

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Tmux(#[from] crate::tmux::TmuxError),
}

fn key_of_task(t: &Task) -> ObjectKey {
    ObjectKey::new(
        crate::api::Kind::Task,
        t.metadata.namespace.as_deref().unwrap_or_default(),
        t.metadata.name.as_deref().unwrap_or_default(),
    )
}

fn key_of_session(ns: &str, name: &str) -> ObjectKey {
    ObjectKey::new(crate::api::Kind::Session, ns, name)
}

fn time(t: SystemTime) -> crate::api::Time {
    crate::api::Time(
        k8s_openapi::jiff::Timestamp::try_from(t)
            .unwrap_or_else(|_| k8s_openapi::jiff::Timestamp::now()),
    )
}

fn system_time(t: &crate::api::Time) -> SystemTime {
    SystemTime::from(t.0)
}

fn phase(t: &Task) -> TaskPhase {
    t.status
        .as_ref()
        .and_then(|s| s.phase)
        .unwrap_or(TaskPhase::Pending)
}

fn finished(p: TaskPhase) -> bool {
    matches!(
        p,
        TaskPhase::Succeeded | TaskPhase::Failed | TaskPhase::Cancelled
    )
}

fn short(s: &str, n: usize) -> String {
    let line = s
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_default()
        .trim();
    if line.chars().count() > n {
        format!("{}…", line.chars().take(n).collect::<String>())
    } else {
        line.to_string()
    }
}

/// The config dir a session's agent runs with.
fn config_dir(s: &Session, accounts: &[Account]) -> PathBuf {
    let acc = s.status.as_ref().and_then(|st| st.account.clone());
    acc.and_then(|a| {
        accounts
            .iter()
            .find(|x| x.metadata.name.as_deref() == Some(&a))
    })
    .map(|a| crate::fsutil::expand_home(&a.spec.config_dir))
    .unwrap_or_else(|| crate::fsutil::home().join(".claude"))
}

/// Claude Code records every submitted prompt in `history.jsonl` at once;
/// after a crash this proves a submit the hook could not report. Returns
/// when it was submitted (the line's `timestamp`, milliseconds).
fn in_history(config_dir: &Path, marker: &str) -> Option<SystemTime> {
    let h = std::fs::read_to_string(config_dir.join("history.jsonl")).ok()?;
    let line = h.lines().rev().find(|l| l.contains(marker))?;
    let ms = serde_json::from_str::<serde_json::Value>(line)
        .ok()
        .and_then(|v| v.get("timestamp").and_then(serde_json::Value::as_u64))
        .unwrap_or(0);
    Some(SystemTime::UNIX_EPOCH + Duration::from_millis(ms))
}

/// The dispatcher: runs passes until the process ends. `store_changed` is
/// notified on every Task or Session change (and by inbox folders).
pub async fn run(
    ctx: Arc<Context>,
    settings: DispatchSettings,
    store_changed: Arc<tokio::sync::Notify>,
) {
    let mut memory = Memory::default();
    let mut inboxes = crate::inbox::InboxWatcher::new(store_changed.clone());
    loop {
        let mut inbox_waiting = false;
        // Inbox files become Tasks first (and new inboxes get watched).
        match ctx.store.api::<Session>(None).list() {
            Ok(sessions) => {
                if let Some(w) = inboxes.as_mut() {
                    w.sync(&sessions);
                }
                inbox_waiting = crate::inbox::import(&ctx.store, &sessions).waiting;
            }
            Err(e) => tracing::warn!(error = %e, "cannot list sessions for the inboxes"),
        }
        let started = std::time::Instant::now();
        let result = pass(&ctx, &settings, &mut memory).await;
        crate::metrics::metrics().observe_reconcile(
            "task",
            started.elapsed().as_secs_f64(),
            result.is_err(),
        );
        let next = match result {
            Ok(next) => next,
            Err(e) => {
                tracing::warn!(error = %e, "task dispatch pass failed; retrying");
                Duration::from_secs(1)
            }
        };
        let next = if inbox_waiting {
            next.min(crate::inbox::YOUNG)
        } else {
            next
        };
        // Right after a submission, leave the agent the CPU (see AFTER_SUBMIT);
        // wakes meanwhile are kept, and the next pass runs at once after.
        if let Some(at) = memory.submitted.take() {
            tokio::time::sleep_until(at + AFTER_SUBMIT).await;
        }
        let signals = ctx.signals.clone();
        tokio::select! {
            _ = signals.changed().notified() => {}
            _ = store_changed.notified() => {}
            _ = tokio::time::sleep(next) => {}
        }
    }
}

struct View {
    sessions: Vec<Session>,
    accounts: HashMap<String, Vec<Account>>,
    tasks: Vec<Task>,
}

fn load(ctx: &Context) -> Result<View, Error> {
    let store = &ctx.store;
    let sessions = store.api::<Session>(None).list()?;
    let tasks = store.api::<Task>(None).list()?;
    let mut accounts: HashMap<String, Vec<Account>> = HashMap::new();
    for a in store.api::<Account>(None).list()? {
        accounts
            .entry(a.metadata.namespace.clone().unwrap_or_default())
            .or_default()
            .push(a);
    }
    Ok(View {
        sessions,
        accounts,
        tasks,
    })
}

fn session_of<'a>(v: &'a View, t: &Task) -> Option<&'a Session> {
    let name = t.status.as_ref()?.session.as_deref()?;
    let ns = t.metadata.namespace.as_deref().unwrap_or_default();
    v.sessions.iter().find(|s| {
        s.metadata.name.as_deref() == Some(name) && s.metadata.namespace.as_deref() == Some(ns)
    })
}

/// One pass; returns how soon the next one should run without an event.
async fn pass(ctx: &Context, st: &DispatchSettings, mem: &mut Memory) -> Result<Duration, Error> {
    let view = load(ctx)?;
    mem.dispatched.retain(|k, _| {
        view.tasks
            .iter()
            .any(|t| phase(t) == TaskPhase::Dispatched && key_of_task(t) == *k)
    });
    let mut in_flight = false;
    // Whether step 1 may have written anything (then step 2 re-reads).
    let mut touched = false;
    // 1. Move in-flight and cancelled/deleted tasks along.
    for t in &view.tasks {
        let p = phase(t);
        let deleting = t.metadata.deletion_timestamp.is_some();
        let cancel = t
            .metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key(CANCEL));
        if (deleting || cancel) && !finished(p) {
            touched = true;
            stop_task(ctx, &view, t, deleting).await?;
            continue;
        }
        if deleting {
            touched = true;
            release(ctx, t)?;
            continue;
        }
        match p {
            TaskPhase::Dispatched | TaskPhase::Running => {
                in_flight = true;
                touched = true;
                progress(ctx, st, mem, &view, t).await?;
            }
            p if finished(p)
                && t.metadata
                    .finalizers
                    .iter()
                    .flatten()
                    .any(|f| f == FINALIZER) =>
            {
                touched = true;
                release(ctx, t)?;
            }
            _ => {}
        }
    }
    // 2. Assign pending tasks to free sessions (re-read if step 1 may have
    //    changed things).
    let view = if touched { load(ctx)? } else { view };
    let busy: HashSet<(String, String)> = view
        .tasks
        .iter()
        .filter(|t| matches!(phase(t), TaskPhase::Dispatched | TaskPhase::Running))
        .filter_map(|t| {
            let s = t.status.as_ref()?.session.clone()?;
            Some((t.metadata.namespace.clone().unwrap_or_default(), s))
        })
        .collect();
    let now = SystemTime::now();
    let last_finished: HashMap<(String, String), SystemTime> = view
        .tasks
        .iter()
        .filter(|t| finished(phase(t)))
        .filter_map(|t| {
            let s = t.status.as_ref()?;
            Some((
                (
                    t.metadata.namespace.clone().unwrap_or_default(),
                    s.session.clone()?,
                ),
                system_time(s.finished_at.as_ref()?),
            ))
        })
        .fold(HashMap::new(), |mut m, (k, t)| {
            let e = m.entry(k).or_insert(t);
            if t > *e {
                *e = t;
            }
            m
        });
    let candidates: Vec<Candidate> = view
        .sessions
        .iter()
        .map(|s| {
            let ns = s.metadata.namespace.clone().unwrap_or_default();
            let name = s.metadata.name.clone().unwrap_or_default();
            let status = s.status.clone().unwrap_or_default();
            let ready = status
                .conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            let cooled = last_finished
                .get(&(ns.clone(), name.clone()))
                .is_none_or(|t| now.duration_since(*t).unwrap_or_default() >= st.cooldown);
            let free = ready
                && account_takes_work(ctx, &view, s)
                && status.phase == Some(SessionPhase::Idle)
                && status.pid.is_some()
                && !s.spec.suspend
                && s.metadata.deletion_timestamp.is_none()
                && !busy.contains(&(ns.clone(), name.clone()))
                && cooled;
            Candidate {
                key: key_of_session(&ns, &name),
                labels: s.metadata.labels.clone().unwrap_or_default(),
                workdir: norm(&s.spec.workdir),
                free,
            }
        })
        .collect();
    // A replay whose session is gone (or going) may run anywhere.
    for t in &view.tasks {
        if let Some(name) = t.status.as_ref().and_then(|s| s.replay_on.as_ref())
            && phase(t) == TaskPhase::Pending
            && !view.sessions.iter().any(|s| {
                s.metadata.name.as_ref() == Some(name)
                    && s.metadata.namespace == t.metadata.namespace
                    && s.metadata.deletion_timestamp.is_none()
                    && !s.spec.suspend
            })
        {
            let mut s = t.status.clone().unwrap_or_default();
            s.replay_on = None;
            write(ctx, t, s)?;
        }
    }
    let mut pending: Vec<&Task> = view
        .tasks
        .iter()
        .filter(|t| phase(t) == TaskPhase::Pending && t.metadata.deletion_timestamp.is_none())
        .collect();
    pending.sort_by(|a, b| queue_order(a, b));
    let mut next = if in_flight {
        Duration::from_millis(500)
    } else {
        Duration::from_secs(5)
    };
    // Cooldowns end without an event: wake then.
    if let Some(wait) = last_finished
        .values()
        .filter_map(|t| (*t + st.cooldown).duration_since(now).ok())
        .filter(|d| !d.is_zero())
        .min()
        && !pending.is_empty()
    {
        next = next.min(wait);
    }
    for (ti, si) in assign(&pending, &candidates) {
        let task = pending[ti];
        let sess = view
            .sessions
            .iter()
            .find(|s| {
                s.metadata.name.as_deref() == Some(&candidates[si].key.name)
                    && s.metadata.namespace.as_deref() == Some(&candidates[si].key.namespace)
            })
            .expect("candidates come from the sessions");
        deliver(ctx, st, mem, task, sess).await?;
        next = Duration::from_millis(200);
    }
    Ok(next)
}

fn record(ctx: &Context, key: &ObjectKey, warning: bool, reason: &str, message: &str) {
    super::record(ctx, key, warning, reason, message, "task-controller");
}

/// Whether the account a session runs on may take work now: not being
/// left (a swap under way), not exhausted, unauthenticated or suspended;
/// and when the session's last turn hit a usage limit, only once the
/// account controller has seen that limit and the account came back
/// (otherwise a task requeued by the limit would go straight back into the
/// same limit before the account is marked).
fn account_takes_work(ctx: &Context, v: &View, s: &Session) -> bool {
    use crate::api::AccountPhase;
    let ns = s.metadata.namespace.clone().unwrap_or_default();
    let key = key_of_session(&ns, s.metadata.name.as_deref().unwrap_or_default());
    if super::failover::Placement::effective(&ctx.settings.state_dir, &key, s)
        .is_some_and(|p| p.swapping())
    {
        return false;
    }
    let Some(name) = s.status.as_ref().and_then(|st| st.account.clone()) else {
        return true;
    };
    let Some(account) = v.accounts.get(&ns).and_then(|all| {
        all.iter()
            .find(|a| a.metadata.name.as_deref() == Some(&name))
    }) else {
        return true;
    };
    let status = account.status.clone().unwrap_or_default();
    if !matches!(
        status.phase,
        None | Some(AccountPhase::Available | AccountPhase::NearLimit)
    ) {
        return false;
    }
    let sig = ctx.signals.get(&key);
    let cut_short = sig.last_failure.as_ref().and_then(|(error, _, at)| {
        (error == "rate_limit"
            && sig.prompts.last().is_none_or(|(_, p)| at >= p)
            && sig.last_stop.as_ref().is_none_or(|(_, s)| at >= s))
        .then_some(*at)
    });
    match cut_short {
        None => true,
        Some(at) => {
            let at_secs = at
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs() as i64;
            status.conditions.iter().any(|c| {
                c.type_ == "Available"
                    && c.status == "True"
                    && c.last_transition_time.0.as_second() > at_secs
            })
        }
    }
}

/// Writes a task's status, unless it changed under us (then the next pass
/// decides again). Returns whether it was written. The sessions involved
/// are woken, so their `currentTask` follows at once.
fn write(ctx: &Context, t: &Task, status: TaskStatus) -> Result<bool, Error> {
    write_as(ctx, t, status, Durability::Now)
}

/// [`write`], choosing when it reaches the disk: a task's progress that the
/// agent's own records tell again after a crash (its confirmation) need not
/// hold up the agent that is starting on it.
fn write_as(
    ctx: &Context,
    t: &Task,
    status: TaskStatus,
    durability: Durability,
) -> Result<bool, Error> {
    let mut next = t.clone();
    next.status = Some(status);
    let api = ctx.store.api::<Task>(t.metadata.namespace.as_deref());
    written(ctx, t, &next, api.replace_status_as(&next, durability))
}

/// The outcome of writing `next` over `t`: the sessions involved (before
/// and after) are woken, so their `currentTask` follows at once; a
/// conflict or a task gone is "not written" (the next pass decides again).
fn written<T>(
    ctx: &Context,
    t: &Task,
    next: &Task,
    result: Result<T, StoreError>,
) -> Result<bool, Error> {
    match result {
        Ok(_) => {
            let ns = t.metadata.namespace.clone().unwrap_or_default();
            for task in [t, next] {
                if let Some(s) = task.status.as_ref().and_then(|s| s.session.as_deref()) {
                    ctx.signals.poke(&key_of_session(&ns, s));
                }
            }
            Ok(true)
        }
        Err(StoreError::Conflict { .. }) | Err(StoreError::NotFound(_)) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

fn release(ctx: &Context, t: &Task) -> Result<(), Error> {
    let api = ctx.store.api::<Task>(t.metadata.namespace.as_deref());
    match api.set_finalizer(
        t.metadata.name.as_deref().unwrap_or_default(),
        FINALIZER,
        false,
    ) {
        Ok(_) | Err(StoreError::NotFound(_)) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

async fn deliver(
    ctx: &Context,
    st: &DispatchSettings,
    mem: &mut Memory,
    t: &Task,
    s: &Session,
) -> Result<(), Error> {
    let key = key_of_task(t);
    let api = ctx.store.api::<Task>(t.metadata.namespace.as_deref());
    let session_name = s.metadata.name.clone().unwrap_or_default();
    let Some(pid) = s.status.as_ref().and_then(|x| x.pid) else {
        return Ok(());
    };
    let Some((pane, screen)) = ctx
        .tmux
        .pane_and_screen(&super::session::tmux_name(&key_of_session(
            &key.namespace,
            &session_name,
        )))
        .await?
    else {
        return Ok(());
    };
    if pane.dead || pane.pid != pid {
        return Ok(()); // the session controller will catch up first
    }
    // The session's status may lag behind the agent: its own state file,
    // read now, must agree that it is idle (text typed into a busy agent
    // would be queued, not submitted).
    let accounts = ctx
        .store
        .api::<Account>(s.metadata.namespace.as_deref())
        .list()?;
    if let Some(pidf) = crate::agent::state::read_pid_file(&config_dir(s, &accounts), pid)
        && pidf.status != "idle"
    {
        return Ok(());
    }
    // The composer must be on screen and empty: text typed into anything
    // else (a dialog, a half-typed line, a UI still starting) goes astray.
    let empty = crate::agent::screen::composer_text(&screen).is_some_and(|t| t.is_empty());
    if !empty && !wait_composer_empty(ctx, &pane.id, Duration::from_secs(2)).await? {
        // A `/model` switch typed by a daemon that died before its Enter:
        // finish it. Anything else there is someone's typing: leave it.
        let screen = ctx.tmux.capture(&pane.id, false).await?;
        let leftover = crate::agent::screen::composer_text(&screen).unwrap_or_default();
        if leftover.starts_with("/model ") && !leftover.contains('\n') {
            ctx.tmux.send_keys(&pane.id, &["Enter"]).await?;
        } else if !leftover.is_empty() {
            tracing::debug!(session = %session_name, "composer not empty: not typing a task into it");
        }
        return Ok(());
    }
    let model = model_for(t, st);
    // 1. The model, when the agent runs another one (the statusLine feed
    //    says which; else what it was launched or last switched with). A
    //    local command: nothing is sent to the API, nothing to deliver once.
    let running = sig_model(ctx, &key_of_session(&key.namespace, &session_name))
        .or_else(|| mem.models.get(&pid).cloned())
        .or_else(|| s.spec.agent.model.clone());
    if let Some(m) = &model
        && !running.as_deref().is_some_and(|r| r.contains(m.as_str()))
    {
        type_then_enter(ctx, &pane.id, &format!("/model {m}")).await?;
        // Taken when the composer is empty again; an Enter the UI missed
        // is sent once more.
        let mut taken = wait_composer_empty(ctx, &pane.id, Duration::from_secs(3)).await?;
        if !taken {
            ctx.tmux.send_keys(&pane.id, &["Enter"]).await?;
            taken = wait_composer_empty(ctx, &pane.id, Duration::from_secs(3)).await?;
        }
        if !taken {
            record(
                ctx,
                &key,
                true,
                "ModelSwitchFailed",
                &format!("session {session_name} did not take `/model {m}`; will try again"),
            );
            return Ok(());
        }
        mem.models.insert(pid, m.clone());
    }
    let marker = format!("{:08x}", uuid::Uuid::new_v4().as_u128() as u32);
    let mut status = t.status.clone().unwrap_or_default();
    status.phase = Some(TaskPhase::Dispatched);
    status.session = Some(session_name.clone());
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
    // 2. The intent, durable before anything is typed, with the finalizer
    //    (a delete from now on waits for us), in one write: the task as
    //    this pass saw it, or nothing.
    let mut next = t.clone();
    next.status = Some(status.clone());
    let result = api.add_finalizer_with_status(&next, FINALIZER);
    let deleted = matches!(result, Ok(None));
    if !written(ctx, t, &next, result)? || deleted {
        return Ok(());
    }
    mem.dispatched.insert(key.clone(), SystemTime::now());
    // 3. The prompt and its marker in ONE tmux command (a crash leaves all
    //    of it in the composer or none of it), then Enter.
    let text = format!("{}{}", t.spec.prompt.trim_end(), marker_text(&marker));
    type_then_enter(ctx, &pane.id, &text).await?;
    mem.submitted = Some(tokio::time::Instant::now());
    mem.typed.insert(key.clone(), SystemTime::now());
    if let Some(file) = t
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(INBOX_FILE))
    {
        crate::inbox::mark_dispatched(Path::new(file), &key.name, &marker);
    }
    record(
        ctx,
        &key,
        false,
        "Dispatched",
        &format!(
            "{} session {session_name} (attempt {}{})",
            if replay { "replayed in" } else { "typed into" },
            status.attempts.unwrap_or(1),
            model.map(|m| format!(", model {m}")).unwrap_or_default()
        ),
    );
    Ok(())
}

/// The model the agent says it runs (statusLine input), lower-case.
fn sig_model(ctx: &Context, session: &ObjectKey) -> Option<String> {
    let (input, _) = ctx.signals.get(session).statusline?;
    let id = input
        .pointer("/model/id")
        .and_then(serde_json::Value::as_str)?;
    Some(id.to_ascii_lowercase())
}

/// Types `text`, waits (bounded) until the composer shows something, then
/// presses Enter: an Enter that arrives before the UI has taken the text is
/// lost or, worse, submits half of it.
pub(crate) async fn type_then_enter(ctx: &Context, pane: &str, text: &str) -> Result<(), Error> {
    ctx.tmux.send_text(pane, text).await?;
    // The settle Claude Code needs runs from the typing. One look near its
    // end (more, only if the text is not there yet): looking while the
    // agent takes the text in would compete with it for the CPU.
    let settled = tokio::time::Instant::now() + Duration::from_millis(100);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    tokio::time::sleep_until(settled - Duration::from_millis(15)).await;
    loop {
        let screen = ctx.tmux.capture(pane, false).await?;
        if crate::agent::screen::composer_text(&screen).is_some_and(|t| !t.is_empty())
            || tokio::time::Instant::now() >= deadline
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep_until(settled).await;
    ctx.tmux.send_keys(pane, &["Enter"]).await?;
    Ok(())
}

/// Waits until the composer is on screen and empty (bounded); false if
/// it never was.
pub(crate) async fn wait_composer_empty(
    ctx: &Context,
    pane: &str,
    limit: Duration,
) -> Result<bool, Error> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let screen = ctx.tmux.capture(pane, false).await?;
        if crate::agent::screen::composer_text(&screen).is_some_and(|t| t.is_empty()) {
            return Ok(true);
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Back to the queue (`rewind`: the attempt never reached the agent).
fn requeue(ctx: &Context, t: &Task, why: &str, rewind: bool) -> Result<(), Error> {
    requeue_on(ctx, t, why, rewind, None)
}

/// Back to the queue, to be replayed on session `replay_on` (the same
/// conversation) once it can take it; the attempt does not count.
fn requeue_on(
    ctx: &Context,
    t: &Task,
    why: &str,
    rewind: bool,
    replay_on: Option<&str>,
) -> Result<(), Error> {
    let mut s = t.status.clone().unwrap_or_default();
    s.replay_on = replay_on.map(str::to_string);
    s.phase = Some(TaskPhase::Pending);
    s.session = None;
    s.session_pid = None;
    s.marker = None;
    s.message = Some(why.to_string());
    if rewind {
        s.attempts = Some(s.attempts.unwrap_or(1).saturating_sub(1));
    }
    if write(ctx, t, s)? {
        record(ctx, &key_of_task(t), false, "Requeued", why);
    }
    Ok(())
}

fn finish(ctx: &Context, t: &Task, phase: TaskPhase, message: &str) -> Result<(), Error> {
    let mut s = t.status.clone().unwrap_or_default();
    s.phase = Some(phase);
    s.finished_at = Some(crate::api::now());
    s.message = Some(message.to_string());
    if write(ctx, t, s)? {
        let (warn, reason) = match phase {
            TaskPhase::Succeeded => (false, "Succeeded"),
            TaskPhase::Cancelled => (false, "Cancelled"),
            _ => (true, "Failed"),
        };
        record(ctx, &key_of_task(t), warn, reason, message);
        if let Some(file) = t
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(INBOX_FILE))
        {
            crate::inbox::mark_finished(Path::new(file), phase == TaskPhase::Succeeded, message);
        }
    }
    Ok(())
}

/// Failed for good, or back to the queue while attempts remain.
fn retry_or_fail(ctx: &Context, st: &DispatchSettings, t: &Task, why: &str) -> Result<(), Error> {
    let attempts = t.status.as_ref().and_then(|s| s.attempts).unwrap_or(1);
    let max = t.spec.max_attempts.unwrap_or(st.max_attempts);
    if attempts >= max {
        finish(
            ctx,
            t,
            TaskPhase::Failed,
            &format!("{why} (attempt {attempts} of {max})"),
        )
    } else {
        requeue(ctx, t, why, false)
    }
}

async fn progress(
    ctx: &Context,
    st: &DispatchSettings,
    mem: &mut Memory,
    v: &View,
    t: &Task,
) -> Result<(), Error> {
    let key = key_of_task(t);
    let status = t.status.clone().unwrap_or_default();
    let marker = status.marker.clone().unwrap_or_default();
    let Some(sess) = session_of(v, t) else {
        return requeue(ctx, t, "its session is gone", false);
    };
    let ns = key.namespace.clone();
    let skey = key_of_session(&ns, sess.metadata.name.as_deref().unwrap_or_default());
    let sig = ctx.signals.get(&skey);
    let sstatus = sess.status.clone().unwrap_or_default();
    let same_agent = sstatus.pid.is_some() && sstatus.pid == status.session_pid;
    let accounts = v.accounts.get(&ns).cloned().unwrap_or_default();
    let now = SystemTime::now();
    match phase(t) {
        TaskPhase::Dispatched => {
            let dispatched = status
                .dispatched_at
                .as_ref()
                .map(system_time)
                .unwrap_or(now);
            let hooked = sig
                .prompts
                .iter()
                .find(|(p, _)| !marker.is_empty() && p.contains(&marker))
                .map(|(_, at)| *at);
            let age = now.duration_since(dispatched).unwrap_or_default();
            // The hook normally arrives within milliseconds; the history is
            // the witness when it cannot have reached us (a crash).
            let from_history = if hooked.is_none() && age >= Duration::from_secs(2) {
                in_history(&config_dir(sess, &accounts), &marker)
            } else {
                None
            };
            if let Some(at) = hooked.or(from_history) {
                let mut s = status.clone();
                s.phase = Some(TaskPhase::Running);
                s.started_at = Some(time(at));
                if write_as(ctx, t, s, Durability::Soon)? {
                    mem.started.insert(key.clone(), at);
                    // Only dispatches this process made: after a restart the
                    // time since the intent includes the daemon's absence.
                    mem.typed.remove(&key);
                    if let Some(intent) = mem.dispatched.remove(&key) {
                        crate::metrics::metrics()
                            .dispatch_latency_seconds
                            .observe(at.duration_since(intent).unwrap_or_default().as_secs_f64());
                    }
                    let how = if hooked.is_some() {
                        "the agent's UserPromptSubmit hook"
                    } else {
                        "the agent's prompt history"
                    };
                    record(
                        ctx,
                        &key,
                        false,
                        "Confirmed",
                        &format!("received by session {} ({how})", skey.name),
                    );
                }
                return Ok(());
            }
            if !same_agent {
                return requeue(
                    ctx,
                    t,
                    "the session's agent restarted before it received the task",
                    true,
                );
            }
            // Since the text went in (after a restart of the daemon, only
            // the intent's time is known).
            let since_typed = mem
                .typed
                .get(&key)
                .map(|at| now.duration_since(*at).unwrap_or_default())
                .unwrap_or(age);
            if since_typed < Duration::from_secs(3) {
                return Ok(());
            }
            // Not confirmed after a while: is the text still in the composer?
            let pane = ctx.tmux.pane(&super::session::tmux_name(&skey)).await?;
            let Some(pane) = pane.filter(|p| !p.dead) else {
                return requeue(ctx, t, "the session's agent is gone", true);
            };
            let screen = ctx.tmux.capture(&pane.id, false).await?;
            match crate::agent::screen::composer_text(&screen) {
                // Our text waits there (only tasks are typed into a pool
                // session): submit it, never type it again.
                Some(text) if !text.is_empty() => {
                    let last = mem
                        .enter_sent
                        .get(&key)
                        .copied()
                        .unwrap_or(SystemTime::UNIX_EPOCH);
                    if now.duration_since(last).unwrap_or_default() >= Duration::from_secs(3) {
                        ctx.tmux.send_keys(&pane.id, &["Enter"]).await?;
                        mem.enter_sent.insert(key.clone(), now);
                        record(
                            ctx,
                            &key,
                            false,
                            "EnterResent",
                            "the prompt was still in the composer: sent Enter again (not the text)",
                        );
                    }
                }
                // An empty composer and no trace in the history: the text
                // never arrived (the daemon died before typing it).
                // (An agent busy with a turn has taken it: its hook is late.)
                Some(_)
                    if since_typed > Duration::from_secs(6)
                        && crate::agent::state::read_pid_file(
                            &config_dir(sess, &accounts),
                            pane.pid,
                        )
                        .is_none_or(|p| p.status == "idle") =>
                {
                    return requeue(ctx, t, "the typed text never reached the agent", true);
                }
                _ => {}
            }
            Ok(())
        }
        TaskPhase::Running => {
            let started = match mem.started.get(&key) {
                Some(t) => *t,
                None => {
                    let precise = in_history(&config_dir(sess, &accounts), &marker)
                        .or_else(|| status.started_at.as_ref().map(system_time))
                        .unwrap_or(now);
                    mem.started.insert(key.clone(), precise);
                    precise
                }
            };
            if !same_agent {
                // Stopped by a failover: not the task's fault either.
                if let Some(p) = super::failover::Placement::load(&ctx.settings.state_dir, &skey)
                    && SystemTime::UNIX_EPOCH + Duration::from_millis(p.at) >= started
                {
                    return requeue_on(
                        ctx,
                        t,
                        &format!(
                            "interrupted by a failover from {} to {}",
                            p.from.as_deref().unwrap_or("?"),
                            p.account
                        ),
                        true,
                        Some(&skey.name),
                    );
                }
                return retry_or_fail(ctx, st, t, "the session's agent exited during the task");
            }
            if let Some((reply, at)) = &sig.last_stop
                && *at >= started
            {
                return finish(ctx, t, TaskPhase::Succeeded, &short(reply, 200));
            }
            if let Some((error, message, at)) = &sig.last_failure
                && *at >= started
            {
                if error == "rate_limit" {
                    // Not the task's fault: replayed in the same conversation
                    // once the session is on an account with room (a failover,
                    // or the window's reset).
                    return requeue_on(
                        ctx,
                        t,
                        &format!("usage limit: {}", short(message, 160)),
                        true,
                        Some(&skey.name),
                    );
                }
                return retry_or_fail(
                    ctx,
                    st,
                    t,
                    &format!("the turn failed: {error}: {}", short(message, 160)),
                );
            }
            let timeout = t
                .spec
                .timeout_seconds
                .map(Duration::from_secs)
                .unwrap_or(st.default_timeout);
            if now.duration_since(started).unwrap_or_default() > timeout {
                if let Some(pane) = ctx.tmux.pane(&super::session::tmux_name(&skey)).await? {
                    ctx.tmux.send_keys(&pane.id, &["Escape"]).await?;
                }
                return retry_or_fail(
                    ctx,
                    st,
                    t,
                    &format!("timed out after {}s", timeout.as_secs()),
                );
            }
            // The turn ended without a Stop hook reaching us: either the
            // daemon was down when the prompt and its end happened (no hook
            // of this task here at all), or the Stop hook was lost. The
            // agent's own state file says it has been idle since.
            let hook_seen = sig.prompts.iter().any(|(p, _)| p.contains(&marker));
            if sstatus.phase == Some(SessionPhase::Idle)
                && let Some(pidf) = sstatus.pid.and_then(|pid| {
                    crate::agent::state::read_pid_file(&config_dir(sess, &accounts), pid)
                })
                && pidf.status == "idle"
                && pidf.modified > started
                && (!hook_seen
                    || now.duration_since(pidf.modified).unwrap_or_default()
                        > Duration::from_secs(10))
            {
                let why = if hook_seen {
                    "finished (its Stop hook never arrived; the agent has been idle since)"
                } else {
                    "finished while the daemon was away"
                };
                return finish(ctx, t, TaskPhase::Succeeded, why);
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Cancel or delete: interrupt the session if the task is on it.
async fn stop_task(ctx: &Context, v: &View, t: &Task, deleting: bool) -> Result<(), Error> {
    if matches!(phase(t), TaskPhase::Dispatched | TaskPhase::Running)
        && let Some(sess) = session_of(v, t)
    {
        let skey = key_of_session(
            t.metadata.namespace.as_deref().unwrap_or_default(),
            sess.metadata.name.as_deref().unwrap_or_default(),
        );
        if let Some(pane) = ctx.tmux.pane(&super::session::tmux_name(&skey)).await?
            && !pane.dead
        {
            ctx.tmux.send_keys(&pane.id, &["Escape"]).await?;
        }
    }
    let why = if deleting { "deleted" } else { "cancelled" };
    finish(ctx, t, TaskPhase::Cancelled, why)?;
    if deleting {
        release(ctx, t)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::TaskSpec;

    fn task(name: &str, prio: TaskPriority, created: i64) -> Task {
        let mut t = Task::new(
            name,
            TaskSpec {
                prompt: "p".into(),
                priority: prio,
                model: None,
                session: None,
                session_selector: None,
                workdir: None,
                timeout_seconds: None,
                max_attempts: None,
            },
        );
        t.metadata.namespace = Some("default".into());
        t.metadata.creation_timestamp = Some(crate::api::Time(
            k8s_openapi::jiff::Timestamp::from_second(created).unwrap(),
        ));
        t
    }

    fn cand(name: &str, labels: &[(&str, &str)], free: bool) -> Candidate {
        Candidate {
            key: key_of_session("default", name),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            workdir: PathBuf::from(format!("/w/{name}")),
            free,
        }
    }

    #[test]
    fn priority_then_age_and_one_task_per_session() {
        let mut tasks = [
            task("old-low", TaskPriority::Low, 1),
            task("new-critical", TaskPriority::Critical, 5),
            task("old-normal", TaskPriority::Normal, 2),
            task("new-normal", TaskPriority::Normal, 3),
        ];
        tasks.sort_by(queue_order);
        let names: Vec<_> = tasks
            .iter()
            .map(|t| t.metadata.name.clone().unwrap())
            .collect();
        assert_eq!(
            names,
            ["new-critical", "old-normal", "new-normal", "old-low"]
        );
        let refs: Vec<&Task> = tasks.iter().collect();
        let sessions = [
            cand("a", &[], true),
            cand("b", &[], false),
            cand("c", &[], true),
        ];
        assert_eq!(assign(&refs, &sessions), [(0, 0), (1, 2)]);
    }

    #[test]
    fn targeting() {
        let mut t = task("t", TaskPriority::Normal, 1);
        t.spec.session = Some("b".into());
        assert!(!eligible(&t, &cand("a", &[], true)));
        assert!(eligible(&t, &cand("b", &[], true)));
        let mut t = task("t", TaskPriority::Normal, 1);
        t.spec.session_selector = Some(crate::api::LabelSelector {
            match_labels: Some([("project".to_string(), "api".to_string())].into()),
            match_expressions: None,
        });
        assert!(eligible(&t, &cand("a", &[("project", "api")], true)));
        assert!(!eligible(&t, &cand("b", &[("project", "web")], true)));
        let mut t = task("t", TaskPriority::Normal, 1);
        t.spec.workdir = Some("/w/c".into());
        assert!(eligible(&t, &cand("c", &[], true)));
        assert!(!eligible(&t, &cand("a", &[], true)));
        let s = DispatchSettings::default();
        assert_eq!(
            model_for(&task("t", TaskPriority::Critical, 1), &s).as_deref(),
            Some("opus")
        );
        assert_eq!(
            model_for(&task("t", TaskPriority::Low, 1), &s).as_deref(),
            Some("sonnet")
        );
    }
}

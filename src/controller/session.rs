//! The session controller: keeps each Session's agent alive in tmux under
//! the right account.
//!
//! A reconcile observes (tmux pane, the agent's signals, the account
//! objects), asks the pure [`plan`] what to do, executes the steps, and
//! writes status and conditions. Conditions: `AgentAlive` (the process
//! runs) and `Ready` (at its prompt, idle or working), reasons in CamelCase.

use super::Context;
use super::runtime::{Runtime, settings_path, unix_now};
use crate::agent::launch::{self, LaunchInput};
use crate::agent::screen::{self, Screen};
use crate::agent::seed;
use crate::agent::state::{self, AgentState};
use crate::api::{Account, ObjectKey, Session, SessionPhase, set_condition};
use crate::daemon::http::agent_path;
use crate::fsutil::expand_home;
use crate::store::StoreError;
use crate::tmux::{NewSession, Pane, Tmux, TmuxError};
use kube::runtime::controller::Action;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Held by every Session the controller manages: deleting one stops its
/// agent and cleans up before the object goes.
pub const FINALIZER: &str = "claude-failover.io/session";

/// Set (by `restart` or the API) to a fresh timestamp to restart a
/// Session's agent: each new value restarts it once, gracefully, resuming
/// its conversation. Like `kubectl rollout restart`'s `restartedAt`.
pub const RESTART: &str = "claude-failover.io/restart-requested-at";

/// Asks for a restart of the Session `key`'s agent (see [`RESTART`]) and
/// records an event saying who asked.
pub fn request_restart(
    store: &crate::store::Store,
    key: &ObjectKey,
    source: &str,
) -> Result<(), StoreError> {
    let when = serde_json::to_value(k8s_openapi::jiff::Timestamp::now().to_string())
        .expect("time serializes");
    store.update_metadata(key, None, |m| {
        let ann = m
            .entry("annotations")
            .or_insert_with(|| serde_json::json!({}));
        if let Some(a) = ann.as_object_mut() {
            a.insert(RESTART.into(), when);
        }
    })?;
    store.record_event(
        key,
        false,
        "RestartRequested",
        &format!("restart requested through the {source}"),
        source,
    )
}

/// How long a stop waits for the agent's transcript to hold the turns it
/// took (see the stop step).
const TRANSCRIPT_WAIT: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Tmux(#[from] TmuxError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Per-session memory that need not survive a restart (screen debounce,
/// when the checkpoint was last written).
#[derive(Debug, Default, Clone)]
pub struct Memory {
    last_screen: Option<(Screen, Instant)>,
    checkpoint: Option<(u64, Instant)>,
}

/// The tmux session name of a Session.
pub fn tmux_name(key: &ObjectKey) -> String {
    if key.namespace == crate::api::DEFAULT_NAMESPACE {
        key.name.clone()
    } else {
        format!("{}_{}", key.namespace, key.name)
    }
}

/// The Session a tmux session name belongs to (see [`tmux_name`]).
pub fn key_of_tmux_name(name: &str) -> ObjectKey {
    match name.split_once('_') {
        Some((ns, n)) => ObjectKey::new(crate::api::Kind::Session, ns, n),
        None => ObjectKey::new(
            crate::api::Kind::Session,
            crate::api::DEFAULT_NAMESPACE,
            name,
        ),
    }
}

// ---------------------------------------------------------------- planning

#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    pub deleting: bool,
    pub has_finalizer: bool,
    pub suspend: bool,
    /// The latest restart request (the [`RESTART`] annotation).
    pub restart: Option<String>,
    /// The account to run under (None: Claude Code's default config), or
    /// why none can be used.
    pub account: Result<Option<String>, String>,
    /// A failover placed the session on `account`: switch even mid-turn
    /// (the failover controller already waited for the turn boundary).
    pub switch_now: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    /// The tmux pane; None when the tmux session is gone.
    pub pane: Option<Pane>,
    pub state: AgentState,
    /// From the runtime record: launched at least once.
    pub launched: bool,
    pub running_account: Option<String>,
    pub now: u64,
    pub next_start_at: u64,
    /// The restart request the running agent already answers to.
    pub restart_handled: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    AddFinalizer,
    /// A live agent with no record of ours: take it over as it is.
    Adopt,
    /// Stop the agent gracefully and remove its tmux session.
    Stop,
    /// Remove the tmux session of an agent that has exited.
    Clear,
    Launch,
    WaitBackoff(u64),
    /// Forget the session and release the finalizer.
    Cleanup,
    /// Running, nothing to change: report its state.
    Observe,
    /// Running under another account than desired and busy: switch at the
    /// end of the turn.
    WaitTurn,
    /// Cannot run: the reason.
    Blocked(String),
}

/// What to do, from what is wanted and what is seen. Pure.
pub fn plan(d: &Desired, o: &Observed) -> Vec<Step> {
    let alive = o.pane.as_ref().is_some_and(|p| !p.dead);
    let dead = o.pane.as_ref().is_some_and(|p| p.dead);
    let mut steps = Vec::new();
    if d.deleting {
        if alive {
            steps.push(Step::Stop);
        } else if dead {
            steps.push(Step::Clear);
        }
        steps.push(Step::Cleanup);
        return steps;
    }
    if !d.has_finalizer {
        steps.push(Step::AddFinalizer);
    }
    if d.suspend {
        if alive {
            steps.push(Step::Stop);
        } else if dead {
            steps.push(Step::Clear);
        }
        return steps;
    }
    if alive {
        if !o.launched {
            steps.push(Step::Adopt);
            return steps;
        }
        let wrong_account = matches!(&d.account, Ok(want) if *want != o.running_account);
        if restart_requested(d, o) {
            // Asked for: now, even mid-turn (a stuck agent is a reason to ask).
            steps.push(Step::Stop);
            steps.push(Step::Launch);
        } else if wrong_account {
            if o.state == AgentState::Busy && !d.switch_now {
                steps.push(Step::WaitTurn);
            } else {
                steps.push(Step::Stop);
                steps.push(Step::Launch);
            }
        } else {
            steps.push(Step::Observe);
        }
        return steps;
    }
    if dead {
        steps.push(Step::Clear);
    }
    match &d.account {
        Err(reason) => steps.push(Step::Blocked(reason.clone())),
        Ok(_) if o.launched && o.now < o.next_start_at && !restart_requested(d, o) => {
            steps.push(Step::WaitBackoff(o.next_start_at - o.now))
        }
        Ok(_) => steps.push(Step::Launch),
    }
    steps
}

/// A restart was asked for that the running agent has not answered yet.
fn restart_requested(d: &Desired, o: &Observed) -> bool {
    d.restart.is_some() && d.restart != o.restart_handled
}

fn account_phase(a: &Account) -> crate::api::AccountPhase {
    a.status.as_ref().and_then(|s| s.phase).unwrap_or_default()
}

/// Whether new work may start on `a`.
fn runnable(a: &Account) -> bool {
    use crate::api::AccountPhase::*;
    a.metadata.deletion_timestamp.is_none()
        && !a.spec.suspend
        && !matches!(account_phase(a), Exhausted | Unavailable | Suspended)
}

/// The account a Session should be launched under: its own if named and
/// runnable; else the one it ran under last (a failover moves it if that
/// one is in trouble); else the runnable one with the lowest priority
/// value (Available before NearLimit); when every account is exhausted,
/// one to wait on. No Accounts at all: Claude Code's default config.
pub fn pick_account(
    s: &Session,
    accounts: &[Account],
    last: Option<&str>,
) -> Result<Option<String>, String> {
    let find = |n: &str| {
        accounts
            .iter()
            .find(|a| a.metadata.name.as_deref() == Some(n))
    };
    let present = |a: &Account| a.metadata.deletion_timestamp.is_none() && !a.spec.suspend;
    if let Some(want) = &s.spec.account {
        match find(want) {
            None => return Err(format!("Account {want} not found")),
            Some(a) if runnable(a) => return Ok(Some(want.clone())),
            Some(_) => {}
        }
    }
    if let Some(a) = last.and_then(find).filter(|a| present(a)) {
        return Ok(a.metadata.name.clone());
    }
    if accounts.is_empty() {
        return Ok(None);
    }
    let key = |a: &&Account| {
        (
            account_phase(a) != crate::api::AccountPhase::Available,
            a.spec.priority,
            a.metadata.name.clone(),
        )
    };
    accounts
        .iter()
        .filter(|a| runnable(a))
        .min_by_key(key)
        .or_else(|| accounts.iter().filter(|a| present(a)).min_by_key(key))
        .map(|a| Some(a.metadata.name.clone().unwrap_or_default()))
        .ok_or_else(|| "no usable Account: every one is suspended".into())
}

/// The account a running Session should stay on: the one it runs under,
/// unless a person named another (runnable) one in its spec.
pub fn keep_account(s: &Session, accounts: &[Account], running: Option<&str>) -> Option<String> {
    if let Some(want) = &s.spec.account
        && accounts
            .iter()
            .any(|a| a.metadata.name.as_ref() == Some(want) && runnable(a))
    {
        return Some(want.clone());
    }
    running.map(str::to_string)
}

// --------------------------------------------------------------- execution

struct Report {
    phase: SessionPhase,
    alive: (bool, &'static str, String),
    ready: (bool, String, String),
    requeue: Duration,
}

fn camel(s: &str) -> String {
    s.split(['_', ' ', '-'])
        .filter(|w| !w.is_empty())
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect()
}

fn report_of(state: &AgentState, resync: Duration) -> Report {
    let alive = (true, "Running", String::new());
    let quick = Duration::from_millis(500);
    match state {
        AgentState::Starting => Report {
            phase: SessionPhase::Starting,
            alive,
            ready: (
                false,
                "Starting".into(),
                "the agent has not reached its prompt yet".into(),
            ),
            requeue: quick,
        },
        AgentState::Idle => Report {
            phase: SessionPhase::Idle,
            alive,
            ready: (true, "AgentIdle".into(), "waiting at the prompt".into()),
            requeue: resync,
        },
        // A turn can end with no hook at all (Esc, a cancel): the agent's
        // own state file says so, and nothing else wakes us to read it.
        AgentState::Busy => Report {
            phase: SessionPhase::Busy,
            alive,
            ready: (true, "AgentBusy".into(), "working on a turn".into()),
            requeue: resync.min(Duration::from_secs(5)),
        },
        AgentState::Waiting(w) => Report {
            phase: SessionPhase::Waiting,
            alive,
            ready: (
                false,
                format!("WaitingFor{}", camel(w)),
                format!("waiting for {}", w.replace('_', " ")),
            ),
            requeue: resync,
        },
        AgentState::Exited => Report {
            phase: SessionPhase::Starting,
            alive: (true, "Exiting", "the agent is ending its session".into()),
            ready: (false, "AgentExiting".into(), String::new()),
            requeue: quick,
        },
    }
}

async fn wait_gone(tmux: &Tmux, name: &str, limit: Duration) -> Result<bool, Error> {
    let deadline = Instant::now() + limit;
    loop {
        match tmux.pane(name).await? {
            None => return Ok(true),
            Some(p) if p.dead => return Ok(true),
            Some(_) => {}
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `/exit`, then SIGTERM, then SIGKILL, each with a deadline; then the
/// tmux session goes. Returns how it stopped.
async fn stop_agent(
    ctx: &Context,
    name: &str,
    pane: &Pane,
    busy: bool,
) -> Result<&'static str, Error> {
    let step = ctx.settings.stop_step;
    let signal = |sig: i32| {
        // SAFETY: kill(2) with a pid we launched and a valid signal number.
        unsafe { libc::kill(pane.pid as libc::pid_t, sig) };
    };
    let mut how = "exited after /exit";
    if busy {
        ctx.tmux.send_keys(&pane.id, &["Escape"]).await?;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    ctx.tmux.type_and_submit(&pane.id, "/exit").await?;
    if !wait_gone(&ctx.tmux, name, step).await? {
        signal(libc::SIGTERM);
        how = "stopped with SIGTERM";
        if !wait_gone(&ctx.tmux, name, step).await? {
            signal(libc::SIGKILL);
            how = "killed with SIGKILL";
            wait_gone(&ctx.tmux, name, step).await?;
        }
    }
    ctx.tmux.kill_session(name).await?;
    Ok(how)
}

/// Reads the agent's state from its signals, its pid file and, only when
/// those are silent (or a turn just failed), the debounced screen.
async fn observe_state(
    ctx: &Context,
    key: &ObjectKey,
    rt: &Runtime,
    pane: &Pane,
) -> Result<AgentState, Error> {
    let sig = ctx.signals.get(key);
    let config_dir = rt
        .config_dir
        .clone()
        .unwrap_or_else(|| crate::fsutil::home().join(".claude"));
    let pid = state::read_pid_file(&config_dir, pane.pid);
    let pushed_idle = matches!(
        sig.state.as_ref().map(|s| &s.0),
        Some(crate::daemon::signals::HookState::Idle)
    );
    let need_screen =
        (sig.state.is_none() && pid.is_none()) || (pushed_idle && sig.last_failure.is_some());
    let screen = if need_screen {
        let now = screen::classify(&ctx.tmux.capture(&pane.id, false).await?);
        let mut mem = ctx.memory.lock().expect("lock");
        let m = mem.entry(key.clone()).or_default();
        match m.last_screen {
            Some((prev, at)) if prev == now && at.elapsed() >= Duration::from_millis(300) => {
                Some(now)
            }
            Some((prev, _)) if prev == now => None,
            _ => {
                m.last_screen = Some((now, Instant::now()));
                None
            }
        }
    } else {
        None
    };
    Ok(state::fuse(sig.state.as_ref(), pid.as_ref(), screen))
}

/// Reads `CLAUDE_CONFIG_DIR` from a running process's environment.
fn process_config_dir(pid: u32) -> Option<PathBuf> {
    let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    env.split(|b| *b == 0)
        .find_map(|kv| kv.strip_prefix(b"CLAUDE_CONFIG_DIR="))
        .map(|v| PathBuf::from(String::from_utf8_lossy(v).into_owned()))
}

pub async fn reconcile(s: Arc<Session>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = s
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| crate::api::DEFAULT_NAMESPACE.into());
    let key = ObjectKey::new(
        crate::api::Kind::Session,
        &ns,
        s.metadata.name.as_deref().unwrap_or_default(),
    );
    let span = tracing::info_span!("reconcile", session = %key);
    let started = Instant::now();
    let r = tracing::Instrument::instrument(reconcile_inner(&s, &ctx, &key), span).await;
    crate::metrics::metrics().observe_reconcile(
        "session",
        started.elapsed().as_secs_f64(),
        r.is_err(),
    );
    r
}

async fn reconcile_inner(s: &Session, ctx: &Context, key: &ObjectKey) -> Result<Action, Error> {
    let api = ctx.store.api::<Session>(Some(&key.namespace));
    let state_dir = &ctx.settings.state_dir;
    let name = tmux_name(key);
    let mut rt = Runtime::load(state_dir, key);
    ctx.signals.register(key, &rt.secret);
    // A pane whose agent exited but was never reaped by tmux looks alive:
    // the process table says otherwise.
    let pane = ctx.tmux.pane(&name).await?.map(|mut p| {
        if !p.dead && super::process_gone(p.pid) {
            p.dead = true;
        }
        p
    });
    let accounts = ctx.store.api::<Account>(Some(&key.namespace)).list()?;
    let placement = super::failover::Placement::effective(state_dir, key, s).filter(|p| {
        accounts
            .iter()
            .any(|a| a.metadata.name.as_ref() == Some(&p.account))
    });
    let alive_agent = rt.launches > 0 && pane.as_ref().is_some_and(|p| !p.dead);
    let account = match &placement {
        Some(p) => Ok(Some(p.account.clone())),
        None if alive_agent => Ok(keep_account(s, &accounts, rt.account.as_deref())),
        None => pick_account(s, &accounts, rt.account.as_deref()),
    };
    let desired = Desired {
        deleting: s.metadata.deletion_timestamp.is_some(),
        has_finalizer: s
            .metadata
            .finalizers
            .iter()
            .flatten()
            .any(|f| f == FINALIZER),
        suspend: s.spec.suspend,
        restart: s
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(RESTART))
            .cloned(),
        account,
        switch_now: placement.as_ref().is_some_and(|p| p.swapping()),
    };
    let now = unix_now();
    let gone_or_dead = pane.as_ref().is_none_or(|p| p.dead);
    // A death not yet scheduled for restart: set its back-off now.
    if rt.launches > 0
        && gone_or_dead
        && rt.next_start_at <= rt.launched_at
        && !desired.suspend
        && !desired.deleting
    {
        rt.backoff_seconds = if now.saturating_sub(rt.launched_at) >= 300 {
            1
        } else {
            (rt.backoff_seconds * 2).clamp(1, ctx.settings.max_backoff.as_secs().max(1))
        };
        rt.next_start_at = now + rt.backoff_seconds;
        rt.save(state_dir, key)?;
    }
    let agent_state = match &pane {
        Some(p) if !p.dead && rt.launches > 0 => observe_state(ctx, key, &rt, p).await?,
        _ => AgentState::Starting,
    };
    let observed = Observed {
        pane: pane.clone(),
        state: agent_state.clone(),
        launched: rt.launches > 0,
        running_account: rt.account.clone(),
        now,
        next_start_at: rt.next_start_at,
        restart_handled: rt.restart_handled.clone(),
    };
    let steps = plan(&desired, &observed);
    let mut status = s.status.clone().unwrap_or_default();
    let generation = s.metadata.generation;
    let mut report = None;
    let mut deliberate_stop = false;
    for step in steps {
        match step {
            Step::AddFinalizer => {
                api.set_finalizer(&key.name, FINALIZER, true)?;
            }
            Step::Adopt => {
                let p = pane.as_ref().expect("planned for a live pane");
                let config_dir = process_config_dir(p.pid);
                rt.account = accounts
                    .iter()
                    .find(|a| {
                        config_dir.as_deref() == Some(expand_home(&a.spec.config_dir).as_path())
                    })
                    .and_then(|a| a.metadata.name.clone());
                rt.config_dir = config_dir;
                rt.launches = 1;
                rt.launched_at = now;
                rt.restart_handled = desired.restart.clone();
                rt.pid = Some(p.pid);
                rt.pane_id = Some(p.id.clone());
                rt.save(state_dir, key)?;
                record(
                    ctx,
                    key,
                    false,
                    "Adopted",
                    &format!("took over the running agent (pane {}, pid {})", p.id, p.pid),
                );
                report = Some(report_of(&AgentState::Starting, ctx.settings.resync));
            }
            Step::Stop => {
                let p = pane.as_ref().expect("planned for a live pane");
                let restarting = restart_requested(&desired, &observed);
                if restarting {
                    record(
                        ctx,
                        key,
                        false,
                        "Restarting",
                        "restart requested: stopping the agent and starting it again",
                    );
                }
                // Claude Code writes its transcript lazily: an agent that took
                // a turn and is stopped before the write leaves nothing to
                // resume, and the next launch would start a new conversation
                // (seen in CI under load). Give the write a moment (bounded).
                let sig = ctx.signals.get(key);
                if !sig.prompts.is_empty() || sig.last_stop.is_some() {
                    let deadline = tokio::time::Instant::now() + TRANSCRIPT_WAIT;
                    while !seed::transcript_resumable(
                        &ctx.settings.shared_projects,
                        &rt.agent_session_id,
                    ) && tokio::time::Instant::now() < deadline
                    {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
                // A turn or a dialog (a usage-limit one, say) is escaped first.
                let how = stop_agent(
                    ctx,
                    &name,
                    p,
                    matches!(agent_state, AgentState::Busy | AgentState::Waiting(_)),
                )
                .await?;
                deliberate_stop = true;
                record(ctx, key, false, "Stopped", &format!("agent {how}"));
            }
            Step::Clear => {
                let p = pane.as_ref().expect("planned for a dead pane");
                let mut why = match p.exit_status {
                    Some(code) => format!("agent exited with status {code}"),
                    None => "agent exited".into(),
                };
                // Its last words, for the event: why it exited is usually on screen.
                if let Ok(screen) = ctx.tmux.capture(&p.id, false).await {
                    let last: Vec<&str> = screen
                        .lines()
                        .map(str::trim)
                        .filter(|l| !l.is_empty() && !l.starts_with("Pane is dead"))
                        .collect();
                    let tail = last[last.len().saturating_sub(3)..].join(" | ");
                    if !tail.is_empty() {
                        why = format!("{why}: {tail}");
                    }
                }
                ctx.tmux.kill_session(&name).await?;
                if !deliberate_stop && !desired.suspend && !desired.deleting {
                    record(ctx, key, true, "AgentExited", &why);
                }
                status.pid = None;
            }
            Step::Launch => {
                let restart = rt.launches > 0 && !deliberate_stop;
                match launch(ctx, s, key, &mut rt, &accounts, &desired).await {
                    Ok((p, resumed)) => {
                        if restart {
                            rt.restarts += 1;
                            crate::metrics::metrics().session_restarts_total.inc();
                        }
                        // Any launch answers the restart requests made so far.
                        rt.restart_handled = desired.restart.clone();
                        rt.next_start_at = 0;
                        let verb = if deliberate_stop {
                            "Relaunched"
                        } else if restart {
                            "Restarted"
                        } else {
                            "Launched"
                        };
                        let under = rt
                            .account
                            .as_deref()
                            .map(|a| format!(" under account {a}"))
                            .unwrap_or_default();
                        let how = if resumed {
                            "resuming"
                        } else {
                            "new conversation"
                        };
                        record(
                            ctx,
                            key,
                            false,
                            verb,
                            &format!(
                                "agent started in pane {}{under} ({how} {})",
                                p.id, rt.agent_session_id
                            ),
                        );
                        report = Some(report_of(&AgentState::Starting, ctx.settings.resync));
                    }
                    Err(message) => {
                        rt.backoff_seconds = (rt.backoff_seconds * 2)
                            .clamp(1, ctx.settings.max_backoff.as_secs().max(1));
                        rt.next_start_at = now + rt.backoff_seconds;
                        record(ctx, key, true, "LaunchFailed", &message);
                        report = Some(Report {
                            phase: SessionPhase::Failed,
                            alive: (false, "LaunchFailed", message.clone()),
                            ready: (false, "LaunchFailed".into(), message),
                            requeue: Duration::from_secs(rt.backoff_seconds),
                        });
                    }
                }
                rt.save(state_dir, key)?;
            }
            Step::WaitBackoff(secs) => {
                let exited = pane.as_ref().and_then(|p| p.exit_status);
                let message = match (pane.is_some(), exited) {
                    (true, Some(c)) => {
                        format!("agent exited with status {c}; restarting in {secs}s")
                    }
                    (true, None) => format!("agent exited; restarting in {secs}s"),
                    (false, _) => format!("tmux session lost; restarting in {secs}s"),
                };
                let reason = if pane.is_some() {
                    "AgentExited"
                } else {
                    "TmuxSessionLost"
                };
                if pane.is_none() && status.phase != Some(SessionPhase::Starting) {
                    record(ctx, key, true, reason, "the tmux session is gone");
                }
                report = Some(Report {
                    phase: SessionPhase::Starting,
                    alive: (false, reason, message.clone()),
                    ready: (false, "BackOff".into(), message),
                    requeue: Duration::from_secs(secs),
                });
            }
            Step::Cleanup => {
                ctx.signals.unregister(key);
                ctx.memory.lock().expect("lock").remove(key);
                Runtime::remove(state_dir, key)?;
                api.set_finalizer(&key.name, FINALIZER, false)?;
                return Ok(Action::await_change());
            }
            Step::Observe => {
                let p = pane.as_ref().expect("planned for a live pane");
                rt.pid = Some(p.pid);
                rt.pane_id = Some(p.id.clone());
                // `/clear` starts a new conversation: follow it.
                if let Some(id) = ctx.signals.get(key).agent_session_id
                    && id != rt.agent_session_id
                {
                    rt.agent_session_id = id;
                    rt.save(state_dir, key)?;
                }
                report = Some(report_of(&agent_state, ctx.settings.resync));
            }
            Step::WaitTurn => {
                let mut r = report_of(&agent_state, ctx.settings.resync);
                r.requeue = Duration::from_millis(500);
                report = Some(r);
            }
            Step::Blocked(reason) => {
                report = Some(Report {
                    phase: SessionPhase::Pending,
                    alive: (false, "NotStarted", reason.clone()),
                    ready: (false, "AccountUnavailable".into(), reason),
                    requeue: ctx.settings.resync,
                });
            }
        }
    }
    let report = report.unwrap_or_else(|| {
        if desired.suspend {
            Report {
                phase: SessionPhase::Stopped,
                alive: (false, "Suspended", "spec.suspend is true".into()),
                ready: (false, "Suspended".into(), "spec.suspend is true".into()),
                requeue: ctx.settings.resync,
            }
        } else {
            report_of(&agent_state, ctx.settings.resync)
        }
    });
    let mut report = report;
    let running_on = accounts
        .iter()
        .find(|a| rt.account.is_some() && a.metadata.name == rt.account);
    if let Some(p) = placement.as_ref().filter(|p| p.swapping()) {
        report.phase = SessionPhase::Swapping;
        report.ready = (
            false,
            "Swapping".into(),
            format!(
                "moving from {} to {} (swap epoch {})",
                p.from.as_deref().unwrap_or("?"),
                p.account,
                p.epoch
            ),
        );
        report.requeue = report.requeue.min(Duration::from_millis(500));
    } else if let Some(a) = running_on
        && account_phase(a) == crate::api::AccountPhase::Exhausted
        && matches!(report.phase, SessionPhase::Idle | SessionPhase::Waiting)
    {
        let resets = a
            .status
            .as_ref()
            .and_then(|st| st.limit.as_ref())
            .and_then(|l| l.resets_at.as_ref())
            .map(|t| format!("; it resets at {}", t.0))
            .unwrap_or_default();
        report.phase = SessionPhase::Waiting;
        report.ready = (
            false,
            "QuotaExhausted".into(),
            format!(
                "account {} hit its usage limit and no other account is available{resets}",
                a.metadata.name.as_deref().unwrap_or_default()
            ),
        );
    }
    // Status: what runs now.
    let running = rt.launches > 0 && !desired.suspend && report.alive.0;
    {
        let mut pids = ctx.pids.lock().expect("lock");
        match (running, rt.pid) {
            (true, Some(pid)) => pids.insert(key.clone(), pid),
            _ => pids.remove(key),
        };
    }
    let t = crate::api::now();
    status.phase = Some(report.phase);
    status.account = if running { rt.account.clone() } else { None };
    status.agent_session_id = (rt.launches > 0).then(|| rt.agent_session_id.clone());
    status.pane_id = if running { rt.pane_id.clone() } else { None };
    status.pid = if running { rt.pid } else { None };
    status.restarts = Some(rt.restarts);
    status.last_swap = placement.as_ref().map(|p| crate::api::SwapStatus {
        epoch: p.epoch,
        from: p.from.clone(),
        to: p.account.clone(),
        reason: p.reason.clone(),
        state: p.state.clone(),
        started_at: crate::api::Time(crate::quota::jiff_of(
            std::time::UNIX_EPOCH + Duration::from_millis(p.at),
        )),
    });
    status.observed_generation = generation;
    // The task on this session, as the task controller recorded it.
    status.current_task = ctx
        .store
        .api::<crate::api::Task>(Some(&key.namespace))
        .list()?
        .into_iter()
        .find(|t| {
            t.status.as_ref().is_some_and(|st| {
                matches!(
                    st.phase,
                    Some(crate::api::TaskPhase::Dispatched | crate::api::TaskPhase::Running)
                ) && st.session.as_deref() == Some(key.name.as_str())
            })
        })
        .and_then(|t| t.metadata.name);
    if running && placement.as_ref().is_none_or(|p| !p.swapping()) {
        checkpoint(ctx, s, key, &rt, &status);
    }
    if let Ok(workdir) = std::fs::canonicalize(expand_home(&s.spec.workdir)) {
        crate::inbox::write_status(
            &workdir,
            &key.name,
            &report.phase.to_string(),
            status.current_task.as_deref(),
            status.account.as_deref(),
        );
    }
    if let Some(at) = ctx.signals.get(key).last_activity {
        status.last_activity = Some(crate::api::Time(
            k8s_openapi::jiff::Timestamp::try_from(at)
                .unwrap_or_else(|_| k8s_openapi::jiff::Timestamp::now()),
        ));
    }
    set_condition(
        &mut status.conditions,
        "AgentAlive",
        report.alive.0,
        report.alive.1,
        &report.alive.2,
        generation,
        t.clone(),
    );
    set_condition(
        &mut status.conditions,
        "Ready",
        report.ready.0,
        &report.ready.1,
        &report.ready.2,
        generation,
        t,
    );
    if s.status.as_ref() != Some(&status) {
        // What the agent is doing, observed again from the agent after any
        // crash (what must survive one, the conversation's id and the
        // account, is in the runtime record): it waits for the disk rather
        // than stall the agent's own writes.
        api.patch_status_as(&key.name, &status, crate::store::Durability::Soon)?;
        let before = s
            .status
            .as_ref()
            .and_then(|st| st.phase)
            .unwrap_or_default();
        if before != report.phase {
            // What it waits for, or why it failed; nothing that varies
            // more (repeats of one message fold into one event).
            let detail = match report.phase {
                SessionPhase::Waiting | SessionPhase::Failed => format!(": {}", report.ready.2),
                _ => String::new(),
            };
            record(
                ctx,
                key,
                report.phase == SessionPhase::Failed,
                "PhaseChanged",
                &format!("{before} → {}{detail}", report.phase),
            );
        }
    }
    Ok(Action::requeue(report.requeue))
}

fn record(ctx: &Context, key: &ObjectKey, warning: bool, reason: &str, message: &str) {
    super::record(ctx, key, warning, reason, message, "session-controller");
}

/// Rewrites the session's checkpoint when its agent said something new,
/// or when the last one is `checkpoint_every` old.
fn checkpoint(
    ctx: &Context,
    s: &Session,
    key: &ObjectKey,
    rt: &Runtime,
    status: &crate::api::SessionStatus,
) {
    let sig = ctx.signals.get(key);
    {
        let mut mem = ctx.memory.lock().expect("lock");
        let m = mem.entry(key.clone()).or_default();
        let due = m.checkpoint.is_none_or(|(count, at)| {
            count != sig.count || at.elapsed() >= ctx.settings.checkpoint_every
        });
        if !due {
            return;
        }
        m.checkpoint = Some((sig.count, Instant::now()));
    }
    let cp = super::checkpoint::Checkpoint {
        session: key.name.clone(),
        namespace: key.namespace.clone(),
        agent_session_id: rt.agent_session_id.clone(),
        account: rt.account.clone(),
        workdir: s.spec.workdir.clone(),
        current_task: status.current_task.clone(),
        at: super::checkpoint::unix_ms(std::time::SystemTime::now()),
        ..Default::default()
    }
    .from_signals(&sig);
    if let Err(e) = cp.save(&ctx.settings.state_dir, key) {
        tracing::warn!(session = %key, error = %e, "cannot write the checkpoint");
    }
}

/// Seeds the account, writes the settings file and starts the agent.
/// Returns its pane and whether it resumes a conversation.
async fn launch(
    ctx: &Context,
    s: &Session,
    key: &ObjectKey,
    rt: &mut Runtime,
    accounts: &[Account],
    desired: &Desired,
) -> Result<(Pane, bool), String> {
    let account_name = desired.account.clone()?;
    let account = account_name.as_ref().and_then(|n| {
        accounts
            .iter()
            .find(|a| a.metadata.name.as_ref() == Some(n))
    });
    let config_dir = account.map(|a| expand_home(&a.spec.config_dir));
    let workdir = expand_home(&s.spec.workdir);
    let workdir = std::fs::canonicalize(&workdir)
        .ok()
        .filter(|p| p.is_dir())
        .ok_or_else(|| format!("workdir {} does not exist", workdir.display()))?;
    let shared = &ctx.settings.shared_projects;
    if let Some(dir) = &config_dir {
        seed::seed_for_session(dir, &workdir, s, shared)
            .map_err(|e| format!("cannot prepare the account's config dir: {e}"))?;
    }
    let settings_file = settings_path(&ctx.settings.state_dir, key);
    // A new secret for each launch: a post from the agent being replaced
    // (a statusLine refresh racing its /exit, under the old account) is
    // refused instead of being taken for the new agent's.
    // Saved before the agent starts: a daemon dying next must know it.
    rt.secret = super::runtime::random_hex(24);
    rt.save(&ctx.settings.state_dir, key)
        .map_err(|e| format!("cannot save the session's runtime record: {e}"))?;
    ctx.signals.register(key, &rt.secret);
    let url = format!(
        "{}{}",
        ctx.settings.agent_base_url,
        agent_path(key, &rt.secret)
    );
    let settings = launch::settings(&url, &ctx.settings.exe, launch::bypasses_permissions(s));
    if let Some(d) = settings_file.parent() {
        std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
    }
    crate::fsutil::write_atomic(
        &settings_file,
        &serde_json::to_vec_pretty(&settings).expect("JSON"),
        Some(0o600),
        false,
    )
    .map_err(|e| format!("{}: {e}", settings_file.display()))?;
    crate::mcp::agent::prepare(
        &settings_file,
        s,
        key,
        &ctx.settings.agent_base_url,
        &rt.secret,
    )
    .map_err(|e| format!("cannot write the agent's MCP config: {e}"))?;
    let resume = seed::transcript_resumable(shared, &rt.agent_session_id);
    if !resume && rt.launches > 0 {
        // Nothing to continue (the agent died before Claude Code wrote any
        // message): a fresh conversation, under a fresh id.
        rt.agent_session_id = uuid::Uuid::new_v4().to_string();
    }
    let plan = launch::plan(&LaunchInput {
        session: s,
        config_dir: config_dir.as_deref(),
        settings_path: &settings_file,
        agent_session_id: &rt.agent_session_id,
        resume,
    });
    ctx.signals.reset(key);
    ctx.memory.lock().expect("lock").remove(key);
    let name = tmux_name(key);
    ctx.tmux
        .kill_session(&name)
        .await
        .map_err(|e| e.to_string())?;
    let pane = ctx
        .tmux
        .new_session(&NewSession {
            name: &name,
            cwd: &workdir,
            env: &plan.env,
            argv: &plan.argv,
            width: 200,
            height: 50,
        })
        .await
        .map_err(|e| format!("cannot start the tmux session: {e}"))?;
    rt.account = account_name;
    rt.config_dir = config_dir;
    rt.pid = Some(pane.pid);
    rt.pane_id = Some(pane.id.clone());
    rt.launches += 1;
    rt.launched_at = unix_now();
    Ok((pane, resume))
}

/// Requeue after a failed reconcile (store or tmux trouble).
pub fn error_policy(s: Arc<Session>, e: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(session = s.metadata.name.as_deref().unwrap_or_default(), error = %e, "reconcile failed; retrying");
    Action::requeue(Duration::from_secs(2))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pane(dead: bool) -> Pane {
        Pane {
            session: "a".into(),
            id: "%1".into(),
            pid: 10,
            dead,
            exit_status: dead.then_some(1),
        }
    }

    fn want(account: Option<&str>) -> Desired {
        Desired {
            deleting: false,
            has_finalizer: true,
            suspend: false,
            restart: None,
            account: Ok(account.map(str::to_string)),
            switch_now: false,
        }
    }

    fn seen(p: Option<Pane>, launched: bool, account: Option<&str>, state: AgentState) -> Observed {
        Observed {
            pane: p,
            state,
            launched,
            running_account: account.map(str::to_string),
            now: 100,
            next_start_at: 0,
            restart_handled: None,
        }
    }

    #[test]
    fn first_launch_restart_and_backoff() {
        assert_eq!(
            plan(
                &want(Some("a")),
                &seen(None, false, None, AgentState::Starting)
            ),
            [Step::Launch]
        );
        let mut d = want(Some("a"));
        d.has_finalizer = false;
        assert_eq!(
            plan(&d, &seen(None, false, None, AgentState::Starting)),
            [Step::AddFinalizer, Step::Launch]
        );
        assert_eq!(
            plan(
                &want(Some("a")),
                &seen(Some(pane(true)), true, Some("a"), AgentState::Starting)
            ),
            [Step::Clear, Step::Launch]
        );
        let mut o = seen(None, true, Some("a"), AgentState::Starting);
        o.next_start_at = 104;
        assert_eq!(plan(&want(Some("a")), &o), [Step::WaitBackoff(4)]);
    }

    #[test]
    fn running_agents_are_observed_adopted_or_switched() {
        let live = Some(pane(false));
        assert_eq!(
            plan(
                &want(Some("a")),
                &seen(live.clone(), true, Some("a"), AgentState::Idle)
            ),
            [Step::Observe]
        );
        assert_eq!(
            plan(
                &want(Some("a")),
                &seen(live.clone(), false, None, AgentState::Starting)
            ),
            [Step::Adopt]
        );
        assert_eq!(
            plan(
                &want(Some("b")),
                &seen(live.clone(), true, Some("a"), AgentState::Idle)
            ),
            [Step::Stop, Step::Launch]
        );
        assert_eq!(
            plan(
                &want(Some("b")),
                &seen(live, true, Some("a"), AgentState::Busy)
            ),
            [Step::WaitTurn]
        );
    }

    #[test]
    fn a_restart_request_is_answered_once() {
        let live = Some(pane(false));
        let mut d = want(Some("a"));
        d.restart = Some("2025-01-01T00:00:00.1Z".into());
        let mut o = seen(live.clone(), true, Some("a"), AgentState::Busy);
        assert_eq!(plan(&d, &o), [Step::Stop, Step::Launch], "even mid-turn");
        o.restart_handled = d.restart.clone();
        assert_eq!(plan(&d, &o), [Step::Observe], "answered");
        // Dead and backing off: a request skips the back-off.
        let mut o = seen(Some(pane(true)), true, Some("a"), AgentState::Starting);
        o.next_start_at = 130;
        assert_eq!(plan(&d, &o), [Step::Clear, Step::Launch]);
        o.restart_handled = d.restart.clone();
        assert_eq!(plan(&d, &o), [Step::Clear, Step::WaitBackoff(30)]);
        // Suspended: nothing to restart.
        d.suspend = true;
        assert_eq!(
            plan(&d, &seen(None, true, Some("a"), AgentState::Starting)),
            Vec::<Step>::new()
        );
    }

    #[test]
    fn suspend_delete_and_blocked() {
        let live = Some(pane(false));
        let mut d = want(Some("a"));
        d.suspend = true;
        assert_eq!(
            plan(&d, &seen(live.clone(), true, Some("a"), AgentState::Idle)),
            [Step::Stop]
        );
        assert_eq!(
            plan(&d, &seen(None, true, Some("a"), AgentState::Idle)),
            Vec::<Step>::new()
        );
        let mut d = want(Some("a"));
        d.deleting = true;
        assert_eq!(
            plan(&d, &seen(live, true, Some("a"), AgentState::Idle)),
            [Step::Stop, Step::Cleanup]
        );
        assert_eq!(
            plan(&d, &seen(None, true, None, AgentState::Idle)),
            [Step::Cleanup]
        );
        let d = Desired {
            account: Err("Account x not found".into()),
            ..want(None)
        };
        assert_eq!(
            plan(&d, &seen(None, false, None, AgentState::Starting)),
            [Step::Blocked("Account x not found".into())]
        );
    }

    #[test]
    fn account_choice() {
        use crate::api::AccountSpec;
        let acct = |n: &str, prio: i32, suspend: bool| {
            let mut a = Account::new(
                n,
                AccountSpec {
                    config_dir: format!("/a/{n}"),
                    priority: prio,
                    thresholds: Default::default(),
                    suspend,
                },
            );
            a.metadata.namespace = Some("default".into());
            a
        };
        let mut s = Session::new(
            "s",
            crate::api::SessionSpec {
                workdir: "/w".into(),
                account: Some("work".into()),
                agent: Default::default(),
                suspend: false,
            },
        );
        let accounts = vec![
            acct("work", 10, false),
            acct("spare", 20, false),
            acct("cheap", 5, true),
        ];
        assert_eq!(pick_account(&s, &accounts, None), Ok(Some("work".into())));
        s.spec.account = None;
        assert_eq!(
            pick_account(&s, &accounts, None),
            Ok(Some("work".into())),
            "lowest priority among usable"
        );
        s.spec.account = Some("cheap".into());
        assert_eq!(
            pick_account(&s, &accounts, None),
            Ok(Some("work".into())),
            "a suspended preference falls back"
        );
        s.spec.account = Some("nope".into());
        assert!(pick_account(&s, &accounts, None).is_err());
        s.spec.account = None;
        assert_eq!(pick_account(&s, &[], None), Ok(None));
        // It stays where it ran last, unless that account is suspended.
        assert_eq!(
            pick_account(&s, &accounts, Some("spare")),
            Ok(Some("spare".into()))
        );
        assert_eq!(
            pick_account(&s, &accounts, Some("cheap")),
            Ok(Some("work".into()))
        );
        // An exhausted account is passed over; with all exhausted, one waits.
        let mut tired = accounts.clone();
        tired[0].status = Some(crate::api::AccountStatus {
            phase: Some(crate::api::AccountPhase::Exhausted),
            ..Default::default()
        });
        assert_eq!(pick_account(&s, &tired, None), Ok(Some("spare".into())));
        tired[1].status = tired[0].status.clone();
        assert_eq!(pick_account(&s, &tired, None), Ok(Some("work".into())));
        // Running: it stays, unless its spec names another runnable account.
        assert_eq!(
            keep_account(&s, &accounts, Some("spare")),
            Some("spare".into())
        );
        s.spec.account = Some("work".into());
        assert_eq!(
            keep_account(&s, &accounts, Some("spare")),
            Some("work".into())
        );
        assert_eq!(
            keep_account(&s, &tired, Some("spare")),
            Some("spare".into())
        );
        assert_eq!(camel("permission_prompt"), "PermissionPrompt");
    }
}

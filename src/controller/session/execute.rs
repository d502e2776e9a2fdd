//! The session controller's side effects: carrying out the planned steps
//! through the agent driver (adopt, preflight, stop, clear, cleanup); a
//! start is [`super::start`]'s, the status written [`super::status`]'s.

use super::observe::{self, config_dir};
use super::plan::{self, Desired, Observed, Step};
use super::report::{self, Report};
use super::start::{launch_step, neighbours, wait_backoff};
use super::{Context, Error, private};
use crate::agent::seed;
use crate::agent::signals::AgentSignals;
use crate::agent::state::AgentState;
use crate::agent::terminal::Pane;
use crate::api::keys::{RESTART, SESSION_FINALIZER};
use crate::api::{
    Account, LaunchStatus, ObjectKey, RefusedPlacement, Session, SessionPhase, SessionStatus,
    SwapStatus, Time, set_condition,
};
use crate::fsutil::expand_home;
use std::time::{Duration, SystemTime};

/// How long a stop waits for the agent's transcript to hold the turns it
/// took (Claude Code writes it lazily).
const TRANSCRIPT_WAIT: Duration = Duration::from_secs(3);
/// How often the transcript is looked at meanwhile.
const TRANSCRIPT_POLL: Duration = Duration::from_millis(50);
/// How long a dead pane's exit status may lag behind its death: tmux marks
/// a pane dead when its output ends and learns the status when it reaps the
/// process, a moment later on a loaded machine.
const EXIT_STATUS_WAIT: Duration = Duration::from_secs(1);
/// How often the dead pane is looked at for its exit status meanwhile.
const EXIT_STATUS_POLL: Duration = Duration::from_millis(50);

pub enum Outcome {
    Report(Report),
    /// The session is gone (its finalizer released).
    Gone,
}

pub(super) fn time(t: SystemTime) -> Time {
    Time(crate::quota::jiff_of(t))
}

pub(super) fn system(t: &Time) -> SystemTime {
    SystemTime::from(t.0)
}

fn system_micro(t: &crate::api::MicroTime) -> SystemTime {
    SystemTime::from(t.0)
}

/// Makes sure posts from the running agent are heard: after a restart of
/// the daemon the secret is read back from the state dir.
pub async fn hear(ctx: &Context, key: &ObjectKey) {
    let sh = &ctx.shared;
    if sh.signals.registered(key) {
        return;
    }
    let (dir, k) = (sh.settings.state_dir.clone(), key.clone());
    if let Some(secret) = sh.blocking(move |_| private::load_secret(&dir, &k)).await {
        sh.signals.register(key, &secret);
    }
}

/// A death not yet scheduled for restart gets its back-off now.
pub fn schedule_restart(
    ctx: &Context,
    s: &Session,
    st: &mut SessionStatus,
    pane: Option<&Pane>,
    now: SystemTime,
) {
    let Some(launch) = &st.launch else { return };
    let gone_or_dead = pane.is_none_or(|p| p.dead);
    let launched_at = system_micro(&launch.at);
    let scheduled = st
        .next_start_at
        .as_ref()
        .is_some_and(|t| system(t) > launched_at);
    if st.launches.unwrap_or(0) == 0
        || !gone_or_dead
        || scheduled
        || s.spec.suspend
        || s.metadata.deletion_timestamp.is_some()
    {
        return;
    }
    let (secs, at) = plan::backoff(
        st.backoff_seconds.unwrap_or(0),
        launched_at,
        now,
        ctx.shared.settings.max_backoff,
    );
    st.backoff_seconds = Some(secs);
    st.next_start_at = Some(time(at));
}

/// What the planner sees, with the agent's news taken into `st`.
pub async fn observe(
    ctx: &Context,
    key: &ObjectKey,
    st: &mut SessionStatus,
    pane: Option<Pane>,
    accounts: &[&Account],
    now: SystemTime,
) -> Result<(Observed, AgentSignals), Error> {
    let sig = ctx.shared.signals.get(key);
    let ours = |p: &Pane| st.launches.unwrap_or(0) > 0 && st.pid == Some(p.pid);
    let live = pane.as_ref().filter(|p| !p.dead);
    let launched = live.is_some_and(ours);
    let mut state = AgentState::Starting;
    let mut settling = false;
    if let Some(p) = live.filter(|_| launched) {
        let pidf = observe::pid_file(ctx, config_dir(st, accounts), p.pid).await;
        state = observe::agent_state(ctx, key, p, &sig, pidf.as_ref()).await?;
        settling = crate::agent::state::settling(sig.state.as_ref(), pidf.as_ref(), now);
        observe::absorb(st, &sig, pidf.as_ref());
        agent_version(ctx, st, &sig, config_dir(st, accounts), p.pid).await;
    }
    let observed = Observed {
        launched: launched || (live.is_none() && st.launches.unwrap_or(0) > 0),
        running_account: st.launch.as_ref().and_then(|l| l.account.clone()),
        next_start_at: st.next_start_at.as_ref().map(system),
        restart_handled: st.restart_handled.clone(),
        standby_ready: None,
        takeover_overdue: false,
        settling,
        pane,
        state,
        now,
    };
    Ok((observed, sig))
}

/// The `AgentVersion` condition: the running Claude Code's release against
/// the supported range (from its statusLine input, else its state file).
async fn agent_version(
    ctx: &Context,
    st: &mut SessionStatus,
    sig: &AgentSignals,
    dir: std::path::PathBuf,
    pid: u32,
) {
    use crate::agent::version;
    let reported = sig
        .statusline
        .as_ref()
        .and_then(|(v, _)| version::reported(v).map(str::to_string));
    let reported = match reported {
        Some(v) => Some(v),
        None => {
            ctx.shared
                .blocking(move |_| version::of_pid_file(&dir, pid))
                .await
        }
    };
    if let Some(v) = reported {
        let (ok, reason, message) = version::Support::of(&v).condition();
        set_condition(
            &mut st.conditions,
            "AgentVersion",
            ok,
            reason,
            &message,
            None,
            crate::api::now(),
        );
    }
}

/// What is wanted of the session.
pub fn desired(
    s: &Session,
    st: &SessionStatus,
    accounts: &[&Account],
    placement: Option<&SwapStatus>,
    o: &Observed,
) -> Desired {
    let alive = o.launched && o.pane.as_ref().is_some_and(|p| !p.dead);
    let last = st.launch.as_ref().and_then(|l| l.account.as_deref());
    // A placement its controller refused (the target failed the preflight)
    // is not carried out; the failover controller rolls it back.
    let refused = |p: &SwapStatus| {
        st.refused_placement
            .as_ref()
            .is_some_and(|r| r.epoch == p.epoch && r.account == p.to)
    };
    let placement = placement.filter(|p| !refused(p));
    let account = match placement {
        Some(p) => Ok(Some(p.to.clone())),
        None if alive => Ok(plan::keep_account(s, accounts, last)),
        None => plan::pick_account(s, accounts, last),
    };
    Desired {
        deleting: s.metadata.deletion_timestamp.is_some(),
        has_finalizer: s
            .metadata
            .finalizers
            .iter()
            .flatten()
            .any(|f| f == SESSION_FINALIZER),
        suspend: s.spec.suspend,
        restart: s
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(RESTART))
            .cloned(),
        account,
        placed: placement.filter(|p| p.swapping()).map(|p| p.epoch),
    }
}

/// Carries out `steps` in order; the report of the last one that says
/// something.
pub async fn run(
    ctx: &Context,
    s: &Session,
    st: &mut SessionStatus,
    d: &Desired,
    o: &Observed,
    accounts: &[&Account],
    steps: Vec<Step>,
) -> Result<Outcome, Error> {
    let key = ObjectKey::of(s);
    let resync = ctx.shared.settings.resync;
    let mut report = None;
    let mut deliberate = false;
    // A standby takes over: the agent it replaces need not be waited for.
    let handoff = steps.contains(&Step::TakeOver);
    for step in steps {
        match step {
            Step::AddFinalizer => add_finalizer(ctx, &key).await?,
            Step::Adopt => report = Some(adopt(ctx, &key, st, d, o, accounts).await),
            Step::Preflight => {
                if let Err(why) = preflight(ctx, s, d, accounts).await {
                    refuse(ctx, &key, st, d, why).await;
                    report = Some(report::of_state(&o.state, resync));
                    break;
                }
            }
            Step::Stop => {
                stop(ctx, &key, st, d, o, handoff).await?;
                deliberate = true;
            }
            Step::Clear => clear(ctx, &key, st, d, o, deliberate).await?,
            Step::Launch => {
                report = Some(launch_step(ctx, s, st, d, accounts, deliberate).await);
            }
            Step::TakeOver => {
                report = Some(super::takeover::take_over_step(ctx, s, st, d, accounts).await);
            }
            Step::AbandonTakeover => {
                super::takeover::abandon(ctx, &key, st).await?;
                deliberate = true;
            }
            Step::WaitBackoff(secs) => report = Some(wait_backoff(ctx, &key, st, o, secs).await),
            Step::Cleanup => {
                super::takeover::discard(ctx, &key, st, "the session is deleted").await;
                super::workspace::release(ctx, s).await;
                cleanup(ctx, &key).await?;
                return Ok(Outcome::Gone);
            }
            Step::Observe => report = Some(report::of_state(&o.state, resync)),
            Step::WaitTurn => {
                let mut r = report::of_state(&o.state, resync);
                r.requeue = report::QUICK;
                report = Some(r);
            }
            Step::Blocked(reason) => {
                let mut r =
                    report::not_running(SessionPhase::Pending, "NotStarted", &reason, resync);
                r.ready.reason = "AccountUnavailable".into();
                report = Some(r);
            }
        }
    }
    Ok(Outcome::Report(report.unwrap_or_else(|| {
        if d.suspend {
            report::not_running(
                SessionPhase::Stopped,
                "Suspended",
                "spec.suspend is true",
                resync,
            )
        } else {
            report::of_state(&o.state, resync)
        }
    })))
}

async fn add_finalizer(ctx: &Context, key: &ObjectKey) -> Result<(), Error> {
    let k = key.clone();
    let obj = ctx
        .shared
        .blocking(move |store| {
            store
                .api::<Session>(Some(&k.namespace))
                .set_finalizer(&k.name, SESSION_FINALIZER, true)
        })
        .await?;
    if let Some(obj) = obj {
        ctx.shared.caches.sessions.wrote(obj);
    }
    Ok(())
}

async fn adopt(
    ctx: &Context,
    key: &ObjectKey,
    st: &mut SessionStatus,
    d: &Desired,
    o: &Observed,
    accounts: &[&Account],
) -> Report {
    let p = o.pane.as_ref().expect("planned for a live pane");
    let pid = p.pid;
    let dir = ctx
        .shared
        .blocking(move |_| crate::agent::driver::process_config_dir(pid))
        .await;
    let account = accounts
        .iter()
        .find(|a| dir.as_deref() == Some(expand_home(&a.spec.config_dir).as_path()))
        .and_then(|a| a.metadata.name.clone());
    st.launches = Some(st.launches.unwrap_or(0).max(1));
    st.launch = Some(LaunchStatus {
        account,
        at: crate::api::micro(o.now),
        resumed: false,
        epoch: None,
        confirmed_at: Some(crate::api::micro(o.now)),
        takeover: false,
    });
    st.restart_handled = d.restart.clone();
    st.pid = Some(p.pid);
    st.pane_id = Some(p.id.clone());
    ctx.record(
        key,
        false,
        "Adopted",
        &format!("took over the running agent (pane {}, pid {})", p.id, p.pid),
    )
    .await;
    report::of_state(&AgentState::Starting, ctx.shared.settings.resync)
}

/// The checks a placement's target must pass before the running agent is
/// stopped: its config dir seeded for the workdir, credentials present,
/// the conversation reachable from it.
async fn preflight(
    ctx: &Context,
    s: &Session,
    d: &Desired,
    accounts: &[&Account],
) -> Result<(), String> {
    let Ok(Some(target)) = d.account.clone() else {
        return Ok(());
    };
    let Some(acct) = accounts
        .iter()
        .find(|a| a.metadata.name.as_deref() == Some(target.as_str()))
    else {
        return Err(format!("account {target} is gone"));
    };
    let dir = expand_home(&acct.spec.config_dir);
    let shared = ctx.shared.settings.shared_projects.clone();
    let neighbours = neighbours(&ctx.shared, s);
    let s = s.clone();
    ctx.shared
        .blocking(move |_| seed::preflight(&dir, &s, &neighbours, &shared, &target))
        .await
}

async fn refuse(ctx: &Context, key: &ObjectKey, st: &mut SessionStatus, d: &Desired, why: String) {
    let (Some(epoch), Ok(Some(account))) = (d.placed, d.account.clone()) else {
        return;
    };
    ctx.record(
        key,
        true,
        "PreflightFailed",
        &format!("cannot move to {account}: {why}"),
    )
    .await;
    st.refused_placement = Some(RefusedPlacement {
        epoch,
        account,
        message: why,
    });
}

async fn stop(
    ctx: &Context,
    key: &ObjectKey,
    st: &SessionStatus,
    d: &Desired,
    o: &Observed,
    handoff: bool,
) -> Result<(), Error> {
    let p = o.pane.as_ref().expect("planned for a live pane");
    if plan::restart_requested(d, o) {
        ctx.record(
            key,
            false,
            "Restarting",
            "restart requested: stopping the agent and starting it again",
        )
        .await;
    }
    let sig = ctx.shared.signals.get(key);
    if let Some(id) = st.agent_session_id.clone()
        && (!sig.prompts.is_empty() || sig.last_stop.is_some())
    {
        wait_transcript(ctx, id).await;
    }
    // A turn or a dialog (a usage-limit one, say) is escaped first.
    let interrupt = matches!(o.state, AgentState::Busy | AgentState::Waiting(_));
    if handoff && !interrupt {
        // At its prompt, its transcript complete: it is killed and a
        // standby takes the conversation over (claude-code-probe.md,
        // section 12). A cut turn is waited for as before: the agent may
        // still write it.
        ctx.shared.driver.retire(key, p).await?;
        ctx.record(
            key,
            false,
            "Stopped",
            "agent stopped at its prompt (SIGKILL); a standby takes over",
        )
        .await;
        return Ok(());
    }
    let how = ctx.shared.driver.stop(key, p, interrupt).await?;
    ctx.record(key, false, "Stopped", &format!("agent {how}"))
        .await;
    Ok(())
}

/// Claude Code writes its transcript lazily: an agent that took a turn
/// and is stopped before the write leaves nothing to resume, and the next
/// launch would start a new conversation. Give the write a moment.
async fn wait_transcript(ctx: &Context, id: String) {
    let deadline = tokio::time::Instant::now() + TRANSCRIPT_WAIT;
    let shared = ctx.shared.settings.shared_projects.clone();
    loop {
        let (sh, i) = (shared.clone(), id.clone());
        let ready = ctx
            .shared
            .blocking(move |_| seed::transcript_resumable(&sh, &i))
            .await;
        if ready || tokio::time::Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep(TRANSCRIPT_POLL).await;
    }
}

/// What a dead pane shows, given up to [`EXIT_STATUS_WAIT`] to show
/// something (empty: it wrote nothing, or tmux has not read it yet).
async fn last_words(ctx: &Context, pane: &str) -> String {
    let socket = ctx.shared.driver.terminal().socket().to_path_buf();
    let deadline = tokio::time::Instant::now() + EXIT_STATUS_WAIT;
    loop {
        let text = crate::agent::exit::dead_pane_text(&socket, pane).await;
        let said = !crate::agent::exit::last_lines(&text).is_empty();
        if said || tokio::time::Instant::now() >= deadline {
            return text;
        }
        tokio::time::sleep(EXIT_STATUS_POLL).await;
    }
}

/// The exit status of the session's dead pane, once tmux has it.
async fn exit_status(ctx: &Context, key: &ObjectKey) -> Option<i32> {
    let deadline = tokio::time::Instant::now() + EXIT_STATUS_WAIT;
    loop {
        let pane = ctx.shared.driver.pane(key).await.ok().flatten()?;
        if pane.exit_status.is_some() || tokio::time::Instant::now() >= deadline {
            return pane.exit_status;
        }
        tokio::time::sleep(EXIT_STATUS_POLL).await;
    }
}

async fn clear(
    ctx: &Context,
    key: &ObjectKey,
    st: &mut SessionStatus,
    d: &Desired,
    o: &Observed,
    deliberate: bool,
) -> Result<(), Error> {
    let p = o.pane.as_ref().expect("planned for a dead pane");
    let launched = st.launch.as_ref().map(|l| system_micro(&l.at));
    let status = match p.exit_status {
        Some(c) => Some(c),
        None => exit_status(ctx, key).await,
    };
    // Its last words: why it exited is usually on screen (in the history:
    // tmux scrolls it there when the pane dies). Read once tmux has the
    // exit: the process's end can be heard (pidfd) before tmux has read
    // what it wrote last.
    let text = last_words(ctx, &p.id).await;
    let exit = crate::agent::exit::diagnose(&crate::agent::exit::Exit {
        status,
        screen: &text,
        ran_for: launched
            .and_then(|at| o.now.duration_since(at).ok())
            .unwrap_or_default(),
    });
    ctx.shared.driver.clear(key).await?;
    if !deliberate && !d.suspend && !d.deleting {
        ctx.record(key, true, exit.reason, &exit.message).await;
        let crash = exit
            .crash_loop
            .then(|| (exit.reason.to_string(), exit.message.clone()));
        ctx.remember(key, |m| m.crash = crash);
    }
    st.pid = None;
    Ok(())
}

async fn cleanup(ctx: &Context, key: &ObjectKey) -> Result<(), Error> {
    ctx.shared.signals.unregister(key);
    ctx.memory.lock().expect("lock").remove(key);
    ctx.exits.forget(key);
    let (dir, k) = (ctx.shared.settings.state_dir.clone(), key.clone());
    ctx.shared
        .blocking(move |store| -> Result<(), Error> {
            private::remove(&dir, &k)?;
            store.api::<Session>(Some(&k.namespace)).set_finalizer(
                &k.name,
                SESSION_FINALIZER,
                false,
            )?;
            Ok(())
        })
        .await
}

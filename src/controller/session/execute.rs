//! The session controller's side effects: carrying out the planned steps
//! through the agent driver, and writing its status fields.

use super::observe::{self, config_dir};
use super::plan::{self, Desired, Observed, Step};
use super::report::{self, Report};
use super::{Context, Error, OWNED, private, usage};
use crate::agent::launch::{self, LaunchInput};
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
use crate::store::Durability;
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

fn time(t: SystemTime) -> Time {
    Time(crate::quota::jiff_of(t))
}

fn system(t: &Time) -> SystemTime {
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

pub(super) async fn launch_step(
    ctx: &Context,
    s: &Session,
    st: &mut SessionStatus,
    d: &Desired,
    accounts: &[&Account],
    deliberate: bool,
) -> Report {
    let key = ObjectKey::of(s);
    let restart = st.launches.unwrap_or(0) > 0 && !deliberate;
    match launch(ctx, s, st, d, accounts).await {
        Ok(resumed) => {
            if restart {
                st.restarts = Some(st.restarts.unwrap_or(0) + 1);
                ctx.shared.metrics.session_restarts_total.inc();
            }
            // Any launch answers the restart requests made so far.
            st.restart_handled = d.restart.clone();
            st.next_start_at = None;
            if let Some(m) = ctx.memory.lock().expect("lock").get_mut(&key) {
                m.crash = None;
            }
            let verb = if deliberate {
                "Relaunched"
            } else if restart {
                "Restarted"
            } else {
                "Launched"
            };
            let under = st
                .account
                .as_deref()
                .map(|a| format!(" under account {a}"))
                .unwrap_or_default();
            let how = if resumed {
                "resuming"
            } else {
                "new conversation"
            };
            let message = format!(
                "agent started in pane {}{under} ({how} {})",
                st.pane_id.as_deref().unwrap_or("?"),
                st.agent_session_id.as_deref().unwrap_or("?")
            );
            ctx.record(&key, false, verb, &message).await;
            report::of_state(&AgentState::Starting, ctx.shared.settings.resync)
        }
        Err(message) => {
            let now = ctx.shared.now();
            let secs = (st.backoff_seconds.unwrap_or(0) * 2)
                .clamp(1, ctx.shared.settings.max_backoff.as_secs().max(1));
            st.backoff_seconds = Some(secs);
            st.next_start_at = Some(time(now + Duration::from_secs(secs)));
            let reason = crate::agent::exit::launch_failure_reason(&message);
            ctx.record(&key, true, reason, &message).await;
            let crash = (reason.to_string(), message);
            let r = crash_report(&crash, st, now);
            ctx.remember(&key, |m| m.crash = Some(crash));
            r
        }
    }
}

/// Seeds the account, writes the conversation id (before anything starts),
/// the hook secret and the settings file, and starts the agent. Returns
/// whether it resumes a conversation.
async fn launch(
    ctx: &Context,
    s: &Session,
    st: &mut SessionStatus,
    d: &Desired,
    accounts: &[&Account],
) -> Result<bool, String> {
    let sh = &ctx.shared;
    let key = ObjectKey::of(s);
    let account_name = d.account.clone()?;
    let config_dir = account_name.as_ref().and_then(|n| {
        accounts
            .iter()
            .find(|a| a.metadata.name.as_ref() == Some(n))
            .map(|a| expand_home(&a.spec.config_dir))
    });
    // Claude Code not installed (or not on the agents' PATH): said before
    // anything is launched.
    let path =
        crate::agent::env::lookup(&s.spec.agent.env, "PATH").or_else(|| std::env::var("PATH").ok());
    let workdir = crate::workspace::agent_dir(s);
    crate::agent::exit::resolve_command(&s.spec.agent.command, path.as_deref(), &workdir)?;
    let prepared = {
        let (s, dir, shared) = (
            s.clone(),
            config_dir.clone(),
            sh.settings.shared_projects.clone(),
        );
        let id = st.agent_session_id.clone();
        let neighbours = neighbours(sh, &s);
        sh.blocking(move |_| prepare(&s, dir.as_deref(), &neighbours, &shared, id.as_deref()))
            .await?
    };
    // A conversation to continue, or a new one under a fresh id (nothing
    // to continue: the agent died before Claude Code wrote any message).
    let resume = prepared.resumable;
    if !resume && (st.agent_session_id.is_none() || st.launches.unwrap_or(0) > 0) {
        st.agent_session_id = Some(uuid::Uuid::new_v4().to_string());
    }
    let id = st.agent_session_id.clone().expect("chosen above");
    // The conversation id is durable before the agent starts with it.
    write(ctx, &key, st, Durability::Now)
        .await
        .map_err(|e| format!("cannot record the conversation id: {e}"))?;
    // A new secret for each launch: a post from the agent being replaced
    // (a statusLine refresh racing its /exit) is refused instead of being
    // taken for the new agent's.
    let (secret, settings_file) = save_launch_files(ctx, s, None).await?;
    sh.signals.register(&key, &secret);
    let lp = launch::plan(&LaunchInput {
        session: s,
        config_dir: config_dir.as_deref(),
        settings_path: &settings_file,
        agent_session_id: &id,
        resume,
    });
    sh.signals.reset(&key, account_name.as_deref());
    ctx.memory.lock().expect("lock").remove(&key);
    // Before the start: a quick agent's SessionStart can arrive before
    // `start` returns, and must count as this launch's.
    let launched_at = crate::api::micro(sh.now());
    let pane = sh
        .driver
        .start(&key, &prepared.workdir, &lp.env, &lp.argv)
        .await
        .map_err(|e| format!("cannot start the tmux session: {e}"))?;
    st.launch = Some(LaunchStatus {
        account: account_name.clone(),
        at: launched_at,
        resumed: resume,
        epoch: d.placed,
        confirmed_at: None,
        takeover: false,
    });
    st.account = account_name;
    st.launches = Some(st.launches.unwrap_or(0) + 1);
    st.pid = Some(pane.pid);
    st.pane_id = Some(pane.id);
    Ok(resume)
}

/// A new hook secret and the launch's settings file: its hooks and
/// statusLine post to the Session's URL with that secret, with the pool's
/// MCP server for a Session that opted in (docs/mcp.md); saved, mode 0600,
/// for the session's agent, or for its standby (`standby`: the standby's
/// own conversation id). Returns the secret and the settings file.
pub(super) async fn save_launch_files(
    ctx: &Context,
    s: &Session,
    standby: Option<&str>,
) -> Result<(String, std::path::PathBuf), String> {
    let sh = &ctx.shared;
    let key = ObjectKey::of(s);
    let secret = crate::secret::random_hex(24);
    let url = format!(
        "{}{}",
        sh.settings.agent_base_url,
        crate::agent::signals::agent_path(&key, &secret)
    );
    let settings = launch::settings(&url, &sh.settings.exe, launch::bypasses_permissions(s));
    let (dir, sec, id) = (
        sh.settings.state_dir.clone(),
        secret.clone(),
        standby.map(str::to_string),
    );
    let (session, base) = (s.clone(), sh.settings.agent_base_url.clone());
    let path = sh
        .blocking(move |_| {
            let path = match &id {
                Some(id) => private::save_standby(&dir, &key, id, &sec, &settings)?,
                None => {
                    private::save_secret(&dir, &key, &sec)?;
                    private::save_settings(&dir, &key, &settings)?
                }
            };
            crate::mcp::agent::prepare(&path, &session, &key, &base, &sec)?;
            Ok::<_, std::io::Error>(path)
        })
        .await
        .map_err(|e| {
            let whose = if standby.is_some() {
                "standby's"
            } else {
                "session's"
            };
            format!("cannot save the {whose} launch files: {e}")
        })?;
    Ok((secret, path))
}

/// Where the other Sessions of `s`'s namespace run: an account seeded for
/// `s` trusts them in the same write (see [`seed::seed_for_session`]).
pub(super) fn neighbours(sh: &crate::controller::Shared, s: &Session) -> Vec<std::path::PathBuf> {
    let ns = s.metadata.namespace.as_deref();
    sh.caches
        .sessions
        .all()
        .iter()
        .filter(|o| o.metadata.namespace.as_deref() == ns && o.metadata.name != s.metadata.name)
        .map(|o| crate::workspace::agent_dir(o))
        .collect()
}

struct Prepared {
    workdir: std::path::PathBuf,
    resumable: bool,
}

/// The file side of a launch: the workdir, the account seeded for it, and
/// whether the conversation can be resumed.
fn prepare(
    s: &Session,
    config_dir: Option<&std::path::Path>,
    neighbours: &[std::path::PathBuf],
    shared: &std::path::Path,
    id: Option<&str>,
) -> Result<Prepared, String> {
    let workdir = super::workspace::prepare_dir(s)?;
    match config_dir {
        Some(dir) => seed::seed_for_session(dir, &workdir, s, neighbours, shared)
            .map_err(|e| format!("cannot prepare the account's config dir: {e}"))?,
        // No account to seed: the agent's environment files are checked here.
        None => {
            crate::agent::env::resolve(&s.spec.agent.env).map_err(|e| e.to_string())?;
        }
    }
    let resumable = id.is_some_and(|id| seed::transcript_resumable(shared, id));
    Ok(Prepared { workdir, resumable })
}

async fn wait_backoff(
    ctx: &Context,
    key: &ObjectKey,
    st: &SessionStatus,
    o: &Observed,
    secs: u64,
) -> Report {
    let crash = ctx.recall(key, |m| m.crash.clone());
    if let Some(crash) = crash {
        return crash_report(&crash, st, o.now);
    }
    let exited = o.pane.as_ref().and_then(|p| p.exit_status);
    let message = match (o.pane.is_some(), exited) {
        (true, Some(c)) => format!("agent exited with status {c}; restarting in {secs}s"),
        (true, None) => format!("agent exited; restarting in {secs}s"),
        (false, _) => format!("tmux session lost; restarting in {secs}s"),
    };
    let reason = if o.pane.is_some() {
        "AgentExited"
    } else {
        "TmuxSessionLost"
    };
    if o.pane.is_none() && st.phase != Some(SessionPhase::Starting) {
        ctx.record(key, true, reason, "the tmux session is gone")
            .await;
    }
    let mut r = report::not_running(
        SessionPhase::Starting,
        reason,
        &message,
        Duration::from_secs(secs),
    );
    r.ready.reason = "BackOff".into();
    r
}

/// A crash loop: the agent cannot start; tried again at `st.nextStartAt`.
fn crash_report(crash: &(String, String), st: &SessionStatus, now: SystemTime) -> Report {
    let at = st.next_start_at.as_ref().map(system).unwrap_or(now);
    let message = crate::agent::exit::with_next_try(&crash.1, at, now);
    let mut r = report::not_running(
        SessionPhase::CrashLoopBackOff,
        "CrashLoopBackOff",
        &message,
        at.duration_since(now)
            .unwrap_or_default()
            .max(Duration::from_secs(1)),
    );
    r.ready.reason = crash.0.clone();
    r
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

//! Starting a Session's agent: the launch (the account seeded, the
//! conversation id written before anything starts, the hook secret and
//! settings file, the tmux session), what it tells, and the back-off and
//! crash loop when the agent cannot start or exits.

use super::execute::{system, time};
use super::plan::{Desired, Observed};
use super::report::{self, Report};
use super::status::write;
use super::{Context, private};
use crate::agent::launch::{self, LaunchInput};
use crate::agent::seed;
use crate::agent::state::AgentState;
use crate::api::{Account, LaunchStatus, ObjectKey, Session, SessionPhase, SessionStatus};
use crate::fsutil::expand_home;
use crate::store::Durability;
use std::time::{Duration, SystemTime};

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

pub(super) async fn wait_backoff(
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

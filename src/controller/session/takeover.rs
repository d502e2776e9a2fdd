//! The warm standby's side effects: keeping one idle Claude Code under the
//! next failover target ([`standby`] decides), and the takeover, where it
//! becomes the session's agent with `/resume <id>`.

use super::peers;
use super::report::{self, Report};
use super::standby::{self, Action, Seen};
use super::{Context, private};
use crate::agent::launch::{self, LaunchInput};
use crate::agent::signals::standby_key;
use crate::agent::state::AgentState;
use crate::api::{
    Account, LaunchStatus, ObjectKey, Session, SessionStatus, StandbyStatus, SwapPhase, SwapStatus,
};
use crate::fsutil::expand_home;
use crate::store::Durability;
use std::time::Duration;

/// How long the standby's composer may take to show empty before
/// `/resume` is typed.
const COMPOSER_WAIT: Duration = Duration::from_secs(1);

/// The standby as it is now (None: there is none), with its readiness
/// taken into `st`: its `SessionStart` heard since it was started.
pub async fn observe(ctx: &Context, key: &ObjectKey, st: &mut SessionStatus) -> Option<Seen> {
    let sh = &ctx.shared;
    let sb = st.standby.as_mut()?;
    // A daemon that restarted hears it again (its secret is in the state dir).
    if !sh.signals.standby_registered(key) {
        let (dir, k, id) = (
            sh.settings.state_dir.clone(),
            key.clone(),
            sb.agent_session_id.clone(),
        );
        if let Some(secret) = sh
            .blocking(move |_| private::load_standby_secret(&dir, &k, &id))
            .await
        {
            sh.signals.register_standby(key, &secret, &sb.account);
        }
    }
    let sig = sh.signals.get(&standby_key(key));
    let launched = std::time::SystemTime::from(sb.launched_at.0);
    let since_launch = sig.session_start.as_ref().filter(|(_, at)| *at >= launched);
    if since_launch.is_some() {
        sb.ready = true;
    }
    // A standby's own `SessionStart` says `startup`; `resume` is a
    // takeover, and a takeover of the daemon's makes it the agent first.
    let resumed = since_launch.is_some_and(|(source, _)| source == "resume");
    let pane = sh.driver.standby_pane(key).await.ok().flatten();
    let alive = pane.is_some_and(|p| !p.dead && p.pid == sb.pid);
    Some(Seen::of(sb, alive, resumed))
}

/// Starts, replaces or discards the standby as [`standby::decide`] says.
/// Only a session running and confirmed on its account, and not being
/// moved, gets one; until then the one there is stays as it is.
pub async fn keep(
    ctx: &Context,
    s: &Session,
    st: &mut SessionStatus,
    accounts: &[&Account],
    placement: Option<&SwapStatus>,
    seen: Option<&Seen>,
) {
    let key = ObjectKey::of(s);
    let now = ctx.shared.now();
    let wanted = peers::wants(s);
    // Nothing changes while a swap that moves the session runs (from its
    // wait for the turn's end on): it may be about to use the standby, or
    // find none and relaunch.
    let want = if !wanted {
        None
    } else if !settled(ctx, &key, st, placement) {
        return;
    } else {
        let Some(running) = st.launch.as_ref().and_then(|l| l.account.clone()) else {
            return;
        };
        let ns = key.namespace.as_str();
        let windows = crate::controller::failover::target::windows_of(&[s], &Default::default());
        let cands = crate::controller::failover::target::candidates(accounts, ns, now, &windows);
        let strategy = ctx.shared.settings.strategy;
        let holds = st.standby.as_ref().map(|b| b.account.clone());
        let want = standby::choose(&cands, &running, holds.as_deref(), strategy);
        match s.spec.standby_bound() {
            Some(bound) if want.is_some() => {
                let all = ctx.shared.caches.sessions.all();
                let mut members: Vec<standby::Member> = peers::others(&all, s)
                    .iter()
                    .map(|o| peers::member(o, &cands, strategy))
                    .collect();
                members.push(standby::Member {
                    name: key.name.clone(),
                    target: want.clone(),
                    holds,
                    headroom: peers::headroom(&cands, Some(&running)),
                });
                want.filter(|_| standby::within_bound(&members, &key.name, bound as usize))
            }
            _ => want,
        }
    };
    match standby::decide(want.as_deref(), seen, now) {
        Action::Keep => {}
        Action::Start(account) => start_or_say(ctx, s, st, accounts, &account).await,
        Action::Replace(why, next) => {
            discard(ctx, &key, st, &why).await;
            if let Some(account) = next {
                start_or_say(ctx, s, st, accounts, &account).await;
            }
        }
    }
}

/// The session runs and is confirmed on its account, and no swap moves it
/// (from its wait for the turn's end on: it may be about to use the
/// standby, or find none and relaunch).
fn settled(
    ctx: &Context,
    key: &ObjectKey,
    st: &SessionStatus,
    placement: Option<&SwapStatus>,
) -> bool {
    st.launch.as_ref().is_some_and(|l| l.confirmed_at.is_some())
        && st.pid.is_some()
        && placement.is_none_or(|p| !p.swapping())
        && !in_running_swap(ctx, key)
}

/// Types `/resume <id>` of the session's conversation into its ready
/// standby's composer, without Enter: a takeover is then the Enter alone
/// (its typing, the settle and part of Claude Code's own work done before
/// the move; docs/claude-code-probe.md, section 12). A standby primed for
/// an earlier conversation (the agent ran `/clear`) is stopped; the next
/// one is primed for this one.
pub async fn prime(
    ctx: &Context,
    key: &ObjectKey,
    st: &mut SessionStatus,
    seen: Option<&Seen>,
    placement: Option<&SwapStatus>,
) {
    let Some(sb) = st.standby.as_ref() else {
        return;
    };
    let Some(id) = st.agent_session_id.clone() else {
        return;
    };
    // Nothing changes while a swap moves the session (as in `keep`).
    if !awaits_prime(ctx, key, st)
        || !seen.is_some_and(|b| b.alive)
        || !settled(ctx, key, st, placement)
    {
        return;
    }
    if sb.primed.is_some() {
        discard(ctx, key, st, "the session's conversation changed").await;
        return;
    }
    let sh = &ctx.shared;
    let Some(pane) = sh.driver.standby_pane(key).await.ok().flatten() else {
        return;
    };
    let typed = {
        let _keyboard = sh.driver.keyboard(&standby_key(key)).await;
        sh.driver
            .wait_composer_empty(&pane, COMPOSER_WAIT)
            .await
            .unwrap_or(false)
            && sh
                .driver
                .type_only(&pane, &format!("/resume {id}"))
                .await
                .unwrap_or(false)
    };
    if typed {
        if let Some(sb) = st.standby.as_mut() {
            sb.primed = Some(id);
        }
        return;
    }
    // What its composer holds is not known: the next one starts empty, and
    // waits without the command (the move types it).
    ctx.remember(key, |m| m.unprimable = Some(id));
    discard(
        ctx,
        key,
        st,
        "its composer did not show /resume as typed (the next standby waits without it)",
    )
    .await;
}

/// The ready standby is still to have its `/resume` typed
/// ([`standby::awaits_prime`]).
pub fn awaits_prime(ctx: &Context, key: &ObjectKey, st: &SessionStatus) -> bool {
    ctx.recall(key, |m| standby::awaits_prime(st, m.unprimable.as_deref()))
}

/// A running swap names the session.
fn in_running_swap(ctx: &Context, key: &ObjectKey) -> bool {
    ctx.shared.caches.swaps.all().iter().any(|w| {
        crate::controller::failover::target::ns_of(&w.metadata) == key.namespace
            && w.spec.sessions.contains(&key.name)
            && w.status
                .as_ref()
                .is_none_or(|x| x.phase == SwapPhase::Running)
    })
}

async fn start_or_say(
    ctx: &Context,
    s: &Session,
    st: &mut SessionStatus,
    accounts: &[&Account],
    account: &str,
) {
    let key = ObjectKey::of(s);
    match start(ctx, s, st, accounts, account).await {
        Ok(()) => {
            ctx.shared
                .metrics
                .standby_starts_total
                .with_label_values(&["started"])
                .inc();
            let sb = st.standby.as_ref().expect("just started");
            let message = format!(
                "standby agent started under account {account} (pane {}, pid {})",
                sb.pane_id, sb.pid
            );
            ctx.record(&key, false, "StandbyStarted", &message).await;
        }
        Err(why) => {
            ctx.shared
                .metrics
                .standby_starts_total
                .with_label_values(&["failed"])
                .inc();
            let message = format!("cannot start a standby under account {account}: {why}");
            ctx.record(&key, true, "StandbyFailed", &message).await;
        }
    }
}

/// Seeds the account for the workdir, saves the standby's own secret and
/// settings file (hooks to the Session's URL with that secret), and
/// starts it in a tmux session of its own with a conversation id of its
/// own.
async fn start(
    ctx: &Context,
    s: &Session,
    st: &mut SessionStatus,
    accounts: &[&Account],
    account: &str,
) -> Result<(), String> {
    let sh = &ctx.shared;
    let key = ObjectKey::of(s);
    let config_dir = accounts
        .iter()
        .find(|a| a.metadata.name.as_deref() == Some(account))
        .map(|a| expand_home(&a.spec.config_dir))
        .ok_or_else(|| format!("account {account} is gone"))?;
    let workdir = crate::workspace::agent_dir(s);
    {
        let (dir, w, shared) = (
            config_dir.clone(),
            workdir.clone(),
            sh.settings.shared_projects.clone(),
        );
        let neighbours = super::start::neighbours(sh, s);
        let s = s.clone();
        sh.blocking(move |_| {
            crate::agent::seed::seed_for_session(&dir, &w, &s, &neighbours, &shared)
        })
        .await
        .map_err(|e| format!("cannot prepare the account's config dir: {e}"))?;
    }
    let id = uuid::Uuid::new_v4().to_string();
    let (secret, settings_file) = super::start::save_launch_files(ctx, s, Some(&id)).await?;
    sh.signals.register_standby(&key, &secret, account);
    let lp = launch::plan(&LaunchInput {
        session: s,
        config_dir: Some(&config_dir),
        settings_path: &settings_file,
        agent_session_id: &id,
        resume: false,
    });
    let launched_at = crate::api::micro(sh.now());
    let pane = sh
        .driver
        .start_standby(&key, &workdir, &lp.env, &lp.argv)
        .await
        .map_err(|e| format!("cannot start its tmux session: {e}"))?;
    st.standby = Some(StandbyStatus {
        account: account.to_string(),
        pane_id: pane.id,
        pid: pane.pid,
        agent_session_id: id,
        launched_at,
        ready: false,
        primed: None,
    });
    Ok(())
}

/// Stops the standby (its tmux session and files) and forgets it.
pub async fn discard(ctx: &Context, key: &ObjectKey, st: &mut SessionStatus, why: &str) {
    let sh = &ctx.shared;
    let Some(sb) = st.standby.take() else {
        return;
    };
    if let Err(e) = sh.driver.clear_standby(key).await {
        tracing::warn!(session = %key, error = %e, "cannot end the standby's tmux session");
    }
    sh.signals.unregister_standby(key);
    let (dir, k, id) = (
        sh.settings.state_dir.clone(),
        key.clone(),
        sb.agent_session_id,
    );
    let removed = sh
        .blocking(move |_| {
            std::fs::remove_dir_all(private::standby_dir(&dir, &k, &id)).or_else(|e| {
                match e.kind() {
                    std::io::ErrorKind::NotFound => Ok(()),
                    _ => Err(e),
                }
            })
        })
        .await;
    if let Err(e) = removed {
        tracing::warn!(session = %key, error = %e, "cannot remove the standby's files");
    }
    let message = format!("standby agent under account {} stopped: {why}", sb.account);
    ctx.record(key, false, "StandbyStopped", &message).await;
}

/// The standby takes the conversation over: the replaced agent has
/// stopped (its transcript complete); the standby's tmux session, pid,
/// pane and hook secret become the session's in one store write, before
/// `/resume <id>` is typed into it. Its `SessionStart` (`resume`, the
/// same id) confirms it as any launch's does; unconfirmed within
/// [`standby::TAKEOVER_CONFIRM`] it is abandoned and the session
/// relaunched. Without a standby still running, or a transcript to
/// resume, this is a launch.
pub async fn take_over(
    ctx: &Context,
    s: &Session,
    st: &mut SessionStatus,
    d: &super::plan::Desired,
) -> Result<Report, String> {
    let sh = &ctx.shared;
    let key = ObjectKey::of(s);
    let account = d.account.clone()?;
    let (pane, id, primed) = match usable(ctx, &key, st).await {
        Ok(x) => x,
        Err(why) => {
            discard(ctx, &key, st, why).await;
            return Err(why.into());
        }
    };
    sh.driver
        .promote_standby(&key)
        .await
        .map_err(|e| format!("cannot rename the standby's tmux session: {e}"))?;
    sh.signals.promote_standby(&key, account.as_deref());
    ctx.memory.lock().expect("lock").remove(&key);
    st.launch = Some(LaunchStatus {
        account: account.clone(),
        at: crate::api::micro(sh.now()),
        resumed: true,
        epoch: d.placed,
        confirmed_at: None,
        takeover: true,
    });
    st.account = account.clone();
    st.launches = Some(st.launches.unwrap_or(0) + 1);
    st.pid = Some(pane.pid);
    st.pane_id = Some(pane.id.clone());
    st.standby = None;
    st.restart_handled = d.restart.clone();
    st.next_start_at = None;
    // Visible and atomic before anything is typed: a daemon that dies now
    // finds the standby as the agent. Its fsync may follow (`Soon`): a power
    // loss that took the write also took both processes, and the session
    // relaunches either way.
    super::status::write(ctx, &key, st, Durability::Soon)
        .await
        .map_err(|e| format!("cannot record the takeover: {e}"))?;
    {
        let _keyboard = sh.driver.keyboard(&key).await;
        let typed = if primed {
            sh.driver.enter(&pane).await
        } else {
            sh.driver
                .type_then_enter(&pane, &format!("/resume {id}"))
                .await
        };
        typed.map_err(|e| format!("cannot type /resume: {e}"))?;
    }
    let under = account
        .as_deref()
        .map(|a| format!(" under account {a}"))
        .unwrap_or_default();
    let message = format!(
        "standby agent (pane {}, pid {}){under} took over conversation {id}",
        pane.id, pane.pid
    );
    ctx.record(&key, false, "TookOver", &message).await;
    Ok(report::of_state(
        &AgentState::Starting,
        ctx.shared.settings.resync,
    ))
}

/// The standby's pane, the conversation to resume and whether its
/// `/resume` waits typed, if it can take over: its process runs, the
/// conversation has a transcript, its composer holds nothing or that
/// command alone (nobody typed into it: the command would join their
/// text), and its secret reads; that secret is then saved as the agent's
/// (a daemon restarting hears it) and earlier standbys' files go.
async fn usable(
    ctx: &Context,
    key: &ObjectKey,
    st: &SessionStatus,
) -> Result<(crate::agent::terminal::Pane, String, bool), &'static str> {
    let sh = &ctx.shared;
    let sb = st.standby.clone().ok_or("no standby")?;
    let pane = sh
        .driver
        .standby_pane(key)
        .await
        .ok()
        .flatten()
        .filter(|p| !p.dead && p.pid == sb.pid)
        .ok_or("its process is gone")?;
    let id = st.agent_session_id.clone().ok_or("no conversation yet")?;
    let (shared, i) = (sh.settings.shared_projects.clone(), id.clone());
    if !sh
        .blocking(move |_| crate::agent::seed::transcript_resumable(&shared, &i))
        .await
    {
        return Err("the conversation has no transcript to resume");
    }
    let primed = sb.primed.as_ref() == Some(&id);
    let waiting = if primed {
        format!("/resume {id}")
    } else {
        String::new()
    };
    if !sh
        .driver
        .wait_composer(&pane, &waiting, COMPOSER_WAIT)
        .await
        .unwrap_or(false)
    {
        return Err("its composer holds other text");
    }
    let (dir, k, i) = (
        sh.settings.state_dir.clone(),
        key.clone(),
        sb.agent_session_id.clone(),
    );
    sh.blocking(move |_| {
        let secret = private::load_standby_secret(&dir, &k, &i)?;
        private::save_secret(&dir, &k, &secret).ok()?;
        private::remove_standbys(&dir, &k, Some(&i)).ok()?;
        Some(())
    })
    .await
    .ok_or("its secret cannot be read")?;
    Ok((pane, id, primed))
}

/// The step: a takeover, or (it could not) a launch as without a standby.
pub async fn take_over_step(
    ctx: &Context,
    s: &Session,
    st: &mut SessionStatus,
    d: &super::plan::Desired,
    accounts: &[&Account],
) -> Report {
    match take_over(ctx, s, st, d).await {
        Ok(r) => {
            ctx.shared
                .metrics
                .takeovers_total
                .with_label_values(&["typed"])
                .inc();
            r
        }
        Err(why) => {
            tracing::info!(session = %ObjectKey::of(s), %why, "no takeover; relaunching");
            ctx.shared
                .metrics
                .takeovers_total
                .with_label_values(&["relaunched"])
                .inc();
            super::start::launch_step(ctx, s, st, d, accounts, true).await
        }
    }
}

/// A takeover that was not confirmed in time: its process ends (a launch
/// follows, in the same pass).
pub async fn abandon(
    ctx: &Context,
    key: &ObjectKey,
    st: &mut SessionStatus,
) -> Result<(), super::Error> {
    ctx.shared.driver.clear(key).await?;
    ctx.shared
        .metrics
        .takeovers_total
        .with_label_values(&["unconfirmed"])
        .inc();
    let message = format!(
        "the standby did not confirm the takeover within {}s: stopped, relaunching",
        standby::TAKEOVER_CONFIRM.as_secs()
    );
    ctx.record(key, true, "TakeOverFailed", &message).await;
    st.pid = None;
    Ok(())
}

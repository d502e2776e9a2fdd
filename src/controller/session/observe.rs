//! What a session's agent is doing: its pane, its state (hooks first, then
//! its own state file, then the debounced screen), and what its signals
//! say for the status (its launch confirmed, a new conversation after
//! `/clear`, a turn cut short by a usage limit).

use super::Context;
use crate::agent::screen::Screen;
use crate::agent::signals::{AgentSignals, HookState};
use crate::agent::state::{self, AgentState, PidFile};
use crate::agent::terminal::Pane;
use crate::api::{Account, Interruption, ObjectKey, SessionStatus, Time};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

/// Two screen readings this far apart must agree before the screen speaks.
pub const SCREEN_DEBOUNCE: Duration = Duration::from_millis(300);

/// The config dir the session's agent runs with.
pub fn config_dir(status: &SessionStatus, accounts: &[&Account]) -> PathBuf {
    status
        .launch
        .as_ref()
        .and_then(|l| l.account.as_deref())
        .and_then(|n| {
            accounts
                .iter()
                .find(|a| a.metadata.name.as_deref() == Some(n))
        })
        .map(|a| crate::fsutil::expand_home(&a.spec.config_dir))
        .unwrap_or_else(|| crate::fsutil::home().join(".claude"))
}

/// The agent's state from its signals, its pid file and, only when those
/// are silent (or a turn just failed), the debounced screen.
pub async fn agent_state(
    ctx: &Context,
    key: &ObjectKey,
    pane: &Pane,
    sig: &AgentSignals,
    pid_file: Option<&PidFile>,
) -> Result<AgentState, super::Error> {
    let pushed_idle = matches!(sig.state.as_ref().map(|s| &s.0), Some(HookState::Idle));
    let need_screen =
        (sig.state.is_none() && pid_file.is_none()) || (pushed_idle && sig.last_failure.is_some());
    let screen = if need_screen {
        let now = ctx.shared.driver.classify(pane).await?;
        debounce(ctx, key, now)
    } else {
        None
    };
    Ok(state::fuse(sig.state.as_ref(), pid_file, screen))
}

/// The screen speaks once two readings agree across the debounce.
fn debounce(ctx: &Context, key: &ObjectKey, now: Screen) -> Option<Screen> {
    let mut mem = ctx.memory.lock().expect("lock");
    let m = mem.entry(key.clone()).or_default();
    match m.last_screen {
        Some((prev, at)) if prev == now && at.elapsed() >= SCREEN_DEBOUNCE => Some(now),
        Some((prev, _)) if prev == now => None,
        _ => {
            m.last_screen = Some((now, Instant::now()));
            None
        }
    }
}

fn time(t: SystemTime) -> Time {
    Time(crate::quota::jiff_of(t))
}

fn system(t: &crate::api::MicroTime) -> SystemTime {
    SystemTime::from(t.0)
}

/// Takes into `st` what the running agent's signals and state file say:
/// its launch confirmed (the `SessionStart` of the expected conversation,
/// or its state file naming it), a new conversation (`/clear`), its last
/// activity, a turn cut short by a usage limit, or such a turn taken up
/// again. Pure.
pub fn absorb(st: &mut SessionStatus, sig: &AgentSignals, pid_file: Option<&PidFile>) {
    let expected = st.agent_session_id.clone();
    if let Some(launch) = st.launch.as_mut()
        && launch.confirmed_at.is_none()
    {
        let launched = system(&launch.at);
        let by_hook = sig.session_start.as_ref().and_then(|(source, at)| {
            let same = sig.agent_session_id.is_some() && sig.agent_session_id == expected;
            let ok = if launch.resumed {
                source == "resume" && same
            } else {
                source == "startup" || source == "resume"
            };
            (ok && *at >= launched).then_some(*at)
        });
        let by_file = pid_file.and_then(|p| {
            (p.session_id.is_some() && p.session_id == expected && p.modified >= launched)
                .then_some(p.modified)
        });
        if let Some(at) = by_hook.or(by_file) {
            launch.confirmed_at = Some(crate::api::micro(at));
        }
    }
    // `/clear` starts a new conversation: follow it (once the launch is
    // confirmed, so a late post of the agent replaced is never taken).
    if st.launch.as_ref().is_some_and(|l| l.confirmed_at.is_some())
        && let Some(id) = &sig.agent_session_id
        && Some(id) != st.agent_session_id.as_ref()
    {
        st.agent_session_id = Some(id.clone());
    }
    if let Some(at) = sig.last_activity {
        st.last_activity = Some(time(at));
    }
    if let Some((error, _, at)) = &sig.last_failure
        && error == "rate_limit"
        && sig.prompts.last().is_none_or(|(_, p)| at >= p)
        && sig.last_stop.as_ref().is_none_or(|(_, s)| at >= s)
        && st.interrupted.as_ref().is_none_or(|i| system(&i.at) < *at)
    {
        st.interrupted = Some(Interruption {
            by: error.clone(),
            at: crate::api::micro(*at),
            account: st.launch.as_ref().and_then(|l| l.account.clone()),
        });
    }
    // A prompt submitted since: the turn went on (a continue, a replay).
    if let Some(i) = &st.interrupted
        && sig.prompts.last().is_some_and(|(_, p)| *p > system(&i.at))
    {
        st.interrupted = None;
    }
}

/// The agent's own state file, read off the async workers.
pub async fn pid_file(ctx: &Context, config_dir: PathBuf, pid: u32) -> Option<PidFile> {
    ctx.shared
        .blocking(move |_| state::read_pid_file(&config_dir, pid))
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::LaunchStatus;

    fn at(s: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(s)
    }

    fn launched(resumed: bool) -> SessionStatus {
        SessionStatus {
            agent_session_id: Some("conv".into()),
            launch: Some(LaunchStatus {
                account: Some("b".into()),
                at: crate::api::micro(at(100)),
                resumed,
                epoch: Some(3),
                confirmed_at: None,
                takeover: false,
            }),
            ..Default::default()
        }
    }

    fn started(source: &str, id: &str, t: u64) -> AgentSignals {
        AgentSignals {
            session_start: Some((source.into(), at(t))),
            agent_session_id: Some(id.into()),
            ..Default::default()
        }
    }

    #[test]
    fn a_launch_is_confirmed_by_the_expected_conversation_only() {
        let cases = [
            (true, started("resume", "conv", 101), true),
            (true, started("startup", "conv", 101), false),
            (true, started("resume", "other", 101), false),
            (true, started("resume", "conv", 99), false),
            (false, started("startup", "conv", 101), true),
            (false, AgentSignals::default(), false),
        ];
        for (resumed, sig, confirmed) in cases {
            let mut st = launched(resumed);
            absorb(&mut st, &sig, None);
            assert_eq!(
                st.launch.unwrap().confirmed_at.is_some(),
                confirmed,
                "resumed={resumed} {sig:?}"
            );
        }
        // After a daemon restart the hook is gone: the state file tells.
        let mut st = launched(true);
        let pid = PidFile {
            status: "idle".into(),
            waiting_for: None,
            session_id: Some("conv".into()),
            modified: at(102),
        };
        absorb(&mut st, &AgentSignals::default(), Some(&pid));
        assert!(st.launch.unwrap().confirmed_at.is_some());
    }

    #[test]
    fn a_turn_cut_by_a_limit_is_kept_until_a_prompt_follows() {
        let mut st = launched(false);
        let mut sig = AgentSignals {
            prompts: vec![("task".into(), at(110))],
            last_failure: Some(("rate_limit".into(), "limit".into(), at(120))),
            ..Default::default()
        };
        absorb(&mut st, &sig, None);
        assert_eq!(
            st.interrupted.as_ref().map(|i| i.by.as_str()),
            Some("rate_limit")
        );
        // A relaunch resets the signals: the interruption stays.
        absorb(&mut st, &AgentSignals::default(), None);
        assert!(st.interrupted.is_some());
        sig.prompts.push(("continue".into(), at(130)));
        absorb(&mut st, &sig, None);
        assert!(st.interrupted.is_none());
        // Another error is not a cut turn.
        let mut st = launched(false);
        let sig = AgentSignals {
            last_failure: Some(("server_error".into(), "x".into(), at(120))),
            ..Default::default()
        };
        absorb(&mut st, &sig, None);
        assert!(st.interrupted.is_none());
    }
}

//! One state per agent, fused from what it says (hooks), what it writes
//! (`sessions/<pid>.json`) and, last, what its screen shows.

use super::screen::Screen;
use crate::agent::signals::HookState;
use serde_json::Value;
use std::path::Path;
use std::time::SystemTime;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentState {
    /// Launched, not yet at its prompt.
    Starting,
    Idle,
    Busy,
    /// Waiting for someone: `permission_prompt`, `dialog`, `usage_limit_dialog`, ...
    Waiting(String),
    /// The agent said it is ending (`SessionEnd`).
    Exited,
}

/// `CLAUDE_CONFIG_DIR/sessions/<pid>.json`, Claude Code's own state file
/// (unofficial: used when present, never required).
#[derive(Debug, Clone, PartialEq)]
pub struct PidFile {
    pub status: String,
    pub waiting_for: Option<String>,
    pub session_id: Option<String>,
    pub modified: SystemTime,
}

pub fn read_pid_file(config_dir: &Path, pid: u32) -> Option<PidFile> {
    let path = config_dir.join("sessions").join(format!("{pid}.json"));
    let bytes = std::fs::read(&path).ok()?;
    let modified = std::fs::metadata(&path).and_then(|m| m.modified()).ok()?;
    let v: Value = serde_json::from_slice(&bytes).ok()?;
    Some(PidFile {
        status: v.get("status")?.as_str()?.to_string(),
        waiting_for: v
            .get("waitingFor")
            .and_then(Value::as_str)
            .map(str::to_string),
        session_id: v
            .get("sessionId")
            .and_then(Value::as_str)
            .map(str::to_string),
        modified,
    })
}

fn from_pid_file(p: &PidFile) -> Option<AgentState> {
    Some(match p.status.as_str() {
        "idle" => AgentState::Idle,
        "busy" => AgentState::Busy,
        "waiting" => AgentState::Waiting(
            p.waiting_for
                .as_deref()
                .map(|w| w.replace(' ', "_"))
                .unwrap_or_else(|| "input".into()),
        ),
        _ => return None,
    })
}

fn from_hook(h: &HookState) -> AgentState {
    match h {
        HookState::Idle => AgentState::Idle,
        HookState::Busy => AgentState::Busy,
        HookState::Waiting(w) => AgentState::Waiting(w.clone()),
        HookState::Exited(_) => AgentState::Exited,
    }
}

pub fn from_screen(s: Screen) -> AgentState {
    match s {
        Screen::Idle => AgentState::Idle,
        Screen::Busy => AgentState::Busy,
        Screen::PermissionPrompt => AgentState::Waiting("permission_prompt".into()),
        Screen::UsageLimitDialog => AgentState::Waiting("usage_limit_dialog".into()),
        Screen::Dialog => AgentState::Waiting("dialog".into()),
        Screen::Unknown => AgentState::Starting,
    }
}

/// How long after the hooks last said idle a state file saying busy is
/// looked at again soon ([`settling`]).
pub const SETTLING: std::time::Duration = std::time::Duration::from_secs(3);

/// The hooks last said idle (a `SessionStart`, a `Stop`) and the state
/// file, written since, says busy, within [`SETTLING`] of that hook. A
/// `/resume` typed into a standby is such a moment: its `SessionStart`
/// comes while the command still runs, and the file turns idle when it is
/// done, with no hook after. Nothing tells that change: the caller looks
/// again soon rather than at a busy agent's pace.
pub fn settling(
    hook: Option<&(HookState, SystemTime)>,
    pid: Option<&PidFile>,
    now: SystemTime,
) -> bool {
    matches!(
        (hook, pid),
        (Some((HookState::Idle, said)), Some(p))
            if p.status == "busy"
                && p.modified > *said
                && now.duration_since(*said).unwrap_or_default() < SETTLING
    )
}

/// The newest of the hook state and the pid file wins; the screen (already
/// debounced by the caller) only speaks when neither has said anything. A
/// dialog on screen overrides an idle reading: dialogs raise no hook.
pub fn fuse(
    hook: Option<&(HookState, SystemTime)>,
    pid: Option<&PidFile>,
    screen: Option<Screen>,
) -> AgentState {
    let from_hook = hook.map(|(h, t)| (from_hook(h), *t));
    let from_pid = pid.and_then(|p| from_pid_file(p).map(|s| (s, p.modified)));
    let pushed = match (from_hook, from_pid) {
        (Some((AgentState::Exited, _)), _) => Some(AgentState::Exited),
        (Some((h, th)), Some((p, tp))) => Some(if tp > th { p } else { h }),
        (Some((h, _)), None) => Some(h),
        (None, Some((p, _))) => Some(p),
        (None, None) => None,
    };
    match (pushed, screen) {
        (
            Some(AgentState::Idle),
            Some(s @ (Screen::UsageLimitDialog | Screen::Dialog | Screen::PermissionPrompt)),
        ) => from_screen(s),
        (Some(state), _) => state,
        (None, Some(s)) => from_screen(s),
        (None, None) => AgentState::Starting,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_file_after_an_idle_hook_is_settling_for_a_while() {
        use std::time::Duration;
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let file = |status: &str, at: SystemTime| PidFile {
            status: status.into(),
            waiting_for: None,
            session_id: None,
            modified: at,
        };
        let idle = (HookState::Idle, t0);
        let busy = (HookState::Busy, t0);
        let cases = [
            (
                Some(&idle),
                Some(file("busy", ms(20))),
                ms(100),
                true,
                "busy after the idle hook",
            ),
            (
                Some(&idle),
                Some(file("busy", ms(20))),
                ms(3100),
                false,
                "past the window",
            ),
            (
                Some(&idle),
                Some(file("busy", ms(0))),
                ms(100),
                false,
                "written before the hook",
            ),
            (
                Some(&idle),
                Some(file("idle", ms(20))),
                ms(100),
                false,
                "idle already",
            ),
            (
                Some(&busy),
                Some(file("busy", ms(20))),
                ms(100),
                false,
                "a turn: busy at its pace",
            ),
            (
                None,
                Some(file("busy", ms(20))),
                ms(100),
                false,
                "no hook heard",
            ),
            (Some(&idle), None, ms(100), false, "no file"),
        ];
        for (hook, pid, now, want, why) in cases {
            assert_eq!(settling(hook, pid.as_ref(), now), want, "{why}");
        }
    }
    use std::time::Duration;

    #[test]
    fn newest_pushed_source_wins_and_screen_is_last() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(100);
        let t1 = t0 + Duration::from_secs(1);
        let hook = (HookState::Busy, t0);
        let pid = PidFile {
            status: "idle".into(),
            waiting_for: None,
            session_id: None,
            modified: t1,
        };
        assert_eq!(fuse(Some(&hook), Some(&pid), None), AgentState::Idle);
        let later_hook = (HookState::Busy, t1 + Duration::from_secs(1));
        assert_eq!(fuse(Some(&later_hook), Some(&pid), None), AgentState::Busy);
        assert_eq!(fuse(None, None, Some(Screen::Busy)), AgentState::Busy);
        assert_eq!(fuse(None, None, None), AgentState::Starting);
        let idle = (HookState::Idle, t0);
        assert_eq!(
            fuse(Some(&idle), None, Some(Screen::UsageLimitDialog)),
            AgentState::Waiting("usage_limit_dialog".into())
        );
        let waiting = PidFile {
            status: "waiting".into(),
            waiting_for: Some("permission prompt".into()),
            ..pid
        };
        assert_eq!(
            fuse(None, Some(&waiting), None),
            AgentState::Waiting("permission_prompt".into())
        );
    }
}

//! Why an agent did not start, or died: in words a newcomer can act on.
//!
//! Two cases the session controller must tell apart from a plain restart:
//! - the agent's command cannot be found (Claude Code not installed, or
//!   not on the daemon's `PATH`): said before anything is launched;
//! - the agent exits soon after each launch (no login, a bad flag, a
//!   refused setting): a crash loop, retried with back-off, its reason
//!   the last lines the agent printed.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// An agent that exits sooner than this after its launch crashed at start.
pub const QUICK_EXIT: Duration = Duration::from_secs(10);
/// How many of the pane's last lines a diagnosis quotes.
const LAST_LINES: usize = 4;

/// Where `command` resolves, with `path` as the agent's `PATH`: a command
/// with a `/` is taken as written (relative to `cwd`), a bare name is
/// searched in `path`. The error says what to do.
pub fn resolve_command(command: &str, path: Option<&str>, cwd: &Path) -> Result<PathBuf, String> {
    let install = "install Claude Code (npm install -g @anthropic-ai/claude-code), or set \
                   spec.agent.command to its full path";
    if command.contains('/') {
        let p = crate::fsutil::expand_home(command);
        let p = if p.is_absolute() { p } else { cwd.join(p) };
        return match std::fs::metadata(&p) {
            Ok(m) if m.is_file() && executable(&m) => Ok(p),
            Ok(_) => Err(format!(
                "command not found: {} is not an executable file; {install}",
                p.display()
            )),
            Err(_) => Err(format!(
                "command not found: {} does not exist; {install}",
                p.display()
            )),
        };
    }
    let path = path.unwrap_or_default();
    path.split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(command))
        .find(|p| {
            std::fs::metadata(p)
                .map(|m| m.is_file() && executable(&m))
                .unwrap_or(false)
        })
        .ok_or_else(|| {
            format!(
                "command not found: `{command}` is not on the agent's PATH ({path}); {install} \
                 (the daemon's PATH is the agents' PATH; spec.agent.env.PATH overrides it)"
            )
        })
}

fn executable(m: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::PermissionsExt;
    m.permissions().mode() & 0o111 != 0
}

/// How an agent ended, as the controller saw it.
pub struct Exit<'a> {
    /// Its exit status, when tmux recorded one.
    pub status: Option<i32>,
    /// The pane's text after it ended.
    pub screen: &'a str,
    /// From its launch to its end.
    pub ran_for: Duration,
}

/// What to tell about an exit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnosis {
    /// `CommandNotFound`, `CrashedAtStart` or `AgentExited`.
    pub reason: &'static str,
    pub message: String,
    /// It exited at start: back off and say so (a crash loop).
    pub crash_loop: bool,
}

/// The pane's last meaningful lines, joined with ` | `.
pub fn last_lines(screen: &str) -> String {
    let lines: Vec<&str> = screen
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("Pane is dead"))
        .collect();
    lines[lines.len().saturating_sub(LAST_LINES)..].join(" | ")
}

pub fn diagnose(e: &Exit<'_>) -> Diagnosis {
    let tail = last_lines(e.screen);
    let status = match e.status {
        Some(c) => format!("agent exited with status {c}"),
        None => "agent exited".into(),
    };
    let said = if tail.is_empty() {
        String::new()
    } else {
        format!(": {tail}")
    };
    let not_found = e.status == Some(127)
        || [
            "command not found",
            "No such file or directory",
            "not found",
        ]
        .iter()
        .any(|t| tail.contains(t));
    if not_found && e.ran_for < QUICK_EXIT {
        return Diagnosis {
            reason: "CommandNotFound",
            message: format!("{status}{said}"),
            crash_loop: true,
        };
    }
    if e.ran_for < QUICK_EXIT {
        return Diagnosis {
            reason: "CrashedAtStart",
            message: format!(
                "{status} {:.1}s after its launch{said}",
                e.ran_for.as_secs_f64()
            ),
            crash_loop: true,
        };
    }
    Diagnosis {
        reason: "AgentExited",
        message: format!("{status}{said}"),
        crash_loop: false,
    }
}

/// How much of a dead pane's history is read for its last words.
const HISTORY_LINES: &str = "-200";

/// The text of a pane whose process ended, history included: when a pane
/// dies, tmux (3.3) scrolls what it showed into the history and shows only
/// `Pane is dead (...)`. Empty when it cannot be read.
pub async fn dead_pane_text(tmux_socket: &Path, pane: &str) -> String {
    tokio::process::Command::new("tmux")
        .arg("-S")
        .arg(tmux_socket)
        .args(["capture-pane", "-p", "-J", "-S", HISTORY_LINES, "-t", pane])
        .env_remove("TMUX")
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// The reason of a launch that failed before the agent ran.
pub fn launch_failure_reason(message: &str) -> &'static str {
    if message.starts_with("command not found") {
        "CommandNotFound"
    } else {
        "LaunchFailed"
    }
}

/// `message`, with when the next try comes.
pub fn with_next_try(message: &str, at: SystemTime, now: SystemTime) -> String {
    let secs = at.duration_since(now).unwrap_or_default().as_secs();
    let when = k8s_openapi::jiff::Timestamp::try_from(at)
        .map(|t| t.strftime("%H:%M:%S UTC").to_string())
        .unwrap_or_default();
    format!("{message}; next try at {when} (in {secs}s)")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_missing_command_is_found_missing_before_launch() {
        let d = tempfile::tempdir().unwrap();
        let bin = d.path().join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let claude = bin.join("claude");
        std::fs::write(&claude, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&claude, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = format!("/nonexistent:{}", bin.display());
        assert_eq!(
            resolve_command("claude", Some(&path), d.path()),
            Ok(claude.clone())
        );
        let err = resolve_command("claude", Some("/usr/nowhere"), d.path()).unwrap_err();
        assert!(err.starts_with("command not found: `claude`"), "{err}");
        assert!(
            err.contains("npm install -g @anthropic-ai/claude-code"),
            "{err}"
        );
        assert_eq!(launch_failure_reason(&err), "CommandNotFound");
        assert_eq!(
            resolve_command(claude.to_str().unwrap(), None, Path::new("/")),
            Ok(claude.clone())
        );
        assert_eq!(
            resolve_command("bin/claude", None, d.path()),
            Ok(claude.clone())
        );
        std::fs::set_permissions(&claude, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = resolve_command(claude.to_str().unwrap(), None, d.path()).unwrap_err();
        assert!(err.contains("not an executable file"), "{err}");
        assert_eq!(
            launch_failure_reason("workdir /x does not exist"),
            "LaunchFailed"
        );
    }

    #[test]
    fn an_exit_at_start_is_a_crash_loop_with_the_agents_last_words() {
        let screen =
            "Welcome\n\nInvalid API key · Please run /login\n\nPane is dead (status 1, Sun)\n";
        let d = diagnose(&Exit {
            status: Some(1),
            screen,
            ran_for: Duration::from_millis(800),
        });
        assert_eq!(d.reason, "CrashedAtStart");
        assert!(d.crash_loop);
        assert_eq!(
            d.message,
            "agent exited with status 1 0.8s after its launch: Welcome | Invalid API key · Please run /login"
        );
        let d = diagnose(&Exit {
            status: Some(127),
            screen: "sh: 1: claude: not found\n",
            ran_for: Duration::from_millis(50),
        });
        assert_eq!(d.reason, "CommandNotFound");
        let d = diagnose(&Exit {
            status: Some(143),
            screen: "claude --resume 1234\n",
            ran_for: Duration::from_secs(3600),
        });
        assert_eq!(d.reason, "AgentExited");
        assert!(!d.crash_loop);
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        assert_eq!(
            with_next_try("boom", now + Duration::from_secs(60), now),
            "boom; next try at 08:01:00 UTC (in 60s)"
        );
    }
}

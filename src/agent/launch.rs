//! How a Session's agent is started: command line, environment and the
//! per-session settings file. Pure: the controller executes the plan.
//!
//! The settings file is passed with `--settings`, so the user's own
//! settings are never rewritten. It installs HTTP hooks that post every
//! event to the daemon and a statusLine command that forwards Claude Code's
//! status input (usage, model) to the daemon and prints the daemon's line.

use crate::api::{AgentSpec, PermissionMode, Session};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};

/// Hook events the daemon listens to.
pub const HOOK_EVENTS: &[&str] = &[
    "SessionStart",
    "UserPromptSubmit",
    "Stop",
    "StopFailure",
    "Notification",
    "PreToolUse",
    "PostToolUse",
    "SessionEnd",
];

/// Events for which Claude Code only runs command hooks.
const COMMAND_ONLY_EVENTS: &[&str] = &["SessionStart"];

/// Events that take a tool matcher.
const TOOL_EVENTS: &[&str] = &["PreToolUse", "PostToolUse"];

/// The settings file of one session. `agent_url` is the session's endpoint
/// prefix (with its secret); `statusline_program` is this binary.
///
/// It also turns off Claude Code's own "continue automatically at usage
/// limit" (`autoContinueAtUsageLimit`, on by default since about 2.1.234):
/// the daemon continues a turn a limit cut short itself (on another
/// account, or here after the reset), and both together would run the cut
/// task twice. Settings passed with `--settings` take precedence over the
/// user's own `settings.json`; only a managed policy can override them.
pub fn settings(agent_url: &str, statusline_program: &Path, skip_permission_prompt: bool) -> Value {
    let mut hooks = serde_json::Map::new();
    let program = shell_quote(&statusline_program.to_string_lossy());
    for ev in HOOK_EVENTS {
        // Claude Code runs no HTTP hook for SessionStart: that one goes
        // through this binary, which posts the same JSON.
        let hook = if COMMAND_ONLY_EVENTS.contains(ev) {
            json!({"type": "command", "command": format!("{program} hook --url {agent_url}/hook"), "timeout": 5})
        } else {
            json!({"type": "http", "url": format!("{agent_url}/hook"), "timeout": 5})
        };
        let mut entry = json!({ "hooks": [hook] });
        if TOOL_EVENTS.contains(ev) {
            entry["matcher"] = json!("*");
        }
        hooks.insert(ev.to_string(), json!([entry]));
    }
    let mut s = json!({
        "hooks": hooks,
        "statusLine": {
            "type": "command",
            "command": format!("{program} statusline --url {agent_url}/statusline"),
            "padding": 0,
        },
        "autoContinueAtUsageLimit": false,
    });
    if skip_permission_prompt {
        s["skipDangerousModePermissionPrompt"] = json!(true);
    }
    s
}

fn shell_quote(s: &str) -> String {
    if s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"/._-+".contains(&b))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// Everything needed to start (or restart) one agent.
#[derive(Debug, Clone, PartialEq)]
pub struct LaunchPlan {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: PathBuf,
}

pub struct LaunchInput<'a> {
    pub session: &'a Session,
    /// The account's config dir (None: Claude Code's default).
    pub config_dir: Option<&'a Path>,
    pub settings_path: &'a Path,
    pub agent_session_id: &'a str,
    /// A transcript exists: continue it.
    pub resume: bool,
}

/// The command line and environment for `input`.
pub fn plan(input: &LaunchInput<'_>) -> LaunchPlan {
    let agent = &input.session.spec.agent;
    // Leading arguments that are not flags name a subcommand of the
    // program (`claude-failover sim-agent`): they stay right after it.
    let lead = agent
        .args
        .iter()
        .take_while(|a| !a.starts_with('-'))
        .count();
    let mut argv = vec![agent.command.clone()];
    argv.extend(agent.args[..lead].iter().cloned());
    argv.push("--settings".into());
    argv.push(input.settings_path.to_string_lossy().into_owned());
    argv.extend(crate::mcp::agent::launch_args(
        input.session,
        input.settings_path,
    ));
    argv.push(
        if input.resume {
            "--resume"
        } else {
            "--session-id"
        }
        .into(),
    );
    argv.push(input.agent_session_id.into());
    if let Some(m) = &agent.model {
        argv.push("--model".into());
        argv.push(m.clone());
    }
    if mode_in_args(&agent.args).is_none() {
        argv.push("--permission-mode".into());
        argv.push(permission_mode(agent).flag_value().into());
    }
    argv.extend(agent.args[lead..].iter().cloned());
    let mut env: Vec<(String, String)> = CLASSIC_RENDERER
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    if let Some(dir) = input.config_dir {
        env.push((
            "CLAUDE_CONFIG_DIR".into(),
            dir.to_string_lossy().into_owned(),
        ));
    }
    for (k, v) in crate::agent::env::resolve_or_skip(&agent.env) {
        env.retain(|(ek, _)| *ek != k);
        env.push((k, v));
    }
    LaunchPlan {
        argv,
        env,
        cwd: crate::fsutil::expand_home(&input.session.spec.workdir),
    }
}

/// Claude Code 2.1.3xx draws in the terminal's alternate screen (its
/// "fullscreen" renderer, with its own virtual scrollback) for new installs;
/// then nothing the agent prints reaches the pane's history, and `logs`,
/// `attach` and a person scrolling back in tmux see only the last screen. The
/// classic renderer prints into the main screen as 2.1.197 does. A Session's
/// `spec.agent.env` may set it otherwise.
const CLASSIC_RENDERER: &[(&str, &str)] = &[("CLAUDE_CODE_DISABLE_ALTERNATE_SCREEN", "1")];

/// The permission mode `args` choose, if any: `--dangerously-skip-permissions`,
/// `--permission-mode MODE` or `--permission-mode=MODE`. `Err` holds a mode
/// Claude Code's releases do not name alike (passed through as written).
pub fn mode_in_args(args: &[String]) -> Option<Result<PermissionMode, String>> {
    let parse = |v: &str| {
        // 2.1.3xx calls the default mode `manual` and takes both names.
        let v = if v == "manual" { "default" } else { v };
        serde_json::from_value::<PermissionMode>(json!(v)).map_err(|_| v.to_string())
    };
    args.iter().enumerate().find_map(|(i, a)| {
        if a == "--dangerously-skip-permissions" {
            Some(Ok(PermissionMode::BypassPermissions))
        } else if let Some(v) = a.strip_prefix("--permission-mode=") {
            Some(parse(v))
        } else if a == "--permission-mode" {
            Some(args.get(i + 1).map_or(Err(String::new()), |v| parse(v)))
        } else {
            None
        }
    })
}

/// The mode an agent runs in: `permissionMode`, else what `args` choose,
/// else `auto`.
pub fn permission_mode(agent: &AgentSpec) -> PermissionMode {
    agent
        .permission_mode
        .or_else(|| mode_in_args(&agent.args).and_then(Result::ok))
        .unwrap_or(PermissionMode::Auto)
}

/// Whether the agent runs in bypass mode (then its confirmation prompt is
/// pre-accepted in the settings file).
pub fn bypasses_permissions(session: &Session) -> bool {
    permission_mode(&session.spec.agent) == PermissionMode::BypassPermissions
}

/// `permissionMode` and a permission flag in `args` at once: which to keep.
pub fn permission_conflict(agent: &AgentSpec) -> Option<String> {
    let mode = agent.permission_mode?;
    let flag = mode_in_args(&agent.args)?;
    let said = match &flag {
        Ok(PermissionMode::BypassPermissions)
            if agent
                .args
                .iter()
                .any(|a| a == "--dangerously-skip-permissions") =>
        {
            "--dangerously-skip-permissions".to_string()
        }
        Ok(m) => format!("--permission-mode {m}"),
        Err(v) => format!("--permission-mode {v}"),
    };
    Some(format!(
        "`{said}` and spec.agent.permissionMode ({mode}) both set the permission mode: \
         keep only permissionMode"
    ))
}

/// Environment that must not be set in a Session's `spec.agent.env`,
/// with where it belongs instead.
pub fn misplaced_env(name: &str) -> Option<&'static str> {
    match name {
        "CLAUDE_CONFIG_DIR" => Some(
            "the account's config dir is set by the Session's account (spec.account, \
             the Account's spec.configDir); set here it would pin every launch to one \
             account and defeat failover",
        ),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{AgentSpec, SessionSpec};

    fn session() -> Session {
        let mut s = Session::new(
            "ccl-0",
            SessionSpec {
                workdir: "/code/api".into(),
                account: Some("work".into()),
                agent: AgentSpec {
                    command: "/opt/claude".into(),
                    args: vec!["--dangerously-skip-permissions".into()],
                    model: Some("sonnet".into()),
                    env: [("FOO".to_string(), "bar".into())].into(),
                    mcp: false,
                    permission_mode: None,
                },
                suspend: false,
                workspace: None,
                standby: None,
                node_name: None,
            },
        );
        s.metadata.namespace = Some("default".into());
        s
    }

    #[test]
    fn first_launch_pins_the_id_later_ones_resume() {
        let s = session();
        let input = LaunchInput {
            session: &s,
            config_dir: Some(Path::new("/acct/work")),
            settings_path: Path::new("/state/s.json"),
            agent_session_id: "1111",
            resume: false,
        };
        let p = plan(&input);
        assert_eq!(
            p.argv,
            [
                "/opt/claude",
                "--settings",
                "/state/s.json",
                "--session-id",
                "1111",
                "--model",
                "sonnet",
                "--dangerously-skip-permissions"
            ]
        );
        assert_eq!(
            p.env,
            [
                ("CLAUDE_CODE_DISABLE_ALTERNATE_SCREEN".into(), "1".into()),
                ("CLAUDE_CONFIG_DIR".into(), "/acct/work".into()),
                ("FOO".into(), "bar".into())
            ]
        );
        assert_eq!(p.cwd, PathBuf::from("/code/api"));
        let p = plan(&LaunchInput {
            resume: true,
            ..input
        });
        assert_eq!(&p.argv[3..5], ["--resume", "1111"]);
        assert!(bypasses_permissions(&s), "args choose the mode");
        // A subcommand stays in front of the controller's flags.
        let mut sim = session();
        sim.spec.agent.command = "/bin/claude-failover".into();
        sim.spec.agent.args = vec!["sim-agent".into(), "--verbose".into()];
        let p = plan(&LaunchInput {
            session: &sim,
            ..input
        });
        assert_eq!(
            &p.argv[..3],
            ["/bin/claude-failover", "sim-agent", "--settings"]
        );
        assert_eq!(&p.argv[8..], ["--permission-mode", "auto", "--verbose"]);
    }

    #[test]
    fn the_permission_mode_is_explicit() {
        let mut s = session();
        s.spec.agent.args.clear();
        let input = |s: &Session| {
            plan(&LaunchInput {
                session: s,
                config_dir: None,
                settings_path: Path::new("/s.json"),
                agent_session_id: "1",
                resume: false,
            })
            .argv
        };
        // Unset: auto, whatever the release's own default.
        assert_eq!(
            &input(&s)[5..],
            ["--model", "sonnet", "--permission-mode", "auto"]
        );
        assert!(!bypasses_permissions(&s));
        for (mode, flag) in [
            (PermissionMode::Default, "default"),
            (PermissionMode::AcceptEdits, "acceptEdits"),
            (PermissionMode::Plan, "plan"),
            (PermissionMode::DontAsk, "dontAsk"),
            (PermissionMode::BypassPermissions, "bypassPermissions"),
        ] {
            s.spec.agent.permission_mode = Some(mode);
            assert_eq!(input(&s)[7..], ["--permission-mode", flag]);
            assert_eq!(permission_conflict(&s.spec.agent), None);
        }
        assert!(bypasses_permissions(&s));
        assert!(!PermissionMode::DontAsk.can_ask() && PermissionMode::Plan.can_ask());
        // A mode in args (manifests from before the field) is kept as written.
        s.spec.agent.permission_mode = None;
        s.spec.agent.args = vec!["--permission-mode".into(), "plan".into()];
        assert_eq!(&input(&s)[7..], ["--permission-mode", "plan"]);
        assert_eq!(permission_mode(&s.spec.agent), PermissionMode::Plan);
        s.spec.agent.args = vec!["--permission-mode=manual".into()];
        assert_eq!(permission_mode(&s.spec.agent), PermissionMode::Default);
        // Both: told which to keep.
        s.spec.agent.permission_mode = Some(PermissionMode::Auto);
        s.spec.agent.args = vec!["--dangerously-skip-permissions".into()];
        let why = permission_conflict(&s.spec.agent).unwrap();
        assert!(why.contains("--dangerously-skip-permissions"), "{why}");
        assert!(misplaced_env("CLAUDE_CONFIG_DIR").is_some());
        assert!(misplaced_env("ANTHROPIC_BASE_URL").is_none());
    }

    #[test]
    fn settings_post_every_hook_to_the_session_url() {
        let v = settings(
            "http://127.0.0.1:9/v1/agents/default/a/s3cr3t",
            Path::new("/bin/claude-failover"),
            true,
        );
        for ev in HOOK_EVENTS.iter().filter(|e| **e != "SessionStart") {
            assert_eq!(
                v["hooks"][ev][0]["hooks"][0]["url"],
                "http://127.0.0.1:9/v1/agents/default/a/s3cr3t/hook"
            );
        }
        assert_eq!(
            v["hooks"]["SessionStart"][0]["hooks"][0]["command"],
            "/bin/claude-failover hook --url http://127.0.0.1:9/v1/agents/default/a/s3cr3t/hook"
        );
        assert_eq!(v["hooks"]["PreToolUse"][0]["matcher"], "*");
        assert_eq!(
            v["statusLine"]["command"],
            "/bin/claude-failover statusline --url http://127.0.0.1:9/v1/agents/default/a/s3cr3t/statusline"
        );
        assert_eq!(v["skipDangerousModePermissionPrompt"], true);
        assert_eq!(
            v["autoContinueAtUsageLimit"], false,
            "the daemon continues a cut turn, not Claude Code"
        );
    }
}

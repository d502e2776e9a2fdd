//! How a Session's agent is started: command line, environment and the
//! per-session settings file. Pure: the controller executes the plan.
//!
//! The settings file is passed with `--settings`, so the user's own
//! settings are never rewritten. It installs HTTP hooks that post every
//! event to the daemon and a statusLine command that forwards Claude Code's
//! status input (usage, model) to the daemon and prints the daemon's line.

use crate::api::Session;
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
    argv.extend(agent.args[lead..].iter().cloned());
    let mut env: Vec<(String, String)> = Vec::new();
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

/// Whether the agent runs in bypass mode (then its confirmation prompt is
/// pre-accepted in the settings file).
pub fn bypasses_permissions(session: &Session) -> bool {
    session.spec.agent.args.iter().any(|a| {
        a == "--dangerously-skip-permissions" || a == "--permission-mode=bypassPermissions"
    }) || session
        .spec
        .agent
        .args
        .windows(2)
        .any(|w| w[0] == "--permission-mode" && w[1] == "bypassPermissions")
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
                },
                suspend: false,
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
        assert!(bypasses_permissions(&s));
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
        assert_eq!(p.argv.last().unwrap(), "--verbose");
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
    }
}

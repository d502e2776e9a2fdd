//! `doctor`: is this machine ready to run the pool? One line per check;
//! each problem on one line with its fix; exit 1 when there is any.
//!
//! Checks: Claude Code (every agent command the Sessions use) found and its
//! version inside the supported range; tmux; each Account's config dir and
//! login (and copies of one login in two accounts); the shared transcript
//! folder; the daemon's address; Claude Code variables in this shell that
//! belong in a Session's `spec.agent.env`.

use super::Ctx;
use crate::agent::{exit, login, version};
use crate::api::{Account, Session};
use anyhow::Result;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct DoctorArgs {}

/// Where the pool's things are, as `run` resolves them.
pub struct Paths {
    pub tmux_socket: PathBuf,
    pub transcripts: PathBuf,
    pub listen: String,
}

impl Paths {
    pub fn of(ctx: &Ctx) -> Paths {
        let cfg = &ctx.config;
        let state_dir = ctx.state_dir();
        Paths {
            tmux_socket: cfg
                .tmux_socket
                .as_deref()
                .map(crate::fsutil::expand_home)
                .unwrap_or_else(|| state_dir.join("tmux.sock")),
            transcripts: cfg
                .transcripts_dir
                .as_deref()
                .map(crate::fsutil::expand_home)
                .unwrap_or_else(|| state_dir.join("projects")),
            listen: cfg
                .listen
                .clone()
                .unwrap_or_else(|| super::run::DEFAULT_LISTEN.into()),
        }
    }
}

/// One check's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    Ok(String),
    /// Worth knowing, not wrong.
    Note(String),
    /// What is wrong, and the fix.
    Problem(String, String),
}

impl std::fmt::Display for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Check::Ok(what) => write!(f, "ok       {what}"),
            Check::Note(what) => write!(f, "note     {what}"),
            Check::Problem(what, fix) => write!(f, "PROBLEM  {what} — fix: {fix}"),
        }
    }
}

pub fn doctor(ctx: &Ctx, _a: DoctorArgs) -> Result<ExitCode> {
    let paths = Paths::of(ctx);
    let (accounts, sessions) = match ctx.store() {
        Ok(store) => (
            store.api::<Account>(None).list()?,
            store.api::<Session>(None).list()?,
        ),
        Err(e) => {
            println!(
                "{}",
                Check::Problem(
                    format!("{e:#}"),
                    "run `claude-failover init`, or point --store at the pool's store".into()
                )
            );
            (Vec::new(), Vec::new())
        }
    };
    let env: Vec<(String, String)> = std::env::vars().collect();
    let mut checks = Vec::new();
    checks.extend(agents(&sessions, &env));
    checks.push(tmux());
    checks.extend(accounts_checks(&accounts, &sessions, &env));
    checks.push(transcripts(&paths.transcripts));
    checks.push(address(&paths.listen));
    checks.extend(misplaced(&env, &sessions));
    let problems = checks
        .iter()
        .filter(|c| matches!(c, Check::Problem(..)))
        .count();
    for c in &checks {
        println!("{c}");
    }
    if problems > 0 {
        eprintln!(
            "{problems} problem{} found",
            if problems == 1 { "" } else { "s" }
        );
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

fn var<'a>(env: &'a [(String, String)], name: &str) -> Option<&'a str> {
    env.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// Claude Code: each distinct agent command of the Sessions (`claude` when
/// there are none), found and in the supported range. Sessions running this
/// program (`sim-agent`) are skipped.
pub fn agents(sessions: &[Session], env: &[(String, String)]) -> Vec<Check> {
    let this = std::env::current_exe().ok();
    let mut commands: Vec<(String, Option<String>)> = sessions
        .iter()
        .filter(|s| {
            let c = crate::fsutil::expand_home(&s.spec.agent.command);
            this.as_deref().is_none_or(|t| c != t)
        })
        .map(|s| {
            (
                s.spec.agent.command.clone(),
                crate::agent::env::lookup(&s.spec.agent.env, "PATH"),
            )
        })
        .collect();
    if sessions.is_empty() {
        commands.push(("claude".into(), None));
    }
    commands.sort();
    commands.dedup();
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
    commands
        .into_iter()
        .map(|(command, path)| {
            let path = path.or_else(|| var(env, "PATH").map(str::to_string));
            let found = match exit::resolve_command(&command, path.as_deref(), &cwd) {
                Ok(p) => p,
                Err(e) => {
                    // The fix is said apart.
                    let e = e.split("; install").next().unwrap_or(&e);
                    return Check::Problem(
                        format!("Claude Code: {e}"),
                        format!(
                            "npm install -g @anthropic-ai/claude-code@{} (or set the Session's \
                             spec.agent.command to its full path)",
                            version::NEWEST_TESTED
                        ),
                    );
                }
            };
            let range = format!(
                "{} to {}",
                version::OLDEST_SUPPORTED,
                version::NEWEST_TESTED
            );
            match version::of_binary(&found) {
                Err(e) => Check::Problem(
                    format!("Claude Code at {}: {e}", found.display()),
                    "reinstall it (npm install -g @anthropic-ai/claude-code)".into(),
                ),
                Ok(v) => match version::Support::of(&v.to_string()) {
                    version::Support::Supported(_) => Check::Ok(format!(
                        "Claude Code {v} at {} (supported: {range})",
                        found.display()
                    )),
                    version::Support::Untested(_) => Check::Note(format!(
                        "Claude Code {v} at {} is newer than the newest tested ({range}); \
                         pin {} if sessions misbehave",
                        found.display(),
                        version::NEWEST_TESTED
                    )),
                    _ => Check::Problem(
                        format!(
                            "Claude Code {v} at {} is older than the supported range ({range})",
                            found.display()
                        ),
                        format!(
                            "npm install -g @anthropic-ai/claude-code@{}",
                            version::NEWEST_TESTED
                        ),
                    ),
                },
            }
        })
        .collect()
}

/// tmux, the sessions' runtime.
pub fn tmux() -> Check {
    match std::process::Command::new("tmux")
        .arg("-V")
        .env_remove("TMUX")
        .output()
    {
        Ok(o) if o.status.success() => Check::Ok(String::from_utf8_lossy(&o.stdout).trim().into()),
        _ => Check::Problem(
            "tmux is not installed (or not on PATH)".into(),
            "install it (apt-get install tmux, brew install tmux)".into(),
        ),
    }
}

/// Each Account's config dir and login, and copies of one login.
pub fn accounts_checks(
    accounts: &[Account],
    sessions: &[Session],
    env: &[(String, String)],
) -> Vec<Check> {
    let mut out = Vec::new();
    if accounts.is_empty() {
        out.push(Check::Note(
            "no Accounts: sessions run under Claude Code's default config dir (~/.claude)".into(),
        ));
    }
    let dirs = login::config_dirs_by_preference(accounts.iter());
    let copies = login::copied_logins(&dirs);
    for (name, dir) in &dirs {
        let what = format!("account {name} ({})", dir.display());
        match login::check(name, dir, login::agents_credential(name, sessions, env)) {
            login::Login::LoggedIn(m) => out.push(Check::Ok(format!("{what}: logged in ({m})"))),
            login::Login::Unknown(why) => out.push(Check::Note(format!("{what}: {why}"))),
            login::Login::NotLoggedIn { problem, fix } => {
                out.push(Check::Problem(format!("account {name}: {problem}"), fix))
            }
        }
        if let Some((_, original)) = copies.iter().find(|(c, _)| c == name) {
            out.push(Check::Problem(
                format!("account {name} holds a copy of account {original}'s login"),
                format!(
                    "when one refreshes it Claude Code logs the other out: log in to {name} on its own (`claude-failover login {name} --force`)"
                ),
            ));
        }
    }
    out
}

/// The shared transcript folder: there (or creatable) and writable.
pub fn transcripts(dir: &Path) -> Check {
    let probe = dir.join(format!(".doctor-{}", std::process::id()));
    let ok = std::fs::create_dir_all(dir)
        .and_then(|_| std::fs::write(&probe, b""))
        .and_then(|_| std::fs::remove_file(&probe));
    match ok {
        Ok(()) => Check::Ok(format!("shared transcript folder {}", dir.display())),
        Err(e) => Check::Problem(
            format!("shared transcript folder {}: {e}", dir.display()),
            "set transcriptsDir in config.yaml to a folder you can write".into(),
        ),
    }
}

/// The daemon's address: free, or already this daemon's.
pub fn address(listen: &str) -> Check {
    match std::net::TcpListener::bind(listen) {
        Ok(_) => Check::Ok(format!("daemon address {listen} is free")),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            if healthz(listen) {
                Check::Ok(format!("a claude-failover daemon answers on {listen}"))
            } else {
                Check::Problem(
                    format!("daemon address {listen} is used by another program"),
                    "stop it, or set listen: in config.yaml (or run --listen) to a free port"
                        .into(),
                )
            }
        }
        Err(e) => Check::Problem(
            format!("daemon address {listen}: {e}"),
            "set listen: in config.yaml to a local address such as 127.0.0.1:7817".into(),
        ),
    }
}

fn healthz(listen: &str) -> bool {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(std::time::Duration::from_secs(2)))
        .http_status_as_error(false)
        .build()
        .into();
    agent
        .get(format!("http://{listen}/healthz"))
        .call()
        .ok()
        .filter(|r| r.status() == 200)
        .and_then(|mut r| r.body_mut().read_to_string().ok())
        .is_some_and(|b| b.trim() == "ok")
}

/// Claude Code variables in this shell that the Sessions do not declare:
/// agents get them only when the daemon starts from this shell.
pub fn misplaced(env: &[(String, String)], sessions: &[Session]) -> Vec<Check> {
    let mut out = Vec::new();
    for s in sessions {
        for k in s.spec.agent.env.keys() {
            if let Some(why) = crate::agent::launch::misplaced_env(k) {
                out.push(Check::Problem(
                    format!(
                        "session {}: spec.agent.env.{k} is set",
                        s.metadata.name.as_deref().unwrap_or_default()
                    ),
                    format!("remove it: {why}"),
                ));
            }
        }
    }
    for name in ["ANTHROPIC_BASE_URL", "ANTHROPIC_MODEL", "CLAUDE_CONFIG_DIR"] {
        let declared = sessions.iter().any(|s| s.spec.agent.env.contains_key(name));
        if var(env, name).is_some() && !declared {
            let place = if name == "CLAUDE_CONFIG_DIR" {
                "each Account's spec.configDir sets it for its sessions"
            } else {
                "declare it in each Session's spec.agent.env, so the daemon's agents get it however the daemon is started"
            };
            out.push(Check::Note(format!(
                "{name} is set in this shell but in no Session: {place}"
            )));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_are_one_line_with_their_fix() {
        let p = Check::Problem("tmux is not installed".into(), "install it".into());
        assert_eq!(
            p.to_string(),
            "PROBLEM  tmux is not installed — fix: install it"
        );
        assert!(!p.to_string().contains('\n'));
        let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = busy.local_addr().unwrap().to_string();
        assert!(matches!(address(&addr), Check::Problem(..)));
        drop(busy);
        // A free address is fine (another test may take a freed port at
        // once: a few tries, each on a port just freed).
        let free = (0..5).any(|_| {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = l.local_addr().unwrap().to_string();
            drop(l);
            matches!(address(&addr), Check::Ok(_))
        });
        assert!(free, "a free address reads as a problem");
        let d = tempfile::tempdir().unwrap();
        assert!(matches!(transcripts(&d.path().join("p")), Check::Ok(_)));
        let file = d.path().join("f");
        std::fs::write(&file, "").unwrap();
        assert!(matches!(transcripts(&file.join("p")), Check::Problem(..)));
        let env = vec![("ANTHROPIC_BASE_URL".to_string(), "http://gw".to_string())];
        let notes = misplaced(&env, &[]);
        assert_eq!(notes.len(), 1);
        assert!(
            notes[0].to_string().contains("spec.agent.env"),
            "{}",
            notes[0]
        );
    }
}

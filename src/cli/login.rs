//! `login ACCOUNT`: runs Claude Code's own login (`claude auth login`)
//! under the account's config dir, in a tmux session of the pool, and
//! waits until the account's credentials are there.
//!
//! In a terminal the command attaches to that session, so the login is
//! finished right there (Claude Code opens a browser, or prints a URL and
//! asks for the code); elsewhere it says how to attach. Claude Code writes
//! the credentials itself: this command only reads them (never prints
//! them). Once logged in, the Account is annotated so the daemon looks at
//! it again at once.

use super::Ctx;
use super::doctor::Paths;
use crate::agent::{exit, login};
use crate::api::{Account, Kind, ObjectKey, Session};
use crate::tmux::{NewSession, Tmux};
use anyhow::{Context as _, Result, bail};
use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// The annotation set when a login finishes (wakes the account controller).
pub const LOGGED_IN_AT: &str = "claude-failover.io/logged-in-at";
/// How often the credentials are looked at while the login runs.
const POLL: Duration = Duration::from_millis(250);
/// How long an ended login's empty screen is read again (tmux may mark
/// the pane dead before it has read what the process wrote last).
const DEAD_TEXT_WAIT: Duration = Duration::from_secs(1);
/// How often, meanwhile.
const DEAD_TEXT_STEP: Duration = Duration::from_millis(50);

/// Variables of this shell the login needs (a browser to open, a proxy to
/// go through, a CA to trust), passed on to Claude Code.
const PASSED_ON: &[&str] = &[
    "BROWSER",
    "DISPLAY",
    "WAYLAND_DISPLAY",
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
    "NO_PROXY",
    "no_proxy",
    "NODE_EXTRA_CA_CERTS",
    "SSL_CERT_FILE",
];

#[derive(clap::Args, Debug)]
pub struct LoginArgs {
    /// The Account to log in
    pub account: String,
    /// Claude Code's command [default: the agent command of the account's Sessions, else `claude`]
    #[arg(long)]
    pub command: Option<String>,
    /// Log in with an Anthropic Console account (API usage billing) instead of a subscription
    #[arg(long)]
    pub console: bool,
    /// Log in again even when the account has a login
    #[arg(long)]
    pub force: bool,
    /// Never attach to the login's tmux session (print how to instead)
    #[arg(long)]
    pub no_attach: bool,
    /// How long to wait for the login to finish
    #[arg(long, default_value = "10m", value_parser = super::wait::parse_duration)]
    pub timeout: Duration,
}

/// The login's tmux session name.
fn session_name(key: &ObjectKey) -> String {
    if key.namespace == crate::api::DEFAULT_NAMESPACE {
        format!("login-{}", key.name)
    } else {
        format!("login-{}_{}", key.namespace, key.name)
    }
}

/// A fingerprint of the credentials file's bytes, to tell a new login from
/// the one that was there (never shown).
fn creds_stamp(dir: &Path) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let bytes = std::fs::read(dir.join(".credentials.json")).ok()?;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    Some(h.finish())
}

pub fn login(ctx: &Ctx, a: LoginArgs) -> Result<ExitCode> {
    let store = ctx.store()?;
    let account = store
        .api::<Account>(Some(&ctx.namespace))
        .get(&a.account)?
        .with_context(|| {
            format!(
                "account \"{}\" not found in namespace {} (claude-failover get accounts)",
                a.account, ctx.namespace
            )
        })?;
    let dir = crate::fsutil::expand_home(&account.spec.config_dir);
    if let login::Login::LoggedIn(m) = login::check(&a.account, &dir, None)
        && !a.force
    {
        println!(
            "account {} is already logged in ({m}); use --force to log in again",
            a.account
        );
        return Ok(ExitCode::SUCCESS);
    }
    let (argv, env) = login_command(ctx, &a, &dir)?;
    create_private_dir(&dir)?;
    let key = ObjectKey::new(Kind::Account, &ctx.namespace, &a.account);
    let pane = LoginPane {
        name: session_name(&key),
        socket: Paths::of(ctx).tmux_socket,
        rt: tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?,
    };
    let stamp = creds_stamp(&dir);
    pane.start(&dir, &env, &argv)?;
    let interactive =
        !a.no_attach && std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
    eprintln!(
        "Claude Code's login for account {} runs in tmux session {} ({})",
        a.account,
        pane.name,
        if interactive {
            "attaching; finish the login there".to_string()
        } else {
            format!("finish it there: {}", pane.attach_command())
        }
    );
    let client = if interactive {
        Some(pane.attach()?)
    } else {
        None
    };
    let outcome = pane.wait(&a, &dir, stamp, client)?;
    match outcome {
        Ok(m) => {
            record_login(&store, &key, &m)?;
            println!("account {} is logged in ({m})", a.account);
            Ok(ExitCode::SUCCESS)
        }
        Err(message) => bail!("account {}: {message}", a.account),
    }
}

/// Environment variables, in order.
type Env = Vec<(String, String)>;

/// Claude Code's login command and its environment: the account's agent
/// environment (a gateway's ANTHROPIC_BASE_URL, ...), what this shell has
/// for the browser and the network, and the account's config dir.
fn login_command(ctx: &Ctx, a: &LoginArgs, dir: &Path) -> Result<(Vec<String>, Env)> {
    let sessions: Vec<Session> = ctx
        .store()?
        .api::<Session>(Some(&ctx.namespace))
        .list()?
        .into_iter()
        .filter(|s| s.spec.account.as_deref() == Some(a.account.as_str()))
        .collect();
    let agent = sessions.first().map(|s| s.spec.agent.clone());
    let command = a
        .command
        .clone()
        .or_else(|| agent.as_ref().map(|g| g.command.clone()))
        .unwrap_or_else(|| "claude".into());
    let path = agent
        .as_ref()
        .and_then(|g| crate::agent::env::lookup(&g.env, "PATH"))
        .or_else(|| std::env::var("PATH").ok());
    let cwd = std::env::current_dir().unwrap_or_else(|_| dir.to_path_buf());
    let program =
        exit::resolve_command(&command, path.as_deref(), &cwd).map_err(|e| anyhow::anyhow!(e))?;
    let mut env: Vec<(String, String)> = agent
        .map(|g| crate::agent::env::resolve(&g.env))
        .transpose()?
        .unwrap_or_default();
    for k in PASSED_ON {
        if let Ok(v) = std::env::var(k) {
            env.retain(|(e, _)| e != k);
            env.push((k.to_string(), v));
        }
    }
    env.retain(|(k, _)| k != "CLAUDE_CONFIG_DIR");
    env.push((
        "CLAUDE_CONFIG_DIR".into(),
        dir.to_string_lossy().into_owned(),
    ));
    let mut argv = vec![
        program.to_string_lossy().into_owned(),
        "auth".into(),
        "login".into(),
    ];
    if a.console {
        argv.push("--console".into());
    }
    Ok((argv, env))
}

/// The login's tmux session in the pool's tmux server.
struct LoginPane {
    name: String,
    socket: std::path::PathBuf,
    rt: tokio::runtime::Runtime,
}

impl LoginPane {
    fn tmux(&self) -> Tmux {
        Tmux::new(&self.socket)
    }

    fn start(&self, dir: &Path, env: &[(String, String)], argv: &[String]) -> Result<()> {
        let tmux = self.tmux();
        self.rt
            .block_on(async {
                tmux.kill_session(&self.name).await?;
                tmux.new_session(&NewSession {
                    name: &self.name,
                    cwd: dir,
                    env,
                    argv,
                    width: 200,
                    height: 50,
                })
                .await
            })
            .context("cannot start the login in the pool's tmux server")?;
        Ok(())
    }

    fn attach_command(&self) -> String {
        format!("tmux -S {} attach -t ={}", self.socket.display(), self.name)
    }

    fn attach(&self) -> Result<std::process::Child> {
        std::process::Command::new("tmux")
            .args(["-S"])
            .arg(&self.socket)
            .args(["attach", "-t", &format!("={}", self.name)])
            .env_remove("TMUX")
            .spawn()
            .context("cannot attach to the login's tmux session")
    }

    /// Waits until the account has a (new, with --force) login, the login's
    /// pane ends, or the timeout passes. The inner error says why there is
    /// no login; the tmux session is closed unless the wait timed out.
    fn wait(
        &self,
        a: &LoginArgs,
        dir: &Path,
        stamp: Option<u64>,
        mut client: Option<std::process::Child>,
    ) -> Result<Result<login::Method, String>> {
        let logged_in = || match login::check(&a.account, dir, None) {
            login::Login::LoggedIn(m) if !a.force || creds_stamp(dir) != stamp => Some(m),
            _ => None,
        };
        let deadline = Instant::now() + a.timeout;
        let mut gone = 0;
        let mut timed_out = false;
        let outcome = loop {
            if let Some(m) = logged_in() {
                break Ok(m);
            }
            if let Some(why) = self.ended(&mut gone)? {
                // The pane may have ended right after writing the login.
                break logged_in().ok_or(why);
            }
            if Instant::now() >= deadline {
                timed_out = true;
                break Err(format!(
                    "no login after {}s (the session stays open: {})",
                    a.timeout.as_secs(),
                    self.attach_command()
                ));
            }
            if let Some(c) = &mut client
                && c.try_wait()?.is_some()
            {
                eprintln!(
                    "detached; still waiting for the login ({})",
                    self.attach_command()
                );
                client = None;
            }
            std::thread::sleep(POLL);
        };
        if !timed_out {
            let _ = self.rt.block_on(self.tmux().kill_session(&self.name));
        }
        if let Some(mut c) = client {
            let _ = c.wait();
        }
        Ok(outcome)
    }

    /// Why the login's pane ended, if it did. A pane that vanished (killed
    /// by hand) is taken as ended once it is still gone at the next look.
    fn ended(&self, gone: &mut u32) -> Result<Option<String>> {
        let pane = self.rt.block_on(self.tmux().pane(&self.name))?;
        let Some(p) = pane else {
            *gone += 1;
            return Ok((*gone > 1).then(|| {
                "Claude Code's login ended without a login (its tmux session is gone)".to_string()
            }));
        };
        if !p.dead {
            return Ok(None);
        }
        // Its last words say why. tmux scrolls a dead pane's screen into
        // its history: read both. tmux may see the process end before it
        // has read all it wrote: an empty screen is read again, briefly.
        let deadline = Instant::now() + DEAD_TEXT_WAIT;
        let said = loop {
            let screen = self.rt.block_on(exit::dead_pane_text(&self.socket, &p.id));
            let said = exit::last_lines(&screen);
            if !said.is_empty() || Instant::now() >= deadline {
                break said;
            }
            std::thread::sleep(DEAD_TEXT_STEP);
        };
        Ok(Some(match (said.is_empty(), p.exit_status) {
            (false, _) => format!("Claude Code's login ended without a login: {said}"),
            (true, Some(c)) => {
                format!(
                    "Claude Code's login ended without a login (exit status {c}, nothing printed)"
                )
            }
            (true, None) => {
                "Claude Code's login ended without a login (its tmux session is gone)".to_string()
            }
        }))
    }
}

/// Annotates the Account (wakes the account controller) and records the
/// login as an event.
fn record_login(store: &crate::store::Store, key: &ObjectKey, how: &login::Method) -> Result<()> {
    let when = serde_json::to_value(k8s_openapi::jiff::Timestamp::now().to_string())?;
    store.update_metadata(key, None, |meta| {
        let ann = meta
            .entry("annotations")
            .or_insert_with(|| serde_json::json!({}));
        if let Some(a) = ann.as_object_mut() {
            a.insert(LOGGED_IN_AT.into(), when.clone());
        }
    })?;
    store.record_event(
        key,
        false,
        "LoggedIn",
        &format!("logged in with claude-failover login ({how})"),
        "cli",
    )?;
    Ok(())
}

/// The config dir, made private (mode 0700) when this creates it.
fn create_private_dir(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create the config dir {}", dir.display()))
}

//! The tmux driver.
//!
//! Every call goes to the project's own tmux server (`-S SOCKET`, default in
//! the state dir), so a user's `tmux kill-server` cannot take the pool down
//! and tests never touch a user's tmux. `TMUX` is removed from the
//! environment of every call. Sessions are found by their exact name on that
//! server (`=NAME`); no process is ever found or killed by name.
//!
//! The server runs with `remain-on-exit on`: when the agent exits, its pane
//! stays (dead, with its exit status) so the controller sees the exit
//! instead of a vanished session.
//!
//! Every call is asynchronous and bounded by a timeout.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::AsyncWriteExt;

use crate::agent::terminal::Terminal;
pub use crate::agent::terminal::{NewSession, Pane, TerminalError as TmuxError};

pub type Result<T, E = TmuxError> = std::result::Result<T, E>;

/// The last field is the server's own pid (see [`nudge_unreaped`]).
const PANE_FORMAT: &str =
    "#{session_name}\t#{pane_id}\t#{pane_pid}\t#{pane_dead}\t#{pane_dead_status}\t#{pid}";

/// How many times [`Tmux::pane`] looks again at a dead pane without its
/// status after nudging the server to reap it.
const UNREAPED_LOOKS: usize = 3;

/// tmux (3.3a) can miss the SIGCHLD of a pane's process that exits while
/// the server is starting (seen on about 5 % of first panes on a loaded
/// machine): the process stays a zombie and the pane stays dead without its
/// exit status for good. Its SIGCHLD handler reaps any child, so a SIGCHLD
/// sent to the server makes it learn the status. Returns whether it nudged.
fn nudge_unreaped(line: &str, pane: &Pane) -> bool {
    if !pane.dead || pane.exit_status.is_some() {
        return false;
    }
    let Some(server) = line.rsplit('\t').next().and_then(|p| p.parse::<i32>().ok()) else {
        return false;
    };
    // SAFETY: kill(2) with a valid signal number; SIGCHLD only makes the
    // tmux server (the pid it reports of itself) wait for its children.
    unsafe { libc::kill(server, libc::SIGCHLD) };
    true
}

/// Parses one line of [`PANE_FORMAT`], nudging the server when the pane is
/// dead without its status.
fn parse_and_nudge(line: &str) -> Option<(Pane, bool)> {
    let pane = parse_pane(line)?;
    let nudged = nudge_unreaped(line, &pane);
    Some((pane, nudged))
}

fn parse_pane(line: &str) -> Option<Pane> {
    let mut f = line.split('\t');
    let session = f.next()?.to_string();
    let id = f.next()?.to_string();
    let pid = f.next()?.parse().ok()?;
    let dead = f.next()? == "1";
    let exit_status = f.next().and_then(|s| s.parse().ok());
    Some(Pane {
        session,
        id,
        pid,
        dead,
        exit_status,
    })
}

static BUFFER_SEQ: AtomicU64 = AtomicU64::new(0);

/// Longest text sent with `send-keys -l`; longer or multi-line text is pasted.
const SEND_KEYS_MAX: usize = 512;

#[derive(Debug, Clone)]
pub struct Tmux {
    socket: PathBuf,
    timeout: Duration,
    /// A shell command run (in the background, `#{session_name}` expanded)
    /// when an agent's pane dies or its session closes, so the daemon
    /// hears of it at once instead of at its next resync.
    notify: Option<String>,
}

/// The tmux events that make the server run [`Tmux::with_notify`]'s command.
const NOTIFY_HOOKS: &[&str] = &["pane-died", "session-closed"];

impl Tmux {
    pub fn new(socket: impl Into<PathBuf>) -> Tmux {
        Tmux {
            socket: socket.into(),
            timeout: Duration::from_secs(10),
            notify: None,
        }
    }

    /// Runs `command` (a shell command; `#{session_name}` is expanded) when
    /// a pane dies or a session closes.
    pub fn with_notify(mut self, command: String) -> Tmux {
        self.notify = Some(command);
        self
    }

    /// `set-hook` arguments for the notify command (empty without one).
    fn hook_args(&self) -> Vec<String> {
        let Some(cmd) = &self.notify else {
            return vec![];
        };
        let mut args = Vec::new();
        for hook in NOTIFY_HOOKS {
            args.extend(["set-hook", "-g", hook].map(String::from));
            args.push(format!(
                "run-shell -b \"{}\"",
                cmd.replace('\\', "\\\\").replace('"', "\\\"")
            ));
            args.push(";".into());
        }
        args
    }

    /// Installs the notify hooks on a running server (a server started
    /// later gets them with its first session). No server: nothing to do.
    pub async fn install_hooks(&self) -> Result<()> {
        let args = self.hook_args();
        if args.is_empty() {
            return Ok(());
        }
        let refs: Vec<&str> = args[..args.len() - 1].iter().map(String::as_str).collect();
        match self.run(&refs, None).await {
            Err(e) if !Self::is_absent(&e) => Err(e),
            _ => Ok(()),
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    async fn run(&self, args: &[&str], stdin: Option<&[u8]>) -> Result<String> {
        let cmd_name = args.first().copied().unwrap_or_default().to_string();
        let mut cmd = tokio::process::Command::new("tmux");
        cmd.arg("-S")
            .arg(&self.socket)
            .args(args)
            .env_remove("TMUX")
            .env_remove("TMUX_PANE")
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let fut = async {
            let mut child = cmd.spawn().map_err(TmuxError::Spawn)?;
            if let (Some(data), Some(mut pipe)) = (stdin, child.stdin.take()) {
                pipe.write_all(data).await.map_err(TmuxError::Spawn)?;
                drop(pipe);
            }
            child.wait_with_output().await.map_err(TmuxError::Spawn)
        };
        let out = tokio::time::timeout(self.timeout, fut)
            .await
            .map_err(|_| TmuxError::Timeout {
                cmd: cmd_name.clone(),
                timeout: self.timeout,
            })??;
        if !out.status.success() {
            return Err(TmuxError::Failed {
                cmd: cmd_name,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// True when the error means "no server / no such session".
    pub fn is_absent(e: &TmuxError) -> bool {
        match e {
            TmuxError::Failed { stderr, .. } => {
                stderr.contains("no server running")
                    || stderr.contains("can't find session")
                    || stderr.contains("can't find pane")
                    || stderr.contains("can't find window")
                    || stderr.contains("No such file or directory")
                    || stderr.contains("error connecting to")
                    // The server is exiting: its last session just went.
                    || stderr.contains("no current target")
                    || stderr.contains("server exited unexpectedly")
                    || stderr.contains("lost server")
            }
            _ => false,
        }
    }

    /// Starts a detached session running `argv` and returns its pane.
    pub async fn new_session(&self, s: &NewSession<'_>) -> Result<Pane> {
        if let Some(dir) = self.socket.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let cwd = s.cwd.to_string_lossy();
        let (w, h) = (s.width.to_string(), s.height.to_string());
        let hooks = self.hook_args();
        let mut args: Vec<&str> = hooks.iter().map(String::as_str).collect();
        args.extend([
            "set-option",
            "-g",
            "remain-on-exit",
            "on",
            ";",
            "set-option",
            "-g",
            "history-limit",
            "5000",
            ";",
            "new-session",
            "-d",
            "-s",
            s.name,
            "-c",
            &cwd,
            "-x",
            &w,
            "-y",
            &h,
            "-P",
            "-F",
            PANE_FORMAT,
        ]);
        let env: Vec<String> = s.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        for e in &env {
            args.push("-e");
            args.push(e);
        }
        args.push("--");
        args.extend(s.argv.iter().map(String::as_str));
        // A server exiting (its last session just closed) refuses the
        // command; the next attempt starts a new one.
        let mut attempt = 0;
        let out = loop {
            match self.run(&args, None).await {
                Err(e) if Self::is_absent(&e) && attempt < 5 => {
                    attempt += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(50 * attempt)).await;
                }
                other => break other?,
            }
        };
        out.lines()
            .find_map(parse_pane)
            .ok_or_else(|| TmuxError::Failed {
                cmd: "new-session".into(),
                stderr: format!("unexpected output: {out}"),
            })
    }

    /// The pane of session `name`, or None when there is no such session.
    pub async fn pane(&self, name: &str) -> Result<Option<Pane>> {
        let target = format!("={name}");
        let mut looks = 0;
        loop {
            let pane = match self
                .run(&["list-panes", "-t", &target, "-F", PANE_FORMAT], None)
                .await
            {
                Ok(out) => out.lines().find_map(parse_and_nudge),
                Err(e) if Self::is_absent(&e) => None,
                Err(e) => return Err(e),
            };
            match pane {
                Some((_, true)) if looks < UNREAPED_LOOKS => looks += 1,
                other => return Ok(other.map(|(p, _)| p)),
            }
        }
    }

    /// Session `name`'s pane and its visible screen, in one tmux command
    /// (the dispatcher's look before typing: one process instead of two).
    pub async fn pane_and_screen(&self, name: &str) -> Result<Option<(Pane, String)>> {
        let target = format!("={name}");
        let pane = format!("={name}:");
        match self
            .run(
                &[
                    "list-panes",
                    "-t",
                    &target,
                    "-F",
                    PANE_FORMAT,
                    ";",
                    "capture-pane",
                    "-p",
                    "-t",
                    &pane,
                ],
                None,
            )
            .await
        {
            Ok(out) => {
                let (first, screen) = out.split_once('\n').unwrap_or((&out, ""));
                Ok(parse_and_nudge(first).map(|(p, _)| (p, screen.to_string())))
            }
            Err(e) if Self::is_absent(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every session's first pane on this server.
    pub async fn panes(&self) -> Result<Vec<Pane>> {
        match self
            .run(&["list-panes", "-a", "-F", PANE_FORMAT], None)
            .await
        {
            Ok(out) => Ok(out
                .lines()
                .filter_map(parse_and_nudge)
                .map(|(p, _)| p)
                .collect()),
            Err(e) if Self::is_absent(&e) => Ok(vec![]),
            Err(e) => Err(e),
        }
    }

    /// Kills session `name`; absent is fine.
    pub async fn kill_session(&self, name: &str) -> Result<()> {
        let target = format!("={name}");
        match self.run(&["kill-session", "-t", &target], None).await {
            Err(e) if !Self::is_absent(&e) => Err(e),
            _ => Ok(()),
        }
    }

    /// Renames session `from` to `to` (its pane and process stay).
    pub async fn rename_session(&self, from: &str, to: &str) -> Result<()> {
        let target = format!("={from}");
        self.run(&["rename-session", "-t", &target, to], None)
            .await
            .map(|_| ())
    }

    /// Types `text` into the pane without submitting it: `send-keys -l` for
    /// a short single line, a bracketed paste from a uniquely named buffer
    /// otherwise (`-r` keeps line feeds from submitting).
    pub async fn send_text(&self, pane: &str, text: &str) -> Result<()> {
        if text.len() <= SEND_KEYS_MAX && !text.contains(['\n', '\r']) {
            self.run(&["send-keys", "-t", pane, "-l", "--", text], None)
                .await?;
            return Ok(());
        }
        let buffer = format!(
            "cf-{}-{}",
            std::process::id(),
            BUFFER_SEQ.fetch_add(1, Ordering::Relaxed)
        );
        self.run(&["load-buffer", "-b", &buffer, "-"], Some(text.as_bytes()))
            .await?;
        self.run(
            &["paste-buffer", "-p", "-r", "-d", "-b", &buffer, "-t", pane],
            None,
        )
        .await?;
        Ok(())
    }

    /// Sends named keys (`Enter`, `Escape`, `C-c`, ...).
    pub async fn send_keys(&self, pane: &str, keys: &[&str]) -> Result<()> {
        let mut args = vec!["send-keys", "-t", pane];
        args.extend_from_slice(keys);
        self.run(&args, None).await.map(|_| ())
    }

    /// Types `text`, lets the terminal settle, then submits with a separate
    /// Enter (for tests and tools; the agent driver types with checks).
    pub async fn type_and_submit(&self, pane: &str, text: &str) -> Result<()> {
        self.send_text(pane, text).await?;
        tokio::time::sleep(Duration::from_millis(100)).await;
        self.send_keys(pane, &["Enter"]).await
    }

    /// The visible screen; with `escapes`, with attributes (`-e`).
    pub async fn capture(&self, pane: &str, escapes: bool) -> Result<String> {
        let mut args = vec!["capture-pane", "-p", "-t", pane];
        if escapes {
            args.push("-e");
        }
        self.run(&args, None).await
    }

    /// Stops the whole server (tests, and `demo` cleanup).
    pub async fn kill_server(&self) -> Result<()> {
        match self.run(&["kill-server"], None).await {
            Err(e) if !Self::is_absent(&e) => Err(e),
            _ => Ok(()),
        }
    }
}

impl Terminal for Tmux {
    async fn new_session(&self, s: &NewSession<'_>) -> Result<Pane> {
        Tmux::new_session(self, s).await
    }
    async fn pane(&self, name: &str) -> Result<Option<Pane>> {
        Tmux::pane(self, name).await
    }
    async fn pane_and_screen(&self, name: &str) -> Result<Option<(Pane, String)>> {
        Tmux::pane_and_screen(self, name).await
    }
    async fn kill_session(&self, name: &str) -> Result<()> {
        Tmux::kill_session(self, name).await
    }
    async fn rename_session(&self, from: &str, to: &str) -> Result<()> {
        Tmux::rename_session(self, from, to).await
    }
    async fn send_text(&self, pane: &str, text: &str) -> Result<()> {
        Tmux::send_text(self, pane, text).await
    }
    async fn send_keys(&self, pane: &str, keys: &[&str]) -> Result<()> {
        Tmux::send_keys(self, pane, keys).await
    }
    async fn capture(&self, pane: &str, escapes: bool) -> Result<String> {
        Tmux::capture(self, pane, escapes).await
    }
}

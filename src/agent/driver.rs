//! The agent driver: everything done *to* a running Claude Code, over a
//! [`Terminal`]. Pane naming, starting and stopping an agent, typing text
//! so that it arrives whole and is submitted once, checking the composer,
//! dismissing the usage-limit dialog; and the probes of the agent's own
//! files (its state file, its prompt history, its process).
//!
//! The controllers decide; the driver only does, and reports what it saw.

use super::panes::Panes;
use super::screen::{self, Screen};
use super::terminal::{NewSession, Pane, Result, Terminal};
use crate::api::{DEFAULT_NAMESPACE, Kind, ObjectKey};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::time::{Instant, sleep, sleep_until};

/// What Claude Code needs between text arriving and the Enter that
/// submits it (an Enter inside the paste is dropped or submits half).
pub const SETTLE: Duration = Duration::from_millis(100);
/// Longest wait for typed text to show in the composer.
pub const TEXT_SHOWS: Duration = Duration::from_secs(3);
/// How often the composer is looked at while waiting on it.
const COMPOSER_POLL: Duration = Duration::from_millis(20);
/// Let an interrupted turn unwind before typing `/exit`.
const INTERRUPT_SETTLE: Duration = Duration::from_millis(200);
/// How often a stopping agent is looked at.
const STOP_POLL: Duration = Duration::from_millis(100);
/// The agent's window.
const WIDTH: u16 = 200;
const HEIGHT: u16 = 50;

/// The tmux session name of a Session.
pub fn tmux_name(key: &ObjectKey) -> String {
    if key.namespace == DEFAULT_NAMESPACE {
        key.name.clone()
    } else {
        format!("{}_{}", key.namespace, key.name)
    }
}

/// The tmux session name of a Session's standby agent.
pub fn standby_tmux_name(key: &ObjectKey) -> String {
    tmux_name(&super::signals::standby_key(key))
}

/// The Session a tmux session name belongs to (see [`tmux_name`]; a
/// standby's name gives its Session).
pub fn key_of_tmux_name(name: &str) -> ObjectKey {
    let key = match name.split_once('_') {
        Some((ns, n)) => ObjectKey::new(Kind::Session, ns, n),
        None => ObjectKey::new(Kind::Session, DEFAULT_NAMESPACE, name),
    };
    super::signals::owner_key(&key)
}

/// How an agent was stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    Exited,
    Terminated,
    Killed,
}

impl std::fmt::Display for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stopped::Exited => "exited after /exit",
            Stopped::Terminated => "stopped with SIGTERM",
            Stopped::Killed => "killed with SIGKILL",
        })
    }
}

/// One session's keyboard (see [`Driver::keyboard`]).
pub type Keyboard = tokio::sync::OwnedMutexGuard<()>;

/// Drives agents in a terminal.
#[derive(Debug, Clone)]
pub struct Driver<T> {
    term: T,
    /// Each step of a graceful stop (`/exit`, SIGTERM, SIGKILL) waits this long.
    stop_step: Duration,
    /// Each session's keyboard, by terminal session name.
    keyboards: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
    /// The panes last seen alive (a terminal call saved while their
    /// process runs).
    panes: Arc<Panes>,
}

impl<T: Terminal> Driver<T> {
    pub fn new(term: T, stop_step: Duration) -> Driver<T> {
        Driver {
            term,
            stop_step,
            keyboards: Arc::default(),
            panes: Arc::default(),
        }
    }

    /// The Session's keyboard, held by whoever types a sequence into its
    /// agent (a task with its checks, `/exit`), so that two writers'
    /// keystrokes never mix in one composer (a task and a stop's `/exit`
    /// once made the prompt `/exitnight task 071`).
    pub async fn keyboard(&self, key: &ObjectKey) -> Keyboard {
        let lock = self
            .keyboards
            .lock()
            .expect("lock")
            .entry(tmux_name(key))
            .or_default()
            .clone();
        lock.lock_owned().await
    }

    pub fn terminal(&self) -> &T {
        &self.term
    }

    /// The Session's pane. A pane whose agent exited but was never reaped
    /// by the terminal looks alive: the process table says otherwise.
    pub async fn pane(&self, key: &ObjectKey) -> Result<Option<Pane>> {
        self.look(&tmux_name(key)).await
    }

    /// Terminal session `name`'s pane: the one last seen, while its
    /// process runs; else the terminal's word.
    async fn look(&self, name: &str) -> Result<Option<Pane>> {
        if let Some(p) = self.panes.get(name) {
            return Ok(Some(p));
        }
        let epoch = self.panes.epoch();
        let pane = self.term.pane(name).await?.map(reaped);
        self.panes.remember(name, pane.as_ref(), epoch);
        Ok(pane)
    }

    /// Changes terminal sessions `names` (what was known of them goes,
    /// before and after).
    async fn change<R>(&self, names: &[&str], op: impl Future<Output = Result<R>>) -> Result<R> {
        /// Forgets again when the change ends, even cancelled midway.
        struct Changing<'a>(&'a Panes, &'a [&'a str]);
        impl Drop for Changing<'_> {
            fn drop(&mut self) {
                self.0.changed(self.1);
            }
        }
        self.panes.changed(names);
        let _after = Changing(&self.panes, names);
        op.await
    }

    /// The pane and its screen, in one terminal call.
    pub async fn pane_and_screen(&self, key: &ObjectKey) -> Result<Option<(Pane, String)>> {
        let name = tmux_name(key);
        let epoch = self.panes.epoch();
        let got = self
            .term
            .pane_and_screen(&name)
            .await?
            .map(|(p, s)| (reaped(p), s));
        self.panes
            .remember(&name, got.as_ref().map(|(p, _)| p), epoch);
        Ok(got)
    }

    pub async fn screen(&self, pane: &Pane) -> Result<String> {
        self.term.capture(&pane.id, false).await
    }

    /// What the screen shows, by the versioned pattern table.
    pub async fn classify(&self, pane: &Pane) -> Result<Screen> {
        Ok(screen::classify(&self.screen(pane).await?))
    }

    /// Starts the agent in a fresh terminal session (an old one of the
    /// same name is ended first).
    pub async fn start(
        &self,
        key: &ObjectKey,
        cwd: &Path,
        env: &[(String, String)],
        argv: &[String],
    ) -> Result<Pane> {
        let name = tmux_name(key);
        self.change(&[&name], async {
            self.term.kill_session(&name).await?;
            self.term
                .new_session(&NewSession {
                    name: &name,
                    cwd,
                    env,
                    argv,
                    width: WIDTH,
                    height: HEIGHT,
                })
                .await
        })
        .await
    }

    /// The pane of the Session's standby agent.
    pub async fn standby_pane(&self, key: &ObjectKey) -> Result<Option<Pane>> {
        self.look(&standby_tmux_name(key)).await
    }

    /// Starts the Session's standby agent in a terminal session of its own
    /// (an old one is ended first).
    pub async fn start_standby(
        &self,
        key: &ObjectKey,
        cwd: &Path,
        env: &[(String, String)],
        argv: &[String],
    ) -> Result<Pane> {
        self.start(&super::signals::standby_key(key), cwd, env, argv)
            .await
    }

    /// Ends the standby's terminal session (its agent with it).
    pub async fn clear_standby(&self, key: &ObjectKey) -> Result<()> {
        let name = standby_tmux_name(key);
        self.change(&[&name], self.term.kill_session(&name)).await
    }

    /// The standby's terminal session becomes the Session's (the replaced
    /// agent's, if still there, is ended first): same pane, same process.
    /// One terminal call when the name is free (the replaced agent was
    /// retired): the rename is tried first.
    pub async fn promote_standby(&self, key: &ObjectKey) -> Result<()> {
        let (name, standby) = (tmux_name(key), standby_tmux_name(key));
        self.change(&[&name, &standby], async {
            if self.term.rename_session(&standby, &name).await.is_ok() {
                return Ok(());
            }
            self.term.kill_session(&name).await?;
            self.term.rename_session(&standby, &name).await
        })
        .await
    }

    /// Ends the Session's terminal session (its agent, if any, with it).
    pub async fn clear(&self, key: &ObjectKey) -> Result<()> {
        let name = tmux_name(key);
        self.change(&[&name], self.term.kill_session(&name)).await
    }

    /// `/exit`, then SIGTERM, then SIGKILL, each with a deadline; then the
    /// terminal session goes. A running turn or an open dialog is escaped
    /// first (`interrupt`).
    pub async fn stop(&self, key: &ObjectKey, pane: &Pane, interrupt: bool) -> Result<Stopped> {
        let signal = |sig: i32| {
            // SAFETY: kill(2) with a pid we launched and a valid signal number.
            unsafe { libc::kill(pane.pid as libc::pid_t, sig) };
        };
        let keyboard = self.keyboard(key).await;
        if interrupt {
            self.term.send_keys(&pane.id, &["Escape"]).await?;
            sleep(INTERRUPT_SETTLE).await;
        }
        self.term.send_text(&pane.id, "/exit").await?;
        sleep(SETTLE).await;
        self.term.send_keys(&pane.id, &["Enter"]).await?;
        drop(keyboard);
        let mut how = Stopped::Exited;
        if !self.wait_gone(key).await? {
            signal(libc::SIGTERM);
            how = Stopped::Terminated;
            if !self.wait_gone(key).await? {
                signal(libc::SIGKILL);
                how = Stopped::Killed;
                self.wait_gone(key).await?;
            }
        }
        self.clear(key).await?;
        Ok(how)
    }

    async fn wait_gone(&self, key: &ObjectKey) -> Result<bool> {
        let deadline = Instant::now() + self.stop_step;
        loop {
            match self.pane(key).await? {
                None => return Ok(true),
                Some(p) if p.dead => return Ok(true),
                Some(_) => {}
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            sleep(STOP_POLL).await;
        }
    }

    /// The last non-empty lines of a pane (why an agent exited is usually
    /// there), joined with ` | `; empty when nothing can be read.
    pub async fn last_words(&self, pane: &Pane, lines: usize) -> String {
        let Ok(screen) = self.screen(pane).await else {
            return String::new();
        };
        let last: Vec<&str> = screen
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with("Pane is dead"))
            .collect();
        last[last.len().saturating_sub(lines)..].join(" | ")
    }

    /// Interrupts the running turn (Esc).
    pub async fn interrupt(&self, pane: &Pane) -> Result<()> {
        self.term.send_keys(&pane.id, &["Escape"]).await
    }

    /// Presses Enter (a submit the UI missed).
    pub async fn enter(&self, pane: &Pane) -> Result<()> {
        self.term.send_keys(&pane.id, &["Enter"]).await
    }

    /// What the composer holds (None: no composer on screen).
    pub async fn composer(&self, pane: &Pane) -> Result<Option<String>> {
        Ok(screen::composer_text(&self.screen(pane).await?))
    }

    /// Types `text` in one terminal call (a crash leaves all of it in the
    /// composer or none of it), waits (bounded) until the composer shows
    /// it and the settle has passed, then presses Enter.
    pub async fn type_then_enter(&self, pane: &Pane, text: &str) -> Result<()> {
        self.term.send_text(&pane.id, text).await?;
        // The settle runs from the typing. One look near its end (more only
        // if the text is not there yet): looking while the agent takes the
        // text in would compete with it for the CPU.
        let settled = Instant::now() + SETTLE;
        let deadline = Instant::now() + TEXT_SHOWS;
        sleep_until(settled - Duration::from_millis(15)).await;
        loop {
            let shown = self.composer(pane).await?.is_some_and(|t| !t.is_empty());
            if shown || Instant::now() >= deadline {
                break;
            }
            sleep(Duration::from_millis(10)).await;
        }
        sleep_until(settled).await;
        self.enter(pane).await
    }

    /// Waits (bounded) until the composer is on screen and empty; false
    /// if it never was.
    pub async fn wait_composer_empty(&self, pane: &Pane, limit: Duration) -> Result<bool> {
        self.wait_composer(pane, "", limit).await
    }

    /// Types `text` without pressing Enter; true once the composer shows
    /// exactly it (bounded by [`TEXT_SHOWS`]).
    pub async fn type_only(&self, pane: &Pane, text: &str) -> Result<bool> {
        self.term.send_text(&pane.id, text).await?;
        self.wait_composer(pane, text, TEXT_SHOWS).await
    }

    /// Waits (bounded) until the composer is on screen and holds exactly
    /// `text`; false if it never did.
    pub async fn wait_composer(&self, pane: &Pane, text: &str, limit: Duration) -> Result<bool> {
        let deadline = Instant::now() + limit;
        loop {
            if self.composer(pane).await?.is_some_and(|t| t == text) {
                return Ok(true);
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            sleep(COMPOSER_POLL).await;
        }
    }

    /// Dismisses the usage-limit dialog if it is open (nothing can be
    /// typed while it is). True when it was.
    pub async fn dismiss_limit_dialog(&self, pane: &Pane) -> Result<bool> {
        if self.classify(pane).await? == Screen::UsageLimitDialog {
            self.interrupt(pane).await?;
            return Ok(true);
        }
        Ok(false)
    }

    /// Hands the Session's terminal session over: the agent, at its prompt
    /// with its transcript complete (a turn boundary), is killed at once
    /// (its state files removed as its exit would) and its terminal
    /// session goes, freeing the name for the agent taking over. No
    /// `/exit`: an exiting Claude Code spends 1 to 3 s of CPU (its
    /// `SessionEnd` hooks, its state written back) that the takeovers of a
    /// whole pool need, and a takeover needs nothing of the exit
    /// (claude-code-probe.md, section 12). The keyboard is held, so a
    /// writer typing into the pane finishes first.
    pub async fn retire(&self, key: &ObjectKey, pane: &Pane) -> Result<()> {
        let keyboard = self.keyboard(key).await;
        let pid = pane.pid;
        let _ = tokio::task::spawn_blocking(move || kill_and_tidy(pid)).await;
        drop(keyboard);
        self.clear(key).await
    }
}

/// SIGKILL to a Claude Code process, then what its exit would have removed:
/// its `sessions/<pid>.json` state file and `sessions/<pid>.*.key` in its
/// config dir (Claude Code does not sweep another process's files).
fn kill_and_tidy(pid: u32) {
    let config_dir = process_config_dir(pid);
    // SAFETY: kill(2) with a pid we launched and a valid signal number.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    let Some(sessions) = config_dir.map(|d| d.join("sessions")) else {
        return;
    };
    let Ok(rd) = std::fs::read_dir(&sessions) else {
        return;
    };
    let (state, key_prefix) = (format!("{pid}.json"), format!("{pid}."));
    for e in rd.filter_map(|e| e.ok()) {
        let name = e.file_name();
        let Some(n) = name.to_str() else { continue };
        if n == state || (n.starts_with(&key_prefix) && n.ends_with(".key")) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// A pane whose process is gone counts as dead.
fn reaped(mut p: Pane) -> Pane {
    if !p.dead && process_gone(p.pid) {
        p.dead = true;
    }
    p
}

// ------------------------------------------------------------------ probes

/// True when process `pid` has exited (gone, or a zombie nobody reaped).
pub fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state == "Z" || state == "X"),
    }
}

/// `CLAUDE_CONFIG_DIR` of a running process (from its environment).
pub fn process_config_dir(pid: u32) -> Option<PathBuf> {
    let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    env.split(|b| *b == 0)
        .find_map(|kv| kv.strip_prefix(b"CLAUDE_CONFIG_DIR="))
        .map(|v| PathBuf::from(String::from_utf8_lossy(v).into_owned()))
}

/// Claude Code records every submitted prompt in `history.jsonl` at once;
/// after a crash this proves a submit the hook could not report. Returns
/// when it was submitted (the line's `timestamp`, milliseconds).
pub fn in_history(config_dir: &Path, marker: &str) -> Option<SystemTime> {
    let h = std::fs::read_to_string(config_dir.join("history.jsonl")).ok()?;
    let line = h.lines().rev().find(|l| l.contains(marker))?;
    let ms = serde_json::from_str::<serde_json::Value>(line)
        .ok()
        .and_then(|v| v.get("timestamp").and_then(serde_json::Value::as_u64))
        .unwrap_or(0);
    Some(SystemTime::UNIX_EPOCH + Duration::from_millis(ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for (ns, name, tmux) in [("default", "ccl-0", "ccl-0"), ("team", "a", "team_a")] {
            let k = ObjectKey::new(Kind::Session, ns, name);
            assert_eq!(tmux_name(&k), tmux);
            assert_eq!(key_of_tmux_name(tmux), k);
            // A standby's notifications wake its Session.
            assert_eq!(key_of_tmux_name(&standby_tmux_name(&k)), k);
        }
    }

    #[test]
    fn history_proves_a_submit() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("history.jsonl"),
            "{\"display\":\"a ⟦task 1⟧\",\"timestamp\":1000}\n{\"display\":\"b\",\"timestamp\":2000}\n",
        )
        .unwrap();
        assert_eq!(
            in_history(d.path(), "⟦task 1⟧"),
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1))
        );
        assert_eq!(in_history(d.path(), "⟦task 2⟧"), None);
        assert!(!process_gone(std::process::id()));
    }
}

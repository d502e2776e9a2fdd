//! `logs SESSION` (the agent's screen and scrollback, or with
//! `--transcript` the conversation's turns; `-f` follows) and `attach
//! SESSION` (the session's tmux on the pool's own server).

use super::Ctx;
use super::args::check_name;
use crate::api::{Kind, ObjectKey};
use anyhow::{Context as _, Result, bail};
use clap::Args;
use serde_json::Value;
use std::io::{BufRead, Seek, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Duration;

#[derive(Args, Debug)]
pub struct LogsArgs {
    /// The session (NAME or session/NAME)
    pub session: String,
    /// The conversation's turns (the transcript) instead of the screen
    #[arg(long)]
    pub transcript: bool,
    /// Keep printing what comes next
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Only the last N lines (screen) or turns (transcript); -1: all
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    pub tail: i64,
    /// Prefix each turn with its time (transcript)
    #[arg(long)]
    pub timestamps: bool,
}

#[derive(Args, Debug)]
pub struct AttachArgs {
    /// The session (NAME or session/NAME)
    pub session: String,
    /// Look without typing (tmux's read-only client)
    #[arg(short = 'r', long)]
    pub read_only: bool,
}

/// How often `logs -f` looks at the screen or the transcript again.
const FOLLOW_EVERY: Duration = Duration::from_millis(500);

fn session_key(ctx: &Ctx, arg: &str) -> Result<ObjectKey> {
    let name = match arg.split_once('/') {
        Some((k, n)) => {
            if super::args::parse_kind(k)? != Kind::Session {
                bail!("only sessions have logs and can be attached to");
            }
            n
        }
        None => arg,
    };
    check_name(name)?;
    let key = ObjectKey::new(Kind::Session, &ctx.namespace, name);
    if ctx.store()?.get(&key)?.is_none() {
        bail!(
            "session.claude-failover.io \"{name}\" not found in namespace {}",
            ctx.namespace
        );
    }
    Ok(key)
}

fn tmux(ctx: &Ctx, args: &[&str]) -> Result<std::process::Output> {
    Command::new("tmux")
        .arg("-S")
        .arg(ctx.tmux_socket())
        .args(args)
        .env_remove("TMUX")
        .output()
        .context("cannot run tmux")
}

/// The pane target of a session on the pool's server (`=NAME:`).
fn target(key: &ObjectKey) -> String {
    format!("={}:", crate::agent::driver::tmux_name(key))
}

fn no_pane(key: &ObjectKey, stderr: &[u8]) -> anyhow::Error {
    anyhow::anyhow!(
        "session {} has no agent running in tmux now ({}): see `describe session {}`",
        key.name,
        String::from_utf8_lossy(stderr).trim(),
        key.name
    )
}

/// Lines of the pane from `start` (tmux line numbers: negative is history).
fn capture(ctx: &Ctx, key: &ObjectKey, start: &str, end: Option<&str>) -> Result<Option<String>> {
    let t = target(key);
    let mut args = vec!["capture-pane", "-p", "-J", "-t", &t, "-S", start];
    if let Some(e) = end {
        args.extend(["-E", e]);
    }
    let out = tmux(ctx, &args)?;
    if !out.status.success() {
        return Ok(None);
    }
    Ok(Some(String::from_utf8_lossy(&out.stdout).into_owned()))
}

fn history_size(ctx: &Ctx, key: &ObjectKey) -> Option<i64> {
    let t = target(key);
    let out = tmux(ctx, &["display-message", "-p", "-t", &t, "#{history_size}"]).ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

fn tail_lines(text: &str, tail: i64) -> String {
    let lines: Vec<&str> = text.trim_end_matches('\n').lines().collect();
    let end = lines
        .iter()
        .rposition(|l| !l.trim().is_empty())
        .map_or(0, |i| i + 1);
    let lines = &lines[..end];
    let from = if tail >= 0 {
        lines.len().saturating_sub(tail as usize)
    } else {
        0
    };
    lines[from..].iter().map(|l| format!("{l}\n")).collect()
}

fn screen_logs(ctx: &Ctx, key: &ObjectKey, a: &LogsArgs) -> Result<()> {
    let t = target(key);
    let text = match capture(ctx, key, "-", None)? {
        Some(t) => t,
        None => {
            let out = tmux(ctx, &["list-panes", "-t", &t])?;
            return Err(no_pane(key, &out.stderr));
        }
    };
    print!("{}", tail_lines(&text, a.tail));
    std::io::stdout().flush()?;
    if !a.follow {
        return Ok(());
    }
    // New lines are those that scroll into the history; the live screen is
    // printed once more when the agent's pane goes.
    let mut seen = history_size(ctx, key).unwrap_or(0);
    let mut last_screen = capture(ctx, key, "0", None)?.unwrap_or_default();
    loop {
        std::thread::sleep(FOLLOW_EVERY);
        let Some(h) = history_size(ctx, key) else {
            print!("{}", tail_lines(&last_screen, -1));
            eprintln!("(the agent's pane is gone)");
            return Ok(());
        };
        if h > seen {
            let start = format!("-{}", h - seen);
            if let Some(new) = capture(ctx, key, &start, Some("-1"))? {
                print!("{new}");
                std::io::stdout().flush()?;
            }
            seen = h;
        } else if h < seen {
            seen = h; // cleared
        }
        if let Some(s) = capture(ctx, key, "0", None)? {
            last_screen = s;
        }
    }
}

/// One turn of a transcript line, as `(time, who, text)`.
fn turn(line: &str) -> Option<(String, &'static str, String)> {
    let v: Value = serde_json::from_str(line).ok()?;
    if v.get("isMeta").and_then(Value::as_bool) == Some(true) {
        return None;
    }
    let who = match v.get("type")?.as_str()? {
        "user" => "user",
        "assistant" => "assistant",
        _ => return None,
    };
    let content = v.pointer("/message/content")?;
    let text = match content {
        Value::String(s) => s.clone(),
        Value::Array(blocks) => blocks
            .iter()
            .filter_map(|b| match b.get("type").and_then(Value::as_str) {
                Some("text") => b.get("text").and_then(Value::as_str).map(str::to_string),
                Some("tool_use") => Some(format!(
                    "[tool: {}]",
                    b.get("name").and_then(Value::as_str).unwrap_or("?")
                )),
                Some("tool_result") => Some("[tool result]".into()),
                _ => None,
            })
            .collect::<Vec<_>>()
            .join("\n"),
        _ => return None,
    };
    if text.trim().is_empty() {
        return None;
    }
    let who = if v.get("isApiErrorMessage").and_then(Value::as_bool) == Some(true) {
        "error"
    } else {
        who
    };
    let time = v
        .get("timestamp")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    Some((time, who, text))
}

fn format_turn(t: &(String, &str, String), timestamps: bool) -> String {
    let (time, who, text) = t;
    let prefix = if timestamps {
        format!("{time} {who}: ")
    } else {
        format!("{who}: ")
    };
    let pad = " ".repeat(prefix.chars().count());
    let mut out = String::new();
    for (i, l) in text.lines().enumerate() {
        out.push_str(if i == 0 { &prefix } else { &pad });
        out.push_str(l);
        out.push('\n');
    }
    out
}

fn transcript_path(ctx: &Ctx, key: &ObjectKey) -> Result<PathBuf> {
    let obj = ctx.store()?.get(key)?.unwrap_or_default();
    let Some(id) = obj
        .pointer("/status/agentSessionId")
        .and_then(Value::as_str)
    else {
        bail!(
            "session {} has no conversation yet (status.agentSessionId is not set)",
            key.name
        );
    };
    let shared = ctx.transcripts_dir();
    crate::agent::seed::transcript(&shared, id).with_context(|| {
        format!(
            "no transcript of conversation {id} under {} yet (Claude Code writes it after the first turn)",
            shared.display()
        )
    })
}

fn transcript_logs(ctx: &Ctx, key: &ObjectKey, a: &LogsArgs) -> Result<()> {
    let path = transcript_path(ctx, key)?;
    let mut file =
        std::fs::File::open(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut reader = std::io::BufReader::new(&mut file);
    let mut turns = Vec::new();
    let mut pos = 0u64;
    let mut line = String::new();
    while reader.read_line(&mut line)? > 0 {
        if !line.ends_with('\n') {
            break; // a line still being written: read it again when whole
        }
        pos += line.len() as u64;
        turns.extend(turn(&line));
        line.clear();
    }
    let from = if a.tail >= 0 {
        turns.len().saturating_sub(a.tail as usize)
    } else {
        0
    };
    let mut out = std::io::stdout().lock();
    for t in &turns[from..] {
        out.write_all(format_turn(t, a.timestamps).as_bytes())?;
    }
    out.flush()?;
    if !a.follow {
        return Ok(());
    }
    drop(out);
    follow_file(&path, pos, |l| {
        if let Some(t) = turn(l) {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(format_turn(&t, a.timestamps).as_bytes());
            let _ = out.flush();
        }
    })
}

/// Calls `each` for every whole line appended to `path` after `pos`.
fn follow_file(path: &Path, mut pos: u64, mut each: impl FnMut(&str)) -> Result<()> {
    loop {
        std::thread::sleep(FOLLOW_EVERY);
        let mut f = std::fs::File::open(path)?;
        let len = f.metadata()?.len();
        if len < pos {
            pos = 0; // replaced
        }
        if len == pos {
            continue;
        }
        f.seek(std::io::SeekFrom::Start(pos))?;
        let mut reader = std::io::BufReader::new(f);
        let mut line = String::new();
        while reader.read_line(&mut line)? > 0 {
            if !line.ends_with('\n') {
                break;
            }
            pos += line.len() as u64;
            each(&line);
            line.clear();
        }
    }
}

pub fn logs(ctx: &Ctx, a: LogsArgs) -> Result<ExitCode> {
    let key = session_key(ctx, &a.session)?;
    if a.transcript {
        transcript_logs(ctx, &key, &a)?;
    } else {
        screen_logs(ctx, &key, &a)?;
    }
    Ok(ExitCode::SUCCESS)
}

pub fn attach(ctx: &Ctx, a: AttachArgs) -> Result<ExitCode> {
    use std::os::unix::process::CommandExt;
    let key = session_key(ctx, &a.session)?;
    let name = format!("={}", crate::agent::driver::tmux_name(&key));
    let check = tmux(ctx, &["has-session", "-t", &name])?;
    if !check.status.success() {
        return Err(no_pane(&key, &check.stderr));
    }
    let mut cmd = Command::new("tmux");
    cmd.arg("-S")
        .arg(ctx.tmux_socket())
        .args(["attach-session", "-t", &name]);
    if a.read_only {
        cmd.arg("-r");
    }
    // Inside another tmux, tmux refuses to nest unless TMUX is unset.
    cmd.env_remove("TMUX");
    eprintln!(
        "attaching to session {} (detach: your tmux prefix, then d; Ctrl-b d by default)",
        key.name
    );
    let err = cmd.exec();
    bail!("cannot run tmux: {err}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn turns_of_a_transcript() {
        let user =
            r#"{"type":"user","timestamp":"T1","message":{"role":"user","content":"fix it"}}"#;
        let asst = r#"{"type":"assistant","timestamp":"T2","message":{"content":[{"type":"text","text":"Done.\nAll good."},{"type":"tool_use","name":"Bash"}]}}"#;
        let meta = r#"{"type":"user","isMeta":true,"message":{"content":"x"}}"#;
        let title = r#"{"type":"summary","summary":"s"}"#;
        let t = turn(user).unwrap();
        assert_eq!(format_turn(&t, false), "user: fix it\n");
        let t = turn(asst).unwrap();
        assert_eq!(
            format_turn(&t, true),
            "T2 assistant: Done.\n              All good.\n              [tool: Bash]\n"
        );
        assert!(turn(meta).is_none() && turn(title).is_none());
    }

    #[test]
    fn tails() {
        assert_eq!(tail_lines("a\nb\nc\n\n\n", 2), "b\nc\n");
        assert_eq!(tail_lines("a\nb\n", -1), "a\nb\n");
    }
}

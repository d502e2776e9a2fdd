//! Drawing the screen. Pure: a [`Frame`] in, the screen's lines out, laid
//! out like Claude Code 2.1.197 so that `agent::screen::classify` reads it
//! (the tests below check every state against it).

use std::collections::VecDeque;

/// The spinner glyphs, cycled once a second.
pub const GLYPHS: &[char] = &['✢', '✳', '✶', '✻', '✽', '·'];

/// Verbs of the spinner and of the closing line, picked per turn.
pub const VERBS: &[(&str, &str)] = &[
    ("Simulating", "Simulated"),
    ("Brewing", "Brewed"),
    ("Crunching", "Crunched"),
    ("Pondering", "Pondered"),
    ("Tinkering", "Tinkered"),
    ("Churning", "Churned"),
];

/// Claude Code's start-up warning in bypass mode (verbatim from 2.1.197).
pub const BYPASS_WARNING: &[&str] = &[
    "  WARNING: Claude Code running in Bypass Permissions mode",
    "",
    "  In Bypass Permissions mode, Claude Code will not ask for your approval before running potentially dangerous",
    "  commands.",
    "  This mode should only be used in a sandboxed container/VM that has restricted internet access and can easily be",
    "  restored if damaged.",
    "",
    "  By proceeding, you accept all responsibility for actions taken while running in Bypass Permissions mode.",
    "",
    "  https://code.claude.com/docs/en/security",
    "",
];

/// The footer line of a permission mode, as 2.1.332 shows it.
pub fn mode_line(mode: &str) -> &'static str {
    match mode {
        "bypassPermissions" => "  ⏵⏵ bypass permissions on (shift+tab to cycle)",
        "acceptEdits" => "  ⏵⏵ accept edits on (shift+tab to cycle)",
        "plan" => "  ⏸ plan mode on (shift+tab to cycle)",
        "dontAsk" => "  ⏵⏵ don't ask on (shift+tab to cycle)",
        "default" => "  ⏸ manual mode on",
        _ => "  ⏵⏵ auto mode on (shift+tab to cycle)",
    }
}

pub enum Mode<'a> {
    /// Before the composer appears.
    Starting,
    /// The bypass-mode warning (option 0: No, exit; 1: Yes, I accept).
    Warning {
        selected: usize,
    },
    Idle,
    Busy {
        glyph: char,
        verb: &'a str,
        secs: u64,
        tokens: u64,
        queued: &'a VecDeque<String>,
    },
    /// The usage-limit dialog (`/rate-limit-options`).
    LimitDialog {
        selected: usize,
        /// When the limit resets (`9:17am (UTC)`).
        resets: String,
    },
}

pub struct Frame<'a> {
    pub cols: usize,
    pub rows: usize,
    pub header: &'a [String],
    pub history: &'a VecDeque<String>,
    pub mode: Mode<'a>,
    pub composer: &'a str,
    pub footer: &'a [String],
}

/// A horizontal rule across the screen.
fn rule(cols: usize) -> String {
    "─".repeat(cols.max(4))
}

fn choices(items: &[&str], selected: usize) -> Vec<String> {
    items
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let mark = if i == selected { "❯" } else { " " };
            format!("  {mark} {}. {t}", i + 1)
        })
        .collect()
}

/// The composer's lines: up to three lines as typed (a long single line
/// shows its tail), a longer text as Claude Code shows a paste.
fn composer_lines(text: &str, cols: usize) -> Vec<String> {
    let room = cols.saturating_sub(4).max(1);
    let lines: Vec<&str> = text.split('\n').collect();
    if lines.len() == 1 {
        let n = text.chars().count();
        if n <= room {
            return vec![format!("❯ {text}")];
        }
        let tail: String = text.chars().skip(n - room + 1).collect();
        return vec![format!("❯ …{tail}")];
    }
    if lines.len() > 3 || lines.iter().any(|l| l.chars().count() > room) {
        return vec![format!("❯ [Pasted text #1 +{} lines]", lines.len() - 1)];
    }
    lines
        .iter()
        .enumerate()
        .map(|(i, l)| {
            if i == 0 {
                format!("❯ {l}")
            } else {
                format!("  {l}")
            }
        })
        .collect()
}

/// The screen's lines (at most `rows`, each shorter than `cols`) and where
/// the cursor goes (row, column).
pub fn render(f: &Frame<'_>) -> (Vec<String>, Option<(usize, usize)>) {
    let mut bottom: Vec<String> = Vec::new();
    let mut cursor_at: Option<(usize, usize)> = None; // (index in bottom, column)
    let composer = |bottom: &mut Vec<String>, placeholder: Option<&str>| {
        bottom.push(rule(f.cols));
        let lines = match placeholder {
            Some(p) if f.composer.is_empty() => vec![format!("❯ {p}")],
            _ => composer_lines(f.composer, f.cols),
        };
        let last = lines.last().map(|l| l.chars().count()).unwrap_or(2);
        let col = if f.composer.is_empty() { 2 } else { last };
        let at = (bottom.len() + lines.len() - 1, col);
        bottom.extend(lines);
        bottom.push(rule(f.cols));
        bottom.extend(f.footer.iter().cloned());
        at
    };
    match &f.mode {
        Mode::Starting => {}
        Mode::Warning { selected } => {
            bottom.extend(BYPASS_WARNING.iter().map(|s| s.to_string()));
            bottom.extend(choices(&["No, exit", "Yes, I accept"], *selected));
            bottom.push(String::new());
            bottom.push("  Enter to confirm · Esc to cancel".into());
        }
        Mode::Idle => cursor_at = Some(composer(&mut bottom, None)),
        Mode::Busy {
            glyph,
            verb,
            secs,
            tokens,
            queued,
        } => {
            bottom.push(if *secs == 0 {
                format!("{glyph} {verb}…")
            } else {
                format!("{glyph} {verb}… ({secs}s · ↓ {tokens} tokens)")
            });
            bottom.push(String::new());
            for q in queued.iter() {
                bottom.push(format!("  ❯ {}", q.replace('\n', "↵")));
            }
            let placeholder = (!queued.is_empty()).then_some("Press up to edit queued messages");
            cursor_at = Some(composer(&mut bottom, placeholder));
        }
        Mode::LimitDialog { selected, resets } => {
            bottom.push(rule(f.cols));
            bottom.push("  What do you want to do?".into());
            bottom.push(String::new());
            let wait = format!("Wait here, then continue automatically at {resets}");
            bottom.extend(choices(
                &[
                    "Stop and wait for limit to reset",
                    &wait,
                    "Upgrade your plan",
                ],
                *selected,
            ));
            bottom.push(String::new());
            bottom.push("  Enter to confirm · Esc to cancel".into());
        }
    }
    // The top (header, then the conversation) gives way to the bottom.
    let top: Vec<&String> = f.header.iter().chain(f.history.iter()).collect();
    let room = f.rows.saturating_sub(bottom.len());
    let skip = top.len().saturating_sub(room);
    let mut lines: Vec<String> = top[skip..].iter().map(|s| s.to_string()).collect();
    let offset = lines.len();
    lines.extend(bottom);
    let cut = lines.len().saturating_sub(f.rows);
    lines.drain(..cut);
    let width = f.cols.saturating_sub(1).max(1);
    for l in &mut lines {
        if l.chars().count() > width {
            *l = l.chars().take(width).collect();
        }
    }
    let cursor =
        cursor_at.and_then(|(i, c)| (offset + i).checked_sub(cut).map(|r| (r, c.min(width))));
    (lines, cursor)
}

/// The escape sequences that paint `lines` over the previous screen.
pub fn paint(lines: &[String], cursor: Option<(usize, usize)>) -> String {
    let mut s = String::from("\x1b[?25l\x1b[H");
    for (i, l) in lines.iter().enumerate() {
        if i > 0 {
            s.push_str("\r\n");
        }
        s.push_str(l);
        s.push_str("\x1b[K");
    }
    s.push_str("\x1b[J");
    if let Some((r, c)) = cursor {
        s.push_str(&format!("\x1b[{};{}H\x1b[?25h", r + 1, c + 1));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::screen::{Screen, classify};

    fn frame<'a>(
        mode: Mode<'a>,
        history: &'a VecDeque<String>,
        composer: &'a str,
        footer: &'a [String],
    ) -> String {
        let header = vec![" Claude Code (simulated)".to_string(), String::new()];
        let (lines, _) = render(&Frame {
            cols: 100,
            rows: 30,
            header: &header,
            history,
            mode,
            composer,
            footer,
        });
        lines.join("\n")
    }

    #[test]
    fn every_state_is_classified_like_claude_code() {
        let mut h: VecDeque<String> = ["❯ hi", "", "● ok: hi", "", "✻ Simulated for 2s", ""]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let footer = vec!["  ? for shortcuts".to_string()];
        let none = VecDeque::new();
        assert_eq!(
            classify(&frame(Mode::Idle, &h, "typed", &footer)),
            Screen::Idle
        );
        assert_eq!(
            classify(&frame(Mode::Starting, &h, "", &footer)),
            Screen::Unknown
        );
        for secs in [0, 3] {
            let busy = frame(
                Mode::Busy {
                    glyph: GLYPHS[secs as usize],
                    verb: "Simulating",
                    secs,
                    tokens: 120,
                    queued: &none,
                },
                &h,
                "",
                &footer,
            );
            assert_eq!(classify(&busy), Screen::Busy, "{busy}");
        }
        let queued: VecDeque<String> = ["next one".to_string()].into();
        let busy = frame(
            Mode::Busy {
                glyph: '·',
                verb: "Brewing",
                secs: 1,
                tokens: 5,
                queued: &queued,
            },
            &h,
            "",
            &footer,
        );
        assert!(busy.contains("  ❯ next one\n"));
        assert_eq!(classify(&busy), Screen::Busy);
        h.push_back("● You've hit your 5-hour limit · resets 8am (UTC)".into());
        let limit = frame(
            Mode::LimitDialog {
                selected: 0,
                resets: "8am (UTC)".into(),
            },
            &h,
            "",
            &footer,
        );
        assert!(limit.contains("❯ 1. Stop and wait for limit to reset"));
        assert!(limit.contains("2. Wait here, then continue automatically at 8am (UTC)"));
        assert_eq!(classify(&limit), Screen::UsageLimitDialog);
        for mode in [
            "default",
            "auto",
            "acceptEdits",
            "plan",
            "dontAsk",
            "bypassPermissions",
        ] {
            let footer = vec![mode_line(mode).to_string()];
            let idle = frame(Mode::Idle, &none, "", &footer);
            assert_eq!(classify(&idle), Screen::Idle, "{mode}");
        }
        assert_eq!(mode_line("default"), "  ⏸ manual mode on");
        let warn = frame(Mode::Warning { selected: 0 }, &none, "", &footer);
        assert_eq!(classify(&warn), Screen::Dialog);
    }

    #[test]
    fn a_long_history_scrolls_and_the_composer_stays() {
        let h: VecDeque<String> = (0..100).map(|i| format!("line {i}")).collect();
        let footer = vec!["  status".to_string()];
        let (lines, cursor) = render(&Frame {
            cols: 40,
            rows: 10,
            header: &[],
            history: &h,
            mode: Mode::Idle,
            composer: &"x".repeat(100),
            footer: &footer,
        });
        assert_eq!(lines.len(), 10);
        assert_eq!(lines[5], "line 99");
        assert!(lines[7].starts_with("❯ …xxx"));
        assert!(lines.iter().all(|l| l.chars().count() < 40));
        assert_eq!(cursor, Some((7, 38)));
        assert_eq!(classify(&lines.join("\n")), Screen::Idle);
    }

    #[test]
    fn the_composer_reads_back() {
        use crate::agent::screen::composer_text;
        let none = VecDeque::new();
        let footer = vec!["  ? for shortcuts".to_string()];
        for (typed, shown) in [
            ("", ""),
            ("one line", "one line"),
            ("two\nlines", "two\nlines"),
            ("a\nb\nc", "a\nb\nc"),
            ("a\nb\nc\nd", "[Pasted text #1 +3 lines]"),
        ] {
            let s = frame(Mode::Idle, &none, typed, &footer);
            assert_eq!(classify(&s), Screen::Idle, "{s}");
            assert_eq!(composer_text(&s).as_deref(), Some(shown), "{s}");
        }
    }
}

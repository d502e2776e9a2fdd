//! The one place that knows what Claude Code's screen looks like.
//!
//! The screen is the least trusted source of an agent's state (hooks and
//! `sessions/<pid>.json` come first) and its layout changes between
//! releases, so every pattern lives in [`PATTERNS`], versioned by the Claude
//! Code release it was observed on, and tests run the real binary against it.

/// The Claude Code release these patterns were taken from.
pub const OBSERVED_ON: &str = "2.1.197";

/// What a screen shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Screen {
    /// The usage-limit dialog (`/rate-limit-options`): Esc dismisses it.
    UsageLimitDialog,
    /// A permission prompt (`Do you want to proceed?`).
    PermissionPrompt,
    /// Another dialog with numbered choices.
    Dialog,
    /// Working: a spinner line or `esc to interrupt`.
    Busy,
    /// The composer between its two rules, nothing running.
    Idle,
    /// None of the above (starting, scrolling output, unknown release).
    Unknown,
}

/// A pattern: a screen state and the texts that identify it.
pub struct Pattern {
    pub state: Screen,
    /// All of these must be on the screen.
    pub all: &'static [&'static str],
}

/// Checked in order; the first match wins. Busy and Idle need more than
/// substrings and are recognised by [`classify`] after these.
pub const PATTERNS: &[Pattern] = &[
    Pattern {
        state: Screen::UsageLimitDialog,
        all: &["Stop and wait for limit to reset"],
    },
    Pattern {
        state: Screen::PermissionPrompt,
        all: &["Do you want to proceed?", "1. Yes"],
    },
    // Start-up dialogs (bypass-mode warning, custom API key): they show `❯`
    // between rules too, so they must be caught before the idle check.
    Pattern {
        state: Screen::Dialog,
        all: &["Enter to confirm"],
    },
];

/// Spinner glyphs that start the "working" line (`✢ Generating…`).
const SPINNER: &[char] = &['·', '✢', '✳', '✶', '✻', '✽', '*'];
/// Footer while a turn runs.
const INTERRUPT_HINT: &str = "esc to interrupt";
/// The composer prompt.
const COMPOSER: &str = "❯";
/// The rules above and below the composer.
const RULE: &str = "────";
/// Usage-limit texts seen in the transcript area (corroboration only).
pub const LIMIT_TEXTS: &[&str] = &[
    "You've hit your session limit",
    "You've hit your weekly limit",
    "Claude usage limit reached",
];

fn spinner_line(line: &str) -> bool {
    let t = line.trim_start();
    let mut chars = t.chars();
    let (Some(c), Some(' ')) = (chars.next(), chars.next()) else {
        return false;
    };
    if !SPINNER.contains(&c) {
        return false;
    }
    // `✢ Generating…` (running) but not `✻ Brewed for 7s` (done).
    let rest: String = chars.collect();
    let word = rest.split_whitespace().next().unwrap_or_default();
    word.ends_with('…')
}

/// The composer line sits between two rules.
fn composer_visible(lines: &[&str]) -> bool {
    lines.iter().enumerate().any(|(i, l)| {
        l.trim_start().starts_with(COMPOSER)
            && lines[..i].iter().rev().take(3).any(|p| p.contains(RULE))
            && lines[i + 1..].iter().take(4).any(|n| n.contains(RULE))
    })
}

/// What sits in the composer (typed but not submitted), if the composer
/// is on screen: `Some("")` when it is empty.
pub fn composer_text(screen: &str) -> Option<String> {
    let lines: Vec<&str> = screen.lines().collect();
    if !composer_visible(&lines) {
        return None;
    }
    let i = lines
        .iter()
        .rposition(|l| l.trim_start().starts_with(COMPOSER))?;
    let mut text = lines[i]
        .trim_start()
        .trim_start_matches(COMPOSER)
        .trim()
        .to_string();
    // Continuation lines, up to the closing rule.
    for l in &lines[i + 1..] {
        if l.contains(RULE) {
            break;
        }
        if !l.trim().is_empty() {
            text.push('\n');
            text.push_str(l.trim());
        }
    }
    Some(text)
}

/// Classifies a plain capture (`capture-pane -p`).
pub fn classify(screen: &str) -> Screen {
    for p in PATTERNS {
        if p.all.iter().all(|s| screen.contains(s)) {
            return p.state;
        }
    }
    let lines: Vec<&str> = screen.lines().collect();
    if lines.iter().any(|l| spinner_line(l)) || screen.contains(INTERRUPT_HINT) {
        return Screen::Busy;
    }
    if composer_visible(&lines) {
        // Numbered choices under a question, with no composer rules around
        // them, are a dialog; with the composer visible it is idle.
        return Screen::Idle;
    }
    if lines.iter().any(|l| l.trim_start().starts_with("❯ 1.")) {
        return Screen::Dialog;
    }
    Screen::Unknown
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULE_LINE: &str = "────────────────────────────────────────";

    fn idle() -> String {
        format!("● ok: hi\n\n✻ Brewed for 2s\n\n{RULE_LINE}\n❯ \n{RULE_LINE}\n  ? for shortcuts\n")
    }

    #[test]
    fn idle_busy_and_done() {
        assert_eq!(classify(&idle()), Screen::Idle);
        let busy = format!(
            "> hi\n\n✢ Generating… (6s · ↓ 3 tokens)\n\n{RULE_LINE}\n❯ \n{RULE_LINE}\n  esc to interrupt\n"
        );
        assert_eq!(classify(&busy), Screen::Busy);
        // the composer is visible while busy: ❯ alone never means idle
        assert!(busy.contains('❯'));
    }

    #[test]
    fn composer_content() {
        assert_eq!(composer_text(&idle()).as_deref(), Some(""));
        let typed = format!("{RULE_LINE}\n❯ fix the bug ⟦task 1a2b⟧\n{RULE_LINE}\n");
        assert_eq!(
            composer_text(&typed).as_deref(),
            Some("fix the bug ⟦task 1a2b⟧")
        );
        let pasted = format!("{RULE_LINE}\n❯ [Pasted text #1 +12 lines]\n{RULE_LINE}\n");
        assert!(composer_text(&pasted).unwrap().starts_with("[Pasted text"));
        assert_eq!(composer_text("no composer here"), None);
    }

    #[test]
    fn dialogs() {
        let perm =
            "Bash command\n  rm -rf x\nDo you want to proceed?\n❯ 1. Yes\n  2. No\n".to_string();
        assert_eq!(classify(&perm), Screen::PermissionPrompt);
        let limit = "You've hit your session limit · resets 8am (UTC)\n❯ 1. Stop and wait for limit to reset\n  2. Upgrade\n";
        assert_eq!(classify(limit), Screen::UsageLimitDialog);
        assert_eq!(
            classify("Choose a theme\n❯ 1. Dark\n  2. Light\n"),
            Screen::Dialog
        );
        assert_eq!(classify("loading\n"), Screen::Unknown);
    }
}

//! The one place that knows what Claude Code's screen looks like.
//!
//! The screen is the least trusted source of an agent's state (hooks and
//! `sessions/<pid>.json` come first) and its layout changes between
//! releases, so every pattern lives in [`PATTERNS`], each with the Claude
//! Code releases it was observed on, and tests run the real binary against
//! it (docs/claude-code-probe.md has the screens themselves).

/// The newest Claude Code release these patterns were checked against.
pub const OBSERVED_ON: &str = super::version::NEWEST_TESTED;

/// What a screen shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Screen {
    /// The usage-limit dialog (`/rate-limit-options`), or a continuation
    /// armed for the reset (`Continuing automatically at … · Esc to
    /// cancel`): Esc dismisses either.
    UsageLimitDialog,
    /// A permission prompt (`Do you want to proceed?`, `Exit plan mode?`).
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
    /// They must all be on one line (a footer, not scrollback).
    pub one_line: bool,
    /// The releases it was observed on.
    pub seen_on: &'static [&'static str],
}

const BOTH: &[&str] = &["2.1.197", "2.1.332"];
const NEWEST: &[&str] = &["2.1.332"];

/// Checked in order; the first match wins. Busy and Idle need more than
/// substrings and are recognised by [`classify`] after these.
pub const PATTERNS: &[Pattern] = &[
    // `What do you want to do?  ❯ 1. Stop and wait for limit to reset`
    // (2.1.332 adds `2. Wait here, then continue automatically at …`).
    Pattern {
        state: Screen::UsageLimitDialog,
        all: &["Stop and wait for limit to reset"],
        one_line: false,
        seen_on: BOTH,
    },
    // A permission prompt: numbered choices on both releases; auto mode's
    // fallback prompt on 2.1.332 has unnumbered ones (`❯ No` / `Yes`).
    Pattern {
        state: Screen::PermissionPrompt,
        all: &["Do you want to proceed?", "1. Yes"],
        one_line: false,
        seen_on: BOTH,
    },
    Pattern {
        state: Screen::PermissionPrompt,
        all: &["Do you want to proceed?", "Esc to cancel"],
        one_line: false,
        seen_on: BOTH,
    },
    // Plan mode asks before it leaves (`Claude wants to exit plan mode`).
    Pattern {
        state: Screen::PermissionPrompt,
        all: &["Exit plan mode?"],
        one_line: false,
        seen_on: BOTH,
    },
    // Auto mode whose safety check cannot run (requests through a gateway
    // that does not pass it): stay, leave for accept-edits, or Esc.
    Pattern {
        state: Screen::Dialog,
        all: &["Enter to stay in auto mode"],
        one_line: false,
        seen_on: NEWEST,
    },
    // Start-up dialogs (bypass-mode warning, custom API key): they show `❯`
    // between rules too, so they must be caught before the idle check.
    Pattern {
        state: Screen::Dialog,
        all: &["Enter to confirm"],
        one_line: false,
        seen_on: BOTH,
    },
    // Claude Code's own continue-at-reset, armed (the project turns it off
    // in every session's settings; a managed policy can force it on): the
    // footer `Continuing automatically at 9:13am · Esc to cancel`.
    Pattern {
        state: Screen::UsageLimitDialog,
        all: &["Continuing ", "· Esc to cancel"],
        one_line: true,
        seen_on: NEWEST,
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
/// Usage-limit texts seen in the transcript area (corroboration only):
/// 2.1.197 says `session limit`, 2.1.332 `5-hour limit`.
pub const LIMIT_TEXTS: &[&str] = &[
    "You've hit your session limit",
    "You've hit your 5-hour limit",
    "You've hit your weekly limit",
    "Claude usage limit reached",
];

impl Pattern {
    fn matches(&self, screen: &str) -> bool {
        if self.one_line {
            screen
                .lines()
                .any(|l| self.all.iter().all(|s| l.contains(s)))
        } else {
            self.all.iter().all(|s| screen.contains(s))
        }
    }
}

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
        if p.matches(screen) {
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

    /// Screens of 2.1.332 as `capture-pane -p` gave them (probe runs,
    /// width 120, blank lines dropped).
    mod newest {
        pub const R: &str = "────────────────────────────────────────────────────────";

        pub fn idle_manual_mode() -> String {
            format!(
                " ▐▛███▛█   Claude Code v2.1.332\n▝▜██████▀  Opus 5.5 · API Usage Billing\n\
                 {R}\n❯ \n{R}\n  SLINE 09:10:35\n  ⏸ manual mode on · ← for agents\n"
            )
        }

        pub fn busy() -> String {
            format!(
                "❯ first while held\n✻ Flibbertigibbeting…\n{R}\n❯ \n{R}\n  SLINE 09:26:01\n\
                 \x20 ⏵⏵ bypass permissions on (shift+tab to cycle) · esc to interrupt · ← for agents\n"
            )
        }

        pub const AUTO_MODE_CANNOT_CHECK: &str = "❯ please clean up\n  Clean up\n  ⎿  $ rm -rf ~/important\n\
             ─────\n  Auto mode can't check actions in this session\n  Auto mode's safety check runs on the server.\n\
             \x20 Enter to stay in auto mode · shift+Tab to leave for accept edits mode and stop · Esc to cancel\n";

        pub const AUTO_MODE_ASKS: &str = "● Auto mode can't check actions in this session. Its safety check runs on the server\n\
             ─────\n Bash command\n Clean up\n rm -rf ~/important\n\
             \x20Auto mode can't check actions in this session, so this one needs your approval\n\
             \x20Do you want to proceed?\n ❯ No\n   Yes\n Esc to cancel · Tab to amend\n";

        pub const PERMISSION_PROMPT: &str = " Bash command\n Tip: auto mode handles these prompts for you\n touch granted\n\
             \x20Do you want to proceed?\n ❯ 1. Yes\n   2. Yes, and always allow access to /w from this project\n\
             \x20  3. Yes, and switch to auto mode · auto mode handles these prompts for you\n   4. No\n\
             \x20Esc to cancel · Tab to amend\n";

        pub const EXIT_PLAN_MODE: &str = "❯ make a plan\n  ────\n   Exit plan mode?\n   Claude wants to exit plan mode\n\
             \x20  ❯ 1. Yes, and switch to default (ask each time) for this session\n     2. No\n";

        pub const LIMIT_DIALOG: &str = "❯ the TASK that gets cut\n  ⎿  You've hit your 5-hour limit · resets 9:17am (UTC)\n\
             \x20 What do you want to do?\n  ❯ 1. Stop and wait for limit to reset\n\
             \x20   2. Wait here, then continue automatically at 9:17am\n    3. Upgrade your plan\n\
             \x20 Enter to confirm · Esc to cancel\n";

        pub fn auto_continue_armed() -> String {
            format!(
                "❯ the TASK that gets cut\n  ⎿  You've hit your 5-hour limit · resets 9:13am (UTC)\n\
                 ● Usage limit reached · set to continue automatically at 9:13am\n{R}\n❯ \n{R}\n\
                 \x20 ⚠ Usage limit reached · limit resets 9:13am\n    Continuing automatically at 9:13am · Esc to cancel\n\
                 \x20 SLINE 09:12:30\n  ⏵⏵ bypass permissions on (shift+tab to cycle)\n"
            )
        }

        pub fn after_auto_continue() -> String {
            format!(
                "● Usage limit reached · set to continue automatically at 9:13am\n\
                 ● Usage limit reset · Continuing automatically\n● ok: Your claude.ai usage limit has reset.\n\
                 ✻ Cooked for 0s · done 9:14 AM\n{R}\n❯ \n{R}\n  SLINE 09:14:31\n"
            )
        }
    }

    #[test]
    fn screens_of_the_newest_release() {
        use newest::*;
        assert_eq!(classify(&idle_manual_mode()), Screen::Idle);
        assert_eq!(classify(&busy()), Screen::Busy);
        assert_eq!(classify(AUTO_MODE_CANNOT_CHECK), Screen::Dialog);
        assert_eq!(classify(AUTO_MODE_ASKS), Screen::PermissionPrompt);
        assert_eq!(classify(PERMISSION_PROMPT), Screen::PermissionPrompt);
        assert_eq!(classify(EXIT_PLAN_MODE), Screen::PermissionPrompt);
        assert_eq!(classify(LIMIT_DIALOG), Screen::UsageLimitDialog);
        assert_eq!(classify(&auto_continue_armed()), Screen::UsageLimitDialog);
        // Once it fired, the words stay in the scrollback: idle again.
        assert_eq!(classify(&after_auto_continue()), Screen::Idle);
        assert!(LIMIT_TEXTS.iter().any(|t| LIMIT_DIALOG.contains(t)));
        for p in PATTERNS {
            assert!(
                p.seen_on.contains(&OBSERVED_ON),
                "{:?} is not checked against the newest release",
                p.all
            );
        }
    }
}

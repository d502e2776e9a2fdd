//! The simulated agent (`claude-failover sim-agent`): a stand-in for
//! Claude Code 2.1.197 on every point the daemon relies on, light enough
//! to run 50+ of them in demos and tests (idle = blocked on input, a few
//! small threads, no polling).
//!
//! Takes Claude Code's own command line (`--settings FILE|JSON`,
//! `--session-id UUID`, `--resume UUID`, `--continue`, `--model M`,
//! `--dangerously-skip-permissions`; other options are ignored) and
//! reproduces:
//!
//! - the screen (`agent::screen::classify` reads it): the composer `❯ `
//!   between two rules with its footer (the statusLine output, else
//!   `? for shortcuts` / the bypass-mode line), the spinner line while a
//!   turn runs (`✢ Simulating… (3s · ↓ 120 tokens)`), `● ok: <prompt>` and
//!   `✻ Simulated for 2s` when it ends, the usage-limit dialog, and the
//!   bypass-mode warning when `skipDangerousModePermissionPrompt` is not
//!   set (in the `--settings` file or `CLAUDE_CONFIG_DIR/settings.json`);
//! - raw keyboard input with bracketed paste (line feeds in a paste belong
//!   to the prompt, Enter submits), text typed while busy queued for the
//!   next turn, Esc interrupting a turn, `/exit`, `/model X`, Ctrl-C twice;
//! - hooks from the settings (`http` and `command`; no HTTP hook for
//!   `SessionStart`, as in Claude Code) with Claude Code's payloads:
//!   `SessionStart`, `UserPromptSubmit`, `Stop`, `StopFailure`,
//!   `Notification` (`idle_prompt`, a while after a turn), `SessionEnd`;
//! - `history.jsonl` in the account dir, one line per submitted prompt;
//! - the statusLine command with Claude Code's input, `rate_limits`
//!   included when the account has a budget;
//! - the transcript `CLAUDE_CONFIG_DIR/projects/<slug>/<id>.jsonl`
//!   (`--resume` refuses an id without one: `No conversation found with
//!   session ID: <id>`, exit 1);
//! - `CLAUDE_CONFIG_DIR/sessions/<pid>.json` (`idle` / `busy` / `waiting`);
//! - usage limits per account (`CLAUDE_CONFIG_DIR`), see [`usage`]: a
//!   budget file `sim-budget.json` and a shared, locked ledger
//!   `sim-usage.json`; a turn over budget is refused the way a
//!   subscription refuses it (synthetic 429 transcript line, `StopFailure`
//!   `rate_limit`, `You've hit your session limit · resets …`, the
//!   usage-limit dialog);
//! - exit: `/exit` or Ctrl-C twice → `SessionEnd` `prompt_input_exit`,
//!   status 0; SIGTERM → `SessionEnd` `other`, status 143; both print
//!   `claude --resume <id>`. With `--dangerously-skip-permissions` as root
//!   it refuses to start unless `IS_SANDBOX=1`, like Claude Code.
//!
//! Behaviour knobs (environment):
//!
//! | variable | default | meaning |
//! | --- | --- | --- |
//! | `SIM_AGENT_TURN_MS` | 1500 | how long a turn shows the spinner |
//! | `SIM_AGENT_TOKENS_PER_TURN` | 2000 | tokens a turn spends from the account's budget (and its `usage` in the transcript) |
//! | `SIM_AGENT_STARTUP_MS` | 300 | delay before the composer appears |
//! | `SIM_AGENT_IDLE_NOTIFY_MS` | 60000 | idle time after a turn before the `Notification` hook (`idle_prompt`); 0: never |
//!
//! `CLAUDE_CONFIG_DIR` (default `~/.claude`) selects the account, as for
//! Claude Code. The version reported everywhere is [`VERSION`].

mod agent;
mod args;
mod clock;
mod hooks;
mod pidfile;
mod proc;
mod render;
mod statusline;
mod term;
mod transcript;
pub mod usage;

use std::process::ExitCode;
use std::time::Duration;

/// The `version` the simulator reports (statusLine input, pid file,
/// transcript lines).
pub const VERSION: &str = "sim";

#[derive(clap::Args, Debug)]
pub struct SimArgs {
    /// Claude Code's arguments (`--settings`, `--session-id`, `--resume`, ...)
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

/// The behaviour knobs, from the environment.
#[derive(Debug, Clone, Copy)]
pub struct Knobs {
    pub turn: Duration,
    pub tokens_per_turn: u64,
    pub startup: Duration,
    /// `Notification` `idle_prompt` after this long idle after a turn.
    pub idle_notify: Option<Duration>,
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

impl Knobs {
    pub fn from_env() -> Knobs {
        Knobs {
            turn: Duration::from_millis(env_u64("SIM_AGENT_TURN_MS", 1500)),
            tokens_per_turn: env_u64("SIM_AGENT_TOKENS_PER_TURN", 2000),
            startup: Duration::from_millis(env_u64("SIM_AGENT_STARTUP_MS", 300)),
            idle_notify: Some(env_u64("SIM_AGENT_IDLE_NOTIFY_MS", 60_000))
                .filter(|ms| *ms > 0)
                .map(Duration::from_millis),
        }
    }
}

pub fn run(args: SimArgs) -> ExitCode {
    agent::main(&args.args)
}

//! The simulated agent (`claude-failover sim-agent`).

use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct SimArgs {
    /// Claude Code's arguments (`--settings`, `--session-id`, `--resume`, ...)
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

pub fn run(_args: SimArgs) -> ExitCode {
    eprintln!("sim-agent: being written");
    ExitCode::from(2)
}

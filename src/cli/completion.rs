//! `completion bash|zsh|fish|elvish|powershell`: the script a shell loads.
//! The bash, zsh and fish scripts (the files beside this one) only relay:
//! they ask this program (`__complete`, see [`super::complete`]) for the
//! candidates of the word being typed, so they complete object names from
//! the store too. elvish and powershell get clap_complete's static scripts.

use super::Cli;
use anyhow::Result;
use clap::{Args, CommandFactory, ValueEnum};
use std::process::ExitCode;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum CompletionShell {
    Bash,
    Zsh,
    Fish,
    Elvish,
    Powershell,
}

#[derive(Args, Debug)]
pub struct CompletionArgs {
    /// bash, zsh, fish (kinds and object names too), elvish or powershell
    pub shell: CompletionShell,
}

const BASH: &str = include_str!("completion/claude-failover.bash");
const ZSH: &str = include_str!("completion/_claude-failover");
const FISH: &str = include_str!("completion/claude-failover.fish");

pub fn script(a: CompletionArgs) -> Result<ExitCode> {
    let text = match a.shell {
        CompletionShell::Bash => BASH.to_string(),
        CompletionShell::Zsh => ZSH.to_string(),
        CompletionShell::Fish => FISH.to_string(),
        CompletionShell::Elvish | CompletionShell::Powershell => {
            let shell = match a.shell {
                CompletionShell::Elvish => clap_complete::Shell::Elvish,
                _ => clap_complete::Shell::PowerShell,
            };
            let mut buf = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "claude-failover", &mut buf);
            String::from_utf8_lossy(&buf).into_owned()
        }
    };
    use std::io::Write;
    // A closed pipe (`| head`) is not an error worth a panic.
    let _ = std::io::stdout().write_all(text.as_bytes());
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scripts_relay_to_the_engine() {
        let files = crate::cli::complete::FILES;
        for s in [BASH, ZSH, FISH] {
            assert!(s.contains("__complete --shell"), "{s}");
            // The line that asks the shell for file names.
            let quoted = [format!("\"{files}\""), format!("'{files}'")];
            assert!(quoted.iter().any(|q| s.contains(q.as_str())), "{s}");
        }
    }
}

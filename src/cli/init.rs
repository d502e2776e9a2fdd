//! `init`: a config file, the store, and example manifests to start from.

use super::Ctx;
use crate::fsutil::write_atomic;
use anyhow::{Context as _, Result};
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args, Debug)]
pub struct InitArgs {
    /// Where to write the example manifests [default: next to the config file, in manifests/]
    #[arg(long, value_name = "DIR")]
    pub manifests_dir: Option<PathBuf>,
    /// Overwrite an existing config file and examples
    #[arg(long)]
    pub force: bool,
}

const EXAMPLES: &[(&str, &str)] = &[
    (
        "accounts.yaml",
        include_str!("../../manifests/examples/accounts.yaml"),
    ),
    (
        "sessions.yaml",
        include_str!("../../manifests/examples/sessions.yaml"),
    ),
    (
        "tasks.yaml",
        include_str!("../../manifests/examples/tasks.yaml"),
    ),
];

pub fn init(ctx: &Ctx, a: InitArgs) -> Result<ExitCode> {
    let manifests = a.manifests_dir.clone().unwrap_or_else(|| {
        ctx.config_path
            .parent()
            .map(|p| p.join("manifests"))
            .unwrap_or_else(|| PathBuf::from("manifests"))
    });
    let write = |path: &std::path::Path, content: &str| -> Result<()> {
        if path.exists() && !a.force {
            println!("kept     {} (exists; --force overwrites)", path.display());
            return Ok(());
        }
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
        }
        write_atomic(path, content.as_bytes(), None, true)
            .with_context(|| format!("cannot write {}", path.display()))?;
        println!("wrote    {}", path.display());
        Ok(())
    };
    let config = format!(
        "# claude-failover configuration (every key: see config.example.yaml in the repository)\n\
         store: {}\n\
         namespace: {}\n\
         manifests: {}\n\
         resyncSeconds: 30\n\
         log:\n  format: text\n  level: info\n",
        ctx.store_dir.display(),
        ctx.namespace,
        manifests.display()
    );
    write(&ctx.config_path, &config)?;
    ctx.store()?;
    println!("store    {}", ctx.store_dir.display());
    for (name, text) in EXAMPLES {
        write(&manifests.join(name), text)?;
    }
    println!(
        "\nNext:\n  claude-failover apply -f {m}\n  claude-failover get all\n  claude-failover run --manifests {m}",
        m = manifests.display()
    );
    Ok(ExitCode::SUCCESS)
}

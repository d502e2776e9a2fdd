//! `run`: the daemon. It syncs the desired-state directory into the store
//! until SIGTERM or SIGINT.

use super::Ctx;
use super::wait::parse_duration;
use crate::config::LogFormat;
use crate::sync::Syncer;
use anyhow::{Context as _, Result, bail};
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Desired-state directory to keep synced into the store [config: manifests]
    #[arg(long, value_name = "DIR")]
    pub manifests: Option<PathBuf>,
    /// Full resync period, also the drift-correction delay [config: resyncSeconds; default: 30s]
    #[arg(long, value_parser = parse_duration)]
    pub resync: Option<Duration>,
    /// Log format [config: log.format; default: text]
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
    /// Log filter, e.g. `info`, `debug`, `claude_failover=debug` [env: RUST_LOG; config: log.level]
    #[arg(long)]
    pub log_level: Option<String>,
}

pub fn run(ctx: &Ctx, a: RunArgs) -> Result<ExitCode> {
    let format = a
        .log_format
        .or(ctx.config.log.format)
        .unwrap_or(LogFormat::Text);
    let level = a
        .log_level
        .clone()
        .or(ctx.config.log.level.clone())
        .unwrap_or_else(|| "info".into());
    super::init_logging(format, &level);
    let Some(dir) = a.manifests.clone().or_else(|| {
        ctx.config
            .manifests
            .as_deref()
            .map(crate::fsutil::expand_home)
    }) else {
        bail!(
            "nothing to run: pass --manifests DIR (or set `manifests` in {})",
            ctx.config_path.display()
        );
    };
    let resync = a
        .resync
        .or(ctx.config.resync_seconds.map(Duration::from_secs))
        .unwrap_or(Duration::from_secs(30))
        .max(Duration::from_millis(100));
    let store = ctx.store()?;
    let syncer = Syncer::new(store, &dir, &ctx.namespace)
        .with_context(|| format!("cannot read the manifests directory {}", dir.display()))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        tracing::info!(
            store = %ctx.store_dir.display(),
            manifests = %syncer.dir().display(),
            resync_seconds = resync.as_secs_f64(),
            version = env!("CARGO_PKG_VERSION"),
            "daemon starting"
        );
        syncer.run(resync, shutdown_signal()).await;
        tracing::info!("daemon stopped");
    });
    Ok(ExitCode::SUCCESS)
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
    }
}

//! `run`: the daemon. Reads the config and flags into the daemon's
//! [`Options`] and hands them to its composition root
//! ([`crate::daemon::run`]).

use super::Ctx;
use super::wait::parse_duration;
use crate::config::LogFormat;
use crate::controller::{account, failover, task};
use crate::daemon::access;
use crate::daemon::run::Options;
use anyhow::{Context as _, Result};
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Desired-state directory to keep synced into the store [config: manifests]
    #[arg(long, value_name = "DIR")]
    pub manifests: Option<PathBuf>,
    /// Full resync period of the sync and the controllers [config: resyncSeconds; default: 30s]
    #[arg(long, value_parser = parse_duration)]
    pub resync: Option<Duration>,
    /// Address of the control plane and the agents' hooks [config: listen; default: 127.0.0.1:7817]
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// Log format [config: log.format; default: text]
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
    /// Log filter, e.g. `info`, `debug`, `claude_failover=debug` [env: RUST_LOG; config: log.level]
    #[arg(long)]
    pub log_level: Option<String>,
    /// This daemon's node name [config: node.name; default: the host name]
    #[arg(long, value_name = "NAME")]
    pub node: Option<String>,
    /// The most Sessions this node runs [config: node.capacity; default: no limit]
    #[arg(long, value_name = "N")]
    pub capacity: Option<u32>,
}

pub const DEFAULT_LISTEN: &str = "127.0.0.1:7817";
/// The shortest resync period taken.
const MIN_RESYNC: Duration = Duration::from_millis(100);

pub fn run(ctx: &Ctx, a: RunArgs) -> Result<ExitCode> {
    let cfg = &ctx.config;
    let format = a.log_format.or(cfg.log.format).unwrap_or(LogFormat::Text);
    let level = a
        .log_level
        .clone()
        .or(cfg.log.level.clone())
        .unwrap_or_else(|| "info".into());
    super::init_logging(format, &level);
    crate::daemon::run::limit_malloc_arenas();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(crate::daemon::run::BLOCKING_THREADS)
        .enable_all()
        .build()?;
    let options = rt.block_on(async { options(ctx, &a) })?;
    rt.block_on(crate::daemon::run::run(options))?;
    Ok(ExitCode::SUCCESS)
}

/// The daemon's options from the config and the flags. (Inside the runtime:
/// the notifier and the sync's watcher start there.)
fn options(ctx: &Ctx, a: &RunArgs) -> Result<Options> {
    let cfg = &ctx.config;
    let resync = a
        .resync
        .or(cfg.resync_seconds.map(Duration::from_secs))
        .unwrap_or(Duration::from_secs(30))
        .max(MIN_RESYNC);
    let state_dir = ctx.state_dir();
    let home = |p: &Option<String>| p.as_deref().map(crate::fsutil::expand_home);
    let manifests = a.manifests.clone().or_else(|| home(&cfg.manifests));
    let token_path = access::token_path(cfg, &state_dir);
    let token = access::load_or_create_token(&token_path)
        .context("cannot prepare the control plane's bearer token")?;
    let store = ctx.store()?;
    let syncer = match &manifests {
        Some(dir) => Some(
            crate::sync::Syncer::new(store.clone(), dir, &ctx.namespace).with_context(|| {
                format!("cannot read the manifests directory {}", dir.display())
            })?,
        ),
        None => None,
    };
    let q = &cfg.quota;
    let node = match a.node.clone().or(cfg.node.name.clone()) {
        Some(n) => {
            crate::manifest::validate::dns1123_label(&n)
                .map_err(|e| anyhow::anyhow!("--node (config node.name) {n:?}: {e}"))?;
            n
        }
        None => crate::api::node_name_from_host(
            &std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default(),
        ),
    };
    Ok(Options {
        node,
        capacity: a.capacity.or(cfg.node.capacity),
        store,
        store_dir: ctx.store_dir.clone(),
        tmux_socket: home(&cfg.tmux_socket).unwrap_or_else(|| state_dir.join("tmux.sock")),
        shared_projects: home(&cfg.transcripts_dir).unwrap_or_else(|| state_dir.join("projects")),
        listen: a
            .listen
            .clone()
            .or(cfg.listen.clone())
            .unwrap_or_else(|| DEFAULT_LISTEN.into()),
        api_socket: home(&cfg.api.socket),
        token,
        token_path,
        syncer,
        resync,
        dispatch: dispatch_settings(cfg),
        quota: account::QuotaSettings {
            stale: Duration::from_secs(q.stale_seconds.unwrap_or(900).max(1)),
            hysteresis: f64::from(q.hysteresis_percent.unwrap_or(5)),
            poll_interval: Duration::from_secs(q.poll_interval_seconds.unwrap_or(300).max(1)),
            usage_base_url: q
                .usage_base_url
                .clone()
                .unwrap_or_else(|| "https://api.anthropic.com".into()),
        },
        failover: failover::FailoverSettings {
            turn_wait: Duration::from_secs(q.turn_wait_seconds.unwrap_or(120)),
            confirm: Duration::from_secs(q.confirm_seconds.unwrap_or(60).max(1)),
            policy: crate::quota::policy::Policy::from_config(q),
        },
        janitor: crate::janitor::Settings {
            interval: Duration::from_secs(cfg.janitor.interval_seconds.unwrap_or(600).max(1)),
            keep_finished: Duration::from_secs(
                cfg.janitor.keep_finished_seconds.unwrap_or(7 * 24 * 3600),
            ),
            state_dir: state_dir.clone(),
            keep_checkpoints: Duration::from_secs(
                q.keep_checkpoints_seconds.unwrap_or(7 * 24 * 3600),
            ),
        },
        notify: cfg.notify.clone(),
        checkpoint_every: Duration::from_secs(q.checkpoint_seconds.unwrap_or(60).max(1)),
        continue_message: q
            .continue_message
            .clone()
            .unwrap_or_else(|| "continue".into()),
        mcp: crate::mcp::http::Settings {
            config: cfg.mcp.clone(),
            namespace: ctx.namespace.clone(),
        },
        state_dir,
    })
}

fn dispatch_settings(cfg: &crate::config::Config) -> task::DispatchSettings {
    let d = &cfg.dispatch;
    let mut s = task::DispatchSettings::default();
    if let Some(c) = d.cooldown_seconds {
        s.cooldown = Duration::from_secs(c);
    }
    if let Some(t) = d.timeout_seconds {
        s.default_timeout = Duration::from_secs(t);
    }
    if let Some(m) = d.max_attempts {
        s.max_attempts = m.max(1);
    }
    if let Some(models) = &d.models {
        s.models.extend(models.iter().map(|(p, m)| (*p, m.clone())));
    }
    s.policy = crate::quota::policy::Policy::from_config(&cfg.quota);
    s
}

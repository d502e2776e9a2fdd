//! `mcp`: the pool's MCP server over stdio, for any MCP client (Claude
//! Code: `claude mcp add claude-failover -- claude-failover mcp`).
//!
//! It speaks to the daemon serving this store through its API, found at
//! each call (`STATE/api.json`, the token file); with no daemon it reads
//! the store and says so in every result, and refuses writes with the
//! reason. Write tools are there only with `--write` or `mcp.write: true`.
//! Logs go to stderr (stdout is the protocol).

use super::Ctx;
use crate::config::LogFormat;
use crate::daemon::access;
use crate::mcp::delegation::RateLimiter;
use crate::mcp::pool::{Api, Pool};
use crate::mcp::scope::Caller;
use crate::mcp::server::McpServer;
use crate::mcp::tools::Shared;
use anyhow::{Context as _, Result};
use clap::Args;
use rmcp::ServiceExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

#[derive(Args, Debug)]
pub struct McpArgs {
    /// Offer the write tools (create and cancel tasks, restart sessions,
    /// request failovers) [config: mcp.write; default: read-only]
    #[arg(long)]
    pub write: bool,
    /// Log filter for stderr [default: warn]
    #[arg(long, default_value = "warn")]
    pub log_level: String,
}

pub fn mcp(ctx: &Ctx, a: McpArgs) -> Result<ExitCode> {
    super::init_logging(LogFormat::Text, &a.log_level);
    let store = ctx.store()?;
    let state_dir = ctx.state_dir();
    let token_path = access::token_path(&ctx.config, &state_dir);
    let store_dir = ctx.store_dir.clone();
    let pool = Pool::discovering(store, move || discover(&state_dir, &token_path, &store_dir));
    let limits = ctx.config.mcp.delegation.limits();
    let shared = Arc::new(Shared {
        pool,
        namespace: ctx.namespace.clone(),
        limits,
        rate: RateLimiter::new(&limits),
    });
    let caller = Caller::Client {
        name: "stdio".into(),
        write: a.write || ctx.config.mcp.write(),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let running = McpServer::new(shared, Some(caller))
            .serve(rmcp::transport::stdio())
            .await
            .context("the MCP session did not start")?;
        running
            .waiting()
            .await
            .context("the MCP session ended with an error")?;
        Ok::<(), anyhow::Error>(())
    })?;
    // Events recorded for writes wait for the disk at most this long.
    crate::store::flush_now().context("cannot flush the store")?;
    Ok(ExitCode::SUCCESS)
}

fn pid_alive(pid: u32) -> bool {
    // SAFETY: kill(2) with signal 0 only checks that the process exists.
    let r = unsafe { libc::kill(pid as libc::pid_t, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// The daemon serving `store_dir`, or why there is none.
fn discover(state_dir: &Path, token_path: &Path, store_dir: &PathBuf) -> Result<Api, String> {
    let Some(ep) = access::read_endpoint(state_dir) else {
        return Err(format!(
            "no daemon serves this store ({} does not exist)",
            access::endpoint_path(state_dir).display()
        ));
    };
    if !pid_alive(ep.pid) {
        return Err(format!(
            "the daemon that served {} (pid {}) is not running",
            ep.url, ep.pid
        ));
    }
    let ours = std::fs::canonicalize(store_dir).unwrap_or_else(|_| store_dir.clone());
    if ep.store != ours {
        return Err(format!(
            "the daemon at {} serves another store ({})",
            ep.url,
            ep.store.display()
        ));
    }
    match access::read_token(token_path) {
        Ok(Some(token)) => Ok(Api::network(ep.url, token)),
        Ok(None) => Err(format!(
            "the daemon runs but its token file {} is missing",
            token_path.display()
        )),
        Err(e) => Err(e.to_string()),
    }
}

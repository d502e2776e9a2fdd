//! `failover ACCOUNT [--to OTHER]`: move the sessions off an account by
//! hand, and `swaps`: the record of every swap.

use super::Ctx;
use crate::api::{Account, Kind, ObjectKey};
use crate::controller::failover::{SwapRecord, request};
use anyhow::{Result, bail};
use clap::Args;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

#[derive(Args, Debug)]
pub struct FailoverArgs {
    /// The account whose sessions move
    pub account: String,
    /// The account they move to (default: the one with the most headroom)
    #[arg(long)]
    pub to: Option<String>,
    /// Return at once instead of waiting for the swap's outcome
    #[arg(long)]
    pub no_wait: bool,
    /// How long to wait for the outcome
    #[arg(long, default_value = "5m", value_parser = super::wait::parse_duration)]
    pub timeout: Duration,
}

pub fn failover(ctx: &Ctx, a: FailoverArgs) -> Result<ExitCode> {
    let store = ctx.store()?;
    let accounts = store.api::<Account>(Some(&ctx.namespace));
    for name in std::iter::once(&a.account).chain(a.to.as_ref()) {
        if accounts.get(name)?.is_none() {
            bail!(
                "account.claude-failover.io \"{name}\" not found in namespace {}",
                ctx.namespace
            );
        }
    }
    if a.to.as_deref() == Some(a.account.as_str()) {
        bail!("--to names the account the sessions leave");
    }
    let state_dir = ctx.state_dir();
    let since = crate::controller::checkpoint::unix_ms(SystemTime::now());
    request(&state_dir, &ctx.namespace, &a.account, a.to.as_deref())?;
    println!(
        "failover of account {} requested{}",
        a.account,
        a.to.as_deref()
            .map(|t| format!(" (to {t})"))
            .unwrap_or_default()
    );
    if a.no_wait {
        return Ok(ExitCode::SUCCESS);
    }
    let key = ObjectKey::new(Kind::Account, &ctx.namespace, &a.account);
    let deadline = Instant::now() + a.timeout;
    loop {
        if let Some(r) = SwapRecord::list(&state_dir)
            .into_iter()
            .find(|r| r.from == a.account && r.started_at >= since && r.result != "Running")
        {
            println!(
                "swap {} {}: {}",
                r.epoch,
                r.result.to_ascii_lowercase(),
                r.message
            );
            return Ok(if r.result == "Succeeded" {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            });
        }
        // Nothing to move, or no target: the daemon says so in the events.
        let told = store.events(&key)?.into_iter().rev().find(|e| {
            crate::controller::checkpoint::unix_ms(SystemTime::from(e.last_timestamp.0)) >= since
                && matches!(e.reason.as_str(), "FailoverSkipped" | "NoFailoverTarget")
        });
        if let Some(e) = told {
            println!("{}", e.message);
            return Ok(ExitCode::from(1));
        }
        if Instant::now() >= deadline {
            bail!(
                "no outcome within {}s: is the daemon running (claude-failover run)?",
                a.timeout.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `swaps`: every recorded swap, oldest first.
pub fn swaps(ctx: &Ctx) -> Result<ExitCode> {
    let rows: Vec<Vec<String>> = SwapRecord::list(&ctx.state_dir())
        .into_iter()
        .map(|r| {
            let started =
                crate::quota::jiff_of(std::time::UNIX_EPOCH + Duration::from_millis(r.started_at))
                    .round(k8s_openapi::jiff::Unit::Second)
                    .map(|t| t.to_string())
                    .unwrap_or_default();
            let took = r
                .finished_at
                .map(|f| format!("{:.1}s", f.saturating_sub(r.started_at) as f64 / 1000.0))
                .unwrap_or_else(|| "-".into());
            vec![
                r.epoch.to_string(),
                r.namespace,
                r.from,
                r.to.unwrap_or_else(|| "-".into()),
                r.reason,
                r.sessions.join(","),
                started,
                took,
                r.result,
            ]
        })
        .collect();
    if rows.is_empty() {
        println!("No swaps recorded.");
        return Ok(ExitCode::SUCCESS);
    }
    print!(
        "{}",
        super::print::table(
            &[
                "EPOCH",
                "NAMESPACE",
                "FROM",
                "TO",
                "REASON",
                "SESSIONS",
                "STARTED",
                "TOOK",
                "RESULT"
            ],
            &rows
        )
    );
    Ok(ExitCode::SUCCESS)
}

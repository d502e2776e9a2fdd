//! `failover ACCOUNT [--to OTHER]`: move the sessions off an account by
//! hand, and `swaps`: the record of every swap.

use super::Ctx;
use crate::api::{Account, Kind, ObjectKey, Swap, SwapPhase};
use anyhow::{Result, bail};
use clap::Args;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// How often the outcome of a request is looked for.
const POLL: Duration = Duration::from_millis(200);

#[derive(Args, Debug)]
pub struct FailoverArgs {
    /// The account whose sessions move
    pub account: String,
    /// The account they move to (default: the one the failover policy picks)
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
    let key = ObjectKey::new(Kind::Account, &ctx.namespace, &a.account);
    let requested = crate::requests::request_failover(&store, &key, a.to.as_deref(), "cli")?;
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
    let deadline = Instant::now() + a.timeout;
    let swaps = store.api::<Swap>(Some(&ctx.namespace));
    loop {
        // The failover controller answers in the Account's status, then
        // the swap it started tells how it ended.
        let answer = accounts
            .get(&a.account)?
            .and_then(|acc| acc.status?.failover?.request)
            .filter(|r| r.requested_at == requested);
        if let Some(answer) = answer {
            match answer.swap {
                None => {
                    println!("{}", answer.message);
                    return Ok(ExitCode::from(1));
                }
                Some(name) => {
                    if let Some(s) = swaps.get(&name)?
                        && let Some(st) = s.status.as_ref().filter(|st| st.phase.finished())
                    {
                        println!(
                            "swap {} {}: {}",
                            s.spec.epoch,
                            st.phase.to_string().to_ascii_lowercase(),
                            st.message
                        );
                        return Ok(if st.phase == SwapPhase::Succeeded {
                            ExitCode::SUCCESS
                        } else {
                            ExitCode::from(1)
                        });
                    }
                }
            }
        }
        if Instant::now() >= deadline {
            bail!(
                "no outcome within {}s: is the daemon running (claude-failover run)?",
                a.timeout.as_secs()
            );
        }
        std::thread::sleep(POLL);
    }
}

/// `swaps`: every recorded swap, oldest first.
pub fn swaps(ctx: &Ctx) -> Result<ExitCode> {
    let mut all = ctx.store()?.api::<Swap>(None).list()?;
    all.sort_by_key(|s| s.spec.epoch);
    let rows: Vec<Vec<String>> = all
        .into_iter()
        .map(|s| {
            let st = s.status.clone().unwrap_or_default();
            let started = st
                .started_at
                .as_ref()
                .and_then(|t| t.0.round(k8s_openapi::jiff::Unit::Second).ok())
                .map(|t| t.to_string())
                .unwrap_or_else(|| "-".into());
            let took = match (&st.started_at, &st.finished_at) {
                (Some(a), Some(b)) => format!(
                    "{:.1}s",
                    (b.0.as_millisecond() - a.0.as_millisecond()).max(0) as f64 / 1000.0
                ),
                _ => "-".into(),
            };
            vec![
                s.spec.epoch.to_string(),
                s.metadata.namespace.clone().unwrap_or_default(),
                s.spec.from.clone(),
                s.spec.to.clone(),
                s.spec.reason.clone(),
                s.spec.sessions.join(","),
                started,
                took,
                st.phase.to_string(),
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

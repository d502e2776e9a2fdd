//! `failover ACCOUNT [--to OTHER]`: move the sessions off an account by
//! hand; `swaps`: the record of every swap; `reinstate ACCOUNT`: take a
//! set-aside account back as a target.

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

#[derive(Args, Debug)]
pub struct ReinstateArgs {
    /// The account to take back as a failover target
    pub account: String,
    /// How long to wait for the failover controller's answer
    #[arg(long, default_value = "30s", value_parser = super::wait::parse_duration)]
    pub timeout: Duration,
}

/// Asks the failover controller to end `account`'s set-aside and waits for
/// its answer (exit 1 when none comes: no daemon is running).
pub fn reinstate(ctx: &Ctx, a: ReinstateArgs) -> Result<ExitCode> {
    let store = ctx.store()?;
    let accounts = store.api::<Account>(Some(&ctx.namespace));
    let Some(acc) = accounts.get(&a.account)? else {
        bail!(
            "account.claude-failover.io \"{}\" not found in namespace {}",
            a.account,
            ctx.namespace
        );
    };
    let aside = acc
        .status
        .as_ref()
        .and_then(|s| s.failover.as_ref()?.set_aside.clone());
    let key = ObjectKey::new(Kind::Account, &ctx.namespace, &a.account);
    let requested = crate::requests::request_reinstate(&store, &key, "cli")?;
    match &aside {
        Some(x) => println!(
            "reinstating account {} (set aside until {}: {})",
            a.account, x.until.0, x.reason
        ),
        None => println!(
            "account {} is not set aside; recorded the request",
            a.account
        ),
    }
    let deadline = Instant::now() + a.timeout;
    loop {
        let answered = accounts
            .get(&a.account)?
            .and_then(|acc| acc.status?.failover?.reinstated)
            .is_some_and(|r| r == requested);
        if answered {
            println!("account {} is a failover target again", a.account);
            return Ok(ExitCode::SUCCESS);
        }
        if Instant::now() >= deadline {
            println!(
                "no answer within {}s: is the daemon running? (the request stays; it is answered when the daemon runs)",
                a.timeout.as_secs()
            );
            return Ok(ExitCode::from(1));
        }
        std::thread::sleep(POLL);
    }
}

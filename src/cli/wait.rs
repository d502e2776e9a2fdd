//! `wait --for=condition=Ready|delete`: blocks until every named object
//! meets the condition, woken by the store's watch (no polling loop).

use super::{Ctx, parse_kind};
use crate::api::{Account, Kind, ObjectKey, Session, Task};
use crate::store::watch::{WatchConfig, watch};
use anyhow::{Result, bail};
use clap::Args;
use futures::StreamExt;
use serde_json::Value;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Args, Debug)]
pub struct WaitArgs {
    /// KIND NAME... or KIND/NAME...
    #[arg(required = true)]
    pub targets: Vec<String>,
    /// `condition=TYPE` (status True), `condition=TYPE=False`, or `delete`
    #[arg(long = "for", value_name = "CONDITION")]
    pub for_: String,
    /// Give up after this long (`30s`, `5m`, `1h`, `500ms`)
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub timeout: Duration,
}

/// `30s`, `5m`, `1h`, `500ms`, `1m30s`; a bare number is seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    if let Ok(n) = s.parse::<f64>() {
        return Ok(Duration::from_secs_f64(n.max(0.0)));
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (num, tail) = rest.split_at(digits);
        let n: f64 = num
            .parse()
            .map_err(|_| format!("`{s}` is not a duration (try 30s, 5m, 1h)"))?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(tail.len());
        let (unit, next) = tail.split_at(unit_len);
        let secs = match unit {
            "ms" => n / 1000.0,
            "s" => n,
            "m" => n * 60.0,
            "h" => n * 3600.0,
            _ => return Err(format!("`{s}`: unknown unit `{unit}` (use ms, s, m or h)")),
        };
        total += Duration::from_secs_f64(secs);
        rest = next;
    }
    Ok(total)
}

#[derive(Debug, Clone, PartialEq)]
enum Want {
    Condition(String, String),
    Deleted,
}

fn met(want: &Want, obj: Option<&Value>) -> bool {
    match (want, obj) {
        (Want::Deleted, o) => o.is_none(),
        (Want::Condition(..), None) => false,
        (Want::Condition(t, s), Some(v)) => v
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .any(|c| {
                c.get("type")
                    .and_then(Value::as_str)
                    .is_some_and(|x| x.eq_ignore_ascii_case(t))
                    && c.get("status")
                        .and_then(Value::as_str)
                        .is_some_and(|x| x.eq_ignore_ascii_case(s))
            }),
    }
}

fn targets(ctx: &Ctx, args: &[String]) -> Result<Vec<ObjectKey>> {
    if args[0].contains('/') {
        args.iter()
            .map(|t| {
                let (k, n) = t.split_once('/').expect("checked");
                Ok(ObjectKey::new(parse_kind(k)?, &ctx.namespace, n))
            })
            .collect()
    } else {
        let kind = parse_kind(&args[0])?;
        if args.len() < 2 {
            bail!("name the {} to wait for", kind.plural());
        }
        Ok(args[1..]
            .iter()
            .map(|n| ObjectKey::new(kind, &ctx.namespace, n))
            .collect())
    }
}

pub fn wait(ctx: &Ctx, a: WaitArgs) -> Result<ExitCode> {
    let want = if a.for_ == "delete" {
        Want::Deleted
    } else if let Some(c) = a.for_.strip_prefix("condition=") {
        match c.split_once('=') {
            Some((t, s)) => Want::Condition(t.into(), s.into()),
            None => Want::Condition(c.into(), "True".into()),
        }
    } else {
        bail!(
            "--for takes `condition=TYPE[=STATUS]` or `delete`, not `{}`",
            a.for_
        );
    };
    let keys = targets(ctx, &a.targets)?;
    let store = ctx.store()?;
    if matches!(want, Want::Condition(..)) {
        for k in &keys {
            if store.get(k)?.is_none() {
                bail!(
                    "{} \"{}\" not found in namespace {}",
                    k.kind.qualified(),
                    k.name,
                    k.namespace
                );
            }
        }
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut pending: Vec<ObjectKey> = keys;
    let done = rt.block_on(async {
        // One watch per kind involved; any event means "look again".
        let cfg = WatchConfig {
            namespace: Some(ctx.namespace.clone()),
            resync: Duration::from_secs(5),
        };
        let kinds: std::collections::BTreeSet<Kind> = pending.iter().map(|k| k.kind).collect();
        let mut wakeups = futures::stream::select_all(kinds.into_iter().map(|k| {
            match k {
                Kind::Account => watch::<Account>(store.clone(), cfg.clone())
                    .map(|_| ())
                    .boxed(),
                Kind::Session => watch::<Session>(store.clone(), cfg.clone())
                    .map(|_| ())
                    .boxed(),
                Kind::Task => watch::<Task>(store.clone(), cfg.clone())
                    .map(|_| ())
                    .boxed(),
                Kind::Swap => watch::<crate::api::Swap>(store.clone(), cfg.clone())
                    .map(|_| ())
                    .boxed(),
                Kind::Lease => watch::<crate::api::Lease>(store.clone(), cfg.clone())
                    .map(|_| ())
                    .boxed(),
            }
        }));
        let check = |pending: &mut Vec<ObjectKey>| -> Result<()> {
            let mut still = Vec::new();
            for k in pending.drain(..) {
                if met(&want, store.get(&k)?.as_ref()) {
                    println!("{}/{} condition met", k.kind.qualified(), k.name);
                } else {
                    still.push(k);
                }
            }
            *pending = still;
            Ok(())
        };
        let deadline = tokio::time::Instant::now() + a.timeout;
        loop {
            check(&mut pending)?;
            if pending.is_empty() {
                return Ok::<bool, anyhow::Error>(true);
            }
            match tokio::time::timeout_at(deadline, wakeups.next()).await {
                Ok(Some(())) => {}
                Ok(None) | Err(_) => return Ok(false),
            }
        }
    })?;
    if done {
        return Ok(ExitCode::SUCCESS);
    }
    for k in &pending {
        eprintln!(
            "error: timed out waiting for the condition on {}/{}",
            k.kind.plural(),
            k.name
        );
    }
    Ok(ExitCode::from(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2").unwrap(), Duration::from_secs(2));
        assert!(parse_duration("5x").is_err());
    }
}

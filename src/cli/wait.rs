//! `wait --for=condition=TYPE[=STATUS] | jsonpath='{PATH}'[=VALUE] |
//! create | delete`: blocks until every named object meets it, woken by
//! the store's watch (no polling loop).
//!
//! A Task's Job-style conditions (`Complete`, `Failed`, `Cancelled`) are
//! read from its status, and derived from its phase with the same function
//! the task controller writes them with ([`crate::api::job_condition`]),
//! so a wait on a task that ended before they were recorded still ends.

use super::Ctx;
use super::args::targets;
use crate::api::{Account, Kind, ObjectKey, Session, Task, TaskStatus};
use crate::output::{Expr, gofmt};
use crate::store::watch::{WatchConfig, watch};
use anyhow::{Result, bail};
use clap::Args;
use futures::StreamExt;
use serde_json::Value;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Args, Debug)]
pub struct WaitArgs {
    /// KIND NAME..., KIND/NAME..., or KIND with --all / -l
    #[arg(required = true, value_name = "RESOURCE")]
    pub targets: Vec<String>,
    /// `condition=TYPE` (status True), `condition=TYPE=False`,
    /// `jsonpath='{.status.phase}'=Idle` (or without `=VALUE`: the field
    /// exists), `create`, or `delete`
    #[arg(long = "for", value_name = "CONDITION")]
    pub for_: String,
    /// Give up after this long (`30s`, `5m`, `1h`, `500ms`)
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Every object of the kinds in the namespace
    #[arg(long)]
    pub all: bool,
    /// The objects of the kinds whose labels match
    #[arg(short = 'l', long)]
    pub selector: Option<String>,
}

/// `30s`, `5m`, `1h`, `500ms`, `1m30s`; a bare number is seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    if let Ok(n) = s.parse::<f64>() {
        return Duration::try_from_secs_f64(n.max(0.0))
            .map_err(|_| format!("{s}: too long a duration"));
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

#[derive(Debug, Clone)]
enum Want {
    Condition(String, String),
    /// A path's value (as text), or (None) that it selects anything.
    JsonPath(Expr, Option<String>),
    Created,
    Deleted,
}

/// `{.status.phase}=Idle`, `.status.phase=Idle`, `{.status.x}` → the
/// expression and the value wanted.
fn parse_jsonpath(s: &str) -> Result<(Expr, Option<String>)> {
    let (expr, value) = if s.starts_with('{') {
        let mut depth = 0;
        let mut end = None;
        for (i, c) in s.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = Some(i);
                        break;
                    }
                }
                _ => {}
            }
        }
        let Some(end) = end else {
            bail!("--for=jsonpath: unclosed `{{` in {s}");
        };
        let rest = &s[end + 1..];
        let value = match rest.strip_prefix('=') {
            Some(v) => Some(v.to_string()),
            None if rest.is_empty() => None,
            None => bail!("--for=jsonpath: expected `=VALUE` after the expression, got `{rest}`"),
        };
        (s[1..end].to_string(), value)
    } else {
        // Split at the first `=` outside brackets and quotes.
        let (mut depth, mut quote, mut split) = (0, None::<char>, None);
        for (i, c) in s.char_indices() {
            match (quote, c) {
                (Some(q), c) if c == q => quote = None,
                (Some(_), _) => {}
                (None, '"' | '\'') => quote = Some(c),
                (None, '[' | '(') => depth += 1,
                (None, ']' | ')') => depth -= 1,
                (None, '=') if depth == 0 => {
                    split = Some(i);
                    break;
                }
                _ => {}
            }
        }
        match split {
            Some(i) => (s[..i].to_string(), Some(s[i + 1..].to_string())),
            None => (s.to_string(), None),
        }
    };
    let expr = Expr::parse(&crate::output::columns::relaxed(&expr))
        .map_err(|e| anyhow::anyhow!("--for=jsonpath: {e}"))?;
    Ok((expr, value))
}

fn parse_want(s: &str) -> Result<Want> {
    Ok(if s == "delete" {
        Want::Deleted
    } else if s == "create" {
        Want::Created
    } else if let Some(c) = s.strip_prefix("condition=") {
        match c.split_once('=') {
            Some((t, st)) => Want::Condition(t.into(), st.into()),
            None => Want::Condition(c.into(), "True".into()),
        }
    } else if let Some(j) = s.strip_prefix("jsonpath=") {
        let (e, v) = parse_jsonpath(j)?;
        Want::JsonPath(e, v)
    } else {
        bail!(
            "--for takes `condition=TYPE[=STATUS]`, `jsonpath='{{PATH}}'[=VALUE]`, `create` or `delete`, not `{s}`"
        );
    })
}

/// The object's conditions; a Task's Job-style ones derived from its phase
/// when its status does not hold them yet.
fn conditions(kind: Kind, v: &Value) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = v
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| {
            Some((
                c.get("type")?.as_str()?.to_string(),
                c.get("status")?.as_str()?.to_string(),
            ))
        })
        .collect();
    if kind == Kind::Task
        && let Some(st) = v
            .get("status")
            .and_then(|s| serde_json::from_value::<TaskStatus>(s.clone()).ok())
        && let Some((t, ..)) = crate::api::job_condition(&st)
        && !out.iter().any(|(x, _)| x == t)
    {
        out.push((t.to_string(), "True".into()));
    }
    out
}

fn met(want: &Want, kind: Kind, obj: Option<&Value>) -> bool {
    match (want, obj) {
        (Want::Deleted, o) => o.is_none(),
        (Want::Created, o) => o.is_some(),
        (_, None) => false,
        (Want::Condition(t, s), Some(v)) => conditions(kind, v)
            .iter()
            .any(|(ct, cs)| ct.eq_ignore_ascii_case(t) && cs.eq_ignore_ascii_case(s)),
        (Want::JsonPath(e, value), Some(v)) => {
            let found = e.select(v, v);
            match value {
                None => !found.is_empty(),
                Some(want) => found.len() == 1 && gofmt::text(found[0]) == *want,
            }
        }
    }
}

/// Waits (woken by the store's watch) until each key's object meets
/// `want`; returns the keys that did not within `timeout` (None: no limit).
fn wait_for(
    ctx: &Ctx,
    want: &Want,
    mut pending: Vec<ObjectKey>,
    timeout: Option<Duration>,
    report: bool,
) -> Result<Vec<ObjectKey>> {
    let store = ctx.store()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        // One watch per kind involved; any event means "look again".
        let cfg = WatchConfig {
            namespace: Some(ctx.namespace.clone()),
            resync: Duration::from_secs(5),
            lean: false,
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
                Kind::ManifestSync => watch::<crate::api::ManifestSync>(store.clone(), cfg.clone())
                    .map(|_| ())
                    .boxed(),
                Kind::SessionPool => watch::<crate::api::SessionPool>(store.clone(), cfg.clone())
                    .map(|_| ())
                    .boxed(),
                Kind::Node => watch::<crate::api::Node>(store.clone(), cfg.clone())
                    .map(|_| ())
                    .boxed(),
            }
        }));
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        loop {
            let mut still = Vec::new();
            for k in pending.drain(..) {
                if met(want, k.kind, store.get(&k)?.as_ref()) {
                    if report {
                        println!("{}/{} condition met", k.kind.qualified(), k.name);
                    }
                } else {
                    still.push(k);
                }
            }
            pending = still;
            if pending.is_empty() {
                return Ok(pending);
            }
            let next = match deadline {
                Some(d) => tokio::time::timeout_at(d, wakeups.next()).await,
                None => Ok(wakeups.next().await),
            };
            match next {
                Ok(Some(())) => {}
                Ok(None) | Err(_) => return Ok(pending),
            }
        }
    })
}

/// Waits until the objects are gone (for `delete --wait`); returns those
/// still there at the timeout.
pub fn until_deleted(
    ctx: &Ctx,
    keys: Vec<ObjectKey>,
    timeout: Option<Duration>,
) -> Result<Vec<ObjectKey>> {
    wait_for(ctx, &Want::Deleted, keys, timeout, false)
}

pub fn wait(ctx: &Ctx, a: WaitArgs) -> Result<ExitCode> {
    let want = parse_want(&a.for_)?;
    let ts = targets(&a.targets)?;
    if ts.iter().any(|t| t.names.is_empty()) && !a.all && a.selector.is_none() {
        bail!(
            "name the {} to wait for, or pass --all or -l SELECTOR",
            ts.iter()
                .map(|t| t.kind.plural())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let keys = super::label::resolve(ctx, &ts, a.all, a.selector.as_deref())?;
    let store = ctx.store()?;
    if matches!(want, Want::Condition(..) | Want::JsonPath(..)) {
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
    let left = wait_for(ctx, &want, keys, Some(a.timeout), true)?;
    if left.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    for k in &left {
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
    use serde_json::json;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2").unwrap(), Duration::from_secs(2));
        assert!(parse_duration("5x").is_err());
    }

    #[test]
    fn wants() {
        let obj = json!({"status": {"phase": "Idle", "restarts": 0,
            "conditions": [{"type": "Ready", "status": "True"}]}});
        let m = |s: &str| met(&parse_want(s).unwrap(), Kind::Session, Some(&obj));
        assert!(m("condition=Ready"));
        assert!(m("condition=ready=true"));
        assert!(!m("condition=Ready=False"));
        assert!(m("jsonpath={.status.phase}=Idle"));
        assert!(m("jsonpath=.status.phase=Idle"));
        assert!(!m("jsonpath={.status.phase}=Busy"));
        assert!(m("jsonpath={.status.restarts}=0"));
        assert!(m("jsonpath={.status.phase}"));
        assert!(!m("jsonpath={.status.nope}"));
        assert!(m(
            r#"jsonpath={.status.conditions[?(@.type=="Ready")].status}=True"#
        ));
        assert!(m("create"));
        assert!(!m("delete"));
        assert!(parse_want("jsonpath={.a").is_err());
        assert!(parse_want("ready").is_err());
    }

    #[test]
    fn a_finished_task_is_complete_before_its_conditions_are_written() {
        let done = json!({"status": {"phase": "Succeeded"}});
        let want = parse_want("condition=Complete").unwrap();
        assert!(met(&want, Kind::Task, Some(&done)));
        assert!(!met(
            &want,
            Kind::Task,
            Some(&json!({"status": {"phase": "Running"}}))
        ));
        let failed = json!({"status": {"phase": "Failed"}});
        assert!(met(
            &parse_want("condition=Failed").unwrap(),
            Kind::Task,
            Some(&failed)
        ));
        assert!(!met(&want, Kind::Task, Some(&failed)));
    }
}

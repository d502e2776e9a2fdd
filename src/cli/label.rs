//! `label` and `annotate` (`KEY=VALUE` sets, `KEY-` removes), and
//! `suspend` / `resume` (sessions, accounts). Each change is an update by
//! its own field manager, so a later `apply` or sync pass keeps it (see
//! `store::ownership`).

use super::args::{DryRun, Target, targets};
use super::get::Filter;
use super::{Ctx, print};
use crate::api::{Kind, ObjectKey};
use crate::store::StoreError;
use anyhow::{Result, bail};
use clap::Args;
use serde_json::{Map, Value, json};
use std::process::ExitCode;

#[derive(Args, Debug)]
pub struct MetaArgs {
    /// RESOURCE [NAME...] (or KIND/NAME...) then KEY=VALUE to set, KEY- to remove
    #[arg(required = true, value_name = "ARGS")]
    pub args: Vec<String>,
    /// Change a key that already has another value
    #[arg(long)]
    pub overwrite: bool,
    /// Every object of the kinds given, in the namespace
    #[arg(long)]
    pub all: bool,
    /// Only objects whose labels match
    #[arg(short = 'l', long)]
    pub selector: Option<String>,
    /// List the keys instead of changing them
    #[arg(long)]
    pub list: bool,
    /// Only if the object is still at this resourceVersion
    #[arg(long)]
    pub resource_version: Option<String>,
    #[arg(long, value_enum, num_args = 0..=1, default_missing_value = "client", default_value = "none")]
    pub dry_run: DryRun,
    /// Output: `name` prints only the objects' names
    #[arg(short = 'o', long, value_parser = ["name"])]
    pub output: Option<String>,
    /// The field manager recorded as the owner of the keys
    #[arg(long)]
    pub field_manager: Option<String>,
}

#[derive(Args, Debug)]
pub struct SuspendArgs {
    /// sessions or accounts, then names (or KIND/NAME...)
    #[arg(required = true, value_name = "RESOURCE")]
    pub resources: Vec<String>,
    /// Every object of the kind in the namespace
    #[arg(long)]
    pub all: bool,
    /// Only objects whose labels match
    #[arg(short = 'l', long)]
    pub selector: Option<String>,
    #[arg(long, value_enum, num_args = 0..=1, default_missing_value = "client", default_value = "none")]
    pub dry_run: DryRun,
}

/// Which map a verb edits and how it speaks of it.
#[derive(Clone, Copy)]
pub enum Which {
    Labels,
    Annotations,
}

impl Which {
    fn field(self) -> &'static str {
        match self {
            Which::Labels => "labels",
            Which::Annotations => "annotations",
        }
    }
    fn verb(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Which::Labels => ("labeled", "unlabeled", "not labeled"),
            Which::Annotations => ("annotated", "unannotated", "not annotated"),
        }
    }
    fn manager(self) -> &'static str {
        match self {
            Which::Labels => "claude-failover-label",
            Which::Annotations => "claude-failover-annotate",
        }
    }
}

/// One change: set KEY to VALUE, or remove KEY.
#[derive(Debug, Clone, PartialEq)]
enum Change {
    Set(String, String),
    Remove(String),
}

fn parse_change(which: Which, s: &str) -> Result<Option<Change>> {
    use crate::manifest::validate::{label_value, qualified_name};
    if let Some((k, v)) = s.split_once('=') {
        qualified_name(k).map_err(anyhow::Error::msg)?;
        if matches!(which, Which::Labels) {
            label_value(v).map_err(|e| anyhow::anyhow!("{k}: {e}"))?;
        }
        return Ok(Some(Change::Set(k.into(), v.into())));
    }
    if let Some(k) = s.strip_suffix('-')
        && qualified_name(k).is_ok()
    {
        return Ok(Some(Change::Remove(k.into())));
    }
    Ok(None)
}

/// The objects an invocation names: explicit names, or every object of
/// the kinds (with `--all` or `-l`).
pub(super) fn resolve(
    ctx: &Ctx,
    targets: &[Target],
    all: bool,
    selector: Option<&str>,
) -> Result<Vec<ObjectKey>> {
    let store = ctx.store()?;
    let mut keys = Vec::new();
    for t in targets {
        if t.names.is_empty() {
            if !all && selector.is_none() {
                bail!(
                    "name the {} to change, or pass --all or -l SELECTOR",
                    t.kind.plural()
                );
            }
            let filter = Filter::new(&[], selector, None, &[t.kind])?;
            let ns = ctx.namespace_of(t.kind);
            for v in store.list(t.kind, Some(ns))? {
                if filter.keep(&v) {
                    let name = v["metadata"]["name"].as_str().unwrap_or_default();
                    keys.push(ObjectKey::new(t.kind, ns, name));
                }
            }
        } else {
            if all {
                bail!("--all takes no names");
            }
            keys.extend(
                t.names
                    .iter()
                    .map(|n| ObjectKey::new(t.kind, ctx.namespace_of(t.kind), n)),
            );
        }
    }
    Ok(keys)
}

pub(super) fn not_found(key: &ObjectKey) -> String {
    format!(
        "{} \"{}\" not found in namespace {}",
        key.kind.qualified(),
        key.name,
        key.namespace
    )
}

pub fn label(ctx: &Ctx, a: MetaArgs, which: Which) -> Result<ExitCode> {
    let mut resources = Vec::new();
    let mut changes = Vec::new();
    for arg in &a.args {
        match parse_change(which, arg)? {
            Some(c) if !resources.is_empty() => changes.push(c),
            _ => resources.push(arg.clone()),
        }
    }
    if changes.is_empty() && !a.list {
        bail!(
            "at least one {} update is required (KEY=VALUE or KEY-)",
            &which.field()[..which.field().len() - 1]
        );
    }
    let keys = resolve(ctx, &targets(&resources)?, a.all, a.selector.as_deref())?;
    let store = ctx.store()?;
    let mut failed = false;
    for key in keys {
        let done = if a.list {
            list_keys(&store, &key, which.field())
        } else {
            change_keys(&store, &key, &a, which, &changes)
        };
        if let Err(message) = done {
            eprintln!("error: {message}");
            failed = true;
        }
    }
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// `--list`: the object's labels or annotations, one per line.
fn list_keys(store: &crate::store::Store, key: &ObjectKey, field: &str) -> Result<(), String> {
    let v = store
        .get(key)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| not_found(key))?;
    println!("Listing {field} for {}/{}:", key.kind.qualified(), key.name);
    if let Some(m) = v["metadata"].get(field).and_then(Value::as_object) {
        for (k, x) in m {
            println!(" {k}={}", x.as_str().unwrap_or_default());
        }
    }
    Ok(())
}

/// Makes `changes` to one object's labels or annotations, as the writer
/// of the verb (or `--field-manager`), and says what it did.
fn change_keys(
    store: &crate::store::Store,
    key: &ObjectKey,
    a: &MetaArgs,
    which: Which,
    changes: &[Change],
) -> Result<(), String> {
    let field = which.field();
    let (mut added, mut removed) = (false, false);
    let manager = a.field_manager.as_deref().unwrap_or(which.manager());
    let r = store.update_object(
        key,
        a.resource_version.as_deref(),
        manager,
        a.dry_run.active(),
        |obj| {
            let meta = obj["metadata"]
                .as_object_mut()
                .ok_or("metadata is not a map")?;
            let map = meta
                .entry(field)
                .or_insert_with(|| json!({}))
                .as_object_mut()
                .ok_or("not a map")?;
            (added, removed) = apply_changes(map, changes, a.overwrite)?;
            Ok(())
        },
    );
    let u = match r {
        Ok(u) => u,
        Err(StoreError::NotFound(_)) => return Err(not_found(key)),
        Err(StoreError::Invalid { message, .. }) => return Err(message),
        Err(e) => return Err(e.to_string()),
    };
    let (did, undid, none) = which.verb();
    let what = match (u.changed, added, removed) {
        (false, _, _) => none,
        (true, false, true) => undid,
        (true, _, _) => did,
    };
    if a.output.as_deref() == Some("name") {
        println!("{}", print::name_of(key.kind, &u.object));
    } else {
        let dry = a.dry_run.suffix();
        println!("{}/{} {what}{dry}", key.kind.qualified(), key.name);
    }
    Ok(())
}

/// Sets and removes keys of `map`: (any set, any removed). A key that has
/// another value is changed only with `overwrite`.
fn apply_changes(
    map: &mut Map<String, Value>,
    changes: &[Change],
    overwrite: bool,
) -> Result<(bool, bool), String> {
    let (mut added, mut removed) = (false, false);
    for c in changes {
        match c {
            Change::Set(k, v) => match map.get(k).and_then(Value::as_str) {
                Some(old) if old == v => {}
                Some(old) if !overwrite => {
                    return Err(format!(
                        "'{k}' already has a value ({old}), and --overwrite is false"
                    ));
                }
                _ => {
                    map.insert(k.clone(), json!(v));
                    added = true;
                }
            },
            Change::Remove(k) => removed |= map.remove(k).is_some(),
        }
    }
    Ok((added, removed))
}

/// `suspend` (true) and `resume` (false): sets `spec.suspend` of sessions
/// (their agents stop gracefully), accounts (they take no new sessions and
/// are drained) or manifest syncs (no pass runs).
pub fn suspend(ctx: &Ctx, a: SuspendArgs, on: bool) -> Result<ExitCode> {
    let targets = targets(&a.resources)?;
    for t in &targets {
        if !matches!(t.kind, Kind::Session | Kind::Account | Kind::ManifestSync) {
            bail!(
                "only sessions, accounts and manifestsyncs can be suspended and resumed, not {}",
                t.kind.plural()
            );
        }
    }
    let keys = resolve(ctx, &targets, a.all, a.selector.as_deref())?;
    if keys.is_empty() {
        eprintln!("No resources found in {} namespace.", ctx.namespace);
        return Ok(ExitCode::SUCCESS);
    }
    let store = ctx.store()?;
    let manager = if on {
        "claude-failover-suspend"
    } else {
        "claude-failover-resume"
    };
    let mut failed = false;
    for key in keys {
        let r = store.update_object(&key, None, manager, a.dry_run.active(), |obj| {
            let spec: &mut Map<String, Value> =
                obj["spec"].as_object_mut().ok_or("spec is not a map")?;
            spec.insert("suspend".into(), json!(on));
            Ok(())
        });
        match r {
            Ok(u) => println!(
                "{}/{} {}{}",
                key.kind.qualified(),
                key.name,
                match (u.changed, on) {
                    (true, true) => "suspended",
                    (true, false) => "resumed",
                    (false, true) => "already suspended",
                    (false, false) => "not suspended",
                },
                a.dry_run.suffix()
            ),
            Err(StoreError::NotFound(_)) => {
                eprintln!("error: {}", not_found(&key));
                failed = true;
            }
            Err(e) => {
                eprintln!("error: {e}");
                failed = true;
            }
        }
    }
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_applied() {
        let set = |k: &str, v: &str| Change::Set(k.into(), v.into());
        let rm = |k: &str| Change::Remove(k.into());
        type Case = (
            &'static str,
            Vec<Change>,
            bool,
            Result<(bool, bool), &'static str>,
        );
        let cases: Vec<Case> = vec![
            ("a new key", vec![set("b", "1")], false, Ok((true, false))),
            (
                "the same value",
                vec![set("a", "x")],
                false,
                Ok((false, false)),
            ),
            (
                "another value",
                vec![set("a", "y")],
                false,
                Err("'a' already has a value (x), and --overwrite is false"),
            ),
            ("overwritten", vec![set("a", "y")], true, Ok((true, false))),
            ("removed", vec![rm("a")], false, Ok((false, true))),
            (
                "absent: nothing removed",
                vec![rm("z")],
                false,
                Ok((false, false)),
            ),
            (
                "both",
                vec![rm("a"), set("b", "2")],
                false,
                Ok((true, true)),
            ),
        ];
        for (name, changes, overwrite, want) in cases {
            let mut map = Map::new();
            map.insert("a".into(), json!("x"));
            let got = apply_changes(&mut map, &changes, overwrite);
            assert_eq!(got, want.map_err(String::from), "{name}");
        }
    }

    #[test]
    fn changes() {
        assert_eq!(
            parse_change(Which::Labels, "a=b").unwrap(),
            Some(Change::Set("a".into(), "b".into()))
        );
        assert_eq!(
            parse_change(Which::Labels, "example.com/a-").unwrap(),
            Some(Change::Remove("example.com/a".into()))
        );
        assert_eq!(parse_change(Which::Labels, "sessions").unwrap(), None);
        assert!(parse_change(Which::Labels, "a=b c").is_err());
        // Annotations take any value.
        assert!(parse_change(Which::Annotations, "note=hello world").is_ok());
    }
}

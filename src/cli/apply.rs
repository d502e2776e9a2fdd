//! `apply`, `delete` and `diff`: the verbs that take manifests.

use super::{Ctx, parse_kind, print};
use crate::api::{Kind, ObjectKey};
use crate::manifest::{Decoded, LoadOptions, Loaded, ManifestError, load_paths};
use crate::store::{DeleteOutcome, StoreError};
use anyhow::{Result, bail};
use clap::Args;
use serde_json::Value;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args, Debug)]
pub struct ApplyArgs {
    /// Manifest file, directory, or - for standard input (repeatable)
    #[arg(short = 'f', long = "filename", required = true, value_name = "PATH")]
    pub files: Vec<PathBuf>,
    /// Also read the sub-directories of a directory
    #[arg(short = 'R', long)]
    pub recursive: bool,
    /// Validate and show what would happen, change nothing
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Args, Debug)]
pub struct DeleteArgs {
    /// Kind of the objects to delete (with NAME...)
    pub kind: Option<String>,
    /// Names of the objects to delete
    pub names: Vec<String>,
    /// Delete the objects declared in these manifests
    #[arg(short = 'f', long = "filename", value_name = "PATH", conflicts_with_all = ["kind", "all"])]
    pub files: Vec<PathBuf>,
    #[arg(short = 'R', long)]
    pub recursive: bool,
    /// Delete every object of KIND in the namespace
    #[arg(long)]
    pub all: bool,
    /// Treat "not found" as success
    #[arg(long)]
    pub ignore_not_found: bool,
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Args, Debug)]
pub struct DiffArgs {
    /// Manifest file, directory, or - for standard input (repeatable)
    #[arg(short = 'f', long = "filename", required = true, value_name = "PATH")]
    pub files: Vec<PathBuf>,
    #[arg(short = 'R', long)]
    pub recursive: bool,
}

/// Reads manifests and applies the namespace rules; prints every problem.
/// Returns None when there was any problem (nothing must be written then).
fn load(ctx: &Ctx, files: &[PathBuf], recursive: bool) -> Option<Vec<Decoded>> {
    let mut loaded: Loaded = load_paths(
        files,
        &LoadOptions {
            recursive,
            namespace: ctx.namespace.clone(),
        },
    );
    if ctx.namespace_flag {
        for d in &loaded.objects {
            let ns = d.object.meta().namespace.as_deref().unwrap_or_default();
            if ns != ctx.namespace {
                loaded.errors.push(ManifestError {
                    file: d.source.file.clone(),
                    pos: d.source.pos,
                    path: "metadata.namespace".into(),
                    message: format!(
                        "the object's namespace `{ns}` does not match the namespace `{}` given with -n",
                        ctx.namespace
                    ),
                });
            }
        }
    }
    if !loaded.errors.is_empty() {
        for e in &loaded.errors {
            eprintln!("{e}");
        }
        return None;
    }
    let mut objects = loaded.objects;
    objects.sort_by_key(|d| d.object.kind());
    Some(objects)
}

pub fn apply(ctx: &Ctx, a: ApplyArgs) -> Result<ExitCode> {
    let Some(objects) = load(ctx, &a.files, a.recursive) else {
        eprintln!("error: nothing applied: fix the problems above");
        return Ok(ExitCode::from(1));
    };
    let store = ctx.store()?;
    let values: Vec<Value> = objects.iter().map(|d| d.object.to_value()).collect();
    // One transaction: every object is applied, or none is.
    let done = match store.apply_all(&values, a.dry_run) {
        Ok(done) => done,
        Err((at, e)) => {
            match at.map(|i| &objects[i]) {
                Some(d) => eprintln!("{}: {e}", d.source),
                None => eprintln!("error: {e}"),
            }
            eprintln!("error: nothing applied");
            return Ok(ExitCode::from(1));
        }
    };
    let suffix = if a.dry_run { " (dry run)" } else { "" };
    for (d, (outcome, _)) in objects.iter().zip(&done) {
        println!(
            "{}/{} {outcome}{suffix}",
            d.object.kind().qualified(),
            d.object.name()
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn delete(ctx: &Ctx, a: DeleteArgs) -> Result<ExitCode> {
    let store = ctx.store()?;
    let keys: Vec<ObjectKey> = if !a.files.is_empty() {
        let Some(objects) = load(ctx, &a.files, a.recursive) else {
            eprintln!("error: nothing deleted: fix the problems above");
            return Ok(ExitCode::from(1));
        };
        objects.iter().rev().map(|d| d.object.key()).collect()
    } else {
        let Some(kind) = a.kind.as_deref() else {
            bail!(
                "say what to delete: `delete KIND NAME...`, `delete KIND --all` or `delete -f FILE`"
            );
        };
        let kind = parse_kind(kind)?;
        if a.all {
            if !a.names.is_empty() {
                bail!("--all takes no names");
            }
            store
                .list(kind, Some(&ctx.namespace))?
                .iter()
                .filter_map(|v| v.pointer("/metadata/name").and_then(Value::as_str))
                .map(|n| ObjectKey::new(kind, &ctx.namespace, n))
                .collect()
        } else {
            if a.names.is_empty() {
                bail!("name the {} to delete, or pass --all", kind.plural());
            }
            a.names
                .iter()
                .map(|n| ObjectKey::new(kind, &ctx.namespace, n))
                .collect()
        }
    };
    let mut failed = false;
    let suffix = if a.dry_run { " (dry run)" } else { "" };
    for key in keys {
        match store.delete(&key, None, a.dry_run) {
            Ok(DeleteOutcome::Deleted) => {
                println!("{} \"{}\" deleted{suffix}", key.kind.qualified(), key.name)
            }
            Ok(DeleteOutcome::Terminating) => println!(
                "{} \"{}\" deleted (terminating: waiting for its finalizers){suffix}",
                key.kind.qualified(),
                key.name
            ),
            Err(StoreError::NotFound(_)) if a.ignore_not_found => {}
            Err(StoreError::NotFound(_)) => {
                eprintln!(
                    "error: {} \"{}\" not found in namespace {}",
                    key.kind.qualified(),
                    key.name,
                    key.namespace
                );
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

/// The object without the fields the server keeps changing.
fn comparable(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(o) = v.as_object_mut() {
        o.remove("status");
    }
    if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        for f in [
            "resourceVersion",
            "generation",
            "uid",
            "creationTimestamp",
            "managedFields",
        ] {
            m.remove(f);
        }
    }
    v
}

pub fn diff(ctx: &Ctx, a: DiffArgs) -> Result<ExitCode> {
    let Some(objects) = load(ctx, &a.files, a.recursive) else {
        return Ok(ExitCode::from(2));
    };
    let store = match ctx.store() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e:#}");
            return Ok(ExitCode::from(2));
        }
    };
    let mut differs = false;
    for d in &objects {
        let key = d.object.key();
        let live = match store.get(&key) {
            Ok(v) => v,
            Err(e) => {
                eprintln!("error: {e}");
                return Ok(ExitCode::from(2));
            }
        };
        let merged = match store.apply(&d.object.to_value(), true) {
            Ok((_, v)) => v,
            Err(e) => {
                eprintln!("{}: {e}", d.source);
                return Ok(ExitCode::from(2));
            }
        };
        let old = live
            .as_ref()
            .map(|v| print::to_yaml(&comparable(v)))
            .unwrap_or_default();
        let new = print::to_yaml(&comparable(&merged));
        if old != new {
            differs = true;
            let name = format!("{}/{}/{}", Kind::name(key.kind), key.namespace, key.name);
            let diff = similar::TextDiff::from_lines(&old, &new);
            print!(
                "{}",
                diff.unified_diff()
                    .context_radius(3)
                    .header(&format!("live/{name}"), &format!("merged/{name}"))
            );
        }
    }
    Ok(if differs {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

//! `apply`, `delete` and `diff`: the verbs that take manifests.
//!
//! `apply` is a server-side apply by a named field manager (see
//! `store::ownership`): it sets the fields its manifests declare and keeps
//! every other writer's (a cancel request, a label added by hand, the
//! daemon's finalizers).

use super::args::{DryRun, targets};
use super::{Ctx, kustomize, print};
use crate::api::{Kind, ObjectKey};
use crate::manifest::{Decoded, LoadOptions, Loaded, ManifestError, load_paths};
use crate::store::ownership;
use crate::store::{
    ApplyRequest, BatchError, DEFAULT_MANAGER, DeleteOutcome, Outcome, Store, StoreError,
};
use anyhow::{Result, bail};
use clap::Args;
use serde_json::Value;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use crate::sync::{PRUNE, PRUNE_DISABLED};

#[derive(Args, Debug)]
pub struct ApplyArgs {
    /// Manifest file, directory, or - for standard input (repeatable)
    #[arg(
        short = 'f',
        long = "filename",
        value_name = "PATH",
        required_unless_present = "kustomize"
    )]
    pub files: Vec<PathBuf>,
    /// A kustomization directory (resources, namespace, labels, prefixes)
    #[arg(short = 'k', long, value_name = "DIR", conflicts_with = "files")]
    pub kustomize: Option<PathBuf>,
    /// Also read the sub-directories of a directory
    #[arg(short = 'R', long)]
    pub recursive: bool,
    /// `client`: show what would change from a read of the store; `server`:
    /// go through every check of a write (lock, preconditions, field
    /// ownership); both write nothing
    #[arg(long, value_enum, num_args = 0..=1, default_missing_value = "client", default_value = "none")]
    pub dry_run: DryRun,
    /// Delete the objects this field manager applied before that the
    /// manifests no longer declare (with -l SELECTOR or --all)
    #[arg(long)]
    pub prune: bool,
    /// With --prune: only objects whose labels match
    #[arg(short = 'l', long)]
    pub selector: Option<String>,
    /// With --prune: every object of the namespace this manager applied
    #[arg(long)]
    pub all: bool,
    /// Take over fields another writer set to other values (instead of
    /// failing with the list of conflicts)
    #[arg(long)]
    pub force_conflicts: bool,
    /// The name this apply records as the owner of the fields it sets
    #[arg(long, default_value = DEFAULT_MANAGER)]
    pub field_manager: String,
    /// Accepted for kubectl's habit: apply is always a server-side apply here
    #[arg(long)]
    pub server_side: bool,
    /// `name`: print only the objects' names
    #[arg(short = 'o', long, value_parser = ["name"])]
    pub output: Option<String>,
}

#[derive(Args, Debug)]
pub struct DeleteArgs {
    /// KIND NAME..., KIND/NAME..., or KIND with --all / -l
    #[arg(value_name = "RESOURCE")]
    pub resources: Vec<String>,
    /// Delete the objects declared in these manifests
    #[arg(short = 'f', long = "filename", value_name = "PATH", conflicts_with_all = ["resources", "all"])]
    pub files: Vec<PathBuf>,
    /// Delete the objects of a kustomization directory
    #[arg(short = 'k', long, value_name = "DIR", conflicts_with_all = ["resources", "all", "files"])]
    pub kustomize: Option<PathBuf>,
    #[arg(short = 'R', long)]
    pub recursive: bool,
    /// Delete every object of the kinds in the namespace
    #[arg(long)]
    pub all: bool,
    /// Delete the objects of the kinds whose labels match
    #[arg(short = 'l', long)]
    pub selector: Option<String>,
    /// Treat "not found" as success
    #[arg(long)]
    pub ignore_not_found: bool,
    /// Wait until the objects are gone (their finalizers done: a Session's
    /// agent stopped)
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub wait: bool,
    /// How long --wait waits (0: as long as it takes)
    #[arg(long, default_value = "0s", value_parser = super::wait::parse_duration)]
    pub timeout: Duration,
    /// background, foreground or orphan. No kind owns objects of another
    /// here, so all three delete the same; foreground waits like --wait
    #[arg(long, default_value = "background", value_parser = ["background", "foreground", "orphan"])]
    pub cascade: String,
    #[arg(long, value_enum, num_args = 0..=1, default_missing_value = "client", default_value = "none")]
    pub dry_run: DryRun,
}

#[derive(Args, Debug)]
pub struct DiffArgs {
    /// Manifest file, directory, or - for standard input (repeatable)
    #[arg(
        short = 'f',
        long = "filename",
        value_name = "PATH",
        required_unless_present = "kustomize"
    )]
    pub files: Vec<PathBuf>,
    /// A kustomization directory
    #[arg(short = 'k', long, value_name = "DIR", conflicts_with = "files")]
    pub kustomize: Option<PathBuf>,
    #[arg(short = 'R', long)]
    pub recursive: bool,
    /// The field manager whose apply is shown
    #[arg(long, default_value = DEFAULT_MANAGER)]
    pub field_manager: String,
    #[arg(long)]
    pub force_conflicts: bool,
}

/// Reads manifests (or a kustomization) and applies the namespace rules;
/// prints every problem. None when there was any problem (nothing must be
/// written then).
fn load(
    ctx: &Ctx,
    files: &[PathBuf],
    kustomize: Option<&PathBuf>,
    recursive: bool,
) -> Option<Vec<Decoded>> {
    let mut loaded: Loaded = match kustomize {
        Some(dir) => match kustomize::load(dir, &ctx.namespace) {
            Ok(objects) => Loaded {
                objects,
                ..Default::default()
            },
            Err(errors) => Loaded {
                errors,
                ..Default::default()
            },
        },
        None => load_paths(
            files,
            &LoadOptions {
                recursive,
                namespace: ctx.namespace.clone(),
            },
        ),
    };
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

fn request(d: &Decoded, manager: &str, force: bool) -> ApplyRequest {
    ApplyRequest {
        object: d.object.to_value(),
        declared: Some(d.declared.clone()),
        manager: manager.to_string(),
        force,
    }
}

fn without_owners(v: &Value) -> Value {
    print::without_managed_fields(v)
}

/// What an apply would do, from a read of the store (no lock, no write):
/// `--dry-run=client`.
fn preview(store: &Store, req: &ApplyRequest) -> Result<(Outcome, Value), StoreError> {
    let key = {
        let m = &req.object["metadata"];
        let kind = req.object["kind"]
            .as_str()
            .and_then(Kind::from_kind_field)
            .expect("decoded objects have a kind");
        ObjectKey::new(
            kind,
            m["namespace"].as_str().unwrap_or_default(),
            m["name"].as_str().unwrap_or_default(),
        )
    };
    let invalid = |message: String| StoreError::Invalid {
        key: key.clone(),
        message,
    };
    let declared = req.declared.as_ref().unwrap_or(&req.object);
    let now = crate::api::now();
    let (live, outcome_if_changed) = match store.get(&key)? {
        Some(mut cur) => {
            if let Some(o) = cur.as_object_mut() {
                o.remove("status");
            }
            (cur, Outcome::Configured)
        }
        None => (
            serde_json::json!({"apiVersion": req.object["apiVersion"], "kind": key.kind.name(),
                "metadata": {"name": key.name, "namespace": key.namespace}, "spec": {}}),
            Outcome::Created,
        ),
    };
    let applied =
        ownership::apply(&live, declared, &req.manager, req.force, &now).map_err(|c| {
            StoreError::FieldConflicts {
                key: key.clone(),
                conflicts: c,
            }
        })?;
    let doc = ownership::normalize(key.kind, &applied.doc).map_err(invalid)?;
    let same = outcome_if_changed == Outcome::Configured
        && without_owners(&doc)
            == without_owners(&ownership::normalize(key.kind, &live).unwrap_or_default());
    Ok((
        if same {
            Outcome::Unchanged
        } else {
            outcome_if_changed
        },
        doc,
    ))
}

pub fn apply(ctx: &Ctx, a: ApplyArgs) -> Result<ExitCode> {
    if a.prune && a.selector.is_none() && !a.all {
        bail!("--prune needs -l SELECTOR or --all (which objects may be pruned)");
    }
    let Some(objects) = load(ctx, &a.files, a.kustomize.as_ref(), a.recursive) else {
        eprintln!("error: nothing applied: fix the problems above");
        return Ok(ExitCode::from(1));
    };
    let store = ctx.store()?;
    let reqs: Vec<ApplyRequest> = objects
        .iter()
        .map(|d| request(d, &a.field_manager, a.force_conflicts))
        .collect();
    // One transaction: every object is applied, or none is.
    let result: Result<Vec<(Outcome, Value)>, BatchError> = match a.dry_run {
        DryRun::Client => reqs
            .iter()
            .enumerate()
            .map(|(i, r)| preview(&store, r).map_err(|e| (Some(i), e)))
            .collect(),
        mode => store
            .apply_requests(&reqs, mode == DryRun::Server)
            .map(|done| done.into_iter().map(|r| (r.outcome, r.object)).collect()),
    };
    let done = match result {
        Ok(done) => done,
        Err((at, e)) => {
            match (at.map(|i| &objects[i]), e) {
                (Some(d), StoreError::FieldConflicts { conflicts, .. }) => eprintln!(
                    "{}: {}/{}: {conflicts}",
                    d.source,
                    d.object.kind().qualified(),
                    d.object.name()
                ),
                (Some(d), e) => eprintln!("{}: {e}", d.source),
                (None, e) => eprintln!("error: {e}"),
            }
            eprintln!("error: nothing applied");
            return Ok(ExitCode::from(1));
        }
    };
    let suffix = a.dry_run.suffix();
    for (d, (outcome, obj)) in objects.iter().zip(&done) {
        if a.output.as_deref() == Some("name") {
            println!("{}", print::name_of(d.object.kind(), obj));
        } else {
            println!(
                "{}/{} {outcome}{suffix}",
                d.object.kind().qualified(),
                d.object.name()
            );
        }
    }
    if a.prune {
        let applied: Vec<ObjectKey> = objects.iter().map(|d| d.object.key()).collect();
        return prune(ctx, &store, &a, &applied);
    }
    Ok(ExitCode::SUCCESS)
}

/// True when `manager` applied (owns fields of) the object.
fn applied_by(v: &Value, manager: &str) -> bool {
    ownership::entries(v)
        .iter()
        .any(|e| e.manager == manager && e.operation == ownership::APPLY)
}

/// True when the object opts out of pruning.
pub fn prune_disabled(v: &Value) -> bool {
    v.pointer("/metadata/annotations")
        .and_then(|a| a.get(PRUNE))
        .and_then(Value::as_str)
        == Some(PRUNE_DISABLED)
}

fn prune(ctx: &Ctx, store: &Store, a: &ApplyArgs, applied: &[ObjectKey]) -> Result<ExitCode> {
    let filter = super::get::Filter::new(&[], a.selector.as_deref(), None, &Kind::ALL)?;
    let mut failed = false;
    for kind in Kind::ALL {
        for v in store.list(kind, Some(&ctx.namespace))? {
            let name = v["metadata"]["name"].as_str().unwrap_or_default();
            let key = ObjectKey::new(kind, &ctx.namespace, name);
            if applied.contains(&key)
                || !filter.keep(&v)
                || !applied_by(&v, &a.field_manager)
                || prune_disabled(&v)
            {
                continue;
            }
            let rv = v["metadata"]["resourceVersion"].as_str();
            match store.delete(&key, rv, a.dry_run.active()) {
                Ok(_) => println!("{}/{name} pruned{}", kind.qualified(), a.dry_run.suffix()),
                Err(StoreError::NotFound(_)) => {}
                Err(e) => {
                    eprintln!("error: cannot prune {}/{name}: {e}", kind.qualified());
                    failed = true;
                }
            }
        }
    }
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

pub fn delete(ctx: &Ctx, a: DeleteArgs) -> Result<ExitCode> {
    let store = ctx.store()?;
    let keys: Vec<ObjectKey> = if !a.files.is_empty() || a.kustomize.is_some() {
        let Some(objects) = load(ctx, &a.files, a.kustomize.as_ref(), a.recursive) else {
            eprintln!("error: nothing deleted: fix the problems above");
            return Ok(ExitCode::from(1));
        };
        objects.iter().rev().map(|d| d.object.key()).collect()
    } else {
        if a.resources.is_empty() {
            bail!(
                "say what to delete: `delete KIND NAME...`, `delete KIND/NAME`, `delete KIND --all`, `delete KIND -l SELECTOR` or `delete -f FILE`"
            );
        }
        let ts = targets(&a.resources)?;
        if ts.iter().any(|t| t.names.is_empty()) && !a.all && a.selector.is_none() {
            bail!(
                "name the {} to delete, or pass --all or -l SELECTOR",
                ts.iter()
                    .map(|t| t.kind.plural())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        super::label::resolve(ctx, &ts, a.all, a.selector.as_deref())?
    };
    let mut failed = false;
    let suffix = a.dry_run.suffix();
    let mut gone = Vec::new();
    for key in keys {
        match store.delete(&key, None, a.dry_run.active()) {
            Ok(outcome) => {
                println!("{} \"{}\" deleted{suffix}", key.kind.qualified(), key.name);
                if outcome == DeleteOutcome::Terminating {
                    gone.push(key);
                }
            }
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
    let wait = (a.wait || a.cascade == "foreground") && !a.dry_run.active();
    if wait && !gone.is_empty() {
        // Finalizers are the daemon's: with none running, waiting would
        // never end.
        if let Err(why) = super::client::connect(ctx)? {
            for k in &gone {
                eprintln!(
                    "{} \"{}\" is terminating: its finalizer runs when the daemon does ({why})",
                    k.kind.qualified(),
                    k.name
                );
            }
            return Ok(if failed {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            });
        }
        let timeout = (!a.timeout.is_zero()).then_some(a.timeout);
        let left = super::wait::until_deleted(ctx, gone, timeout)?;
        for k in &left {
            eprintln!(
                "error: timed out waiting for {}/{} to be deleted (its finalizers are not done: is the daemon running?)",
                k.kind.plural(),
                k.name
            );
            failed = true;
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
    let Some(objects) = load(ctx, &a.files, a.kustomize.as_ref(), a.recursive) else {
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
        let merged = match preview(&store, &request(d, &a.field_manager, a.force_conflicts)) {
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

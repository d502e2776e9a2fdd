//! `create -f FILE` (objects that must not exist yet) and `create task NAME
//! --prompt ...` (a task from the command line, decoded and validated
//! exactly like a manifest).

use super::args::DryRun;
use super::{Ctx, print};
use crate::api::API_VERSION;
use crate::manifest::{LoadOptions, decode_file, load_paths};
use crate::store::StoreError;
use anyhow::{Result, bail};
use clap::{Args, Subcommand};
use serde_json::{Map, Value, json};
use std::path::PathBuf;
use std::process::ExitCode;

/// The field manager of objects made by `create`.
const MANAGER: &str = "claude-failover-create";

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct CreateArgs {
    #[command(subcommand)]
    pub what: Option<CreateWhat>,
    /// Manifest file, directory, or - for standard input (repeatable)
    #[arg(short = 'f', long = "filename", value_name = "PATH")]
    pub files: Vec<PathBuf>,
    #[arg(short = 'R', long)]
    pub recursive: bool,
    #[arg(long, value_enum, num_args = 0..=1, default_missing_value = "client", default_value = "none")]
    pub dry_run: DryRun,
    /// Print the created objects (`yaml`, `json`) or their names (`name`)
    #[arg(short = 'o', long, value_parser = ["yaml", "json", "name"])]
    pub output: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum CreateWhat {
    /// A task: `create task NAME --prompt TEXT [--priority P] [--session S]`
    Task(TaskArgs),
}

#[derive(Args, Debug)]
pub struct TaskArgs {
    pub name: String,
    /// The text typed into the session
    #[arg(long, required_unless_present = "prompt_file")]
    pub prompt: Option<String>,
    /// A file holding the prompt (- for standard input)
    #[arg(long, conflicts_with = "prompt")]
    pub prompt_file: Option<PathBuf>,
    /// critical, high, normal or low
    #[arg(long, value_parser = ["critical", "high", "normal", "low"])]
    pub priority: Option<String>,
    /// The model (default: from the priority)
    #[arg(long)]
    pub model: Option<String>,
    /// Run on this session only
    #[arg(long, conflicts_with_all = ["session_selector", "workdir"])]
    pub session: Option<String>,
    /// Run on a session whose labels match, e.g. `project=api`
    #[arg(long, conflicts_with = "workdir")]
    pub session_selector: Option<String>,
    /// Run on a session with this working directory
    #[arg(long)]
    pub workdir: Option<String>,
    /// Give up on an attempt after this many seconds
    #[arg(long)]
    pub timeout_seconds: Option<u64>,
    /// Attempts before the task fails
    #[arg(long)]
    pub max_attempts: Option<u32>,
    /// Labels of the task, `KEY=VALUE` (repeatable)
    #[arg(short = 'l', long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
}

/// `project=api,tier=gold` as a LabelSelector's matchLabels (the same
/// equality-only syntax kubectl's `create` flags take).
fn match_labels(sel: &str) -> Result<Value> {
    let mut m = Map::new();
    for term in sel.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        let Some((k, v)) = term.split_once('=') else {
            bail!("--session-selector: `{term}` is not KEY=VALUE");
        };
        m.insert(k.trim().into(), json!(v.trim()));
    }
    Ok(json!({"matchLabels": m}))
}

fn task_doc(ctx: &Ctx, t: &TaskArgs) -> Result<Value> {
    let prompt = match (&t.prompt, &t.prompt_file) {
        (Some(p), _) => p.clone(),
        (None, Some(f)) if f.as_os_str() == "-" => std::io::read_to_string(std::io::stdin())?,
        (None, Some(f)) => std::fs::read_to_string(f)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", f.display()))?,
        (None, None) => bail!("give the prompt with --prompt or --prompt-file"),
    };
    let mut spec = Map::new();
    spec.insert("prompt".into(), json!(prompt));
    let opt = |spec: &mut Map<String, Value>, k: &str, v: Option<Value>| {
        if let Some(v) = v {
            spec.insert(k.into(), v);
        }
    };
    opt(&mut spec, "priority", t.priority.clone().map(Value::from));
    opt(&mut spec, "model", t.model.clone().map(Value::from));
    opt(&mut spec, "session", t.session.clone().map(Value::from));
    opt(&mut spec, "workdir", t.workdir.clone().map(Value::from));
    opt(
        &mut spec,
        "timeoutSeconds",
        t.timeout_seconds.map(Value::from),
    );
    opt(&mut spec, "maxAttempts", t.max_attempts.map(Value::from));
    if let Some(sel) = &t.session_selector {
        spec.insert("sessionSelector".into(), match_labels(sel)?);
    }
    let mut meta = Map::new();
    meta.insert("name".into(), json!(t.name));
    meta.insert("namespace".into(), json!(ctx.namespace));
    if !t.labels.is_empty() {
        let mut labels = Map::new();
        for l in &t.labels {
            let Some((k, v)) = l.split_once('=') else {
                bail!("--label: `{l}` is not KEY=VALUE");
            };
            labels.insert(k.into(), json!(v));
        }
        meta.insert("labels".into(), Value::Object(labels));
    }
    Ok(json!({"apiVersion": API_VERSION, "kind": "Task", "metadata": meta, "spec": spec}))
}

pub fn create(ctx: &Ctx, a: CreateArgs) -> Result<ExitCode> {
    let objects: Vec<crate::manifest::Decoded> = match &a.what {
        Some(CreateWhat::Task(t)) => {
            let doc = task_doc(ctx, t)?;
            // Through the same strict decoding and validation as a manifest.
            let yaml = print::to_yaml(&doc);
            let (objs, errs) = decode_file("create task", yaml.as_bytes());
            if let Some(e) = errs.first() {
                bail!("{}: {}", e.path, e.message);
            }
            objs
        }
        None => {
            if a.files.is_empty() {
                bail!("say what to create: `create -f FILE` or `create task NAME --prompt TEXT`");
            }
            let loaded = load_paths(
                &a.files,
                &LoadOptions {
                    recursive: a.recursive,
                    namespace: ctx.namespace.clone(),
                },
            );
            if !loaded.errors.is_empty() {
                for e in &loaded.errors {
                    eprintln!("{e}");
                }
                eprintln!("error: nothing created: fix the problems above");
                return Ok(ExitCode::from(1));
            }
            let mut objs = loaded.objects;
            objs.sort_by_key(|d| d.object.kind());
            objs
        }
    };
    let store = ctx.store()?;
    let mut failed = false;
    for d in &objects {
        let key = d.object.key();
        let r = if a.dry_run.active() {
            match store.get(&key) {
                Ok(Some(_)) => Err(StoreError::AlreadyExists(key.clone())),
                Ok(None) => Ok(d.object.to_value()),
                Err(e) => Err(e),
            }
        } else {
            let req = crate::store::ApplyRequest {
                object: d.object.to_value(),
                declared: Some(d.declared.clone()),
                manager: MANAGER.into(),
                force: false,
            };
            store.create_as(&req).inspect(|_| {
                let _ = store.record_event(&key, false, "Created", "created with `create`", "cli");
            })
        };
        match r {
            Ok(obj) => match a.output.as_deref() {
                Some("yaml") => print!("{}", print::to_yaml(&print::without_managed_fields(&obj))),
                Some("json") => println!(
                    "{}",
                    serde_json::to_string_pretty(&print::without_managed_fields(&obj))?
                ),
                Some(_) => println!("{}", print::name_of(key.kind, &obj)),
                None => println!(
                    "{}/{} created{}",
                    key.kind.qualified(),
                    key.name,
                    a.dry_run.suffix()
                ),
            },
            Err(StoreError::AlreadyExists(_)) => {
                eprintln!(
                    "error: {} \"{}\" already exists in namespace {}",
                    key.kind.qualified(),
                    key.name,
                    key.namespace
                );
                failed = true;
            }
            Err(e) => {
                eprintln!("{}: {e}", d.source);
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

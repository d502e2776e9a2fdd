//! `get`: list objects as a table, YAML, JSON or names; `-w` keeps watching.

use super::print::{self, Output};
use super::{Ctx, parse_kind};
use crate::api::{Account, Kind, Object, Session, Task};
use crate::selector::Selector;
use crate::store::watch::{WatchConfig, watch};
use anyhow::{Result, bail};
use clap::Args;
use futures::StreamExt;
use kube::runtime::watcher::Event;
use serde_json::{Value, json};
use std::process::ExitCode;

#[derive(Args, Debug)]
pub struct GetArgs {
    /// accounts (acct), sessions (sess), tasks (tsk), or all
    pub kind: String,
    /// Only these objects
    pub names: Vec<String>,
    /// Output format
    #[arg(short = 'o', long, value_enum)]
    pub output: Option<Output>,
    /// After listing, keep printing changes
    #[arg(short = 'w', long)]
    pub watch: bool,
    /// Label selector, e.g. `project=api,tier in (gold,silver)`
    #[arg(short = 'l', long)]
    pub selector: Option<String>,
    /// All namespaces
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
}

struct Filter {
    names: Vec<String>,
    selector: Selector,
}

impl Filter {
    fn keep(&self, v: &Value) -> bool {
        let name = v
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if !self.names.is_empty() && !self.names.iter().any(|n| n == name) {
            return false;
        }
        let labels: Option<std::collections::BTreeMap<String, String>> = v
            .pointer("/metadata/labels")
            .and_then(|l| serde_json::from_value(l.clone()).ok());
        self.selector.matches(labels.as_ref())
    }
}

fn headers(kind: Kind, wide: bool, all_ns: bool) -> Vec<&'static str> {
    let mut h = print::columns(kind, wide);
    if all_ns {
        h.insert(0, "NAMESPACE");
    }
    h
}

fn row(kind: Kind, v: &Value, wide: bool, all_ns: bool) -> Vec<String> {
    let mut r = print::row(kind, v, wide);
    if all_ns {
        r.insert(
            0,
            v.pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
        );
    }
    r
}

pub fn get(ctx: &Ctx, a: GetArgs) -> Result<ExitCode> {
    let kinds: Vec<Kind> = if a.kind == "all" {
        Kind::DECLARED.to_vec()
    } else {
        vec![parse_kind(&a.kind)?]
    };
    if a.watch && kinds.len() > 1 {
        bail!("-w watches one kind at a time");
    }
    let filter = Filter {
        names: a.names.clone(),
        selector: Selector::parse(a.selector.as_deref().unwrap_or_default())
            .map_err(|e| anyhow::anyhow!("-l: {e}"))?,
    };
    let store = ctx.store()?;
    let ns = (!a.all_namespaces).then_some(ctx.namespace.as_str());
    let mut all_items = Vec::new();
    let mut missing = Vec::new();
    let mut first_table = true;
    let mut corrupt = Vec::new();
    for &kind in &kinds {
        let listing = store.list_checked(kind, ns)?;
        corrupt.extend(listing.corrupt);
        let items: Vec<Value> = listing
            .objects
            .into_iter()
            .filter(|v| filter.keep(v))
            .collect();
        for n in &a.names {
            let is_corrupt = corrupt
                .iter()
                .any(|c| c.key.kind == kind && c.key.name == *n);
            if !is_corrupt
                && !items
                    .iter()
                    .any(|v| v.pointer("/metadata/name").and_then(Value::as_str) == Some(n))
            {
                missing.push(format!("{} \"{n}\" not found", kind.qualified()));
            }
        }
        match a.output {
            None | Some(Output::Wide) if !a.watch => {
                if items.is_empty() {
                    continue;
                }
                if !first_table {
                    println!();
                }
                first_table = false;
                let wide = a.output == Some(Output::Wide);
                let rows: Vec<Vec<String>> = items
                    .iter()
                    .map(|v| row(kind, v, wide, a.all_namespaces))
                    .collect();
                print!(
                    "{}",
                    print::table(&headers(kind, wide, a.all_namespaces), &rows)
                );
            }
            Some(Output::Name) if !a.watch => {
                for v in &items {
                    println!("{}", print::name_of(kind, v));
                }
            }
            _ => all_items.extend(items),
        }
    }
    if a.watch {
        let kind = kinds[0];
        return watch_kind(ctx, kind, &a, &filter);
    }
    match a.output {
        Some(Output::Yaml) | Some(Output::Json) => {
            let doc = if a.names.len() == 1 && all_items.len() == 1 {
                all_items.pop().expect("one item")
            } else {
                json!({"apiVersion": "v1", "kind": "List", "items": all_items})
            };
            if a.output == Some(Output::Yaml) {
                print!("{}", print::to_yaml(&doc));
            } else {
                println!("{}", serde_json::to_string_pretty(&doc)?);
            }
        }
        None | Some(Output::Wide) if first_table && missing.is_empty() => {
            let where_ = if a.all_namespaces {
                String::new()
            } else {
                format!(" in {} namespace", ctx.namespace)
            };
            eprintln!("No resources found{where_}.");
        }
        _ => {}
    }
    // Objects whose files do not read: named, never hidden.
    let mut named_corrupt = false;
    for c in &corrupt {
        let named = a.names.contains(&c.key.name);
        if !a.names.is_empty() && !named {
            continue;
        }
        named_corrupt |= named;
        eprintln!(
            "{}: {} \"{}\" in namespace {} is corrupt and skipped: {}: {} (fix the file, or `delete {} {}`)",
            if named { "error" } else { "warning" },
            c.key.kind.qualified(),
            c.key.name,
            c.key.namespace,
            c.path.display(),
            c.reason,
            c.key.kind.singular(),
            c.key.name
        );
    }
    for m in &missing {
        eprintln!("error: {m}");
    }
    Ok(if missing.is_empty() && !named_corrupt {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn watch_kind(ctx: &Ctx, kind: Kind, a: &GetArgs, filter: &Filter) -> Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        match kind {
            Kind::Account => watch_typed::<Account>(ctx, a, filter).await,
            Kind::Session => watch_typed::<Session>(ctx, a, filter).await,
            Kind::Task => watch_typed::<Task>(ctx, a, filter).await,
            Kind::Swap => watch_typed::<crate::api::Swap>(ctx, a, filter).await,
            Kind::Lease => watch_typed::<crate::api::Lease>(ctx, a, filter).await,
        }
    })
}

async fn watch_typed<K: Object>(ctx: &Ctx, a: &GetArgs, filter: &Filter) -> Result<ExitCode> {
    let store = ctx.store()?;
    let cfg = WatchConfig {
        namespace: (!a.all_namespaces).then(|| ctx.namespace.clone()),
        ..Default::default()
    };
    let kind = K::KIND;
    let wide = a.output == Some(Output::Wide);
    let widths_from = headers(kind, wide, a.all_namespaces);
    let mut stream = Box::pin(watch::<K>(store, cfg));
    let mut printed_header = false;
    let mut initial: Vec<Value> = Vec::new();
    let mut in_init = false;
    let emit = |v: &Value, deleted: bool, printed_header: &mut bool| {
        match a.output {
            Some(Output::Yaml) => print!("---\n{}", print::to_yaml(v)),
            Some(Output::Json) => println!("{}", serde_json::to_string(v).unwrap_or_default()),
            Some(Output::Name) => println!("{}", print::name_of(kind, v)),
            None | Some(Output::Wide) => {
                let mut r = row(kind, v, wide, a.all_namespaces);
                if deleted {
                    let i = if a.all_namespaces { 2 } else { 1 };
                    r[i] = "Deleted".into();
                }
                let t = print::table(&widths_from, &[r]);
                let mut lines = t.lines();
                let header = lines.next().unwrap_or_default();
                if !*printed_header {
                    println!("{header}");
                    *printed_header = true;
                }
                for l in lines {
                    println!("{l}");
                }
            }
        }
        use std::io::Write;
        let _ = std::io::stdout().flush();
    };
    while let Some(ev) = stream.next().await {
        match ev {
            Ok(Event::Init) => {
                in_init = true;
                initial.clear();
            }
            Ok(Event::InitApply(o)) => initial.push(serde_json::to_value(&o)?),
            Ok(Event::InitDone) => {
                // The first listing prints everything; later relists are
                // resyncs and print nothing new.
                if in_init && !printed_header {
                    for v in initial.iter().filter(|v| filter.keep(v)) {
                        emit(v, false, &mut printed_header);
                    }
                    if !printed_header && matches!(a.output, None | Some(Output::Wide)) {
                        println!("{}", widths_from.join("   "));
                        printed_header = true;
                    }
                }
                in_init = false;
            }
            Ok(Event::Apply(o)) => {
                let v = serde_json::to_value(&o)?;
                if filter.keep(&v) {
                    emit(&v, false, &mut printed_header);
                }
            }
            Ok(Event::Delete(o)) => {
                let v = serde_json::to_value(&o)?;
                if filter.keep(&v) {
                    emit(&v, true, &mut printed_header);
                }
            }
            Err(e) => eprintln!("warning: {e}"),
        }
    }
    Ok(ExitCode::SUCCESS)
}

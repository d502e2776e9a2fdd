//! `get`: list objects as a table, YAML, JSON, names, a JSONPath template
//! or custom columns; `-w` keeps watching.

use super::Ctx;
use super::args::{FieldSelector, Target, targets};
use super::print;
use crate::api::{Account, Kind, Object, Session, Task};
use crate::output::{Format, SortKey};
use crate::selector::Selector;
use crate::store::watch::{WatchConfig, watch};
use anyhow::{Result, bail};
use clap::Args;
use futures::StreamExt;
use kube::runtime::watcher::Event;
use serde_json::{Value, json};
use std::io::Write;
use std::process::ExitCode;

#[derive(Args, Debug)]
pub struct GetArgs {
    /// KIND[,KIND...] [NAME...], KIND/NAME..., or `all`
    #[arg(required = true, value_name = "RESOURCE")]
    pub resources: Vec<String>,
    /// Output format: wide, yaml, json, name, jsonpath=TEMPLATE,
    /// jsonpath-file=FILE, jsonpath-as-json=TEMPLATE, custom-columns=SPEC,
    /// custom-columns-file=FILE
    #[arg(short = 'o', long, value_parser = Format::parse)]
    pub output: Option<Format>,
    /// After listing, keep printing changes
    #[arg(short = 'w', long)]
    pub watch: bool,
    /// Label selector, e.g. `project=api,tier in (gold,silver)`
    #[arg(short = 'l', long)]
    pub selector: Option<String>,
    /// Field selector, e.g. `status.phase=Running,spec.session!=ccl-0`
    #[arg(long)]
    pub field_selector: Option<String>,
    /// All namespaces
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
    /// Sort by a field (a JSONPath, e.g. `.metadata.creationTimestamp`)
    #[arg(long, value_name = "PATH")]
    pub sort_by: Option<String>,
    /// Add a LABELS column to the table
    #[arg(long)]
    pub show_labels: bool,
    /// Add a column with the value of each of these labels
    #[arg(
        short = 'L',
        long = "label-columns",
        value_delimiter = ',',
        value_name = "KEY"
    )]
    pub label_columns: Vec<String>,
    /// Print tables without their header line
    #[arg(long)]
    pub no_headers: bool,
    /// Keep metadata.managedFields (who set which field) in yaml and json
    #[arg(long)]
    pub show_managed_fields: bool,
    /// A missing named object is not an error
    #[arg(long)]
    pub ignore_not_found: bool,
}

/// Which objects are shown.
pub(super) struct Filter {
    names: Vec<String>,
    labels: Selector,
    fields: FieldSelector,
}

impl Filter {
    pub(super) fn new(
        names: &[String],
        labels: Option<&str>,
        fields: Option<&str>,
        kinds: &[Kind],
    ) -> Result<Filter> {
        Ok(Filter {
            names: names.to_vec(),
            labels: Selector::parse(labels.unwrap_or_default())
                .map_err(|e| anyhow::anyhow!("-l: {e}"))?,
            fields: FieldSelector::parse(fields.unwrap_or_default(), kinds)?,
        })
    }

    pub(super) fn keep(&self, v: &Value) -> bool {
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
        self.labels.matches(labels.as_ref()) && self.fields.matches(v)
    }
}

/// How tables are laid out.
struct TableOpts<'a> {
    format: &'a Format,
    all_ns: bool,
    show_labels: bool,
    label_columns: &'a [String],
    /// Names as `kind.group/name` (several kinds in one command).
    qualified: bool,
}

impl TableOpts<'_> {
    fn wide(&self) -> bool {
        matches!(self.format, Format::Wide)
    }

    fn headers(&self, kind: Kind) -> Vec<String> {
        let mut h: Vec<String> = match self.format {
            Format::CustomColumns(c) => c.headers.clone(),
            _ => print::columns(kind, self.wide())
                .into_iter()
                .map(str::to_string)
                .collect(),
        };
        if self.all_ns {
            h.insert(0, "NAMESPACE".into());
        }
        if !matches!(self.format, Format::CustomColumns(_)) {
            h.extend(
                self.label_columns
                    .iter()
                    .map(|l| l.rsplit('/').next().unwrap_or(l).to_ascii_uppercase()),
            );
            if self.show_labels && !self.wide() {
                h.push("LABELS".into());
            }
        }
        h
    }

    fn row(&self, kind: Kind, v: &Value) -> Vec<String> {
        let mut r = match self.format {
            Format::CustomColumns(c) => c.row(v),
            _ => {
                let mut r = print::row(kind, v, self.wide());
                if self.qualified {
                    r[0] = print::name_of(kind, v);
                }
                r
            }
        };
        if self.all_ns {
            let ns = v
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .unwrap_or_default();
            r.insert(0, ns.to_string());
        }
        if !matches!(self.format, Format::CustomColumns(_)) {
            for l in self.label_columns {
                let val = v
                    .pointer("/metadata/labels")
                    .and_then(|m| m.get(l))
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                r.push(val.to_string());
            }
            if self.show_labels && !self.wide() {
                r.push(print::labels(v));
            }
        }
        r
    }
}

fn is_table(f: &Format) -> bool {
    matches!(f, Format::Table | Format::Wide | Format::CustomColumns(_))
}

pub fn get(ctx: &Ctx, a: GetArgs) -> Result<ExitCode> {
    let targets = targets(&a.resources)?;
    let kinds: Vec<Kind> = targets.iter().map(|t| t.kind).collect();
    let format = a.output.clone().unwrap_or(Format::Table);
    let sort = a
        .sort_by
        .as_deref()
        .map(SortKey::parse)
        .transpose()
        .map_err(|e| anyhow::anyhow!("--sort-by: {e}"))?;
    if a.watch {
        if targets.len() > 1 {
            bail!("-w watches one kind at a time");
        }
        let filter = Filter::new(
            &targets[0].names,
            a.selector.as_deref(),
            a.field_selector.as_deref(),
            &kinds,
        )?;
        return watch_kind(ctx, targets[0].kind, &a, &format, &filter);
    }
    let opts = TableOpts {
        format: &format,
        all_ns: a.all_namespaces,
        show_labels: a.show_labels,
        label_columns: &a.label_columns,
        qualified: targets.len() > 1,
    };
    let store = ctx.store()?;
    let mut listed: Vec<(Kind, Vec<Value>)> = Vec::new();
    let mut missing = Vec::new();
    let mut corrupt = Vec::new();
    for target in &targets {
        let got = list_target(ctx, &store, &a, target, &kinds, sort.as_ref())?;
        missing.extend(got.missing);
        corrupt.extend(got.corrupt);
        listed.push((target.kind, got.items));
    }
    let single = targets.len() == 1 && targets[0].names.len() == 1;
    // Only missing names: nothing to print but the errors (as kubectl).
    let named = targets.iter().all(|t| !t.names.is_empty());
    let nothing = listed.iter().all(|(_, i)| i.is_empty());
    if !(named && nothing) {
        print_listed(&listed, &opts, single, a.no_headers)?;
    }
    if nothing && missing.is_empty() && is_table(&format) {
        let where_ = if a.all_namespaces || kinds.iter().all(|k| k.home_namespace().is_some()) {
            String::new()
        } else {
            format!(" in {} namespace", ctx.namespace)
        };
        eprintln!("No resources found{where_}.");
    }
    let named_corrupt = tell_corrupt(&targets, &corrupt);
    for m in &missing {
        eprintln!("error: {m}");
    }
    Ok(if missing.is_empty() && !named_corrupt {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// What one `KIND [NAME...]` of a `get` lists.
struct Got {
    items: Vec<Value>,
    /// Names asked for and not there ("not found" errors).
    missing: Vec<String>,
    corrupt: Vec<crate::store::CorruptObject>,
}

/// The objects of one target, filtered and sorted as asked.
fn list_target(
    ctx: &Ctx,
    store: &crate::store::Store,
    a: &GetArgs,
    target: &Target,
    kinds: &[Kind],
    sort: Option<&SortKey>,
) -> Result<Got> {
    let Target { kind, names } = target;
    let (selector, fields) = (a.selector.as_deref(), a.field_selector.as_deref());
    let filter = Filter::new(names, selector, fields, kinds)?;
    let ns = (!a.all_namespaces).then_some(ctx.namespace_of(*kind));
    let listing = store.list_checked(*kind, ns)?;
    let mut items: Vec<Value> = listing
        .objects
        .into_iter()
        .filter(|v| filter.keep(v))
        .map(|v| {
            if a.show_managed_fields {
                v
            } else {
                print::without_managed_fields(&v)
            }
        })
        .collect();
    let mut missing = Vec::new();
    for n in names {
        let is_corrupt = listing.corrupt.iter().any(|c| c.key.name == *n);
        let found = items
            .iter()
            .any(|v| v.pointer("/metadata/name").and_then(Value::as_str) == Some(n));
        if !found && !is_corrupt && !a.ignore_not_found {
            missing.push(format!("{} \"{n}\" not found", kind.qualified()));
        }
    }
    if let Some(s) = sort {
        s.sort(&mut items).map_err(anyhow::Error::msg)?;
    }
    Ok(Got {
        items,
        missing,
        corrupt: listing.corrupt,
    })
}

/// Objects whose files do not read: named, never hidden (an error when
/// asked for by name, a warning in a listing). True when one was named.
fn tell_corrupt(targets: &[Target], corrupt: &[crate::store::CorruptObject]) -> bool {
    let mut named_corrupt = false;
    for c in corrupt {
        let target = targets.iter().find(|t| t.kind == c.key.kind);
        let names: &[String] = target.map(|t| t.names.as_slice()).unwrap_or_default();
        let named = names.contains(&c.key.name);
        if !names.is_empty() && !named {
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
    named_corrupt
}

fn print_listed(
    listed: &[(Kind, Vec<Value>)],
    opts: &TableOpts,
    single: bool,
    no_headers: bool,
) -> Result<()> {
    let mut out = std::io::stdout().lock();
    let all: Vec<&Value> = listed.iter().flat_map(|(_, i)| i).collect();
    // One document: the object when one was named, else a List.
    let doc = || {
        if single && all.len() == 1 {
            all[0].clone()
        } else {
            json!({"apiVersion": "v1", "kind": "List", "items": all, "metadata": {"resourceVersion": ""}})
        }
    };
    match opts.format {
        Format::Yaml => write!(out, "{}", print::to_yaml(&doc()))?,
        Format::Json => writeln!(out, "{}", serde_json::to_string_pretty(&doc())?)?,
        Format::Name => {
            for (kind, items) in listed {
                for v in items {
                    writeln!(out, "{}", print::name_of(*kind, v))?;
                }
            }
        }
        Format::JsonPath { template, as_json } => {
            write!(out, "{}", Format::jsonpath(template, *as_json, &doc()))?
        }
        Format::CustomColumns(c) => {
            let rows: Vec<Vec<String>> = listed
                .iter()
                .flat_map(|(k, items)| items.iter().map(|v| opts.row(*k, v)))
                .collect();
            if !rows.is_empty() {
                let h: Vec<&str> = c.headers.iter().map(String::as_str).collect();
                write!(out, "{}", print::table_opt(&h, &rows, !no_headers))?;
            }
        }
        Format::Table | Format::Wide => {
            let mut first = true;
            for (kind, items) in listed.iter().filter(|(_, i)| !i.is_empty()) {
                if !first {
                    writeln!(out)?;
                }
                first = false;
                let headers = opts.headers(*kind);
                let h: Vec<&str> = headers.iter().map(String::as_str).collect();
                let rows: Vec<Vec<String>> = items.iter().map(|v| opts.row(*kind, v)).collect();
                write!(out, "{}", print::table_opt(&h, &rows, !no_headers))?;
            }
        }
    }
    Ok(())
}

fn watch_kind(
    ctx: &Ctx,
    kind: Kind,
    a: &GetArgs,
    format: &Format,
    filter: &Filter,
) -> Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        match kind {
            Kind::Account => watch_typed::<Account>(ctx, a, format, filter).await,
            Kind::Session => watch_typed::<Session>(ctx, a, format, filter).await,
            Kind::Task => watch_typed::<Task>(ctx, a, format, filter).await,
            Kind::Swap => watch_typed::<crate::api::Swap>(ctx, a, format, filter).await,
            Kind::Lease => watch_typed::<crate::api::Lease>(ctx, a, format, filter).await,
            Kind::ManifestSync => {
                watch_typed::<crate::api::ManifestSync>(ctx, a, format, filter).await
            }
            Kind::SessionPool => {
                watch_typed::<crate::api::SessionPool>(ctx, a, format, filter).await
            }
            Kind::Node => watch_typed::<crate::api::Node>(ctx, a, format, filter).await,
        }
    })
}

async fn watch_typed<K: Object>(
    ctx: &Ctx,
    a: &GetArgs,
    format: &Format,
    filter: &Filter,
) -> Result<ExitCode> {
    let store = ctx.store()?;
    let cfg = WatchConfig {
        namespace: (!a.all_namespaces).then(|| ctx.namespace_of(K::KIND).to_string()),
        ..Default::default()
    };
    let opts = TableOpts {
        format,
        all_ns: a.all_namespaces,
        show_labels: a.show_labels,
        label_columns: &a.label_columns,
        qualified: false,
    };
    let mut out = WatchOut {
        a,
        kind: K::KIND,
        headers: opts.headers(K::KIND),
        opts,
        printed_header: false,
    };
    let mut stream = Box::pin(watch::<K>(store, cfg));
    let mut initial: Vec<Value> = Vec::new();
    let mut in_init = false;
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
                if in_init && !out.printed_header {
                    let first = initial.drain(..).filter(|v| filter.keep(v)).collect();
                    out.first(first)?;
                }
                in_init = false;
            }
            Ok(Event::Apply(o)) => {
                let v = serde_json::to_value(&o)?;
                if filter.keep(&v) {
                    out.emit(&v, false);
                }
            }
            Ok(Event::Delete(o)) => {
                let v = serde_json::to_value(&o)?;
                if filter.keep(&v) {
                    out.emit(&v, true);
                }
            }
            Err(e) => eprintln!("warning: {e}"),
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// What `get -w` prints: the first listing, then a line (or document) per
/// change, the table's header once.
struct WatchOut<'a> {
    a: &'a GetArgs,
    kind: Kind,
    opts: TableOpts<'a>,
    headers: Vec<String>,
    printed_header: bool,
}

impl WatchOut<'_> {
    /// The first listing, sorted as asked; a table's header even when empty.
    fn first(&mut self, mut items: Vec<Value>) -> Result<()> {
        if let Some(s) = &self.a.sort_by {
            SortKey::parse(s)
                .and_then(|k| k.sort(&mut items))
                .map_err(|e| anyhow::anyhow!("--sort-by: {e}"))?;
        }
        for v in &items {
            self.emit(v, false);
        }
        if !self.printed_header && is_table(self.opts.format) && !self.a.no_headers {
            println!("{}", self.headers.join("   "));
        }
        self.printed_header = true;
        Ok(())
    }

    fn emit(&mut self, v: &Value, deleted: bool) {
        let (a, kind, format) = (self.a, self.kind, self.opts.format);
        let v = if a.show_managed_fields {
            v.clone()
        } else {
            print::without_managed_fields(v)
        };
        let mut out = std::io::stdout().lock();
        let _ = match format {
            Format::Yaml => write!(out, "---\n{}", print::to_yaml(&v)),
            Format::Json => writeln!(out, "{}", serde_json::to_string(&v).unwrap_or_default()),
            Format::Name => writeln!(out, "{}", print::name_of(kind, &v)),
            Format::JsonPath { template, as_json } => {
                write!(out, "{}", Format::jsonpath(template, *as_json, &v))
            }
            Format::Table | Format::Wide | Format::CustomColumns(_) => {
                let mut r = self.opts.row(kind, &v);
                if deleted && !matches!(format, Format::CustomColumns(_)) {
                    let i = if a.all_namespaces { 2 } else { 1 };
                    r[i] = "Deleted".into();
                }
                let h: Vec<&str> = self.headers.iter().map(String::as_str).collect();
                let t = print::table(&h, &[r]);
                let mut lines = t.lines();
                let header = lines.next().unwrap_or_default();
                if !self.printed_header && !a.no_headers {
                    let _ = writeln!(out, "{header}");
                }
                self.printed_header = true;
                writeln!(out, "{}", lines.next().unwrap_or_default())
            }
        };
        let _ = out.flush();
    }
}

//! `events`: the recorded events of every object (or of one, `--for`),
//! oldest first, as `kubectl events` lists them; `-w` keeps printing new
//! ones (a watch of the store's events directory).

use super::Ctx;
use super::args::{check_name, parse_kind};
use super::print::{self, age};
use crate::api::{Kind, ObjectKey};
use crate::store::{Store, StoredEvent};
use anyhow::{Result, bail};
use clap::Args;
use notify::{RecursiveMode, Watcher};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Args, Debug)]
pub struct EventsArgs {
    /// Only the events of this object (KIND/NAME)
    #[arg(long = "for", value_name = "KIND/NAME")]
    pub for_: Option<String>,
    /// All namespaces
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
    /// Only these types (Normal, Warning), comma-separated
    #[arg(long, value_delimiter = ',')]
    pub types: Vec<String>,
    /// After listing, keep printing new events
    #[arg(short = 'w', long)]
    pub watch: bool,
    /// `json` or `yaml` (an EventList), else a table
    #[arg(short = 'o', long, value_parser = ["json", "yaml"])]
    pub output: Option<String>,
    /// Print the table without its header line
    #[arg(long)]
    pub no_headers: bool,
}

/// One event with the object it is about.
struct Row {
    key: ObjectKey,
    event: StoredEvent,
}

/// How often a watch looks again when a notification may have been lost.
const WATCH_RESYNC: Duration = Duration::from_secs(5);

fn collect(store: &Store, keys: &[ObjectKey], types: &[String]) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for k in keys {
        for e in store.events(k)? {
            if types.is_empty() || types.iter().any(|t| t.eq_ignore_ascii_case(&e.type_)) {
                rows.push(Row {
                    key: k.clone(),
                    event: e,
                });
            }
        }
    }
    rows.sort_by(|a, b| a.event.last_timestamp.cmp(&b.event.last_timestamp));
    Ok(rows)
}

fn keys(ctx: &Ctx, store: &Store, a: &EventsArgs) -> Result<Vec<ObjectKey>> {
    if let Some(f) = &a.for_ {
        let Some((k, n)) = f.split_once('/') else {
            bail!("--for takes KIND/NAME, e.g. --for task/fix-login");
        };
        check_name(n)?;
        let kind = parse_kind(k)?;
        return Ok(vec![ObjectKey::new(kind, ctx.namespace_of(kind), n)]);
    }
    let ns = (!a.all_namespaces).then_some(ctx.namespace.as_str());
    let mut out = Vec::new();
    for kind in Kind::ALL {
        for v in store.list(kind, ns)? {
            let m = &v["metadata"];
            out.push(ObjectKey::new(
                kind,
                m["namespace"].as_str().unwrap_or_default(),
                m["name"].as_str().unwrap_or_default(),
            ));
        }
    }
    Ok(out)
}

fn to_json(r: &Row) -> Value {
    let mut e = serde_json::to_value(&r.event).expect("events serialize");
    e["involvedObject"] = json!({"apiVersion": crate::api::API_VERSION, "kind": r.key.kind.name(),
        "namespace": r.key.namespace, "name": r.key.name});
    e
}

fn cells(r: &Row, all_ns: bool) -> Vec<String> {
    let when = serde_json::to_value(&r.event.last_timestamp).ok();
    let mut c = vec![
        age(when.as_ref().and_then(Value::as_str)),
        r.event.type_.clone(),
        r.event.reason.clone(),
        format!("{}/{}", r.key.kind.name(), r.key.name),
        if r.event.count > 1 {
            format!("{} (x{})", r.event.message, r.event.count)
        } else {
            r.event.message.clone()
        },
    ];
    if all_ns {
        c.insert(0, r.key.namespace.clone());
    }
    c
}

fn headers(all_ns: bool) -> Vec<&'static str> {
    let mut h = vec!["LAST SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"];
    if all_ns {
        h.insert(0, "NAMESPACE");
    }
    h
}

pub fn events(ctx: &Ctx, a: EventsArgs) -> Result<ExitCode> {
    let store = ctx.store()?;
    let ks = keys(ctx, &store, &a)?;
    let rows = collect(&store, &ks, &a.types)?;
    match a.output.as_deref() {
        Some(f) => {
            let doc = json!({"apiVersion": "v1", "kind": "EventList",
                "items": rows.iter().map(to_json).collect::<Vec<_>>()});
            if f == "json" {
                println!("{}", serde_json::to_string_pretty(&doc)?);
            } else {
                print!("{}", print::to_yaml(&doc));
            }
        }
        None if rows.is_empty() && !a.watch => {
            let where_ = if a.all_namespaces {
                String::new()
            } else {
                format!(" in {} namespace", ctx.namespace)
            };
            eprintln!("No events found{where_}.");
        }
        None => {
            let table: Vec<Vec<String>> = rows.iter().map(|r| cells(r, a.all_namespaces)).collect();
            print!(
                "{}",
                print::table_opt(&headers(a.all_namespaces), &table, !a.no_headers)
            );
        }
    }
    if a.watch {
        watch(ctx, &store, &a, rows)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The identity of an event entry and how far it has been printed.
type Seen = HashMap<(ObjectKey, String, String, String), u32>;

fn watch(ctx: &Ctx, store: &Store, a: &EventsArgs, shown: Vec<Row>) -> Result<()> {
    let ident = |r: &Row| {
        (
            r.key.clone(),
            r.event.type_.clone(),
            r.event.reason.clone(),
            r.event.message.clone(),
        )
    };
    let mut seen: Seen = shown.iter().map(|r| (ident(r), r.event.count)).collect();
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    // On etcd the periodic look alone (no files to be notified of).
    let _keep = tx.clone();
    let _watcher = if store.is_etcd() {
        None
    } else {
        let dir = store.root().join("events");
        std::fs::create_dir_all(&dir)?;
        let mut watcher =
            notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
                if crate::fsutil::is_change(&res) {
                    let _ = tx.send(());
                }
            })?;
        watcher.watch(&dir, RecursiveMode::Recursive)?;
        Some(watcher)
    };
    use std::io::Write;
    loop {
        // A notification, or the periodic look that catches a missed one.
        let _ = rx.recv_timeout(WATCH_RESYNC);
        while rx.try_recv().is_ok() {}
        let ks = keys(ctx, store, a)?;
        for r in collect(store, &ks, &a.types)? {
            let id = ident(&r);
            if seen.get(&id) == Some(&r.event.count) {
                continue;
            }
            seen.insert(id, r.event.count);
            let mut out = std::io::stdout().lock();
            match a.output.as_deref() {
                Some("json") => writeln!(out, "{}", serde_json::to_string(&to_json(&r))?)?,
                Some(_) => write!(out, "---\n{}", print::to_yaml(&to_json(&r)))?,
                None => {
                    let t =
                        print::table(&headers(a.all_namespaces), &[cells(&r, a.all_namespaces)]);
                    writeln!(out, "{}", t.lines().nth(1).unwrap_or_default())?;
                }
            }
            out.flush()?;
        }
    }
}

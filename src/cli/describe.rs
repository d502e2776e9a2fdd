//! `describe`: one object in full, for people.

use super::Ctx;
use super::args::targets;
use super::get::Filter;
use super::print::{self, age};
use crate::api::{Kind, ObjectKey};
use anyhow::Result;
use clap::Args;
use serde_json::Value;
use std::fmt::Write;
use std::process::ExitCode;

#[derive(Args, Debug)]
pub struct DescribeArgs {
    /// KIND[,KIND] [NAME...] or KIND/NAME...; without names, every object
    /// of the kind
    #[arg(required = true, value_name = "RESOURCE")]
    pub resources: Vec<String>,
    /// Only objects whose labels match
    #[arg(short = 'l', long)]
    pub selector: Option<String>,
    /// All namespaces (when no names are given)
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
}

fn indent(text: &str, by: usize) -> String {
    let pad = " ".repeat(by);
    text.lines().map(|l| format!("{pad}{l}\n")).collect()
}

fn map_line(v: Option<&Value>) -> String {
    match v.and_then(Value::as_object) {
        Some(m) if !m.is_empty() => m
            .iter()
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
            .collect::<Vec<_>>()
            .join("\n              "),
        _ => "<none>".into(),
    }
}

/// The text of `describe` for one object.
/// `extra`: a section of the kind's own (whole lines), before the events.
fn render(v: &Value, extra: &str, events: &[crate::store::StoredEvent]) -> String {
    let mut out = metadata(v);
    let _ = writeln!(out, "Spec:");
    out.push_str(&indent(&print::to_yaml(&v["spec"]), 2));
    out.push_str(&status_and_conditions(v));
    out.push_str(extra);
    out.push_str(&events_table(events));
    out
}

/// The text at `ptr` (a string, or any other value as JSON).
fn text(v: &Value, ptr: &str) -> Option<String> {
    v.pointer(ptr).map(|x| {
        x.as_str()
            .map(str::to_string)
            .unwrap_or_else(|| x.to_string())
    })
}

/// Name, namespace, kind, labels, annotations, uid, age, generation,
/// version, finalizers, deletion.
fn metadata(v: &Value) -> String {
    let m = &v["metadata"];
    let s = |p: &str| text(v, p).unwrap_or_default();
    let mut out = String::new();
    let _ = writeln!(out, "Name:         {}", s("/metadata/name"));
    let _ = writeln!(out, "Namespace:    {}", s("/metadata/namespace"));
    let _ = writeln!(out, "Kind:         {}", s("/kind"));
    let _ = writeln!(out, "Labels:       {}", map_line(m.get("labels")));
    let _ = writeln!(out, "Annotations:  {}", map_line(m.get("annotations")));
    let _ = writeln!(out, "UID:          {}", s("/metadata/uid"));
    let created = text(v, "/metadata/creationTimestamp");
    let _ = writeln!(
        out,
        "Created:      {} ({} ago)",
        created.clone().unwrap_or_default(),
        age(created.as_deref())
    );
    let _ = writeln!(out, "Generation:   {}", s("/metadata/generation"));
    let _ = writeln!(out, "Version:      {}", s("/metadata/resourceVersion"));
    if let Some(f) = m.get("finalizers").and_then(Value::as_array) {
        let list: Vec<&str> = f.iter().filter_map(Value::as_str).collect();
        let _ = writeln!(out, "Finalizers:   {}", list.join(", "));
    }
    if let Some(d) = text(v, "/metadata/deletionTimestamp") {
        let _ = writeln!(out, "Deleting:     since {d}");
    }
    out
}

/// The status as YAML, its conditions apart as a table.
fn status_and_conditions(v: &Value) -> String {
    let mut out = String::new();
    let mut status = v.get("status").cloned().unwrap_or(Value::Null);
    let conditions = status
        .as_object_mut()
        .and_then(|o| o.remove("conditions"))
        .and_then(|c| c.as_array().cloned())
        .unwrap_or_default();
    let _ = writeln!(out, "Status:");
    if status.as_object().is_some_and(|o| !o.is_empty()) {
        out.push_str(&indent(&print::to_yaml(&status), 2));
    } else {
        out.push_str("  <not yet observed by the daemon>\n");
    }
    let _ = writeln!(out, "Conditions:");
    if conditions.is_empty() {
        out.push_str("  <none>\n");
        return out;
    }
    let rows: Vec<Vec<String>> = conditions
        .iter()
        .map(|c| {
            let f = |k: &str| {
                c.get(k)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string()
            };
            vec![
                f("type"),
                f("status"),
                f("reason"),
                age(c.get("lastTransitionTime").and_then(Value::as_str)),
                f("message"),
            ]
        })
        .collect();
    out.push_str(&indent(
        &print::table(&["Type", "Status", "Reason", "Since", "Message"], &rows),
        2,
    ));
    out
}

/// The object's events, newest first.
fn events_table(events: &[crate::store::StoredEvent]) -> String {
    let mut out = String::from("Events:\n");
    if events.is_empty() {
        out.push_str("  <none>\n");
        return out;
    }
    let rows: Vec<Vec<String>> = events
        .iter()
        .rev()
        .map(|e| {
            let when = serde_json::to_value(&e.last_timestamp).ok();
            let ago = age(when.as_ref().and_then(Value::as_str));
            let times = if e.count > 1 {
                format!("{ago} (x{})", e.count)
            } else {
                ago
            };
            vec![
                e.type_.clone(),
                e.reason.clone(),
                times,
                e.source.clone(),
                e.message.clone(),
            ]
        })
        .collect();
    out.push_str(&indent(
        &print::table(&["Type", "Reason", "Age", "From", "Message"], &rows),
        2,
    ));
    out
}

pub fn describe(ctx: &Ctx, a: DescribeArgs) -> Result<ExitCode> {
    let store = ctx.store()?;
    let mut code = ExitCode::SUCCESS;
    let mut first = true;
    let mut shown = 0;
    let mut show = |v: &Value, key: &ObjectKey| -> Result<()> {
        if !first {
            println!();
        }
        first = false;
        shown += 1;
        let extra = match key.kind {
            Kind::SessionPool => pool_sessions(&store, key)?,
            _ => String::new(),
        };
        print!("{}", render(v, &extra, &store.events(key)?));
        Ok(())
    };
    for t in targets(&a.resources)? {
        if t.names.is_empty() {
            let ns = (!a.all_namespaces).then_some(ctx.namespace_of(t.kind));
            let filter = Filter::new(&[], a.selector.as_deref(), None, &[t.kind])?;
            for v in store.list(t.kind, ns)? {
                if filter.keep(&v) {
                    let m = &v["metadata"];
                    let key = ObjectKey::new(
                        t.kind,
                        m["namespace"].as_str().unwrap_or_default(),
                        m["name"].as_str().unwrap_or_default(),
                    );
                    show(&v, &key)?;
                }
            }
            continue;
        }
        for name in &t.names {
            let key = ObjectKey::new(t.kind, ctx.namespace_of(t.kind), name);
            match store.get(&key)? {
                None => {
                    eprintln!(
                        "error: {} \"{name}\" not found in namespace {}",
                        t.kind.qualified(),
                        key.namespace
                    );
                    code = ExitCode::from(1);
                }
                Some(v) => show(&v, &key)?,
            }
        }
    }
    if shown == 0 && code == ExitCode::SUCCESS {
        eprintln!("No resources found in {} namespace.", ctx.namespace);
    }
    Ok(code)
}

/// A pool's Sessions (those it owns), with their phase, account and task,
/// and their standbys.
fn pool_sessions(store: &crate::store::Store, key: &ObjectKey) -> Result<String> {
    let owned: Vec<crate::api::Session> = store
        .api::<crate::api::Session>(Some(&key.namespace))
        .list()?
        .into_iter()
        .filter(|s| crate::controller::pool::owned_by(s, &key.name))
        .collect();
    let mut rows: Vec<(u32, Vec<String>)> = owned
        .iter()
        .map(|s| {
            let v = serde_json::to_value(s).expect("a Session serializes");
            let name = s.metadata.name.clone().unwrap_or_default();
            let ordinal = crate::api::ordinal_of(&key.name, &name).unwrap_or(u32::MAX);
            let row = print::row(Kind::Session, &v, false);
            (ordinal, row)
        })
        .collect();
    rows.sort_by_key(|(o, _)| *o);
    let mut out = String::from("Sessions:\n");
    if rows.is_empty() {
        out.push_str("  <none>\n");
    } else {
        let rows: Vec<Vec<String>> = rows.into_iter().map(|(_, r)| r).collect();
        out.push_str(&indent(
            &print::table(&print::columns(Kind::Session, false), &rows),
            2,
        ));
    }
    if owned.iter().any(|s| s.spec.wants_standby()) {
        out.push_str(&standbys(&owned));
    }
    Ok(out)
}

/// The standbys a pool's Sessions keep, by the account they wait under:
/// how many are ready and starting, and whose they are.
fn standbys(sessions: &[crate::api::Session]) -> String {
    let mut by: std::collections::BTreeMap<&str, (Vec<&str>, Vec<&str>)> = Default::default();
    for s in sessions {
        let Some(sb) = s.status.as_ref().and_then(|st| st.standby.as_ref()) else {
            continue;
        };
        let e = by.entry(sb.account.as_str()).or_default();
        let name = s.metadata.name.as_deref().unwrap_or_default();
        if sb.ready { &mut e.0 } else { &mut e.1 }.push(name);
    }
    let mut out = String::from("Standbys:\n");
    if by.is_empty() {
        out.push_str("  <none>\n");
    }
    for (account, (ready, starting)) in by {
        let mut parts = Vec::new();
        if !ready.is_empty() {
            parts.push(format!("{} ready ({})", ready.len(), ready.join(", ")));
        }
        if !starting.is_empty() {
            parts.push(format!(
                "{} starting ({})",
                starting.len(),
                starting.join(", ")
            ));
        }
        out.push_str(&format!("  under {account}: {}\n", parts.join(", ")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pools_standbys_by_the_account_they_wait_under() {
        let session = |name: &str, standby: Option<(&str, bool)>| -> crate::api::Session {
            let mut v = serde_json::json!({
                "apiVersion": "claude-failover.io/v1alpha1", "kind": "Session",
                "metadata": {"name": name}, "spec": {"workdir": "/w"}, "status": {},
            });
            if let Some((account, ready)) = standby {
                v["status"]["standby"] = serde_json::json!({"account": account, "paneId": "%1",
                    "pid": 7, "agentSessionId": "x", "launchedAt": "2026-12-01T00:00:00Z",
                    "ready": ready});
            }
            serde_json::from_value(v).unwrap()
        };
        let pool = [
            session("p-0", Some(("b", true))),
            session("p-1", Some(("b", true))),
            session("p-2", Some(("c", false))),
            session("p-3", None),
        ];
        assert_eq!(
            standbys(&pool),
            "Standbys:\n  under b: 2 ready (p-0, p-1)\n  under c: 1 starting (p-2)\n"
        );
        assert_eq!(standbys(&pool[3..]), "Standbys:\n  <none>\n");
    }
}

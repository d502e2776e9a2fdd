//! `api-resources` (the kinds this tool serves) and `explain` (a kind's
//! fields, from its CRD schema), as kubectl shows them.

use super::args::parse_kind;
use super::print;
use crate::api::{API_VERSION, GROUP, Kind, VERSION};
use anyhow::{Result, bail};
use clap::Args;
use serde_json::Value;
use std::fmt::Write;
use std::process::ExitCode;

#[derive(Args, Debug)]
pub struct ApiResourcesArgs {
    /// `wide` (verbs and categories) or `name`
    #[arg(short = 'o', long, value_parser = ["wide", "name"])]
    pub output: Option<String>,
    /// Print the table without its header line
    #[arg(long)]
    pub no_headers: bool,
}

#[derive(Args, Debug)]
pub struct ExplainArgs {
    /// KIND or KIND.field.path (e.g. `task.spec.priority`)
    pub resource: String,
    /// Every field below, as a tree
    #[arg(long)]
    pub recursive: bool,
}

const VERBS: &str = "create,delete,edit,get,list,patch,watch";

pub fn api_resources(a: ApiResourcesArgs) -> Result<ExitCode> {
    if a.output.as_deref() == Some("name") {
        for k in Kind::ALL {
            println!("{}.{GROUP}", k.plural());
        }
        return Ok(ExitCode::SUCCESS);
    }
    let wide = a.output.as_deref() == Some("wide");
    let mut headers = vec!["NAME", "SHORTNAMES", "APIVERSION", "NAMESPACED", "KIND"];
    if wide {
        headers.extend(["VERBS", "CATEGORIES"]);
    }
    let rows: Vec<Vec<String>> = Kind::ALL
        .iter()
        .map(|k| {
            let mut r = vec![
                k.plural().to_string(),
                k.short_name().to_string(),
                API_VERSION.to_string(),
                "true".into(),
                k.name().to_string(),
            ];
            if wide {
                r.extend([VERBS.to_string(), "claude-failover".to_string()]);
            }
            r
        })
        .collect();
    print!("{}", print::table_opt(&headers, &rows, !a.no_headers));
    Ok(ExitCode::SUCCESS)
}

/// The schema of a kind, with the fields every object has.
fn schema(kind: Kind) -> Value {
    let crd = serde_json::to_value(kind.crd()).expect("CRDs serialize");
    let mut s = crd
        .pointer("/spec/versions/0/schema/openAPIV3Schema")
        .cloned()
        .unwrap_or_default();
    let standard = [
        (
            "apiVersion",
            "string",
            "APIVersion defines the versioned schema of this representation of an object.",
        ),
        (
            "kind",
            "string",
            "Kind is a string value representing the REST resource this object represents.",
        ),
        (
            "metadata",
            "object",
            "Standard object's metadata: name, namespace, labels, annotations, and what the store sets (uid, resourceVersion, generation, creationTimestamp, managedFields).",
        ),
    ];
    if let Some(props) = s.get_mut("properties").and_then(Value::as_object_mut) {
        for (name, ty, desc) in standard {
            props.insert(
                name.into(),
                serde_json::json!({"type": ty, "description": desc}),
            );
        }
    }
    s
}

/// kubectl's name for a field's type: `<string>`, `<[]string>`,
/// `<map[string]string>`, `<Object>`, `<[]Object>`.
fn type_name(s: &Value) -> String {
    if s.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true)) {
        return "IntOrString".into();
    }
    if let Some(r) = s.get("$ref").and_then(Value::as_str) {
        return r.rsplit('/').next().unwrap_or(r).to_string();
    }
    for alt in ["anyOf", "oneOf", "allOf"] {
        if let Some(first) = s.get(alt).and_then(Value::as_array).and_then(|a| {
            a.iter()
                .find(|x| x.get("type").and_then(Value::as_str) != Some("null"))
        }) {
            return type_name(first);
        }
    }
    match s.get("type").and_then(Value::as_str) {
        Some("array") => format!("[]{}", s.get("items").map(type_name).unwrap_or_default()),
        Some("object") => match s.get("additionalProperties") {
            Some(ap) if ap.is_object() => format!("map[string]{}", type_name(ap)),
            _ => "Object".into(),
        },
        Some(t) => t.to_string(),
        None if s.get("enum").is_some() => "string".into(),
        None => "Object".into(),
    }
}

fn children(s: &Value) -> Option<&serde_json::Map<String, Value>> {
    s.get("properties")
        .and_then(Value::as_object)
        .or_else(|| s.get("items").and_then(children))
        .or_else(|| {
            s.get("additionalProperties")
                .filter(|v| v.is_object())
                .and_then(children)
        })
}

fn required(s: &Value) -> Vec<&str> {
    s.get("required")
        .or_else(|| s.get("items").and_then(|i| i.get("required")))
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

fn enum_values(s: &Value) -> Option<Vec<String>> {
    let list = s.get("enum").and_then(Value::as_array)?;
    Some(
        list.iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| v.to_string())
            })
            .collect(),
    )
}

fn wrap(text: &str, indent: usize, width: usize) -> String {
    let pad = " ".repeat(indent);
    let mut out = String::new();
    for para in text.split('\n') {
        let mut line = String::new();
        for w in para.split_whitespace() {
            if !line.is_empty() && line.len() + 1 + w.len() > width {
                let _ = writeln!(out, "{pad}{line}");
                line.clear();
            }
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(w);
        }
        let _ = writeln!(out, "{pad}{line}");
    }
    out
}

fn fields(out: &mut String, s: &Value, depth: usize, recursive: bool) {
    let Some(props) = children(s) else {
        return;
    };
    let req = required(s);
    let mut names: Vec<&String> = props.keys().collect();
    names.sort();
    for name in names {
        let f = &props[name];
        let pad = "  ".repeat(depth + 1);
        let r = if req.contains(&name.as_str()) {
            " -required-"
        } else {
            ""
        };
        let _ = writeln!(out, "{pad}{name}\t<{}>{r}", type_name(f));
        if recursive {
            fields(out, f, depth + 1, true);
            continue;
        }
        if let Some(e) = enum_values(f) {
            let _ = writeln!(out, "{pad}enum: {}", e.join(", "));
        }
        let desc = f
            .get("description")
            .and_then(Value::as_str)
            .unwrap_or("<no description>");
        out.push_str(&wrap(desc, depth * 2 + 4, 76));
        out.push('\n');
    }
}

/// The text of `explain` for `KIND[.field...]`.
pub fn explain_text(resource: &str, recursive: bool) -> Result<String> {
    let mut parts = resource.split('.');
    let kind_word = parts.next().unwrap_or_default();
    let kind = parse_kind(kind_word)?;
    let root = schema(kind);
    let mut node = &root;
    let mut path = Vec::new();
    for p in parts {
        let Some(next) = children(node).and_then(|c| c.get(p)) else {
            bail!(
                "field \"{p}\" does not exist in {}{}",
                kind.name(),
                path.iter().map(|x| format!(".{x}")).collect::<String>()
            );
        };
        path.push(p);
        node = next;
    }
    let mut out = String::new();
    let _ = writeln!(out, "GROUP:      {GROUP}");
    let _ = writeln!(out, "KIND:       {}", kind.name());
    let _ = writeln!(out, "VERSION:    {VERSION}\n");
    if let Some(last) = path.last() {
        let _ = writeln!(out, "FIELD: {last} <{}>\n", type_name(node));
        if let Some(e) = enum_values(node) {
            let _ = writeln!(
                out,
                "ENUM:\n{}",
                e.iter().map(|v| format!("    {v}\n")).collect::<String>()
            );
        }
    }
    let desc = node
        .get("description")
        .and_then(Value::as_str)
        .unwrap_or("<empty>");
    let _ = writeln!(out, "DESCRIPTION:");
    out.push_str(&wrap(desc, 4, 76));
    if children(node).is_some() {
        let _ = writeln!(out, "\nFIELDS:");
        fields(&mut out, node, 0, recursive);
    }
    Ok(out)
}

pub fn explain(a: ExplainArgs) -> Result<ExitCode> {
    print!("{}", explain_text(&a.resource, a.recursive)?);
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_int_or_string_is_named_as_kubectl_names_it() {
        let t = explain_text("sessionpool.spec.updateStrategy.rollingUpdate", false).unwrap();
        assert!(t.contains("maxUnavailable\t<IntOrString>"), "{t}");
    }

    #[test]
    fn explains_kinds_and_fields() {
        let t = explain_text("tasks", false).unwrap();
        assert!(
            t.starts_with(
                "GROUP:      claude-failover.io\nKIND:       Task\nVERSION:    v1alpha1\n"
            ),
            "{t}"
        );
        assert!(t.contains("  spec\t<Object> -required-"), "{t}");
        assert!(
            t.contains("  metadata\t<object>") || t.contains("  metadata\t<Object>"),
            "{t}"
        );
        let p = explain_text("task.spec.priority", false).unwrap();
        assert!(p.contains("FIELD: priority <string>"), "{p}");
        assert!(p.contains("critical"), "{p}");
        let r = explain_text("session.spec", true).unwrap();
        assert!(r.contains("    command\t<string>"), "{r}");
        // A literal value or `{valueFrom: ...}`: no one type.
        assert!(r.contains("    env\t<map[string]Object>"), "{r}");
        let e = explain_text("task.spec.nope", false)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("field \"nope\" does not exist in Task.spec"),
            "{e}"
        );
    }
}

//! Structural checks of a manifest against its kind's schema, at every
//! depth, before typed decoding: what serde would bend or drop is refused.
//!
//! The schema is the CustomResourceDefinition's `openAPIV3Schema` (the one
//! an API server would enforce), and Kubernetes' `ObjectMeta` for
//! `metadata`. Checked: the shape of every value (a list where a mapping
//! belongs is an error, not a struct read from positions), unknown keys in
//! every closed mapping (a typo in `sessionSelector` too), integers within
//! their format's range (named as too large or too small), enums.

use super::yaml::{Node, NodeKind, Seg};
use crate::api::Kind;
use serde_json::Value;
use std::sync::OnceLock;

pub type Problem = (Vec<Seg>, String);

/// The schemas of `spec` and `status` of each kind, and of `metadata`.
struct Schemas {
    kinds: Vec<(Kind, Value)>,
    metadata: Value,
}

fn schemas() -> &'static Schemas {
    static S: OnceLock<Schemas> = OnceLock::new();
    S.get_or_init(|| {
        let kinds = Kind::ALL
            .into_iter()
            .map(|k| {
                let crd = serde_json::to_value(k.crd()).expect("CRDs serialize");
                let schema = crd
                    .pointer("/spec/versions/0/schema/openAPIV3Schema")
                    .cloned()
                    .expect("every CRD has a schema");
                (k, schema)
            })
            .collect();
        let generator = schemars::generate::SchemaSettings::openapi3()
            .with(|s| {
                s.inline_subschemas = true;
                s.meta_schema = None;
            })
            .with_transform(schemars::transform::AddNullable::default())
            .with_transform(kube::core::schema::StructuralSchemaRewriter)
            .into_generator();
        let metadata =
            serde_json::to_value(generator.into_root_schema_for::<crate::api::ObjectMeta>())
                .expect("schemas serialize");
        Schemas { kinds, metadata }
    })
}

/// Checks a document's `metadata`, `spec` and `status` against the schema
/// of `kind`. Returns the first problem.
pub fn check(kind: Kind, root: &Node) -> Option<Problem> {
    let s = schemas();
    let schema = &s.kinds.iter().find(|(k, _)| *k == kind)?.1;
    for field in ["spec", "status"] {
        if let (Some(node), Some(sub)) = (
            root.get(field),
            schema.pointer(&format!("/properties/{field}")),
        ) {
            let mut path = vec![Seg::Key(field.into())];
            if let Err(p) = walk(node, sub, &mut path) {
                return Some(p);
            }
        }
    }
    if let Some(meta) = root.get("metadata") {
        let mut path = vec![Seg::Key("metadata".into())];
        if let Err(p) = walk(meta, &s.metadata, &mut path) {
            return Some(p);
        }
    }
    None
}

/// What a node is, as serde says it ("invalid type: string \"x\"").
fn unexpected(node: &Node) -> String {
    match &node.kind {
        NodeKind::Null => "null".into(),
        NodeKind::Bool(b) => format!("boolean `{b}`"),
        NodeKind::Int(i) => format!("integer `{i}`"),
        NodeKind::Float(f) => format!("floating point `{f}`"),
        NodeKind::Str(s) => format!("string {s:?}"),
        NodeKind::Seq(_) => "a list".into(),
        NodeKind::Map(_) => "a mapping".into(),
    }
}

fn types(schema: &Value) -> Option<&str> {
    schema.get("type").and_then(Value::as_str)
}

fn flag(schema: &Value, name: &str) -> bool {
    schema.get(name).and_then(Value::as_bool) == Some(true)
}

/// The range of an integer format.
fn int_range(format: &str) -> Option<(i128, i128)> {
    Some(match format {
        "int8" => (i8::MIN.into(), i8::MAX.into()),
        "int16" => (i16::MIN.into(), i16::MAX.into()),
        "int32" => (i32::MIN.into(), i32::MAX.into()),
        "int64" => (i64::MIN.into(), i64::MAX.into()),
        "uint8" => (0, u8::MAX.into()),
        "uint16" => (0, u16::MAX.into()),
        "uint32" => (0, u32::MAX.into()),
        "uint64" | "uint" => (0, u64::MAX.into()),
        _ => return None,
    })
}

fn walk(node: &Node, schema: &Value, path: &mut Vec<Seg>) -> Result<(), Problem> {
    let fail = |path: &[Seg], msg: String| Err((path.to_vec(), msg));
    if node.kind == NodeKind::Null {
        // Whether null may stand here is the typed decoding's call (an
        // optional field takes it).
        return Ok(());
    }
    if flag(schema, "x-kubernetes-int-or-string") {
        return match node.kind {
            NodeKind::Int(_) | NodeKind::Str(_) => Ok(()),
            _ => fail(
                path,
                format!(
                    "invalid type: {}, expected an integer or a string",
                    unexpected(node)
                ),
            ),
        };
    }
    let Some(ty) = types(schema) else {
        // No type: anything (x-kubernetes-preserve-unknown-fields), left to
        // the typed decoding.
        return Ok(());
    };
    match (ty, &node.kind) {
        ("object", NodeKind::Map(entries)) => walk_map(entries, schema, path),
        ("array", NodeKind::Seq(items)) => {
            let Some(item_schema) = schema.get("items") else {
                return Ok(());
            };
            for (i, item) in items.iter().enumerate() {
                path.push(Seg::Index(i));
                walk(item, item_schema, path)?;
                path.pop();
            }
            Ok(())
        }
        ("string", NodeKind::Str(s)) => check_enum(schema, s, path),
        ("integer", NodeKind::Int(i)) => check_int(*i, schema, path),
        ("number", NodeKind::Int(_) | NodeKind::Float(_)) => Ok(()),
        ("boolean", NodeKind::Bool(_)) => Ok(()),
        (ty, _) => {
            let expected = match ty {
                "object" => "a mapping",
                "array" => "a list",
                "string" => "a string",
                "integer" => "an integer",
                "number" => "a number",
                "boolean" => "true or false",
                other => other,
            };
            fail(
                path,
                format!("invalid type: {}, expected {expected}", unexpected(node)),
            )
        }
    }
}

fn walk_map(entries: &[(Node, Node)], schema: &Value, path: &mut Vec<Seg>) -> Result<(), Problem> {
    let properties = schema.get("properties").and_then(Value::as_object);
    let additional = schema.get("additionalProperties");
    let open = flag(schema, "x-kubernetes-preserve-unknown-fields")
        || additional.and_then(Value::as_bool) == Some(true);
    for (k, v) in entries {
        let name = k.key_string();
        path.push(Seg::Key(name.clone()));
        if let Some(sub) = properties.and_then(|p| p.get(&name)) {
            walk(v, sub, path)?;
        } else if let Some(sub) = additional.filter(|a| a.is_object()) {
            walk(v, sub, path)?;
        } else if !open {
            let known: Vec<&str> = properties
                .map(|p| p.keys().map(String::as_str).collect())
                .unwrap_or_default();
            let msg = if known.is_empty() {
                format!("unknown field `{name}`: this mapping takes no fields")
            } else {
                format!(
                    "unknown field `{name}`, expected one of {}",
                    known
                        .iter()
                        .map(|k| format!("`{k}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            };
            return Err((path.clone(), msg));
        }
        path.pop();
    }
    Ok(())
}

fn check_enum(schema: &Value, s: &str, path: &[Seg]) -> Result<(), Problem> {
    let Some(values) = schema.get("enum").and_then(Value::as_array) else {
        return Ok(());
    };
    let allowed: Vec<&str> = values.iter().filter_map(Value::as_str).collect();
    if allowed.is_empty() || allowed.contains(&s) {
        return Ok(());
    }
    Err((
        path.to_vec(),
        format!(
            "unknown variant `{s}`, expected one of {}",
            allowed
                .iter()
                .map(|v| format!("`{v}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    ))
}

fn check_int(i: i64, schema: &Value, path: &[Seg]) -> Result<(), Problem> {
    let format = schema
        .get("format")
        .and_then(Value::as_str)
        .unwrap_or("int64");
    let Some((lo, hi)) = int_range(format) else {
        return Ok(());
    };
    let i = i128::from(i);
    let what = if format.starts_with('u') {
        "a non-negative integer"
    } else {
        "an integer"
    };
    if i > hi {
        return Err((
            path.to_vec(),
            format!("{i} is too large: expected {what} of at most {hi}"),
        ));
    }
    if i < lo {
        return Err((
            path.to_vec(),
            if lo == 0 {
                format!("{i} is negative: expected {what}")
            } else {
                format!("{i} is too small: expected {what} of at least {lo}")
            },
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::yaml::{parse_documents, path_string};

    fn problem(kind: Kind, text: &str) -> Option<String> {
        let docs = parse_documents(text).unwrap();
        let root = docs[0].root.as_ref().unwrap();
        check(kind, root).map(|(p, m)| format!("{}: {m}", path_string(&p)))
    }

    #[test]
    fn shapes_unknown_keys_and_ranges_at_every_depth() {
        let acct = |spec: &str| {
            problem(
                Kind::Account,
                &format!("metadata: {{name: a}}\nspec: {spec}\n"),
            )
        };
        assert_eq!(acct("{configDir: /x, thresholds: {fiveHour: 90}}"), None);
        assert_eq!(
            acct("{configDir: /x, thresholds: [1, 2]}").unwrap(),
            "spec.thresholds: invalid type: a list, expected a mapping"
        );
        assert_eq!(
            acct("{configDir: /x, priority: 3000000000}").unwrap(),
            "spec.priority: 3000000000 is too large: expected an integer of at most 2147483647"
        );
        assert_eq!(
            acct("{configDir: /x, thresholds: {fiveHour: -1}}").unwrap(),
            "spec.thresholds.fiveHour: -1 is negative: expected a non-negative integer"
        );
        let task = |spec: &str| {
            problem(
                Kind::Task,
                &format!("metadata: {{name: a}}\nspec: {spec}\n"),
            )
        };
        let e = task("{prompt: x, sessionSelector: {matchLabels: {a: b}, bogus: 1}}").unwrap();
        assert!(
            e.starts_with("spec.sessionSelector.bogus: unknown field `bogus`"),
            "{e}"
        );
        let e = task("{prompt: x, sessionSelector: {matchExpressions: [{key: a, operator: In, valuez: [b]}]}}").unwrap();
        assert!(
            e.starts_with("spec.sessionSelector.matchExpressions[0].valuez: unknown field"),
            "{e}"
        );
        assert_eq!(
            task("{prompt: x, priority: urgent}").unwrap(),
            "spec.priority: unknown variant `urgent`, expected one of `critical`, `high`, `normal`, `low`"
        );
        assert_eq!(
            task("{prompt: x, timeoutSeconds: -5}").unwrap(),
            "spec.timeoutSeconds: -5 is negative: expected a non-negative integer"
        );
        let e = problem(
            Kind::Task,
            "metadata: {name: a, ownerReferences: [{name: x, bogus: 1}]}\nspec: {prompt: x}\n",
        )
        .unwrap();
        assert!(
            e.starts_with("metadata.ownerReferences[0].bogus: unknown field"),
            "{e}"
        );
        assert_eq!(
            problem(
                Kind::Task,
                "metadata: {name: a, labels: {a: [1]}}\nspec: {prompt: x}\n"
            )
            .unwrap(),
            "metadata.labels.a: invalid type: a list, expected a string"
        );
    }
}

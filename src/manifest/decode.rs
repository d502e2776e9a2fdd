//! From bytes to typed objects: one error line per problem, in the form
//! `FILE:LINE:COL: field.path: what is wrong`.

use super::validate;
use super::yaml::{self, Node, NodeKind, Pos, Seg, path_string};
use crate::api::{API_VERSION, Account, Kind, ObjectMeta, Session, SessionPool, Task};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;

/// Largest manifest file accepted.
pub const MAX_FILE_BYTES: usize = 4 * 1024 * 1024;

/// One problem in one manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestError {
    pub file: String,
    pub pos: Pos,
    pub path: String,
    pub message: String,
}

impl std::fmt::Display for ManifestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}: {}",
            self.file, self.pos.line, self.pos.col, self.path, self.message
        )
    }
}

impl std::error::Error for ManifestError {}

/// Where an object was declared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub file: String,
    pub pos: Pos,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.file, self.pos)
    }
}

/// An object of any of the three kinds.
// Short-lived and few (one per declared object): boxing would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum AnyObject {
    Account(Account),
    Session(Box<Session>),
    Task(Task),
    SessionPool(Box<SessionPool>),
}

impl AnyObject {
    pub fn kind(&self) -> Kind {
        match self {
            AnyObject::Account(_) => Kind::Account,
            AnyObject::Session(_) => Kind::Session,
            AnyObject::Task(_) => Kind::Task,
            AnyObject::SessionPool(_) => Kind::SessionPool,
        }
    }

    pub fn meta(&self) -> &ObjectMeta {
        match self {
            AnyObject::Account(o) => &o.metadata,
            AnyObject::Session(o) => &o.metadata,
            AnyObject::Task(o) => &o.metadata,
            AnyObject::SessionPool(o) => &o.metadata,
        }
    }

    pub fn meta_mut(&mut self) -> &mut ObjectMeta {
        match self {
            AnyObject::Account(o) => &mut o.metadata,
            AnyObject::Session(o) => &mut o.metadata,
            AnyObject::Task(o) => &mut o.metadata,
            AnyObject::SessionPool(o) => &mut o.metadata,
        }
    }

    pub fn name(&self) -> &str {
        self.meta().name.as_deref().unwrap_or_default()
    }

    /// Kind, namespace and name (the namespace as declared, empty if none).
    pub fn key(&self) -> crate::api::ObjectKey {
        crate::api::ObjectKey::new(
            self.kind(),
            self.meta().namespace.as_deref().unwrap_or_default(),
            self.name(),
        )
    }

    pub fn to_value(&self) -> Value {
        match self {
            AnyObject::Account(o) => to_value(o),
            AnyObject::Session(o) => to_value(o),
            AnyObject::Task(o) => to_value(o),
            AnyObject::SessionPool(o) => to_value(o),
        }
    }

    /// Decodes a stored (already valid) object of kind `kind`.
    pub fn from_value(kind: Kind, v: Value) -> Result<AnyObject, serde_json::Error> {
        Ok(match kind {
            Kind::Account => AnyObject::Account(serde_json::from_value(v)?),
            Kind::Session => AnyObject::Session(Box::new(serde_json::from_value(v)?)),
            Kind::Task => AnyObject::Task(serde_json::from_value(v)?),
            Kind::SessionPool => AnyObject::SessionPool(Box::new(serde_json::from_value(v)?)),
            Kind::Swap | Kind::Lease | Kind::ManifestSync | Kind::Node => {
                return Err(serde::de::Error::custom(format!(
                    "kind {kind} is not a declared kind"
                )));
            }
        })
    }

    fn problems(&self) -> Vec<validate::Problem> {
        match self {
            AnyObject::Account(o) => validate::account(o),
            AnyObject::Session(o) => validate::session(o),
            AnyObject::Task(o) => validate::task(o),
            AnyObject::SessionPool(o) => validate::session_pool(o),
        }
    }
}

fn to_value<T: Serialize>(o: &T) -> Value {
    serde_json::to_value(o).expect("API types always serialize")
}

/// A decoded object with the place it came from.
#[derive(Debug, Clone)]
pub struct Decoded {
    pub object: AnyObject,
    pub source: Source,
    /// The document as written (JSON), without defaults: the fields its
    /// author set, which an apply owns (see `store::ownership`).
    pub declared: Value,
}

/// The fields a manifest's `metadata` may carry (those of Kubernetes'
/// ObjectMeta); anything else is a typo and is rejected.
const METADATA_FIELDS: &[&str] = &[
    "name",
    "namespace",
    "labels",
    "annotations",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "finalizers",
    "ownerReferences",
    "managedFields",
    "generateName",
    "selfLink",
];
const TOP_FIELDS: &[&str] = &["apiVersion", "kind", "metadata", "spec", "status"];

/// Decodes every document of one file. `file` is the name used in errors.
/// Returns the objects that decoded cleanly and one error per bad document.
pub fn decode_file(file: &str, bytes: &[u8]) -> (Vec<Decoded>, Vec<ManifestError>) {
    let err = |pos: Pos, path: &str, message: String| ManifestError {
        file: file.to_string(),
        pos,
        path: path.to_string(),
        message,
    };
    if bytes.len() > MAX_FILE_BYTES {
        return (
            vec![],
            vec![err(
                Pos { line: 1, col: 1 },
                "(file)",
                format!(
                    "file is {} bytes, more than the {} accepted for a manifest",
                    bytes.len(),
                    MAX_FILE_BYTES
                ),
            )],
        );
    }
    let text = match std::str::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            let good = &bytes[..e.valid_up_to()];
            let line = good.iter().filter(|b| **b == b'\n').count() + 1;
            let line_start = good.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
            let col = String::from_utf8_lossy(&good[line_start..]).chars().count() + 1;
            return (
                vec![],
                vec![err(
                    Pos { line, col },
                    "(file)",
                    format!(
                        "not valid UTF-8 (byte 0x{:02x} at offset {})",
                        bytes[e.valid_up_to()],
                        e.valid_up_to()
                    ),
                )],
            );
        }
    };
    let docs = match yaml::parse_documents(text) {
        Ok(d) => d,
        Err(e) => return (vec![], vec![err(e.pos, &path_string(&e.path), e.message)]),
    };
    let mut objects = Vec::new();
    let mut errors = Vec::new();
    for doc in &docs {
        let Some(root) = &doc.root else { continue };
        // `kind: List` (what `get -o yaml|json` prints): its items.
        let items: Vec<(Vec<Seg>, &Node)> = match list_items(root) {
            Some(Ok(items)) => items
                .iter()
                .enumerate()
                .map(|(i, n)| (vec![k("items"), Seg::Index(i)], n))
                .collect(),
            Some(Err((path, message))) => {
                errors.push(err(root.locate(&path), &path_string(&path), message));
                continue;
            }
            None => vec![(vec![], root)],
        };
        for (prefix, node) in items {
            match decode_document(node) {
                Ok(object) => objects.push(Decoded {
                    object,
                    source: Source {
                        file: file.to_string(),
                        pos: node.pos,
                    },
                    declared: node.to_json(),
                }),
                Err((path, message)) => {
                    let path: Vec<Seg> = prefix.into_iter().chain(path).collect();
                    let pos = root.locate(&path);
                    errors.push(err(pos, &path_string(&path), message));
                }
            }
        }
    }
    if objects.is_empty() && errors.is_empty() {
        errors.push(err(
            Pos { line: 1, col: 1 },
            "(file)",
            "no objects in file (empty manifest)".into(),
        ));
    }
    (objects, errors)
}

type DocError = (Vec<Seg>, String);

/// The items of a `kind: List` document (`apiVersion: v1`), or None when
/// the document is not a list.
fn list_items(root: &Node) -> Option<Result<&[Node], DocError>> {
    if root.get("kind").and_then(Node::as_str) != Some("List") {
        return None;
    }
    let NodeKind::Map(entries) = &root.kind else {
        return None;
    };
    for (key, _) in entries {
        let name = key.key_string();
        if !["apiVersion", "kind", "metadata", "items"].contains(&name.as_str()) {
            return Some(Err((
                vec![k(&name)],
                format!(
                    "unknown field `{name}` in a List, expected apiVersion, kind, metadata, items"
                ),
            )));
        }
    }
    if let Some(v) = root.get("apiVersion").and_then(Node::as_str)
        && v != "v1"
    {
        return Some(Err((
            vec![k("apiVersion")],
            format!("a List has apiVersion v1, not `{v}`"),
        )));
    }
    Some(match root.get("items").map(|n| &n.kind) {
        Some(NodeKind::Seq(items)) => Ok(items.as_slice()),
        Some(NodeKind::Null) | None => Ok(&[]),
        Some(_) => Err((vec![k("items")], "must be a list of objects".into())),
    })
}

fn k(s: &str) -> Seg {
    Seg::Key(s.to_string())
}

fn decode_document(root: &Node) -> Result<AnyObject, DocError> {
    let kind = declared_kind(root)?;
    // Every shape, key and range, at every depth, before serde can bend
    // or drop anything.
    if let Some(problem) = super::schema::check(kind, root) {
        return Err(problem);
    }
    let value = root.to_json();
    let object = match kind {
        Kind::Account => AnyObject::Account(typed(value)?),
        Kind::Session => AnyObject::Session(Box::new(typed(value)?)),
        Kind::Task => AnyObject::Task(typed(value)?),
        Kind::SessionPool => AnyObject::SessionPool(Box::new(typed(value)?)),
        Kind::Swap | Kind::Lease | Kind::ManifestSync | Kind::Node => {
            return Err((vec![k("kind")], format!("kind `{kind}` cannot be declared")));
        }
    };
    if let Some((path, msg)) = object.problems().into_iter().next() {
        return Err((path, msg));
    }
    Ok(object)
}

/// The document's top level: known fields only, this apiVersion, a kind
/// people declare, known metadata fields, a spec. Its kind.
fn declared_kind(root: &Node) -> Result<Kind, DocError> {
    let NodeKind::Map(entries) = &root.kind else {
        return Err((
            vec![],
            "expected a mapping with apiVersion, kind, metadata and spec".into(),
        ));
    };
    known_fields(entries, TOP_FIELDS, &[])?;
    let missing = format!("required field is missing (expected {API_VERSION})");
    let api_version = required_str(root, "apiVersion", missing)?;
    if api_version != API_VERSION {
        return Err((
            vec![k("apiVersion")],
            format!("unknown apiVersion `{api_version}`: this version serves {API_VERSION}"),
        ));
    }
    let missing = "required field is missing (Account, Session or Task)".to_string();
    let kind = required_str(root, "kind", missing)?;
    let Some(kind) = Kind::from_kind_field(kind).filter(|k| k.declared()) else {
        let why = match Kind::from_kind_field(kind) {
            Some(_) => {
                format!("kind `{kind}` is written by the daemon only; it cannot be declared")
            }
            None => format!("unknown kind `{kind}`: expected Account, Session or Task"),
        };
        return Err((vec![k("kind")], why));
    };
    let Some(meta) = root.get("metadata") else {
        return Err((
            vec![k("metadata")],
            "required field is missing (metadata.name at least)".into(),
        ));
    };
    if let NodeKind::Map(entries) = &meta.kind {
        known_fields(entries, METADATA_FIELDS, &[k("metadata")])?;
    }
    if root.get("spec").is_none() {
        return Err((vec![k("spec")], "required field is missing".into()));
    }
    Ok(kind)
}

/// Every key of `entries` is one of `known` (the error names the first
/// that is not, under `at`; at the top level, with the fields expected).
fn known_fields(entries: &[(Node, Node)], known: &[&str], at: &[Seg]) -> Result<(), DocError> {
    for (key, _) in entries {
        let name = key.key_string();
        if known.contains(&name.as_str()) {
            continue;
        }
        let mut path = at.to_vec();
        path.push(k(&name));
        let message = if at.is_empty() {
            format!(
                "unknown field `{name}`, expected one of {}",
                known.join(", ")
            )
        } else {
            format!("unknown field `{name}`")
        };
        return Err((path, message));
    }
    Ok(())
}

/// The top-level string `field`; `missing` says what to write when absent.
fn required_str<'a>(root: &'a Node, field: &str, missing: String) -> Result<&'a str, DocError> {
    let n = root.get(field).ok_or_else(|| (vec![k(field)], missing))?;
    n.as_str()
        .ok_or_else(|| (vec![k(field)], "must be a string".to_string()))
}

/// Strict typed decoding; the error carries the path of the offending field.
fn typed<T: DeserializeOwned>(value: Value) -> Result<T, DocError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let mut path: Vec<Seg> = e
            .path()
            .iter()
            .filter_map(|s| match s {
                serde_path_to_error::Segment::Seq { index } => Some(Seg::Index(*index)),
                serde_path_to_error::Segment::Map { key } => Some(Seg::Key(key.clone())),
                serde_path_to_error::Segment::Enum { .. }
                | serde_path_to_error::Segment::Unknown => None,
            })
            .collect();
        let msg = e.into_inner().to_string();
        // "unknown field `x`, expected ...": point at the field itself.
        if let Some(rest) = msg.strip_prefix("unknown field `")
            && let Some(field) = rest.split('`').next()
            && path.last() != Some(&Seg::Key(field.to_string()))
        {
            path.push(Seg::Key(field.to_string()));
        }
        if let Some(field) = msg
            .strip_prefix("missing field `")
            .and_then(|r| r.split('`').next())
        {
            path.push(Seg::Key(field.to_string()));
            return (path, "required field is missing".to_string());
        }
        (path, humanize(&msg))
    })
}

/// serde names Rust types ("expected u8"); say what a YAML author writes.
fn humanize(msg: &str) -> String {
    let mut m = msg.to_string();
    for (rust, human) in [
        ("expected i32", "expected an integer"),
        ("expected i64", "expected an integer"),
        ("expected u32", "expected a non-negative integer"),
        ("expected u8", "expected an integer from 0 to 255"),
        ("expected f64", "expected a number"),
        ("expected a boolean", "expected true or false"),
    ] {
        m = m.replace(rust, human);
    }
    m
}

/// Decodes a single-document YAML file (a config file) into `T`, strictly,
/// with the same `FILE:LINE:COL: path: message` errors as manifests.
pub fn decode_single<T: DeserializeOwned>(file: &str, bytes: &[u8]) -> Result<T, ManifestError> {
    let err = |pos: Pos, path: String, message: String| ManifestError {
        file: file.to_string(),
        pos,
        path,
        message,
    };
    let text = std::str::from_utf8(bytes).map_err(|e| {
        err(
            Pos { line: 1, col: 1 },
            "(file)".into(),
            format!("not valid UTF-8 at byte offset {}", e.valid_up_to()),
        )
    })?;
    let docs =
        yaml::parse_documents(text).map_err(|e| err(e.pos, path_string(&e.path), e.message))?;
    let roots: Vec<&Node> = docs.iter().filter_map(|d| d.root.as_ref()).collect();
    match roots.as_slice() {
        [] => typed(Value::Object(Default::default()))
            .map_err(|(p, m)| err(Pos { line: 1, col: 1 }, path_string(&p), m)),
        [root] => typed(root.to_json()).map_err(|(p, m)| err(root.locate(&p), path_string(&p), m)),
        [_, second, ..] => Err(err(
            second.pos,
            "(file)".into(),
            "expected one document".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> Vec<String> {
        decode_file("f.yaml", text.as_bytes())
            .1
            .iter()
            .map(|e| e.to_string())
            .collect()
    }

    const HEAD: &str = "apiVersion: claude-failover.io/v1alpha1\n";

    #[test]
    fn good_documents_decode() {
        let text = format!(
            "{HEAD}kind: Account\nmetadata: {{name: work}}\nspec: {{configDir: ~/.claude-work}}\n---\n{HEAD}kind: Session\nmetadata:\n  name: ccl-0\n  labels: {{project: api}}\nspec:\n  workdir: /code/api\n  account: work\n"
        );
        let (objs, errs) = decode_file("f.yaml", text.as_bytes());
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(objs.len(), 2);
        assert_eq!(objs[1].object.name(), "ccl-0");
        assert_eq!(objs[1].source.pos.line, 6);
    }

    #[test]
    fn unknown_field_is_named_with_position() {
        let e = errors(&format!(
            "{HEAD}kind: Session\nmetadata: {{name: a}}\nspec:\n  workdir: /x\n  wrokdir: /y\n"
        ));
        assert_eq!(e.len(), 1);
        assert!(
            e[0].starts_with("f.yaml:6:3: spec.wrokdir: unknown field `wrokdir`"),
            "{}",
            e[0]
        );
    }

    #[test]
    fn wrong_type_points_at_the_value() {
        let e = errors(&format!(
            "{HEAD}kind: Account\nmetadata: {{name: a}}\nspec:\n  configDir: /x\n  priority: high\n"
        ));
        assert!(
            e[0].starts_with("f.yaml:6:3: spec.priority: invalid type"),
            "{}",
            e[0]
        );
    }

    #[test]
    fn semantic_checks_have_paths() {
        let e = errors(&format!(
            "{HEAD}kind: Account\nmetadata: {{name: a}}\nspec:\n  configDir: /x\n  thresholds:\n    fiveHour: 0\n"
        ));
        assert!(
            e[0].starts_with("f.yaml:7:5: spec.thresholds.fiveHour: 0 is out of range"),
            "{}",
            e[0]
        );
        let e = errors(&format!(
            "{HEAD}kind: Task\nmetadata: {{name: Bad_Name}}\nspec: {{prompt: hi}}\n"
        ));
        assert!(e[0].starts_with("f.yaml:3:12: metadata.name:"), "{}", e[0]);
    }

    #[test]
    fn missing_fields() {
        let e = errors(&format!(
            "{HEAD}kind: Task\nmetadata: {{labels: {{a: b}}}}\nspec: {{prompt: hi}}\n"
        ));
        assert!(
            e[0].contains("metadata.name: required field is missing"),
            "{}",
            e[0]
        );
        let e = errors(&format!(
            "{HEAD}kind: Task\nmetadata: {{name: a}}\nspec: {{priority: high}}\n"
        ));
        assert!(
            e[0].contains("spec.prompt: required field is missing"),
            "{}",
            e[0]
        );
    }

    #[test]
    fn a_list_is_its_items() {
        let text = format!(
            "apiVersion: v1\nkind: List\nitems:\n- {HEAD}  kind: Task\n  metadata: {{name: a}}\n  spec: {{prompt: hi}}\n- {HEAD}  kind: Task\n  metadata: {{name: b}}\n  spec: {{prompt: hi, bad: 1}}\n"
        );
        let (objs, errs) = decode_file("l.yaml", text.as_bytes());
        assert_eq!(objs.len(), 1);
        assert_eq!(
            objs[0].declared["spec"],
            serde_json::json!({"prompt": "hi"})
        );
        assert_eq!(errs.len(), 1);
        assert!(
            errs[0]
                .to_string()
                .starts_with("l.yaml:11:22: items[1].spec.bad: unknown field"),
            "{}",
            errs[0]
        );
    }
}

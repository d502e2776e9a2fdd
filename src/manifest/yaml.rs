//! A YAML reader that keeps the source position of every node.
//!
//! serde-saphyr's parser (granit) produces the events; this module builds a
//! small tree from them with YAML 1.2 core-schema scalar resolution, anchors,
//! aliases and merge keys, so that any error found later (a type mismatch, an
//! unknown field, a semantic check) can be reported at `LINE:COL` of the
//! offending node. Limits on depth and on alias expansion keep hostile input
//! (deep nesting, "billion laughs") from exhausting memory or the stack.

use serde_json::{Map, Number, Value};
use serde_saphyr::granit_parser::{Event, Parser, ScalarStyle, Span};
use std::collections::HashMap;

/// 1-based line and column.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Pos {
    pub line: usize,
    pub col: usize,
}

impl std::fmt::Display for Pos {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.line, self.col)
    }
}

fn pos_of(span: &Span) -> Pos {
    Pos {
        line: span.start.line(),
        col: span.start.col() + 1,
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum NodeKind {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub pos: Pos,
    pub kind: NodeKind,
}

/// One document of a (possibly multi-document) file.
#[derive(Debug)]
pub struct Document {
    /// Where the document starts.
    pub pos: Pos,
    /// None for an empty document (only comments, or `---` alone).
    pub root: Option<Node>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct YamlError {
    pub pos: Pos,
    /// Where in the document the problem is (empty: the top level).
    pub path: Vec<Seg>,
    pub message: String,
}

/// Deepest nesting accepted.
pub const MAX_DEPTH: usize = 128;
/// Most nodes one file may expand to (aliases included).
pub const MAX_NODES: usize = 1_000_000;

/// One path segment, as reported by serde and the validators.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seg {
    Key(String),
    Index(usize),
}

/// Renders `spec.agent.args[2]`.
pub fn path_string(path: &[Seg]) -> String {
    let mut s = String::new();
    for seg in path {
        match seg {
            // A key holding a line break or another control character is
            // quoted and escaped: a problem stays on one line.
            Seg::Key(k) if k.chars().any(char::is_control) => s.push_str(&format!("[{k:?}]")),
            Seg::Key(k) => {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(k);
            }
            Seg::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    if s.is_empty() {
        "(root)".to_string()
    } else {
        s
    }
}

impl Node {
    /// The JSON value of this node (map keys rendered as strings).
    pub fn to_json(&self) -> Value {
        match &self.kind {
            NodeKind::Null => Value::Null,
            NodeKind::Bool(b) => Value::Bool(*b),
            NodeKind::Int(i) => Value::Number((*i).into()),
            // Non-finite numbers are refused when read.
            NodeKind::Float(f) => Number::from_f64(*f)
                .map(Value::Number)
                .unwrap_or(Value::Null),
            NodeKind::Str(s) => Value::String(s.clone()),
            NodeKind::Seq(items) => Value::Array(items.iter().map(Node::to_json).collect()),
            NodeKind::Map(entries) => {
                let mut m = Map::new();
                for (k, v) in entries {
                    m.insert(k.key_string(), v.to_json());
                }
                Value::Object(m)
            }
        }
    }

    /// The text of a key node.
    pub fn key_string(&self) -> String {
        match &self.kind {
            NodeKind::Str(s) => s.clone(),
            NodeKind::Null => "null".into(),
            NodeKind::Bool(b) => b.to_string(),
            NodeKind::Int(i) => i.to_string(),
            NodeKind::Float(f) => f.to_string(),
            NodeKind::Seq(_) | NodeKind::Map(_) => self.to_json().to_string(),
        }
    }

    /// The value under key `key` of a mapping node.
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.entry(key).map(|(_, v)| v)
    }

    /// The key node and value node under `key` of a mapping node.
    pub fn entry(&self, key: &str) -> Option<(&Node, &Node)> {
        match &self.kind {
            NodeKind::Map(entries) => entries
                .iter()
                .find(|(k, _)| matches!(&k.kind, NodeKind::Str(s) if s == key))
                .map(|(k, v)| (k, v)),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match &self.kind {
            NodeKind::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The position of the deepest node along `path`. When the last segment
    /// is a key that is present, this is the key's position (that is where a
    /// reader looks for a misspelt or mistyped field).
    pub fn locate(&self, path: &[Seg]) -> Pos {
        let mut node = self;
        let mut pos = self.pos;
        for (i, seg) in path.iter().enumerate() {
            let last = i + 1 == path.len();
            match (seg, &node.kind) {
                (Seg::Key(k), NodeKind::Map(_)) => match node.entry(k) {
                    Some((key, value)) => {
                        pos = if last { key.pos } else { value.pos };
                        node = value;
                    }
                    None => return pos,
                },
                (Seg::Index(i), NodeKind::Seq(items)) => match items.get(*i) {
                    Some(item) => {
                        pos = item.pos;
                        node = item;
                    }
                    None => return pos,
                },
                _ => return pos,
            }
        }
        pos
    }
}

enum Frame {
    Seq(Pos, Vec<Node>, usize),
    /// Mapping: explicit entries, entries from `<<` merges, a pending key, anchor id.
    Map(
        Pos,
        Vec<(Node, Node)>,
        Vec<(Node, Node)>,
        Option<Node>,
        usize,
    ),
}

/// Parses every document of `text`.
pub fn parse_documents(text: &str) -> Result<Vec<Document>, YamlError> {
    let mut parser = Parser::new_from_str(text);
    let mut built = Builder::default();
    while let Some(item) = parser.next_event() {
        let (event, span) = item.map_err(|e| {
            let pos = Pos {
                line: e.marker().line(),
                col: e.marker().col() + 1,
            };
            built.error(pos, format!("invalid YAML: {}", e.info()))
        })?;
        let pos = pos_of(&span);
        if let Some((node, anchor)) = built.event(event, pos)? {
            built.place(node, anchor, pos)?;
        }
    }
    Ok(built.docs)
}

/// The documents read so far, and the nodes of the one being read.
#[derive(Default)]
struct Builder {
    docs: Vec<Document>,
    anchors: HashMap<usize, Node>,
    /// The sequences and mappings open, innermost last.
    stack: Vec<Frame>,
    doc_pos: Option<Pos>,
    root: Option<Node>,
    /// Nodes of the document so far, aliases counted as what they expand to.
    nodes: usize,
}

impl Builder {
    /// An error at `pos`, under the path of the node being built.
    fn error(&self, pos: Pos, message: String) -> YamlError {
        YamlError {
            pos,
            path: stack_path(&self.stack),
            message,
        }
    }

    /// Takes one event in; returns the node it completes, with its anchor id.
    fn event(&mut self, event: Event, pos: Pos) -> Result<Option<(Node, usize)>, YamlError> {
        Ok(match event {
            Event::DocumentStart(..) => {
                self.doc_pos = Some(pos);
                self.root = None;
                self.anchors.clear();
                None
            }
            Event::DocumentEnd => {
                // An empty document (comments only, or a bare `---`) reads as null.
                let root = self.root.take().filter(|n| n.kind != NodeKind::Null);
                let pos = self.doc_pos.take().unwrap_or(pos);
                self.docs.push(Document { pos, root });
                None
            }
            Event::Alias(id) => {
                let Some(node) = self.anchors.get(&id).cloned() else {
                    let message = "invalid YAML: alias to an unknown anchor".to_string();
                    return Err(self.error(pos, message));
                };
                self.nodes += count_nodes(&node);
                Some((Node { pos, ..node }, 0))
            }
            Event::UnresolvedAlias(name) => {
                let message = format!("invalid YAML: alias *{name} has no anchor");
                return Err(self.error(pos, message));
            }
            Event::Scalar(value, style, anchor, tag) => {
                let tag = tag.as_deref().map(|t| (t.handle(), t.suffix()));
                let kind = resolve_scalar(&value, style, tag).map_err(|m| self.error(pos, m))?;
                Some((Node { pos, kind }, anchor))
            }
            Event::SequenceStart(_, anchor, _) => {
                self.open(Frame::Seq(pos, Vec::new(), anchor), pos)?;
                None
            }
            Event::MappingStart(_, anchor, _) => {
                let frame = Frame::Map(pos, Vec::new(), Vec::new(), None, anchor);
                self.open(frame, pos)?;
                None
            }
            Event::SequenceEnd | Event::MappingEnd => Some(self.close()),
            // The stream's ends, anchors (carried by the nodes), comments and
            // future presentation-only events carry no data.
            _ => None,
        })
    }

    fn open(&mut self, frame: Frame, pos: Pos) -> Result<(), YamlError> {
        if self.stack.len() >= MAX_DEPTH {
            let message = format!("nesting deeper than {MAX_DEPTH} levels");
            return Err(self.error(pos, message));
        }
        self.stack.push(frame);
        Ok(())
    }

    /// Closes the innermost sequence or mapping (the parser balances them).
    fn close(&mut self) -> (Node, usize) {
        match self.stack.pop() {
            Some(Frame::Seq(pos, items, anchor)) => {
                let kind = NodeKind::Seq(items);
                (Node { pos, kind }, anchor)
            }
            Some(Frame::Map(pos, mut entries, merged, _, anchor)) => {
                // Explicit keys win over merged ones.
                for (k, v) in merged {
                    if !entries
                        .iter()
                        .any(|(ek, _)| ek.key_string() == k.key_string())
                    {
                        entries.push((k, v));
                    }
                }
                let kind = NodeKind::Map(entries);
                (Node { pos, kind }, anchor)
            }
            None => unreachable!("the parser balances sequences and mappings"),
        }
    }

    /// Counts a completed node, records its anchor and puts it in its
    /// parent (or makes it the document's root).
    fn place(&mut self, node: Node, anchor: usize, pos: Pos) -> Result<(), YamlError> {
        self.nodes += 1;
        if self.nodes > MAX_NODES {
            let message = format!("document expands to more than {MAX_NODES} nodes (alias bomb?)");
            return Err(self.error(pos, message));
        }
        if anchor != 0 {
            self.anchors.insert(anchor, node.clone());
        }
        let placed = match self.stack.last_mut() {
            None => {
                self.root = Some(node);
                Ok(())
            }
            Some(Frame::Seq(_, items, _)) => {
                items.push(node);
                Ok(())
            }
            Some(Frame::Map(_, entries, merged, pending, _)) => match pending.take() {
                None => match key_error(&node) {
                    Some(e) => Err(e),
                    None => {
                        *pending = Some(node);
                        Ok(())
                    }
                },
                Some(key) => insert_entry(entries, merged, key, node),
            },
        };
        placed.map_err(|mut e| {
            let mut path = stack_path(&self.stack[..self.stack.len() - 1]);
            path.append(&mut e.path);
            e.path = path;
            e
        })
    }
}

/// Keys end up as JSON object keys: text. A mapping or a list as a key
/// (YAML's `? ` complex keys) has no meaning here, and rendering nested
/// ones as text grows exponentially.
fn key_error(node: &Node) -> Option<YamlError> {
    let what = match node.kind {
        NodeKind::Seq(_) => "list",
        NodeKind::Map(_) => "mapping",
        _ => return None,
    };
    Some(YamlError {
        pos: node.pos,
        path: Vec::new(),
        message: format!("a {what} cannot be a key: keys are plain text"),
    })
}

/// The path to the node being built: the pending key of each open mapping,
/// the next index of each open sequence.
fn stack_path(stack: &[Frame]) -> Vec<Seg> {
    stack
        .iter()
        .filter_map(|f| match f {
            Frame::Seq(_, items, _) => Some(Seg::Index(items.len())),
            Frame::Map(_, _, _, pending, _) => pending.as_ref().map(|k| Seg::Key(k.key_string())),
        })
        .collect()
}

fn count_nodes(node: &Node) -> usize {
    match &node.kind {
        NodeKind::Seq(items) => 1 + items.iter().map(count_nodes).sum::<usize>(),
        NodeKind::Map(entries) => {
            1 + entries
                .iter()
                .map(|(k, v)| count_nodes(k) + count_nodes(v))
                .sum::<usize>()
        }
        _ => 1,
    }
}

/// Adds `key: value` to a mapping, handling the `<<` merge key and
/// rejecting duplicate keys (strict decoding: a repeated key is a mistake).
fn insert_entry(
    entries: &mut Vec<(Node, Node)>,
    merged: &mut Vec<(Node, Node)>,
    key: Node,
    value: Node,
) -> Result<(), YamlError> {
    if matches!(&key.kind, NodeKind::Str(s) if s == "<<") {
        let sources: Vec<Node> = match value.kind {
            NodeKind::Map(_) => vec![value],
            NodeKind::Seq(items) => items,
            _ => {
                return Err(YamlError {
                    pos: value.pos,
                    path: vec![],
                    message: "merge key `<<` needs a mapping or a list of mappings".into(),
                });
            }
        };
        for source in sources {
            let NodeKind::Map(src_entries) = source.kind else {
                return Err(YamlError {
                    pos: source.pos,
                    path: vec![],
                    message: "merge key `<<` needs a mapping or a list of mappings".into(),
                });
            };
            for (k, v) in src_entries {
                // Earlier merges win over later ones.
                if !merged
                    .iter()
                    .any(|(mk, _)| mk.key_string() == k.key_string())
                {
                    merged.push((k, v));
                }
            }
        }
        return Ok(());
    }
    // Keys are compared as they end up (`1` and "1" are one key once the
    // document is JSON): a repeated key is a mistake, never a silent win.
    if let Some((first, _)) = entries
        .iter()
        .find(|(k, _)| k.key_string() == key.key_string())
    {
        let same_text = first.kind == key.kind;
        return Err(YamlError {
            pos: key.pos,
            path: vec![Seg::Key(key.key_string())],
            message: format!(
                "duplicate key `{}` (first at line {}{})",
                key.key_string(),
                first.pos.line,
                if same_text {
                    ""
                } else {
                    ", written another way: both are the same key"
                }
            ),
        });
    }
    entries.push((key, value));
    Ok(())
}

const CORE: &str = "tag:yaml.org,2002:";

/// YAML 1.2 core schema: plain scalars may be null, bool, int or float;
/// quoted and block scalars are strings; `!!str` and friends force a type.
/// Refused rather than dropped or bent: numbers that are not finite or do
/// not fit (they have no JSON form), and control characters (a NUL or an
/// escape sequence has no business in a manifest, and would reach logs and
/// terminals).
fn resolve_scalar(
    value: &str,
    style: ScalarStyle,
    tag: Option<(&str, &str)>,
) -> Result<NodeKind, String> {
    check_text(value)?;
    if let Some((handle, suffix)) = tag {
        if handle != CORE {
            return Err(format!("unsupported tag `{handle}{suffix}`"));
        }
        return match suffix {
            "str" => Ok(NodeKind::Str(value.to_string())),
            "null" => resolve_plain(value)?
                .filter(|k| *k == NodeKind::Null)
                .ok_or_else(|| format!("`{value}` is not a null")),
            "bool" => resolve_plain(value)?
                .filter(|k| matches!(k, NodeKind::Bool(_)))
                .ok_or_else(|| format!("`{value}` is not a boolean")),
            "int" => resolve_plain(value)?
                .filter(|k| matches!(k, NodeKind::Int(_)))
                .ok_or_else(|| format!("`{value}` is not an integer")),
            "float" => match resolve_plain(value)? {
                Some(NodeKind::Int(i)) => Ok(NodeKind::Float(i as f64)),
                Some(k @ NodeKind::Float(_)) => Ok(k),
                _ => Err(format!("`{value}` is not a number")),
            },
            other => Err(format!("unsupported tag `!!{other}`")),
        };
    }
    if style != ScalarStyle::Plain {
        return Ok(NodeKind::Str(value.to_string()));
    }
    Ok(resolve_plain(value)?.unwrap_or_else(|| NodeKind::Str(value.to_string())))
}

/// Refuses control characters other than tab, line feed and carriage
/// return (NUL, escape, DEL, the C1 range).
pub fn check_text(value: &str) -> Result<(), String> {
    match value
        .chars()
        .find(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r'))
    {
        Some(c) => Err(format!(
            "contains the control character U+{:04X}; control characters (other than tab and line breaks) are not accepted",
            c as u32
        )),
        None => Ok(()),
    }
}

/// The type a plain scalar resolves to (None: a string). A number that is
/// not finite, or does not fit, is an error naming it.
fn resolve_plain(v: &str) -> Result<Option<NodeKind>, String> {
    let not_finite = || {
        Err(format!(
            "`{v}` is not a finite number: manifests take finite numbers only (quote it for a string)"
        ))
    };
    match v {
        "" | "~" | "null" | "Null" | "NULL" => return Ok(Some(NodeKind::Null)),
        "true" | "True" | "TRUE" => return Ok(Some(NodeKind::Bool(true))),
        "false" | "False" | "FALSE" => return Ok(Some(NodeKind::Bool(false))),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" | "-.inf" | "-.Inf" | "-.INF"
        | ".nan" | ".NaN" | ".NAN" => return not_finite(),
        _ => {}
    }
    let too_large = || {
        Err(format!(
            "`{v}` is too large: integers must lie within -9223372036854775808..=9223372036854775807"
        ))
    };
    for (prefix, radix) in [("0o", 8), ("0x", 16)] {
        if let Some(digits) = v.strip_prefix(prefix) {
            if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
                return Ok(None);
            }
            return match i64::from_str_radix(digits, radix) {
                Ok(i) => Ok(Some(NodeKind::Int(i))),
                Err(_) => too_large(),
            };
        }
    }
    let digits = v.strip_prefix(['-', '+']).unwrap_or(v);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        return match v.parse::<i64>() {
            Ok(i) => Ok(Some(NodeKind::Int(i))),
            Err(_) => too_large(),
        };
    }
    if is_float(digits) {
        return match v.parse::<f64>() {
            Ok(f) if f.is_finite() => Ok(Some(NodeKind::Float(f))),
            Ok(_) => Err(format!(
                "`{v}` is too large for a number (at most about 1.8e308)"
            )),
            Err(_) => Ok(None),
        };
    }
    Ok(None)
}

/// `( \. [0-9]+ | [0-9]+ ( \. [0-9]* )? ) ( [eE] [-+]? [0-9]+ )?`
fn is_float(s: &str) -> bool {
    let (mantissa, exp) = match s.find(['e', 'E']) {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    };
    let mantissa_ok = match mantissa.split_once('.') {
        Some((int, frac)) => {
            (!int.is_empty() || !frac.is_empty())
                && int.bytes().all(|b| b.is_ascii_digit())
                && frac.bytes().all(|b| b.is_ascii_digit())
                && !(int.is_empty() && frac.is_empty())
        }
        None => !mantissa.is_empty() && mantissa.bytes().all(|b| b.is_ascii_digit()),
    };
    let exp_ok = match exp {
        None => true,
        Some(e) => {
            let d = e.strip_prefix(['-', '+']).unwrap_or(e);
            !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit())
        }
    };
    mantissa_ok && exp_ok && (mantissa.contains('.') || exp.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> Node {
        let mut docs = parse_documents(text).unwrap();
        assert_eq!(docs.len(), 1);
        docs.remove(0).root.unwrap()
    }

    #[test]
    fn scalars_resolve_by_core_schema() {
        let n = one("a: 1\nb: '1'\nc: true\nd: ~\ne: 1.5\nf: x\ng: 0x1F\nh: 1e3\ni: !!str 12\n");
        assert_eq!(
            n.to_json(),
            serde_json::json!({"a":1,"b":"1","c":true,"d":null,"e":1.5,"f":"x","g":31,"h":1000.0,"i":"12"})
        );
    }

    #[test]
    fn positions_point_at_keys_and_values() {
        let n = one("metadata:\n  name: x\nspec:\n  args:\n    - a\n    - b\n");
        let p = |s: &[Seg]| n.locate(s);
        assert_eq!(
            p(&[Seg::Key("metadata".into()), Seg::Key("name".into())]),
            Pos { line: 2, col: 3 }
        );
        assert_eq!(
            p(&[
                Seg::Key("spec".into()),
                Seg::Key("args".into()),
                Seg::Index(1)
            ]),
            Pos { line: 6, col: 7 }
        );
        // missing key: the closest existing ancestor
        assert_eq!(
            p(&[Seg::Key("spec".into()), Seg::Key("nope".into())]),
            Pos { line: 4, col: 3 }
        );
    }

    #[test]
    fn documents_and_empty_documents() {
        let docs = parse_documents("a: 1\n---\n# only a comment\n---\nb: 2\n").unwrap();
        assert_eq!(docs.len(), 3);
        assert!(docs[1].root.is_none());
        assert_eq!(docs[2].pos.line, 4);
        assert!(
            parse_documents("")
                .unwrap()
                .iter()
                .all(|d| d.root.is_none())
        );
    }

    #[test]
    fn anchors_aliases_and_merge() {
        let n = one("base: &b {x: 1, y: 2}\nthing:\n  <<: *b\n  y: 3\n");
        assert_eq!(n.to_json()["thing"], serde_json::json!({"y":3,"x":1}));
    }

    #[test]
    fn a_mapping_or_a_list_is_no_key() {
        for (text, what) in [("? {a: 1}\n: x\n", "mapping"), ("? [a, b]\n: x\n", "list")] {
            let e = parse_documents(text).unwrap_err();
            assert_eq!(
                e.message,
                format!("a {what} cannot be a key: keys are plain text")
            );
            assert_eq!((e.pos.line, e.pos.col), (1, 3));
        }
        // Nested complex keys (a fuzzer's find: their text doubled at each
        // level, fuzz/corpus/manifest_decode/nested-complex-keys) are refused
        // at the innermost.
        let nested = " ? ? - ? ? ".repeat(12) + "z\n";
        assert!(
            parse_documents(&nested)
                .unwrap_err()
                .message
                .contains("cannot be a key")
        );
    }

    #[test]
    fn keys_with_line_breaks_stay_on_one_line() {
        let p = path_string(&[Seg::Key("labels".into()), Seg::Key("a\nb".into())]);
        assert_eq!(p, "labels[\"a\\nb\"]");
    }

    #[test]
    fn duplicate_keys_are_errors() {
        let e = parse_documents("a: 1\nb: 2\na: 3\n").unwrap_err();
        assert_eq!(e.pos, Pos { line: 3, col: 1 });
        assert!(e.message.contains("duplicate key `a`"), "{}", e.message);
    }

    #[test]
    fn syntax_errors_have_positions() {
        let e = parse_documents("a: [1, 2\nb: 3\n").unwrap_err();
        assert!(e.pos.line >= 1);
        assert!(e.message.starts_with("invalid YAML"));
    }

    #[test]
    fn alias_bombs_and_deep_nesting_are_refused() {
        let mut bomb = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..12 {
            let p = i - 1;
            bomb.push_str(&format!("a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"));
        }
        assert!(
            parse_documents(&bomb)
                .unwrap_err()
                .message
                .contains("alias bomb")
        );
        let deep = "[".repeat(500) + &"]".repeat(500);
        let e = parse_documents(&deep).unwrap_err();
        assert!(
            e.message.contains("nesting") || e.message.contains("recursion"),
            "{e:?}"
        );
    }
}

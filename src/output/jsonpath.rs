//! kubectl's JSONPath templates (`-o jsonpath=...`, `--sort-by`,
//! `custom-columns`, `wait --for=jsonpath=...`).
//!
//! A template is text with actions in braces: `{.metadata.name}`,
//! `{range .items[*]}...{end}`, `{"\n"}` (a string literal), `{$.kind}`
//! (from the root inside a range), `{@}` (the current element). The
//! expressions are kubectl's dialect of JSONPath: `.a.b`, `..a`, `.*`,
//! `[0]`, `[-1]`, `[1:3]`, `[*]`, `[0,2]`, `['a.b']`, `[?(@.type=="Ready")]`,
//! and `\.` for a dot inside a key (`.metadata.labels.app\.kubernetes\.io/name`).
//! Each is translated to an RFC 9535 query and run by `jsonpath-rust`; this
//! module only adds kubectl's template layer around it. Output follows
//! kubectl: several results of one expression are separated by a space;
//! maps and lists print as compact JSON; a missing field prints nothing.

use super::gofmt;
use jsonpath_rust::parser::model::JpQuery;
use jsonpath_rust::parser::parse_json_path;
use jsonpath_rust::query::js_path_process;
use serde_json::Value;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TemplateError {
    #[error("error parsing jsonpath {template}: {message}")]
    Parse { template: String, message: String },
}

/// Where an expression starts: the document, or the current element of the
/// innermost `range` (the document outside any range).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Base {
    Root,
    Current,
}

/// One compiled expression.
#[derive(Debug, Clone)]
pub struct Expr {
    base: Base,
    query: JpQuery,
    /// The RFC 9535 form it runs as.
    pub rfc: String,
}

impl Expr {
    /// Every value the expression selects in `current` (or `root`).
    pub fn select<'a>(&self, root: &'a Value, current: &'a Value) -> Vec<&'a Value> {
        let start = match self.base {
            Base::Root => root,
            Base::Current => current,
        };
        js_path_process(&self.query, start)
            .map(|refs| refs.into_iter().map(|r| r.val()).collect())
            .unwrap_or_default()
    }

    /// Parses one kubectl path expression (`.status.phase`, `$.kind`).
    pub fn parse(src: &str) -> Result<Expr, String> {
        let (base, rfc) = translate(src.trim())?;
        let query = parse_json_path(&rfc).map_err(|e| format!("{src}: {e}"))?;
        Ok(Expr { base, query, rfc })
    }
}

#[derive(Debug, Clone)]
enum Item {
    Literal(String),
    Path(Expr),
}

#[derive(Debug, Clone)]
enum Node {
    Text(String),
    Action(Vec<Item>),
    Range(Expr, Vec<Node>),
}

/// A parsed template.
#[derive(Debug, Clone)]
pub struct Template {
    nodes: Vec<Node>,
}

impl Template {
    pub fn parse(template: &str) -> Result<Template, TemplateError> {
        let err = |message: String| TemplateError::Parse {
            template: template.to_string(),
            message,
        };
        // A stack of open ranges: (its expression, the nodes so far).
        let mut stack: Vec<(Option<Expr>, Vec<Node>)> = vec![(None, Vec::new())];
        let mut rest = template;
        while !rest.is_empty() {
            let Some(open) = rest.find('{') else {
                push(&mut stack, Node::Text(rest.to_string()));
                break;
            };
            if open > 0 {
                push(&mut stack, Node::Text(rest[..open].to_string()));
            }
            let close = matching_brace(&rest[open..])
                .ok_or_else(|| err(format!("unclosed action starting at `{}`", &rest[open..])))?;
            let inner = rest[open + 1..open + close].trim();
            rest = &rest[open + close + 1..];
            if let Some(expr) = inner.strip_prefix("range ").or_else(|| {
                inner
                    .strip_prefix("range")
                    .filter(|r| r.starts_with(char::is_whitespace))
            }) {
                stack.push((Some(Expr::parse(expr).map_err(&err)?), Vec::new()));
            } else if inner == "end" {
                if stack.len() == 1 {
                    return Err(err("{end} without a {range}".into()));
                }
                let (expr, nodes) = stack.pop().expect("checked");
                push(
                    &mut stack,
                    Node::Range(expr.expect("ranges have one"), nodes),
                );
            } else {
                push(&mut stack, Node::Action(parse_items(inner).map_err(&err)?));
            }
        }
        if stack.len() > 1 {
            return Err(err("{range} without an {end}".into()));
        }
        Ok(Template {
            nodes: stack.pop().expect("the root frame").1,
        })
    }

    /// The template's text for `root`.
    pub fn render(&self, root: &Value) -> String {
        let mut out = String::new();
        render_nodes(&self.nodes, root, root, &mut out);
        out
    }

    /// Every value the template's expressions select, in order (for
    /// `jsonpath-as-json` and `wait --for=jsonpath`).
    pub fn values<'a>(&self, root: &'a Value) -> Vec<&'a Value> {
        let mut out = Vec::new();
        collect_nodes(&self.nodes, root, root, &mut out);
        out
    }
}

fn push(stack: &mut [(Option<Expr>, Vec<Node>)], node: Node) {
    stack.last_mut().expect("the root frame").1.push(node);
}

fn render_nodes(nodes: &[Node], root: &Value, current: &Value, out: &mut String) {
    for n in nodes {
        match n {
            Node::Text(t) => out.push_str(t),
            Node::Action(items) => {
                for item in items {
                    match item {
                        Item::Literal(s) => out.push_str(s),
                        Item::Path(e) => {
                            let texts: Vec<String> = e
                                .select(root, current)
                                .into_iter()
                                .map(gofmt::text)
                                .collect();
                            out.push_str(&texts.join(" "));
                        }
                    }
                }
            }
            Node::Range(e, inner) => {
                for v in e.select(root, current) {
                    render_nodes(inner, root, v, out);
                }
            }
        }
    }
}

fn collect_nodes<'a>(
    nodes: &[Node],
    root: &'a Value,
    current: &'a Value,
    out: &mut Vec<&'a Value>,
) {
    for n in nodes {
        match n {
            Node::Text(_) => {}
            Node::Action(items) => {
                for item in items {
                    if let Item::Path(e) = item {
                        out.extend(e.select(root, current));
                    }
                }
            }
            Node::Range(e, inner) => {
                for v in e.select(root, current) {
                    collect_nodes(inner, root, v, out);
                }
            }
        }
    }
}

/// The length up to the `}` closing the `{` at the start of `s`, skipping
/// braces inside quotes.
fn matching_brace(s: &str) -> Option<usize> {
    let mut quote: Option<char> = None;
    let mut escaped = false;
    let mut depth = 0;
    for (i, c) in s.char_indices() {
        if let Some(q) = quote {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == q {
                quote = None;
            }
            continue;
        }
        match c {
            '"' | '\'' => quote = Some(c),
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
    }
    None
}

/// An action's content: string literals and paths separated by spaces.
fn parse_items(inner: &str) -> Result<Vec<Item>, String> {
    let mut items = Vec::new();
    let mut rest = inner.trim_start();
    while !rest.is_empty() {
        if rest.starts_with('"') || rest.starts_with('\'') {
            let (lit, len) = string_literal(rest)?;
            items.push(Item::Literal(lit));
            rest = rest[len..].trim_start();
        } else {
            let len = path_len(rest);
            items.push(Item::Path(Expr::parse(&rest[..len])?));
            rest = rest[len..].trim_start();
        }
    }
    if items.is_empty() {
        return Err("empty action {}".into());
    }
    Ok(items)
}

/// A quoted string at the start of `s` with Go's escapes; its value and
/// its length in `s`.
fn string_literal(s: &str) -> Result<(String, usize), String> {
    let q = s.chars().next().expect("a quote");
    let mut out = String::new();
    let mut chars = s.char_indices().skip(1);
    while let Some((i, c)) = chars.next() {
        match c {
            c if c == q => return Ok((out, i + 1)),
            '\\' => match chars.next().map(|(_, c)| c) {
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some('r') => out.push('\r'),
                Some('\\') => out.push('\\'),
                Some('"') => out.push('"'),
                Some('\'') => out.push('\''),
                Some(other) => return Err(format!("unknown escape \\{other} in {s}")),
                None => break,
            },
            c => out.push(c),
        }
    }
    Err(format!("unterminated quoted string {s}"))
}

/// The length of the path expression at the start of `s`: up to a space
/// outside brackets and quotes.
fn path_len(s: &str) -> usize {
    let (mut depth, mut quote, mut escaped) = (0i32, None::<char>, false);
    for (i, c) in s.char_indices() {
        if let Some(q) = quote {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == q {
                quote = None;
            }
            continue;
        }
        match c {
            '\\' => escaped = true,
            '"' | '\'' if depth > 0 => quote = Some(c),
            '[' | '(' => depth += 1,
            ']' | ')' => depth -= 1,
            c if c.is_whitespace() && depth <= 0 && !escaped => return i,
            _ => escaped = false,
        }
    }
    s.len()
}

/// Quotes a member name for RFC 9535's bracket notation.
fn quoted(name: &str) -> String {
    format!("['{}']", name.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// Characters that end a member name in kubectl's dot notation.
fn ends_name(c: char, in_filter: bool) -> bool {
    matches!(c, '.' | '[' | ']')
        || c.is_whitespace()
        || (in_filter && matches!(c, '(' | ')' | '=' | '!' | '<' | '>' | '&' | '|' | ','))
}

/// A member name at the start of `s` (`\` escapes the next character);
/// its value and its length.
fn member_name(s: &str, in_filter: bool) -> (String, usize) {
    let mut name = String::new();
    let mut chars = s.char_indices().peekable();
    while let Some(&(i, c)) = chars.peek() {
        if c == '\\' {
            chars.next();
            if let Some((_, n)) = chars.next() {
                name.push(n);
            }
            continue;
        }
        if ends_name(c, in_filter) {
            return (name, i);
        }
        name.push(c);
        chars.next();
    }
    (name, s.len())
}

/// kubectl's expression → (its base, the RFC 9535 query).
fn translate(src: &str) -> Result<(Base, String), String> {
    let (base, body) = if let Some(b) = src.strip_prefix('$') {
        (Base::Root, b)
    } else if let Some(b) = src.strip_prefix('@') {
        (Base::Current, b)
    } else if src.starts_with('.') || src.starts_with('[') {
        (Base::Current, src)
    } else {
        return Err(format!(
            "unrecognized identifier `{src}`: a path starts with `.`, `$` or `@` (e.g. .metadata.name)"
        ));
    };
    let mut out = String::from("$");
    let used = segments(body, false, &mut out)?;
    if used != body.len() {
        return Err(format!("unexpected `{}` in {src}", &body[used..]));
    }
    Ok((base, out))
}

/// Translates the segments at the start of `s` into `out`; returns how much
/// of `s` they took (inside a filter a path ends at an operator).
fn segments(s: &str, in_filter: bool, out: &mut String) -> Result<usize, String> {
    let mut i = 0;
    while i < s.len() {
        let rest = &s[i..];
        if let Some(after) = rest.strip_prefix("..") {
            i += 2;
            if after.starts_with('[') {
                out.push_str("..");
            } else if after.starts_with('*') {
                out.push_str("..*");
                i += 1;
            } else {
                let (name, len) = member_name(after, in_filter);
                if name.is_empty() {
                    return Err(format!("a name must follow `..` in {s}"));
                }
                out.push_str("..");
                out.push_str(&quoted(&name));
                i += len;
            }
        } else if let Some(after) = rest.strip_prefix('.') {
            i += 1;
            if after.starts_with('*') {
                out.push_str("[*]");
                i += 1;
            } else if after.is_empty() || after.starts_with('[') {
                // `.` alone (the current element) or `.[0]`.
            } else {
                let (name, len) = member_name(after, in_filter);
                if name.is_empty() {
                    return Err(format!("empty member name in {s}"));
                }
                out.push_str(&quoted(&name));
                i += len;
            }
        } else if rest.starts_with('[') {
            let len = bracket_len(rest).ok_or_else(|| format!("unclosed `[` in {s}"))?;
            let inner = &rest[1..len - 1];
            out.push('[');
            match inner.trim_start().strip_prefix('?') {
                Some(filter) => {
                    out.push('?');
                    filter_expr(filter, out)?;
                }
                None => out.push_str(inner),
            }
            out.push(']');
            i += len;
        } else if in_filter {
            break;
        } else {
            return Err(format!("unexpected `{rest}`"));
        }
    }
    Ok(i)
}

/// The length of the bracket at the start of `s`, up to its `]`.
fn bracket_len(s: &str) -> Option<usize> {
    let (mut depth, mut quote, mut escaped) = (0i32, None::<char>, false);
    for (i, c) in s.char_indices() {
        if let Some(q) = quote {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == q {
                quote = None;
            }
            continue;
        }
        match c {
            '"' | '\'' => quote = Some(c),
            '[' => depth += 1,
            ']' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i + 1);
                }
            }
            _ => {}
        }
    }
    None
}

/// A filter's expression: paths (`@.a.b`, `$.x`) translated, strings,
/// numbers and operators copied.
fn filter_expr(s: &str, out: &mut String) -> Result<(), String> {
    let mut i = 0;
    while i < s.len() {
        let rest = &s[i..];
        let c = rest.chars().next().expect("not empty");
        if c == '@' || c == '$' {
            out.push(c);
            i += 1;
            i += segments(&s[i..], true, out)?;
        } else if c == '"' || c == '\'' {
            let (lit, len) = string_literal(rest)?;
            out.push('"');
            out.push_str(&lit.replace('\\', "\\\\").replace('"', "\\\""));
            out.push('"');
            i += len;
        } else {
            out.push(c);
            i += c.len_utf8();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj() -> Value {
        json!({"apiVersion": "claude-failover.io/v1alpha1", "kind": "Task",
            "metadata": {"name": "t1", "labels": {"a": "b", "app.kubernetes.io/name": "x"}},
            "spec": {"n": null, "f": 1000000.0, "i": 42, "k": true, "l": [1, "two", {"x": 1}],
                     "m": {"z": 1, "a": "s"}},
            "status": {"conditions": [{"type": "Ready", "status": "True"},
                                      {"type": "Complete", "status": "False"}]}})
    }

    fn render(t: &str) -> String {
        Template::parse(t).unwrap().render(&obj())
    }

    #[test]
    fn translation() {
        assert_eq!(
            translate(".metadata.name").unwrap().1,
            "$['metadata']['name']"
        );
        assert_eq!(
            translate("$.kind").unwrap(),
            (Base::Root, "$['kind']".into())
        );
        assert_eq!(translate("@").unwrap(), (Base::Current, "$".into()));
        assert_eq!(
            translate(r".metadata.labels.app\.kubernetes\.io/name")
                .unwrap()
                .1,
            "$['metadata']['labels']['app.kubernetes.io/name']"
        );
        assert_eq!(
            translate(r#".status.conditions[?(@.type=="Ready")].status"#)
                .unwrap()
                .1,
            r#"$['status']['conditions'][?(@['type']=="Ready")]['status']"#
        );
        assert_eq!(translate("..type").unwrap().1, "$..['type']");
        assert_eq!(translate(".spec.m.*").unwrap().1, "$['spec']['m'][*]");
        assert!(translate("metadata.name").is_err());
    }

    #[test]
    fn templates_print_like_kubectl() {
        // Expected outputs are kubectl 1.32's for the same object.
        for (t, want) in [
            ("{.spec.n}", "null"),
            ("{.spec.f}", "1e+06"),
            ("{.spec.i}", "42"),
            ("{.spec.k}", "true"),
            ("{.spec.l}", r#"[1,"two",{"x":1}]"#),
            ("{.spec.m}", r#"{"a":"s","z":1}"#),
            ("{.spec.l[*]}", r#"1 two {"x":1}"#),
            ("{.spec.missing}", ""),
            (r"{.metadata.labels.app\.kubernetes\.io/name}", "x"),
            (r#"{.status.conditions[?(@.type=="Ready")].status}"#, "True"),
            (
                r#"{range .status.conditions[*]}{.type}={.status}{"\n"}{end}"#,
                "Ready=True\nComplete=False\n",
            ),
            ("{.spec.l[-1]}", r#"{"x":1}"#),
            ("{.spec.l[0:2]}", "1 two"),
            ("{..x}", "1"),
            ("{.metadata.name} {.kind}", "t1 Task"),
            // A map's members come in key order (kubectl: Go's map order).
            ("{.spec.m.*}", "s 1"),
            ("{$.kind}", "Task"),
            ("{.spec.l[0,1]}", "1 two"),
            (
                r#"{.status.conditions[?(@.status!="True")].type}"#,
                "Complete",
            ),
            (r#"{"a\tb"}"#, "a\tb"),
            ("{.spec.nope.deeper}", ""),
            ("plain text", "plain text"),
            ("{range .spec.l[*]}[{@}]{end}", r#"[1][two][{"x":1}]"#),
            ("{.metadata.name}{.metadata.name}", "t1t1"),
            ("{ .metadata.name }", "t1"),
            (
                "{range .status.conditions[*]}{$.metadata.name}:{.type} {end}",
                "t1:Ready t1:Complete ",
            ),
            ("{.metadata.labels['a']}", "b"),
            ("{.spec.l[?(@.x)]}", r#"{"x":1}"#),
        ] {
            assert_eq!(render(t), want, "template {t}");
        }
    }

    #[test]
    fn parse_errors_are_named() {
        for bad in [
            "{.a",
            "{range .a}x",
            "{end}",
            "{metadata.name}",
            "{\"x}",
            "{}",
        ] {
            let e = Template::parse(bad).unwrap_err();
            assert!(
                e.to_string()
                    .starts_with(&format!("error parsing jsonpath {bad}")),
                "{e}"
            );
        }
    }

    #[test]
    fn values_in_order() {
        let t = Template::parse("{.status.conditions[*].type}{.metadata.name}").unwrap();
        let o = obj();
        assert_eq!(
            t.values(&o),
            vec![&json!("Ready"), &json!("Complete"), &json!("t1")]
        );
    }
}

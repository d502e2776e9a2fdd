//! `-o custom-columns=HEADER:PATH,...`, `-o custom-columns-file=FILE` and
//! `--sort-by=PATH`, as kubectl does them.
//!
//! A path is kubectl's relaxed form: `.metadata.name`, `metadata.name`,
//! `{.metadata.name}`. A cell holds every value the path selects, joined
//! with commas, each in Go's `fmt.Sprint` form (`map[a:b]`, `[x y]`), or
//! `<none>` when it selects nothing.

use super::gofmt;
use super::jsonpath::Expr;
use serde_json::Value;
use std::cmp::Ordering;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ColumnsError {
    #[error("unexpected custom-columns spec: {0}, expected <header>:<json-path-expr>")]
    Spec(String),
    #[error("custom-columns: {0}")]
    Path(String),
    #[error("custom-columns-file {file}: {message}")]
    File { file: String, message: String },
}

/// kubectl's relaxed path: `a.b`, `.a.b`, `{a.b}` and `{.a.b}` all mean
/// `.a.b`; `$...` is taken as it is.
pub fn relaxed(path: &str) -> String {
    let p = path.trim();
    let p = p
        .strip_prefix('{')
        .and_then(|x| x.strip_suffix('}'))
        .unwrap_or(p)
        .trim();
    if p.starts_with('.') || p.starts_with('$') || p.starts_with('[') {
        p.to_string()
    } else {
        format!(".{p}")
    }
}

/// The columns of a table.
#[derive(Debug, Clone)]
pub struct Columns {
    pub headers: Vec<String>,
    exprs: Vec<Expr>,
}

/// Splits on commas outside brackets, parentheses and quotes.
fn split_specs(s: &str) -> Vec<&str> {
    let (mut out, mut start, mut depth, mut quote) = (Vec::new(), 0, 0i32, None::<char>);
    for (i, c) in s.char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'') => quote = Some(c),
            (None, '[' | '(' | '{') => depth += 1,
            (None, ']' | ')' | '}') => depth -= 1,
            (None, ',') if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

impl Columns {
    /// `NAME:.metadata.name,PHASE:.status.phase`
    pub fn parse(spec: &str) -> Result<Columns, ColumnsError> {
        let mut headers = Vec::new();
        let mut exprs = Vec::new();
        for part in split_specs(spec) {
            let Some((header, path)) = part.split_once(':') else {
                return Err(ColumnsError::Spec(part.to_string()));
            };
            if header.is_empty() || path.trim().is_empty() {
                return Err(ColumnsError::Spec(part.to_string()));
            }
            headers.push(header.to_string());
            exprs.push(Expr::parse(&relaxed(path)).map_err(ColumnsError::Path)?);
        }
        Ok(Columns { headers, exprs })
    }

    /// A file of two lines: the headers, then the paths, separated by
    /// white space.
    pub fn parse_file(file: &str, text: &str) -> Result<Columns, ColumnsError> {
        let err = |message: String| ColumnsError::File {
            file: file.to_string(),
            message,
        };
        let mut lines = text.lines().filter(|l| !l.trim().is_empty());
        let (Some(h), Some(p)) = (lines.next(), lines.next()) else {
            return Err(err(
                "expected two lines: the headers, then their paths".into()
            ));
        };
        let headers: Vec<&str> = h.split_whitespace().collect();
        let paths: Vec<&str> = p.split_whitespace().collect();
        if headers.len() != paths.len() {
            return Err(err(format!(
                "{} headers but {} paths",
                headers.len(),
                paths.len()
            )));
        }
        let spec: Vec<String> = headers
            .iter()
            .zip(&paths)
            .map(|(h, p)| format!("{h}:{p}"))
            .collect();
        Columns::parse(&spec.join(",")).map_err(|e| err(e.to_string()))
    }

    /// The cells of one object.
    pub fn row(&self, obj: &Value) -> Vec<String> {
        self.exprs
            .iter()
            .map(|e| {
                let vals = e.select(obj, obj);
                if vals.is_empty() {
                    "<none>".to_string()
                } else {
                    vals.into_iter()
                        .map(gofmt::sprint)
                        .collect::<Vec<_>>()
                        .join(",")
                }
            })
            .collect()
    }
}

/// `--sort-by`: orders objects by the value one path selects in each.
pub struct SortKey(Expr);

impl SortKey {
    pub fn parse(path: &str) -> Result<SortKey, String> {
        Expr::parse(&relaxed(path)).map(SortKey)
    }

    /// Sorts `items` (stable); objects without the field come first, as in
    /// kubectl. A path selecting several values in one object is an error.
    pub fn sort(&self, items: &mut [Value]) -> Result<(), String> {
        for v in items.iter() {
            if self.0.select(v, v).len() > 1 {
                return Err("--sort-by: the path selects more than one value in an object; sort by one field".into());
            }
        }
        items.sort_by(|a, b| {
            let x = self.0.select(a, a).into_iter().next();
            let y = self.0.select(b, b).into_iter().next();
            compare(x, y)
        });
        Ok(())
    }
}

fn compare(a: Option<&Value>, b: Option<&Value>) -> Ordering {
    match (a, b) {
        (None, None) => Ordering::Equal,
        (None, Some(_)) => Ordering::Less,
        (Some(_), None) => Ordering::Greater,
        (Some(Value::Number(x)), Some(Value::Number(y))) => x
            .as_f64()
            .partial_cmp(&y.as_f64())
            .unwrap_or(Ordering::Equal),
        (Some(Value::Bool(x)), Some(Value::Bool(y))) => x.cmp(y),
        (Some(Value::String(x)), Some(Value::String(y))) => x.cmp(y),
        (Some(x), Some(y)) => gofmt::text(x).cmp(&gofmt::text(y)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn cells_like_kubectl() {
        let c = Columns::parse(
            "NAME:.metadata.name,LABELS:metadata.labels,TYPES:{.status.conditions[*].type},X:.nope",
        )
        .unwrap();
        assert_eq!(c.headers, ["NAME", "LABELS", "TYPES", "X"]);
        let o = json!({"metadata": {"name": "a", "labels": {"p": "q", "b": "c"}},
            "status": {"conditions": [{"type": "Ready"}, {"type": "Complete"}]}});
        assert_eq!(c.row(&o), ["a", "map[b:c p:q]", "Ready,Complete", "<none>"]);
        assert!(matches!(Columns::parse("NAME"), Err(ColumnsError::Spec(_))));
        assert!(
            Columns::parse("A:.x[0:1]").is_ok(),
            "a slice's colon is not a separator"
        );
        let f = Columns::parse_file("f", "NAME  PHASE\n.metadata.name .status.phase\n").unwrap();
        assert_eq!(f.headers, ["NAME", "PHASE"]);
        assert!(Columns::parse_file("f", "NAME\n").is_err());
    }

    #[test]
    fn sorting() {
        let mut items = vec![
            json!({"n": "b", "v": 10}),
            json!({"n": "a", "v": 9.5}),
            json!({"n": "c"}),
        ];
        SortKey::parse(".v").unwrap().sort(&mut items).unwrap();
        let names: Vec<&str> = items.iter().map(|i| i["n"].as_str().unwrap()).collect();
        assert_eq!(names, ["c", "a", "b"]);
        SortKey::parse("{.n}").unwrap().sort(&mut items).unwrap();
        assert_eq!(items[0]["n"], "a");
        let mut many = vec![json!({"l": [1, 2]})];
        assert!(SortKey::parse(".l[*]").unwrap().sort(&mut many).is_err());
    }
}

//! Label selectors: the `-l` syntax of kubectl (`a=b,c!=d,e in (x,y),f,!g`)
//! and the `matchLabels` / `matchExpressions` of a `LabelSelector`, both
//! compiled to one matcher.

use crate::api::LabelSelector;
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Req {
    Eq(String, String),
    NotEq(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

/// A compiled selector. The empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector(Vec<Req>);

/// In kubectl's `-l` syntax, which [`Selector::parse`] reads back.
impl std::fmt::Display for Selector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|r| match r {
                Req::Eq(k, v) => format!("{k}={v}"),
                Req::NotEq(k, v) => format!("{k}!={v}"),
                Req::In(k, vs) => format!("{k} in ({})", vs.join(",")),
                Req::NotIn(k, vs) => format!("{k} notin ({})", vs.join(",")),
                Req::Exists(k) => k.clone(),
                Req::NotExists(k) => format!("!{k}"),
            })
            .collect();
        f.write_str(&parts.join(","))
    }
}

impl Selector {
    /// Parses kubectl's `-l` syntax.
    pub fn parse(s: &str) -> Result<Selector, String> {
        let mut reqs = Vec::new();
        for term in split_terms(s)? {
            let term = term.trim();
            if term.is_empty() {
                continue;
            }
            let req = if let Some(k) = term.strip_prefix('!') {
                Req::NotExists(check_key(k.trim())?)
            } else if let Some((k, v)) = term.split_once("!=") {
                Req::NotEq(check_key(k.trim())?, check_value(v.trim())?)
            } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                Req::Eq(check_key(k.trim())?, check_value(v.trim())?)
            } else if let Some((k, vs)) = set_term(term, " notin ") {
                Req::NotIn(check_key(k)?, vs?)
            } else if let Some((k, vs)) = set_term(term, " in ") {
                Req::In(check_key(k)?, vs?)
            } else {
                Req::Exists(check_key(term)?)
            };
            reqs.push(req);
        }
        Ok(Selector(reqs))
    }

    /// Compiles a `LabelSelector` (assumed validated).
    pub fn from_label_selector(sel: &LabelSelector) -> Selector {
        let mut reqs: Vec<Req> = sel
            .match_labels
            .iter()
            .flatten()
            .map(|(k, v)| Req::Eq(k.clone(), v.clone()))
            .collect();
        for e in sel.match_expressions.iter().flatten() {
            let vals = e.values.clone().unwrap_or_default();
            reqs.push(match e.operator.as_str() {
                "In" => Req::In(e.key.clone(), vals),
                "NotIn" => Req::NotIn(e.key.clone(), vals),
                "Exists" => Req::Exists(e.key.clone()),
                _ => Req::NotExists(e.key.clone()),
            });
        }
        Selector(reqs)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The same selector as a `LabelSelector` (`a=b` in `matchLabels`, the
    /// rest as `matchExpressions`; `a!=b` is `NotIn [b]`).
    pub fn to_label_selector(&self) -> LabelSelector {
        use crate::api::LabelSelectorRequirement as R;
        let mut sel = LabelSelector::default();
        let expr = |key: &str, operator: &str, values: Option<Vec<String>>| R {
            key: key.to_string(),
            operator: operator.to_string(),
            values,
        };
        for r in &self.0 {
            let e = match r {
                Req::Eq(k, v) => {
                    sel.match_labels
                        .get_or_insert_with(Default::default)
                        .insert(k.clone(), v.clone());
                    continue;
                }
                Req::NotEq(k, v) => expr(k, "NotIn", Some(vec![v.clone()])),
                Req::In(k, vs) => expr(k, "In", Some(vs.clone())),
                Req::NotIn(k, vs) => expr(k, "NotIn", Some(vs.clone())),
                Req::Exists(k) => expr(k, "Exists", None),
                Req::NotExists(k) => expr(k, "DoesNotExist", None),
            };
            sel.match_expressions.get_or_insert_with(Vec::new).push(e);
        }
        sel
    }

    pub fn matches(&self, labels: Option<&BTreeMap<String, String>>) -> bool {
        let get = |k: &str| labels.and_then(|l| l.get(k));
        self.0.iter().all(|r| match r {
            Req::Eq(k, v) => get(k) == Some(v),
            Req::NotEq(k, v) => get(k) != Some(v),
            Req::In(k, vs) => get(k).is_some_and(|x| vs.contains(x)),
            Req::NotIn(k, vs) => get(k).is_none_or(|x| !vs.contains(x)),
            Req::Exists(k) => get(k).is_some(),
            Req::NotExists(k) => get(k).is_none(),
        })
    }
}

/// Splits on commas outside parentheses.
fn split_terms(s: &str) -> Result<Vec<&str>, String> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth < 0 {
                    return Err(format!("unbalanced ')' in selector `{s}`"));
                }
            }
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err(format!("unbalanced '(' in selector `{s}`"));
    }
    out.push(&s[start..]);
    Ok(out)
}

type SetTerm<'a> = (&'a str, Result<Vec<String>, String>);

fn set_term<'a>(term: &'a str, op: &str) -> Option<SetTerm<'a>> {
    let (k, rest) = term.split_once(op)?;
    let rest = rest.trim();
    let inner = rest.strip_prefix('(').and_then(|r| r.strip_suffix(')'));
    let vals = match inner {
        None => Err(format!(
            "`{term}`: values must be in parentheses, e.g. `{} (a,b)`",
            k.trim()
        )),
        Some(inner) => inner.split(',').map(|v| check_value(v.trim())).collect(),
    };
    Some((k.trim(), vals))
}

fn check_key(k: &str) -> Result<String, String> {
    crate::manifest::validate::qualified_name(k).map(|_| k.to_string())
}

fn check_value(v: &str) -> Result<String, String> {
    crate::manifest::validate::label_value(v).map(|_| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn kubectl_syntax() {
        let l = labels(&[("project", "api"), ("tier", "gold")]);
        let m = |s: &str| Selector::parse(s).unwrap().matches(Some(&l));
        assert!(m("project=api"));
        assert!(m("project==api,tier"));
        assert!(!m("project!=api"));
        assert!(m("project in (api, web),!missing"));
        assert!(!m("tier notin (gold)"));
        assert!(m(""));
        assert!(!m("missing"));
        assert!(Selector::parse("a in x").is_err());
        assert!(Selector::parse("a in (x").is_err());
        assert!(Selector::parse("Bad Key=x").is_err());
        // Written back in the same syntax.
        let text = "project=api,tier!=gold,zone in (a,b),env notin (x),team,!legacy";
        let sel = Selector::parse(text).unwrap();
        assert_eq!(sel.to_string(), text);
        assert_eq!(Selector::parse(&sel.to_string()).unwrap(), sel);
    }

    #[test]
    fn the_same_selector_as_a_label_selector() {
        let text = "project=api,tier!=gold,zone in (a,b),env notin (x),team,!legacy";
        let sel = Selector::parse(text).unwrap().to_label_selector();
        let back = Selector::from_label_selector(&sel);
        for l in [
            labels(&[("project", "api"), ("zone", "a"), ("team", "t")]),
            labels(&[("project", "api"), ("zone", "c"), ("team", "t")]),
            labels(&[
                ("project", "api"),
                ("tier", "gold"),
                ("zone", "a"),
                ("team", "t"),
            ]),
            labels(&[
                ("project", "api"),
                ("zone", "b"),
                ("team", "t"),
                ("legacy", "1"),
            ]),
        ] {
            assert_eq!(
                back.matches(Some(&l)),
                Selector::parse(text).unwrap().matches(Some(&l)),
                "{l:?}"
            );
        }
        assert_eq!(sel.match_labels.unwrap()["project"], "api");
        assert_eq!(sel.match_expressions.unwrap().len(), 5);
    }
}

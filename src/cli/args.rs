//! What the verbs share in their arguments: resources named the ways
//! kubectl takes them (`KIND NAME...`, `KIND/NAME...`, `kind1,kind2`,
//! `all`), "did you mean" for a mistyped kind, `--dry-run`, and
//! `--field-selector`.

use crate::api::Kind;
use anyhow::{Result, bail};
use serde_json::Value;

/// Every name a kind answers to on the command line.
fn spellings(k: Kind) -> [&'static str; 3] {
    [k.plural(), k.singular(), k.short_name()]
}

/// Resolves a KIND argument (`sessions`, `sess`, `session.claude-failover.io`,
/// ...), with a suggestion when it is close to a known one.
pub fn parse_kind(s: &str) -> Result<Kind> {
    if let Some(k) = Kind::from_cli(s) {
        return Ok(k);
    }
    let lower = s.to_ascii_lowercase();
    let best = Kind::ALL
        .into_iter()
        .flat_map(|k| spellings(k).map(|n| (k, n)))
        .map(|(k, n)| (strsim::damerau_levenshtein(&lower, n), k))
        .min_by_key(|(d, _)| *d);
    let hint = match best {
        Some((d, k)) if d <= 2 => format!("; did you mean \"{}\"?", k.plural()),
        _ => String::new(),
    };
    bail!(
        "the server doesn't have a resource type \"{s}\"{hint} (known: accounts (acct), sessions (sess), tasks (tsk); see `api-resources`)"
    )
}

/// Objects of one kind: these names, or (empty) all of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub kind: Kind,
    pub names: Vec<String>,
}

/// Resolves resource arguments: `KIND[,KIND...] [NAME...]` (`all` for every
/// kind) or `KIND/NAME...`. Kinds keep the order given (for `all`: the
/// apply order); names are validated as object names.
pub fn targets(args: &[String]) -> Result<Vec<Target>> {
    let Some(first) = args.first() else {
        bail!(
            "you must specify the type of resource: accounts, sessions or tasks (e.g. `get sessions`, `get session/ccl-0`)"
        );
    };
    let mut out: Vec<Target> = Vec::new();
    if args.iter().any(|a| a.contains('/')) {
        // `KIND NAME` with a NAME like a path (`../x`): a bad name, not
        // KIND/NAME form.
        if !first.contains('/') && parse_kind(first).is_ok() {
            for a in &args[1..] {
                if a.split_once('/')
                    .is_none_or(|(k, _)| parse_kind(k).is_err())
                {
                    check_name(a)?;
                }
            }
        }
        for a in args {
            let Some((k, n)) = a.split_once('/') else {
                bail!(
                    "there is no need to specify a resource type as a separate argument when passing arguments in resource/name form (e.g. `get session/ccl-0` instead of `get session session/ccl-0`)"
                );
            };
            let kind = parse_kind(k)?;
            check_name(n)?;
            match out.iter_mut().find(|t| t.kind == kind) {
                Some(t) => t.names.push(n.to_string()),
                None => out.push(Target {
                    kind,
                    names: vec![n.to_string()],
                }),
            }
        }
        return Ok(out);
    }
    let names: Vec<String> = args[1..].to_vec();
    for n in &names {
        check_name(n)?;
    }
    for k in first.split(',') {
        // `all`: the kinds people declare (as kubectl's `all` leaves out
        // what only the system writes).
        let kinds: Vec<Kind> = if k == "all" {
            Kind::DECLARED.to_vec()
        } else {
            vec![parse_kind(k)?]
        };
        for kind in kinds {
            if !out.iter().any(|t| t.kind == kind) {
                out.push(Target {
                    kind,
                    names: names.clone(),
                });
            }
        }
    }
    Ok(out)
}

/// Names reach the store as file names: only DNS-1123 labels.
pub fn check_name(n: &str) -> Result<()> {
    crate::manifest::validate::dns1123_label(n).map_err(|e| anyhow::anyhow!("name {e}"))
}

/// `--dry-run[=client|server|none]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum DryRun {
    /// Write.
    #[default]
    None,
    /// Show what would be written, from a read of the store (no lock, no
    /// write).
    Client,
    /// Go through every check of a write (the store's lock,
    /// resourceVersion preconditions, field ownership) and write nothing.
    Server,
}

impl DryRun {
    pub fn active(self) -> bool {
        self != DryRun::None
    }

    /// What kubectl appends to each line.
    pub fn suffix(self) -> &'static str {
        match self {
            DryRun::None => "",
            DryRun::Client => " (dry run)",
            DryRun::Server => " (server dry run)",
        }
    }
}

/// `--field-selector a=b,c!=d`: exact matches on a few fields per kind.
#[derive(Debug, Clone, Default)]
pub struct FieldSelector(Vec<(String, bool, String)>);

/// The fields each kind can be selected by (besides `metadata.name` and
/// `metadata.namespace`).
pub fn selectable_fields(kind: Kind) -> &'static [&'static str] {
    match kind {
        Kind::Account => &["status.phase", "spec.suspend"],
        Kind::Session => &[
            "status.phase",
            "status.account",
            "spec.account",
            "status.currentTask",
            "spec.suspend",
        ],
        Kind::Task => &[
            "status.phase",
            "status.session",
            "spec.session",
            "spec.priority",
            "spec.model",
        ],
        Kind::Swap => &["status.phase", "spec.from", "spec.to", "spec.reason"],
        Kind::Lease => &["spec.holderIdentity"],
        Kind::ManifestSync => &["spec.path", "spec.suspend", "status.revision"],
        Kind::SessionPool => &["spec.replicas", "spec.template.spec.account"],
        Kind::Node => &["status.daemon", "status.leading"],
    }
}

impl FieldSelector {
    pub fn parse(s: &str, kinds: &[Kind]) -> Result<FieldSelector> {
        let mut reqs = Vec::new();
        for term in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let (field, eq, value) = if let Some((f, v)) = term.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                (f, true, v)
            } else {
                bail!("--field-selector: `{term}` is not FIELD=VALUE or FIELD!=VALUE");
            };
            let field = field.trim();
            for &k in kinds {
                let ok = ["metadata.name", "metadata.namespace"].contains(&field)
                    || selectable_fields(k).contains(&field);
                if !ok {
                    bail!(
                        "--field-selector: field label not supported for {}: {field} (supported: metadata.name, metadata.namespace, {})",
                        k.plural(),
                        selectable_fields(k).join(", ")
                    );
                }
            }
            reqs.push((field.to_string(), eq, value.trim().to_string()));
        }
        Ok(FieldSelector(reqs))
    }

    pub fn matches(&self, v: &Value) -> bool {
        self.0.iter().all(|(field, eq, want)| {
            let ptr = format!("/{}", field.replace('.', "/"));
            let have = match v.pointer(&ptr) {
                None | Some(Value::Null) => String::new(),
                Some(Value::String(s)) => s.clone(),
                Some(other) => other.to_string(),
            };
            (have == *want) == *eq
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn resource_arguments() {
        assert_eq!(
            targets(&s(&["sessions,tasks", "a"])).unwrap(),
            [
                Target {
                    kind: Kind::Session,
                    names: s(&["a"])
                },
                Target {
                    kind: Kind::Task,
                    names: s(&["a"])
                }
            ]
        );
        assert_eq!(
            targets(&s(&["session/ccl-0", "task/t", "sess/ccl-1"])).unwrap(),
            [
                Target {
                    kind: Kind::Session,
                    names: s(&["ccl-0", "ccl-1"])
                },
                Target {
                    kind: Kind::Task,
                    names: s(&["t"])
                }
            ]
        );
        assert_eq!(targets(&s(&["all"])).unwrap().len(), 4);
        let e = targets(&s(&["session", "session/x"])).unwrap_err();
        assert!(
            e.to_string().contains("no need to specify a resource type"),
            "{e}"
        );
        for path in ["../x", "../../accounts/default/work", "a/b"] {
            let e = targets(&s(&["task", path])).unwrap_err().to_string();
            assert!(e.contains("is not a valid name"), "{path}: {e}");
        }
        assert!(targets(&[]).is_err());
    }

    #[test]
    fn did_you_mean() {
        let e = parse_kind("sesions").unwrap_err().to_string();
        assert!(e.contains("did you mean \"sessions\"?"), "{e}");
        let e = parse_kind("tsks").unwrap_err().to_string();
        assert!(e.contains("did you mean \"tasks\"?"), "{e}");
        let e = parse_kind("deployments").unwrap_err().to_string();
        assert!(!e.contains("did you mean"), "{e}");
        let e = parse_kind("pods").unwrap_err().to_string();
        assert!(e.contains("did you mean \"nodes\"?"), "{e}");
    }

    #[test]
    fn field_selectors() {
        let f =
            FieldSelector::parse("status.phase=Running,spec.session!=a", &[Kind::Task]).unwrap();
        assert!(f.matches(&json!({"status": {"phase": "Running"}, "spec": {"session": "b"}})));
        assert!(!f.matches(&json!({"status": {"phase": "Running"}, "spec": {"session": "a"}})));
        assert!(f.matches(&json!({"status": {"phase": "Running"}, "spec": {}})));
        let e = FieldSelector::parse("status.nope=1", &[Kind::Task]).unwrap_err();
        assert!(
            e.to_string()
                .contains("field label not supported for tasks: status.nope")
        );
        assert!(FieldSelector::parse("status.phase", &[Kind::Task]).is_err());
    }
}

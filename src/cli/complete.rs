//! Shell completion's engine: `__complete` (hidden), which the scripts of
//! `completion bash|zsh|fish` ([`super::completion`]) call with the words
//! typed, answers the candidates of the last one: subcommands, flags, flag
//! values, kinds, and the names of the objects in the store (with their
//! phase as a description).
//!
//! Why not clap_complete's scripts: they cannot know object names, and its
//! bash script's function names for a hyphenated program name do not match
//! its own `case` arms, so it completed nothing after the first word. Its
//! dynamic engine does ask the program back, but sits behind a
//! semver-exempt feature (`unstable-dynamic`). This is kubectl's (cobra's)
//! design: the program knows its arguments, the scripts only relay.
//! elvish and powershell keep clap_complete's static scripts.

use super::completion::CompletionShell;
use super::{Cli, Ctx, Global};
use crate::api::Kind;
use crate::output::FORMAT_NAMES;
use anyhow::Result;
use clap::{Arg, Args, Command, CommandFactory, ValueHint};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args, Debug)]
pub struct CompleteArgs {
    /// The shell asking (how candidates are written)
    #[arg(long, value_enum)]
    pub shell: CompletionShell,
    /// bash: its own current word (it splits at `=` and `:`)
    #[arg(long, allow_hyphen_values = true)]
    pub current: Option<String>,
    /// bash: the command line up to the cursor
    #[arg(long, allow_hyphen_values = true)]
    pub line: Option<String>,
    /// zsh, fish: the words after the program's name; the last is the one
    /// being completed (possibly empty)
    #[arg(last = true, allow_hyphen_values = true)]
    pub words: Vec<String>,
}

/// The shell asks for file names when this line is among the candidates
/// (the scripts know it).
pub(super) const FILES: &str = ":files";

/// Splits a command line like a shell (quotes, backslashes), tolerating an
/// unfinished quote at the end. A trailing space starts an empty word.
pub fn split_line(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some('"'), '\\') => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            (Some(_), c) => cur.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                in_word = true;
            }
            (None, '\\') => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
                in_word = true;
            }
            (None, c) if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            (None, c) => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    words.push(cur);
    words
}

/// One candidate: what is inserted, and a short description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub value: String,
    pub help: String,
}

/// What the word being typed can become.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Candidates {
    pub items: Vec<Candidate>,
    /// File names fit too (the shell lists them).
    pub files: bool,
}

impl Candidates {
    fn add(&mut self, value: impl Into<String>, help: impl Into<String>) {
        self.items.push(Candidate {
            value: value.into(),
            help: help.into(),
        });
    }
}

/// Where the objects' names come from: the store that the typed global
/// flags (`--store`, `-n`, `--config`) point at.
pub trait Names {
    /// Each object of `kind` in the namespace, with a short description.
    fn names(&self, kind: Kind) -> Vec<(String, String)>;
    fn namespaces(&self) -> Vec<String>;
}

struct StoreNames(Option<Ctx>);

impl Names for StoreNames {
    fn names(&self, kind: Kind) -> Vec<(String, String)> {
        let Some(ctx) = &self.0 else { return vec![] };
        let Ok(store) = ctx.store() else {
            return vec![];
        };
        store
            .list(kind, Some(ctx.namespace_of(kind)))
            .unwrap_or_default()
            .iter()
            .filter_map(|v| {
                let name = v.pointer("/metadata/name")?.as_str()?.to_string();
                let phase = v
                    .pointer("/status/phase")
                    .and_then(|p| p.as_str())
                    .unwrap_or(kind.name());
                Some((name, phase.to_string()))
            })
            .collect()
    }

    fn namespaces(&self) -> Vec<String> {
        let Some(ctx) = &self.0 else { return vec![] };
        let Ok(store) = ctx.store() else {
            return vec![];
        };
        let mut all: Vec<String> = Kind::ALL
            .iter()
            .flat_map(|k| store.namespaces(*k).unwrap_or_default())
            .collect();
        all.sort();
        all.dedup();
        all
    }
}

fn built() -> Command {
    let mut c = Cli::command();
    c.build();
    c
}

fn find_long<'a>(cmd: &'a Command, name: &str) -> Option<&'a Arg> {
    cmd.get_arguments().find(|a| {
        a.get_long() == Some(name) || a.get_all_aliases().is_some_and(|al| al.contains(&name))
    })
}

fn find_short(cmd: &Command, c: char) -> Option<&Arg> {
    cmd.get_arguments().find(|a| a.get_short() == Some(c))
}

fn takes_value(a: &Arg) -> bool {
    a.get_num_args().is_some_and(|n| n.takes_values()) && a.get_action().takes_values()
}

fn first_line(s: Option<&clap::builder::StyledStr>) -> String {
    s.map(|x| x.to_string())
        .unwrap_or_default()
        .lines()
        .next()
        .unwrap_or_default()
        .trim_end_matches('.')
        .to_string()
}

/// The global flags typed so far (for the store to read names from).
fn global_from(words: &[String]) -> Global {
    let mut g = Global {
        store: None,
        namespace: None,
        config: None,
    };
    let mut i = 0;
    while i < words.len() {
        let w = &words[i];
        let (flag, inline) = match w.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
            _ => (w.as_str(), None),
        };
        let value = || inline.clone().or_else(|| words.get(i + 1).cloned());
        match flag {
            "--store" => g.store = value().map(PathBuf::from),
            "-n" | "--namespace" => g.namespace = value(),
            "--config" => g.config = value().map(PathBuf::from),
            _ => {}
        }
        i += 1;
    }
    g
}

/// The candidates for the last of `words` (the words after the program's
/// name; the last one is being typed and may be empty).
pub fn candidates(words: &[String], names: &dyn Names) -> Candidates {
    let root = built();
    let (cur, prior) = match words.split_last() {
        Some((c, p)) => (c.as_str(), p),
        None => ("", &[][..]),
    };
    let mut cmd = &root;
    let mut parent: Option<&str> = None;
    let mut positionals: Vec<&str> = Vec::new();
    let mut pending: Option<&Arg> = None;
    let mut dashdash = false;
    for w in prior {
        if let Some(a) = pending.take() {
            let _ = a;
            continue;
        }
        if dashdash {
            positionals.push(w);
        } else if w == "--" {
            dashdash = true;
        } else if let Some(long) = w.strip_prefix("--") {
            if !long.contains('=')
                && let Some(a) = find_long(cmd, long)
                && takes_value(a)
            {
                pending = Some(a);
            }
        } else if w.len() > 1 && w.starts_with('-') {
            let shorts: Vec<char> = w[1..].chars().collect();
            for (i, c) in shorts.iter().enumerate() {
                if let Some(a) = find_short(cmd, *c)
                    && takes_value(a)
                {
                    if i == shorts.len() - 1 {
                        pending = Some(a);
                    }
                    break;
                }
            }
        } else if positionals.is_empty()
            && let Some(sub) = cmd.find_subcommand(w)
        {
            parent = Some(cmd.get_name());
            cmd = sub;
        } else {
            positionals.push(w);
        }
    }
    let mut out = Candidates::default();
    if let Some(a) = pending {
        values_of(cmd, a, "", cur, names, &mut out);
    } else if let Some((flag, partial)) = cur.strip_prefix("--").and_then(|l| l.split_once('=')) {
        if let Some(a) = find_long(cmd, flag) {
            values_of(cmd, a, &format!("--{flag}="), partial, names, &mut out);
        }
    } else if cur.starts_with('-') && !dashdash {
        flags(cmd, &mut out);
    } else if cmd.has_subcommands() && positionals.is_empty() {
        for s in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            out.add(s.get_name(), first_line(s.get_about()));
        }
    } else {
        positional(cmd, parent, &positionals, cur, names, &mut out);
    }
    out.items
        .retain(|c| c.value.starts_with(cur) || cur.is_empty());
    out
}

fn flags(cmd: &Command, out: &mut Candidates) {
    for a in cmd.get_arguments().filter(|a| !a.is_hide_set()) {
        let help = first_line(a.get_help());
        if let Some(l) = a.get_long() {
            out.add(format!("--{l}"), help.clone());
        }
        if let Some(s) = a.get_short() {
            out.add(format!("-{s}"), help);
        }
    }
}

/// Values of flag `a`, each prefixed with `prefix` (`--output=`).
fn values_of(
    cmd: &Command,
    a: &Arg,
    prefix: &str,
    partial: &str,
    names: &dyn Names,
    out: &mut Candidates,
) {
    let id = a.get_id().as_str();
    let mut add = |v: &str, h: &str| out.add(format!("{prefix}{v}"), h);
    match id {
        "namespace" => {
            for n in names.namespaces() {
                add(&n, "namespace");
            }
        }
        "output" if cmd.get_name() == "get" => {
            for f in FORMAT_NAMES {
                add(f, "output format");
            }
        }
        "for_" if cmd.get_name() == "wait" => {
            for (f, h) in [
                ("condition=", "a condition's status"),
                ("condition=Complete", "a task completed"),
                ("condition=Ready", "a session is ready"),
                (
                    "jsonpath=",
                    "a field's value: jsonpath='{.status.phase}'=Idle",
                ),
                ("create", "the objects exist"),
                ("delete", "the objects are gone"),
            ] {
                add(f, h);
            }
        }
        "for_" if cmd.get_name() == "events" => {
            for k in Kind::ALL {
                for (n, h) in names.names(k) {
                    add(&format!("{}/{n}", k.singular()), &h);
                }
            }
        }
        _ => {
            let pv: Vec<_> = a.get_possible_values();
            if !pv.is_empty() {
                for v in pv.iter().filter(|v| !v.is_hide_set()) {
                    add(v.get_name(), &first_line(v.get_help()));
                }
            } else if matches!(
                a.get_value_hint(),
                ValueHint::AnyPath | ValueHint::FilePath | ValueHint::DirPath
            ) {
                out.files = true;
            }
        }
    }
    let _ = partial;
}

/// Kinds as a resource argument (`all` for `get`), and `KIND/NAME` forms
/// once a `/` is typed; after a comma, more kinds.
fn resource_word(cmd: &str, cur: &str, names: &dyn Names, out: &mut Candidates) {
    if let Some((k, _)) = cur.split_once('/') {
        if let Some(kind) = Kind::from_cli(k) {
            for (n, h) in names.names(kind) {
                out.add(format!("{k}/{n}"), h);
            }
        }
        return;
    }
    let (head, _) = cur.rsplit_once(',').unwrap_or(("", cur));
    let head = if head.is_empty() {
        String::new()
    } else {
        format!("{head},")
    };
    for k in Kind::ALL {
        out.add(format!("{head}{}", k.plural()), k.name());
    }
    if cmd == "get" && head.is_empty() {
        out.add("all", "every kind");
    }
}

fn positional(
    cmd: &Command,
    parent: Option<&str>,
    positionals: &[&str],
    cur: &str,
    names: &dyn Names,
    out: &mut Candidates,
) {
    let name = cmd.get_name();
    // `rollout restart|status`, `scale`: a pool.
    if parent == Some("rollout") || name == "scale" {
        let kind = Kind::SessionPool;
        if positionals.is_empty() {
            out.add(kind.singular(), kind.name());
        } else {
            of_kind(kind, names, positionals, out);
        }
        return;
    }
    let of_kind = |kind: Kind, out: &mut Candidates| of_kind(kind, names, positionals, out);
    match name {
        "get" | "describe" | "delete" | "edit" | "patch" | "label" | "annotate" | "wait"
        | "suspend" | "resume" => {
            let first = positionals.first();
            match first {
                None => resource_word(name, cur, names, out),
                Some(f) if f.contains('/') => resource_word(name, cur, names, out),
                Some(f) => {
                    let kinds: Vec<Kind> = f
                        .split(',')
                        .flat_map(|k| {
                            if k == "all" {
                                Kind::ALL.to_vec()
                            } else {
                                Kind::from_cli(k).into_iter().collect()
                            }
                        })
                        .collect();
                    for k in kinds {
                        of_kind(k, out);
                    }
                }
            }
        }
        "logs" | "attach" if positionals.is_empty() => of_kind(Kind::Session, out),
        "cancel" | "restart" => {
            let kind = if name == "cancel" {
                Kind::Task
            } else {
                Kind::Session
            };
            if positionals.is_empty() {
                out.add(kind.singular(), kind.name());
            } else {
                of_kind(kind, out);
            }
        }
        "failover" if positionals.is_empty() => of_kind(Kind::Account, out),
        "explain" if positionals.is_empty() => explain_word(cur, out),
        _ => {
            // A positional with known values (`completion SHELL`).
            if let Some(a) = cmd.get_positionals().nth(positionals.len()) {
                for v in a.get_possible_values().iter().filter(|v| !v.is_hide_set()) {
                    out.add(v.get_name(), first_line(v.get_help()));
                }
                if matches!(
                    a.get_value_hint(),
                    ValueHint::AnyPath | ValueHint::FilePath | ValueHint::DirPath
                ) {
                    out.files = true;
                }
            }
        }
    }
}

/// The names of the objects of `kind`, but those already typed.
fn of_kind(kind: Kind, names: &dyn Names, positionals: &[&str], out: &mut Candidates) {
    for (n, h) in names.names(kind) {
        if !positionals.contains(&n.as_str()) {
            out.add(n, h);
        }
    }
}

/// `explain`: kinds, then their fields (`task.spec.`).
fn explain_word(cur: &str, out: &mut Candidates) {
    let Some((head, _)) = cur.rsplit_once('.') else {
        for k in Kind::ALL {
            out.add(k.singular(), k.name());
        }
        return;
    };
    let mut parts = head.split('.');
    let Some(kind) = parts.next().and_then(Kind::from_cli) else {
        return;
    };
    let crd = serde_json::to_value(kind.crd()).unwrap_or_default();
    let mut node = crd
        .pointer("/spec/versions/0/schema/openAPIV3Schema")
        .cloned()
        .unwrap_or_default();
    for p in parts {
        node = node
            .pointer(&format!("/properties/{p}"))
            .or_else(|| node.pointer(&format!("/items/properties/{p}")))
            .cloned()
            .unwrap_or_default();
    }
    let props = node
        .get("properties")
        .or_else(|| node.pointer("/items/properties"))
        .and_then(|p| p.as_object());
    for (f, s) in props.into_iter().flatten() {
        let desc = s
            .get("description")
            .and_then(|d| d.as_str())
            .unwrap_or_default()
            .lines()
            .next()
            .unwrap_or_default();
        out.add(format!("{head}.{f}"), desc);
    }
}

pub fn complete(a: CompleteArgs) -> Result<ExitCode> {
    let words = match &a.line {
        // bash: the line from the program's name to the cursor.
        Some(line) => split_line(line).into_iter().skip(1).collect(),
        None => a.words.clone(),
    };
    let words = if words.is_empty() {
        vec![String::new()]
    } else {
        words
    };
    let names = StoreNames(Ctx::resolve(&global_from(&words)).ok());
    let c = candidates(&words, &names);
    let full = words.last().map(String::as_str).unwrap_or_default();
    // bash splits words at `=` and `:`: insert only what follows its own
    // current word's start.
    let strip = match (&a.shell, &a.current) {
        (CompletionShell::Bash, Some(bcur)) => full.len().saturating_sub(bcur.len()),
        _ => 0,
    };
    let mut out = String::new();
    for item in &c.items {
        let v = item.value.get(strip..).unwrap_or(&item.value);
        match a.shell {
            CompletionShell::Bash => out.push_str(v),
            _ if item.help.is_empty() => out.push_str(v),
            _ => {
                out.push_str(v);
                out.push('\t');
                out.push_str(&item.help.replace(['\t', '\n'], " "));
            }
        }
        out.push('\n');
    }
    if c.files {
        out.push_str(FILES);
        out.push('\n');
    }
    use std::io::Write;
    let _ = std::io::stdout().write_all(out.as_bytes());
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed;
    impl Names for Fixed {
        fn names(&self, kind: Kind) -> Vec<(String, String)> {
            match kind {
                Kind::Session => vec![
                    ("ccl-0".into(), "Idle".into()),
                    ("ccl-1".into(), "Busy".into()),
                ],
                Kind::Task => vec![("fix-login".into(), "Pending".into())],
                Kind::Account => vec![("work".into(), "Available".into())],
                Kind::SessionPool => vec![("web".into(), "3/3".into())],
                Kind::Swap | Kind::Lease | Kind::ManifestSync | Kind::Node => vec![],
            }
        }
        fn namespaces(&self) -> Vec<String> {
            vec!["default".into(), "team-b".into()]
        }
    }

    fn values(line: &str) -> Vec<String> {
        let words = split_line(line);
        candidates(&words, &Fixed)
            .items
            .into_iter()
            .map(|c| c.value)
            .collect()
    }

    #[test]
    fn table() {
        assert!(values("ge").contains(&"get".to_string()));
        assert!(!values("").contains(&"__complete".to_string()));
        assert_eq!(values("get ses"), ["sessionpools", "sessions"]);
        assert_eq!(values("get sessions ccl-"), ["ccl-0", "ccl-1"]);
        assert_eq!(values("get sessions ccl-0 "), ["ccl-1"]);
        assert_eq!(values("get session/c"), ["session/ccl-0", "session/ccl-1"]);
        assert_eq!(values("get sessions,t"), ["sessions,tasks"]);
        assert_eq!(values("-n team-b describe tasks "), ["fix-login"]);
        assert_eq!(
            values("get sessions -o js"),
            ["json", "jsonpath=", "jsonpath-file=", "jsonpath-as-json="]
        );
        assert_eq!(values("get sessions --output=ya"), ["--output=yaml"]);
        assert_eq!(values("get -n t"), ["team-b"]);
        assert!(values("get sessions --sh").contains(&"--show-labels".to_string()));
        assert_eq!(values("logs c"), ["ccl-0", "ccl-1"]);
        assert_eq!(values("cancel "), ["task"]);
        assert_eq!(values("cancel task f"), ["fix-login"]);
        assert_eq!(values("rollout "), ["restart", "status"]);
        assert_eq!(values("rollout restart "), ["sessionpool"]);
        assert_eq!(values("rollout status sessionpool "), ["web"]);
        assert_eq!(values("restart session "), ["ccl-0", "ccl-1"]);
        assert_eq!(values("scale s"), ["sessionpool"]);
        assert_eq!(values("scale sessionpool w"), ["web"]);
        assert_eq!(values("completion f"), ["fish"]);
        assert_eq!(
            values("wait task fix-login --for=cond"),
            [
                "--for=condition=",
                "--for=condition=Complete",
                "--for=condition=Ready"
            ]
        );
        assert_eq!(values("explain task.spec.pri"), ["task.spec.priority"]);
        let words = split_line("apply -f ");
        assert!(candidates(&words, &Fixed).files);
    }

    #[test]
    fn line_splitting() {
        assert_eq!(split_line("get sessions "), ["get", "sessions", ""]);
        assert_eq!(split_line("get 'a b"), ["get", "a b"]);
        assert_eq!(split_line(r#"x "a\"b" c"#), ["x", "a\"b", "c"]);
    }
}

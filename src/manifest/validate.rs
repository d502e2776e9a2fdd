//! Semantic checks that serde cannot express: name syntax, ranges, and
//! well-formed references. Each problem comes with the field path, so the
//! caller can point at the line that holds it.

use super::yaml::Seg;
use crate::api::{Account, EnvValue, LabelSelector, ObjectMeta, Session, SessionPool, Task};
use std::collections::BTreeMap;

pub type Problem = (Vec<Seg>, String);

fn key(k: &str) -> Seg {
    Seg::Key(k.to_string())
}

fn at(path: &[&str]) -> Vec<Seg> {
    path.iter().map(|k| key(k)).collect()
}

/// A DNS-1123 label: what Session names (tmux session names), namespaces and
/// every other object name must be.
pub fn dns1123_label(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if s.len() > 63 {
        return Err(format!("`{s}` is longer than 63 characters"));
    }
    let ok_chars = s
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    let ok_ends = s.as_bytes()[0].is_ascii_alphanumeric()
        && s.as_bytes()[s.len() - 1].is_ascii_alphanumeric();
    if !ok_chars || !ok_ends {
        return Err(format!(
            "`{s}` is not a valid name: use lower-case letters, digits and '-', starting and ending with a letter or digit (DNS-1123 label)"
        ));
    }
    Ok(())
}

fn dns1123_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(|l| dns1123_label(l).is_ok())
}

/// `[prefix/]name` label and annotation keys, as Kubernetes defines them.
pub fn qualified_name(s: &str) -> Result<(), String> {
    let (prefix, name) = match s.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    if let Some(p) = prefix
        && !dns1123_subdomain(p)
    {
        return Err(format!("key `{s}`: prefix `{p}` must be a DNS subdomain"));
    }
    if name.is_empty() || name.len() > 63 || !label_value_chars(name) {
        return Err(format!(
            "key `{s}` must be 1-63 characters of letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
        ));
    }
    Ok(())
}

fn label_value_chars(v: &str) -> bool {
    let b = v.as_bytes();
    b.iter()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        && b.first().is_some_and(u8::is_ascii_alphanumeric)
        && b.last().is_some_and(u8::is_ascii_alphanumeric)
}

pub fn label_value(v: &str) -> Result<(), String> {
    if v.is_empty() {
        return Ok(());
    }
    if v.len() > 63 || !label_value_chars(v) {
        return Err(format!(
            "value `{v}` must be at most 63 characters of letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
        ));
    }
    Ok(())
}

fn check_meta(meta: &ObjectMeta, out: &mut Vec<Problem>) {
    match &meta.name {
        None => out.push((
            at(&["metadata", "name"]),
            "required field is missing".into(),
        )),
        Some(n) => {
            if let Err(e) = dns1123_label(n) {
                out.push((at(&["metadata", "name"]), e));
            }
        }
    }
    if meta.generate_name.is_some() {
        out.push((
            at(&["metadata", "generateName"]),
            "not supported: set metadata.name".into(),
        ));
    }
    if let Some(ns) = &meta.namespace
        && let Err(e) = dns1123_label(ns)
    {
        out.push((at(&["metadata", "namespace"]), e));
    }
    for (k, v) in meta.labels.iter().flatten() {
        if let Err(e) = qualified_name(k) {
            out.push((at(&["metadata", "labels", k]), e));
        } else if let Err(e) = label_value(v) {
            out.push((at(&["metadata", "labels", k]), e));
        }
    }
    for k in meta.annotations.iter().flatten().map(|(k, _)| k) {
        if let Err(e) = qualified_name(k) {
            out.push((at(&["metadata", "annotations", k]), e));
        }
    }
}

/// A one-line value (a path, a name, a command): no control character at
/// all, line breaks and tabs included.
fn single_line(value: &str) -> Result<(), String> {
    match value.chars().find(|c| c.is_control()) {
        Some(c) => Err(format!(
            "contains the control character U+{:04X}: this field is one line of text",
            c as u32
        )),
        None => Ok(()),
    }
}

fn check_line(value: &str, path: &[&str], out: &mut Vec<Problem>) {
    if let Err(e) = single_line(value) {
        out.push((at(path), e));
    }
}

fn check_path(value: &str, path: &[&str], out: &mut Vec<Problem>) {
    if let Err(e) = single_line(value) {
        out.push((at(path), e));
    } else if value.trim().is_empty() {
        out.push((at(path), "must not be empty".into()));
    } else if !(value.starts_with('/') || value == "~" || value.starts_with("~/")) {
        out.push((
            at(path),
            format!("`{value}` must be an absolute path (or start with ~/)"),
        ));
    }
}

fn check_reference(value: &str, path: &[&str], what: &str, out: &mut Vec<Problem>) {
    if let Err(e) = dns1123_label(value) {
        out.push((at(path), format!("must name {what}: {e}")));
    }
}

pub fn check_selector(sel: &LabelSelector, base: &[&str], out: &mut Vec<Problem>) {
    for (k, v) in sel.match_labels.iter().flatten() {
        let mut p = at(base);
        p.push(key("matchLabels"));
        p.push(key(k));
        if let Err(e) = qualified_name(k).and_then(|_| label_value(v)) {
            out.push((p, e));
        }
    }
    for (i, req) in sel.match_expressions.iter().flatten().enumerate() {
        let mut p = at(base);
        p.push(key("matchExpressions"));
        p.push(Seg::Index(i));
        if let Err(e) = qualified_name(&req.key) {
            let mut kp = p.clone();
            kp.push(key("key"));
            out.push((kp, e));
        }
        let has_values = req.values.as_ref().is_some_and(|v| !v.is_empty());
        let problem = match req.operator.as_str() {
            "In" | "NotIn" if !has_values => Some("operator In and NotIn need at least one value"),
            "Exists" | "DoesNotExist" if has_values => {
                Some("operator Exists and DoesNotExist take no values")
            }
            "In" | "NotIn" | "Exists" | "DoesNotExist" => None,
            _ => Some("operator must be one of In, NotIn, Exists, DoesNotExist"),
        };
        if let Some(msg) = problem {
            p.push(key("operator"));
            out.push((p, msg.into()));
        }
    }
}

pub fn account(a: &Account) -> Vec<Problem> {
    let mut out = Vec::new();
    check_meta(&a.metadata, &mut out);
    check_path(&a.spec.config_dir, &["spec", "configDir"], &mut out);
    let t = &a.spec.thresholds;
    for (field, v) in [
        ("fiveHour", Some(t.five_hour)),
        ("sevenDay", Some(t.seven_day)),
        ("sevenDayOpus", t.seven_day_opus),
        ("sevenDaySonnet", t.seven_day_sonnet),
    ]
    .into_iter()
    .filter_map(|(f, v)| Some((f, v?)))
    {
        if !(1..=100).contains(&v) {
            out.push((
                at(&["spec", "thresholds", field]),
                format!("{v} is out of range: must be 1..=100 (percent)"),
            ));
        }
    }
    out
}

fn env_name_ok(k: &str) -> bool {
    let b = k.as_bytes();
    !b.is_empty()
        && (b[0].is_ascii_alphabetic() || b[0] == b'_')
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
}

pub fn session(s: &Session) -> Vec<Problem> {
    let mut out = Vec::new();
    check_meta(&s.metadata, &mut out);
    check_path(&s.spec.workdir, &["spec", "workdir"], &mut out);
    if let Some(acc) = &s.spec.account {
        check_reference(acc, &["spec", "account"], "an Account", &mut out);
    }
    if s.spec.agent.command.trim().is_empty() {
        out.push((
            at(&["spec", "agent", "command"]),
            "must not be empty".into(),
        ));
    }
    check_line(
        &s.spec.agent.command,
        &["spec", "agent", "command"],
        &mut out,
    );
    for (i, a) in s.spec.agent.args.iter().enumerate() {
        if let Err(e) = single_line(a) {
            let mut p = at(&["spec", "agent", "args"]);
            p.push(Seg::Index(i));
            out.push((p, e));
        }
    }
    if let Some(m) = &s.spec.agent.model {
        if m.trim().is_empty() {
            out.push((
                at(&["spec", "agent", "model"]),
                "must not be empty when set".into(),
            ));
        }
        check_line(m, &["spec", "agent", "model"], &mut out);
    }
    check_env(&s.spec.agent.env, &mut out);
    for k in s.spec.agent.env.keys() {
        if let Some(why) = crate::agent::launch::misplaced_env(k) {
            out.push((
                at(&["spec", "agent", "env", k]),
                format!("remove it: {why}"),
            ));
        }
    }
    if let Some(why) = crate::agent::launch::permission_conflict(&s.spec.agent) {
        out.push((at(&["spec", "agent", "args"]), why));
    }
    if let Some(sb) = &s.spec.standby {
        check_standby(sb, &mut out);
    }
    out
}

fn check_standby(sb: &crate::api::StandbySpec, out: &mut Vec<Problem>) {
    let path = at(&["spec", "standby", "perTarget"]);
    match sb.per_target {
        Some(0) => out.push((
            path,
            "0 is out of range: at least 1 standby per target (mode: off keeps none)".into(),
        )),
        Some(_) if sb.mode != crate::api::StandbyMode::Warm => out.push((
            path,
            "bounds warm standbys: set mode: warm, or remove perTarget".into(),
        )),
        _ => {}
    }
}

fn check_env(env: &BTreeMap<String, EnvValue>, out: &mut Vec<Problem>) {
    for (k, v) in env {
        let path = ["spec", "agent", "env", k.as_str()];
        if !env_name_ok(k) {
            out.push((
                at(&path),
                format!("`{k}` is not a valid environment variable name"),
            ));
            continue;
        }
        match v {
            EnvValue::Value(value) => {
                if let Some(why) = crate::agent::env::looks_secret(k, value) {
                    out.push((
                        at(&path),
                        format!(
                            "a literal value that looks like a secret ({why}) is refused: the store never holds one. Put it in a file only you can read (chmod 600) and write `{k}: {{valueFrom: {{file: /path/to/file}}}}`"
                        ),
                    ));
                } else {
                    check_line(value, &path, out);
                }
            }
            EnvValue::FromFile(file) => {
                let mut p = path.to_vec();
                p.extend(["valueFrom", "file"]);
                check_path(file, &p, out);
            }
        }
    }
}

pub fn task(t: &Task) -> Vec<Problem> {
    let mut out = Vec::new();
    check_meta(&t.metadata, &mut out);
    if t.spec.prompt.trim().is_empty() {
        out.push((at(&["spec", "prompt"]), "must not be empty".into()));
    }
    if let Some(s) = &t.spec.session {
        check_reference(s, &["spec", "session"], "a Session", &mut out);
        if t.spec.session_selector.is_some() || t.spec.workdir.is_some() {
            out.push((
                at(&["spec", "session"]),
                "names one session: do not combine it with sessionSelector or workdir".into(),
            ));
        }
    }
    if let Some(sel) = &t.spec.session_selector {
        check_selector(sel, &["spec", "sessionSelector"], &mut out);
    }
    if let Some(w) = &t.spec.workdir {
        check_path(w, &["spec", "workdir"], &mut out);
    }
    if let Some(m) = &t.spec.model {
        if m.trim().is_empty() {
            out.push((at(&["spec", "model"]), "must not be empty when set".into()));
        }
        check_line(m, &["spec", "model"], &mut out);
    }
    // Durations are whole seconds, at least one: 0 would time an attempt
    // out before the agent saw it (and retry it at once).
    if t.spec.timeout_seconds == Some(0) {
        out.push((
            at(&["spec", "timeoutSeconds"]),
            "0 is out of range: a timeout is at least 1 (second)".into(),
        ));
    }
    if t.spec.max_attempts == Some(0) {
        out.push((
            at(&["spec", "maxAttempts"]),
            "0 is out of range: at least 1 attempt".into(),
        ));
    }
    out
}

/// The most Sessions one pool may hold.
pub const MAX_POOL_REPLICAS: u32 = 1000;

/// A pool: its own metadata, its template's Session (each problem at its
/// place under `spec.template`), the names its Sessions will take, and a
/// selector that matches what the template labels.
pub fn session_pool(p: &SessionPool) -> Vec<Problem> {
    let mut out = Vec::new();
    check_meta(&p.metadata, &mut out);
    if p.spec.replicas > MAX_POOL_REPLICAS {
        out.push((
            at(&["spec", "replicas"]),
            format!("at most {MAX_POOL_REPLICAS}"),
        ));
    }
    if let Some(name) = &p.metadata.name {
        let last = crate::api::member_name(name, MAX_POOL_REPLICAS.max(p.spec.replicas));
        if dns1123_label(&last).is_err() {
            out.push((
                at(&["metadata", "name"]),
                format!("too long for its Sessions' names ({last})"),
            ));
        }
    }
    let member = Session {
        metadata: ObjectMeta {
            name: Some("member".into()),
            labels: Some(p.spec.template.metadata.labels.clone()),
            ..ObjectMeta::default()
        },
        spec: p.spec.template.spec.clone(),
        status: None,
    };
    for (path, msg) in session(&member) {
        let mut full = at(&["spec", "template"]);
        full.extend(path);
        out.push((full, msg));
    }
    if let Some(a) = &p.spec.autoscale {
        if a.min > a.max {
            out.push((
                at(&["spec", "autoscale", "min"]),
                format!("more than max ({})", a.max),
            ));
        }
        if a.max > MAX_POOL_REPLICAS {
            out.push((
                at(&["spec", "autoscale", "max"]),
                format!("at most {MAX_POOL_REPLICAS}"),
            ));
        }
    }
    if let Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(v)) = p
        .spec
        .update_strategy
        .rolling_update
        .as_ref()
        .and_then(|r| r.max_unavailable.as_ref())
        && crate::api::sessionpool_percent(v).is_none()
    {
        out.push((
            at(&["spec", "updateStrategy", "rollingUpdate", "maxUnavailable"]),
            format!("{v:?} is neither a number nor a percentage (0% to 100%)"),
        ));
    }
    if let Some(sel) = &p.spec.selector {
        let s = crate::selector::Selector::from_label_selector(sel);
        if !s.matches(Some(&p.spec.template.metadata.labels)) {
            out.push((
                at(&["spec", "selector"]),
                "does not match the template's labels (spec.template.metadata.labels)".into(),
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(dns1123_label("ccl-0").is_ok());
        assert!(dns1123_label("Ccl").is_err());
        assert!(dns1123_label("-a").is_err());
        assert!(dns1123_label("a_b").is_err());
        assert!(dns1123_label(&"a".repeat(64)).is_err());
        assert!(qualified_name("example.com/team").is_ok());
        assert!(qualified_name("team").is_ok());
        assert!(qualified_name("Bad Key").is_err());
        assert!(qualified_name("UPPER.com/x").is_err());
        assert!(label_value("").is_ok());
        assert!(label_value("api_v1.2").is_ok());
        assert!(label_value("-x").is_err());
    }

    #[test]
    fn a_pool_is_checked_with_its_template_in_place() {
        let pool = |spec: serde_json::Value| -> SessionPool {
            serde_json::from_value(serde_json::json!({
                "apiVersion": "claude-failover.io/v1alpha1", "kind": "SessionPool",
                "metadata": {"name": "web"}, "spec": spec
            }))
            .unwrap()
        };
        let paths = |p: &SessionPool| -> Vec<String> {
            session_pool(p)
                .into_iter()
                .map(|(path, _)| crate::manifest::yaml::path_string(&path))
                .collect()
        };
        let ok = pool(serde_json::json!({"replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"workdir": "/w"}}}));
        assert!(paths(&ok).is_empty(), "{:?}", paths(&ok));
        let bad = pool(serde_json::json!({"replicas": 2000,
            "selector": {"matchLabels": {"app": "api"}},
            "autoscale": {"min": 3, "max": 2},
            "updateStrategy": {"rollingUpdate": {"maxUnavailable": "half"}},
            "template": {"metadata": {"labels": {"app": "web"}},
                         "spec": {"workdir": "/w", "agent": {"command": ""}}}}));
        assert_eq!(
            paths(&bad),
            [
                "spec.replicas",
                "spec.template.spec.agent.command",
                "spec.autoscale.min",
                "spec.updateStrategy.rollingUpdate.maxUnavailable",
                "spec.selector"
            ]
        );
        for (standby, problem) in [
            (serde_json::json!({"mode": "warm", "perTarget": 2}), None),
            (
                serde_json::json!({"mode": "warm", "perTarget": 0}),
                Some("0 is out of range"),
            ),
            (serde_json::json!({"perTarget": 2}), Some("set mode: warm")),
        ] {
            let p = pool(serde_json::json!({"replicas": 2,
                "template": {"spec": {"workdir": "/w", "standby": standby}}}));
            let got = session_pool(&p);
            match problem {
                None => assert!(got.is_empty(), "{got:?}"),
                Some(m) => {
                    assert_eq!(got.len(), 1, "{got:?}");
                    assert_eq!(
                        crate::manifest::yaml::path_string(&got[0].0),
                        "spec.template.spec.standby.perTarget"
                    );
                    assert!(got[0].1.contains(m), "{}", got[0].1);
                }
            }
        }
    }
}

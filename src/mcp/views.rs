//! What the tools and resources show of the objects (pure): short
//! summaries for lists, whole objects with their secrets hidden for
//! `describe`, the pool's status, and the checks a failover request must
//! pass before it is sent.
//!
//! No secret reaches a result: the store holds none by design, and a
//! Session's `spec.agent.env` values (which may hold an API key) are
//! replaced by [`HIDDEN`] wherever an object is shown.

use super::delegation;
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;

/// What a hidden value reads as.
pub const HIDDEN: &str = "(hidden)";
/// Prompts and results are cut to this many characters in lists.
const SHORT: usize = 200;

fn s<'a>(v: &'a Value, pointer: &str) -> Option<&'a str> {
    v.pointer(pointer).and_then(Value::as_str)
}

fn short(text: &str) -> String {
    if text.chars().count() <= SHORT {
        return text.to_string();
    }
    let mut out: String = text.chars().take(SHORT).collect();
    out.push('…');
    out
}

/// Puts `(key, value)` into `m` unless the value is null.
fn put(m: &mut Map<String, Value>, key: &str, value: Option<Value>) {
    if let Some(v) = value.filter(|v| !v.is_null()) {
        m.insert(key.to_string(), v);
    }
}

/// The object with every `spec.agent.env` value hidden.
pub fn redact(obj: &Value) -> Value {
    let mut v = obj.clone();
    if let Some(env) = v
        .pointer_mut("/spec/agent/env")
        .and_then(Value::as_object_mut)
    {
        for val in env.values_mut() {
            *val = json!(HIDDEN);
        }
    }
    v
}

fn conditions(v: &Value) -> Option<Value> {
    let list: Vec<Value> = v
        .pointer("/status/conditions")?
        .as_array()?
        .iter()
        .map(|c| {
            let mut m = Map::new();
            for k in ["type", "status", "reason", "message"] {
                put(&mut m, k, c.get(k).cloned());
            }
            Value::Object(m)
        })
        .collect();
    (!list.is_empty()).then_some(Value::Array(list))
}

/// A field of a summary: its name and where it is in the object.
type Field = (&'static str, &'static str);

/// The summary's fields, each copied from its place when set.
fn pick(v: &Value, fields: &[Field]) -> Map<String, Value> {
    let mut m = Map::new();
    for (key, pointer) in fields {
        put(&mut m, key, v.pointer(pointer).cloned());
    }
    m
}

/// `name`, `namespace` and `phase` (`default` when it has none).
fn head(v: &Value, default: &str) -> Map<String, Value> {
    let mut m = pick(
        v,
        &[
            ("name", "/metadata/name"),
            ("namespace", "/metadata/namespace"),
        ],
    );
    m.insert("phase".into(), json!(phase(v).unwrap_or(default)));
    m
}

/// A Session in a list.
pub fn session(v: &Value) -> Value {
    let mut m = head(v, "Pending");
    m.extend(pick(
        v,
        &[
            ("account", "/status/account"),
            ("preferredAccount", "/spec/account"),
            ("currentTask", "/status/currentTask"),
            ("labels", "/metadata/labels"),
            ("workdir", "/spec/workdir"),
            ("model", "/spec/agent/model"),
            ("mcp", "/spec/agent/mcp"),
            ("suspend", "/spec/suspend"),
            ("restarts", "/status/restarts"),
            ("lastActivity", "/status/lastActivity"),
            ("lastSwap", "/status/lastSwap"),
        ],
    ));
    put(&mut m, "conditions", conditions(v));
    Value::Object(m)
}

/// An Account in a list: its usage, phase, reset times and projection.
pub fn account(v: &Value) -> Value {
    let mut m = head(v, "Unknown");
    m.extend(pick(
        v,
        &[
            ("priority", "/spec/priority"),
            ("suspend", "/spec/suspend"),
            ("thresholds", "/spec/thresholds"),
            ("usage", "/status/usage"),
            ("limit", "/status/limit"),
            ("projectedLimitAt", "/status/projectedLimitAt"),
            ("sessions", "/status/sessions"),
        ],
    ));
    put(&mut m, "conditions", conditions(v));
    Value::Object(m)
}

/// A Task in a list: where it runs, how it went, and its delegation.
pub fn task(v: &Value) -> Value {
    let mut m = head(v, "Pending");
    m.insert(
        "priority".into(),
        v.pointer("/spec/priority")
            .cloned()
            .unwrap_or(json!("normal")),
    );
    put(
        &mut m,
        "prompt",
        s(v, "/spec/prompt").map(|p| json!(short(p))),
    );
    put(&mut m, "session", v.pointer("/status/session").cloned());
    let target = pick(
        v,
        &[
            ("session", "/spec/session"),
            ("sessionSelector", "/spec/sessionSelector"),
            ("workdir", "/spec/workdir"),
        ],
    );
    if !target.is_empty() {
        m.insert("target".into(), Value::Object(target));
    }
    m.extend(pick(
        v,
        &[("model", "/status/model"), ("attempts", "/status/attempts")],
    ));
    put(&mut m, "result", s(v, "/status/message").map(|r| json!(r)));
    m.extend(pick(
        v,
        &[
            ("createdAt", "/metadata/creationTimestamp"),
            ("startedAt", "/status/startedAt"),
            ("finishedAt", "/status/finishedAt"),
        ],
    ));
    let depth = delegation::depth_of(v);
    if depth > 0 {
        m.insert("delegationDepth".into(), json!(depth));
        put(
            &mut m,
            "parentTask",
            delegation::parent_of(v).map(|p| json!(p)),
        );
        let by = format!(
            "/metadata/annotations/{}",
            delegation::DELEGATED_BY.replace('/', "~1")
        );
        put(&mut m, "delegatedBy", v.pointer(&by).cloned());
    }
    Value::Object(m)
}

/// Whether a task phase is final.
pub fn finished(phase: Option<&str>) -> bool {
    matches!(phase, Some("Succeeded" | "Failed" | "Cancelled"))
}

/// The phase of an object (`status.phase`).
pub fn phase(v: &Value) -> Option<&str> {
    s(v, "/status/phase")
}

/// Counts of `items` by `status.phase` (`default` when it has none).
fn by_phase(items: &[Value], default: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for i in items {
        *out.entry(phase(i).unwrap_or(default).to_string())
            .or_insert(0) += 1;
    }
    out
}

/// The pool at a glance: sessions and tasks by phase, the queue, each
/// account's phase and usage.
pub fn pool_status(accounts: &[Value], sessions: &[Value], tasks: &[Value]) -> Value {
    let queued: Vec<Value> = tasks
        .iter()
        .filter(|t| matches!(phase(t), None | Some("Pending")))
        .map(|t| json!(s(t, "/metadata/name")))
        .collect();
    json!({
        "sessions": {
            "total": sessions.len(),
            "byPhase": by_phase(sessions, "Pending"),
            "items": sessions.iter().map(|v| json!({
                "name": s(v, "/metadata/name"),
                "namespace": s(v, "/metadata/namespace"),
                "phase": phase(v).unwrap_or("Pending"),
                "account": s(v, "/status/account"),
                "currentTask": s(v, "/status/currentTask"),
            })).collect::<Vec<_>>(),
        },
        "tasks": {
            "total": tasks.len(),
            "byPhase": by_phase(tasks, "Pending"),
            "queued": queued,
        },
        "accounts": accounts.iter().map(account).collect::<Vec<_>>(),
    })
}

/// Whether an account can take sessions now: not suspended, and Available
/// (or not yet observed).
fn takes_sessions(a: &Value) -> Result<(), String> {
    if a.pointer("/spec/suspend").and_then(Value::as_bool) == Some(true) {
        return Err("suspended".into());
    }
    if let Some((until, why)) = crate::api::set_aside_now(a) {
        let name = s(a, "/metadata/name").unwrap_or_default();
        return Err(format!(
            "set aside as a target until {until} ({why}); `claude-failover reinstate {name}` takes it back"
        ));
    }
    match phase(a) {
        None | Some("Available") => Ok(()),
        Some(p) => Err(p.to_string()),
    }
}

/// The checks of a failover request, before it is sent (the API checks
/// that the accounts exist too): `account` exists, `to` is another existing
/// account able to take sessions, some session runs on `account`, and
/// without `to`, some other account can take them. Ok: what will happen.
pub fn failover_check(
    accounts: &[Value],
    sessions: &[Value],
    namespace: &str,
    account: &str,
    to: Option<&str>,
) -> Result<String, String> {
    let find = |n: &str| {
        accounts
            .iter()
            .find(|a| s(a, "/metadata/name") == Some(n))
            .ok_or_else(|| format!("account {n} not found in namespace {namespace}"))
    };
    find(account)?;
    let running: Vec<&str> = sessions
        .iter()
        .filter(|v| s(v, "/status/account").or_else(|| s(v, "/spec/account")) == Some(account))
        .filter_map(|v| s(v, "/metadata/name"))
        .collect();
    if let Some(t) = to {
        if t == account {
            return Err(format!(
                "to: the target must be another account than {account}"
            ));
        }
        takes_sessions(find(t)?)
            .map_err(|why| format!("account {t} cannot take sessions now ({why})"))?;
    }
    if running.is_empty() {
        return Err(format!(
            "no session runs on account {account}: nothing to move"
        ));
    }
    let target = match to {
        Some(t) => format!("account {t}"),
        None => {
            let others: Vec<(&str, Result<(), String>)> = accounts
                .iter()
                .filter_map(|a| s(a, "/metadata/name").map(|n| (n, a)))
                .filter(|(n, _)| *n != account)
                .map(|(n, a)| (n, takes_sessions(a)))
                .collect();
            if !others.iter().any(|(_, r)| r.is_ok()) {
                let why: Vec<String> = others
                    .iter()
                    .map(|(n, r)| format!("{n}: {}", r.as_ref().err().cloned().unwrap_or_default()))
                    .collect();
                return Err(if why.is_empty() {
                    format!("no other account in namespace {namespace} to move to")
                } else {
                    format!(
                        "no other account can take the sessions ({})",
                        why.join(", ")
                    )
                });
            }
            "the account the failover policy chooses".to_string()
        }
    };
    Ok(format!(
        "sessions {} move from account {account} to {target}",
        running.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acct(name: &str, phase: &str, suspend: bool) -> Value {
        json!({"metadata": {"name": name, "namespace": "default"},
               "spec": {"suspend": suspend, "priority": 1},
               "status": {"phase": phase}})
    }

    fn sess(name: &str, account: &str) -> Value {
        json!({"metadata": {"name": name, "namespace": "default"},
               "spec": {"workdir": "/w", "agent": {"env": {"ANTHROPIC_API_KEY": "sk-ant-secret"}}},
               "status": {"phase": "Idle", "account": account}})
    }

    #[test]
    fn secrets_are_hidden() {
        let v = sess("s", "a");
        let r = redact(&v);
        assert_eq!(r["spec"]["agent"]["env"]["ANTHROPIC_API_KEY"], HIDDEN);
        assert!(
            !session(&v).to_string().contains("sk-ant"),
            "lists never show env"
        );
        assert!(!r.to_string().contains("sk-ant"));
    }

    #[test]
    fn summaries_keep_what_matters() {
        let t = json!({"metadata": {"name": "t", "namespace": "default",
                         "annotations": {delegation::DEPTH: "1", delegation::PARENT: "p", delegation::DELEGATED_BY: "a"}},
                       "spec": {"prompt": "x".repeat(300), "session": "b"},
                       "status": {"phase": "Succeeded", "message": "done: 42", "session": "b"}});
        let v = task(&t);
        assert_eq!(v["result"], "done: 42");
        assert_eq!(v["parentTask"], "p");
        assert_eq!(v["delegatedBy"], "a");
        assert_eq!(v["delegationDepth"], 1);
        assert_eq!(v["target"]["session"], "b");
        assert_eq!(v["prompt"].as_str().unwrap().chars().count(), SHORT + 1);
        let p = pool_status(
            &[acct("a", "Available", false)],
            &[sess("s", "a")],
            &[t, json!({"metadata": {"name": "q"}})],
        );
        assert_eq!(p["tasks"]["byPhase"]["Pending"], 1);
        assert_eq!(p["tasks"]["queued"], json!(["q"]));
        assert_eq!(p["sessions"]["byPhase"]["Idle"], 1);
        assert_eq!(p["accounts"][0]["phase"], "Available");
        assert!(finished(Some("Cancelled")) && !finished(Some("Running")) && !finished(None));
    }

    #[test]
    fn failover_checks_fail_fast_with_the_reason() {
        let accounts = [
            acct("a", "NearLimit", false),
            acct("b", "Exhausted", false),
            acct("c", "Available", true),
        ];
        let sessions = [sess("s1", "a"), sess("s2", "b")];
        let check = |account: &str, to: Option<&str>| {
            failover_check(&accounts, &sessions, "default", account, to)
        };
        assert_eq!(
            check("x", None).unwrap_err(),
            "account x not found in namespace default"
        );
        assert!(
            check("a", Some("a"))
                .unwrap_err()
                .contains("another account")
        );
        assert_eq!(
            check("a", Some("z")).unwrap_err(),
            "account z not found in namespace default"
        );
        assert_eq!(
            check("a", Some("b")).unwrap_err(),
            "account b cannot take sessions now (Exhausted)"
        );
        assert_eq!(
            check("a", Some("c")).unwrap_err(),
            "account c cannot take sessions now (suspended)"
        );
        assert_eq!(
            check("a", None).unwrap_err(),
            "no other account can take the sessions (b: Exhausted, c: suspended)"
        );
        assert_eq!(
            check("c", None).unwrap_err(),
            "no session runs on account c: nothing to move"
        );
        let mut ok = accounts.to_vec();
        ok.push(acct("d", "Available", false));
        assert_eq!(
            failover_check(&ok, &sessions, "default", "a", None).unwrap(),
            "sessions s1 move from account a to the account the failover policy chooses"
        );
        assert_eq!(
            failover_check(&ok, &sessions, "default", "a", Some("d")).unwrap(),
            "sessions s1 move from account a to account d"
        );
        // Set aside after a failed swap: refused, with the way out.
        ok[3]["status"]["failover"] = serde_json::json!({"setAside": {
            "until": "2999-01-01T00:00:00Z", "reason": "a swap to it failed"}});
        let why = failover_check(&ok, &sessions, "default", "a", Some("d")).unwrap_err();
        assert!(
            why.contains("set aside") && why.contains("claude-failover reinstate d"),
            "{why}"
        );
        // Once it has passed, no longer.
        ok[3]["status"]["failover"]["setAside"]["until"] = "2000-01-01T00:00:00Z".into();
        assert!(failover_check(&ok, &sessions, "default", "a", Some("d")).is_ok());
    }
}

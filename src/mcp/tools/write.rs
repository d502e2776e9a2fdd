//! The write tools: creating tasks (and agents' delegation), cancelling
//! them, restarting sessions, requesting failovers. Each records who asked.

use super::params::*;
use super::read::{wait_for_task, wait_limit, waited};
use super::{Shared, ToolError, ToolResult, name_arg, namespace};
use crate::api::{Kind, ObjectKey};
use crate::mcp::delegation;
use crate::mcp::pool::PoolError;
use crate::mcp::scope::Caller;
use crate::mcp::views;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

pub(super) async fn create_task(
    shared: &Shared,
    caller: &Caller,
    p: Result<CreateTask, ToolError>,
) -> ToolResult {
    let p = p?;
    let ns = namespace(shared, caller, p.namespace.clone())?;
    let name = match &p.name {
        Some(n) => {
            name_arg("name", n)?;
            n.clone()
        }
        None => format!("mcp-{}", crate::secret::random_hex(4)),
    };
    let mut annotations = serde_json::Map::new();
    if let Some(agent) = caller.agent_session() {
        let d = delegate(shared, agent, &p).await?;
        for (k, v) in d.annotations() {
            annotations.insert(k.into(), json!(v));
        }
    }
    let mut spec = serde_json::Map::new();
    spec.insert("prompt".into(), json!(p.prompt));
    let opt = |spec: &mut serde_json::Map<String, Value>, k: &str, v: Value| {
        if !v.is_null() {
            spec.insert(k.into(), v);
        }
    };
    opt(&mut spec, "priority", json!(p.priority));
    opt(&mut spec, "model", json!(p.model));
    opt(&mut spec, "session", json!(p.session));
    if let Some(sel) = &p.selector {
        let sel = crate::selector::Selector::parse(sel)
            .map_err(|e| ToolError(format!("selector: {e}")))?;
        spec.insert("sessionSelector".into(), json!(sel.to_label_selector()));
    }
    opt(&mut spec, "workdir", json!(p.workdir));
    opt(&mut spec, "timeoutSeconds", json!(p.timeout_seconds));
    opt(&mut spec, "maxAttempts", json!(p.max_attempts));
    let mut metadata = json!({"name": name, "namespace": ns});
    if !annotations.is_empty() {
        metadata["annotations"] = Value::Object(annotations);
    }
    let manifest = json!({
        "apiVersion": crate::api::API_VERSION,
        "kind": "Task",
        "metadata": metadata,
        "spec": spec,
    });
    let created = shared.pool.create_task(&ns, manifest).await?;
    let key = ObjectKey::new(Kind::Task, &ns, &name);
    let parent = delegation::parent_of(&created)
        .map(|p| {
            format!(
                ", delegated from task {p} at depth {}",
                delegation::depth_of(&created)
            )
        })
        .unwrap_or_default();
    shared
        .pool
        .record_origin(&key, format!("created by {}{parent}", caller.describe()))
        .await;
    let wait = wait_limit(p.wait_seconds, Duration::ZERO);
    if wait.is_zero() {
        return Ok(json!({"created": true, "task": views::task(&created)}));
    }
    let (task, done, why) = wait_for_task(shared, &key, wait).await?;
    let mut v = waited(&task, done, wait, why);
    v["created"] = json!(true);
    Ok(v)
}

/// The checks and the record of an agent's delegation: the rate, the
/// target (never its own session, some other session must match), the
/// depth.
async fn delegate(
    shared: &Shared,
    agent: &ObjectKey,
    p: &CreateTask,
) -> Result<delegation::Delegation, ToolError> {
    if let Err(wait) = shared.rate.take(agent, Instant::now()) {
        return Err(ToolError(shared.rate.refusal(&agent.name, wait)));
    }
    let me = shared
        .pool
        .get(agent)
        .await?
        .value
        .ok_or_else(|| ToolError(format!("session {} no longer exists", agent.name)))?;
    // The task the agent is working on: the one in flight on its session
    // (the Session's currentTask can lag behind a quick turn, and a stale
    // one would make a delegation look shallower than it is).
    let tasks = shared
        .pool
        .list(Kind::Task, Some(&agent.namespace))
        .await?
        .value;
    let in_flight = tasks
        .iter()
        .filter(|t| t.pointer("/status/session").and_then(Value::as_str) == Some(&agent.name))
        .filter(|t| {
            matches!(
                t.pointer("/status/phase").and_then(Value::as_str),
                Some("Dispatched" | "Running")
            )
        })
        .max_by_key(|t| {
            t.pointer("/status/dispatchedAt")
                .and_then(Value::as_str)
                .map(str::to_string)
        });
    let current = match in_flight {
        Some(t) => t
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .map(|n| (n.to_string(), delegation::depth_of(t))),
        None => match me.pointer("/status/currentTask").and_then(Value::as_str) {
            Some(t) => {
                let key = ObjectKey::new(Kind::Task, &agent.namespace, t);
                let depth = shared
                    .pool
                    .get(&key)
                    .await?
                    .value
                    .map(|v| delegation::depth_of(&v))
                    .unwrap_or(0);
                Some((t.to_string(), depth))
            }
            None => None,
        },
    };
    let d = delegation::plan(
        &agent.name,
        current.as_ref().map(|(n, d)| (n.as_str(), *d)),
        p.session.as_deref(),
        &shared.limits,
    )
    .map_err(ToolError)?;
    // Some other session must be able to take it, or it would wait forever.
    let sessions = shared
        .pool
        .list(Kind::Session, Some(&agent.namespace))
        .await?
        .value;
    let others: Vec<&str> = sessions
        .iter()
        .filter(|s| targets(p, s))
        .filter_map(|s| s.pointer("/metadata/name").and_then(Value::as_str))
        .filter(|n| *n != agent.name)
        .collect();
    if others.is_empty() {
        return Err(ToolError(format!(
            "no session other than {} matches this task's target: nobody could run it",
            agent.name
        )));
    }
    Ok(d)
}

/// Whether the session object `s` matches the target of `p` (the
/// dispatcher's rule: a named session, a selector, a workdir).
fn targets(p: &CreateTask, s: &Value) -> bool {
    let name = s.pointer("/metadata/name").and_then(Value::as_str);
    if let Some(want) = &p.session {
        return name == Some(want.as_str());
    }
    if let Some(sel) = &p.selector {
        let labels: Option<std::collections::BTreeMap<String, String>> = s
            .pointer("/metadata/labels")
            .and_then(|l| serde_json::from_value(l.clone()).ok());
        let matches =
            crate::selector::Selector::parse(sel).is_ok_and(|sel| sel.matches(labels.as_ref()));
        if !matches {
            return false;
        }
    }
    if let Some(w) = &p.workdir {
        let norm = |p: std::path::PathBuf| std::fs::canonicalize(&p).unwrap_or(p);
        let w = norm(crate::fsutil::expand_home(w));
        let Some(folder) = s.pointer("/spec/workdir").and_then(Value::as_str) else {
            return false;
        };
        let folder = crate::fsutil::expand_home(folder);
        // With a workspace its agent works in its own worktree,
        // FOLDER/NAME; the folder names any Session working in it.
        let in_worktree = s.pointer("/spec/workspace").is_some_and(|x| !x.is_null());
        if in_worktree && norm(folder.join(name.unwrap_or_default())) == w {
            return true;
        }
        return norm(folder) == w;
    }
    true
}

pub(super) async fn cancel_task(
    shared: &Shared,
    caller: &Caller,
    p: Result<Named, ToolError>,
) -> ToolResult {
    let p = p?;
    let ns = namespace(shared, caller, p.namespace)?;
    name_arg("name", &p.name)?;
    let key = ObjectKey::new(Kind::Task, &ns, &p.name);
    if let Some(agent) = caller.agent_session() {
        let task = shared.pool.get(&key).await?.value;
        let by = task.as_ref().and_then(|t| {
            t.pointer(&format!(
                "/metadata/annotations/{}",
                delegation::DELEGATED_BY.replace('/', "~1")
            ))
            .and_then(Value::as_str)
            .map(str::to_string)
        });
        if task.is_some() && by.as_deref() != Some(agent.name.as_str()) {
            return Err(ToolError(format!(
                "an agent can cancel only the tasks it created; task {} was not created by the agent of session {}",
                p.name, agent.name
            )));
        }
    }
    let message = shared.pool.action(&key, "cancel", json!({})).await?;
    shared
        .pool
        .record_origin(&key, format!("cancel asked for by {}", caller.describe()))
        .await;
    Ok(json!({"accepted": true, "message": message}))
}

pub(super) async fn restart_session(
    shared: &Shared,
    caller: &Caller,
    p: Result<Named, ToolError>,
) -> ToolResult {
    let p = p?;
    let ns = namespace(shared, caller, p.namespace)?;
    name_arg("name", &p.name)?;
    let key = ObjectKey::new(Kind::Session, &ns, &p.name);
    let message = shared.pool.action(&key, "restart", json!({})).await?;
    shared
        .pool
        .record_origin(&key, format!("restart asked for by {}", caller.describe()))
        .await;
    Ok(json!({"accepted": true, "message": message}))
}

pub(super) async fn request_failover(
    shared: &Shared,
    caller: &Caller,
    p: Result<RequestFailover, ToolError>,
) -> ToolResult {
    let p = p?;
    let ns = namespace(shared, caller, p.namespace)?;
    name_arg("account", &p.account)?;
    if let Some(t) = &p.to {
        name_arg("to", t)?;
    }
    // Writes need the daemon: say so before reading anything.
    if let crate::mcp::pool::Link::Offline(why) = shared.pool.link() {
        return Err(PoolError::Offline(why).into());
    }
    let accounts = shared.pool.list(Kind::Account, Some(&ns)).await?.value;
    let sessions = shared.pool.list(Kind::Session, Some(&ns)).await?.value;
    let plan = views::failover_check(&accounts, &sessions, &ns, &p.account, p.to.as_deref())
        .map_err(ToolError)?;
    let key = ObjectKey::new(Kind::Account, &ns, &p.account);
    let body = match &p.to {
        Some(t) => json!({"to": t}),
        None => json!({}),
    };
    let message = shared.pool.action(&key, "failover", body).await?;
    shared
        .pool
        .record_origin(&key, format!("failover asked for by {}", caller.describe()))
        .await;
    Ok(json!({
        "accepted": true,
        "message": message,
        "plan": plan,
        "follow": format!("recent_events with kind=account, name={} shows the swap", p.account),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn targets_follow_the_dispatchers_rule() {
        let p = |v: Value| -> CreateTask { serde_json::from_value(v).unwrap() };
        let s = json!({"metadata": {"name": "b", "labels": {"team": "api"}}, "spec": {"workdir": "/nonexistent/w"}});
        assert!(targets(&p(json!({"prompt": "x"})), &s));
        assert!(targets(&p(json!({"prompt": "x", "session": "b"})), &s));
        assert!(!targets(&p(json!({"prompt": "x", "session": "c"})), &s));
        assert!(targets(
            &p(json!({"prompt": "x", "selector": "team=api"})),
            &s
        ));
        assert!(!targets(
            &p(json!({"prompt": "x", "selector": "team in (web,db)"})),
            &s
        ));
        assert!(targets(
            &p(json!({"prompt": "x", "workdir": "/nonexistent/w"})),
            &s
        ));
        assert!(!targets(
            &p(json!({"prompt": "x", "workdir": "/nonexistent/v"})),
            &s
        ));
        // In its own worktree: that, or the pool's folder.
        let s = json!({"metadata": {"name": "b"}, "spec": {"workdir": "/nonexistent/w", "workspace": {"git": {"repo": "/r"}}}});
        for (w, ok) in [
            ("/nonexistent/w/b", true),
            ("/nonexistent/w", true),
            ("/nonexistent/w/a", false),
        ] {
            assert_eq!(
                targets(&p(json!({"prompt": "x", "workdir": w})), &s),
                ok,
                "{w}"
            );
        }
    }
}

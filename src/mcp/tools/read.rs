//! The read tools: lists, one object, events, waiting for a task.

use super::params::*;
use super::{
    DEFAULT_EVENTS, DEFAULT_WAIT, MAX_EVENTS, MAX_WAIT, Shared, ToolError, ToolResult, listing,
    name_arg, namespace, note, selected, selector,
};
use crate::api::{Kind, ObjectKey};
use crate::mcp::pool::PoolError;
use crate::mcp::scope::Caller;
use crate::mcp::views;
use serde_json::{Value, json};
use std::time::Duration;

pub(super) async fn list_sessions(
    shared: &Shared,
    caller: &Caller,
    p: Result<ListSessions, ToolError>,
) -> ToolResult {
    let p = p?;
    let ns = namespace(shared, caller, p.namespace)?;
    let sel = selector(p.selector.as_deref())?;
    let r = shared.pool.list(Kind::Session, Some(&ns)).await?;
    let items = r
        .value
        .iter()
        .filter(|v| selected(&sel, v))
        .map(views::session)
        .collect();
    Ok(listing(items, r.offline))
}

pub(super) async fn list_accounts(
    shared: &Shared,
    caller: &Caller,
    p: Result<ListAccounts, ToolError>,
) -> ToolResult {
    let ns = namespace(shared, caller, p?.namespace)?;
    let r = shared.pool.list(Kind::Account, Some(&ns)).await?;
    let items = r.value.iter().map(views::account).collect();
    Ok(listing(items, r.offline))
}

pub(super) async fn list_tasks(
    shared: &Shared,
    caller: &Caller,
    p: Result<ListTasks, ToolError>,
) -> ToolResult {
    let p = p?;
    let ns = namespace(shared, caller, p.namespace)?;
    let sel = selector(p.selector.as_deref())?;
    let phase = p.phase.map(|ph| ph.to_string());
    let r = shared.pool.list(Kind::Task, Some(&ns)).await?;
    let items = r
        .value
        .iter()
        .filter(|v| selected(&sel, v))
        .filter(|v| {
            phase
                .as_deref()
                .is_none_or(|want| views::phase(v).unwrap_or("Pending") == want)
        })
        .map(views::task)
        .collect();
    Ok(listing(items, r.offline))
}

pub(super) async fn describe(
    shared: &Shared,
    caller: &Caller,
    p: Result<Describe, ToolError>,
) -> ToolResult {
    let p = p?;
    let ns = namespace(shared, caller, p.namespace)?;
    name_arg("name", &p.name)?;
    let key = ObjectKey::new(p.kind.into(), &ns, &p.name);
    let r = shared.pool.get(&key).await?;
    let Some(obj) = r.value else {
        return Err(ToolError(format!(
            "{} \"{}\" not found in namespace {ns}",
            key.kind.qualified(),
            key.name
        )));
    };
    let events = shared.pool.events(&key).await?.value;
    let mut v = json!({"object": views::redact(&obj), "events": events});
    note(&mut v, r.offline);
    Ok(v)
}

fn last_timestamp(e: &Value) -> &str {
    e.get("lastTimestamp").and_then(Value::as_str).unwrap_or("")
}

pub(super) async fn recent_events(
    shared: &Shared,
    caller: &Caller,
    p: Result<RecentEvents, ToolError>,
) -> ToolResult {
    let p = p?;
    let ns = namespace(shared, caller, p.namespace)?;
    let limit = p.limit.unwrap_or(DEFAULT_EVENTS).clamp(1, MAX_EVENTS);
    let kinds: Vec<Kind> = match p.kind {
        Some(k) => vec![k.into()],
        None => vec![Kind::Account, Kind::Session, Kind::Task],
    };
    let mut keys: Vec<ObjectKey> = Vec::new();
    let mut offline = None;
    match (&p.name, p.kind) {
        (Some(name), Some(k)) => {
            name_arg("name", name)?;
            keys.push(ObjectKey::new(k.into(), &ns, name));
        }
        (Some(_), None) => return Err(ToolError("name: give `kind` too".into())),
        (None, _) => {
            for k in kinds {
                let r = shared.pool.list(k, Some(&ns)).await?;
                offline = offline.or(r.offline);
                keys.extend(r.value.iter().filter_map(|v| {
                    v.pointer("/metadata/name")
                        .and_then(Value::as_str)
                        .map(|n| ObjectKey::new(k, &ns, n))
                }));
            }
        }
    }
    let mut events: Vec<Value> = Vec::new();
    for key in &keys {
        let r = shared.pool.events(key).await?;
        offline = offline.or(r.offline);
        events.extend(r.value);
    }
    // Each object's events come oldest first: reversed, a stable sort keeps
    // the newest first within one second too.
    events.reverse();
    events.sort_by(|a, b| last_timestamp(b).cmp(last_timestamp(a)));
    events.truncate(limit);
    Ok(listing(events, offline))
}

/// Waits for the task `key` to end, at most `limit`. The task as it is
/// then, and whether it ended.
pub(super) async fn wait_for_task(
    shared: &Shared,
    key: &ObjectKey,
    limit: Duration,
) -> Result<(Value, bool, Option<String>), ToolError> {
    let not_found = || {
        ToolError(format!(
            "task.claude-failover.io \"{}\" not found in namespace {}",
            key.name, key.namespace
        ))
    };
    // Subscribe first: no change between the read and the watch is missed.
    let mut rx = match shared
        .pool
        .watch(Some(&key.namespace), Some(Kind::Task))
        .await
    {
        Ok(rx) => Some(rx),
        Err(PoolError::Offline(_)) => None,
        Err(e) => return Err(e.into()),
    };
    let r = shared.pool.get(key).await?;
    let mut task = r.value.ok_or_else(not_found)?;
    if views::finished(views::phase(&task)) || rx.is_none() || limit.is_zero() {
        let done = views::finished(views::phase(&task));
        return Ok((task, done, r.offline));
    }
    let deadline = tokio::time::Instant::now() + limit;
    let rx = rx.as_mut().expect("watching");
    loop {
        tokio::select! {
            item = rx.recv() => match item {
                Some(crate::mcp::sse::WatchItem::Change { name, namespace, deleted, object, .. })
                    if name == key.name && namespace == key.namespace =>
                {
                    if deleted {
                        return Err(ToolError(format!("task {} was deleted while waiting", key.name)));
                    }
                    task = object;
                    if views::finished(views::phase(&task)) {
                        return Ok((task, true, None));
                    }
                }
                Some(crate::mcp::sse::WatchItem::Lagged(_)) => {
                    // Missed changes: read the task again.
                    task = shared.pool.get(key).await?.value.ok_or_else(not_found)?;
                    if views::finished(views::phase(&task)) {
                        return Ok((task, true, None));
                    }
                }
                Some(_) => {}
                None => {
                    let r = shared.pool.get(key).await?;
                    let task = r.value.ok_or_else(not_found)?;
                    let done = views::finished(views::phase(&task));
                    let why = (!done).then(|| "the daemon's event stream ended (is the daemon stopping?)".to_string());
                    return Ok((task, done, why.or(r.offline)));
                }
            },
            _ = tokio::time::sleep_until(deadline) => return Ok((task, false, None)),
        }
    }
}

/// A waited-for task as a result.
pub(super) fn waited(task: &Value, done: bool, limit: Duration, why: Option<String>) -> Value {
    let mut v = json!({"task": views::task(task), "finished": done});
    if !done {
        let phase = views::phase(task).unwrap_or("Pending");
        v["note"] = json!(match why {
            Some(why) => format!("{why}; the task is {phase}"),
            None => format!(
                "still {phase} after {}s; call wait_task again to keep waiting",
                limit.as_secs()
            ),
        });
    }
    v
}

pub(super) fn wait_limit(secs: Option<u64>, default: Duration) -> Duration {
    secs.map(Duration::from_secs)
        .unwrap_or(default)
        .min(MAX_WAIT)
}

pub(super) async fn wait_task_tool(
    shared: &Shared,
    caller: &Caller,
    p: Result<WaitTask, ToolError>,
) -> ToolResult {
    let p = p?;
    let ns = namespace(shared, caller, p.namespace)?;
    name_arg("name", &p.name)?;
    let limit = wait_limit(p.timeout_seconds, DEFAULT_WAIT);
    let key = ObjectKey::new(Kind::Task, &ns, &p.name);
    let (task, done, why) = wait_for_task(shared, &key, limit).await?;
    Ok(waited(&task, done, limit, why))
}

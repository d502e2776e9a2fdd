//! The tools: each with a JSON schema (from its parameters' type), a
//! description, what it does to the pool ([`Access`]), and its handler.
//!
//! Arguments are decoded strictly (an unknown or mistyped argument is an
//! error naming it); every failure is a tool error whose text says what is
//! wrong, so a person or a model can correct the call.

use super::config::Limits;
use super::delegation::{self, RateLimiter};
use super::pool::{Pool, PoolError};
use super::scope::{Access, Caller};
use super::views;
use crate::api::{Kind, ObjectKey, TaskPhase, TaskPriority};
use rmcp::model::{CallToolResult, ContentBlock, JsonObject, Tool, ToolAnnotations};
use schemars::JsonSchema;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `wait_task` waits this long when not told.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(60);
/// Longest wait of one call (call again to wait longer).
pub const MAX_WAIT: Duration = Duration::from_secs(600);
/// `recent_events` returns this many when not told.
const DEFAULT_EVENTS: usize = 20;
const MAX_EVENTS: usize = 200;

/// Everything the tools need.
pub struct Shared {
    pub pool: Pool,
    /// The namespace used when a call names none (agents: their own).
    pub namespace: String,
    pub limits: Limits,
    pub rate: RateLimiter,
}

/// A tool failure, shown to the caller as it is.
#[derive(Debug)]
pub struct ToolError(pub String);

impl From<PoolError> for ToolError {
    fn from(e: PoolError) -> ToolError {
        ToolError(e.to_string())
    }
}

type ToolResult = Result<Value, ToolError>;

/// One tool of the catalog.
pub struct ToolDef {
    pub name: &'static str,
    pub description: &'static str,
    pub access: Access,
    schema: fn() -> Arc<JsonObject>,
}

impl ToolDef {
    /// The tool as `tools/list` shows it.
    pub fn tool(&self) -> Tool {
        let mut ann = ToolAnnotations::default();
        ann.read_only_hint = Some(self.access == Access::Read);
        ann.destructive_hint = Some(matches!(self.name, "cancel_task" | "restart_session"));
        ann.open_world_hint = Some(false);
        let mut t = Tool::new(self.name, self.description, (self.schema)());
        t.annotations = Some(ann);
        t
    }
}

fn schema<T: JsonSchema + 'static>() -> Arc<JsonObject> {
    rmcp::handler::server::common::schema_for_input::<T>().expect("tool parameters are objects")
}

// ------------------------------------------------------------ parameters

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ListSessions {
    /// Namespace (default: the configured one).
    namespace: Option<String>,
    /// Label selector in kubectl's syntax, e.g. `project=api,tier in (a,b)`.
    selector: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ListAccounts {
    /// Namespace (default: the configured one).
    namespace: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ListTasks {
    /// Namespace (default: the configured one).
    namespace: Option<String>,
    /// Label selector in kubectl's syntax.
    selector: Option<String>,
    /// Only tasks in this phase.
    phase: Option<TaskPhase>,
}

/// A kind of object.
#[derive(Debug, Deserialize, JsonSchema, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum KindArg {
    Account,
    Session,
    Task,
}

impl From<KindArg> for Kind {
    fn from(k: KindArg) -> Kind {
        match k {
            KindArg::Account => Kind::Account,
            KindArg::Session => Kind::Session,
            KindArg::Task => Kind::Task,
        }
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Describe {
    kind: KindArg,
    name: String,
    /// Namespace (default: the configured one).
    namespace: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RecentEvents {
    /// Only objects of this kind.
    kind: Option<KindArg>,
    /// Only this object (needs `kind`).
    name: Option<String>,
    /// Namespace (default: the configured one).
    namespace: Option<String>,
    /// How many, newest first (default 20, at most 200).
    #[schemars(range(min = 1, max = 200))]
    limit: Option<usize>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct WaitTask {
    name: String,
    /// Namespace (default: the configured one).
    namespace: Option<String>,
    /// How long to wait for the task to end (default 60, at most 600);
    /// call again to wait longer.
    #[schemars(range(min = 0, max = 600))]
    timeout_seconds: Option<u64>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CreateTask {
    /// The text typed into the session that takes the task.
    prompt: String,
    /// The Task's name (default: generated).
    name: Option<String>,
    /// Queue order; `critical` also means the opus model unless `model` says otherwise.
    priority: Option<TaskPriority>,
    /// Model alias or name for this task (default from the priority).
    model: Option<String>,
    /// Run on this session only.
    session: Option<String>,
    /// Run on a session carrying these labels.
    labels: Option<BTreeMap<String, String>>,
    /// Run on a session with this working directory.
    workdir: Option<String>,
    /// Give up on an attempt after this long.
    timeout_seconds: Option<u64>,
    /// Attempts before the task fails.
    max_attempts: Option<u32>,
    /// Namespace (default: the configured one; an agent's own).
    namespace: Option<String>,
    /// Also wait this long for the task to end and return its result (at most 600).
    #[schemars(range(min = 0, max = 600))]
    wait_seconds: Option<u64>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Named {
    name: String,
    /// Namespace (default: the configured one).
    namespace: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RequestFailover {
    /// The account whose sessions move.
    account: String,
    /// The account they move to (default: the failover policy chooses).
    to: Option<String>,
    /// Namespace (default: the configured one).
    namespace: Option<String>,
}

// --------------------------------------------------------------- catalog

/// Every tool, in the order they are listed.
pub const CATALOG: &[ToolDef] = &[
    ToolDef {
        name: "list_sessions",
        description: "List the pool's sessions (Claude Code agents in tmux): phase (Idle, Busy, Waiting, ...), account, current task, labels, workdir, restarts, conditions.",
        access: Access::Read,
        schema: schema::<ListSessions>,
    },
    ToolDef {
        name: "list_accounts",
        description: "List the accounts: phase (Available, NearLimit, Exhausted, Unavailable, Suspended), usage of the 5-hour and 7-day windows with their reset times, the limit hit if any, the projected time the threshold is reached, and the sessions on each.",
        access: Access::Read,
        schema: schema::<ListAccounts>,
    },
    ToolDef {
        name: "list_tasks",
        description: "List the tasks: phase (Pending, Dispatched, Running, Succeeded, Failed, Cancelled), priority, the session it ran on, attempts, its result (the start of the agent's reply) and, for delegated tasks, the parent task and depth.",
        access: Access::Read,
        schema: schema::<ListTasks>,
    },
    ToolDef {
        name: "describe",
        description: "One account, session or task in full (metadata, spec, status, conditions; secrets hidden) with its recent events.",
        access: Access::Read,
        schema: schema::<Describe>,
    },
    ToolDef {
        name: "recent_events",
        description: "Recent events (what happened: dispatches, phase changes, failovers, restarts, ...), newest first: of one object, of one kind, or of the whole pool.",
        access: Access::Read,
        schema: schema::<RecentEvents>,
    },
    ToolDef {
        name: "wait_task",
        description: "Wait for a task to end (Succeeded, Failed or Cancelled) and return it with its result; returns its current phase when the time is up.",
        access: Access::Read,
        schema: schema::<WaitTask>,
    },
    ToolDef {
        name: "create_task",
        description: "Queue a task: a prompt typed into a free session of the pool (by `session`, `labels`, `workdir`, or any). Validated like `claude-failover apply`. With `waitSeconds`, also waits for its result. An agent of the pool can create tasks only for other sessions.",
        access: Access::Delegate,
        schema: schema::<CreateTask>,
    },
    ToolDef {
        name: "cancel_task",
        description: "Cancel a task: a running one is interrupted (Esc in its session) and ends Cancelled; a pending one never runs. An agent can cancel only the tasks it created.",
        access: Access::Delegate,
        schema: schema::<Named>,
    },
    ToolDef {
        name: "restart_session",
        description: "Restart a session's agent: stopped gracefully and relaunched at once, resuming its conversation.",
        access: Access::Write,
        schema: schema::<Named>,
    },
    ToolDef {
        name: "request_failover",
        description: "Move the sessions off an account now (to `to`, or the account the failover policy chooses). Refused at once, with the reason, when the account or target does not exist, the target cannot take sessions, or no session runs on the account.",
        access: Access::Write,
        schema: schema::<RequestFailover>,
    },
];

/// The tool named `name`.
pub fn find(name: &str) -> Option<&'static ToolDef> {
    CATALOG.iter().find(|t| t.name == name)
}

/// Runs the tool `def` for `caller` (already allowed to use it).
pub async fn call(
    shared: &Shared,
    caller: &Caller,
    def: &ToolDef,
    args: JsonObject,
) -> CallToolResult {
    let args = Value::Object(args);
    let result = match def.name {
        "list_sessions" => list_sessions(shared, caller, parse(def, args)).await,
        "list_accounts" => list_accounts(shared, caller, parse(def, args)).await,
        "list_tasks" => list_tasks(shared, caller, parse(def, args)).await,
        "describe" => describe(shared, caller, parse(def, args)).await,
        "recent_events" => recent_events(shared, caller, parse(def, args)).await,
        "wait_task" => wait_task_tool(shared, caller, parse(def, args)).await,
        "create_task" => create_task(shared, caller, parse(def, args)).await,
        "cancel_task" => cancel_task(shared, caller, parse(def, args)).await,
        "restart_session" => restart_session(shared, caller, parse(def, args)).await,
        "request_failover" => request_failover(shared, caller, parse(def, args)).await,
        other => Err(ToolError(format!("unknown tool {other}"))),
    };
    match result {
        Ok(v) => CallToolResult::structured(v),
        Err(ToolError(msg)) => CallToolResult::error(vec![ContentBlock::text(msg)]),
    }
}

/// Strict decoding of a tool's arguments; the error names the argument.
fn parse<T: DeserializeOwned>(def: &ToolDef, args: Value) -> Result<T, ToolError> {
    serde_path_to_error::deserialize(args).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." {
            ToolError(format!("invalid arguments for {}: {inner}", def.name))
        } else {
            ToolError(format!(
                "invalid arguments for {}: {path}: {inner}",
                def.name
            ))
        }
    })
}

// ----------------------------------------------------------------- reads

/// The namespace of a call: given (checked), else the default; an agent
/// acts in its own namespace only.
fn namespace(shared: &Shared, caller: &Caller, given: Option<String>) -> Result<String, ToolError> {
    let own = caller.agent_session().map(|k| k.namespace.clone());
    let ns = given
        .or_else(|| own.clone())
        .unwrap_or_else(|| shared.namespace.clone());
    crate::manifest::validate::dns1123_label(&ns)
        .map_err(|e| ToolError(format!("namespace: {e}")))?;
    if let Some(own) = own
        && own != ns
    {
        return Err(ToolError(format!(
            "namespace: an agent acts in its own namespace ({own}), not {ns}"
        )));
    }
    Ok(ns)
}

fn name_arg(what: &str, name: &str) -> Result<(), ToolError> {
    crate::manifest::validate::dns1123_label(name)
        .map_err(|e| ToolError(format!("{what}: `{name}` {e}")))
}

fn selector(given: Option<&str>) -> Result<Option<crate::selector::Selector>, ToolError> {
    given
        .map(crate::selector::Selector::parse)
        .transpose()
        .map_err(|e| ToolError(format!("selector: {e}")))
}

fn selected(sel: &Option<crate::selector::Selector>, v: &Value) -> bool {
    sel.as_ref().is_none_or(|sel| {
        let labels: Option<BTreeMap<String, String>> = v
            .pointer("/metadata/labels")
            .and_then(|l| serde_json::from_value(l.clone()).ok());
        sel.matches(labels.as_ref())
    })
}

/// `{"items": [...]}`, with a note when read from the store.
fn listing(items: Vec<Value>, offline: Option<String>) -> Value {
    let mut v = json!({"count": items.len(), "items": items});
    note(&mut v, offline);
    v
}

fn note(v: &mut Value, offline: Option<String>) {
    if let Some(why) = offline {
        v["note"] = json!(format!(
            "{why}: read from the store; nothing changes until the daemon runs (claude-failover run)"
        ));
    }
}

async fn list_sessions(
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

async fn list_accounts(
    shared: &Shared,
    caller: &Caller,
    p: Result<ListAccounts, ToolError>,
) -> ToolResult {
    let ns = namespace(shared, caller, p?.namespace)?;
    let r = shared.pool.list(Kind::Account, Some(&ns)).await?;
    let items = r.value.iter().map(views::account).collect();
    Ok(listing(items, r.offline))
}

async fn list_tasks(
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

async fn describe(shared: &Shared, caller: &Caller, p: Result<Describe, ToolError>) -> ToolResult {
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

async fn recent_events(
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
async fn wait_for_task(
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
                Some(super::sse::WatchItem::Change { name, namespace, deleted, object, .. })
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
                Some(super::sse::WatchItem::Lagged(_)) => {
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
fn waited(task: &Value, done: bool, limit: Duration, why: Option<String>) -> Value {
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

fn wait_limit(secs: Option<u64>, default: Duration) -> Duration {
    secs.map(Duration::from_secs)
        .unwrap_or(default)
        .min(MAX_WAIT)
}

async fn wait_task_tool(
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

// ---------------------------------------------------------------- writes

async fn create_task(
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
        None => format!("mcp-{}", crate::controller::runtime::random_hex(4)),
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
    if let Some(labels) = &p.labels {
        spec.insert("sessionSelector".into(), json!({"matchLabels": labels}));
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
    let current = match me.pointer("/status/currentTask").and_then(Value::as_str) {
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
/// dispatcher's rule: a named session, labels, a workdir).
fn targets(p: &CreateTask, s: &Value) -> bool {
    let name = s.pointer("/metadata/name").and_then(Value::as_str);
    if let Some(want) = &p.session {
        return name == Some(want.as_str());
    }
    if let Some(want) = &p.labels {
        let labels = s.pointer("/metadata/labels").and_then(Value::as_object);
        if !want
            .iter()
            .all(|(k, v)| labels.and_then(|l| l.get(k)).and_then(Value::as_str) == Some(v))
        {
            return false;
        }
    }
    if let Some(w) = &p.workdir {
        let norm = |p: &str| {
            let p = crate::fsutil::expand_home(p);
            std::fs::canonicalize(&p).unwrap_or(p)
        };
        let theirs = s.pointer("/spec/workdir").and_then(Value::as_str);
        return theirs.is_some_and(|t| norm(t) == norm(w));
    }
    true
}

async fn cancel_task(shared: &Shared, caller: &Caller, p: Result<Named, ToolError>) -> ToolResult {
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

async fn restart_session(
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

async fn request_failover(
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
    if let super::pool::Link::Offline(why) = shared.pool.link() {
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

    #[test]
    fn every_tool_has_an_object_schema_and_a_description() {
        for t in CATALOG {
            let tool = t.tool();
            assert_eq!(
                tool.input_schema.get("type"),
                Some(&json!("object")),
                "{}",
                t.name
            );
            assert!(t.description.len() > 20, "{}", t.name);
            assert!(find(t.name).is_some());
        }
        let s = find("create_task").unwrap().tool();
        let props = s.input_schema.get("properties").unwrap();
        for p in [
            "prompt",
            "priority",
            "session",
            "labels",
            "model",
            "waitSeconds",
        ] {
            assert!(props.get(p).is_some(), "create_task lacks {p}: {props}");
        }
        assert_eq!(s.input_schema.get("required"), Some(&json!(["prompt"])));
    }

    #[test]
    fn arguments_are_strict_and_errors_name_them() {
        let def = find("create_task").unwrap();
        let e = parse::<CreateTask>(def, json!({"prompt": "x", "priority": "urgent"})).unwrap_err();
        assert!(
            e.0.starts_with(
                "invalid arguments for create_task: priority: unknown variant `urgent`"
            ),
            "{}",
            e.0
        );
        let e = parse::<CreateTask>(def, json!({"prompt": "x", "sesion": "a"})).unwrap_err();
        assert!(e.0.contains("unknown field `sesion`"), "{}", e.0);
        let e = parse::<CreateTask>(def, json!({})).unwrap_err();
        assert!(e.0.contains("missing field `prompt`"), "{}", e.0);
        let e = parse::<WaitTask>(
            find("wait_task").unwrap(),
            json!({"name": "t", "timeoutSeconds": "soon"}),
        )
        .unwrap_err();
        assert!(e.0.contains("timeoutSeconds: invalid type"), "{}", e.0);
    }

    #[test]
    fn targets_follow_the_dispatchers_rule() {
        let p = |v: Value| -> CreateTask { serde_json::from_value(v).unwrap() };
        let s = json!({"metadata": {"name": "b", "labels": {"team": "api"}}, "spec": {"workdir": "/nonexistent/w"}});
        assert!(targets(&p(json!({"prompt": "x"})), &s));
        assert!(targets(&p(json!({"prompt": "x", "session": "b"})), &s));
        assert!(!targets(&p(json!({"prompt": "x", "session": "c"})), &s));
        assert!(targets(
            &p(json!({"prompt": "x", "labels": {"team": "api"}})),
            &s
        ));
        assert!(!targets(
            &p(json!({"prompt": "x", "labels": {"team": "web"}})),
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
    }
}

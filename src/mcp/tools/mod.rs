//! The tools: each with a JSON schema (from its parameters' type), a
//! description, what it does to the pool ([`Access`]), and its handler.
//!
//! Arguments are decoded strictly (an unknown or mistyped argument is an
//! error naming it); every failure is a tool error whose text says what is
//! wrong, so a person or a model can correct the call.

mod params;
mod read;
mod write;

use super::config::Limits;
use super::delegation::RateLimiter;
use super::pool::{Pool, PoolError};
use super::scope::{Access, Caller};
use params::*;
use rmcp::model::{CallToolResult, ContentBlock, JsonObject, Tool, ToolAnnotations};
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

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
        description: "Queue a task: a prompt typed into a free session of the pool (by `session`, label `selector`, `workdir`, or any). Validated like `claude-failover apply`. With `waitSeconds`, also waits for its result. An agent of the pool can create tasks only for other sessions.",
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
        "list_sessions" => read::list_sessions(shared, caller, parse(def, args)).await,
        "list_accounts" => read::list_accounts(shared, caller, parse(def, args)).await,
        "list_tasks" => read::list_tasks(shared, caller, parse(def, args)).await,
        "describe" => read::describe(shared, caller, parse(def, args)).await,
        "recent_events" => read::recent_events(shared, caller, parse(def, args)).await,
        "wait_task" => read::wait_task_tool(shared, caller, parse(def, args)).await,
        "create_task" => write::create_task(shared, caller, parse(def, args)).await,
        "cancel_task" => write::cancel_task(shared, caller, parse(def, args)).await,
        "restart_session" => write::restart_session(shared, caller, parse(def, args)).await,
        "request_failover" => write::request_failover(shared, caller, parse(def, args)).await,
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

// --------------------------------------------------------------- helpers

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
            "selector",
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
}

//! Delegation: an agent of the pool handing a task to the rest of the pool.
//!
//! A task created by an agent (through the MCP server, with its session's
//! secret) carries three annotations:
//!
//! - [`PARENT`]: the task its agent was running then (absent when the agent
//!   was not running a task of the pool);
//! - [`DEPTH`]: how many delegations led to it (a task created by a person
//!   is at depth 0; one its agent creates at 1; ...);
//! - [`DELEGATED_BY`]: the session whose agent created it. The dispatcher
//!   never runs it there ([`may_run_on`]): an agent hands work to others,
//!   never to itself (it would wait for itself).
//!
//! Two limits stop runaway loops: a task deeper than `maxDepth` is refused,
//! and each session's agent may create at most `maxTasks` tasks per window
//! ([`RateLimiter`]).

use super::config::Limits;
use crate::api::{ObjectKey, Task};
use serde_json::Value;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The task whose agent created this one.
pub const PARENT: &str = "claude-failover.io/parent-task";
/// The number of delegations that led to this task.
pub const DEPTH: &str = "claude-failover.io/delegation-depth";
/// The session whose agent created this task: it never runs there.
pub const DELEGATED_BY: &str = "claude-failover.io/delegated-by";

/// Whether the dispatcher may run `task` on the session named `session`
/// (same namespace): not on the session whose agent delegated it.
pub fn may_run_on(task: &Task, session: &str) -> bool {
    task.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(DELEGATED_BY))
        .is_none_or(|by| by != session)
}

/// The delegation depth recorded on a task object (0 when absent or
/// unreadable: a task a person made).
pub fn depth_of(task: &Value) -> u32 {
    task.pointer(&format!("/metadata/annotations/{}", escape(DEPTH)))
        .and_then(Value::as_str)
        .and_then(|d| d.parse().ok())
        .unwrap_or(0)
}

/// The parent recorded on a task object.
pub fn parent_of(task: &Value) -> Option<&str> {
    task.pointer(&format!("/metadata/annotations/{}", escape(PARENT)))
        .and_then(Value::as_str)
}

/// JSON pointer escaping of one key (`/` → `~1`).
fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// What an agent's new task records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delegation {
    pub parent: Option<String>,
    pub depth: u32,
    /// The delegating session's name.
    pub by: String,
}

impl Delegation {
    /// The annotations to put on the new task.
    pub fn annotations(&self) -> Vec<(&'static str, String)> {
        let mut out = vec![
            (DEPTH, self.depth.to_string()),
            (DELEGATED_BY, self.by.clone()),
        ];
        if let Some(p) = &self.parent {
            out.push((PARENT, p.clone()));
        }
        out
    }
}

/// Decides whether the agent of session `by`, running `current` (its task's
/// name and depth) or nothing, may create a task aimed at `target_session`
/// (when it names one).
pub fn plan(
    by: &str,
    current: Option<(&str, u32)>,
    target_session: Option<&str>,
    limits: &Limits,
) -> Result<Delegation, String> {
    if target_session == Some(by) {
        return Err(format!(
            "a task cannot be delegated to the session that asks for it ({by}): \
             name another session, a label selector or a workdir, or none (any other session)"
        ));
    }
    let depth = current.map(|(_, d)| d).unwrap_or(0) + 1;
    if depth > limits.max_depth {
        let chain = match current {
            Some((name, d)) => format!("task {name} is itself at delegation depth {d}"),
            None => "an agent's task is at depth 1".to_string(),
        };
        return Err(format!(
            "delegation depth limit reached: {chain}, and the limit (mcp.delegation.maxDepth) is {}; \
             do this work here instead of delegating it",
            limits.max_depth
        ));
    }
    Ok(Delegation {
        parent: current.map(|(n, _)| n.to_string()),
        depth,
        by: by.to_string(),
    })
}

/// At most `max` tasks per `window` for each session's agent (a sliding
/// window, in memory: a daemon restart forgets it, which only ever allows
/// more, never blocks wrongly).
pub struct RateLimiter {
    max: u32,
    window: Duration,
    seen: Mutex<HashMap<ObjectKey, VecDeque<Instant>>>,
}

impl RateLimiter {
    pub fn new(limits: &Limits) -> RateLimiter {
        RateLimiter {
            max: limits.max_tasks,
            window: limits.window,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one creation for `session` at `now`, or says how long until
    /// one is allowed again.
    pub fn take(&self, session: &ObjectKey, now: Instant) -> Result<(), Duration> {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let q = seen.entry(session.clone()).or_default();
        while q
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= self.window)
        {
            q.pop_front();
        }
        if q.len() as u32 >= self.max {
            let oldest = q.front().copied().unwrap_or(now);
            return Err(self.window - now.saturating_duration_since(oldest));
        }
        q.push_back(now);
        Ok(())
    }

    /// The refusal an agent reads when it is over its rate.
    pub fn refusal(&self, session: &str, wait: Duration) -> String {
        format!(
            "delegation rate limit: the agent of session {session} created {} tasks in the last {}s \
             (mcp.delegation.maxTasks / windowSeconds); the next is allowed in {}s",
            self.max,
            self.window.as_secs(),
            wait.as_secs().max(1)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Kind, TaskSpec};

    fn limits(max_depth: u32) -> Limits {
        Limits {
            max_depth,
            max_tasks: 2,
            window: Duration::from_secs(60),
        }
    }

    #[test]
    fn depth_grows_and_stops_at_the_limit() {
        let l = limits(2);
        let d = plan("a", None, None, &l).unwrap();
        assert_eq!((d.parent.as_deref(), d.depth), (None, 1));
        let d = plan("a", Some(("t0", 0)), Some("b"), &l).unwrap();
        assert_eq!((d.parent.as_deref(), d.depth), (Some("t0"), 1));
        assert_eq!(
            d.annotations(),
            [
                (DEPTH, "1".to_string()),
                (DELEGATED_BY, "a".to_string()),
                (PARENT, "t0".to_string())
            ]
        );
        assert_eq!(plan("b", Some(("t1", 1)), None, &l).unwrap().depth, 2);
        let e = plan("a", Some(("t2", 2)), None, &l).unwrap_err();
        assert!(
            e.contains("depth limit") && e.contains("task t2 is itself at delegation depth 2"),
            "{e}"
        );
        let e = plan("a", None, None, &limits(0)).unwrap_err();
        assert!(e.contains("limit (mcp.delegation.maxDepth) is 0"), "{e}");
    }

    #[test]
    fn never_to_itself() {
        let e = plan("a", Some(("t0", 0)), Some("a"), &limits(3)).unwrap_err();
        assert!(e.contains("session that asks for it (a)"), "{e}");
        let mut t = Task::new(
            "t",
            TaskSpec {
                prompt: "p".into(),
                priority: Default::default(),
                model: None,
                session: None,
                session_selector: None,
                workdir: None,
                timeout_seconds: None,
                max_attempts: None,
                workspace: None,
            },
        );
        assert!(may_run_on(&t, "a"), "a task a person made runs anywhere");
        t.metadata.annotations = Some([(DELEGATED_BY.to_string(), "a".to_string())].into());
        assert!(!may_run_on(&t, "a"));
        assert!(may_run_on(&t, "b"));
    }

    #[test]
    fn annotations_read_back_from_objects() {
        let v = serde_json::json!({"metadata": {"annotations": {DEPTH: "2", PARENT: "t1"}}});
        assert_eq!(depth_of(&v), 2);
        assert_eq!(parent_of(&v), Some("t1"));
        let v = serde_json::json!({"metadata": {"annotations": {DEPTH: "x"}}});
        assert_eq!(depth_of(&v), 0);
        assert_eq!(depth_of(&serde_json::json!({})), 0);
    }

    #[test]
    fn the_rate_is_per_session_and_slides() {
        let r = RateLimiter::new(&limits(3));
        let a = ObjectKey::new(Kind::Session, "default", "a");
        let b = ObjectKey::new(Kind::Session, "default", "b");
        let t0 = Instant::now();
        assert!(r.take(&a, t0).is_ok());
        assert!(r.take(&a, t0 + Duration::from_secs(10)).is_ok());
        let wait = r.take(&a, t0 + Duration::from_secs(20)).unwrap_err();
        assert_eq!(wait, Duration::from_secs(40));
        assert!(
            r.take(&b, t0 + Duration::from_secs(20)).is_ok(),
            "b has its own"
        );
        assert!(
            r.take(&a, t0 + Duration::from_secs(60)).is_ok(),
            "the first left"
        );
        assert!(r.take(&a, t0 + Duration::from_secs(61)).is_err());
        let msg = r.refusal("a", wait);
        assert!(
            msg.contains("created 2 tasks in the last 60s") && msg.contains("in 40s"),
            "{msg}"
        );
    }
}

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A prompt to be typed into one free session.
// kube-derive takes one `printcolumn(...)` per column; clippy mistakes them for duplicates.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "claude-failover.io",
    version = "v1alpha1",
    kind = "Task",
    namespaced,
    status = "TaskStatus",
    derive = "PartialEq",
    shortname = "tsk",
    category = "claude-failover",
    doc = "A prompt to be delivered to one session",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Priority", type_ = "string", json_path = ".spec.priority"),
    printcolumn(name = "Session", type_ = "string", json_path = ".status.session"),
    printcolumn(name = "Attempts", type_ = "integer", json_path = ".status.attempts"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TaskSpec {
    /// The text typed into the session.
    pub prompt: String,
    #[serde(default)]
    pub priority: TaskPriority,
    /// Model for this task; default from the priority map.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Run on this Session only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// Run on a Session whose labels match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_selector: Option<LabelSelector>,
    /// Run on a Session with this working directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    /// Give up on an attempt after this long (default from the config).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u64>,
    /// Attempts before the task fails (default from the config).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// What the task asks of the session's git worktree (only sessions
    /// with a `workspace` take such a task).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace: Option<TaskWorkspace>,
}

/// A task's wishes for the session's worktree.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TaskWorkspace {
    /// Before the task is typed, switch the worktree to a new branch made
    /// from the workspace's base (`SESSION.TASK`, or `branch`). Only from a
    /// clean worktree: with uncommitted changes the task waits, and its
    /// `Scheduled` condition says why.
    #[serde(default)]
    pub fresh_branch: bool,
    /// The new branch's name (implies `freshBranch`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
}

impl TaskSpec {
    /// The branch the task asks for on `session`, if it asks for one.
    pub fn fresh_branch(&self, session: &str, task: &str) -> Option<String> {
        let w = self.workspace.as_ref()?;
        match &w.branch {
            Some(b) => Some(b.clone()),
            None if w.fresh_branch => Some(format!("{session}.{task}")),
            None => None,
        }
    }
}

#[derive(
    Serialize,
    Deserialize,
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Default,
    JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum TaskPriority {
    Critical,
    High,
    #[default]
    Normal,
    Low,
}

impl std::fmt::Display for TaskPriority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TaskPriority::Critical => "critical",
            TaskPriority::High => "high",
            TaskPriority::Normal => "normal",
            TaskPriority::Low => "low",
        })
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum TaskPhase {
    #[default]
    Pending,
    Dispatched,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl std::fmt::Display for TaskPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TaskStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<TaskPhase>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// The fresh branch the session's worktree took for this task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dispatched_at: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Time>,
    /// The token carried in the typed text of the current attempt: how the
    /// delivery is recognised (hook, history, transcript, screen).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub marker: Option<String>,
    /// The agent process the task was typed into: if the session's agent
    /// is another process by the time the task should be running, the turn
    /// was lost with the old one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_pid: Option<u32>,
    /// The model the task ran with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The start of the agent's last reply (Succeeded), or what went wrong.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// A usage limit or a failover cut the task short on this session: it
    /// is replayed there (same conversation) once the session is back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay_on: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// The condition types a Task gets when it ends, in the style of a
/// Kubernetes Job: `Complete` (it succeeded), `Failed`, `Cancelled`. Each
/// is added with status `True` when the task reaches that end, so
/// `wait --for=condition=Complete` works as it does for a Job.
pub const COMPLETE: &str = "Complete";
pub const FAILED: &str = "Failed";
pub const CANCELLED: &str = "Cancelled";

/// The Job-style condition a status calls for: `(type, reason, message)`,
/// or None while the task has not ended.
pub fn job_condition(status: &TaskStatus) -> Option<(&'static str, &'static str, String)> {
    let message = status.message.clone().unwrap_or_default();
    match status.phase? {
        TaskPhase::Succeeded => Some((COMPLETE, "Succeeded", message)),
        TaskPhase::Failed => Some((FAILED, "TaskFailed", message)),
        TaskPhase::Cancelled => Some((CANCELLED, "Cancelled", message)),
        TaskPhase::Pending | TaskPhase::Dispatched | TaskPhase::Running => None,
    }
}

/// Brings `status.conditions` in line with its phase: the end's condition
/// `True` (its transition time kept once set), and no end condition while
/// the task has not ended (a task re-queued by hand). Other condition types
/// are left alone. Returns true when anything changed. The task controller
/// calls it before each status write.
pub fn set_job_conditions(
    status: &mut TaskStatus,
    observed_generation: Option<i64>,
    now: Time,
) -> bool {
    let want = job_condition(status);
    let before = status.conditions.len();
    status.conditions.retain(|c| {
        ![COMPLETE, FAILED, CANCELLED].contains(&c.type_.as_str())
            || want.as_ref().is_some_and(|(t, ..)| *t == c.type_)
    });
    let mut changed = status.conditions.len() != before;
    if let Some((t, reason, message)) = want {
        changed |= super::set_condition(
            &mut status.conditions,
            t,
            true,
            reason,
            &message,
            observed_generation,
            now,
        );
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Conditions;
    use k8s_openapi::jiff::Timestamp;

    fn t(s: i64) -> Time {
        Time(Timestamp::from_second(s).unwrap())
    }

    fn status(phase: TaskPhase, message: &str) -> TaskStatus {
        TaskStatus {
            phase: Some(phase),
            message: Some(message.into()),
            ..Default::default()
        }
    }

    #[test]
    fn job_conditions_follow_the_phase() {
        for (phase, want) in [
            (TaskPhase::Pending, None),
            (TaskPhase::Dispatched, None),
            (TaskPhase::Running, None),
            (TaskPhase::Succeeded, Some((COMPLETE, "Succeeded"))),
            (TaskPhase::Failed, Some((FAILED, "TaskFailed"))),
            (TaskPhase::Cancelled, Some((CANCELLED, "Cancelled"))),
        ] {
            let mut s = status(phase, "m");
            let changed = set_job_conditions(&mut s, Some(1), t(10));
            assert_eq!(changed, want.is_some(), "{phase}");
            match want {
                None => assert!(s.conditions.is_empty(), "{phase}"),
                Some((ty, reason)) => {
                    assert_eq!(s.conditions.len(), 1);
                    assert!(s.conditions.is_true(ty));
                    assert_eq!(s.conditions[0].reason, reason);
                    assert_eq!(s.conditions[0].message, "m");
                    assert_eq!(s.conditions[0].observed_generation, Some(1));
                }
            }
        }
    }

    #[test]
    fn set_again_is_no_change_and_keeps_the_time_and_other_types() {
        let mut s = status(TaskPhase::Succeeded, "done");
        crate::api::set_condition(&mut s.conditions, "Custom", true, "X", "", None, t(1));
        assert!(set_job_conditions(&mut s, None, t(10)));
        assert!(!set_job_conditions(&mut s, None, t(20)));
        let c = s.conditions.condition(COMPLETE).unwrap();
        assert_eq!(c.last_transition_time, t(10));
        assert!(s.conditions.is_true("Custom"));
        // Put back in the queue by hand: the end condition goes.
        s.phase = Some(TaskPhase::Pending);
        assert!(set_job_conditions(&mut s, None, t(30)));
        assert!(s.conditions.condition(COMPLETE).is_none());
        assert!(s.conditions.is_true("Custom"));
    }
}

//! Why a pending task cannot be placed, told in its `Scheduled` condition
//! (as a Pod's `PodScheduled`): no session by the name it asks for, no
//! session matching its selector or workdir, or every matching session on
//! an account that cannot take work until some time. A task that merely
//! waits for a free session gets no condition (a long queue costs no
//! writes). Pure.

use super::assign::{Candidate, eligible};
use crate::api::{Condition, Task, TaskPhase};
use std::time::SystemTime;

/// The condition type.
pub const SCHEDULED: &str = "Scheduled";
pub const NO_SUCH_SESSION: &str = "NoSuchSession";
pub const NO_MATCHING_SESSION: &str = "NoMatchingSession";
pub const SESSIONS_UNAVAILABLE: &str = "SessionsUnavailable";
/// The task asks for a fresh branch; its session's worktree has
/// uncommitted changes.
pub const WORKSPACE_NOT_CLEAN: &str = "WorkspaceNotClean";
/// The task asks for a fresh branch that git could not make.
pub const WORKSPACE_ERROR: &str = "WorkspaceError";
/// Reason of `Scheduled=True`, written with the dispatch.
pub const DISPATCHED: &str = "Dispatched";

/// A session as the placement sees it: the assignment's view and, when it
/// cannot take work for a while, why (its account's state, or its own).
#[derive(Debug, Clone)]
pub struct Place {
    pub candidate: Candidate,
    /// E.g. `account a is Exhausted until 2026-11-29T18:00:00Z`,
    /// `suspended`.
    pub blocked: Option<String>,
}

/// Why `task` cannot be placed now: `(reason, message)`, or None when some
/// session it may run on can take work (now or once free).
pub fn unplaceable(task: &Task, places: &[Place]) -> Option<(&'static str, String)> {
    let ns = task
        .metadata
        .namespace
        .as_deref()
        .unwrap_or(crate::api::DEFAULT_NAMESPACE);
    let matching: Vec<&Place> = places
        .iter()
        .filter(|p| eligible(task, &p.candidate))
        .collect();
    if matching.is_empty() {
        if let Some(name) = &task.spec.session {
            return Some((
                NO_SUCH_SESSION,
                format!("no session named {name} in namespace {ns}"),
            ));
        }
        return Some((NO_MATCHING_SESSION, no_match(task, ns)));
    }
    if matching.iter().all(|p| p.blocked.is_some()) {
        let why: Vec<String> = matching
            .iter()
            .map(|p| {
                format!(
                    "{}: {}",
                    p.candidate.name,
                    p.blocked.as_deref().unwrap_or_default()
                )
            })
            .collect();
        return Some((
            SESSIONS_UNAVAILABLE,
            format!(
                "every session it may run on is unavailable ({})",
                why.join("; ")
            ),
        ));
    }
    None
}

fn no_match(task: &Task, ns: &str) -> String {
    let mut what = Vec::new();
    if let Some(sel) = &task.spec.session_selector {
        what.push(format!(
            "selector {}",
            crate::selector::Selector::from_label_selector(sel)
        ));
    }
    if let Some(w) = &task.spec.workdir {
        what.push(format!("workdir {w}"));
    }
    if task.spec.fresh_branch("", "").is_some() {
        what.push("need of a git workspace (it asks for a fresh branch)".into());
    }
    if what.is_empty() {
        format!("no session in namespace {ns}")
    } else {
        format!(
            "no session in namespace {ns} matches its {}",
            what.join(" and ")
        )
    }
}

/// The task's `Scheduled` condition, if any.
pub fn scheduled(task: &Task) -> Option<&Condition> {
    task.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == SCHEDULED)
}

/// Whether the task's status must be written: it is unplaceable and its
/// condition does not say so in these words, or it said so and no longer
/// applies (the condition then goes).
pub fn needs_write(task: &Task, why: Option<&(&'static str, String)>) -> bool {
    let now = scheduled(task).filter(|c| c.status == "False");
    match (now, why) {
        (None, None) => false,
        (Some(c), Some((reason, message))) => c.reason != *reason || c.message != *message,
        _ => true,
    }
}

/// A blocked account's description, with its limit's end when known.
pub fn account_blocked(a: &crate::api::Account) -> Option<String> {
    use crate::api::AccountPhase::*;
    let st = a.status.as_ref();
    let phase = st.and_then(|s| s.phase).unwrap_or_default();
    if a.spec.suspend {
        return Some(format!(
            "account {} is suspended",
            a.metadata.name.as_deref().unwrap_or_default()
        ));
    }
    if !matches!(phase, Exhausted | Unavailable | Suspended) {
        return None;
    }
    let until = st
        .and_then(|s| s.limit.as_ref())
        .and_then(|l| l.resets_at.as_ref())
        .filter(|t| SystemTime::from(t.0) > SystemTime::now())
        .map(|t| format!(" until {}", t.0))
        .unwrap_or_default();
    Some(format!(
        "account {} is {phase}{until}",
        a.metadata.name.as_deref().unwrap_or_default()
    ))
}

/// What becomes of a task in flight on a Session whose node is lost:
/// requeued (why, and whether the attempt is taken back) or left for the
/// node to finish when it returns (None). Never confirmed there
/// (`Dispatched`): back to the queue, the attempt not counted. Confirmed
/// running there: left, unless its spec allows another attempt.
pub fn on_lost_node(
    phase: TaskPhase,
    attempts: u32,
    max_attempts: Option<u32>,
    node: &str,
) -> Option<(String, bool)> {
    match phase {
        TaskPhase::Dispatched => Some((
            format!("its session's node {node} was lost before the task was confirmed there"),
            true,
        )),
        TaskPhase::Running if max_attempts.is_some_and(|m| attempts < m) => Some((
            format!(
                "its session's node {node} was lost while the task ran (attempt {attempts}; its spec allows another)"
            ),
            false,
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{TaskPriority, TaskSpec};
    use std::path::PathBuf;

    fn task(session: Option<&str>, team: Option<&str>) -> Task {
        let mut t = Task::new(
            "t",
            TaskSpec {
                prompt: "p".into(),
                priority: TaskPriority::Normal,
                model: None,
                session: session.map(str::to_string),
                session_selector: team.map(|v| crate::api::LabelSelector {
                    match_labels: Some([("team".to_string(), v.to_string())].into()),
                    match_expressions: None,
                }),
                workdir: None,
                timeout_seconds: None,
                max_attempts: None,
                workspace: None,
            },
        );
        t.metadata.namespace = Some("default".into());
        t
    }

    fn place(name: &str, team: &str, blocked: Option<&str>) -> Place {
        Place {
            candidate: Candidate {
                namespace: "default".into(),
                name: name.into(),
                labels: [("team".to_string(), team.to_string())].into(),
                workdir: PathBuf::from("/w"),
                worktrees_in: None,
                free: false,
                capped: Vec::new(),
                workspace: false,
            },
            blocked: blocked.map(str::to_string),
        }
    }

    #[test]
    fn each_reason_a_task_cannot_be_placed() {
        let places = [
            place("s1", "api", None),
            place("s2", "web", Some("account b is Exhausted until T")),
        ];
        // (task, expected reason)
        let cases = [
            (task(None, None), None),
            (task(Some("s1"), None), None),
            (task(Some("nosuch"), None), Some(NO_SUCH_SESSION)),
            (task(None, Some("api")), None),
            (task(None, Some("ops")), Some(NO_MATCHING_SESSION)),
            (task(None, Some("web")), Some(SESSIONS_UNAVAILABLE)),
            (task(Some("s2"), None), Some(SESSIONS_UNAVAILABLE)),
        ];
        for (t, want) in cases {
            let got = unplaceable(&t, &places);
            assert_eq!(got.as_ref().map(|g| g.0), want, "{:?}", t.spec);
        }
        let (_, m) = unplaceable(&task(Some("nosuch"), None), &places).unwrap();
        assert_eq!(m, "no session named nosuch in namespace default");
        let (_, m) = unplaceable(&task(None, Some("ops")), &places).unwrap();
        assert_eq!(
            m,
            "no session in namespace default matches its selector team=ops"
        );
        let (_, m) = unplaceable(&task(None, Some("web")), &places).unwrap();
        assert!(m.contains("s2: account b is Exhausted until T"), "{m}");
        assert_eq!(
            unplaceable(&task(None, None), &[]).unwrap().1,
            "no session in namespace default"
        );
    }

    #[test]
    fn the_condition_is_written_only_when_it_changes() {
        let mut t = task(Some("nosuch"), None);
        let why = unplaceable(&t, &[]);
        assert!(needs_write(&t, why.as_ref()));
        let (reason, message) = why.clone().unwrap();
        let mut st = crate::api::TaskStatus::default();
        crate::api::set_condition(
            &mut st.conditions,
            SCHEDULED,
            false,
            reason,
            &message,
            None,
            crate::api::now(),
        );
        t.status = Some(st);
        assert!(!needs_write(&t, why.as_ref()), "said already");
        assert!(needs_write(&t, None), "no longer true: the condition goes");
        assert!(
            !needs_write(&task(None, None), None),
            "a plain queue: no write"
        );
    }

    #[test]
    fn a_task_on_a_lost_node() {
        use crate::api::TaskPhase::*;
        let cases = [
            (Dispatched, 1, None, Some(true)),
            (Dispatched, 3, Some(3), Some(true)),
            (Running, 1, None, None),
            (Running, 1, Some(1), None),
            (Running, 1, Some(2), Some(false)),
            (Pending, 0, Some(3), None),
            (Succeeded, 1, Some(3), None),
        ];
        for (phase, attempts, max, want) in cases {
            let got = on_lost_node(phase, attempts, max, "n1");
            assert_eq!(
                got.as_ref().map(|g| g.1),
                want,
                "{phase:?} {attempts} {max:?}"
            );
            if let Some((why, _)) = got {
                assert!(why.contains("node n1 was lost"), "{why}");
            }
        }
    }
}

//! Autoscaling, pure: the size a pool with `spec.autoscale` should have,
//! from the tasks waiting for its Sessions, its idle Sessions, whether an
//! account can take more, and the time since the last change.

use crate::api::{
    Account, AccountPhase, Autoscale, Session, SessionPool, Task, TaskPhase, ordinal_of,
};
use crate::selector::Selector;
use std::time::Duration;

/// What the decision looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inputs {
    /// The size now (the last decision, else `spec.replicas`).
    pub current: u32,
    /// Pending tasks one of the pool's Sessions could take.
    pub waiting_tasks: u32,
    /// The pool's idle Sessions.
    pub idle: u32,
    /// A selected account is Available (neither draining, exhausted nor
    /// unavailable): new Sessions have somewhere to run.
    pub room: bool,
    /// Since the last change of size (None: never changed).
    pub since_last: Option<Duration>,
}

/// The size the pool should have.
pub fn decide(a: &Autoscale, i: &Inputs) -> u32 {
    let (min, max) = (a.min, a.max.max(a.min));
    let clamped = i.current.clamp(min, max);
    if clamped != i.current {
        return clamped;
    }
    let cooling = i
        .since_last
        .is_some_and(|d| d < Duration::from_secs(u64::from(a.cooldown_seconds)));
    if cooling {
        return clamped;
    }
    if i.waiting_tasks > 0 {
        if i.room && clamped < max {
            return clamped + i.waiting_tasks.min(max - clamped);
        }
        return clamped;
    }
    if i.idle > 0 && clamped > min {
        return clamped - i.idle.min(clamped - min);
    }
    clamped
}

/// Whether a pending task could run on one of the pool's Sessions: it
/// names one, its selector matches the template's labels, its workdir is
/// the template's, or it targets no session in particular.
pub fn waits_for(pool: &SessionPool, t: &Task) -> bool {
    if t.metadata.namespace != pool.metadata.namespace
        || t.status.as_ref().and_then(|s| s.phase).unwrap_or_default() != TaskPhase::Pending
    {
        return false;
    }
    let name = pool.metadata.name.as_deref().unwrap_or_default();
    let spec = &t.spec;
    if let Some(s) = &spec.session {
        return ordinal_of(name, s).is_some();
    }
    if let Some(sel) = &spec.session_selector {
        let mut labels = pool.spec.template.metadata.labels.clone();
        labels.insert(crate::api::POOL_LABEL.into(), name.into());
        return Selector::from_label_selector(sel).matches(Some(&labels));
    }
    if let Some(w) = &spec.workdir {
        return crate::fsutil::expand_home(w)
            == crate::fsutil::expand_home(&pool.spec.template.spec.workdir);
    }
    true
}

/// Whether a selected account is Available.
pub fn room(pool: &SessionPool, accounts: &[&Account]) -> bool {
    super::plan::candidates(pool, accounts)
        .iter()
        .any(|a| a.status.as_ref().and_then(|s| s.phase) == Some(AccountPhase::Available))
}

/// The pool's idle Sessions (at their prompt, no task).
pub fn idle(members: &[&Session]) -> u32 {
    members
        .iter()
        .filter(|s| s.metadata.deletion_timestamp.is_none() && !super::plan::busy(s))
        .filter(|s| {
            s.status.as_ref().and_then(|st| st.phase) == Some(crate::api::SessionPhase::Idle)
        })
        .count() as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::member_name;

    fn a(min: u32, max: u32) -> Autoscale {
        Autoscale {
            min,
            max,
            cooldown_seconds: 60,
        }
    }

    #[test]
    fn table() {
        let s = |n: u64| Some(Duration::from_secs(n));
        // (bounds, current, waiting, idle, room, since last, want)
        type Case = (Autoscale, u32, u32, u32, bool, Option<Duration>, u32);
        let cases: Vec<Case> = vec![
            // Grows by the queue, up to max.
            (a(1, 5), 2, 2, 0, true, None, 4),
            (a(1, 5), 4, 9, 0, true, s(120), 5),
            // Not onto accounts without room.
            (a(1, 5), 2, 3, 0, false, None, 2),
            // Not during the cooldown.
            (a(1, 5), 2, 3, 0, true, s(30), 2),
            // Shrinks by the idle ones, down to min.
            (a(1, 5), 4, 0, 2, true, s(61), 2),
            (a(1, 5), 4, 0, 4, true, None, 1),
            (a(1, 5), 4, 0, 2, true, s(10), 4),
            // Tasks waiting: no shrink even with idle sessions.
            (a(1, 5), 4, 1, 2, false, None, 4),
            // Out of bounds: back in at once, cooldown or not.
            (a(2, 5), 0, 0, 0, false, s(1), 2),
            (a(2, 5), 9, 0, 0, true, s(1), 5),
            // Nothing to do.
            (a(0, 3), 0, 0, 0, true, None, 0),
        ];
        for (bounds, current, waiting_tasks, idle, room, since_last, want) in cases {
            let i = Inputs {
                current,
                waiting_tasks,
                idle,
                room,
                since_last,
            };
            assert_eq!(decide(&bounds, &i), want, "{bounds:?} {i:?}");
        }
    }

    #[test]
    fn which_tasks_wait_for_the_pool() {
        let pool: SessionPool = serde_json::from_value(serde_json::json!({
            "apiVersion": "claude-failover.io/v1alpha1", "kind": "SessionPool",
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"replicas": 1, "template": {"metadata": {"labels": {"app": "web"}},
                     "spec": {"workdir": "/w"}}}
        }))
        .unwrap();
        let task = |spec: serde_json::Value, phase: &str| -> Task {
            serde_json::from_value(serde_json::json!({
                "apiVersion": "claude-failover.io/v1alpha1", "kind": "Task",
                "metadata": {"name": "t", "namespace": "default"},
                "spec": spec, "status": {"phase": phase}
            }))
            .unwrap()
        };
        let cases = [
            (serde_json::json!({"prompt": "x"}), "Pending", true),
            (serde_json::json!({"prompt": "x"}), "Running", false),
            (
                serde_json::json!({"prompt": "x", "session": member_name("web", 7)}),
                "Pending",
                true,
            ),
            (
                serde_json::json!({"prompt": "x", "session": "api-0"}),
                "Pending",
                false,
            ),
            (
                serde_json::json!({"prompt": "x", "sessionSelector": {"matchLabels": {"app": "web"}}}),
                "Pending",
                true,
            ),
            (
                serde_json::json!({"prompt": "x", "sessionSelector": {"matchLabels": {"app": "api"}}}),
                "Pending",
                false,
            ),
            (
                serde_json::json!({"prompt": "x", "workdir": "/w"}),
                "Pending",
                true,
            ),
            (
                serde_json::json!({"prompt": "x", "workdir": "/v"}),
                "Pending",
                false,
            ),
        ];
        for (spec, phase, want) in cases {
            assert_eq!(
                waits_for(&pool, &task(spec.clone(), phase)),
                want,
                "{spec} {phase}"
            );
        }
    }
}

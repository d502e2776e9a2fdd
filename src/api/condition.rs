//! Condition helpers with Kubernetes semantics: one condition per `type`,
//! `lastTransitionTime` moves only when `status` flips.

use super::{Condition, Time};

/// Sets (or adds) the condition `type_`. Returns true when anything changed.
///
/// `lastTransitionTime` is kept when the status is unchanged, so a reconcile
/// that re-asserts the same state does not look like a transition.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
    observed_generation: Option<i64>,
    now: Time,
) -> bool {
    let status_str = if status { "True" } else { "False" };
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(c) => {
            let flipped = c.status != status_str;
            let changed = flipped
                || c.reason != reason
                || c.message != message
                || c.observed_generation != observed_generation;
            if flipped {
                c.last_transition_time = now;
            }
            c.status = status_str.to_string();
            c.reason = reason.to_string();
            c.message = message.to_string();
            c.observed_generation = observed_generation;
            changed
        }
        None => {
            conditions.push(Condition {
                type_: type_.to_string(),
                status: status_str.to_string(),
                reason: reason.to_string(),
                message: message.to_string(),
                observed_generation,
                last_transition_time: now,
            });
            true
        }
    }
}

/// Read access to a list of conditions.
pub trait Conditions {
    fn condition(&self, type_: &str) -> Option<&Condition>;
    /// True when the condition exists with status `True`.
    fn is_true(&self, type_: &str) -> bool {
        self.condition(type_).is_some_and(|c| c.status == "True")
    }
}

impl Conditions for [Condition] {
    fn condition(&self, type_: &str) -> Option<&Condition> {
        self.iter().find(|c| c.type_ == type_)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn t(s: i64) -> Time {
        Time(Timestamp::from_second(s).unwrap())
    }

    #[test]
    fn transition_time_moves_only_on_flip() {
        let mut c = Vec::new();
        assert!(set_condition(
            &mut c,
            "Ready",
            false,
            "Starting",
            "",
            Some(1),
            t(10)
        ));
        assert!(!set_condition(
            &mut c,
            "Ready",
            false,
            "Starting",
            "",
            Some(1),
            t(20)
        ));
        assert_eq!(c[0].last_transition_time, t(10));
        // reason changes, status does not: no transition
        assert!(set_condition(
            &mut c,
            "Ready",
            false,
            "Waiting",
            "x",
            Some(1),
            t(30)
        ));
        assert_eq!(c[0].last_transition_time, t(10));
        assert!(set_condition(
            &mut c,
            "Ready",
            true,
            "Idle",
            "",
            Some(2),
            t(40)
        ));
        assert_eq!(c[0].last_transition_time, t(40));
        assert_eq!(c[0].observed_generation, Some(2));
        assert!(c.is_true("Ready"));
        assert!(!c.is_true("AgentAlive"));
        assert_eq!(c.len(), 1);
    }
}

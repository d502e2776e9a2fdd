//! A SessionPool's status: the counts of its Sessions and its `Ready`
//! and `Progressing` conditions, written when they change.

use super::plan::Plan;
use super::{Context, rollout};
use crate::api::{ObjectKey, SessionPool, SessionPoolStatus, set_condition};
use crate::store::{Durability, StoreError};

/// Writes the pool's status from a pass's plan (and the autoscaler's
/// size), lazily durable; nothing when it is as it was.
pub(super) async fn write_status(
    ctx: &Context,
    pool: &SessionPool,
    key: &ObjectKey,
    plan: Plan,
    scaled: Option<(u32, Option<crate::api::Time>)>,
) -> Result<(), StoreError> {
    let sh = &ctx.shared;
    let before = pool.status.clone().unwrap_or_default();
    let mut st: SessionPoolStatus = plan.status.clone();
    st.conditions = before.conditions.clone();
    if let Some((desired, last)) = scaled {
        st.desired_replicas = Some(desired);
        st.last_scale_time = last;
    }
    let want = pool.spec.replicas;
    let (ok, reason, message) = readiness(&plan, &st, want);
    let now = crate::api::now();
    set_condition(
        &mut st.conditions,
        "Ready",
        ok,
        reason,
        &message,
        pool.metadata.generation,
        now,
    );
    let (reason, message) = progress(&plan.rollout, &st, want);
    set_condition(
        &mut st.conditions,
        "Progressing",
        true,
        reason,
        &message,
        pool.metadata.generation,
        crate::api::now(),
    );
    if st == before {
        return Ok(());
    }
    let (ns, name) = (key.namespace.clone(), key.name.clone());
    match sh
        // Counts the next pass can tell again: durable soon, not at once.
        .blocking(move |s| {
            s.api::<SessionPool>(Some(&ns))
                .patch_status_as(&name, &st, Durability::Soon)
        })
        .await
    {
        Ok(_) | Err(StoreError::NotFound(_)) => Ok(()),
        Err(e) => Err(e),
    }
}

/// The `Ready` condition: whether the pool has its sessions, all ready,
/// and if not what it waits for.
fn readiness(plan: &Plan, st: &SessionPoolStatus, want: u32) -> (bool, &'static str, String) {
    if !plan.waiting_for_turn.is_empty() {
        (
            false,
            "WaitingForTurns",
            format!(
                "scaling down to {want}: waiting for the turn of {} to end",
                plan.waiting_for_turn.join(", ")
            ),
        )
    } else if !plan.unchecked_accounts.is_empty() {
        (
            false,
            "WaitingForAccounts",
            format!(
                "waiting for the account controller to check {}",
                plan.unchecked_accounts.join(", ")
            ),
        )
    } else if st.replicas < want {
        (
            false,
            "ScalingUp",
            format!("{} of {want} sessions", st.replicas),
        )
    } else if st.replicas > want {
        (
            false,
            "ScalingDown",
            format!("{} of {want} sessions", st.replicas),
        )
    } else if st.ready < want {
        (
            false,
            "SessionsNotReady",
            format!("{} of {want} sessions ready", st.ready),
        )
    } else {
        (true, "AllReady", format!("{want} sessions ready"))
    }
}

/// The `Progressing` condition's reason and message: where the rollout of
/// the current template stands.
fn progress(r: &rollout::Rollout, st: &SessionPoolStatus, want: u32) -> (&'static str, String) {
    let hash = &st.update_revision;
    if st.updated_replicas == want && st.replicas == want && st.updated_ready == want {
        return (
            "RolloutComplete",
            format!("{want} sessions run template {hash}"),
        );
    }
    let mut message = format!(
        "{} of {want} sessions updated to template {hash}, {} ready",
        st.updated_replicas, st.updated_ready
    );
    if !r.after_turn.is_empty() {
        message.push_str(&format!(
            "; waiting for the turn of {} to end",
            r.after_turn.join(", ")
        ));
    }
    if !r.queued.is_empty() {
        message.push_str(&format!("; then {}", r.queued.join(", ")));
    }
    ("RollingOut", message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_says_what_the_pool_waits_for() {
        let st = |replicas, ready| SessionPoolStatus {
            replicas,
            ready,
            ..Default::default()
        };
        let waiting = Plan {
            waiting_for_turn: vec!["web-1".into()],
            ..Default::default()
        };
        let unchecked = Plan {
            unchecked_accounts: vec!["b".into()],
            ..Default::default()
        };
        let plain = Plan::default();
        let cases = [
            (
                "a turn first",
                &waiting,
                st(3, 3),
                2,
                "WaitingForTurns",
                "scaling down to 2: waiting for the turn of web-1 to end",
            ),
            (
                "accounts first",
                &unchecked,
                st(1, 1),
                3,
                "WaitingForAccounts",
                "waiting for the account controller to check b",
            ),
            ("up", &plain, st(1, 1), 3, "ScalingUp", "1 of 3 sessions"),
            (
                "down",
                &plain,
                st(4, 4),
                3,
                "ScalingDown",
                "4 of 3 sessions",
            ),
            (
                "not ready",
                &plain,
                st(3, 2),
                3,
                "SessionsNotReady",
                "2 of 3 sessions ready",
            ),
            ("ready", &plain, st(3, 3), 3, "AllReady", "3 sessions ready"),
        ];
        for (name, plan, st, want, reason, message) in cases {
            let got = readiness(plan, &st, want);
            let ok = reason == "AllReady";
            assert_eq!(got, (ok, reason, message.to_string()), "{name}");
        }
    }
}

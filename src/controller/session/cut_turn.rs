//! A turn a usage limit cut short (`status.interrupted`): when it may go
//! on, and typing the continue message.
//!
//! The session controller reports the limit (`status.usage.failure`); the
//! account controller, which may run on another node, turns the account
//! `Exhausted` from that report. Until it has, the account still reads
//! `Available`: the cut turn goes on there only once the account has been
//! seen back after the cut (its `Available` condition turned true since),
//! or when no limit followed the report within [`CUT_UNHEARD`]. On
//! another account (the session was moved) it goes on at once.

use super::observe;
use super::plan::Observed;
use super::{Context, Error};
use crate::agent::state::AgentState;
use crate::api::{
    Account, AccountPhase, Conditions, Interruption, ObjectKey, Session, SessionStatus,
};
use std::time::{Duration, SystemTime};

/// Longest wait for the composer before typing the continue message.
const CONTINUE_COMPOSER: Duration = Duration::from_secs(10);

/// How long a cut on the account the session still runs on waits for the
/// account controller to take it as a limit; past it (the limit was not
/// one the account controller keeps, or no leader is there to hear it)
/// the turn goes on where it is.
pub const CUT_UNHEARD: Duration = Duration::from_secs(60);

/// Whether the turn cut as `cut` may go on now on `running` (the account
/// the session's agent runs under). Pure.
pub fn may_continue(cut: &Interruption, running: &Account, now: SystemTime) -> bool {
    let status = running.status.as_ref();
    let usable = matches!(
        status.and_then(|x| x.phase),
        Some(AccountPhase::Available | AccountPhase::NearLimit) | None
    );
    if !usable {
        return false;
    }
    let moved = cut.account.is_some() && cut.account != running.metadata.name;
    if moved {
        return true;
    }
    // Condition times are to the second: a transition in the cut's own
    // second is not taken as after it.
    let back_since = status
        .and_then(|x| x.conditions.condition("Available"))
        .is_some_and(|c| {
            c.status == "True" && c.last_transition_time.0.as_second() > cut.at.0.as_second()
        });
    let cut_at = SystemTime::from(cut.at.0);
    back_since || now.duration_since(cut_at).unwrap_or_default() >= CUT_UNHEARD
}

/// A turn a usage limit cut short goes on once the session's account can
/// take work again ([`may_continue`]): a task to replay is the
/// dispatcher's (only the limit dialog is dismissed for it); otherwise the
/// continue message is typed, once per interruption.
pub async fn continue_cut_turn(
    ctx: &Context,
    s: &Session,
    st: &mut SessionStatus,
    o: &Observed,
    running_on: Option<&Account>,
) -> Result<(), Error> {
    let sh = &ctx.shared;
    let key = ObjectKey::of(s);
    let Some(cut) = st.interrupted.clone() else {
        return Ok(());
    };
    let now = sh.now();
    let usable = running_on.is_some_and(|a| may_continue(&cut, a, now));
    let at_prompt = matches!(o.state, AgentState::Idle | AgentState::Waiting(_));
    let Some(pane) = o.pane.as_ref().filter(|p| !p.dead && o.launched) else {
        return Ok(());
    };
    let moving = st.launch.as_ref().is_some_and(|l| l.confirmed_at.is_none());
    if !usable || !at_prompt || moving || sh.settings.continue_message.is_empty() {
        return Ok(());
    }
    let cut_at = SystemTime::from(cut.at.0);
    {
        let mut mem = ctx.memory.lock().expect("lock");
        let m = mem.entry(key.clone()).or_default();
        if m.continued == Some(cut_at) {
            return Ok(());
        }
        m.continued = Some(cut_at);
    }
    sh.driver.dismiss_limit_dialog(pane).await?;
    if has_task(ctx, &key) {
        return Ok(());
    }
    // Typed before (a daemon that died before the agent's hook reached it):
    // the agent's own history says so.
    let accounts: Vec<&Account> = running_on.into_iter().collect();
    let (dir, msg) = (
        observe::config_dir(st, &accounts),
        sh.settings.continue_message.clone(),
    );
    let typed = sh
        .blocking(move |_| crate::agent::driver::in_history(&dir, &msg))
        .await
        .is_some_and(|t| t > cut_at);
    if typed
        || !sh
            .driver
            .wait_composer_empty(pane, CONTINUE_COMPOSER)
            .await?
    {
        return Ok(());
    }
    sh.driver
        .type_then_enter(pane, &sh.settings.continue_message)
        .await?;
    ctx.record(
        &key,
        false,
        "Continued",
        &format!(
            "typed {:?}: the turn a usage limit cut short goes on",
            sh.settings.continue_message
        ),
    )
    .await;
    Ok(())
}

/// A task is in flight on the session, or waits to be replayed there.
fn has_task(ctx: &Context, key: &ObjectKey) -> bool {
    use crate::api::TaskPhase;
    ctx.shared
        .caches
        .tasks
        .indexed(
            super::super::BY_SESSION,
            &crate::store::cache::index_key(&key.namespace, &key.name),
        )
        .iter()
        .any(|t| {
            t.status.as_ref().is_some_and(|ts| {
                ts.replay_on.as_deref() == Some(key.name.as_str())
                    && ts.phase == Some(TaskPhase::Pending)
                    || ts.session.as_deref() == Some(key.name.as_str())
                        && matches!(ts.phase, Some(TaskPhase::Dispatched | TaskPhase::Running))
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{AccountSpec, AccountStatus, Time};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

    fn at(s: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + s)
    }

    fn bare(name: &str) -> Account {
        Account::new(name, AccountSpec::in_dir(format!("/a/{name}")))
    }

    fn account(name: &str, phase: AccountPhase, available_since: Option<u64>) -> Account {
        let mut a = bare(name);
        a.status = Some(AccountStatus {
            phase: Some(phase),
            conditions: available_since
                .map(|t| Condition {
                    type_: "Available".into(),
                    status: "True".into(),
                    reason: "Available".into(),
                    message: String::new(),
                    observed_generation: None,
                    last_transition_time: Time(crate::quota::jiff_of(at(t))),
                })
                .into_iter()
                .collect(),
            ..Default::default()
        });
        a
    }

    fn cut(on: Option<&str>, t: u64) -> Interruption {
        Interruption {
            by: "rate_limit".into(),
            at: crate::api::micro(at(t) + Duration::from_millis(400)),
            account: on.map(str::to_string),
        }
    }

    #[test]
    fn a_cut_turn_goes_on_once_its_account_is_known_to_be_back() {
        use AccountPhase::*;
        let unheard = CUT_UNHEARD.as_secs();
        let cases = [
            // The account controller has not yet taken the cut in: the
            // account still reads Available, as it did before the cut.
            (
                cut(Some("a"), 100),
                account("a", Available, Some(50)),
                101,
                false,
            ),
            (
                cut(Some("a"), 100),
                account("a", Exhausted, None),
                101,
                false,
            ),
            // It has, and the window has reset since.
            (
                cut(Some("a"), 100),
                account("a", Available, Some(400)),
                401,
                true,
            ),
            (
                cut(Some("a"), 100),
                account("a", NearLimit, Some(400)),
                401,
                true,
            ),
            // Back within the cut's own second: not told apart.
            (
                cut(Some("a"), 100),
                account("a", Available, Some(100)),
                101,
                false,
            ),
            // No limit followed the report: the turn goes on where it is.
            (
                cut(Some("a"), 100),
                account("a", Available, Some(50)),
                101 + unheard,
                true,
            ),
            (
                cut(Some("a"), 100),
                account("a", Exhausted, None),
                101 + unheard,
                false,
            ),
            // Moved to another account: at once, if that one can work.
            (
                cut(Some("a"), 100),
                account("b", Available, Some(50)),
                101,
                true,
            ),
            (
                cut(Some("a"), 100),
                account("b", Exhausted, None),
                101,
                false,
            ),
            // The account the turn ran on is unknown: as if the same.
            (
                cut(None, 100),
                account("b", Available, Some(50)),
                101,
                false,
            ),
        ];
        for (i, (c, a, now, want)) in cases.into_iter().enumerate() {
            assert_eq!(may_continue(&c, &a, at(now)), want, "case {i}");
        }
        // An account with no status yet (just applied): as Available.
        let fresh = bare("b");
        assert!(may_continue(&cut(Some("a"), 100), &fresh, at(101)));
    }
}

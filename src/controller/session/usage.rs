//! What a session's agent said of its account's usage, for the Session's
//! status (`status.usage`): the leader's account controller reads it from
//! the store, whichever node the session runs on. Written when it changes
//! (a rate limit moved, a new failure, a turn ended after one) and
//! refreshed while the agent keeps saying the same, so it never ages out
//! while the agent speaks. Pure but for the transcript read.

use super::Context;
use crate::agent::signals::AgentSignals;
use crate::api::{AccountUsage, AgentFailure, AgentUsage, MicroTime, Time};
use crate::quota::jiff_of;
use std::time::{Duration, SystemTime};

/// Rate limits that stay the same are written again this often (well
/// within the age at which the account controller stops counting them).
pub const RATE_LIMITS_REFRESH: Duration = Duration::from_secs(300);
/// How recent a usage-limit failure must be for its transcript to be read.
pub const LOGGED_WITHIN: Duration = Duration::from_secs(120);
/// The failures that tell of the account.
const ACCOUNT_ERRORS: &[&str] = &["rate_limit", "authentication_failed"];

/// The newest failure an agent reported that tells of its account: of its
/// turn, or of a subagent or helper request (their usage limit is the
/// account's too).
pub fn newest_failure(sig: &AgentSignals) -> Option<&(String, String, SystemTime)> {
    [&sig.last_failure, &sig.side_failure]
        .into_iter()
        .flatten()
        .filter(|(error, _, _)| ACCOUNT_ERRORS.contains(&error.as_str()))
        .max_by_key(|(_, _, t)| *t)
}

fn same_instant(a: &MicroTime, b: SystemTime) -> bool {
    a.0.as_microsecond() == jiff_of(b).as_microsecond()
}

/// What the status says of the agent's usage now. `prev`: what it said;
/// `account`: the account the agent runs under (None: no agent runs);
/// `logged_reset`: the reset time the agent's transcript gives for its
/// newest usage-limit failure.
pub fn report(
    prev: Option<&AgentUsage>,
    sig: &AgentSignals,
    account: Option<&str>,
    logged_reset: Option<SystemTime>,
    now: SystemTime,
) -> Option<AgentUsage> {
    let account = sig.account.as_deref().or(account)?;
    let prev = prev.filter(|p| p.account == account);
    let rate_limits = sig.statusline.as_ref().and_then(|(v, t)| {
        let readings = crate::quota::from_statusline(v, *t);
        let said = crate::quota::usage_status(readings.iter().map(|(w, r)| (*w, r)));
        if said == AccountUsage::default() {
            return None;
        }
        let kept = prev.and_then(|p| p.rate_limits.as_ref()).filter(|p| {
            same_values(p, &said) && fresh(p, now) && observed(p).is_some_and(|o| o <= *t)
        });
        Some(kept.cloned().unwrap_or(said))
    });
    let failure = newest_failure(sig).map(|(error, _, at)| {
        let known = prev
            .and_then(|p| p.failure.as_ref())
            .filter(|f| same_instant(&f.at, *at));
        let mut f = known.cloned().unwrap_or_else(|| AgentFailure {
            error: error.clone(),
            at: crate::api::micro(*at),
            resets_at: logged_reset
                .filter(|r| r > at && error == "rate_limit")
                .map(|r| Time(jiff_of(r))),
            recovered_at: None,
        });
        if f.recovered_at.is_none()
            && let Some((_, stop)) = &sig.last_stop
            && stop > at
        {
            f.recovered_at = Some(crate::api::micro(*stop));
        }
        f
    });
    (rate_limits.is_some() || failure.is_some()).then(|| AgentUsage {
        account: account.to_string(),
        rate_limits,
        failure,
    })
}

/// The same percentages and reset times, whenever observed.
fn same_values(a: &AccountUsage, b: &AccountUsage) -> bool {
    let values = |u: &AccountUsage| {
        crate::quota::status_readings(u)
            .into_iter()
            .map(|(w, r)| (w, (r.utilization * 10.0).round() as i64, r.resets_at))
            .collect::<Vec<_>>()
    };
    values(a) == values(b)
}

/// When the rate limits were last written (their oldest reading).
fn observed(u: &AccountUsage) -> Option<SystemTime> {
    crate::quota::status_readings(u)
        .iter()
        .map(|(_, r)| r.observed_at)
        .min()
}

fn fresh(u: &AccountUsage, now: SystemTime) -> bool {
    observed(u).is_some_and(|o| now.duration_since(o).unwrap_or_default() < RATE_LIMITS_REFRESH)
}

/// The reset time the agent's transcript gives for its newest usage-limit
/// failure, when that failure is recent and not yet in the status (2.1.332
/// writes a limit entry; an older release, none).
pub async fn logged_reset(
    ctx: &Context,
    prev: Option<&AgentUsage>,
    sig: &AgentSignals,
    now: SystemTime,
) -> Option<SystemTime> {
    let (error, _, at) = newest_failure(sig)?;
    let known = prev
        .and_then(|p| p.failure.as_ref())
        .is_some_and(|f| same_instant(&f.at, *at));
    let recent = now.duration_since(*at).unwrap_or_default() < LOGGED_WITHIN;
    if error != "rate_limit" || known || !recent {
        return None;
    }
    let (path, at) = (sig.transcript_path.clone()?, *at);
    ctx.shared
        .blocking(move |_| crate::agent::hooks::latest_limit(path.as_ref(), at)?.resets_at)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn system(t: &Time) -> SystemTime {
        SystemTime::from(t.0)
    }

    fn at(s: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + s)
    }

    fn said(used: f64, t: u64) -> AgentSignals {
        AgentSignals {
            statusline: Some((
                json!({"rate_limits": {"five_hour": {"used_percentage": used, "resets_at": 1_800_010_000}}}),
                at(t),
            )),
            ..Default::default()
        }
    }

    fn five_hour(u: &AgentUsage) -> (f64, SystemTime) {
        let w = u.rate_limits.as_ref().unwrap().five_hour.as_ref().unwrap();
        (w.utilization, system(&w.observed_at))
    }

    #[test]
    fn rate_limits_are_written_when_they_move_and_refreshed_while_they_stay() {
        let first = report(None, &said(40.0, 0), Some("a"), None, at(0)).unwrap();
        assert_eq!(first.account, "a");
        assert_eq!(five_hour(&first), (40.0, at(0)));
        // The same figure a minute later: nothing to write.
        let same = report(Some(&first), &said(40.0, 60), Some("a"), None, at(60)).unwrap();
        assert_eq!(same, first);
        // A new figure: written with its time.
        let moved = report(Some(&first), &said(41.0, 90), Some("a"), None, at(90)).unwrap();
        assert_eq!(five_hour(&moved), (41.0, at(90)));
        // The same figure past the refresh: written again, so it stays fresh.
        let t = RATE_LIMITS_REFRESH.as_secs() + 1;
        let refreshed = report(Some(&first), &said(40.0, t), Some("a"), None, at(t)).unwrap();
        assert_eq!(five_hour(&refreshed), (40.0, at(t)));
        // API-key mode says no rate limits: nothing to tell.
        let mut quiet = said(0.0, 0);
        quiet.statusline = Some((json!({"model": {}}), at(0)));
        assert_eq!(report(None, &quiet, Some("a"), None, at(0)), None);
    }

    #[test]
    fn the_agent_and_its_account_decide_whose_usage_it_is() {
        // No agent runs: nothing.
        assert_eq!(report(None, &said(40.0, 0), None, None, at(0)), None);
        // The account the agent was launched under wins over the status's.
        let mut sig = said(40.0, 0);
        sig.account = Some("b".into());
        let u = report(None, &sig, Some("a"), None, at(0)).unwrap();
        assert_eq!(u.account, "b");
        // What was said under another account is not carried over.
        let on_a = report(None, &said(40.0, 0), Some("a"), None, at(0)).unwrap();
        let on_b = report(Some(&on_a), &said(40.0, 30), Some("b"), None, at(30)).unwrap();
        assert_eq!((on_b.account.as_str(), five_hour(&on_b).1), ("b", at(30)));
    }

    #[test]
    fn a_failure_is_told_once_with_its_reset_and_its_recovery() {
        let mut sig = said(90.0, 0);
        sig.last_failure = Some(("rate_limit".into(), "hit".into(), at(10)));
        let hit = report(None, &sig, Some("a"), Some(at(3600)), at(10)).unwrap();
        let f = hit.failure.clone().unwrap();
        assert_eq!(
            (f.error.as_str(), f.resets_at.as_ref().map(system)),
            ("rate_limit", Some(at(3600)))
        );
        // Read again without the transcript's word: what was written stays.
        let again = report(Some(&hit), &sig, Some("a"), None, at(20)).unwrap();
        assert_eq!(again, hit);
        // Another error is no news of the account.
        sig.side_failure = Some(("server_error".into(), "x".into(), at(30)));
        assert_eq!(
            report(Some(&hit), &sig, Some("a"), None, at(30)),
            Some(hit.clone())
        );
        // An authentication failure, then a turn that ended well.
        sig.last_failure = Some(("authentication_failed".into(), "x".into(), at(40)));
        let auth = report(Some(&hit), &sig, Some("a"), Some(at(3600)), at(40)).unwrap();
        let f = auth.failure.clone().unwrap();
        assert_eq!(
            (f.error.as_str(), f.resets_at),
            ("authentication_failed", None)
        );
        sig.last_stop = Some(("ok".into(), at(50)));
        let back = report(Some(&auth), &sig, Some("a"), None, at(50)).unwrap();
        let f = back.failure.unwrap();
        assert!(same_instant(f.recovered_at.as_ref().unwrap(), at(50)));
        // A reset before the failure is no reset of it.
        sig.last_failure = Some(("rate_limit".into(), "hit".into(), at(60)));
        let u = report(Some(&auth), &sig, Some("a"), Some(at(5)), at(60)).unwrap();
        assert_eq!(u.failure.unwrap().resets_at, None);
    }
}

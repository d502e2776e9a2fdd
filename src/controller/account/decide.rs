//! The account controller's decisions. Pure: the inputs of an account's
//! phase from what is remembered, the status it gets, whether it is worth
//! a write, and when to look again.

use super::memory::Memory;
use crate::api::{
    Account, AccountLimit, AccountPhase, AccountStatus, AccountUsage, Time, set_condition,
};
use crate::quota::{AccountInputs, Verdict, Window, fuse, jiff_of};
use std::time::{Duration, SystemTime};

#[derive(Debug, Clone)]
pub struct QuotaSettings {
    /// A reading older than this no longer counts.
    pub stale: Duration,
    /// Points below the threshold needed to leave NearLimit.
    pub hysteresis: f64,
    pub poll_interval: Duration,
    pub usage_base_url: String,
}

impl Default for QuotaSettings {
    fn default() -> Self {
        QuotaSettings {
            stale: Duration::from_secs(900),
            hysteresis: 5.0,
            poll_interval: Duration::from_secs(300),
            usage_base_url: "https://api.anthropic.com".into(),
        }
    }
}

/// Reading times older than this are rewritten even if nothing else moved.
pub const REFRESH_TIMES: Duration = Duration::from_secs(60);

fn time(t: SystemTime) -> Time {
    Time(jiff_of(t))
}

fn system(t: &Time) -> SystemTime {
    SystemTime::from(t.0)
}

/// The inputs of the phase of `a`, from memory. Updates memory: a limit of
/// unknown end learns it from a later poll; a limit that no longer holds
/// (its window reset, or a poll shows room) is forgotten.
pub fn inputs(m: &mut Memory, a: &Account, st: &QuotaSettings, now: SystemTime) -> AccountInputs {
    let previous = a.status.as_ref().and_then(|s| s.phase).unwrap_or_default();
    let fused = |w: Window| m.readings.get(&w).and_then(|r| fuse(r, now, st.stale));
    let mut inputs = AccountInputs {
        suspend: a.spec.suspend,
        thresholds: a.spec.thresholds,
        hysteresis: st.hysteresis,
        five_hour: fused(Window::FiveHour),
        seven_day: fused(Window::SevenDay),
        seven_day_opus: fused(Window::SevenDayOpus),
        seven_day_sonnet: fused(Window::SevenDaySonnet),
        limit: m.limit.clone(),
        auth_failed: m.auth_failed,
        previous,
    };
    if let Some(l) = m.limit.as_mut()
        && l.resets_at.is_none()
        && let Some(end) = Window::ALL
            .iter()
            .filter_map(|w| m.readings.get(w)?.iter().max_by_key(|r| r.observed_at))
            .filter(|r| r.source == "poll" && r.observed_at > l.at && r.utilization >= 100.0)
            .filter_map(|r| r.resets_at)
            .max()
    {
        l.resets_at = Some(end);
        inputs.limit = Some(l.clone());
    }
    if let Some(l) = &m.limit
        && (!l.holds(now) || inputs.lifted())
    {
        m.limit = None;
        inputs.limit = None;
    }
    inputs
}

/// The status the account controller writes for `a`: its phase, usage,
/// limit, projection, sessions and `Available` condition. `projection`:
/// the time to the threshold now computed, if any.
pub fn status(
    a: &Account,
    inputs: &AccountInputs,
    verdict: &Verdict,
    projection: Option<SystemTime>,
    sessions: u32,
    now: SystemTime,
) -> AccountStatus {
    let before = a.status.clone().unwrap_or_default();
    let mut status = before.clone();
    status.phase = Some(verdict.phase);
    let usage = crate::quota::usage_status(
        [
            (Window::FiveHour, &inputs.five_hour),
            (Window::SevenDay, &inputs.seven_day),
            (Window::SevenDayOpus, &inputs.seven_day_opus),
            (Window::SevenDaySonnet, &inputs.seven_day_sonnet),
        ]
        .into_iter()
        .filter_map(|(w, r)| Some((w, r.as_ref()?))),
    );
    status.usage = (usage != AccountUsage::default()).then_some(usage);
    status.limit = inputs.limit.as_ref().map(|l| AccountLimit {
        at: time(l.at),
        resets_at: l.resets_at.map(time),
        source: l.source.clone(),
    });
    // Nothing new to project from (say, after a restart, with one reading
    // in memory): an earlier projection of the same reading still stands
    // while it lies ahead.
    let same_reading = before
        .usage
        .as_ref()
        .and_then(|u| u.five_hour.as_ref())
        .zip(inputs.five_hour.as_ref())
        .is_some_and(|(b, r)| {
            (b.utilization - (r.utilization * 10.0).round() / 10.0).abs() < 0.05
                && b.resets_at.as_ref().map(system) == r.resets_at
        });
    let kept = before
        .projected_limit_at
        .clone()
        .filter(|t| same_reading && system(t) > now);
    status.projected_limit_at = projection.map(time).or(kept);
    status.sessions = Some(sessions);
    status.observed_generation = a.metadata.generation;
    set_condition(
        &mut status.conditions,
        "Available",
        verdict.phase == AccountPhase::Available,
        verdict.reason,
        &verdict.message,
        a.metadata.generation,
        time(now),
    );
    status
}

/// The status without the reading times: two statuses that differ only in
/// when the same values were seen are not worth a write (unless old).
fn without_times(s: &AccountStatus) -> AccountStatus {
    let mut s = s.clone();
    if let Some(u) = &mut s.usage {
        for w in u.windows_mut().into_iter().flatten() {
            w.observed_at = Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
        }
    }
    s.failover = None;
    s
}

fn oldest_observed(s: &AccountStatus) -> Option<SystemTime> {
    let mut u = s.usage.clone()?;
    u.windows_mut()
        .into_iter()
        .flatten()
        .map(|w| system(&w.observed_at))
        .min()
}

/// Whether `after` is worth writing over `before`.
pub fn worth_writing(before: &AccountStatus, after: &AccountStatus, now: SystemTime) -> bool {
    let stale_times = oldest_observed(before)
        .is_some_and(|t| now.duration_since(t).unwrap_or_default() > REFRESH_TIMES);
    without_times(after) != without_times(before) || stale_times
}

/// When the next reset or expiry that could change the phase comes.
pub fn wake_at(inputs: &AccountInputs, st: &QuotaSettings) -> Option<SystemTime> {
    let readings = Window::ALL.into_iter().filter_map(|w| inputs.reading(w));
    readings
        .flat_map(|r| [r.resets_at, Some(r.observed_at + st.stale)])
        .chain([inputs.limit.as_ref().and_then(|l| l.resets_at)])
        .flatten()
        .min()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quota::{Limit, Reading};

    fn at(s: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(s)
    }

    fn account(phase: Option<AccountPhase>) -> Account {
        let mut a = Account::new("a", crate::api::AccountSpec::in_dir("/a"));
        a.status = Some(AccountStatus {
            phase,
            ..Default::default()
        });
        a
    }

    fn reading(used: f64, source: &str, seen: u64, resets: Option<u64>) -> Reading {
        Reading {
            utilization: used,
            resets_at: resets.map(at),
            source: source.into(),
            observed_at: at(seen),
        }
    }

    fn decide(m: &mut Memory, a: &Account, now: u64) -> AccountStatus {
        let st = QuotaSettings::default();
        let i = inputs(m, a, &st, at(now));
        let v = crate::quota::phase(&i, at(now));
        status(a, &i, &v, None, 1, at(now))
    }

    #[test]
    fn phases_from_readings_and_limits() {
        let a = account(Some(AccountPhase::Available));
        let cases = [
            (40.0, None, AccountPhase::Available),
            (92.0, None, AccountPhase::NearLimit),
            (
                50.0,
                Some(Limit {
                    at: at(900),
                    resets_at: Some(at(5000)),
                    source: "hook".into(),
                }),
                AccountPhase::Exhausted,
            ),
        ];
        for (used, limit, want) in cases {
            let mut m = Memory::default();
            m.push(
                Window::FiveHour,
                reading(used, "statusLine", 990, Some(5000)),
            );
            m.limit = limit;
            let s = decide(&mut m, &a, 1000);
            assert_eq!(s.phase, Some(want), "{used}%");
            assert_eq!(s.sessions, Some(1));
        }
    }

    #[test]
    fn a_limit_learns_its_end_from_a_poll_and_goes_at_the_reset() {
        let a = account(Some(AccountPhase::Exhausted));
        let mut m = Memory::default();
        m.limit = Some(Limit {
            at: at(100),
            resets_at: None,
            source: "hook".into(),
        });
        m.push(Window::FiveHour, reading(100.0, "poll", 200, Some(3000)));
        let s = decide(&mut m, &a, 300);
        assert_eq!(s.phase, Some(AccountPhase::Exhausted));
        assert_eq!(
            s.limit.unwrap().resets_at.map(|t| system(&t)),
            Some(at(3000))
        );
        // At the reset the limit no longer holds.
        let s = decide(&mut m, &a, 3001);
        assert!(s.limit.is_none());
        assert!(m.limit.is_none());
    }

    #[test]
    fn writes_only_what_changed_or_aged() {
        let a = account(Some(AccountPhase::Available));
        let mut m = Memory::default();
        m.push(
            Window::FiveHour,
            reading(40.0, "statusLine", 1000, Some(9000)),
        );
        let first = decide(&mut m, &a, 1000);
        let mut again = first.clone();
        again
            .usage
            .as_mut()
            .unwrap()
            .five_hour
            .as_mut()
            .unwrap()
            .observed_at = time(at(1010));
        assert!(
            !worth_writing(&first, &again, at(1010)),
            "only the time moved"
        );
        assert!(worth_writing(&first, &again, at(1100)), "the times aged");
        let st = QuotaSettings::default();
        let i = inputs(&mut m, &a, &st, at(1000));
        assert_eq!(
            wake_at(&i, &st),
            Some(at(1900)),
            "the reading goes stale first"
        );
    }
}

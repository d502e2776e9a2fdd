//! What the account controller remembers of one account between passes:
//! the usage readings of each window (from every source), the hard limit
//! a rejected turn revealed, an authentication failure. Its durable side
//! is the Account's status, which a restarted daemon starts from. Pure.

use crate::api::{AccountStatus, AccountUsage, AgentUsage, MicroTime, ObjectKey, Time};
use crate::quota::{Limit, Reading, Window};
use std::collections::HashMap;
use std::time::{Duration, SystemTime};

/// Readings kept per window.
pub const READINGS_KEPT: usize = 32;

/// What one session's signals last contributed.
#[derive(Debug, Default, Clone, PartialEq)]
struct Seen {
    /// The rate limits last taken in (their times are to the second: two
    /// reports within one second differ in their figures only).
    rate_limits: Option<AccountUsage>,
    failure: Option<SystemTime>,
}

#[derive(Debug, Default)]
pub struct Memory {
    pub readings: HashMap<Window, Vec<Reading>>,
    pub limit: Option<Limit>,
    pub auth_failed: Option<SystemTime>,
    seen: HashMap<ObjectKey, Seen>,
    /// A poll of the usage endpoint is in flight.
    pub polling: bool,
    /// The ledger's projection and when it was computed.
    pub ledger: Option<(std::time::Instant, Option<SystemTime>)>,
    /// The usage endpoint refused the token (told once).
    pub poll_refused: bool,
}

fn system(t: &Time) -> SystemTime {
    SystemTime::from(t.0)
}

fn micro_system(t: &MicroTime) -> SystemTime {
    SystemTime::from(t.0)
}

impl Memory {
    /// Starts from what an earlier run wrote.
    pub fn from_status(s: &AccountStatus) -> Memory {
        let mut m = Memory::default();
        for (w, r) in s.usage.iter().flat_map(crate::quota::status_readings) {
            m.push(w, r);
        }
        m.limit = s.limit.as_ref().map(|l| Limit {
            at: system(&l.at),
            resets_at: l.resets_at.as_ref().map(system),
            source: l.source.clone(),
        });
        m
    }

    pub fn push(&mut self, w: Window, r: Reading) {
        let v = self.readings.entry(w).or_default();
        v.push(r);
        if v.len() > READINGS_KEPT {
            v.remove(0);
        }
    }

    pub fn latest(&self, w: Window) -> Option<&Reading> {
        self.readings.get(&w)?.iter().max_by_key(|r| r.observed_at)
    }

    /// Takes in what one session's agent said since the last pass (as its
    /// node wrote it), if that agent runs under `account` (a Session copy
    /// not yet updated may still show a moved session here).
    pub fn absorb(&mut self, account: &str, session: &ObjectKey, usage: &AgentUsage) {
        if usage.account != account {
            return;
        }
        let mut seen = self.seen.get(session).cloned().unwrap_or_default();
        if let Some(said) = &usage.rate_limits
            && seen.rate_limits.as_ref() != Some(said)
        {
            seen.rate_limits = Some(said.clone());
            for (w, r) in crate::quota::status_readings(said) {
                self.push(w, r);
            }
        }
        if let Some(f) = &usage.failure {
            let t = micro_system(&f.at);
            if seen.failure != Some(t) {
                seen.failure = Some(t);
                self.failed(session, &f.error, t, f.resets_at.as_ref().map(system));
            }
            if let (Some(failed), Some(back)) = (self.auth_failed, &f.recovered_at)
                && micro_system(back) > failed
            {
                self.auth_failed = None;
            }
        }
        self.seen.insert(session.clone(), seen);
    }

    /// A failure reported at `t`: a usage limit (its reset as the agent's
    /// transcript says, else that of the fullest window known) or an
    /// authentication refused.
    fn failed(
        &mut self,
        session: &ObjectKey,
        error: &str,
        t: SystemTime,
        logged: Option<SystemTime>,
    ) {
        match error {
            "rate_limit" => {
                let fullest = Window::ALL
                    .iter()
                    .filter_map(|w| self.latest(*w))
                    .max_by(|a, b| a.utilization.total_cmp(&b.utilization));
                self.limit = Some(Limit {
                    at: t,
                    resets_at: logged
                        .or(fullest.and_then(|r| r.resets_at))
                        .filter(|r| *r > t),
                    source: format!("StopFailure rate_limit in session {}", session.name),
                });
            }
            "authentication_failed" => self.auth_failed = Some(t),
            _ => {}
        }
    }

    /// When the 5-hour window reaches `threshold` at the pace of the
    /// readings of the current window (None: not rising, or too few).
    pub fn projection(&self, threshold: f64) -> Option<SystemTime> {
        let v = self.readings.get(&Window::FiveHour)?;
        let last = v.iter().max_by_key(|r| r.observed_at)?;
        let first = v
            .iter()
            .filter(|r| r.resets_at == last.resets_at)
            .min_by_key(|r| r.observed_at)?;
        let span = last.observed_at.duration_since(first.observed_at).ok()?;
        let rise = last.utilization - first.utilization;
        if span < Duration::from_secs(60) || rise <= 0.0 || last.utilization >= threshold {
            return None;
        }
        let per_sec = rise / span.as_secs_f64();
        let at = last.observed_at.checked_add(
            Duration::try_from_secs_f64((threshold - last.utilization) / per_sec).ok()?,
        )?;
        // Past the reset the window starts over: no limit this window.
        match last.resets_at {
            Some(r) if at >= r => None,
            _ => Some(at),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::AgentFailure;
    use crate::quota::{Reading, jiff_of};

    fn at(s: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(s)
    }

    fn micro(s: u64) -> MicroTime {
        MicroTime(jiff_of(at(s)))
    }

    fn statusline(used: f64, t: u64) -> AgentUsage {
        let r = Reading {
            utilization: used,
            resets_at: Some(at(10_000)),
            source: "statusLine".into(),
            observed_at: at(t),
        };
        AgentUsage {
            account: "a".into(),
            rate_limits: Some(crate::quota::usage_status([(Window::FiveHour, &r)])),
            failure: None,
        }
    }

    fn failure(error: &str, t: u64) -> Option<AgentFailure> {
        Some(AgentFailure {
            error: error.into(),
            at: micro(t),
            resets_at: None,
            recovered_at: None,
        })
    }

    #[test]
    fn reports_become_readings_limits_and_auth_failures_once_each() {
        let k = ObjectKey::new(crate::api::Kind::Session, "default", "s");
        let mut m = Memory::default();
        m.absorb("a", &k, &statusline(40.0, 100));
        m.absorb("a", &k, &statusline(40.0, 100));
        assert_eq!(
            m.readings[&Window::FiveHour].len(),
            1,
            "the same report once"
        );
        m.absorb("a", &k, &statusline(55.0, 200));
        assert_eq!(m.latest(Window::FiveHour).unwrap().utilization, 55.0);
        m.absorb("a", &k, &statusline(57.0, 200));
        assert_eq!(
            m.latest(Window::FiveHour).unwrap().utilization,
            57.0,
            "another figure in the same second"
        );
        let mut u = statusline(57.0, 200);
        u.failure = failure("rate_limit", 300);
        m.absorb("a", &k, &u);
        let l = m.limit.clone().unwrap();
        assert_eq!((l.at, l.resets_at), (at(300), Some(at(10_000))));
        u.failure = failure("authentication_failed", 400);
        m.absorb("a", &k, &u);
        assert_eq!(m.auth_failed, Some(at(400)));
        u.failure.as_mut().unwrap().recovered_at = Some(micro(500));
        m.absorb("a", &k, &u);
        assert_eq!(m.auth_failed, None, "a turn that succeeded since");
        // The transcript's limit entry tells its end.
        u.failure = failure("rate_limit", 600);
        u.failure.as_mut().unwrap().resets_at = Some(Time(jiff_of(at(4_000))));
        m.absorb("a", &k, &u);
        let l = m.limit.clone().unwrap();
        assert_eq!((l.at, l.resets_at), (at(600), Some(at(4_000))));
    }

    #[test]
    fn an_agent_under_another_account_does_not_count_here() {
        // A session moved from a to b: the cache may still show it on a
        // while its new agent reports b's usage.
        let k = ObjectKey::new(crate::api::Kind::Session, "default", "s");
        let mut m = Memory::default();
        m.absorb("a", &k, &statusline(95.0, 100));
        let mut on_b = statusline(10.0, 200);
        on_b.account = "b".into();
        m.absorb("a", &k, &on_b);
        assert_eq!(m.latest(Window::FiveHour).unwrap().utilization, 95.0);
        m.absorb("a", &k, &statusline(96.0, 300));
        assert_eq!(m.latest(Window::FiveHour).unwrap().utilization, 96.0);
    }

    #[test]
    fn the_projection_follows_the_pace_of_the_current_window() {
        let k = ObjectKey::new(crate::api::Kind::Session, "default", "s");
        let mut m = Memory::default();
        m.absorb("a", &k, &statusline(40.0, 1000));
        assert_eq!(m.projection(90.0), None, "one reading");
        m.absorb("a", &k, &statusline(50.0, 1600));
        // 10 points in 600 s: 40 more points in 2400 s.
        assert_eq!(m.projection(90.0), Some(at(4000)));
        let mut m = Memory::default();
        m.absorb("a", &k, &statusline(10.0, 1000));
        m.absorb("a", &k, &statusline(11.0, 1600));
        assert_eq!(m.projection(90.0), None, "reached after the window resets");
        let mut m = Memory::default();
        m.absorb("a", &k, &statusline(80.0, 1000));
        m.absorb("a", &k, &statusline(85.0, 1600));
        assert_eq!(m.projection(90.0), Some(at(2200)));
        assert_eq!(m.projection(80.0), None, "already past");
    }
}

//! What the account controller remembers of one account between passes:
//! the usage readings of each window (from every source), the hard limit
//! a rejected turn revealed, an authentication failure. Its durable side
//! is the Account's status, which a restarted daemon starts from. Pure.

use crate::agent::signals::AgentSignals;
use crate::api::{AccountStatus, ObjectKey, Time};
use crate::quota::{Limit, Reading, Window};
use std::collections::HashMap;
use std::time::{Duration, SystemTime};

/// Readings kept per window.
pub const READINGS_KEPT: usize = 32;

/// What one session's signals last contributed.
#[derive(Debug, Default, Clone, PartialEq)]
struct Seen {
    statusline: Option<SystemTime>,
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

/// The newest failure an agent reported: of its turn, or of a subagent
/// or helper request (their usage limit is the account's too).
pub fn newest_failure(sig: &AgentSignals) -> Option<&(String, String, SystemTime)> {
    [&sig.last_failure, &sig.side_failure]
        .into_iter()
        .flatten()
        .max_by_key(|(_, _, t)| *t)
}

fn system(t: &Time) -> SystemTime {
    SystemTime::from(t.0)
}

impl Memory {
    /// Starts from what an earlier run wrote.
    pub fn from_status(s: &AccountStatus) -> Memory {
        let mut m = Memory::default();
        if let Some(u) = &s.usage {
            for (w, r) in [
                (Window::FiveHour, &u.five_hour),
                (Window::SevenDay, &u.seven_day),
                (Window::SevenDayOpus, &u.seven_day_opus),
                (Window::SevenDaySonnet, &u.seven_day_sonnet),
            ] {
                if let Some(r) = r {
                    m.push(
                        w,
                        Reading {
                            utilization: r.utilization,
                            resets_at: r.resets_at.as_ref().map(system),
                            source: r.source.trim_end_matches(" (window reset)").to_string(),
                            observed_at: system(&r.observed_at),
                        },
                    );
                }
            }
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

    /// Takes in what one session's agent said since the last pass, if that
    /// agent runs under `account` (as far as is known: a Session copy that
    /// is not yet updated may still show a moved session here).
    /// `logged_reset` is the reset time its transcript's limit entry gives
    /// for its newest usage-limit failure, if any (2.1.332 writes one).
    pub fn absorb(
        &mut self,
        account: &str,
        session: &ObjectKey,
        sig: &AgentSignals,
        logged_reset: Option<SystemTime>,
    ) {
        if sig.account.as_deref().is_some_and(|a| a != account) {
            return;
        }
        let mut seen = self.seen.get(session).cloned().unwrap_or_default();
        if let Some((v, t)) = &sig.statusline
            && seen.statusline != Some(*t)
        {
            seen.statusline = Some(*t);
            for (w, r) in crate::quota::from_statusline(v, *t) {
                self.push(w, r);
            }
        }
        if let Some((error, _, t)) = newest_failure(sig)
            && seen.failure != Some(*t)
        {
            seen.failure = Some(*t);
            match error.as_str() {
                "rate_limit" => {
                    // When it resets: the transcript says so (2.1.332), else
                    // the fullest window we know of.
                    let fullest = Window::ALL
                        .iter()
                        .filter_map(|w| self.latest(*w))
                        .max_by(|a, b| a.utilization.total_cmp(&b.utilization));
                    self.limit = Some(Limit {
                        at: *t,
                        resets_at: logged_reset
                            .or(fullest.and_then(|r| r.resets_at))
                            .filter(|r| r > t),
                        source: format!("StopFailure rate_limit in session {}", session.name),
                    });
                }
                "authentication_failed" => self.auth_failed = Some(*t),
                _ => {}
            }
        }
        if let (Some(failed), Some((_, stop))) = (self.auth_failed, &sig.last_stop)
            && *stop > failed
        {
            self.auth_failed = None;
        }
        self.seen.insert(session.clone(), seen);
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
    use serde_json::json;

    fn at(s: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(s)
    }

    fn statusline(used: f64, t: u64) -> AgentSignals {
        AgentSignals {
            statusline: Some((
                json!({"rate_limits": {"five_hour": {"used_percentage": used, "resets_at": 10_000}}}),
                at(t),
            )),
            ..Default::default()
        }
    }

    #[test]
    fn signals_become_readings_limits_and_auth_failures_once_each() {
        let k = ObjectKey::new(crate::api::Kind::Session, "default", "s");
        let mut m = Memory::default();
        m.absorb("a", &k, &statusline(40.0, 100), None);
        m.absorb("a", &k, &statusline(40.0, 100), None);
        assert_eq!(
            m.readings[&Window::FiveHour].len(),
            1,
            "the same input once"
        );
        m.absorb("a", &k, &statusline(55.0, 200), None);
        assert_eq!(m.latest(Window::FiveHour).unwrap().utilization, 55.0);
        let mut sig = statusline(55.0, 200);
        sig.last_failure = Some(("rate_limit".into(), "hit".into(), at(300)));
        m.absorb("a", &k, &sig, None);
        let l = m.limit.clone().unwrap();
        assert_eq!((l.at, l.resets_at), (at(300), Some(at(10_000))));
        sig.last_failure = Some(("authentication_failed".into(), "x".into(), at(400)));
        m.absorb("a", &k, &sig, None);
        assert_eq!(m.auth_failed, Some(at(400)));
        sig.last_stop = Some(("ok".into(), at(500)));
        m.absorb("a", &k, &sig, None);
        assert_eq!(m.auth_failed, None, "a turn that succeeded since");
        // A subagent's limit is the account's; the transcript tells its end.
        sig.side_failure = Some(("rate_limit".into(), "in a subagent".into(), at(600)));
        m.absorb("a", &k, &sig, Some(at(4_000)));
        let l = m.limit.clone().unwrap();
        assert_eq!((l.at, l.resets_at), (at(600), Some(at(4_000))));
    }

    #[test]
    fn an_agent_launched_under_another_account_does_not_count_here() {
        // A session moved from a to b: the cache may still show it on a
        // while its new agent reports b's usage.
        let k = ObjectKey::new(crate::api::Kind::Session, "default", "s");
        let mut m = Memory::default();
        m.absorb("a", &k, &statusline(95.0, 100), None);
        let mut on_b = statusline(10.0, 200);
        on_b.account = Some("b".into());
        m.absorb("a", &k, &on_b, None);
        assert_eq!(m.latest(Window::FiveHour).unwrap().utilization, 95.0);
        let mut on_a = statusline(96.0, 300);
        on_a.account = Some("a".into());
        m.absorb("a", &k, &on_a, None);
        assert_eq!(m.latest(Window::FiveHour).unwrap().utilization, 96.0);
    }

    #[test]
    fn the_projection_follows_the_pace_of_the_current_window() {
        let k = ObjectKey::new(crate::api::Kind::Session, "default", "s");
        let mut m = Memory::default();
        m.absorb("a", &k, &statusline(40.0, 1000), None);
        assert_eq!(m.projection(90.0), None, "one reading");
        m.absorb("a", &k, &statusline(50.0, 1600), None);
        // 10 points in 600 s: 40 more points in 2400 s.
        assert_eq!(m.projection(90.0), Some(at(4000)));
        let mut m = Memory::default();
        m.absorb("a", &k, &statusline(10.0, 1000), None);
        m.absorb("a", &k, &statusline(11.0, 1600), None);
        assert_eq!(m.projection(90.0), None, "reached after the window resets");
        let mut m = Memory::default();
        m.absorb("a", &k, &statusline(80.0, 1000), None);
        m.absorb("a", &k, &statusline(85.0, 1600), None);
        assert_eq!(m.projection(90.0), Some(at(2200)));
        assert_eq!(m.projection(80.0), None, "already past");
    }
}

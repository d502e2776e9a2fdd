//! Usage of each account: the signals (statusLine feed, usage poll,
//! `StopFailure` hook, transcript ledger, screen banners), fused into one
//! reading per window, and the account phase they imply.

pub mod ledger;
pub mod policy;
pub mod poll;

use crate::api::{AccountPhase, AccountUsage, Thresholds, Time, UsageWindow};
use std::time::{Duration, SystemTime};

/// The usage windows of a subscription: the two every request counts
/// against, and the weekly caps of one model family each.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Window {
    FiveHour,
    SevenDay,
    /// The weekly cap of Opus models.
    SevenDayOpus,
    /// The weekly cap of Sonnet models.
    SevenDaySonnet,
}

impl Window {
    pub const ALL: [Window; 4] = [
        Window::FiveHour,
        Window::SevenDay,
        Window::SevenDayOpus,
        Window::SevenDaySonnet,
    ];
    /// The windows every session of an account counts against: they make
    /// the account's phase.
    pub const ACCOUNT: [Window; 2] = [Window::FiveHour, Window::SevenDay];
    /// The per-model weekly windows: they move only the sessions running
    /// their model (see [`model_windows`]).
    pub const MODELS: [Window; 2] = [Window::SevenDayOpus, Window::SevenDaySonnet];

    /// The name Claude Code and the usage endpoint use (`five_hour`,
    /// `seven_day`, `seven_day_opus`, `seven_day_sonnet`).
    pub fn label(self) -> &'static str {
        match self {
            Window::FiveHour => "five_hour",
            Window::SevenDay => "seven_day",
            Window::SevenDayOpus => "seven_day_opus",
            Window::SevenDaySonnet => "seven_day_sonnet",
        }
    }

    /// The model family a per-model window caps (`opus`, `sonnet`).
    pub fn family(self) -> Option<&'static str> {
        match self {
            Window::FiveHour | Window::SevenDay => None,
            Window::SevenDayOpus => Some("opus"),
            Window::SevenDaySonnet => Some("sonnet"),
        }
    }

    /// The threshold (percent) of this window; a per-model one unset
    /// follows the weekly one.
    pub fn threshold(self, t: &Thresholds) -> f64 {
        f64::from(match self {
            Window::FiveHour => t.five_hour,
            Window::SevenDay => t.seven_day,
            Window::SevenDayOpus => t.seven_day_opus.unwrap_or(t.seven_day),
            Window::SevenDaySonnet => t.seven_day_sonnet.unwrap_or(t.seven_day),
        })
    }

    /// How long the window lasts (the fallback reset of an unexplained limit).
    pub fn length(self) -> Duration {
        match self {
            Window::FiveHour => Duration::from_secs(5 * 3600),
            _ => Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// The per-model windows a session running `model` (an alias such as
/// `opus`, or a name such as `claude-sonnet-5`) counts against. A model
/// that is not known to be of one family (none set, `default`,
/// `opusplan`, which switches between both, or a name of neither) counts
/// against every per-model window: it is moved off an account at either
/// limit, since it may be running the capped model. A Haiku model counts
/// against none.
pub fn model_windows(model: Option<&str>) -> &'static [Window] {
    const OPUS: &[Window] = &[Window::SevenDayOpus];
    const SONNET: &[Window] = &[Window::SevenDaySonnet];
    let Some(m) = model.map(str::to_ascii_lowercase) else {
        return &Window::MODELS;
    };
    let (opus, sonnet) = (m.contains("opus"), m.contains("sonnet"));
    if m.contains("opusplan") || (opus && sonnet) {
        &Window::MODELS
    } else if opus {
        OPUS
    } else if sonnet {
        SONNET
    } else if m.contains("haiku") {
        &[]
    } else {
        &Window::MODELS
    }
}

/// One reading of one window, from one signal.
#[derive(Clone, Debug, PartialEq)]
pub struct Reading {
    /// Percent used, 0..=100.
    pub utilization: f64,
    pub resets_at: Option<SystemTime>,
    /// `statusLine`, `poll`, `hook`, `ledger`, `screen`.
    pub source: String,
    pub observed_at: SystemTime,
}

impl Reading {
    /// The reading as a status shows it (percent to one decimal).
    pub fn to_status(&self) -> UsageWindow {
        UsageWindow {
            utilization: (self.utilization * 10.0).round() / 10.0,
            resets_at: self.resets_at.map(|t| Time(jiff_of(t))),
            source: self.source.clone(),
            observed_at: Time(jiff_of(self.observed_at)),
        }
    }

    /// The reading a status shows (of the signal that made it, not of a
    /// window reset that carried it over).
    pub fn of_status(w: &UsageWindow) -> Reading {
        Reading {
            utilization: w.utilization,
            resets_at: w.resets_at.as_ref().map(|t| SystemTime::from(t.0)),
            source: w.source.trim_end_matches(RESET_NOTE).to_string(),
            observed_at: SystemTime::from(w.observed_at.0),
        }
    }
}

/// What a reading carried over a window reset says of its source.
const RESET_NOTE: &str = " (window reset)";

/// Readings of each window as a status shows them.
pub fn usage_status<'a>(readings: impl IntoIterator<Item = (Window, &'a Reading)>) -> AccountUsage {
    let mut u = AccountUsage::default();
    for (w, r) in readings {
        let slot = match w {
            Window::FiveHour => &mut u.five_hour,
            Window::SevenDay => &mut u.seven_day,
            Window::SevenDayOpus => &mut u.seven_day_opus,
            Window::SevenDaySonnet => &mut u.seven_day_sonnet,
        };
        *slot = Some(r.to_status());
    }
    u
}

/// The readings a status shows, by window.
pub fn status_readings(u: &AccountUsage) -> Vec<(Window, Reading)> {
    Window::ALL
        .iter()
        .filter_map(|w| Some((*w, Reading::of_status(u.window(w.label())?))))
        .collect()
}

/// Two readings whose reset times are this close describe the same window
/// (the same 5-hour or weekly period; periods are hours apart).
pub const SAME_WINDOW: Duration = Duration::from_secs(300);

/// Whether two reset times name the same period of a window.
fn same_window(a: SystemTime, b: SystemTime) -> bool {
    let d = a.duration_since(b).or_else(|_| b.duration_since(a));
    d.is_ok_and(|d| d <= SAME_WINDOW)
}

/// The freshest reading not older than `stale`, raised to the highest
/// fresh reading of the same period: usage never falls within a period, so
/// a lower figure of that period is an agent repeating what it learnt
/// earlier (several sessions on one account report at their own pace). A
/// window whose reset time has passed reads 0: it started over.
pub fn fuse(readings: &[Reading], now: SystemTime, stale: Duration) -> Option<Reading> {
    let fresh = || {
        readings
            .iter()
            .filter(|r| now.duration_since(r.observed_at).unwrap_or_default() <= stale)
    };
    let latest = fresh().max_by_key(|r| r.observed_at)?;
    let r = match latest.resets_at {
        Some(period) => fresh()
            .filter(|x| x.resets_at.is_some_and(|t| same_window(t, period)))
            .max_by(|a, b| {
                a.utilization
                    .total_cmp(&b.utilization)
                    .then(a.observed_at.cmp(&b.observed_at))
            })
            .unwrap_or(latest),
        None => latest,
    };
    let mut r = r.clone();
    if r.resets_at.is_some_and(|t| t <= now) {
        r.utilization = 0.0;
        r.resets_at = None;
        r.source = format!("{}{RESET_NOTE}", r.source);
    }
    Some(r)
}

/// A hard limit: a request was rejected for usage.
#[derive(Clone, Debug, PartialEq)]
pub struct Limit {
    pub at: SystemTime,
    /// When the limited window resets, when known.
    pub resets_at: Option<SystemTime>,
    /// Which signal said so.
    pub source: String,
}

impl Limit {
    /// Whether the limit still holds at `now`: until its reset time, or for
    /// a whole 5-hour window when that time is unknown (a later reading
    /// below the limit lifts it earlier: see [`AccountInputs::lifted`]).
    pub fn holds(&self, now: SystemTime) -> bool {
        match self.resets_at {
            Some(t) => now < t,
            None => now < self.at + Window::FiveHour.length(),
        }
    }
}

/// What the phase of one account is computed from.
#[derive(Clone, Debug)]
pub struct AccountInputs {
    pub suspend: bool,
    pub thresholds: Thresholds,
    /// Points below the threshold needed to leave NearLimit.
    pub hysteresis: f64,
    pub five_hour: Option<Reading>,
    pub seven_day: Option<Reading>,
    pub seven_day_opus: Option<Reading>,
    pub seven_day_sonnet: Option<Reading>,
    pub limit: Option<Limit>,
    /// The latest authentication failure not followed by a success.
    pub auth_failed: Option<SystemTime>,
    pub previous: AccountPhase,
}

/// The phase and why.
#[derive(Clone, Debug, PartialEq)]
pub struct Verdict {
    pub phase: AccountPhase,
    /// CamelCase reason, for the condition and the event.
    pub reason: &'static str,
    pub message: String,
}

impl AccountInputs {
    pub fn reading(&self, w: Window) -> Option<&Reading> {
        match w {
            Window::FiveHour => self.five_hour.as_ref(),
            Window::SevenDay => self.seven_day.as_ref(),
            Window::SevenDayOpus => self.seven_day_opus.as_ref(),
            Window::SevenDaySonnet => self.seven_day_sonnet.as_ref(),
        }
    }

    /// The per-model windows at or past their threshold: the sessions
    /// running their model must leave (the account's phase does not
    /// change: it still serves the others).
    pub fn models_near_limit(&self) -> Vec<Window> {
        Window::MODELS
            .into_iter()
            .filter(|w| {
                self.reading(*w)
                    .is_some_and(|r| r.utilization >= w.threshold(&self.thresholds))
            })
            .collect()
    }

    /// True when a poll taken after the limit shows every window below
    /// 100 %: the limit is over before its announced reset.
    pub fn lifted(&self) -> bool {
        let Some(l) = &self.limit else { return false };
        let after: Vec<&Reading> = Window::ALL
            .iter()
            .filter_map(|w| self.reading(*w))
            // Only a poll measures afresh: the statusLine keeps showing the
            // values of the last allowed request after a rejection.
            .filter(|r| r.observed_at > l.at && r.source == "poll")
            .collect();
        !after.is_empty() && after.iter().all(|r| r.utilization < 100.0)
    }

    /// Free percent before the threshold in the tightest account-wide
    /// window (a window with no reading counts as unused).
    pub fn headroom(&self) -> f64 {
        Window::ACCOUNT
            .iter()
            .map(|w| {
                w.threshold(&self.thresholds) - self.reading(*w).map_or(0.0, |r| r.utilization)
            })
            .fold(f64::INFINITY, f64::min)
    }
}

fn pct(x: f64) -> String {
    format!("{}%", (x * 10.0).round() / 10.0)
}

/// The phase of an account, with hysteresis: once NearLimit (or
/// Exhausted), it stays NearLimit until every window is `hysteresis`
/// points below its threshold or has reset. Pure.
pub fn phase(i: &AccountInputs, now: SystemTime) -> Verdict {
    unusable(i, now)
        .or_else(|| near_limit(i))
        .unwrap_or_else(|| available(i))
}

/// Suspended, failing authentication, or at a limit (told, or a window
/// at 100 %).
fn unusable(i: &AccountInputs, now: SystemTime) -> Option<Verdict> {
    if i.suspend {
        return Some(Verdict {
            phase: AccountPhase::Suspended,
            reason: "Suspended",
            message: "spec.suspend is true: draining".into(),
        });
    }
    if i.auth_failed.is_some() {
        return Some(Verdict {
            phase: AccountPhase::Unavailable,
            reason: "AuthenticationFailed",
            message: "requests on this account fail authentication".into(),
        });
    }
    if let Some(l) = &i.limit
        && l.holds(now)
        && !i.lifted()
    {
        let until = l
            .resets_at
            .map(|t| {
                format!(
                    "; resets at {}",
                    jiff_of(t)
                        .round(k8s_openapi::jiff::Unit::Second)
                        .unwrap_or(jiff_of(t))
                )
            })
            .unwrap_or_default();
        return Some(Verdict {
            phase: AccountPhase::Exhausted,
            reason: "LimitReached",
            message: format!("usage limit reached ({}){until}", l.source),
        });
    }
    for w in Window::ACCOUNT {
        if let Some(r) = i.reading(w)
            && r.utilization >= 100.0
        {
            return Some(Verdict {
                phase: AccountPhase::Exhausted,
                reason: "LimitReached",
                message: format!(
                    "{} window at {} ({})",
                    w.label(),
                    pct(r.utilization),
                    r.source
                ),
            });
        }
    }
    None
}

/// A window at its threshold (or, once NearLimit or Exhausted, not yet
/// below it by the hysteresis).
fn near_limit(i: &AccountInputs) -> Option<Verdict> {
    let sticky = matches!(
        i.previous,
        AccountPhase::NearLimit | AccountPhase::Exhausted
    );
    for w in Window::ACCOUNT {
        let Some(r) = i.reading(w) else { continue };
        let t = w.threshold(&i.thresholds);
        if r.utilization >= t || (sticky && r.utilization > t - i.hysteresis) {
            return Some(Verdict {
                phase: AccountPhase::NearLimit,
                reason: "ThresholdReached",
                message: format!(
                    "{} window at {} (threshold {}, {})",
                    w.label(),
                    pct(r.utilization),
                    pct(t),
                    r.source
                ),
            });
        }
    }
    None
}

/// Available: the windows' use, and the model windows near their limit
/// (their sessions move, the others stay).
fn available(i: &AccountInputs) -> Verdict {
    let mut message = match (&i.five_hour, &i.seven_day) {
        (None, None) => "no usage reading yet".to_string(),
        (a, b) => format!(
            "five_hour {}, seven_day {}",
            a.as_ref().map_or("unknown".into(), |r| pct(r.utilization)),
            b.as_ref().map_or("unknown".into(), |r| pct(r.utilization))
        ),
    };
    let near = i.models_near_limit();
    for w in &near {
        let r = i
            .reading(*w)
            .expect("a window near its limit has a reading");
        message.push_str(&format!(
            "; {} window at {} (threshold {}, {}): {} sessions move, others stay",
            w.label(),
            pct(r.utilization),
            pct(w.threshold(&i.thresholds)),
            r.source,
            w.family().unwrap_or_default(),
        ));
    }
    Verdict {
        phase: AccountPhase::Available,
        reason: if near.is_empty() {
            "UsageBelowThreshold"
        } else {
            "ModelThresholdReached"
        },
        message,
    }
}

pub fn jiff_of(t: SystemTime) -> k8s_openapi::jiff::Timestamp {
    k8s_openapi::jiff::Timestamp::try_from(t).unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH)
}

/// Readings from one statusLine input (`rate_limits.*.used_percentage`,
/// `resets_at` in epoch seconds); empty in API-key mode.
pub fn from_statusline(input: &serde_json::Value, at: SystemTime) -> Vec<(Window, Reading)> {
    Window::ALL
        .iter()
        .filter_map(|w| {
            let v = input.get("rate_limits")?.get(w.label())?;
            let used = v.get("used_percentage")?.as_f64()?;
            let resets_at = v
                .get("resets_at")
                .and_then(serde_json::Value::as_f64)
                .filter(|s| *s > 0.0)
                // A time past what the clock holds is no time (a fuzzer's
                // find: it panicked).
                .and_then(|s| {
                    SystemTime::UNIX_EPOCH.checked_add(Duration::try_from_secs_f64(s).ok()?)
                });
            Some((
                *w,
                Reading {
                    utilization: used.clamp(0.0, 100.0),
                    resets_at,
                    source: "statusLine".into(),
                    observed_at: at,
                },
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + s)
    }

    fn reading(u: f64, t: u64) -> Reading {
        Reading {
            utilization: u,
            resets_at: Some(at(10_000)),
            source: "statusLine".into(),
            observed_at: at(t),
        }
    }

    fn inputs(five: Option<f64>, previous: AccountPhase) -> AccountInputs {
        AccountInputs {
            suspend: false,
            thresholds: Thresholds::default(),
            hysteresis: 5.0,
            five_hour: five.map(|u| reading(u, 100)),
            seven_day: None,
            seven_day_opus: None,
            seven_day_sonnet: None,
            limit: None,
            auth_failed: None,
            previous,
        }
    }

    #[test]
    fn thresholds_with_hysteresis() {
        use AccountPhase::*;
        let now = at(200);
        assert_eq!(phase(&inputs(None, Available), now).phase, Available);
        assert_eq!(phase(&inputs(Some(89.0), Available), now).phase, Available);
        assert_eq!(phase(&inputs(Some(90.0), Available), now).phase, NearLimit);
        // Stays NearLimit until 5 points below the threshold.
        assert_eq!(phase(&inputs(Some(86.0), NearLimit), now).phase, NearLimit);
        assert_eq!(phase(&inputs(Some(85.0), NearLimit), now).phase, Available);
        assert_eq!(phase(&inputs(Some(100.0), Available), now).phase, Exhausted);
        let mut i = inputs(Some(50.0), Available);
        i.suspend = true;
        assert_eq!(phase(&i, now).phase, Suspended);
        i.suspend = false;
        i.auth_failed = Some(now);
        assert_eq!(phase(&i, now).phase, Unavailable);
    }

    #[test]
    fn a_model_counts_against_its_family_window_or_all_when_unknown() {
        use Window::*;
        let both = &[SevenDayOpus, SevenDaySonnet][..];
        // (model, windows)
        let table: [(Option<&str>, &[Window]); 10] = [
            (Some("opus"), &[SevenDayOpus]),
            (Some("claude-opus-4-5"), &[SevenDayOpus]),
            (Some("Claude-Sonnet-5"), &[SevenDaySonnet]),
            (Some("sonnet[1m]"), &[SevenDaySonnet]),
            (Some("haiku"), &[]),
            (Some("claude-haiku-4-5-20251001"), &[]),
            (Some("opusplan"), both),
            (Some("default"), both),
            (Some("some-new-model"), both),
            (None, both),
        ];
        for (model, want) in table {
            assert_eq!(model_windows(model), want, "{model:?}");
        }
    }

    #[test]
    fn a_per_model_window_moves_its_sessions_but_leaves_the_phase() {
        use AccountPhase::*;
        let now = at(200);
        let model = |u: f64| Some(reading(u, 100));
        let mut t = Thresholds::default();
        // (opus, sonnet, opus threshold, phase, reason, near)
        let table = [
            (None, None, None, "UsageBelowThreshold", vec![]),
            (model(94.0), None, None, "UsageBelowThreshold", vec![]),
            // Unset: the weekly threshold (95).
            (
                model(95.0),
                model(20.0),
                None,
                "ModelThresholdReached",
                vec![Window::SevenDayOpus],
            ),
            (
                model(60.0),
                None,
                Some(50),
                "ModelThresholdReached",
                vec![Window::SevenDayOpus],
            ),
            (
                model(100.0),
                model(99.0),
                None,
                "ModelThresholdReached",
                vec![Window::SevenDayOpus, Window::SevenDaySonnet],
            ),
        ];
        for (opus, sonnet, opus_threshold, reason, near) in table {
            t.seven_day_opus = opus_threshold;
            let mut i = inputs(Some(40.0), Available);
            i.thresholds = t;
            i.seven_day_opus = opus.clone();
            i.seven_day_sonnet = sonnet.clone();
            let v = phase(&i, now);
            assert_eq!(
                (v.phase, v.reason),
                (Available, reason),
                "{opus:?} {sonnet:?}"
            );
            assert_eq!(i.models_near_limit(), near);
            if !near.is_empty() {
                assert!(
                    v.message.contains("sessions move, others stay"),
                    "{}",
                    v.message
                );
            }
            // An account-wide window still rules the phase.
            i.five_hour = Some(reading(91.0, 100));
            assert_eq!(phase(&i, now).phase, NearLimit);
        }
    }

    #[test]
    fn a_limit_holds_until_its_reset_or_a_later_reading() {
        use AccountPhase::*;
        let mut i = inputs(Some(50.0), Available);
        i.limit = Some(Limit {
            at: at(150),
            resets_at: Some(at(300)),
            source: "StopFailure rate_limit".into(),
        });
        assert_eq!(phase(&i, at(200)).phase, Exhausted);
        // Reset time passed: usable again.
        assert_eq!(phase(&i, at(301)).phase, Available);
        // The statusLine repeating old values after the limit does not lift it...
        i.five_hour = Some(reading(40.0, 250));
        assert_eq!(phase(&i, at(260)).phase, Exhausted);
        // ...a poll after the limit, below 100 %, does.
        i.five_hour.as_mut().unwrap().source = "poll".into();
        assert_eq!(phase(&i, at(260)).phase, Available);
        // Unknown reset: a whole 5-hour window.
        i.five_hour = Some(reading(40.0, 100));
        i.limit.as_mut().unwrap().resets_at = None;
        assert_eq!(phase(&i, at(4 * 3600)).phase, Exhausted);
        assert_eq!(phase(&i, at(5 * 3600 + 200)).phase, Available);
    }

    #[test]
    fn fusion_takes_the_freshest_and_ages_out() {
        let stale = Duration::from_secs(900);
        let rs = vec![reading(30.0, 100), reading(60.0, 200)];
        assert_eq!(fuse(&rs, at(300), stale).unwrap().utilization, 60.0);
        assert!(fuse(&rs, at(2000), stale).is_none());
        // Past the reset: the window started over.
        let r = fuse(&rs, at(10_001), Duration::from_secs(100_000)).unwrap();
        assert_eq!(r.utilization, 0.0);
    }

    #[test]
    fn a_lower_figure_of_the_same_period_does_not_lower_the_reading() {
        let stale = Duration::from_secs(900);
        let with_reset = |used, observed, reset| Reading {
            resets_at: Some(at(reset)),
            ..reading(used, observed)
        };
        let no_reset = |used, observed| Reading {
            resets_at: None,
            ..reading(used, observed)
        };
        // (readings, now, expected utilization)
        let cases = [
            // Session two repeats the 50 % it learnt before session one's 95 %.
            (
                vec![with_reset(95.0, 100, 10_000), with_reset(50.0, 110, 10_000)],
                120,
                95.0,
            ),
            // The same period, its reset time a few seconds apart.
            (
                vec![with_reset(95.0, 100, 10_000), with_reset(50.0, 110, 10_030)],
                120,
                95.0,
            ),
            // A new period (its reset hours later): the lower figure is true.
            (
                vec![with_reset(95.0, 100, 10_000), with_reset(5.0, 110, 28_000)],
                120,
                5.0,
            ),
            // Unknown reset times: the freshest.
            (vec![no_reset(95.0, 100), no_reset(50.0, 110)], 120, 50.0),
        ];
        for (rs, now, want) in cases {
            assert_eq!(
                fuse(&rs, at(now), stale).unwrap().utilization,
                want,
                "{rs:?}"
            );
        }
    }

    #[test]
    fn a_reset_time_past_the_clock_is_none() {
        let v = serde_json::json!({"rate_limits": {"five_hour": {"used_percentage": 42, "resets_at": 1.75e76}}});
        let r = from_statusline(&v, SystemTime::UNIX_EPOCH);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].1.resets_at, None);
    }

    #[test]
    fn statusline_readings() {
        let v = serde_json::json!({"rate_limits": {"five_hour": {"used_percentage": 42, "resets_at": 1795750000}, "seven_day": {"used_percentage": 17.5}}});
        let r = from_statusline(&v, at(0));
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].1.utilization, 42.0);
        assert!(r[0].1.resets_at.is_some());
        assert_eq!(r[1].0, Window::SevenDay);
        assert!(from_statusline(&serde_json::json!({}), at(0)).is_empty());
    }
}

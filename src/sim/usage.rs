//! The simulated account's usage: a budget and a ledger shared by every
//! sim agent running on the same `CLAUDE_CONFIG_DIR`.
//!
//! - `sim-budget.json` (written by a person or a test, read only here):
//!   `{"fiveHourTokens": N, "sevenDayTokens": M, "windowSeconds": S,
//!   "sevenDayWindowSeconds": W}`; every key optional. A missing token
//!   count means that window is unlimited; a missing file means the account
//!   is unlimited and reports no `rate_limits` (like API-key billing).
//!   `windowSeconds` is the length of the five-hour window (default 18000)
//!   and `sevenDayWindowSeconds` that of the weekly one (default 604800),
//!   so tests and demos can see a reset within seconds.
//! - `sim-usage.json` (the ledger): per window the tokens used, when it
//!   started and when it resets. A window starts with the first spend after
//!   the previous one expired. Read-modify-write under an exclusive lock on
//!   `sim-usage.lock`, written atomically (temp file + rename), so readers
//!   never need the lock.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};

pub const BUDGET_FILE: &str = "sim-budget.json";
pub const LEDGER_FILE: &str = "sim-usage.json";
const LOCK_FILE: &str = "sim-usage.lock";

const FIVE_HOURS: u64 = 5 * 3600;
const SEVEN_DAYS: u64 = 7 * 86_400;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Budget {
    pub five_hour_tokens: Option<u64>,
    pub seven_day_tokens: Option<u64>,
    pub window_seconds: Option<u64>,
    pub seven_day_window_seconds: Option<u64>,
}

impl Budget {
    fn five_hour_len(&self) -> u64 {
        self.window_seconds.filter(|s| *s > 0).unwrap_or(FIVE_HOURS)
    }
    fn seven_day_len(&self) -> u64 {
        self.seven_day_window_seconds
            .filter(|s| *s > 0)
            .unwrap_or(SEVEN_DAYS)
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Window {
    pub used_tokens: u64,
    /// Epoch seconds.
    pub window_start: u64,
    /// Epoch seconds.
    pub resets_at: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Ledger {
    #[serde(default)]
    pub five_hour: Option<Window>,
    #[serde(default)]
    pub seven_day: Option<Window>,
}

impl Ledger {
    /// Drops windows that have reset by `now`.
    fn roll(&mut self, now: u64) {
        for w in [&mut self.five_hour, &mut self.seven_day] {
            if w.is_some_and(|w| now >= w.resets_at) {
                *w = None;
            }
        }
    }
}

/// One window as the statusLine reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowView {
    pub used_percentage: u64,
    pub resets_at: u64,
    /// The window has started (its reset time is fixed).
    pub active: bool,
}

/// Both windows, for the statusLine's `rate_limits`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub five_hour: WindowView,
    pub seven_day: WindowView,
}

impl Limits {
    pub fn to_json(self) -> Value {
        let w =
            |v: WindowView| json!({"used_percentage": v.used_percentage, "resets_at": v.resets_at});
        json!({"five_hour": w(self.five_hour), "seven_day": w(self.seven_day)})
    }

    /// What a refresh cares about: the percentages and the fixed resets.
    pub fn key(self) -> (u64, u64, Option<u64>, Option<u64>) {
        let fixed = |v: WindowView| v.active.then_some(v.resets_at);
        (
            self.five_hour.used_percentage,
            self.seven_day.used_percentage,
            fixed(self.five_hour),
            fixed(self.seven_day),
        )
    }

    /// The earliest fixed reset time.
    pub fn next_reset(self) -> Option<u64> {
        [self.five_hour, self.seven_day]
            .into_iter()
            .filter(|v| v.active)
            .map(|v| v.resets_at)
            .min()
    }
}

/// The outcome of spending a turn's tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Spend {
    Allowed,
    /// The turn would exceed a window's budget; nothing was answered.
    Rejected {
        weekly: bool,
        resets_at: u64,
    },
}

impl Spend {
    /// When the refused window resets.
    pub fn resets_at(&self) -> Option<u64> {
        match self {
            Spend::Allowed => None,
            Spend::Rejected { resets_at, .. } => Some(*resets_at),
        }
    }

    /// Claude Code's text for a rejection.
    pub fn message(&self) -> Option<String> {
        match self {
            Spend::Allowed => None,
            Spend::Rejected { weekly, resets_at } => Some(format!(
                "You've hit your {} limit · resets {}",
                // 2.1.332's words (2.1.197 said `session limit`).
                if *weekly { "weekly" } else { "5-hour" },
                super::clock::reset_text(*resets_at, *weekly)
            )),
        }
    }
}

/// The usage of one account (config dir).
#[derive(Debug, Clone)]
pub struct Account {
    dir: PathBuf,
}

impl Account {
    pub fn new(config_dir: &Path) -> Account {
        Account {
            dir: config_dir.to_path_buf(),
        }
    }

    /// The budget, or None when the account is unlimited.
    pub fn budget(&self) -> Option<Budget> {
        let bytes = std::fs::read(self.dir.join(BUDGET_FILE)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    fn read_ledger(&self) -> Ledger {
        std::fs::read(self.dir.join(LEDGER_FILE))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// The current utilization (None: no budget file).
    pub fn limits(&self, now: u64) -> Option<Limits> {
        let budget = self.budget()?;
        let mut ledger = self.read_ledger();
        ledger.roll(now);
        Some(view(&budget, &ledger, now))
    }

    /// Spends `tokens` for one turn, or rejects the turn when a window's
    /// budget would be exceeded (then that window is marked used up, as
    /// a rejected request reports full utilization).
    pub fn spend(&self, tokens: u64, now: u64) -> std::io::Result<Spend> {
        std::fs::create_dir_all(&self.dir)?;
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.dir.join(LOCK_FILE))?;
        lock.lock()?;
        let budget = self.budget().unwrap_or_default();
        let mut ledger = self.read_ledger();
        ledger.roll(now);
        let outcome = apply(&budget, &mut ledger, tokens, now);
        let data = serde_json::to_vec_pretty(&ledger).expect("JSON serializes");
        crate::fsutil::write_atomic(&self.dir.join(LEDGER_FILE), &data, None, false)?;
        drop(lock); // unlocks
        Ok(outcome)
    }
}

fn start(len: u64, now: u64) -> Window {
    Window {
        used_tokens: 0,
        window_start: now,
        resets_at: now + len,
    }
}

/// The pure core of [`Account::spend`] (`ledger` already rolled).
fn apply(budget: &Budget, ledger: &mut Ledger, tokens: u64, now: u64) -> Spend {
    let five = *ledger
        .five_hour
        .get_or_insert_with(|| start(budget.five_hour_len(), now));
    let seven = *ledger
        .seven_day
        .get_or_insert_with(|| start(budget.seven_day_len(), now));
    let over = |w: Window, limit: Option<u64>| limit.is_some_and(|l| w.used_tokens + tokens > l);
    if over(five, budget.five_hour_tokens) {
        let w = ledger.five_hour.as_mut().expect("started above");
        w.used_tokens = w.used_tokens.max(budget.five_hour_tokens.unwrap_or(0));
        return Spend::Rejected {
            weekly: false,
            resets_at: five.resets_at,
        };
    }
    if over(seven, budget.seven_day_tokens) {
        let w = ledger.seven_day.as_mut().expect("started above");
        w.used_tokens = w.used_tokens.max(budget.seven_day_tokens.unwrap_or(0));
        return Spend::Rejected {
            weekly: true,
            resets_at: seven.resets_at,
        };
    }
    for w in [&mut ledger.five_hour, &mut ledger.seven_day]
        .into_iter()
        .flatten()
    {
        w.used_tokens += tokens;
    }
    Spend::Allowed
}

fn view(budget: &Budget, ledger: &Ledger, now: u64) -> Limits {
    let one = |w: Option<Window>, limit: Option<u64>, len: u64| {
        let used = w.map(|w| w.used_tokens).unwrap_or(0);
        WindowView {
            used_percentage: match limit {
                Some(0) => 100,
                Some(l) => used.saturating_mul(100) / l,
                None => 0,
            },
            resets_at: w.map(|w| w.resets_at).unwrap_or(now + len),
            active: w.is_some(),
        }
    };
    Limits {
        five_hour: one(
            ledger.five_hour,
            budget.five_hour_tokens,
            budget.five_hour_len(),
        ),
        seven_day: one(
            ledger.seven_day,
            budget.seven_day_tokens,
            budget.seven_day_len(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spends_until_the_budget_then_rejects_until_the_reset() {
        let budget = Budget {
            five_hour_tokens: Some(5000),
            seven_day_tokens: Some(100_000),
            window_seconds: Some(10),
            seven_day_window_seconds: None,
        };
        let mut l = Ledger::default();
        assert_eq!(apply(&budget, &mut l, 2000, 100), Spend::Allowed);
        assert_eq!(apply(&budget, &mut l, 2000, 101), Spend::Allowed);
        assert_eq!(view(&budget, &l, 101).five_hour.used_percentage, 80);
        assert_eq!(
            apply(&budget, &mut l, 2000, 102),
            Spend::Rejected {
                weekly: false,
                resets_at: 110
            }
        );
        // a rejection reports the window as used up
        let v = view(&budget, &l, 102);
        assert_eq!(v.five_hour.used_percentage, 100);
        assert_eq!(v.five_hour.resets_at, 110);
        assert_eq!(v.seven_day.used_percentage, 4);
        l.roll(110);
        assert_eq!(apply(&budget, &mut l, 2000, 110), Spend::Allowed);
        assert_eq!(l.five_hour.unwrap().resets_at, 120);
        assert_eq!(l.seven_day.unwrap().used_tokens, 6000);
    }

    #[test]
    fn weekly_limit_and_unlimited() {
        let budget = Budget {
            seven_day_tokens: Some(3000),
            ..Budget::default()
        };
        let mut l = Ledger::default();
        assert_eq!(apply(&budget, &mut l, 2000, 0), Spend::Allowed);
        let s = apply(&budget, &mut l, 2000, 1);
        assert_eq!(
            s,
            Spend::Rejected {
                weekly: true,
                resets_at: SEVEN_DAYS
            }
        );
        assert_eq!(
            s.message().unwrap(),
            "You've hit your weekly limit · resets Jan 8, 12am (UTC)"
        );
        let unlimited = Budget::default();
        let mut l = Ledger::default();
        for i in 0..100 {
            assert_eq!(apply(&unlimited, &mut l, 1_000_000, i), Spend::Allowed);
        }
    }

    #[test]
    fn the_ledger_is_shared_through_the_config_dir() {
        let d = tempfile::tempdir().unwrap();
        let a = Account::new(d.path());
        assert!(a.limits(0).is_none(), "no budget file: unlimited");
        std::fs::write(d.path().join(BUDGET_FILE), r#"{"fiveHourTokens": 4000}"#).unwrap();
        let b = Account::new(d.path());
        assert_eq!(a.spend(2000, 50).unwrap(), Spend::Allowed);
        assert_eq!(b.spend(2000, 51).unwrap(), Spend::Allowed);
        assert!(matches!(a.spend(1, 52).unwrap(), Spend::Rejected { .. }));
        assert_eq!(b.limits(53).unwrap().five_hour.used_percentage, 100);
        assert_eq!(
            b.limits(50 + FIVE_HOURS).unwrap().five_hour.used_percentage,
            0
        );
    }
}

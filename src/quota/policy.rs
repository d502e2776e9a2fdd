//! The failover policy: the config's defaults, an Account's overrides, and
//! the choice of a target account. Pure (docs/failover.md, "Policy").

use crate::api::{Account, AccountPhase};
use crate::config::{FailoverStrategy, QuotaConfig};
use std::time::{Duration, SystemTime};

/// Failback margin when the config sets none (points below each threshold).
pub const DEFAULT_FAILBACK_MARGIN: u8 = 20;
/// Least time between two failbacks of one session when the config sets none.
pub const DEFAULT_FAILBACK_COOLDOWN: Duration = Duration::from_secs(1800);

/// The pool's failover policy as configured.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub strategy: FailoverStrategy,
    /// From NearLimit on, an account takes no new task while its sessions
    /// can move.
    pub drain: bool,
    pub failback: Failback,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Failback {
    pub enabled: bool,
    /// Points below each threshold the preferred account must be.
    pub margin: f64,
    /// Least time between a session's last move and its move back.
    pub cooldown: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            strategy: FailoverStrategy::Headroom,
            drain: true,
            failback: Failback {
                enabled: true,
                margin: f64::from(DEFAULT_FAILBACK_MARGIN),
                cooldown: DEFAULT_FAILBACK_COOLDOWN,
            },
        }
    }
}

impl Policy {
    pub fn from_config(q: &QuotaConfig) -> Policy {
        let d = Policy::default();
        let fb = q.failback.clone().unwrap_or_default();
        Policy {
            strategy: q.strategy.unwrap_or(d.strategy),
            drain: q.drain.unwrap_or(d.drain),
            failback: Failback {
                enabled: fb.enabled.unwrap_or(d.failback.enabled),
                margin: fb.margin_percent.map_or(d.failback.margin, f64::from),
                cooldown: fb
                    .cooldown_seconds
                    .map_or(d.failback.cooldown, Duration::from_secs),
            },
        }
    }

    /// Whether `a` takes no new task from NearLimit on.
    pub fn drains(&self, a: &Account) -> bool {
        a.spec.policy.and_then(|p| p.drain).unwrap_or(self.drain)
    }

    /// Whether sessions that prefer `a` come back to it.
    pub fn fails_back_to(&self, a: &Account) -> bool {
        a.spec
            .policy
            .and_then(|p| p.failback)
            .unwrap_or(self.failback.enabled)
    }
}

/// A failover target as the choice sees it.
#[derive(Clone, Debug)]
pub struct TargetCandidate {
    pub name: String,
    pub phase: AccountPhase,
    pub priority: i32,
    pub headroom: f64,
    /// When its soonest usage window resets (unknown: none).
    pub resets_at: Option<SystemTime>,
    /// Recently failed as a target (preflight or confirmation).
    pub excluded: bool,
}

/// The account sessions leaving `from` go to: Available ones only, never
/// `from`, never one marked after a failed swap.
pub fn pick_target(
    cands: &[TargetCandidate],
    from: &str,
    strategy: FailoverStrategy,
) -> Option<String> {
    use std::cmp::Ordering;
    let ok = cands
        .iter()
        .filter(|c| c.name != from && c.phase == AccountPhase::Available && !c.excluded);
    let by_headroom = |a: &TargetCandidate, b: &TargetCandidate| {
        b.headroom
            .partial_cmp(&a.headroom)
            .unwrap_or(Ordering::Equal)
    };
    // Known resets first, soonest first.
    let by_reset = |a: &TargetCandidate, b: &TargetCandidate| match (a.resets_at, b.resets_at) {
        (Some(x), Some(y)) => x.cmp(&y),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => Ordering::Equal,
    };
    let best = ok.min_by(|a, b| {
        match strategy {
            FailoverStrategy::Headroom => by_headroom(a, b).then(a.priority.cmp(&b.priority)),
            FailoverStrategy::Priority => a.priority.cmp(&b.priority).then(by_headroom(a, b)),
            FailoverStrategy::ConsumeFirst => by_reset(a, b)
                .then(by_headroom(a, b))
                .then(a.priority.cmp(&b.priority)),
        }
        .then(a.name.cmp(&b.name))
    })?;
    Some(best.name.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::AccountSpec;
    use AccountPhase::*;

    fn c(name: &str, phase: AccountPhase, priority: i32, headroom: f64) -> TargetCandidate {
        TargetCandidate {
            name: name.into(),
            phase,
            priority,
            headroom,
            resets_at: None,
            excluded: false,
        }
    }

    fn at(s: u64) -> Option<SystemTime> {
        Some(SystemTime::UNIX_EPOCH + Duration::from_secs(s))
    }

    #[test]
    fn each_strategy_picks_its_target() {
        let mut cands = vec![
            c("a", NearLimit, 0, 1.0),
            c("b", Available, 5, 50.0),
            c("c", Available, 1, 80.0),
            c("d", Exhausted, 0, 90.0),
            c("e", Available, 0, 80.0),
        ];
        cands[1].resets_at = at(100);
        cands[2].resets_at = at(900);
        cands[3].resets_at = at(10);
        use FailoverStrategy::*;
        // (strategy, leaving, expected)
        let table = [
            (Headroom, "a", Some("e")),
            (Priority, "e", Some("c")),
            (Priority, "a", Some("e")),
            // b resets soonest among those that can take sessions (d cannot).
            (ConsumeFirst, "a", Some("b")),
            (ConsumeFirst, "b", Some("c")),
        ];
        for (strategy, from, want) in table {
            assert_eq!(
                pick_target(&cands, from, strategy).as_deref(),
                want,
                "{strategy:?} leaving {from}"
            );
        }
        assert_eq!(pick_target(&cands[..1], "x", Headroom), None);
        cands[1].excluded = true;
        assert_eq!(
            pick_target(&cands, "a", ConsumeFirst).as_deref(),
            Some("c"),
            "a set-aside account is never picked"
        );
    }

    #[test]
    fn consume_first_breaks_ties_by_headroom() {
        let mut cands = vec![c("x", Available, 0, 10.0), c("y", Available, 0, 30.0)];
        cands[0].resets_at = at(50);
        cands[1].resets_at = at(50);
        assert_eq!(
            pick_target(&cands, "z", FailoverStrategy::ConsumeFirst).as_deref(),
            Some("y")
        );
    }

    #[test]
    fn an_account_overrides_the_config() {
        let mut a = Account::new("a", AccountSpec::in_dir("/a"));
        let on = Policy::default();
        let off = Policy {
            drain: false,
            failback: Failback {
                enabled: false,
                ..on.failback.clone()
            },
            ..on.clone()
        };
        // (account policy, config, drains, fails back)
        let table = [
            (None, &on, true, true),
            (None, &off, false, false),
            (Some((Some(false), Some(false))), &on, false, false),
            (Some((Some(true), Some(true))), &off, true, true),
            (Some((None, None)), &off, false, false),
        ];
        for (p, cfg, drains, back) in table {
            a.spec.policy =
                p.map(|(drain, failback)| crate::api::AccountPolicy { drain, failback });
            assert_eq!(cfg.drains(&a), drains, "{p:?}");
            assert_eq!(cfg.fails_back_to(&a), back, "{p:?}");
        }
    }

    #[test]
    fn config_defaults_and_values() {
        let p = Policy::from_config(&QuotaConfig::default());
        assert_eq!(p, Policy::default());
        let q: QuotaConfig = serde_saphyr::from_str(
            "strategy: consumeFirst\ndrain: false\nfailback: {enabled: false, marginPercent: 5, cooldownSeconds: 60}\n",
        )
        .unwrap();
        let p = Policy::from_config(&q);
        assert_eq!(p.strategy, FailoverStrategy::ConsumeFirst);
        assert!(!p.drain && !p.failback.enabled);
        assert_eq!(p.failback.margin, 5.0);
        assert_eq!(p.failback.cooldown, Duration::from_secs(60));
    }
}

//! A changed template rolling through a pool's Sessions, pure: which
//! Sessions are made from an older template (their
//! `claude-failover.io/template-hash` label), how each is brought up to
//! date, and which may go now.
//!
//! - A changed `workdir` or `workspace` is a fresh session: the Session is
//!   deleted (its agent stopped, its worktree released) and made again from
//!   the template, with a new conversation.
//! - Any other change of the spec (account, agent, env, model, ...) or of
//!   the template's annotations (`rollout restart` stamps one) updates the
//!   Session in place and relaunches its agent, which resumes its
//!   conversation in the same directory, like `restart session`.
//! - A change of the template's labels or of its `standby` only updates
//!   the Sessions' labels and spec: the agents keep running (a standby
//!   is started or stopped beside them).
//!
//! A Session in a turn (or with a task in flight) is left until the turn
//! ends. At most `maxUnavailable` Sessions are out of service at once:
//! restarting, being replaced, or not ready; an outdated Session that is
//! out of service already is brought up to date without waiting.

use super::plan::{busy, ready};
use crate::api::{
    POOL_LABEL, PlacementStrategy, Session, SessionPool, SessionSpec, TEMPLATE_HASH_LABEL,
    UpdateStrategyType, ordinal_of,
};
use std::cmp::Reverse;
use std::collections::BTreeMap;

/// How an outdated Session is brought up to date.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Roll {
    /// Deleted, then made again from the template (a fresh conversation).
    Replace,
    /// Updated in place and relaunched, resuming its conversation.
    Restart,
    /// Only its labels (or its standby) change; the agent runs on.
    Relabel,
}

/// What a pass of the rollout decides.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Rollout {
    /// Sessions to bring up to date now.
    pub now: Vec<(String, Roll)>,
    /// Outdated Sessions in a turn: after it ends.
    pub after_turn: Vec<String>,
    /// Outdated Sessions waiting for room under `maxUnavailable`.
    pub queued: Vec<String>,
}

/// The template hash a Session was made from.
pub fn hash_of(s: &Session) -> Option<&str> {
    s.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(TEMPLATE_HASH_LABEL))
        .map(String::as_str)
}

/// Whether `s` is out of service: not ready, or a restart asked of it not
/// answered yet.
pub fn unavailable(s: &Session) -> bool {
    !ready(s) || s.restart_pending()
}

/// Decides the rollout over `live` (the pool's Sessions that stay), for a
/// pool of `want` Sessions whose template hashes to `hash`.
pub fn decide(pool: &SessionPool, live: &[&Session], want: usize, hash: &str) -> Rollout {
    let mut out = Rollout::default();
    if pool.spec.update_strategy.type_ == UpdateStrategyType::OnDelete {
        return out;
    }
    let name = pool.metadata.name.as_deref().unwrap_or_default();
    let missing = want.saturating_sub(live.len());
    let down = missing + live.iter().filter(|s| unavailable(s)).count();
    let max = pool.spec.update_strategy.max_unavailable(want as u32) as usize;
    let mut room = max.saturating_sub(down);
    let mut outdated: Vec<&Session> = live
        .iter()
        .copied()
        .filter(|s| hash_of(s) != Some(hash))
        .collect();
    // Highest ordinal first, like a StatefulSet.
    outdated.sort_by_key(|s| {
        Reverse(ordinal_of(name, s.metadata.name.as_deref().unwrap_or_default()).unwrap_or(0))
    });
    for s in outdated {
        let n = s.metadata.name.clone().unwrap_or_default();
        let how = classify(pool, s);
        if how == Roll::Relabel {
            out.now.push((n, how));
        } else if busy(s) {
            out.after_turn.push(n);
        } else if s.restart_pending() {
            // A restart on its way (asked by someone): once it is answered.
            out.queued.push(n);
        } else if unavailable(s) {
            out.now.push((n, how));
        } else if room > 0 {
            room -= 1;
            out.now.push((n, how));
        } else {
            out.queued.push(n);
        }
    }
    out
}

/// How `s` is brought up to the pool's template.
pub fn classify(pool: &SessionPool, s: &Session) -> Roll {
    let t = &pool.spec.template;
    if t.spec.workdir != s.spec.workdir || t.spec.workspace != s.spec.workspace {
        return Roll::Replace;
    }
    let ann = s.metadata.annotations.clone().unwrap_or_default();
    let annotations_differ = t
        .metadata
        .annotations
        .iter()
        .any(|(k, v)| ann.get(k) != Some(v));
    let mut spec = spec_for(pool, s);
    spec.standby = s.spec.standby.clone();
    if spec != s.spec || annotations_differ {
        Roll::Restart
    } else {
        Roll::Relabel
    }
}

/// The spec `s` takes from the template: the template's, except the
/// account the pool placed it on (Spread; Pack follows the template's
/// account) and `suspend`, which is a person's act on one Session.
pub fn spec_for(pool: &SessionPool, s: &Session) -> SessionSpec {
    let mut spec = pool.spec.template.spec.clone();
    spec.account = match pool.spec.placement.strategy {
        PlacementStrategy::Spread => s.spec.account.clone().or(spec.account),
        PlacementStrategy::Pack => spec.account.or(s.spec.account.clone()),
    };
    spec.suspend = s.spec.suspend;
    spec
}

/// The labels `s` carries once up to date: its own, the template's, the
/// pool's name and the template's hash.
pub fn labels_for(pool: &SessionPool, s: &Session, hash: &str) -> BTreeMap<String, String> {
    let mut labels = s.metadata.labels.clone().unwrap_or_default();
    labels.extend(pool.spec.template.metadata.labels.clone());
    labels.insert(
        POOL_LABEL.into(),
        pool.metadata.name.clone().unwrap_or_default(),
    );
    labels.insert(TEMPLATE_HASH_LABEL.into(), hash.into());
    labels
}

/// The annotations `s` carries once up to date: its own and the
/// template's.
pub fn annotations_for(pool: &SessionPool, s: &Session) -> BTreeMap<String, String> {
    let mut ann = s.metadata.annotations.clone().unwrap_or_default();
    ann.extend(pool.spec.template.metadata.annotations.clone());
    ann
}

#[cfg(test)]
mod tests;

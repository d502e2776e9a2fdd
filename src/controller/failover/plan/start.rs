//! Starting a swap: which account's sessions move next and where, or
//! why they cannot (no target); the swap lease and its record.

use super::*;

impl Planner<'_, '_> {
    /// Answers a manual request if one waits, else moves the sessions off
    /// the first account that must be left and has somewhere to go.
    pub(super) fn start_next(&mut self) {
        let w = self.w;
        let mut accounts = w.accounts.clone();
        accounts.sort_by_key(|a| ObjectKey::of(*a));
        for a in &accounts {
            let Some(req) = pending_request(a) else {
                continue;
            };
            let to = a
                .metadata
                .annotations
                .as_ref()
                .and_then(|x| x.get(FAILOVER_TO))
                .cloned();
            let on = sessions_on(
                &w.sessions,
                ns_of(&a.metadata),
                a.metadata.name.as_deref().unwrap_or_default(),
            );
            self.try_start(a, "Manual", to.as_deref(), Some(req), on);
            return;
        }
        for a in &accounts {
            let Some((reason, on)) = target::leaving(a, &w.sessions, &w.models) else {
                continue;
            };
            if self.try_start(a, reason, None, None, on) {
                return;
            }
        }
        if let Some(fb) = super::super::failback::next(
            &w.accounts,
            &w.sessions,
            &w.tasks_on,
            &w.models,
            &self.st.policy,
            w.now,
        ) {
            self.start(fb.from, FAILBACK, fb.to, fb.sessions, None);
        }
    }

    /// Starts a swap of the sessions `on` off `a`, or says why none can
    /// start. True if started.
    pub(super) fn try_start(
        &mut self,
        a: &Account,
        reason: &str,
        to: Option<&str>,
        req: Option<String>,
        on: Vec<&Session>,
    ) -> bool {
        let w = self.w;
        let ns = ns_of(&a.metadata).to_string();
        let from = a.metadata.name.clone().unwrap_or_default();
        let key = akey(&ns, &from);
        let refuse = |p: &mut Self, reason_code: &'static str, why: String| {
            if let Some(r) = &req {
                p.note(&ns, &from)
                    .get_or_insert_with(Default::default)
                    .request = Some(RequestAnswer {
                    requested_at: r.clone(),
                    result: "Refused".into(),
                    swap: None,
                    message: why.clone(),
                });
                p.event(key.clone(), false, reason_code, why);
            }
        };
        if on.is_empty() {
            refuse(
                self,
                "FailoverSkipped",
                "failover requested, but no session runs on this account".into(),
            );
            return false;
        }
        let windows = target::windows_of(&on, &w.models);
        let strategy = self.st.policy.strategy;
        let target = match target::target(&w.accounts, &ns, &from, to, strategy, w.now, &windows) {
            Ok(t) => t,
            Err(why) if req.is_some() => {
                refuse(self, "NoFailoverTarget", format!("cannot fail over: {why}"));
                return false;
            }
            Err(why) => {
                self.no_target(a, reason, on.len(), why);
                return false;
            }
        };
        self.start(a, reason, target, on, req);
        true
    }

    /// Says once per episode that the sessions of `a` must leave and
    /// cannot.
    pub(super) fn no_target(&mut self, a: &Account, reason: &str, sessions: usize, why: String) {
        let ns = ns_of(&a.metadata).to_string();
        let from = a.metadata.name.clone().unwrap_or_default();
        let now = self.w.now;
        let note = self.note(&ns, &from).get_or_insert_with(Default::default);
        if note.no_target.is_some() {
            return;
        }
        let waiting = if phase_of(a) == crate::api::AccountPhase::Exhausted {
            "; its sessions wait for the window to reset"
        } else {
            "; its sessions stay"
        };
        note.no_target = Some(FailoverNote {
            since: seconds(now),
            message: format!("{why}{waiting}"),
        });
        let key = akey(&ns, &from);
        self.event(
            key.clone(),
            true,
            "NoFailoverTarget",
            format!("{why}{waiting}"),
        );
        self.out.push(Action::Count {
            reason: reason.into(),
            result: "failed",
            seconds: None,
        });
        self.out.push(Action::Notify {
            kind: NoticeKind::FailoverFailed,
            object: key.to_string(),
            message: format!("cannot move {sessions} session(s) off {from}: {why}{waiting}"),
        });
    }

    pub(super) fn start(
        &mut self,
        a: &Account,
        reason: &str,
        to: String,
        on: Vec<&Session>,
        req: Option<String>,
    ) {
        let w = self.w;
        let ns = ns_of(&a.metadata).to_string();
        let from = a.metadata.name.clone().unwrap_or_default();
        let epoch = next_epoch(w);
        let names: Vec<String> = on.iter().filter_map(|s| s.metadata.name.clone()).collect();
        let mut swap = Swap::new(
            &swap_name(epoch),
            SwapSpec {
                epoch,
                from: from.clone(),
                to: to.clone(),
                reason: reason.into(),
                sessions: names.clone(),
                request: req.clone(),
                recovers: None,
            },
        );
        swap.metadata.namespace = Some(ns.clone());
        // An exhausted account has no turn to finish: every session moves now.
        let no_turn = matches!(reason, "Exhausted" | "AuthenticationFailed");
        let mut state = SwapState {
            phase: SwapPhase::Running,
            started_at: Some(time(w.now)),
            ..Default::default()
        };
        let mark = self.out.len();
        for s in &on {
            let mut x = SwapSessionState {
                name: s.metadata.name.clone().unwrap_or_default(),
                step: SwapStep::WaitingForTurn,
                deadline: Some(time(w.now + self.st.turn_wait)),
                ..Default::default()
            };
            if no_turn || !busy(w, s) {
                self.place(&swap, s, &mut x);
            }
            state.sessions.push(x);
        }
        let places = self.out.split_off(mark);
        swap.status = Some(state);
        let summary = format!(
            "moving {} session(s) ({}) from {from} to {to} (swap epoch {epoch}, reason {reason})",
            names.len(),
            names.join(", ")
        );
        self.out.push(Action::Start(Box::new(swap)));
        self.out.extend(places);
        let note = self.note(&ns, &from).get_or_insert_with(Default::default);
        note.no_target = None;
        if let Some(r) = req {
            note.request = Some(RequestAnswer {
                requested_at: r,
                result: "Started".into(),
                swap: Some(swap_name(epoch)),
                message: summary.clone(),
            });
        }
        let key = akey(&ns, &from);
        let alarm = !matches!(reason, "Manual" | "Drain" | FAILBACK);
        self.event(key.clone(), alarm, "FailoverStarted", summary.clone());
        self.out.push(Action::Notify {
            kind: NoticeKind::FailoverStarted,
            object: key.to_string(),
            message: summary,
        });
    }
}

/// The epoch the next swap takes: past the lease's and every record's.
pub(super) fn next_epoch(w: &World) -> u64 {
    w.swaps
        .iter()
        .map(|s| s.spec.epoch)
        .chain([w.lease.epoch])
        .max()
        .unwrap_or(0)
        + 1
}

/// A turn runs on `s`: its agent is busy, or a task is in flight on it (it
/// may have been typed a moment ago, before the agent said so).
pub(super) fn busy(w: &World, s: &Session) -> bool {
    let key = (
        ns_of(&s.metadata).to_string(),
        s.metadata.name.clone().unwrap_or_default(),
    );
    s.status.as_ref().and_then(|x| x.phase) == Some(SessionPhase::Busy)
        || w.tasks_on.contains_key(&key)
}

/// The request annotation of `a`, if its answer has not been given.
pub(super) fn pending_request(a: &Account) -> Option<String> {
    let req = a
        .metadata
        .annotations
        .as_ref()?
        .get(FAILOVER_REQUEST)?
        .clone();
    let answered = a
        .status
        .as_ref()
        .and_then(|s| s.failover.as_ref())
        .and_then(|f| f.request.as_ref())
        .is_some_and(|r| r.requested_at == req);
    (!answered).then_some(req)
}

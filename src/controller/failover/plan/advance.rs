//! Advancing a running swap: each session placed on the target at its
//! turn's end, followed to its confirmation or rolled back, and the swap
//! finished once every session has.

use super::*;

impl Planner<'_, '_> {
    /// Places session `s` on the swap's target.
    pub(super) fn place(&mut self, swap: &Swap, s: &Session, x: &mut SwapSessionState) {
        let w = self.w;
        let ns = ns_of(&swap.metadata).to_string();
        let st = s.status.clone().unwrap_or_default();
        x.step = SwapStep::Placed;
        x.placed_at = Some(time(w.now));
        x.deadline = Some(time(w.now + self.st.confirm));
        x.agent_session_id = x.agent_session_id.clone().or(st.agent_session_id);
        x.task = x
            .task
            .clone()
            .or_else(|| w.tasks_on.get(&(ns.clone(), x.name.clone())).cloned());
        self.out.push(Action::Place {
            session: skey(&ns, &x.name),
            first: Some(Seen {
                task: x.task.clone(),
            }),
            placement: SwapStatus {
                epoch: swap.spec.epoch,
                from: Some(swap.spec.from.clone()),
                to: swap.spec.to.clone(),
                reason: swap.spec.reason.clone(),
                state: SWAPPING.into(),
                started_at: time(w.now),
                spec_account: s.spec.account.clone(),
            },
        });
        let message = format!(
            "moving from {} to {} (swap epoch {}, reason {})",
            swap.spec.from, swap.spec.to, swap.spec.epoch, swap.spec.reason
        );
        self.event(skey(&ns, &x.name), false, "Swapping", message);
    }

    /// Moves each session of the swap as far as the world allows; ends the
    /// swap when every session has.
    pub(super) fn advance(&mut self, swap: &Swap) {
        let w = self.w;
        let ns = ns_of(&swap.metadata).to_string();
        let before = state_of(swap);
        let mut state = before.clone();
        for x in state.sessions.iter_mut().filter(|x| !x.step.finished()) {
            let s = w.session(&ns, &x.name);
            let Some(s) = s else {
                x.step = SwapStep::RolledBack;
                x.message = Some(format!("{}: the session is gone", x.name));
                continue;
            };
            let expired = x.deadline.as_ref().is_some_and(|d| system(d) <= w.now);
            match x.step {
                SwapStep::WaitingForTurn if busy(self.w, s) && !expired => {}
                SwapStep::WaitingForTurn => {
                    if busy(w, s) {
                        let why = format!(
                            "the turn did not end within {}s: interrupting it",
                            self.st.turn_wait.as_secs()
                        );
                        self.event(skey(&ns, &x.name), true, "TurnWaitExpired", why);
                    }
                    self.place(swap, s, x);
                }
                SwapStep::Placed => self.follow(swap, s, x, expired),
                SwapStep::Confirmed | SwapStep::RolledBack => {}
            }
        }
        if state.sessions.iter().all(|x| x.step.finished()) {
            self.finish(swap, state);
        } else if state != before {
            self.out.push(Action::Update {
                namespace: ns,
                name: swap.metadata.name.clone().unwrap_or_default(),
                state,
            });
        }
    }

    /// A placed session: confirmed by its agent, refused by its node, or
    /// out of time.
    pub(super) fn follow(
        &mut self,
        swap: &Swap,
        s: &Session,
        x: &mut SwapSessionState,
        expired: bool,
    ) {
        let st = s.status.clone().unwrap_or_default();
        let epoch = swap.spec.epoch;
        let to = &swap.spec.to;
        if let Some(r) = st
            .refused_placement
            .as_ref()
            .filter(|r| r.epoch == epoch && r.account == *to)
        {
            let why = format!("{}: {}", x.name, r.message);
            self.roll_back(swap, s, x, why);
            return;
        }
        // Launched for this placement (its epoch), or on the target since
        // the session was placed there: a daemon that took over may have
        // relaunched it from the placement of the interrupted epoch before
        // the recovery re-stamped it, and the resume is just as good.
        let placed_at = x.placed_at.as_ref().map(system);
        let launch = st.launch.as_ref().filter(|l| {
            let ours =
                l.epoch == Some(epoch) || placed_at.is_some_and(|p| SystemTime::from(l.at.0) >= p);
            ours && l.account.as_deref() == Some(to) && l.confirmed_at.is_some()
        });
        if let Some(l) = launch {
            x.step = SwapStep::Confirmed;
            x.deadline = None;
            let how = if l.resumed {
                format!(
                    "resumed conversation {}",
                    st.agent_session_id.as_deref().unwrap_or("?")
                )
            } else {
                "started (nothing to resume yet)".into()
            };
            let mut p = st
                .last_swap
                .clone()
                .unwrap_or_else(|| placement_of(swap, s, self.w.now));
            p.state = SWAP_DONE.into();
            p.epoch = epoch;
            let ns = ns_of(&swap.metadata).to_string();
            self.out.push(Action::Place {
                session: skey(&ns, &x.name),
                placement: p,
                first: None,
            });
            let msg = match swap.spec.recovers {
                Some(old) => {
                    format!("now on {to}: {how} (swap of epoch {old} finished under epoch {epoch})")
                }
                None => format!("now on {to}: {how} (swap epoch {epoch})"),
            };
            self.event(skey(&ns, &x.name), false, "Swapped", msg);
        } else if expired {
            let why = format!(
                "{}: the agent did not confirm its resume on {to} within {}s",
                x.name,
                self.st.confirm.as_secs()
            );
            self.roll_back(swap, s, x, why);
        }
    }

    pub(super) fn roll_back(
        &mut self,
        swap: &Swap,
        s: &Session,
        x: &mut SwapSessionState,
        why: String,
    ) {
        let ns = ns_of(&swap.metadata).to_string();
        x.step = SwapStep::RolledBack;
        x.deadline = None;
        x.message = Some(why.clone());
        let mut p = placement_of(swap, s, self.w.now);
        p.to = swap.spec.from.clone();
        p.state = SWAP_ROLLED_BACK.into();
        self.out.push(Action::Place {
            session: skey(&ns, &x.name),
            placement: p,
            first: None,
        });
        self.event(skey(&ns, &x.name), true, "SwapRolledBack", why);
    }

    /// The swap's end: its record, the lease released, the target set
    /// aside if it failed anyone, events, notices and counts.
    pub(super) fn finish(&mut self, swap: &Swap, mut state: SwapState) {
        let w = self.w;
        let ns = ns_of(&swap.metadata).to_string();
        let (from, to, reason) = (&swap.spec.from, &swap.spec.to, &swap.spec.reason);
        let total = state.sessions.len();
        let failed: Vec<String> = state
            .sessions
            .iter()
            .filter(|x| x.step == SwapStep::RolledBack)
            .filter_map(|x| x.message.clone())
            .collect();
        let began = state.started_at.as_ref().map(system).unwrap_or(w.now);
        let secs = w
            .now
            .duration_since(began)
            .unwrap_or_default()
            .as_secs_f64();
        let from_key = akey(&ns, from);
        let names = swap.spec.sessions.join(", ");
        let result = if failed.is_empty() {
            state.phase = SwapPhase::Succeeded;
            state.message = format!("{total} session(s) resumed on {to} in {secs:.1}s");
            self.event(
                from_key.clone(),
                false,
                "FailoverDone",
                state.message.clone(),
            );
            self.out.push(Action::Notify {
                kind: NoticeKind::FailoverDone,
                object: from_key.to_string(),
                message: format!("{names} from {from} to {to}: {}", state.message),
            });
            "succeeded"
        } else {
            state.phase = if failed.len() == total {
                SwapPhase::Failed
            } else {
                SwapPhase::RolledBack
            };
            state.message = failed.join("; ");
            self.event(
                from_key.clone(),
                true,
                "FailoverFailed",
                state.message.clone(),
            );
            let aside = format!(
                "a swap to this account failed ({}); not a target for {}s",
                state.message,
                TARGET_PENALTY.as_secs()
            );
            self.event(akey(&ns, to), true, "SwapTargetFailed", aside);
            self.note(&ns, to)
                .get_or_insert_with(Default::default)
                .set_aside = Some(SetAside {
                until: seconds(w.now + TARGET_PENALTY),
                reason: format!(
                    "swap epoch {} to it failed: {}",
                    swap.spec.epoch, state.message
                ),
            });
            self.out.push(Action::Notify {
                kind: NoticeKind::FailoverFailed,
                object: from_key.to_string(),
                message: format!("from {from} to {to}: {}", state.message),
            });
            "rolled_back"
        };
        state.finished_at = Some(time(w.now));
        self.out.push(Action::Update {
            namespace: ns,
            name: swap.metadata.name.clone().unwrap_or_default(),
            state,
        });
        self.out.push(Action::Release);
        self.out.push(Action::Count {
            reason: reason.clone(),
            result,
            seconds: Some(secs),
        });
    }
}

/// A placement on the swap's target, as `place` writes it.
pub(super) fn placement_of(swap: &Swap, s: &Session, now: SystemTime) -> SwapStatus {
    s.status
        .as_ref()
        .and_then(|x| x.last_swap.clone())
        .unwrap_or(SwapStatus {
            epoch: swap.spec.epoch,
            from: Some(swap.spec.from.clone()),
            to: swap.spec.to.clone(),
            reason: swap.spec.reason.clone(),
            state: SWAPPING.into(),
            started_at: time(now),
            spec_account: s.spec.account.clone(),
        })
}

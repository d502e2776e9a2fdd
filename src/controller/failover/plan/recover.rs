//! Recovery: a swap whose daemon died is interrupted and finished under
//! a new epoch, its placed sessions placed again.

use super::*;

impl Planner<'_, '_> {
    /// An older swap found running beside the current one: its daemon died.
    pub(super) fn interrupt(&mut self, old: &Swap, epoch: u64) {
        let message = format!("its daemon died during the swap; epoch {epoch} took over");
        self.mark_interrupted(old, message);
    }

    /// The lease is held by a daemon that no longer leads, or a swap was
    /// left running: finish what it left under a new epoch.
    pub(super) fn recover(&mut self, running: &[&Swap]) {
        let w = self.w;
        let holder = w.lease.holder.clone().unwrap_or_else(|| "?".into());
        let Some(old) = running.last().copied() else {
            // Its swap's end was written, not its release.
            self.out.push(Action::Release);
            return;
        };
        let old_state = state_of(old);
        let left: Vec<&SwapSessionState> = old_state
            .sessions
            .iter()
            .filter(|x| !x.step.finished())
            .collect();
        if left.is_empty() {
            // Every session finished; only the record's end was lost.
            self.finish(old, old_state.clone());
            return;
        }
        let ns = ns_of(&old.metadata).to_string();
        let epoch = next_epoch(w);
        let mut swap = Swap::new(
            &swap_name(epoch),
            SwapSpec {
                epoch,
                reason: "Recovery".into(),
                sessions: left.iter().map(|x| x.name.clone()).collect(),
                recovers: Some(old.spec.epoch),
                request: None,
                ..old.spec.clone()
            },
        );
        swap.metadata.namespace = Some(ns.clone());
        let mut state = SwapState {
            phase: SwapPhase::Running,
            started_at: Some(time(w.now)),
            ..Default::default()
        };
        let mut places = Vec::new();
        for x in left {
            let mut y = x.clone();
            let s = w.session(&ns, &x.name);
            let placed_then = s.is_some_and(|s| {
                s.status
                    .as_ref()
                    .and_then(|st| st.last_swap.as_ref())
                    .is_some_and(|p| p.swapping() && p.epoch == old.spec.epoch)
            });
            if let Some(s) = s
                && (x.step == SwapStep::Placed || placed_then)
            {
                y.step = SwapStep::Placed;
                // Re-stamped with the new epoch: its node acts on it again.
                let mut p = placement_of(&swap, s, w.now);
                p.epoch = epoch;
                p.to = old.spec.to.clone();
                p.state = SWAPPING.into();
                y.deadline = Some(time(w.now + self.st.confirm));
                places.push(Action::Place {
                    session: skey(&ns, &x.name),
                    placement: p,
                    first: None,
                });
            } else {
                y.step = SwapStep::WaitingForTurn;
                y.deadline = Some(time(w.now + self.st.turn_wait));
            }
            state.sessions.push(y);
        }
        swap.status = Some(state);
        self.out.push(Action::Start(Box::new(swap)));
        for o in running {
            self.interrupt_by(o, &holder, epoch);
        }
        let message = format!(
            "the swap of epoch {} was interrupted (its daemon {holder} died); epoch {epoch} finishes it",
            old.spec.epoch
        );
        self.event(akey(&ns, &old.spec.from), true, "SwapInterrupted", message);
        self.out.extend(places);
    }

    pub(super) fn interrupt_by(&mut self, old: &Swap, holder: &str, epoch: u64) {
        let message =
            format!("its daemon ({holder}) died during the swap; epoch {epoch} took over");
        self.mark_interrupted(old, message);
    }

    /// `old`'s record says it was interrupted, and why.
    fn mark_interrupted(&mut self, old: &Swap, message: String) {
        let mut st = state_of(old);
        st.phase = SwapPhase::Interrupted;
        st.message = message;
        self.out.push(Action::Update {
            namespace: ns_of(&old.metadata).to_string(),
            name: old.metadata.name.clone().unwrap_or_default(),
            state: st,
        });
    }
}

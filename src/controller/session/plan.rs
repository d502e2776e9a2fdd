//! The session controller's decisions. Pure: what to do from what is
//! wanted ([`Desired`]) and what is seen ([`Observed`]), which account a
//! session runs under, when a dead agent is restarted.

use crate::agent::state::AgentState;
use crate::agent::terminal::Pane;
use crate::api::{Account, AccountPhase, Session, SwapStatus};
use std::time::{Duration, SystemTime};

/// An agent that ran this long without dying resets its back-off.
pub const HEALTHY_RUN: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    pub deleting: bool,
    pub has_finalizer: bool,
    pub suspend: bool,
    /// The latest restart request (the restart annotation).
    pub restart: Option<String>,
    /// The account to run under (None: Claude Code's default config), or
    /// why none can be used.
    pub account: Result<Option<String>, String>,
    /// The placement that puts the session on `account` now, mid-turn if
    /// need be (the failover controller already waited for the turn
    /// boundary): its epoch.
    pub placed: Option<u64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    /// The tmux pane; None when the tmux session is gone.
    pub pane: Option<Pane>,
    pub state: AgentState,
    /// The running agent is ours (our status names its pid).
    pub launched: bool,
    /// The account the running agent was launched under.
    pub running_account: Option<String>,
    pub now: SystemTime,
    pub next_start_at: Option<SystemTime>,
    /// The restart request the running agent already answers to.
    pub restart_handled: Option<String>,
    /// The account of a standby ready to take the conversation over.
    pub standby_ready: Option<String>,
    /// The running agent is a standby whose takeover was not confirmed in
    /// time ([`super::standby::TAKEOVER_CONFIRM`]).
    pub takeover_overdue: bool,
    /// The agent's state file says busy just after its hooks said idle
    /// ([`crate::agent::state::settling`]): looked at again soon.
    pub settling: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    AddFinalizer,
    /// A live agent with no record of ours: take it over as it is.
    Adopt,
    /// Check the placement's target can take the session (seeded,
    /// credentials, the shared transcripts) before stopping anything.
    Preflight,
    /// Stop the agent gracefully and remove its tmux session.
    Stop,
    /// Remove the tmux session of an agent that has exited.
    Clear,
    Launch,
    /// The ready standby takes the conversation over (`/resume <id>`
    /// typed into it) and becomes the session's agent; a launch if it
    /// cannot.
    TakeOver,
    /// A takeover went unconfirmed: end the standby that was to become the
    /// agent (a launch follows).
    AbandonTakeover,
    /// Dead, restarting after the back-off: seconds left.
    WaitBackoff(u64),
    /// Forget the session and release the finalizer.
    Cleanup,
    /// Running, nothing to change: report its state.
    Observe,
    /// Running under another account than desired and busy: switch at the
    /// end of the turn.
    WaitTurn,
    /// Cannot run: the reason.
    Blocked(String),
}

/// What to do, from what is wanted and what is seen.
pub fn plan(d: &Desired, o: &Observed) -> Vec<Step> {
    let alive = o.pane.as_ref().is_some_and(|p| !p.dead);
    let dead = o.pane.as_ref().is_some_and(|p| p.dead);
    let mut steps = Vec::new();
    if d.deleting || d.suspend {
        if alive {
            steps.push(Step::Stop);
        } else if dead {
            steps.push(Step::Clear);
        }
        if d.deleting {
            steps.push(Step::Cleanup);
        }
        return steps;
    }
    if !d.has_finalizer {
        steps.push(Step::AddFinalizer);
    }
    if alive {
        steps.extend(plan_running(d, o));
        return steps;
    }
    if dead {
        steps.push(Step::Clear);
    }
    match &d.account {
        Err(reason) => steps.push(Step::Blocked(reason.clone())),
        Ok(_) if o.launched && !restart_requested(d, o) => match o.next_start_at {
            Some(at) if at > o.now => steps.push(Step::WaitBackoff(
                at.duration_since(o.now)
                    .unwrap_or_default()
                    .as_secs()
                    .max(1),
            )),
            _ => steps.push(Step::Launch),
        },
        Ok(_) => steps.push(Step::Launch),
    }
    steps
}

fn plan_running(d: &Desired, o: &Observed) -> Vec<Step> {
    if !o.launched {
        return vec![Step::Adopt];
    }
    if o.takeover_overdue {
        return vec![Step::AbandonTakeover, Step::Launch];
    }
    let wrong_account = matches!(&d.account, Ok(want) if *want != o.running_account);
    if restart_requested(d, o) {
        // Asked for: now, even mid-turn (a stuck agent is a reason to ask).
        return vec![Step::Stop, Step::Launch];
    }
    if !wrong_account {
        return vec![Step::Observe];
    }
    if o.state == AgentState::Busy && d.placed.is_none() {
        return vec![Step::WaitTurn];
    }
    let mut steps = Vec::new();
    if d.placed.is_some() {
        steps.push(Step::Preflight);
    }
    let standby = matches!(&d.account, Ok(Some(want)) if o.standby_ready.as_ref() == Some(want));
    let start = if standby {
        Step::TakeOver
    } else {
        Step::Launch
    };
    steps.extend([Step::Stop, start]);
    steps
}

/// A restart was asked for that the running agent has not answered yet.
pub fn restart_requested(d: &Desired, o: &Observed) -> bool {
    d.restart.is_some() && d.restart != o.restart_handled
}

/// The back-off after an agent died at `now`, having been launched at
/// `launched_at` with back-off `previous` seconds: (seconds, restart at).
pub fn backoff(
    previous: u64,
    launched_at: SystemTime,
    now: SystemTime,
    max: Duration,
) -> (u64, SystemTime) {
    let ran = now.duration_since(launched_at).unwrap_or_default();
    let secs = if ran >= HEALTHY_RUN {
        1
    } else {
        (previous * 2).clamp(1, max.as_secs().max(1))
    };
    (secs, now + Duration::from_secs(secs))
}

fn account_phase(a: &Account) -> AccountPhase {
    a.status.as_ref().and_then(|s| s.phase).unwrap_or_default()
}

/// Whether the account controller has looked at `a` (its login among
/// other things): nothing is launched on an account before.
fn checked(a: &Account) -> bool {
    a.status.as_ref().and_then(|s| s.phase).is_some()
}

/// Whether new work may start on `a`.
pub fn runnable(a: &Account) -> bool {
    use AccountPhase::*;
    a.metadata.deletion_timestamp.is_none()
        && !a.spec.suspend
        && checked(a)
        && !matches!(account_phase(a), Exhausted | Unavailable | Suspended)
}

/// The placement that applies to `s` now: the failover controller's,
/// unless a person changed `spec.account` since, or it is a move still
/// under way from a swap lease epoch that has passed (fencing).
pub fn effective_placement(s: &Session, swap_epoch: u64) -> Option<&SwapStatus> {
    let p = s.status.as_ref()?.last_swap.as_ref()?;
    if p.spec_account != s.spec.account {
        return None;
    }
    if p.swapping() && p.epoch < swap_epoch {
        return None;
    }
    Some(p)
}

/// The account a Session should be launched under: its own if named and
/// runnable; else the one it ran under last (a failover moves it if that
/// one is in trouble); else the runnable one with the lowest priority
/// value (Available before NearLimit); when every account is exhausted,
/// one to wait on. No Accounts at all: Claude Code's default config.
pub fn pick_account(
    s: &Session,
    accounts: &[&Account],
    last: Option<&str>,
) -> Result<Option<String>, String> {
    let find = |n: &str| {
        accounts
            .iter()
            .copied()
            .find(|a| a.metadata.name.as_deref() == Some(n))
    };
    // Present, checked and logged in: an Unavailable account (no login,
    // failing authentication) is not even one to wait on.
    let present = |a: &Account| {
        a.metadata.deletion_timestamp.is_none()
            && !a.spec.suspend
            && checked(a)
            && account_phase(a) != AccountPhase::Unavailable
    };
    // Until the account controller has looked at every account, a choice
    // among those it has seen might not be the one it would make.
    let unchecked: Vec<&str> = accounts
        .iter()
        .filter(|a| a.metadata.deletion_timestamp.is_none() && !a.spec.suspend && !checked(a))
        .filter_map(|a| a.metadata.name.as_deref())
        .collect();
    if !unchecked.is_empty() {
        return Err(format!(
            "waiting for the account controller to check {}",
            unchecked.join(", ")
        ));
    }
    if let Some(want) = &s.spec.account {
        match find(want) {
            None => return Err(format!("Account {want} not found")),
            Some(a) if runnable(a) => return Ok(Some(want.clone())),
            Some(_) => {}
        }
    }
    if let Some(a) = last.and_then(find).filter(|a| present(a)) {
        return Ok(a.metadata.name.clone());
    }
    if accounts.is_empty() {
        return Ok(None);
    }
    let key = |a: &&&Account| {
        (
            account_phase(a) != AccountPhase::Available,
            a.spec.priority,
            a.metadata.name.clone(),
        )
    };
    accounts
        .iter()
        .filter(|a| runnable(a))
        .min_by_key(key)
        .or_else(|| accounts.iter().filter(|a| present(a)).min_by_key(key))
        .map(|a| Some(a.metadata.name.clone().unwrap_or_default()))
        .ok_or_else(|| unusable(accounts))
}

/// Why no account can be used, one clause per account.
fn unusable(accounts: &[&Account]) -> String {
    let why: Vec<String> = accounts
        .iter()
        .map(|a| {
            let name = a.metadata.name.as_deref().unwrap_or_default();
            let unavailable = a
                .status
                .as_ref()
                .and_then(|st| st.conditions.iter().find(|c| c.type_ == "Available"))
                .filter(|_| account_phase(a) == AccountPhase::Unavailable);
            match unavailable {
                _ if a.spec.suspend => format!("{name} is suspended"),
                Some(c) => format!("{name} is unavailable ({}: {})", c.reason, c.message),
                None => format!("{name} is being deleted"),
            }
        })
        .collect();
    format!("no usable Account: {}", why.join("; "))
}

/// The account a running Session should stay on: the one it runs under,
/// unless a person named another (runnable) one in its spec.
pub fn keep_account(s: &Session, accounts: &[&Account], running: Option<&str>) -> Option<String> {
    if let Some(want) = &s.spec.account
        && accounts
            .iter()
            .any(|a| a.metadata.name.as_ref() == Some(want) && runnable(a))
    {
        return Some(want.clone());
    }
    running.map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pane(dead: bool) -> Pane {
        Pane {
            session: "a".into(),
            id: "%1".into(),
            pid: 10,
            dead,
            exit_status: dead.then_some(1),
        }
    }

    fn want(account: Option<&str>) -> Desired {
        Desired {
            deleting: false,
            has_finalizer: true,
            suspend: false,
            restart: None,
            account: Ok(account.map(str::to_string)),
            placed: None,
        }
    }

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn seen(p: Option<Pane>, launched: bool, account: Option<&str>, state: AgentState) -> Observed {
        Observed {
            pane: p,
            state,
            launched,
            running_account: account.map(str::to_string),
            now: at(100),
            next_start_at: None,
            restart_handled: None,
            standby_ready: None,
            takeover_overdue: false,
            settling: false,
        }
    }

    #[test]
    fn first_launch_restart_and_backoff() {
        let cases: Vec<(Desired, Observed, Vec<Step>)> = vec![
            (
                want(Some("a")),
                seen(None, false, None, AgentState::Starting),
                vec![Step::Launch],
            ),
            (
                Desired {
                    has_finalizer: false,
                    ..want(Some("a"))
                },
                seen(None, false, None, AgentState::Starting),
                vec![Step::AddFinalizer, Step::Launch],
            ),
            (
                want(Some("a")),
                seen(Some(pane(true)), true, Some("a"), AgentState::Starting),
                vec![Step::Clear, Step::Launch],
            ),
            (
                want(Some("a")),
                Observed {
                    next_start_at: Some(at(104)),
                    ..seen(None, true, Some("a"), AgentState::Starting)
                },
                vec![Step::WaitBackoff(4)],
            ),
        ];
        for (d, o, steps) in cases {
            assert_eq!(plan(&d, &o), steps, "{d:?} {o:?}");
        }
    }

    #[test]
    fn running_agents_are_observed_adopted_or_switched() {
        let live = Some(pane(false));
        let placed = Desired {
            placed: Some(3),
            ..want(Some("b"))
        };
        let cases: Vec<(Desired, Observed, Vec<Step>)> = vec![
            (
                want(Some("a")),
                seen(live.clone(), true, Some("a"), AgentState::Idle),
                vec![Step::Observe],
            ),
            (
                want(Some("a")),
                seen(live.clone(), false, None, AgentState::Starting),
                vec![Step::Adopt],
            ),
            (
                want(Some("b")),
                seen(live.clone(), true, Some("a"), AgentState::Idle),
                vec![Step::Stop, Step::Launch],
            ),
            (
                want(Some("b")),
                seen(live.clone(), true, Some("a"), AgentState::Busy),
                vec![Step::WaitTurn],
            ),
            // A placement moves it now, after checking the target.
            (
                placed,
                seen(live, true, Some("a"), AgentState::Busy),
                vec![Step::Preflight, Step::Stop, Step::Launch],
            ),
        ];
        for (d, o, steps) in cases {
            assert_eq!(plan(&d, &o), steps, "{d:?} {o:?}");
        }
    }

    #[test]
    fn a_ready_standby_on_the_target_takes_over() {
        let live = Some(pane(false));
        let placed = Desired {
            placed: Some(3),
            ..want(Some("b"))
        };
        let mut o = seen(live.clone(), true, Some("a"), AgentState::Idle);
        o.standby_ready = Some("b".into());
        assert_eq!(
            plan(&placed, &o),
            [Step::Preflight, Step::Stop, Step::TakeOver]
        );
        o.standby_ready = Some("c".into());
        assert_eq!(
            plan(&placed, &o),
            [Step::Preflight, Step::Stop, Step::Launch],
            "a standby elsewhere: a launch"
        );
        // Not confirmed in time: ended, and a launch instead.
        let mut o = seen(live, true, Some("b"), AgentState::Idle);
        o.takeover_overdue = true;
        assert_eq!(plan(&placed, &o), [Step::AbandonTakeover, Step::Launch]);
    }

    #[test]
    fn a_restart_request_is_answered_once() {
        let live = Some(pane(false));
        let mut d = want(Some("a"));
        d.restart = Some("2025-01-01T00:00:00.1Z".into());
        let mut o = seen(live.clone(), true, Some("a"), AgentState::Busy);
        assert_eq!(plan(&d, &o), [Step::Stop, Step::Launch], "even mid-turn");
        o.restart_handled = d.restart.clone();
        assert_eq!(plan(&d, &o), [Step::Observe], "answered");
        // Dead and backing off: a request skips the back-off.
        let mut o = seen(Some(pane(true)), true, Some("a"), AgentState::Starting);
        o.next_start_at = Some(at(130));
        assert_eq!(plan(&d, &o), [Step::Clear, Step::Launch]);
        o.restart_handled = d.restart.clone();
        assert_eq!(plan(&d, &o), [Step::Clear, Step::WaitBackoff(30)]);
        // Suspended: nothing to restart.
        d.suspend = true;
        assert_eq!(
            plan(&d, &seen(None, true, Some("a"), AgentState::Starting)),
            Vec::<Step>::new()
        );
    }

    #[test]
    fn suspend_delete_and_blocked() {
        let live = Some(pane(false));
        let mut d = want(Some("a"));
        d.suspend = true;
        assert_eq!(
            plan(&d, &seen(live.clone(), true, Some("a"), AgentState::Idle)),
            [Step::Stop]
        );
        assert_eq!(
            plan(&d, &seen(None, true, Some("a"), AgentState::Idle)),
            Vec::<Step>::new()
        );
        let mut d = want(Some("a"));
        d.deleting = true;
        assert_eq!(
            plan(&d, &seen(live, true, Some("a"), AgentState::Idle)),
            [Step::Stop, Step::Cleanup]
        );
        assert_eq!(
            plan(&d, &seen(None, true, None, AgentState::Idle)),
            [Step::Cleanup]
        );
        let d = Desired {
            account: Err("Account x not found".into()),
            ..want(None)
        };
        assert_eq!(
            plan(&d, &seen(None, false, None, AgentState::Starting)),
            [Step::Blocked("Account x not found".into())]
        );
    }

    #[test]
    fn backoff_doubles_to_the_cap_and_resets_after_a_healthy_run() {
        let max = Duration::from_secs(60);
        let cases = [
            (0, 0, 10, 1),
            (1, 0, 10, 2),
            (32, 0, 10, 60),
            (60, 0, 10, 60),
            (60, 0, 400, 1),
        ];
        for (prev, launched, died, want) in cases {
            let (secs, next) = backoff(prev, at(launched), at(died), max);
            assert_eq!(secs, want, "after {prev}s, died at {died}");
            assert_eq!(next, at(died + want));
        }
    }

    fn placed(s: &mut Session, epoch: u64, state: &str, spec_account: Option<&str>) {
        s.status.get_or_insert_with(Default::default).last_swap = Some(SwapStatus {
            epoch,
            from: Some("a".into()),
            to: "b".into(),
            reason: "NearLimit".into(),
            state: state.into(),
            started_at: crate::api::micro_now(),
            spec_account: spec_account.map(str::to_string),
        });
    }

    #[test]
    fn placements_are_fenced_and_yield_to_a_person() {
        let mut s = session(Some("a"));
        placed(&mut s, 3, crate::api::SWAPPING, Some("a"));
        assert!(effective_placement(&s, 3).is_some());
        assert!(effective_placement(&s, 2).is_some(), "the lease cache lags");
        assert!(effective_placement(&s, 4).is_none(), "a dead leader's move");
        placed(&mut s, 3, crate::api::SWAP_DONE, Some("a"));
        assert!(
            effective_placement(&s, 4).is_some(),
            "a finished move stands"
        );
        s.spec.account = Some("c".into());
        assert!(effective_placement(&s, 3).is_none(), "a person's edit wins");
    }

    fn session(account: Option<&str>) -> Session {
        Session::new(
            "s",
            crate::api::SessionSpec {
                workdir: "/w".into(),
                account: account.map(str::to_string),
                agent: Default::default(),
                suspend: false,
                workspace: None,
                standby: None,
                node_name: None,
            },
        )
    }

    #[test]
    fn account_choice() {
        use crate::api::AccountSpec;
        let acct = |n: &str, prio: i32, suspend: bool| {
            let mut a = Account::new(
                n,
                AccountSpec {
                    priority: prio,
                    suspend,
                    ..AccountSpec::in_dir(format!("/a/{n}"))
                },
            );
            a.metadata.namespace = Some("default".into());
            a.status = Some(crate::api::AccountStatus {
                phase: Some(AccountPhase::Available),
                ..Default::default()
            });
            a
        };
        let mut s = session(Some("work"));
        let owned = vec![
            acct("work", 10, false),
            acct("spare", 20, false),
            acct("cheap", 5, true),
        ];
        let accounts: Vec<&Account> = owned.iter().collect();
        assert_eq!(pick_account(&s, &accounts, None), Ok(Some("work".into())));
        s.spec.account = None;
        assert_eq!(
            pick_account(&s, &accounts, None),
            Ok(Some("work".into())),
            "lowest priority among usable"
        );
        s.spec.account = Some("cheap".into());
        assert_eq!(
            pick_account(&s, &accounts, None),
            Ok(Some("work".into())),
            "a suspended preference falls back"
        );
        s.spec.account = Some("nope".into());
        assert!(pick_account(&s, &accounts, None).is_err());
        s.spec.account = None;
        assert_eq!(pick_account(&s, &[], None), Ok(None));
        // It stays where it ran last, unless that account is suspended.
        assert_eq!(
            pick_account(&s, &accounts, Some("spare")),
            Ok(Some("spare".into()))
        );
        assert_eq!(
            pick_account(&s, &accounts, Some("cheap")),
            Ok(Some("work".into()))
        );
        // An exhausted account is passed over; with all exhausted, one waits.
        let mut tired_owned = owned.clone();
        tired_owned[0].status = Some(crate::api::AccountStatus {
            phase: Some(AccountPhase::Exhausted),
            ..Default::default()
        });
        let tired: Vec<&Account> = tired_owned.iter().collect();
        assert_eq!(pick_account(&s, &tired, None), Ok(Some("spare".into())));
        let mut all_tired = tired_owned.clone();
        all_tired[1].status = all_tired[0].status.clone();
        let all: Vec<&Account> = all_tired.iter().collect();
        assert_eq!(pick_account(&s, &all, None), Ok(Some("work".into())));
        // Running: it stays, unless its spec names another runnable account.
        assert_eq!(
            keep_account(&s, &accounts, Some("spare")),
            Some("spare".into())
        );
        s.spec.account = Some("work".into());
        assert_eq!(
            keep_account(&s, &accounts, Some("spare")),
            Some("work".into())
        );
        assert_eq!(
            keep_account(&s, &tired, Some("spare")),
            Some("spare".into())
        );
        // Not looked at yet: nothing is launched on it.
        let mut fresh = owned.clone();
        fresh[0].status = None;
        s.spec.account = None;
        assert_eq!(
            pick_account(&s, &[&fresh[0], &owned[1]], None),
            Err("waiting for the account controller to check work".into()),
            "not the first one checked, but the best one"
        );
        // An account without a login is not one to wait on: told why.
        let mut solo = acct("solo", 10, false);
        solo.status = Some(crate::api::AccountStatus {
            phase: Some(AccountPhase::Unavailable),
            conditions: vec![crate::api::Condition {
                type_: "Available".into(),
                status: "False".into(),
                reason: "NotLoggedIn".into(),
                message: "no credentials in /a/solo".into(),
                observed_generation: None,
                last_transition_time: crate::api::now(),
            }],
            ..Default::default()
        });
        s.spec.account = Some("solo".into());
        assert_eq!(
            pick_account(&s, &[&solo], Some("solo")),
            Err(
                "no usable Account: solo is unavailable (NotLoggedIn: no credentials in /a/solo)"
                    .into()
            )
        );
    }
}

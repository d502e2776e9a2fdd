//! Which task goes to which session: the queue order, eligibility, the
//! sessions free to take work, the model. Pure.

use crate::api::{
    Account, AccountPhase, Conditions, Session, SessionPhase, Task, TaskPhase, TaskPriority,
};
use crate::quota::policy::Policy;
use crate::selector::Selector;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// Settings of the dispatcher.
#[derive(Debug, Clone)]
pub struct DispatchSettings {
    /// A session takes its next task this long after its last one finished.
    pub cooldown: Duration,
    pub default_timeout: Duration,
    pub max_attempts: u32,
    /// Model per priority when a task names none.
    pub models: HashMap<TaskPriority, String>,
    /// The failover policy (drain: no new task onto a NearLimit account).
    pub policy: Policy,
}

impl Default for DispatchSettings {
    fn default() -> Self {
        DispatchSettings {
            cooldown: Duration::ZERO,
            default_timeout: Duration::from_secs(3600),
            max_attempts: 3,
            models: [
                (TaskPriority::Critical, "opus"),
                (TaskPriority::High, "sonnet"),
                (TaskPriority::Normal, "sonnet"),
                (TaskPriority::Low, "sonnet"),
            ]
            .into_iter()
            .map(|(p, m)| (p, m.to_string()))
            .collect(),
            policy: Policy::default(),
        }
    }
}

pub fn phase(t: &Task) -> TaskPhase {
    t.status
        .as_ref()
        .and_then(|s| s.phase)
        .unwrap_or(TaskPhase::Pending)
}

pub fn finished(p: TaskPhase) -> bool {
    matches!(
        p,
        TaskPhase::Succeeded | TaskPhase::Failed | TaskPhase::Cancelled
    )
}

pub fn in_flight(p: TaskPhase) -> bool {
    matches!(p, TaskPhase::Dispatched | TaskPhase::Running)
}

/// A session as the assignment sees it.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub namespace: String,
    pub name: String,
    pub labels: std::collections::BTreeMap<String, String>,
    /// Where its agent runs: its workdir, or its own worktree when it has
    /// a workspace.
    pub workdir: PathBuf,
    /// With a workspace: the folder its worktree is in (a pool's workdir),
    /// which a task may name to run on any Session working there.
    pub worktrees_in: Option<PathBuf>,
    pub free: bool,
    /// The per-model weekly windows its account takes no new work for: a
    /// task that asks for such a model does not go there.
    pub capped: Vec<crate::quota::Window>,
    /// It works in its own git worktree (`spec.workspace`).
    pub workspace: bool,
}

/// A workdir as written, with `~` expanded and (on the machine that runs
/// the session) symlinks resolved.
pub fn norm(p: &str) -> PathBuf {
    let p = crate::fsutil::expand_home(p);
    std::fs::canonicalize(&p).unwrap_or(p)
}

/// A task's `spec.workdir` as [`norm`] makes it (None: it names none).
pub fn task_workdir(task: &Task) -> Option<PathBuf> {
    task.spec.workdir.as_deref().map(norm)
}

/// A task's `spec.workdir`, when it is worth keeping resolved: it exists
/// and is already its own resolved form. A path that does not exist yet
/// may resolve otherwise once made, and one through a symlink otherwise
/// once the link is pointed elsewhere: those are resolved at each use.
pub fn resolved_workdir(task: &Task) -> Option<PathBuf> {
    let p = crate::fsutil::expand_home(task.spec.workdir.as_deref()?);
    std::fs::canonicalize(&p).ok().filter(|r| *r == p)
}

/// Whether `task` may run on `session`.
pub fn eligible(task: &Task, session: &Candidate) -> bool {
    fits(task, task_workdir(task).as_deref(), session)
}

/// [`eligible`], the task's workdir normalized beforehand (`workdir`,
/// from [`task_workdir`]): a pass asks it of every session, and resolving
/// the path touches the file system.
pub fn fits(task: &Task, workdir: Option<&Path>, session: &Candidate) -> bool {
    let ns = task
        .metadata
        .namespace
        .as_deref()
        .unwrap_or(crate::api::DEFAULT_NAMESPACE);
    if session.namespace != ns {
        return false;
    }
    if !crate::mcp::delegation::may_run_on(task, &session.name) {
        return false;
    }
    // A fresh branch needs a worktree.
    if task.spec.fresh_branch("", "").is_some() && !session.workspace {
        return false;
    }
    if let Some(name) = &task.spec.session {
        return *name == session.name;
    }
    // Cut short by a usage limit or a failover: back to its conversation.
    if let Some(name) = task.status.as_ref().and_then(|s| s.replay_on.as_ref()) {
        return *name == session.name;
    }
    if let Some(sel) = &task.spec.session_selector
        && !Selector::from_label_selector(sel).matches(Some(&session.labels))
    {
        return false;
    }
    if let Some(w) = workdir
        && w != session.workdir
        && Some(w) != session.worktrees_in.as_deref()
    {
        return false;
    }
    if let Some(m) = &task.spec.model
        && crate::quota::model_windows(Some(m))
            .iter()
            .any(|w| session.capped.contains(w))
    {
        return false;
    }
    true
}

/// The order tasks are served in: priority, then age, then name.
pub fn queue_order(a: &Task, b: &Task) -> std::cmp::Ordering {
    let created = |t: &Task| t.metadata.creation_timestamp.clone();
    a.spec
        .priority
        .cmp(&b.spec.priority)
        .then_with(|| created(a).cmp(&created(b)))
        .then_with(|| a.metadata.name.cmp(&b.metadata.name))
}

/// Pairs pending tasks (already in queue order) with free sessions: each
/// task takes the first eligible free session; each session takes one task.
pub fn assign(pending: &[&Task], sessions: &[Candidate]) -> Vec<(usize, usize)> {
    let mut taken = vec![false; sessions.len()];
    let mut out = Vec::new();
    for (ti, t) in pending.iter().enumerate() {
        let workdir = task_workdir(t);
        if let Some(si) = (0..sessions.len()).find(|&si| {
            !taken[si] && sessions[si].free && fits(t, workdir.as_deref(), &sessions[si])
        }) {
            taken[si] = true;
            out.push((ti, si));
        }
    }
    out
}

/// The model a task runs with.
pub fn model_for(task: &Task, s: &DispatchSettings) -> Option<String> {
    task.spec
        .model
        .clone()
        .or_else(|| s.models.get(&task.spec.priority).cloned())
}

/// The marker typed after the prompt.
pub fn marker_text(marker: &str) -> String {
    format!(" ⟦task {marker}⟧")
}

/// Whether the account a session runs on may take work now: not being
/// left (a swap under way), not exhausted, unauthenticated or suspended;
/// not NearLimit when the policy drains it, unless the failover controller
/// said its sessions have nowhere to go (then work goes on until the
/// limit); and when the session's last turn was cut short by a usage limit, only
/// once the account controller has seen that limit and the account came
/// back (otherwise a task requeued by the limit would go straight back into
/// the same limit before the account is marked).
pub fn account_takes_work(s: &Session, account: Option<&Account>, policy: &Policy) -> bool {
    let status = s.status.clone().unwrap_or_default();
    if status.last_swap.as_ref().is_some_and(|p| p.swapping()) {
        return false;
    }
    let Some(account) = account else {
        return true;
    };
    let a = account.status.clone().unwrap_or_default();
    if !matches!(
        a.phase,
        None | Some(AccountPhase::Available | AccountPhase::NearLimit)
    ) {
        return false;
    }
    let stuck = a.failover.as_ref().is_some_and(|f| f.no_target.is_some());
    if a.phase == Some(AccountPhase::NearLimit) && policy.drains(account) && !stuck {
        return false;
    }
    // A launch since the cut (a failover to another account, a restart)
    // was placed on an account chosen after the limit: it takes work.
    let relaunched =
        |cut: &crate::api::Interruption| status.launch.as_ref().is_some_and(|l| l.at.0 > cut.at.0);
    match &status.interrupted {
        // Cut on another account: this one has not seen that limit.
        Some(cut) if cut.account.is_some() && cut.account != account.metadata.name => true,
        None => true,
        Some(cut) => {
            relaunched(cut)
                || a.conditions.iter().any(|c| {
                    c.type_ == "Available"
                        && c.status == "True"
                        && c.last_transition_time.0 > cut.at.0
                })
        }
    }
}

/// Whether `s` can take a task now. `busy`: a task is in flight on it;
/// `last_finished`: when its last task ended.
pub fn session_free(
    s: &Session,
    account: Option<&Account>,
    policy: &Policy,
    busy: bool,
    last_finished: Option<SystemTime>,
    now: SystemTime,
    cooldown: Duration,
) -> bool {
    let status = s.status.clone().unwrap_or_default();
    let cooled =
        last_finished.is_none_or(|t| now.duration_since(t).unwrap_or_default() >= cooldown);
    status.conditions.is_true("Ready")
        && status.phase == Some(SessionPhase::Idle)
        && status.pid.is_some()
        && !s.spec.suspend
        && s.metadata.deletion_timestamp.is_none()
        && !s.restart_pending()
        && !busy
        && cooled
        && account_takes_work(s, account, policy)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::api::TaskSpec;

    pub fn task(name: &str, prio: TaskPriority, created: i64) -> Task {
        let mut t = Task::new(
            name,
            TaskSpec {
                prompt: "p".into(),
                priority: prio,
                model: None,
                session: None,
                session_selector: None,
                workdir: None,
                timeout_seconds: None,
                max_attempts: None,
                workspace: None,
            },
        );
        t.metadata.namespace = Some("default".into());
        t.metadata.creation_timestamp = Some(crate::api::Time(
            k8s_openapi::jiff::Timestamp::from_second(created).unwrap(),
        ));
        t
    }

    fn cand(name: &str, labels: &[(&str, &str)], free: bool) -> Candidate {
        Candidate {
            namespace: "default".into(),
            name: name.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            workdir: PathBuf::from(format!("/w/{name}")),
            worktrees_in: None,
            free,
            capped: Vec::new(),
            workspace: false,
        }
    }

    #[test]
    fn a_fresh_branch_goes_to_a_session_with_a_worktree_only() {
        let mut t = task("t", TaskPriority::Normal, 1);
        let plain = cand("a", &[], true);
        let with = Candidate {
            workspace: true,
            ..cand("b", &[], true)
        };
        assert!(eligible(&t, &plain) && eligible(&t, &with));
        t.spec.workspace = Some(crate::api::TaskWorkspace {
            fresh_branch: true,
            branch: None,
        });
        assert!(!eligible(&t, &plain));
        assert!(eligible(&t, &with));
        assert_eq!(t.spec.fresh_branch("b", "t").as_deref(), Some("b.t"));
        t.spec.workspace = Some(crate::api::TaskWorkspace {
            fresh_branch: false,
            branch: Some("feature/x".into()),
        });
        assert!(!eligible(&t, &plain));
        assert_eq!(t.spec.fresh_branch("b", "t").as_deref(), Some("feature/x"));
        t.spec.workspace = Some(crate::api::TaskWorkspace::default());
        assert!(eligible(&t, &plain));
    }

    #[test]
    fn priority_then_age_and_one_task_per_session() {
        let mut tasks = [
            task("old-low", TaskPriority::Low, 1),
            task("new-critical", TaskPriority::Critical, 5),
            task("old-normal", TaskPriority::Normal, 2),
            task("new-normal", TaskPriority::Normal, 3),
        ];
        tasks.sort_by(queue_order);
        let names: Vec<_> = tasks
            .iter()
            .map(|t| t.metadata.name.clone().unwrap())
            .collect();
        assert_eq!(
            names,
            ["new-critical", "old-normal", "new-normal", "old-low"]
        );
        let refs: Vec<&Task> = tasks.iter().collect();
        let sessions = [
            cand("a", &[], true),
            cand("b", &[], false),
            cand("c", &[], true),
        ];
        assert_eq!(assign(&refs, &sessions), [(0, 0), (1, 2)]);
    }

    #[test]
    fn targeting() {
        let mut t = task("t", TaskPriority::Normal, 1);
        t.spec.session = Some("b".into());
        assert!(!eligible(&t, &cand("a", &[], true)));
        assert!(eligible(&t, &cand("b", &[], true)));
        let mut t = task("t", TaskPriority::Normal, 1);
        t.spec.session_selector = Some(crate::api::LabelSelector {
            match_labels: Some([("project".to_string(), "api".to_string())].into()),
            match_expressions: None,
        });
        assert!(eligible(&t, &cand("a", &[("project", "api")], true)));
        assert!(!eligible(&t, &cand("b", &[("project", "web")], true)));
        let mut t = task("t", TaskPriority::Normal, 1);
        t.spec.workdir = Some("/w/c".into());
        assert!(eligible(&t, &cand("c", &[], true)));
        assert!(!eligible(&t, &cand("a", &[], true)));
        // A session in its own worktree (`/w/c` of a pool working in
        // `/w`): its worktree, or the pool's folder, but no other.
        let in_pool = Candidate {
            worktrees_in: Some("/w".into()),
            ..cand("c", &[], true)
        };
        assert!(eligible(&t, &in_pool));
        t.spec.workdir = Some("/w".into());
        assert!(eligible(&t, &in_pool));
        assert!(!eligible(&t, &cand("c", &[], true)));
        t.spec.workdir = Some("/w/a".into());
        assert!(!eligible(&t, &in_pool));
        let mut t = task("t", TaskPriority::Normal, 1);
        t.status = Some(crate::api::TaskStatus {
            replay_on: Some("b".into()),
            ..Default::default()
        });
        assert!(!eligible(&t, &cand("a", &[], true)), "a replay goes home");
        assert!(eligible(&t, &cand("b", &[], true)));
    }

    #[test]
    fn a_task_asking_for_a_model_avoids_accounts_capped_for_it() {
        use crate::quota::Window;
        let capped = |windows: &[Window]| Candidate {
            capped: windows.to_vec(),
            ..cand("a", &[], true)
        };
        let asking = |model: Option<&str>| {
            let mut t = task("t", TaskPriority::Normal, 1);
            t.spec.model = model.map(str::to_string);
            t
        };
        // (task's model, windows its session's account is capped for, eligible)
        let cases: &[(Option<&str>, &[Window], bool)] = &[
            (Some("opus"), &[Window::SevenDayOpus], false),
            (Some("claude-opus-5-5"), &[Window::SevenDayOpus], false),
            (Some("sonnet"), &[Window::SevenDayOpus], true),
            (Some("opus"), &[Window::SevenDaySonnet], true),
            (
                Some("haiku"),
                &[Window::SevenDayOpus, Window::SevenDaySonnet],
                true,
            ),
            (Some("opusplan"), &[Window::SevenDaySonnet], false),
            // No model asked: the session's own model decides (its drain).
            (None, &[Window::SevenDayOpus, Window::SevenDaySonnet], true),
            (Some("opus"), &[], true),
        ];
        for (model, windows, want) in cases {
            assert_eq!(
                eligible(&asking(*model), &capped(windows)),
                *want,
                "{model:?} on an account capped for {windows:?}"
            );
        }
        let s = DispatchSettings::default();
        assert_eq!(
            model_for(&task("t", TaskPriority::Critical, 1), &s).as_deref(),
            Some("opus")
        );
        assert_eq!(
            model_for(&task("t", TaskPriority::Low, 1), &s).as_deref(),
            Some("sonnet")
        );
    }

    fn session(phase: SessionPhase, ready: bool) -> Session {
        let mut s = Session::new(
            "s",
            crate::api::SessionSpec {
                workdir: "/w".into(),
                account: None,
                agent: Default::default(),
                suspend: false,
                workspace: None,
                standby: None,
                node_name: None,
            },
        );
        let mut st = crate::api::SessionStatus {
            phase: Some(phase),
            pid: Some(1),
            account: Some("a".into()),
            ..Default::default()
        };
        crate::api::set_condition(
            &mut st.conditions,
            "Ready",
            ready,
            "AgentIdle",
            "",
            None,
            crate::api::now(),
        );
        s.status = Some(st);
        s
    }

    fn account(phase: AccountPhase, available_since: i64) -> Account {
        let mut a = Account::new("a", crate::api::AccountSpec::in_dir("/a"));
        let mut st = crate::api::AccountStatus {
            phase: Some(phase),
            ..Default::default()
        };
        crate::api::set_condition(
            &mut st.conditions,
            "Available",
            phase == AccountPhase::Available,
            "x",
            "",
            None,
            crate::api::Time(k8s_openapi::jiff::Timestamp::from_second(available_since).unwrap()),
        );
        a.status = Some(st);
        a
    }

    fn stuck(mut a: Account) -> Account {
        a.status.as_mut().unwrap().failover = Some(crate::api::AccountFailover {
            no_target: Some(crate::api::FailoverNote {
                since: crate::api::now(),
                message: "no other account is available".into(),
            }),
            ..Default::default()
        });
        a
    }

    fn no_drain(mut a: Account) -> Account {
        a.spec.policy = Some(crate::api::AccountPolicy {
            drain: Some(false),
            failback: None,
        });
        a
    }

    #[test]
    fn free_sessions() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let cool = Duration::from_secs(60);
        let ok = account(AccountPhase::Available, 10);
        let idle = session(SessionPhase::Idle, true);
        type Case = (
            &'static str,
            Session,
            Option<Account>,
            bool,
            Option<u64>,
            bool,
        );
        let restarting = {
            let mut s = idle.clone();
            s.metadata.annotations = Some(
                [(crate::api::keys::RESTART.to_string(), "t2".to_string())]
                    .into_iter()
                    .collect(),
            );
            s.status.as_mut().unwrap().restart_handled = Some("t1".into());
            s
        };
        let restarted = {
            let mut s = restarting.clone();
            s.status.as_mut().unwrap().restart_handled = Some("t2".into());
            s
        };
        let cases: Vec<Case> = vec![
            ("idle", idle.clone(), Some(ok.clone()), false, None, true),
            (
                "a restart asked, not yet done",
                restarting,
                Some(ok.clone()),
                false,
                None,
                false,
            ),
            ("restarted", restarted, Some(ok.clone()), false, None, true),
            (
                "busy phase",
                session(SessionPhase::Busy, true),
                Some(ok.clone()),
                false,
                None,
                false,
            ),
            (
                "not ready",
                session(SessionPhase::Idle, false),
                Some(ok.clone()),
                false,
                None,
                false,
            ),
            (
                "a task in flight",
                idle.clone(),
                Some(ok.clone()),
                true,
                None,
                false,
            ),
            (
                "cooling down",
                idle.clone(),
                Some(ok.clone()),
                false,
                Some(970),
                false,
            ),
            (
                "cooled",
                idle.clone(),
                Some(ok.clone()),
                false,
                Some(900),
                true,
            ),
            (
                "exhausted",
                idle.clone(),
                Some(account(AccountPhase::Exhausted, 10)),
                false,
                None,
                false,
            ),
            ("no account", idle.clone(), None, false, None, true),
            (
                "near its limit: drained",
                idle.clone(),
                Some(account(AccountPhase::NearLimit, 10)),
                false,
                None,
                false,
            ),
            (
                "near its limit, nowhere to go: used until the limit",
                idle.clone(),
                Some(stuck(account(AccountPhase::NearLimit, 10))),
                false,
                None,
                true,
            ),
            (
                "near its limit, the account does not drain",
                idle.clone(),
                Some(no_drain(account(AccountPhase::NearLimit, 10))),
                false,
                None,
                true,
            ),
        ];
        let policy = Policy::default();
        for (what, s, a, busy, last, want) in cases {
            let last = last.map(|t| SystemTime::UNIX_EPOCH + Duration::from_secs(t));
            assert_eq!(
                session_free(&s, a.as_ref(), &policy, busy, last, now, cool),
                want,
                "{what}"
            );
        }
        // The config's drain off: a NearLimit account keeps taking work.
        let off = Policy {
            drain: false,
            ..Policy::default()
        };
        assert!(account_takes_work(
            &idle,
            Some(&account(AccountPhase::NearLimit, 10)),
            &off
        ));
        // A turn cut by a limit: only once the account came back after it.
        let mut cut = idle.clone();
        cut.status.as_mut().unwrap().interrupted = Some(crate::api::Interruption {
            by: "rate_limit".into(),
            at: crate::api::MicroTime(k8s_openapi::jiff::Timestamp::from_second(500).unwrap()),
            account: Some("a".into()),
        });
        // Moved to another account since the cut: that one takes work.
        let mut other = account(AccountPhase::Available, 10);
        other.metadata.name = Some("b".into());
        assert!(account_takes_work(&cut, Some(&other), &policy));
        assert!(!account_takes_work(
            &cut,
            Some(&account(AccountPhase::Available, 10)),
            &policy
        ));
        assert!(account_takes_work(
            &cut,
            Some(&account(AccountPhase::Available, 600)),
            &policy
        ));
        // Moved since to another account (available from before the cut).
        cut.status.as_mut().unwrap().launch = Some(crate::api::LaunchStatus {
            account: Some("b".into()),
            at: crate::api::MicroTime(k8s_openapi::jiff::Timestamp::from_second(520).unwrap()),
            resumed: true,
            epoch: Some(1),
            confirmed_at: None,
            takeover: false,
        });
        assert!(account_takes_work(
            &cut,
            Some(&account(AccountPhase::Available, 10)),
            &policy
        ));
        // Being moved.
        let mut moving = idle;
        moving.status.as_mut().unwrap().last_swap = Some(crate::api::SwapStatus {
            epoch: 1,
            from: Some("a".into()),
            to: "b".into(),
            reason: "NearLimit".into(),
            state: crate::api::SWAPPING.into(),
            started_at: crate::api::micro_now(),
            spec_account: None,
        });
        assert!(!account_takes_work(&moving, Some(&ok), &policy));
    }
}

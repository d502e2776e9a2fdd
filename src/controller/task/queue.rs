//! The dispatcher's view of the tasks, kept between passes and updated
//! from the tasks that changed, so that a pass costs in proportion to
//! what changed and to the sessions, not to the length of the queue.
//!
//! - Pending tasks in queue order ([`assign::queue_order`]), grouped by
//!   their targeting: tasks with equal targeting may run on exactly the
//!   same sessions and share one placement answer. Pairing tasks with free
//!   sessions merges the groups in queue order and drops a group at its
//!   first task that finds no free session (none of its later tasks
//!   would), so it stops as soon as the free sessions are taken.
//! - The tasks a pass must move along (in flight, to stop, to release),
//!   the pending replays, the task in flight on each session, and when
//!   each session's last task finished.
//! - The `Scheduled` answer each group was last told: only the tasks of a
//!   group whose answer changed, and the tasks that changed themselves,
//!   are looked at again.
//!
//! Pure: fed the tasks by the caller, asked by the caller.

use super::assign::{self, Candidate, finished, in_flight, phase};
use super::placement::{self, Place};
use crate::api::keys::{CANCEL, TASK_FINALIZER};
use crate::api::{Task, TaskPhase, TaskPriority};
use crate::mcp::delegation::DELEGATED_BY;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, HashSet};
use std::sync::Arc;
use std::time::SystemTime;

/// A task by namespace and name.
pub type TaskKey = (String, String);
/// A session by namespace and name.
pub type SessionKey = (String, String);
/// A placement answer (`None`: placeable), as [`placement::unplaceable`].
pub type Answer = Option<(&'static str, String)>;

fn key_of(t: &Task) -> TaskKey {
    (
        t.metadata.namespace.clone().unwrap_or_default(),
        t.metadata.name.clone().unwrap_or_default(),
    )
}

/// What decides which sessions a pending task may run on (everything
/// [`assign::eligible`] and [`placement::unplaceable`] read of a task).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Targeting {
    namespace: String,
    session: Option<String>,
    /// The label selector, as JSON.
    selector: Option<String>,
    workdir: Option<String>,
    replay_on: Option<String>,
    delegated_by: Option<String>,
    model: Option<String>,
}

impl Targeting {
    pub fn of(t: &Task) -> Targeting {
        Targeting {
            namespace: t
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| crate::api::DEFAULT_NAMESPACE.to_string()),
            session: t.spec.session.clone(),
            selector: t
                .spec
                .session_selector
                .as_ref()
                .map(|s| serde_json::to_string(s).unwrap_or_default()),
            workdir: t.spec.workdir.clone(),
            replay_on: t.status.as_ref().and_then(|s| s.replay_on.clone()),
            delegated_by: t
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(DELEGATED_BY).cloned()),
            model: t.spec.model.clone(),
        }
    }
}

/// A pending task's place in the queue: priority, then age, then name
/// (as [`assign::queue_order`]), then namespace.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Order {
    priority: TaskPriority,
    created: Option<crate::api::Time>,
    name: String,
    namespace: String,
}

impl Order {
    fn of(t: &Task) -> Order {
        let (namespace, name) = key_of(t);
        Order {
            priority: t.spec.priority,
            created: t.metadata.creation_timestamp.clone(),
            name,
            namespace,
        }
    }

    fn key(&self) -> TaskKey {
        (self.namespace.clone(), self.name.clone())
    }
}

/// The pending tasks of one targeting.
struct Group {
    tasks: BTreeSet<Order>,
    /// One of them (any: they all target alike), to ask eligibility with.
    sample: Arc<Task>,
    /// Their workdir, resolved once for the group's life when it can be
    /// (see [`assign::resolved_workdir`]; None: each pass resolves it).
    workdir: Option<std::path::PathBuf>,
    /// The answer last handed out for the whole group (None: never).
    told: Option<Answer>,
}

/// What is filed for one task, to unfile it when it changes.
#[derive(Default)]
struct Filed {
    pending: Option<(Targeting, Order)>,
    finished: Option<(SessionKey, SystemTime)>,
    in_flight_on: Option<SessionKey>,
    active: bool,
    replay: bool,
}

/// See the module's doc.
#[derive(Default)]
pub struct Queue {
    filed: HashMap<TaskKey, Filed>,
    groups: HashMap<Targeting, Group>,
    /// Tasks a pass moves along: in flight, to stop, to release.
    active: HashSet<TaskKey>,
    /// Pending tasks bound to a session's conversation.
    replays: HashSet<TaskKey>,
    /// The tasks in flight on each session.
    in_flight_on: HashMap<SessionKey, BTreeSet<String>>,
    /// When each session's tasks finished (time → how many).
    finished_on: HashMap<SessionKey, BTreeMap<SystemTime, usize>>,
    /// Pending tasks changed since their group's answer was last handed
    /// out.
    untold: HashSet<TaskKey>,
}

/// Whether a pass must move `t` along (the dispatcher's first step).
pub fn needs_moving(t: &Task) -> bool {
    let p = phase(t);
    let deleting = t.metadata.deletion_timestamp.is_some();
    let cancel = t
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(CANCEL));
    let holds = t
        .metadata
        .finalizers
        .iter()
        .flatten()
        .any(|f| f == TASK_FINALIZER);
    ((deleting || cancel) && !finished(p)) || in_flight(p) || ((finished(p) || deleting) && holds)
}

impl Queue {
    /// A queue of `tasks`.
    pub fn of<'a>(tasks: impl IntoIterator<Item = &'a Arc<Task>>) -> Queue {
        let mut q = Queue::default();
        for t in tasks {
            q.upsert(t);
        }
        q
    }

    /// Files `t` as it is now (replacing what was filed for it).
    pub fn upsert(&mut self, t: &Arc<Task>) {
        let key = key_of(t);
        self.unfile(&key);
        let p = phase(t);
        let status = t.status.as_ref();
        let session = |name: &str| (key.0.clone(), name.to_string());
        let mut f = Filed {
            active: needs_moving(t),
            ..Filed::default()
        };
        if p == TaskPhase::Pending && t.metadata.deletion_timestamp.is_none() {
            let (targeting, order) = (Targeting::of(t), Order::of(t));
            let g = self
                .groups
                .entry(targeting.clone())
                .or_insert_with(|| Group {
                    tasks: BTreeSet::new(),
                    sample: t.clone(),
                    workdir: assign::resolved_workdir(t),
                    told: None,
                });
            g.tasks.insert(order.clone());
            g.sample = t.clone();
            f.pending = Some((targeting, order));
            self.untold.insert(key.clone());
        }
        if p == TaskPhase::Pending && status.is_some_and(|s| s.replay_on.is_some()) {
            f.replay = true;
            self.replays.insert(key.clone());
        }
        if in_flight(p)
            && let Some(s) = status.and_then(|s| s.session.as_deref())
        {
            let on = session(s);
            self.in_flight_on
                .entry(on.clone())
                .or_default()
                .insert(key.1.clone());
            f.in_flight_on = Some(on);
        }
        if finished(p)
            && let Some(s) = status
            && let (Some(sess), Some(at)) = (s.session.as_deref(), s.finished_at.as_ref())
        {
            let (on, at) = (session(sess), SystemTime::from(at.0));
            *self
                .finished_on
                .entry(on.clone())
                .or_default()
                .entry(at)
                .or_default() += 1;
            f.finished = Some((on, at));
        }
        if f.active {
            self.active.insert(key.clone());
        }
        self.filed.insert(key, f);
    }

    /// Forgets a task (deleted).
    pub fn remove(&mut self, key: &TaskKey) {
        self.unfile(key);
    }

    fn unfile(&mut self, key: &TaskKey) {
        let Some(f) = self.filed.remove(key) else {
            return;
        };
        if let Some((targeting, order)) = f.pending
            && let Some(g) = self.groups.get_mut(&targeting)
        {
            g.tasks.remove(&order);
            if g.tasks.is_empty() {
                self.groups.remove(&targeting);
            }
        }
        self.untold.remove(key);
        if f.replay {
            self.replays.remove(key);
        }
        if f.active {
            self.active.remove(key);
        }
        if let Some(on) = f.in_flight_on
            && let Some(set) = self.in_flight_on.get_mut(&on)
        {
            set.remove(&key.1);
            if set.is_empty() {
                self.in_flight_on.remove(&on);
            }
        }
        if let Some((on, at)) = f.finished
            && let Some(times) = self.finished_on.get_mut(&on)
        {
            if let Some(n) = times.get_mut(&at) {
                *n -= 1;
                if *n == 0 {
                    times.remove(&at);
                }
            }
            if times.is_empty() {
                self.finished_on.remove(&on);
            }
        }
    }

    /// The tasks a pass must move along, in no particular order.
    pub fn active(&self) -> Vec<TaskKey> {
        self.active.iter().cloned().collect()
    }

    /// The pending tasks bound to a session's conversation.
    pub fn replays(&self) -> Vec<TaskKey> {
        self.replays.iter().cloned().collect()
    }

    /// How many tasks are pending.
    pub fn pending(&self) -> usize {
        self.groups.values().map(|g| g.tasks.len()).sum()
    }

    /// The task in flight on a session (the first by name if several).
    pub fn in_flight_on(&self, namespace: &str, session: &str) -> Option<&str> {
        self.in_flight_on
            .get(&(namespace.to_string(), session.to_string()))
            .and_then(|s| s.first())
            .map(String::as_str)
    }

    /// Whether any task is in flight.
    pub fn any_in_flight(&self) -> bool {
        !self.in_flight_on.is_empty()
    }

    /// When a session's last task finished.
    pub fn last_finished(&self, namespace: &str, session: &str) -> Option<SystemTime> {
        self.finished_on
            .get(&(namespace.to_string(), session.to_string()))
            .and_then(|t| t.keys().next_back())
            .copied()
    }

    /// When each session's last task finished.
    pub fn last_finished_all(&self) -> impl Iterator<Item = SystemTime> + '_ {
        self.finished_on
            .values()
            .filter_map(|t| t.keys().next_back().copied())
    }

    /// Pairs pending tasks with free sessions as [`assign::assign`] would
    /// over the whole queue in order: each task takes the first eligible
    /// free session not taken yet.
    pub fn assign(&self, sessions: &[Candidate]) -> Vec<(TaskKey, usize)> {
        let mut taken = vec![false; sessions.len()];
        let mut free_left = sessions.iter().filter(|s| s.free).count();
        // Per group: the sessions its tasks may take, in order, and a cursor.
        let mut fits: Vec<(Vec<usize>, usize)> = Vec::new();
        let mut heads = BinaryHeap::new();
        let mut iters = Vec::new();
        for g in self.groups.values() {
            let workdir = g
                .workdir
                .clone()
                .or_else(|| assign::task_workdir(&g.sample));
            let eligible: Vec<usize> = (0..sessions.len())
                .filter(|&i| {
                    sessions[i].free && assign::fits(&g.sample, workdir.as_deref(), &sessions[i])
                })
                .collect();
            if eligible.is_empty() {
                continue;
            }
            let mut it = g.tasks.iter();
            if let Some(first) = it.next() {
                heads.push(Reverse((first, iters.len())));
                iters.push(it);
                fits.push((eligible, 0));
            }
        }
        let mut out = Vec::new();
        while free_left > 0
            && let Some(Reverse((order, g))) = heads.pop()
        {
            let (eligible, cursor) = &mut fits[g];
            while *cursor < eligible.len() && taken[eligible[*cursor]] {
                *cursor += 1;
            }
            let Some(&si) = eligible.get(*cursor) else {
                continue; // no later task of this group fits either
            };
            taken[si] = true;
            free_left -= 1;
            out.push((order.key(), si));
            if let Some(next) = iters[g].next() {
                heads.push(Reverse((next, g)));
            }
        }
        out
    }

    /// The pending tasks whose `Scheduled` condition must be looked at,
    /// with the answer for each: every task of a group whose answer
    /// changed since it was last handed out, and the tasks changed since.
    /// `skip`: tasks being delivered in this pass (looked at later).
    pub fn to_tell(&mut self, places: &[Place], skip: &HashSet<TaskKey>) -> Vec<(TaskKey, Answer)> {
        let mut out = Vec::new();
        let mut by_group: HashMap<&Targeting, Vec<TaskKey>> = HashMap::new();
        for key in &self.untold {
            if let Some(Filed {
                pending: Some((targeting, _)),
                ..
            }) = self.filed.get(key)
            {
                by_group.entry(targeting).or_default().push(key.clone());
            }
        }
        let mut told = Vec::new();
        for (targeting, g) in &self.groups {
            let answer = placement::unplaceable(&g.sample, places);
            if g.told.as_ref() != Some(&answer) {
                told.push((targeting.clone(), answer.clone()));
                out.extend(
                    g.tasks
                        .iter()
                        .map(Order::key)
                        .filter(|k| !skip.contains(k))
                        .map(|k| (k, answer.clone())),
                );
            } else if let Some(changed) = by_group.get(targeting) {
                out.extend(
                    changed
                        .iter()
                        .filter(|k| !skip.contains(*k))
                        .map(|k| (k.clone(), answer.clone())),
                );
            }
        }
        for (targeting, answer) in told {
            if let Some(g) = self.groups.get_mut(&targeting) {
                g.told = Some(answer);
            }
        }
        self.untold.retain(|k| skip.contains(k));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::TaskStatus;
    use crate::controller::task::assign::tests::task;
    use std::path::PathBuf;

    fn on(mut t: Task, session: &str) -> Task {
        t.spec.session = Some(session.into());
        t
    }

    fn with_phase(mut t: Task, p: TaskPhase, session: Option<&str>, finished_at: i64) -> Task {
        t.status = Some(TaskStatus {
            phase: Some(p),
            session: session.map(str::to_string),
            finished_at: (finished_at > 0).then(|| {
                crate::api::Time(k8s_openapi::jiff::Timestamp::from_second(finished_at).unwrap())
            }),
            ..Default::default()
        });
        t
    }

    fn cand(name: &str, free: bool) -> Candidate {
        Candidate {
            namespace: "default".into(),
            name: name.into(),
            labels: Default::default(),
            workdir: PathBuf::from(format!("/w/{name}")),
            worktrees_in: None,
            free,
            capped: Vec::new(),
            workspace: false,
        }
    }

    fn names(pairs: &[(TaskKey, usize)]) -> Vec<(String, usize)> {
        pairs.iter().map(|((_, n), s)| (n.clone(), *s)).collect()
    }

    /// What the whole-queue assignment gives for the same tasks.
    fn reference(tasks: &[Task], sessions: &[Candidate]) -> Vec<(String, usize)> {
        let mut pending: Vec<&Task> = tasks
            .iter()
            .filter(|t| phase(t) == TaskPhase::Pending)
            .collect();
        pending.sort_by(|a, b| assign::queue_order(a, b));
        assign::assign(&pending, sessions)
            .into_iter()
            .map(|(t, s)| (pending[t].metadata.name.clone().unwrap(), s))
            .collect()
    }

    #[test]
    fn assigns_as_the_whole_queue_would() {
        type Case = (&'static str, Vec<Task>, Vec<Candidate>);
        let cases: Vec<Case> = vec![
            (
                "priority then age, one task per session",
                vec![
                    task("old-low", TaskPriority::Low, 1),
                    task("new-critical", TaskPriority::Critical, 5),
                    task("old-normal", TaskPriority::Normal, 2),
                    task("new-normal", TaskPriority::Normal, 3),
                ],
                vec![cand("a", true), cand("b", false), cand("c", true)],
            ),
            (
                "a targeted task takes its session ahead of older untargeted ones",
                vec![
                    task("t1", TaskPriority::Normal, 1),
                    on(task("t2", TaskPriority::Normal, 2), "a"),
                    task("t3", TaskPriority::Normal, 3),
                ],
                vec![cand("a", true), cand("b", true)],
            ),
            (
                "a targeted task whose session is taken waits; later ones go on",
                vec![
                    on(task("t1", TaskPriority::Critical, 1), "a"),
                    on(task("t2", TaskPriority::Normal, 2), "a"),
                    task("t3", TaskPriority::Normal, 3),
                    on(task("t4", TaskPriority::Normal, 4), "b"),
                ],
                vec![cand("a", true), cand("b", true), cand("c", true)],
            ),
            (
                "no free session: nothing",
                vec![task("t1", TaskPriority::Normal, 1)],
                vec![cand("a", false)],
            ),
            (
                "a task for a missing session does not hold up the queue",
                vec![
                    on(task("t1", TaskPriority::Critical, 1), "zz"),
                    task("t2", TaskPriority::Low, 2),
                ],
                vec![cand("a", true)],
            ),
            (
                "finished and in-flight tasks are not queued",
                vec![
                    with_phase(
                        task("t1", TaskPriority::Critical, 1),
                        TaskPhase::Running,
                        Some("a"),
                        0,
                    ),
                    with_phase(
                        task("t2", TaskPriority::Critical, 1),
                        TaskPhase::Succeeded,
                        Some("a"),
                        9,
                    ),
                    task("t3", TaskPriority::Low, 2),
                ],
                vec![cand("a", true), cand("b", true)],
            ),
        ];
        for (what, tasks, sessions) in cases {
            let arcs: Vec<Arc<Task>> = tasks.iter().cloned().map(Arc::new).collect();
            let q = Queue::of(&arcs);
            assert_eq!(
                names(&q.assign(&sessions)),
                reference(&tasks, &sessions),
                "{what}"
            );
        }
    }

    #[test]
    fn follows_changes_of_each_task() {
        let t1 = Arc::new(task("t1", TaskPriority::Normal, 1));
        let t2 = Arc::new(task("t2", TaskPriority::Normal, 2));
        let mut q = Queue::of([&t1, &t2]);
        assert_eq!(q.pending(), 2);
        let sessions = [cand("a", true)];
        assert_eq!(names(&q.assign(&sessions)), [("t1".to_string(), 0)]);
        // t1 dispatched to a: in flight there, out of the queue, moved along.
        let running = Arc::new(with_phase(
            (*t1).clone(),
            TaskPhase::Dispatched,
            Some("a"),
            0,
        ));
        q.upsert(&running);
        assert_eq!(q.pending(), 1);
        assert_eq!(q.in_flight_on("default", "a"), Some("t1"));
        assert!(q.any_in_flight());
        assert_eq!(q.active(), [("default".to_string(), "t1".to_string())]);
        assert_eq!(names(&q.assign(&sessions)), [("t2".to_string(), 0)]);
        // Finished: the session's last finish is known, nothing in flight.
        let done = Arc::new(with_phase(
            (*t1).clone(),
            TaskPhase::Succeeded,
            Some("a"),
            50,
        ));
        q.upsert(&done);
        assert!(!q.any_in_flight());
        assert!(q.active().is_empty());
        let at = |s| SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(s);
        assert_eq!(q.last_finished("default", "a"), Some(at(50)));
        // A later finish on the same session; then its deletion.
        let t3 = Arc::new(with_phase(
            task("t3", TaskPriority::Normal, 3),
            TaskPhase::Failed,
            Some("a"),
            70,
        ));
        q.upsert(&t3);
        assert_eq!(q.last_finished("default", "a"), Some(at(70)));
        q.remove(&("default".into(), "t3".into()));
        assert_eq!(q.last_finished("default", "a"), Some(at(50)));
        // A pending replay is remembered as one.
        let mut replay = (*t2).clone();
        replay.status = Some(TaskStatus {
            phase: Some(TaskPhase::Pending),
            replay_on: Some("b".into()),
            ..Default::default()
        });
        q.upsert(&Arc::new(replay));
        assert_eq!(q.replays(), [("default".to_string(), "t2".to_string())]);
        assert_eq!(q.pending(), 1);
        assert!(q.assign(&sessions).is_empty(), "a replay goes home");
        q.remove(&("default".into(), "t2".into()));
        assert!(q.replays().is_empty());
        assert_eq!(q.pending(), 0);
    }

    #[test]
    fn moving_along() {
        let mut cancelled = task("c", TaskPriority::Normal, 1);
        cancelled.metadata.annotations = Some([(CANCEL.to_string(), "x".to_string())].into());
        let mut held = with_phase(
            task("h", TaskPriority::Normal, 1),
            TaskPhase::Succeeded,
            None,
            5,
        );
        held.metadata.finalizers = Some(vec![TASK_FINALIZER.to_string()]);
        let cases = [
            ("pending", task("p", TaskPriority::Normal, 1), false),
            ("cancel asked", cancelled, true),
            (
                "running",
                with_phase(
                    task("r", TaskPriority::Normal, 1),
                    TaskPhase::Running,
                    Some("a"),
                    0,
                ),
                true,
            ),
            (
                "finished",
                with_phase(
                    task("f", TaskPriority::Normal, 1),
                    TaskPhase::Failed,
                    None,
                    5,
                ),
                false,
            ),
            ("finished, finalizer held", held, true),
        ];
        for (what, t, want) in cases {
            assert_eq!(needs_moving(&t), want, "{what}");
        }
    }

    #[test]
    fn tells_each_group_once_then_only_what_changed() {
        let t1 = Arc::new(on(task("t1", TaskPriority::Normal, 1), "zz"));
        let t2 = Arc::new(on(task("t2", TaskPriority::Normal, 2), "zz"));
        let t3 = Arc::new(task("t3", TaskPriority::Normal, 3));
        let mut q = Queue::of([&t1, &t2, &t3]);
        let places = [Place {
            candidate: cand("a", false),
            blocked: None,
        }];
        let none = HashSet::new();
        let mut told = q.to_tell(&places, &none);
        told.sort_by(|a, b| a.0.cmp(&b.0));
        let reasons: Vec<(&str, Option<&str>)> = told
            .iter()
            .map(|((_, n), a)| (n.as_str(), a.as_ref().map(|a| a.0)))
            .collect();
        assert_eq!(
            reasons,
            [
                ("t1", Some(placement::NO_SUCH_SESSION)),
                ("t2", Some(placement::NO_SUCH_SESSION)),
                ("t3", None)
            ]
        );
        // Nothing changed: nothing to look at.
        assert!(q.to_tell(&places, &none).is_empty());
        // One task changed: only it.
        q.upsert(&t2);
        let again = q.to_tell(&places, &none);
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].0.1, "t2");
        // Session zz appears: the whole group's answer changed.
        let places = [
            places[0].clone(),
            Place {
                candidate: cand("zz", false),
                blocked: None,
            },
        ];
        let mut told: Vec<String> = q
            .to_tell(&places, &none)
            .into_iter()
            .map(|((_, n), a)| {
                assert_eq!(a, None);
                n
            })
            .collect();
        told.sort();
        assert_eq!(told, ["t1", "t2"]);
        // A task being delivered is kept for later.
        q.upsert(&t3);
        let skip: HashSet<TaskKey> = [("default".to_string(), "t3".to_string())].into();
        assert!(q.to_tell(&places, &skip).is_empty());
        assert_eq!(q.to_tell(&places, &none).len(), 1);
    }
}

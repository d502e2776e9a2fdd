//! How a task in flight moves along: confirmed, finished, requeued or
//! failed. Pure: [`advance`] decides from what is known of the task's
//! session and agent ([`Observation`]); when it needs to look at something
//! that costs a read (the agent's prompt history, its composer, its state
//! file) it asks for it ([`Step::Look`]) and is called again with the
//! answer.

use crate::agent::state::PidFile;
use crate::api::{SessionPhase, Task, TaskPhase};
use std::time::{Duration, SystemTime};

/// The prompt hook normally arrives within milliseconds; after this the
/// agent's prompt history is the witness (a daemon that was down).
pub const HISTORY_AFTER: Duration = Duration::from_secs(2);
/// Not confirmed this long after the text went in: look at the composer.
pub const COMPOSER_AFTER: Duration = Duration::from_secs(3);
/// An empty composer this long after the typing, and an idle agent: the
/// text never arrived.
pub const NEVER_ARRIVED_AFTER: Duration = Duration::from_secs(6);
/// Enter is sent again at most this often for a text left in the composer.
pub const ENTER_EVERY: Duration = Duration::from_secs(3);
/// A turn whose Stop hook was seen for its prompt but never for its end is
/// taken as finished once the agent's state file has said idle this long.
pub const LOST_STOP_GRACE: Duration = Duration::from_secs(10);
/// Claude Code writes its transcript lazily: a turn's reply is looked for
/// there this long after the agent went idle before the task ends without
/// it.
pub const REPLY_GRACE: Duration = Duration::from_secs(5);

/// The session a task is on, as the dispatcher sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionView {
    pub pid: Option<u32>,
    pub phase: SessionPhase,
    /// The latest placement: when the move began, from, to.
    pub placed: Option<(SystemTime, Option<String>, String)>,
}

/// What the composer holds.
#[derive(Debug, Clone, PartialEq)]
pub enum Composer {
    /// No live pane.
    Gone,
    /// Its text (empty: an empty composer); None: no composer on screen.
    Text(Option<String>),
}

/// Answers to the looks asked for so far (None: not looked).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Probes {
    pub history: Option<Option<SystemTime>>,
    pub composer: Option<Composer>,
    pub pid_file: Option<Option<PidFile>>,
    /// The reply to the task's prompt in the conversation's transcript.
    pub reply: Option<Option<String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Look {
    History,
    Composer,
    PidFile,
    Transcript,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observation {
    /// The session it is on; None when gone.
    pub session: Option<SessionView>,
    /// The `UserPromptSubmit` hook carrying the task's marker: when.
    pub hooked: Option<SystemTime>,
    /// `Stop`: the reply and when.
    pub last_stop: Option<(String, SystemTime)>,
    /// `StopFailure`: error, message, when.
    pub last_failure: Option<(String, String, SystemTime)>,
    /// When this process typed the text (None: another run did).
    pub typed_at: Option<SystemTime>,
    /// When Enter was last sent again for it.
    pub enter_sent: Option<SystemTime>,
    /// When the turn began, as precisely as known.
    pub started: Option<SystemTime>,
    pub probes: Probes,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    Wait,
    Look(Look),
    /// Received by the agent at `at` (by its hook, else its history).
    Confirm {
        at: SystemTime,
        by_hook: bool,
    },
    /// The text waits in the composer: submit it (never type it again).
    PressEnter,
    /// Back to the queue. `rewind`: the attempt does not count;
    /// `replay_on`: to be typed again in this session's conversation.
    Requeue {
        why: String,
        rewind: bool,
        replay_on: Option<String>,
    },
    Finish {
        phase: TaskPhase,
        message: String,
    },
    /// Failed for good, or back to the queue while attempts remain;
    /// `interrupt`: stop the agent's turn first.
    RetryOrFail {
        why: String,
        interrupt: bool,
    },
}

fn since(now: SystemTime, t: SystemTime) -> Duration {
    now.duration_since(t).unwrap_or_default()
}

/// The first non-empty line of `s`, at most `n` characters.
pub fn short(s: &str, n: usize) -> String {
    let line = s
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_default()
        .trim();
    if line.chars().count() > n {
        format!("{}…", line.chars().take(n).collect::<String>())
    } else {
        line.to_string()
    }
}

/// The next step of an in-flight task. `timeout`: its turn's limit.
pub fn advance(t: &Task, o: &Observation, now: SystemTime, timeout: Duration) -> Step {
    let status = t.status.clone().unwrap_or_default();
    let Some(session) = &o.session else {
        return Step::Requeue {
            why: "its session is gone".into(),
            rewind: false,
            replay_on: None,
        };
    };
    let same_agent = session.pid.is_some() && session.pid == status.session_pid;
    match status.phase {
        Some(TaskPhase::Dispatched) => dispatched(t, o, same_agent, now),
        Some(TaskPhase::Running) => running(t, o, session, same_agent, now, timeout),
        _ => Step::Wait,
    }
}

fn dispatched(t: &Task, o: &Observation, same_agent: bool, now: SystemTime) -> Step {
    let status = t.status.clone().unwrap_or_default();
    let intent = status
        .dispatched_at
        .as_ref()
        .map(|t| SystemTime::from(t.0))
        .unwrap_or(now);
    if let Some(at) = o.hooked {
        return Step::Confirm { at, by_hook: true };
    }
    let age = since(now, intent);
    if age >= HISTORY_AFTER {
        match o.probes.history {
            None => return Step::Look(Look::History),
            Some(Some(at)) => return Step::Confirm { at, by_hook: false },
            Some(None) => {}
        }
    }
    let requeue = |why: &str| Step::Requeue {
        why: why.into(),
        rewind: true,
        replay_on: None,
    };
    if !same_agent {
        return requeue("the session's agent restarted before it received the task");
    }
    // Since the text went in (after a restart of the daemon, only the
    // intent's time is known).
    let since_typed = o.typed_at.map(|at| since(now, at)).unwrap_or(age);
    if since_typed < COMPOSER_AFTER {
        return Step::Wait;
    }
    match &o.probes.composer {
        None => Step::Look(Look::Composer),
        Some(Composer::Gone) => requeue("the session's agent is gone"),
        // Our text waits there (only tasks are typed into a pool session).
        Some(Composer::Text(Some(text))) if !text.is_empty() => {
            if o.enter_sent.is_none_or(|at| since(now, at) >= ENTER_EVERY) {
                Step::PressEnter
            } else {
                Step::Wait
            }
        }
        // An empty composer and no trace in the history: the text never
        // arrived (the daemon died before typing it). An agent busy with a
        // turn has taken it: its hook is late.
        Some(Composer::Text(Some(_))) if since_typed > NEVER_ARRIVED_AFTER => {
            match &o.probes.pid_file {
                None => Step::Look(Look::PidFile),
                Some(p) if p.as_ref().is_none_or(|p| p.status == "idle") => {
                    requeue("the typed text never reached the agent")
                }
                Some(_) => Step::Wait,
            }
        }
        Some(_) => Step::Wait,
    }
}

fn running(
    t: &Task,
    o: &Observation,
    session: &SessionView,
    same_agent: bool,
    now: SystemTime,
    timeout: Duration,
) -> Step {
    let started = o.started.unwrap_or(now);
    let name = t
        .status
        .as_ref()
        .and_then(|s| s.session.clone())
        .unwrap_or_default();
    if !same_agent {
        return agent_gone(session, started, name);
    }
    if let Some(step) = turn_heard(o, started, name) {
        return step;
    }
    if since(now, started) > timeout {
        return Step::RetryOrFail {
            why: format!("timed out after {}s", timeout.as_secs()),
            interrupt: true,
        };
    }
    ended_unheard(o, session, started, now)
}

/// The agent the task was typed into is gone: moved by a failover since
/// (replayed in its conversation: not the task's fault), or exited.
fn agent_gone(session: &SessionView, started: SystemTime, name: String) -> Step {
    if let Some((at, from, to)) = &session.placed
        && *at >= started
    {
        return Step::Requeue {
            why: format!(
                "interrupted by a failover from {} to {to}",
                from.as_deref().unwrap_or("?")
            ),
            rewind: true,
            replay_on: Some(name),
        };
    }
    Step::RetryOrFail {
        why: "the session's agent exited during the task".into(),
        interrupt: false,
    }
}

/// The turn's end as its hooks told it: a Stop (done), or a StopFailure
/// (a usage limit: replayed in the same conversation once the session is
/// on an account with room; else retried or failed).
fn turn_heard(o: &Observation, started: SystemTime, name: String) -> Option<Step> {
    if let Some((reply, at)) = &o.last_stop
        && *at >= started
    {
        return Some(Step::Finish {
            phase: TaskPhase::Succeeded,
            message: short(reply, 200),
        });
    }
    let (error, message, at) = o.last_failure.as_ref()?;
    if *at < started {
        return None;
    }
    Some(if error == "rate_limit" {
        Step::Requeue {
            why: format!("usage limit: {}", short(message, 160)),
            rewind: true,
            replay_on: Some(name),
        }
    } else {
        Step::RetryOrFail {
            why: format!("the turn failed: {error}: {}", short(message, 160)),
            interrupt: false,
        }
    })
}

/// The turn ended without a Stop hook reaching us: either the daemon was
/// down when the prompt and its end happened, or the Stop hook was lost.
/// The agent's own state file says it has been idle since; its reply is in
/// the transcript, hooks or not.
fn ended_unheard(
    o: &Observation,
    session: &SessionView,
    started: SystemTime,
    now: SystemTime,
) -> Step {
    if session.phase != SessionPhase::Idle {
        return Step::Wait;
    }
    let pid = match &o.probes.pid_file {
        None => return Step::Look(Look::PidFile),
        Some(p) => p,
    };
    let hook_seen = o.hooked.is_some();
    let Some(p) = pid.as_ref().filter(|p| {
        p.status == "idle"
            && p.modified > started
            && (!hook_seen || since(now, p.modified) > LOST_STOP_GRACE)
    }) else {
        return Step::Wait;
    };
    let reply = match &o.probes.reply {
        None => return Step::Look(Look::Transcript),
        Some(r) => r,
    };
    let message = match reply {
        Some(r) => short(r, 200),
        None if since(now, p.modified) < REPLY_GRACE => return Step::Wait,
        None if hook_seen => {
            "finished (its Stop hook never arrived; the agent has been idle since)".into()
        }
        None => "finished while the daemon was away".into(),
    };
    Step::Finish {
        phase: TaskPhase::Succeeded,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{TaskPriority, TaskStatus};

    fn at(s: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(s)
    }

    fn task(phase: TaskPhase, dispatched: u64) -> Task {
        let mut t = Task::new(
            "t",
            crate::api::TaskSpec {
                prompt: "p".into(),
                priority: TaskPriority::Normal,
                model: None,
                session: None,
                session_selector: None,
                workdir: None,
                timeout_seconds: None,
                max_attempts: None,
                workspace: None,
            },
        );
        t.status = Some(TaskStatus {
            phase: Some(phase),
            session: Some("s".into()),
            session_pid: Some(7),
            marker: Some("m".into()),
            dispatched_at: Some(crate::api::Time(
                k8s_openapi::jiff::Timestamp::from_second(dispatched as i64).unwrap(),
            )),
            ..Default::default()
        });
        t
    }

    fn on(pid: u32, phase: SessionPhase) -> Observation {
        Observation {
            session: Some(SessionView {
                pid: Some(pid),
                phase,
                placed: None,
            }),
            ..Default::default()
        }
    }

    fn pid_file(status: &str, modified: u64) -> Option<PidFile> {
        Some(PidFile {
            status: status.into(),
            waiting_for: None,
            session_id: None,
            modified: at(modified),
        })
    }

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn a_dispatched_task_is_confirmed_or_found_lost() {
        let t = task(TaskPhase::Dispatched, 100);
        let mut o = on(7, SessionPhase::Busy);
        assert_eq!(advance(&t, &o, at(101), HOUR), Step::Wait);
        assert_eq!(advance(&t, &o, at(102), HOUR), Step::Look(Look::History));
        o.probes.history = Some(Some(at(101)));
        assert_eq!(
            advance(&t, &o, at(102), HOUR),
            Step::Confirm {
                at: at(101),
                by_hook: false
            }
        );
        let mut o = on(7, SessionPhase::Idle);
        o.hooked = Some(at(100));
        assert_eq!(
            advance(&t, &o, at(100), HOUR),
            Step::Confirm {
                at: at(100),
                by_hook: true
            }
        );
        // Another agent: the text went nowhere.
        let mut o = on(8, SessionPhase::Idle);
        o.probes.history = Some(None);
        assert!(matches!(
            advance(&t, &o, at(103), HOUR),
            Step::Requeue { rewind: true, .. }
        ));
        // Still in the composer: Enter, not the text, at most every 3 s.
        let mut o = on(7, SessionPhase::Idle);
        o.probes.history = Some(None);
        o.typed_at = Some(at(100));
        assert_eq!(advance(&t, &o, at(104), HOUR), Step::Look(Look::Composer));
        o.probes.composer = Some(Composer::Text(Some("p ⟦task m⟧".into())));
        assert_eq!(advance(&t, &o, at(104), HOUR), Step::PressEnter);
        o.enter_sent = Some(at(103));
        assert_eq!(advance(&t, &o, at(104), HOUR), Step::Wait);
        // An empty composer, an idle agent, long after: never arrived.
        o.probes.composer = Some(Composer::Text(Some(String::new())));
        assert_eq!(advance(&t, &o, at(107), HOUR), Step::Look(Look::PidFile));
        o.probes.pid_file = Some(pid_file("busy", 106));
        assert_eq!(
            advance(&t, &o, at(107), HOUR),
            Step::Wait,
            "busy: it took it"
        );
        o.probes.pid_file = Some(pid_file("idle", 106));
        assert!(matches!(
            advance(&t, &o, at(107), HOUR),
            Step::Requeue { rewind: true, .. }
        ));
        o.probes.composer = Some(Composer::Gone);
        assert!(matches!(
            advance(&t, &o, at(107), HOUR),
            Step::Requeue { .. }
        ));
    }

    #[test]
    fn a_running_task_ends_by_its_agent() {
        let t = task(TaskPhase::Running, 100);
        let mut o = on(7, SessionPhase::Busy);
        o.started = Some(at(100));
        assert_eq!(advance(&t, &o, at(110), HOUR), Step::Wait);
        o.last_stop = Some(("done\nmore".into(), at(120)));
        assert_eq!(
            advance(&t, &o, at(121), HOUR),
            Step::Finish {
                phase: TaskPhase::Succeeded,
                message: "done".into()
            }
        );
        let mut o = on(7, SessionPhase::Busy);
        o.started = Some(at(100));
        o.last_failure = Some(("rate_limit".into(), "hit".into(), at(120)));
        assert_eq!(
            advance(&t, &o, at(121), HOUR),
            Step::Requeue {
                why: "usage limit: hit".into(),
                rewind: true,
                replay_on: Some("s".into())
            }
        );
        o.last_failure = Some(("server_error".into(), "boom".into(), at(120)));
        assert!(matches!(
            advance(&t, &o, at(121), HOUR),
            Step::RetryOrFail {
                interrupt: false,
                ..
            }
        ));
        let mut o = on(7, SessionPhase::Busy);
        o.started = Some(at(100));
        assert!(matches!(
            advance(&t, &o, at(100) + HOUR + Duration::from_secs(1), HOUR),
            Step::RetryOrFail {
                interrupt: true,
                ..
            }
        ));
    }

    #[test]
    fn a_running_task_whose_agent_changed() {
        let t = task(TaskPhase::Running, 100);
        let mut o = on(8, SessionPhase::Idle);
        o.started = Some(at(100));
        assert!(matches!(
            advance(&t, &o, at(130), HOUR),
            Step::RetryOrFail { .. }
        ));
        o.session.as_mut().unwrap().placed = Some((at(110), Some("a".into()), "b".into()));
        assert_eq!(
            advance(&t, &o, at(130), HOUR),
            Step::Requeue {
                why: "interrupted by a failover from a to b".into(),
                rewind: true,
                replay_on: Some("s".into())
            }
        );
        assert!(matches!(
            advance(&t, &Observation::default(), at(130), HOUR),
            Step::Requeue { rewind: false, .. }
        ));
    }

    #[test]
    fn a_turn_whose_end_was_not_heard() {
        let t = task(TaskPhase::Running, 100);
        let mut o = on(7, SessionPhase::Idle);
        o.started = Some(at(100));
        assert_eq!(advance(&t, &o, at(130), HOUR), Step::Look(Look::PidFile));
        o.probes.pid_file = Some(pid_file("idle", 120));
        // Its reply is read from the transcript.
        assert_eq!(advance(&t, &o, at(130), HOUR), Step::Look(Look::Transcript));
        o.probes.reply = Some(Some("All done.\nDetails follow.".into()));
        assert_eq!(
            advance(&t, &o, at(130), HOUR),
            Step::Finish {
                phase: TaskPhase::Succeeded,
                message: "All done.".into()
            }
        );
        // No reply found there: it waits for the lazy write a moment...
        o.probes.reply = Some(None);
        assert_eq!(advance(&t, &o, at(124), HOUR), Step::Wait);
        // ...then says how it knows the task ended.
        assert_eq!(
            advance(&t, &o, at(130), HOUR),
            Step::Finish {
                phase: TaskPhase::Succeeded,
                message: "finished while the daemon was away".into()
            }
        );
        // Its prompt hook came: the Stop hook may just be late.
        o.hooked = Some(at(100));
        assert_eq!(advance(&t, &o, at(125), HOUR), Step::Wait);
        assert!(matches!(
            advance(&t, &o, at(131), HOUR),
            Step::Finish { .. }
        ));
        o.probes.pid_file = Some(pid_file("idle", 90));
        assert_eq!(
            advance(&t, &o, at(131), HOUR),
            Step::Wait,
            "idle before it began"
        );
    }
}

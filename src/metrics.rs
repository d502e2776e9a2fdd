//! Prometheus metrics of the daemon (prefix `claude_failover_`).
//!
//! One registry, one struct: every family is a pub field of [`Metrics`],
//! built once by the daemon's composition root and handed to each part that
//! records (the controllers' contexts, the endpoints, the notifier), and
//! served as text by `GET /metrics` ([`Metrics::encode`]). Conventions (Prometheus' own): base
//! units (`_seconds`, `_ratio`, `_timestamp_seconds`), `_total` on counters,
//! and bounded label sets: a label is a value from a fixed list below, or
//! the name of a declared Account; never a Task or Session name.
//!
//! Every family shows in `/metrics` from the start: label sets with known
//! values are created at zero when the registry is built, so dashboards and
//! alerts see a 0 rather than nothing. The gauges that describe objects
//! (sessions and tasks by phase, the accounts' utilization, thresholds,
//! resets, projections and phase) are filled from the caches by
//! [`Metrics::count_sessions`], [`Metrics::count_tasks`] and
//! [`Metrics::fill_accounts`], which the daemon runs on every change (see
//! the daemon's projections); a controller that writes an Account's
//! status does not set them itself.
//!
//! How to record (a sketch of each call):
//!
//! ```no_run
//! use claude_failover::metrics::Metrics;
//! let m = Metrics::new();
//! m.failovers_total.with_label_values(&["near_limit", "succeeded"]).inc();
//! m.swap_duration_seconds.observe(12.5);
//! m.swap_lease_epoch.set(7);
//! m.dispatch_latency_seconds.observe(0.25);
//! m.session_restarts_total.inc();
//! m.reconciles_total.with_label_values(&["account"]).inc();
//! m.reconcile_errors_total.with_label_values(&["failover"]).inc();
//! m.reconcile_duration_seconds.with_label_values(&["account"]).observe(0.01);
//! m.leader.set(1);
//! m.leader_transitions_total.inc();
//! m.hook_events_total.with_label_values(&[claude_failover::metrics::hook_event_label("Stop")]).inc();
//! m.statusline_updates_total.inc();
//! m.usage_polls_total.with_label_values(&["retry_after"]).inc();
//! m.notifications_total.with_label_values(&["telegram", "sent"]).inc();
//! // Filled from the store (see fill_accounts), settable all the same:
//! m.account_utilization_ratio.with_label_values(&["work", "five_hour"]).set(0.42);
//! ```

use crate::api::{Account, AccountPhase, SessionPhase, StandbyStatus, TaskPhase};
use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The daemon's version (`build_info`'s `version`).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The git commit it was built from (`build_info`'s `revision`; `unknown`
/// outside a checkout), set by build.rs.
pub const REVISION: &str = env!("CLAUDE_FAILOVER_REVISION");
/// The compiler's version (`build_info`'s `rustc`), set by build.rs.
pub const RUSTC: &str = env!("CLAUDE_FAILOVER_RUSTC");

/// `window` label values.
pub const WINDOWS: [&str; 4] = [
    "five_hour",
    "seven_day",
    "seven_day_opus",
    "seven_day_sonnet",
];
/// `phase` label values of `claude_failover_account_phase`.
pub const ACCOUNT_PHASES: [AccountPhase; 5] = [
    AccountPhase::Available,
    AccountPhase::NearLimit,
    AccountPhase::Exhausted,
    AccountPhase::Unavailable,
    AccountPhase::Suspended,
];
/// `reason` label values of `claude_failover_failovers_total`.
pub const FAILOVER_REASONS: [&str; 6] = [
    "near_limit",
    "model_limit",
    "exhausted",
    "manual",
    "auth",
    "failback",
];
/// `result` label values of `claude_failover_failovers_total`.
pub const FAILOVER_RESULTS: [&str; 3] = ["succeeded", "failed", "rolled_back"];
/// `controller` label values of the reconcile families.
pub const CONTROLLERS: [&str; 4] = ["session", "task", "account", "failover"];
/// `result` label values of `claude_failover_usage_polls_total`.
pub const USAGE_POLL_RESULTS: [&str; 4] = ["ok", "retry_after", "unauthorized", "error"];
/// `channel` label values of `claude_failover_notifications_total`.
pub const NOTIFY_CHANNELS: [&str; 2] = ["telegram", "webhook"];
/// `result` label values of `claude_failover_notifications_total`: sent,
/// failed (given up after its attempts), deduplicated (the same notice
/// within the de-duplication window); as the notifier counts them.
pub const NOTIFY_RESULTS: [&str; 3] = ["sent", "failed", "deduplicated"];
/// `condition` label values of `claude_failover_sync_condition`.
pub const SYNC_CONDITIONS: [&str; 3] = ["Ready", "Reconciling", "Stalled"];
/// `result` label values of `claude_failover_sync_objects`.
pub const SYNC_RESULTS: [&str; 4] = ["applied", "unchanged", "pruned", "failed"];
/// The `event` label of a hook outside [`crate::agent::launch::HOOK_EVENTS`].
pub const OTHER_HOOK_EVENT: &str = "other";
/// `state` label values of `claude_failover_standbys`.
pub const STANDBY_STATES: [&str; 2] = ["ready", "starting"];

const SESSION_PHASES: [SessionPhase; 9] = [
    SessionPhase::Pending,
    SessionPhase::Starting,
    SessionPhase::Idle,
    SessionPhase::Busy,
    SessionPhase::Waiting,
    SessionPhase::Swapping,
    SessionPhase::Stopped,
    SessionPhase::Failed,
    SessionPhase::CrashLoopBackOff,
];
const TASK_PHASES: [TaskPhase; 6] = [
    TaskPhase::Pending,
    TaskPhase::Dispatched,
    TaskPhase::Running,
    TaskPhase::Succeeded,
    TaskPhase::Failed,
    TaskPhase::Cancelled,
];

/// Every metric family of the daemon.
pub struct Metrics {
    registry: Registry,
    /// `claude_failover_build_info{version}` = 1.
    pub build_info: IntGaugeVec,
    /// `claude_failover_account_utilization_ratio{account,window}`, 0..1.
    pub account_utilization_ratio: GaugeVec,
    /// `claude_failover_account_threshold_ratio{account,window}`, 0..1.
    pub account_threshold_ratio: GaugeVec,
    /// `claude_failover_account_reset_timestamp_seconds{account,window}`.
    pub account_reset_timestamp_seconds: GaugeVec,
    /// `claude_failover_account_projected_limit_timestamp_seconds{account}`.
    pub account_projected_limit_timestamp_seconds: GaugeVec,
    /// `claude_failover_account_phase{account,phase}`: 1 for the current phase, 0 for the others.
    pub account_phase: IntGaugeVec,
    /// `claude_failover_failovers_total{reason,result}`.
    pub failovers_total: IntCounterVec,
    /// `claude_failover_swap_duration_seconds`: one swap, lease to release.
    pub swap_duration_seconds: Histogram,
    /// `claude_failover_swap_lease_epoch`: the fencing epoch of the latest swap lease.
    pub swap_lease_epoch: IntGauge,
    /// `claude_failover_sessions{phase}`.
    pub sessions: IntGaugeVec,
    /// `claude_failover_tasks{phase}`.
    pub tasks: IntGaugeVec,
    /// `claude_failover_pool_sessions{namespace,pool,state}`: a SessionPool's
    /// sessions (`desired`, `current`, `ready`, `idle`, `busy`, `waiting`).
    pub pool_sessions: IntGaugeVec,
    /// `claude_failover_dispatch_latency_seconds`: intent written → the agent confirmed the prompt.
    pub dispatch_latency_seconds: Histogram,
    /// `claude_failover_session_restarts_total`: agents relaunched after they died.
    pub session_restarts_total: IntCounter,
    /// `claude_failover_standbys{state}`: warm standby agents, `ready` or
    /// `starting`.
    pub standbys: IntGaugeVec,
    /// `claude_failover_standby_starts_total{result}`: `started`, `failed`.
    pub standby_starts_total: IntCounterVec,
    /// `claude_failover_takeovers_total{result}`: moves through a standby:
    /// `typed` (`/resume` typed into it), `relaunched` (it could not: a
    /// launch instead), `unconfirmed` (typed, not confirmed in time:
    /// relaunched).
    pub takeovers_total: IntCounterVec,
    /// `claude_failover_reconciles_total{controller}`.
    pub reconciles_total: IntCounterVec,
    /// `claude_failover_reconcile_errors_total{controller}`.
    pub reconcile_errors_total: IntCounterVec,
    /// `claude_failover_reconcile_duration_seconds{controller}`.
    pub reconcile_duration_seconds: HistogramVec,
    /// `claude_failover_leader`: 1 while this daemon holds the leader lease.
    pub leader: IntGauge,
    /// `claude_failover_node_ready{node}`: 1 while a Node is Ready, 0 when
    /// it is not (one series per Node: bounded by the machines).
    pub node_ready: IntGaugeVec,
    /// `claude_failover_node_sessions{node}`: the Sessions placed on each
    /// Node.
    pub node_sessions: IntGaugeVec,
    /// `claude_failover_store_available`: 1 while the store answers (0
    /// during an etcd outage: no quorum, no member).
    pub store_available: IntGauge,
    /// `claude_failover_sessions_quiet`: Sessions whose last full pass
    /// holds until something they depend on changes.
    pub sessions_quiet: IntGauge,
    /// `claude_failover_leader_transitions_total`: times this daemon became leader.
    pub leader_transitions_total: IntCounter,
    /// `claude_failover_hook_events_total{event}` (see [`hook_event_label`]).
    pub hook_events_total: IntCounterVec,
    /// `claude_failover_statusline_updates_total`.
    pub statusline_updates_total: IntCounter,
    /// `claude_failover_usage_polls_total{result}`.
    pub usage_polls_total: IntCounterVec,
    /// `claude_failover_notifications_total{channel,result}`.
    pub notifications_total: IntCounterVec,
    /// `claude_failover_sync_condition{sync,condition}`: 1 while the
    /// manifest sync's condition (Ready, Reconciling, Stalled) is True.
    pub sync_condition: IntGaugeVec,
    /// `claude_failover_sync_objects{sync,result}`: the last pass's objects
    /// by result (applied, unchanged, pruned, failed).
    pub sync_objects: IntGaugeVec,
    /// `claude_failover_sync_last_success_timestamp_seconds{sync}`.
    pub sync_last_success_timestamp_seconds: GaugeVec,
    /// `claude_failover_sync_duration_seconds`: one sync pass.
    pub sync_duration_seconds: Histogram,
    /// `claude_failover_task_queue_wait_seconds`: a task's creation → its
    /// dispatch (the attempt that ended it).
    pub task_queue_wait_seconds: Histogram,
    /// `claude_failover_task_run_seconds`: a task's start (its prompt
    /// confirmed) → its end.
    pub task_run_seconds: Histogram,
    /// `claude_failover_session_launch_seconds`: an agent's launch → its
    /// session Ready.
    pub session_launch_seconds: Histogram,
}

const P: &str = "claude_failover_";

fn opts(name: &str, help: &str) -> Opts {
    Opts::new(format!("{P}{name}"), help)
}

fn hopts(name: &str, help: &str, buckets: &[f64]) -> HistogramOpts {
    HistogramOpts::new(format!("{P}{name}"), help).buckets(buckets.to_vec())
}

impl Metrics {
    /// A registry with every family, the label sets with known values at zero.
    #[allow(clippy::new_without_default)]
    pub fn new() -> Metrics {
        let int_gauge_vec =
            |n: &str, h: &str, l: &[&str]| IntGaugeVec::new(opts(n, h), l).expect("metric");
        let gauge_vec =
            |n: &str, h: &str, l: &[&str]| GaugeVec::new(opts(n, h), l).expect("metric");
        let counter_vec =
            |n: &str, h: &str, l: &[&str]| IntCounterVec::new(opts(n, h), l).expect("metric");
        let m = Metrics {
            registry: Registry::new(),
            build_info: int_gauge_vec(
                "build_info",
                "Always 1; the running daemon's version, git revision and compiler are its labels.",
                &["version", "revision", "rustc"],
            ),
            account_utilization_ratio: gauge_vec(
                "account_utilization_ratio",
                "Share of the account's usage window used (0..1), latest reading.",
                &["account", "window"],
            ),
            account_threshold_ratio: gauge_vec(
                "account_threshold_ratio",
                "Utilization (0..1) at which the account's sessions are moved away.",
                &["account", "window"],
            ),
            account_reset_timestamp_seconds: gauge_vec(
                "account_reset_timestamp_seconds",
                "When the account's usage window resets (Unix time).",
                &["account", "window"],
            ),
            account_projected_limit_timestamp_seconds: gauge_vec(
                "account_projected_limit_timestamp_seconds",
                "When the account reaches its threshold at the current burn rate (Unix time).",
                &["account"],
            ),
            account_phase: int_gauge_vec(
                "account_phase",
                "1 for the account's current phase, 0 for the others.",
                &["account", "phase"],
            ),
            failovers_total: counter_vec(
                "failovers_total",
                "Failovers (sessions moved off an account), by why and how they ended.",
                &["reason", "result"],
            ),
            swap_duration_seconds: Histogram::with_opts(hopts(
                "swap_duration_seconds",
                "Duration of one account swap, from taking the swap lease to releasing it.",
                &[0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0],
            ))
            .expect("metric"),
            swap_lease_epoch: IntGauge::with_opts(opts(
                "swap_lease_epoch",
                "Fencing epoch of the latest swap lease taken.",
            ))
            .expect("metric"),
            sessions: int_gauge_vec("sessions", "Sessions by phase.", &["phase"]),
            tasks: int_gauge_vec("tasks", "Tasks by phase.", &["phase"]),
            pool_sessions: int_gauge_vec(
                "pool_sessions",
                "A SessionPool's sessions: desired, current, ready, idle, busy, waiting.",
                &["namespace", "pool", "state"],
            ),
            dispatch_latency_seconds: Histogram::with_opts(hopts(
                "dispatch_latency_seconds",
                "From a task's dispatch intent to the agent confirming its prompt.",
                &[0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0],
            ))
            .expect("metric"),
            session_restarts_total: IntCounter::with_opts(opts(
                "session_restarts_total",
                "Agents relaunched after they exited or lost their tmux session.",
            ))
            .expect("metric"),
            standbys: int_gauge_vec(
                "standbys",
                "Warm standby agents, ready or starting.",
                &["state"],
            ),
            standby_starts_total: counter_vec(
                "standby_starts_total",
                "Warm standby agents started, or that could not be.",
                &["result"],
            ),
            takeovers_total: counter_vec(
                "takeovers_total",
                "Moves through a warm standby: typed, relaunched (no takeover possible), unconfirmed.",
                &["result"],
            ),
            reconciles_total: counter_vec(
                "reconciles_total",
                "Reconcile passes, by controller.",
                &["controller"],
            ),
            reconcile_errors_total: counter_vec(
                "reconcile_errors_total",
                "Reconcile passes that failed (retried), by controller.",
                &["controller"],
            ),
            reconcile_duration_seconds: HistogramVec::new(
                hopts(
                    "reconcile_duration_seconds",
                    "Duration of one reconcile pass, by controller.",
                    &[
                        0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                    ],
                ),
                &["controller"],
            )
            .expect("metric"),
            node_ready: int_gauge_vec(
                "node_ready",
                "1 while a Node is Ready (its heartbeat fresh), 0 when it is not.",
                &["node"],
            ),
            node_sessions: int_gauge_vec(
                "node_sessions",
                "Sessions placed on each Node.",
                &["node"],
            ),
            store_available: IntGauge::with_opts(opts(
                "store_available",
                "1 while the store answers; 0 during an etcd outage (no quorum, no member).",
            ))
            .expect("metric"),
            sessions_quiet: IntGauge::with_opts(opts(
                "sessions_quiet",
                "Sessions at rest: their last full pass holds until the Session, its accounts, the swap lease or its agent's signals change (or ten resyncs pass).",
            ))
            .expect("metric"),
            leader: IntGauge::with_opts(opts(
                "leader",
                "1 while this daemon holds the store's leader lease.",
            ))
            .expect("metric"),
            leader_transitions_total: IntCounter::with_opts(opts(
                "leader_transitions_total",
                "Times this daemon took the leader lease.",
            ))
            .expect("metric"),
            hook_events_total: counter_vec(
                "hook_events_total",
                "Claude Code hook posts received, by hook event.",
                &["event"],
            ),
            statusline_updates_total: IntCounter::with_opts(opts(
                "statusline_updates_total",
                "Claude Code statusLine inputs received.",
            ))
            .expect("metric"),
            usage_polls_total: counter_vec(
                "usage_polls_total",
                "Polls of the usage endpoint, by result.",
                &["result"],
            ),
            notifications_total: counter_vec(
                "notifications_total",
                "Notifications, by channel and result.",
                &["channel", "result"],
            ),
            sync_condition: int_gauge_vec(
                "sync_condition",
                "1 while the manifest sync's condition is True (Ready, Reconciling, Stalled).",
                &["sync", "condition"],
            ),
            sync_objects: int_gauge_vec(
                "sync_objects",
                "Objects of the manifest sync's last pass, by result.",
                &["sync", "result"],
            ),
            sync_last_success_timestamp_seconds: gauge_vec(
                "sync_last_success_timestamp_seconds",
                "When the manifest sync last applied every manifest (Unix time).",
                &["sync"],
            ),
            sync_duration_seconds: Histogram::with_opts(hopts(
                "sync_duration_seconds",
                "Duration of one manifest sync pass (read, apply, prune).",
                &[
                    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                ],
            ))
            .expect("metric"),
            task_queue_wait_seconds: Histogram::with_opts(hopts(
                "task_queue_wait_seconds",
                "From a task's creation to its dispatch into a session (the attempt that ended it).",
                &[1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 14400.0],
            ))
            .expect("metric"),
            task_run_seconds: Histogram::with_opts(hopts(
                "task_run_seconds",
                "From a task's start (its prompt confirmed) to its end, for tasks that ran.",
                &[5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0],
            ))
            .expect("metric"),
            session_launch_seconds: Histogram::with_opts(hopts(
                "session_launch_seconds",
                "From an agent's launch to its session being Ready (at its prompt).",
                &[0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0],
            ))
            .expect("metric"),
        };
        m.register_all();
        m.build_info
            .with_label_values(&[VERSION, REVISION, RUSTC])
            .set(1);
        for r in FAILOVER_REASONS {
            for x in FAILOVER_RESULTS {
                m.failovers_total.with_label_values(&[r, x]);
            }
        }
        for c in CONTROLLERS {
            m.reconciles_total.with_label_values(&[c]);
            m.reconcile_errors_total.with_label_values(&[c]);
            m.reconcile_duration_seconds.with_label_values(&[c]);
        }
        for e in crate::agent::launch::HOOK_EVENTS
            .iter()
            .chain(&[OTHER_HOOK_EVENT])
        {
            m.hook_events_total.with_label_values(&[*e]);
        }
        for r in USAGE_POLL_RESULTS {
            m.usage_polls_total.with_label_values(&[r]);
        }
        for c in NOTIFY_CHANNELS {
            for r in NOTIFY_RESULTS {
                m.notifications_total.with_label_values(&[c, r]);
            }
        }
        for p in SESSION_PHASES {
            m.sessions.with_label_values(&[&p.to_string()]).set(0);
        }
        for x in STANDBY_STATES {
            m.standbys.with_label_values(&[x]).set(0);
        }
        for x in ["started", "failed"] {
            m.standby_starts_total.with_label_values(&[x]);
        }
        for x in ["typed", "relaunched", "unconfirmed"] {
            m.takeovers_total.with_label_values(&[x]);
        }
        for p in TASK_PHASES {
            m.tasks.with_label_values(&[&p.to_string()]).set(0);
        }
        m
    }

    fn register_all(&self) {
        let r = &self.registry;
        let all: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(self.build_info.clone()),
            Box::new(self.account_utilization_ratio.clone()),
            Box::new(self.account_threshold_ratio.clone()),
            Box::new(self.account_reset_timestamp_seconds.clone()),
            Box::new(self.account_projected_limit_timestamp_seconds.clone()),
            Box::new(self.account_phase.clone()),
            Box::new(self.failovers_total.clone()),
            Box::new(self.swap_duration_seconds.clone()),
            Box::new(self.swap_lease_epoch.clone()),
            Box::new(self.sessions.clone()),
            Box::new(self.tasks.clone()),
            Box::new(self.pool_sessions.clone()),
            Box::new(self.dispatch_latency_seconds.clone()),
            Box::new(self.session_restarts_total.clone()),
            Box::new(self.standbys.clone()),
            Box::new(self.standby_starts_total.clone()),
            Box::new(self.takeovers_total.clone()),
            Box::new(self.reconciles_total.clone()),
            Box::new(self.reconcile_errors_total.clone()),
            Box::new(self.reconcile_duration_seconds.clone()),
            Box::new(self.leader.clone()),
            Box::new(self.node_ready.clone()),
            Box::new(self.node_sessions.clone()),
            Box::new(self.store_available.clone()),
            Box::new(self.sessions_quiet.clone()),
            Box::new(self.leader_transitions_total.clone()),
            Box::new(self.hook_events_total.clone()),
            Box::new(self.statusline_updates_total.clone()),
            Box::new(self.usage_polls_total.clone()),
            Box::new(self.notifications_total.clone()),
            Box::new(self.sync_condition.clone()),
            Box::new(self.sync_objects.clone()),
            Box::new(self.sync_last_success_timestamp_seconds.clone()),
            Box::new(self.sync_duration_seconds.clone()),
            Box::new(self.task_queue_wait_seconds.clone()),
            Box::new(self.task_run_seconds.clone()),
            Box::new(self.session_launch_seconds.clone()),
        ];
        for c in all {
            r.register(c).expect("metric names are unique");
        }
        // process_cpu_seconds_total, process_resident_memory_bytes,
        // process_open_fds, ... (Linux: read from /proc/self).
        #[cfg(target_os = "linux")]
        r.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))
        .expect("process metric names are unique");
    }

    /// A task ended (its status holds its end): observes its wait in the
    /// queue and, when it ran, its run time. The task controller calls it
    /// once, when it writes the task's end.
    pub fn observe_task_end(
        &self,
        created: Option<&crate::api::Time>,
        status: &crate::api::TaskStatus,
    ) {
        let (wait, run) = task_durations(created, status);
        if let Some(w) = wait {
            self.task_queue_wait_seconds.observe(w);
        }
        if let Some(r) = run {
            self.task_run_seconds.observe(r);
        }
    }

    /// An agent launched at `launched` is Ready now: observes the launch
    /// time. The session controller calls it when a launch's session first
    /// becomes Ready.
    pub fn observe_launch_ready(
        &self,
        launched: &crate::api::MicroTime,
        now: &crate::api::MicroTime,
    ) {
        let s = (now.0.as_millisecond() - launched.0.as_millisecond()) as f64 / 1000.0;
        if s >= 0.0 {
            self.session_launch_seconds.observe(s);
        }
    }

    /// Counts one reconcile pass of `controller` that took `seconds`.
    pub fn observe_reconcile(&self, controller: &str, seconds: f64, failed: bool) {
        self.reconciles_total.with_label_values(&[controller]).inc();
        self.reconcile_duration_seconds
            .with_label_values(&[controller])
            .observe(seconds);
        if failed {
            self.reconcile_errors_total
                .with_label_values(&[controller])
                .inc();
        }
    }
}

impl Metrics {
    /// Every family in Prometheus' text exposition format (version 0.0.4).
    pub fn encode(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding into memory cannot fail");
        String::from_utf8(buf).expect("the text format is UTF-8")
    }

    /// Sets `claude_failover_sessions` from the phase of every Session.
    pub fn count_sessions<'a>(&self, phases: impl IntoIterator<Item = &'a SessionPhase>) {
        count_phases(&self.sessions, &SESSION_PHASES, phases);
    }

    /// Sets `claude_failover_node_ready` and `claude_failover_node_sessions`
    /// from the Nodes and the Sessions' nodes; a Node gone loses its series.
    pub fn count_nodes(&self, nodes: &[(String, bool)], sessions: &[Option<&str>]) {
        self.node_ready.reset();
        self.node_sessions.reset();
        for (name, ready) in nodes {
            self.node_ready
                .with_label_values(&[name.as_str()])
                .set(i64::from(*ready));
            let n = sessions
                .iter()
                .filter(|s| **s == Some(name.as_str()))
                .count();
            self.node_sessions
                .with_label_values(&[name.as_str()])
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    /// Sets `claude_failover_standbys` from each Session's standby.
    pub fn count_standbys<'a>(&self, standbys: impl IntoIterator<Item = &'a StandbyStatus>) {
        let (mut ready, mut starting) = (0, 0);
        for s in standbys {
            if s.ready {
                ready += 1;
            } else {
                starting += 1;
            }
        }
        let [r, s] = STANDBY_STATES;
        self.standbys.with_label_values(&[r]).set(ready);
        self.standbys.with_label_values(&[s]).set(starting);
    }

    /// Sets `claude_failover_tasks` from the phase of every Task.
    pub fn count_tasks<'a>(&self, phases: impl IntoIterator<Item = &'a TaskPhase>) {
        count_phases(&self.tasks, &TASK_PHASES, phases);
    }

    /// Sets the account gauges from every declared Account: its phase,
    /// thresholds and (when its status has them) utilization, reset times
    /// and projected limit. Series of Accounts no longer declared, and
    /// readings no longer reported, are removed.
    pub fn fill_accounts<'a>(&self, accounts: impl IntoIterator<Item = &'a Account>) {
        fill_accounts(self, accounts)
    }
}

/// The `Content-Type` of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = prometheus::TEXT_FORMAT;

/// The `event` label of a hook: its name when it is one the daemon
/// installs, else [`OTHER_HOOK_EVENT`] (posted names are not trusted to be
/// few).
pub fn hook_event_label(event: &str) -> &'static str {
    crate::agent::launch::HOOK_EVENTS
        .iter()
        .find(|e| **e == event)
        .copied()
        .unwrap_or(OTHER_HOOK_EVENT)
}

/// A task's wait in the queue (creation → dispatch) and run time (start →
/// end), in seconds, from its timestamps; None where one is missing (a task
/// cancelled before it ran has no run time).
pub fn task_durations(
    created: Option<&crate::api::Time>,
    status: &crate::api::TaskStatus,
) -> (Option<f64>, Option<f64>) {
    let secs = |a: &crate::api::Time, b: &crate::api::Time| {
        let d = (b.0.as_millisecond() - a.0.as_millisecond()) as f64 / 1000.0;
        (d >= 0.0).then_some(d)
    };
    let wait = match (created, &status.dispatched_at) {
        (Some(c), Some(d)) => secs(c, d),
        _ => None,
    };
    let run = match (&status.started_at, &status.finished_at) {
        (Some(s), Some(f)) => secs(s, f),
        _ => None,
    };
    (wait, run)
}

fn unix_seconds(t: &crate::api::Time) -> f64 {
    t.0.as_millisecond() as f64 / 1000.0
}

fn count_phases<'a, P: PartialEq + std::fmt::Display + 'a>(
    gauge: &IntGaugeVec,
    all: &[P],
    seen: impl IntoIterator<Item = &'a P>,
) {
    let mut counts = vec![0i64; all.len()];
    for p in seen {
        if let Some(i) = all.iter().position(|x| x == p) {
            counts[i] += 1;
        }
    }
    for (p, n) in all.iter().zip(counts) {
        gauge.with_label_values(&[p.to_string()]).set(n);
    }
}

fn fill_accounts<'a>(m: &Metrics, accounts: impl IntoIterator<Item = &'a Account>) {
    // Accounts: set what is declared and reported, then remove every other
    // series (never reset first: a scrape in between would see a gap).
    let mut keep: std::collections::HashSet<Vec<String>> = std::collections::HashSet::new();
    let mut set = |v: &GaugeVec, labels: &[&str], value: f64| {
        v.with_label_values(labels).set(value);
        keep.insert(labels.iter().map(|l| l.to_string()).collect());
    };
    let mut declared = Vec::new();
    for a in accounts {
        let Some(name) = a.metadata.name.as_deref() else {
            continue;
        };
        declared.push(name);
        let status = a.status.clone().unwrap_or_default();
        let phase = status.phase.unwrap_or(if a.spec.suspend {
            AccountPhase::Suspended
        } else {
            AccountPhase::Available
        });
        for p in ACCOUNT_PHASES {
            m.account_phase
                .with_label_values(&[name, &p.to_string()])
                .set(i64::from(p == phase));
        }
        let usage = status.usage.unwrap_or_default();
        for w in crate::quota::Window::ALL {
            let (window, reading) = (w.label(), usage.window(w.label()));
            set(
                &m.account_threshold_ratio,
                &[name, window],
                w.threshold(&a.spec.thresholds) / 100.0,
            );
            if let Some(r) = reading {
                set(
                    &m.account_utilization_ratio,
                    &[name, window],
                    r.utilization / 100.0,
                );
                if let Some(at) = &r.resets_at {
                    set(
                        &m.account_reset_timestamp_seconds,
                        &[name, window],
                        unix_seconds(at),
                    );
                }
            }
        }
        if let Some(at) = &status.projected_limit_at {
            set(
                &m.account_projected_limit_timestamp_seconds,
                &[name],
                unix_seconds(at),
            );
        }
    }
    let declared: std::collections::HashSet<&str> = declared.into_iter().collect();
    retain(&m.account_phase, |l| declared.contains(l[0].as_str()));
    for v in [
        &m.account_threshold_ratio,
        &m.account_utilization_ratio,
        &m.account_reset_timestamp_seconds,
        &m.account_projected_limit_timestamp_seconds,
    ] {
        retain(v, |l| keep.contains(l));
    }
}

/// Removes the series of `v` whose label values (in declaration order)
/// fail `keep`.
fn retain<T: prometheus::core::MetricVecBuilder>(
    v: &prometheus::core::MetricVec<T>,
    keep: impl Fn(&Vec<String>) -> bool,
) {
    use prometheus::core::Collector;
    for family in v.collect() {
        for metric in family.get_metric() {
            // The text format sorts label pairs by name; the vec wants them
            // in declaration order, which for these families is the same
            // (account < phase, account < window).
            let values: Vec<String> = metric
                .get_label()
                .iter()
                .map(|l| l.value().to_string())
                .collect();
            if !keep(&values) {
                let refs: Vec<&str> = values.iter().map(String::as_str).collect();
                let _ = v.remove_label_values(&refs);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn every_family_is_exported_from_the_start() {
        let text = Metrics::new().encode();
        for family in [
            "build_info",
            "failovers_total",
            "swap_duration_seconds",
            "swap_lease_epoch",
            "sessions",
            "tasks",
            "dispatch_latency_seconds",
            "session_restarts_total",
            "standbys",
            "standby_starts_total",
            "takeovers_total",
            "reconciles_total",
            "reconcile_errors_total",
            "reconcile_duration_seconds",
            "leader",
            "leader_transitions_total",
            "hook_events_total",
            "statusline_updates_total",
            "usage_polls_total",
            "notifications_total",
            "sync_duration_seconds",
            "task_queue_wait_seconds",
            "task_run_seconds",
            "session_launch_seconds",
        ] {
            assert!(
                text.contains(&format!("# TYPE claude_failover_{family} ")),
                "{family} missing:\n{text}"
            );
        }
        assert_eq!(
            sample(
                &text,
                &format!(
                    "claude_failover_build_info{{revision=\"{REVISION}\",rustc=\"{RUSTC}\",version=\"{VERSION}\"}}"
                )
            ),
            Some(1.0)
        );
        assert_eq!(hook_event_label("Stop"), "Stop");
        assert_eq!(hook_event_label("SomethingNew"), "other");
    }

    #[test]
    fn object_gauges_follow_the_objects() {
        let account: Account = serde_json::from_value(serde_json::json!({
            "apiVersion": "claude-failover.io/v1alpha1", "kind": "Account",
            "metadata": {"name": "work", "namespace": "default"},
            "spec": {"configDir": "/a", "priority": 1},
            // As the account controller records a reading.
            "status": {
                "phase": "NearLimit",
                "usage": {"fiveHour": {
                    "utilization": 91.0,
                    "resetsAt": "2033-05-18T03:33:20Z",
                    "source": "statusLine",
                    "observedAt": "2030-01-01T00:00:00Z",
                }},
            },
        }))
        .unwrap();
        let m = Metrics::new();
        m.fill_accounts([&account]);
        m.count_tasks(&[TaskPhase::Pending, TaskPhase::Running, TaskPhase::Pending]);
        let text = m.encode();
        let s = |series: &str| sample(&text, series);
        assert_eq!(s("claude_failover_tasks{phase=\"Pending\"}"), Some(2.0));
        assert_eq!(s("claude_failover_tasks{phase=\"Running\"}"), Some(1.0));
        assert_eq!(
            s("claude_failover_account_phase{account=\"work\",phase=\"NearLimit\"}"),
            Some(1.0)
        );
        assert_eq!(
            s("claude_failover_account_phase{account=\"work\",phase=\"Available\"}"),
            Some(0.0)
        );
        assert_eq!(
            s("claude_failover_account_utilization_ratio{account=\"work\",window=\"five_hour\"}"),
            Some(0.91)
        );
        assert_eq!(
            s("claude_failover_account_threshold_ratio{account=\"work\",window=\"seven_day\"}"),
            Some(0.95)
        );
        assert_eq!(
            s(
                "claude_failover_account_reset_timestamp_seconds{account=\"work\",window=\"five_hour\"}"
            ),
            Some(2e9)
        );
        assert_eq!(
            s("claude_failover_account_utilization_ratio{account=\"work\",window=\"seven_day\"}"),
            None,
            "no reading, no series"
        );
        // The Account goes: its series go.
        m.fill_accounts([]);
        assert!(!m.encode().contains("account=\"work\""));
    }

    #[test]
    fn build_info_process_and_the_new_histograms() {
        let m = Metrics::new();
        let text = m.encode();
        let build = text
            .lines()
            .find(|l| l.starts_with("claude_failover_build_info{"))
            .unwrap();
        assert!(build.contains(&format!("version=\"{VERSION}\"")), "{build}");
        assert!(
            build.contains("revision=\"") && build.contains("rustc=\""),
            "{build}"
        );
        assert!(
            !REVISION.is_empty() && RUSTC.chars().next().unwrap().is_ascii_digit(),
            "{RUSTC}"
        );
        #[cfg(target_os = "linux")]
        for p in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_open_fds",
            "process_start_time_seconds",
        ] {
            assert!(text.lines().any(|l| l.starts_with(p)), "{p} missing");
        }
        let t = |s: i64| crate::api::Time(k8s_openapi::jiff::Timestamp::from_second(s).unwrap());
        let status = crate::api::TaskStatus {
            dispatched_at: Some(t(130)),
            started_at: Some(t(131)),
            finished_at: Some(t(191)),
            ..Default::default()
        };
        assert_eq!(
            task_durations(Some(&t(100)), &status),
            (Some(30.0), Some(60.0))
        );
        let cancelled = crate::api::TaskStatus {
            finished_at: Some(t(150)),
            ..Default::default()
        };
        assert_eq!(task_durations(Some(&t(100)), &cancelled), (None, None));
        m.observe_task_end(Some(&t(100)), &status);
        let mt =
            |s: i64| crate::api::MicroTime(k8s_openapi::jiff::Timestamp::from_second(s).unwrap());
        m.observe_launch_ready(&mt(10), &mt(12));
        let text = m.encode();
        for (series, v) in [
            ("claude_failover_task_queue_wait_seconds_sum", 30.0),
            ("claude_failover_task_run_seconds_sum", 60.0),
            ("claude_failover_session_launch_seconds_sum", 2.0),
        ] {
            assert_eq!(sample(&text, series), Some(v), "{series}");
        }
    }
}

//! Controllers. Each one observes (through the reflector caches and the
//! agents' signals), asks a pure decision function what to do, executes it
//! through narrow interfaces (the agent driver, the store, the clock) and
//! writes status and conditions. They coordinate only through the store
//! (see docs/state.md and docs/daemon.md).

pub mod account;
pub mod checkpoint;
pub mod failover;
pub mod node;
pub mod pool;
pub mod session;
pub mod task;

use crate::agent::driver::Driver;
use crate::agent::signals::Signals;
use crate::api::{Account, Lease, Node, ObjectKey, Session, SessionPool, Swap, Task};
use crate::metrics::Metrics;
use crate::notify::Notifier;
use crate::store::Store;
use crate::store::cache::{Cache, IndexFn, index_key};
use crate::store::watch::WatchConfig;
use crate::tmux::Tmux;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// After a failed pass: logs it, unless the store did not answer (etcd
/// without a quorum: the store logs that once, not once per pass), and
/// then holds the controller for [`crate::store::UNAVAILABLE_BACKOFF`]
/// before anything may wake it again. Returns when the next pass is due.
pub async fn failed_pass(
    what: &str,
    error: &(dyn std::fmt::Display + Sync),
    store_unavailable: bool,
    retry: Duration,
) -> Duration {
    if store_unavailable {
        tracing::debug!(error = %error, "{what} pass: the store does not answer");
        tokio::time::sleep(crate::store::UNAVAILABLE_BACKOFF).await;
    } else {
        tracing::warn!(error = %error, "{what} pass failed; retrying");
    }
    retry
}

/// The agent driver over the pool's tmux server.
pub type AgentDriver = Driver<Tmux>;

/// Settings shared by the controllers.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Private state of this daemon's controllers (hook secrets, settings
    /// files, checkpoints, the usage poll's schedule).
    pub state_dir: PathBuf,
    /// The transcript folder every account's `projects/` points to.
    pub shared_projects: PathBuf,
    /// `http://127.0.0.1:PORT` of the daemon's agent endpoint.
    pub agent_base_url: String,
    /// This binary (the statusLine command).
    pub exe: PathBuf,
    /// Requeue period of a settled object.
    pub resync: Duration,
    /// Longest restart back-off.
    pub max_backoff: Duration,
    /// A session's checkpoint is rewritten at least this often.
    pub checkpoint_every: Duration,
    /// Typed into a session whose turn a usage limit cut short, once its
    /// account can take work again (empty: nothing is typed).
    pub continue_message: String,
    /// How a failover picks its target (`quota.failover.strategy`): a
    /// warm standby waits under the account it would pick.
    pub strategy: crate::config::FailoverStrategy,
    /// This daemon's node: its session controller and dispatcher act on
    /// the Sessions placed there (`status.nodeName`) only.
    pub node: String,
}

/// The time. Decisions take `now` as an argument; executors ask this.
pub trait Clock: Send + Sync {
    fn now(&self) -> SystemTime;
}

/// The system clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// The reflector caches every controller reads through.
#[derive(Clone)]
pub struct Caches {
    pub accounts: Cache<Account>,
    pub sessions: Cache<Session>,
    pub tasks: Cache<Task>,
    pub swaps: Cache<Swap>,
    pub leases: Cache<Lease>,
    pub pools: Cache<SessionPool>,
    pub nodes: Cache<Node>,
}

/// Index of Sessions by the account they run on (`NS/ACCOUNT`).
pub const BY_ACCOUNT: &str = "account";
/// Index of the Tasks in flight on a session (dispatched or running
/// there) or waiting to be replayed there (`NS/SESSION`). Finished tasks
/// are not in it, so a lookup costs what is in flight, not the history.
pub const BY_SESSION: &str = "session";

fn session_account(s: &Session) -> Vec<String> {
    let ns = s.metadata.namespace.as_deref().unwrap_or_default();
    s.status
        .as_ref()
        .and_then(|st| st.account.as_deref())
        .map(|a| vec![index_key(ns, a)])
        .unwrap_or_default()
}

fn task_session(t: &Task) -> Vec<String> {
    use crate::api::TaskPhase;
    let ns = t.metadata.namespace.as_deref().unwrap_or_default();
    let Some(st) = t.status.as_ref() else {
        return vec![];
    };
    let in_flight = matches!(st.phase, Some(TaskPhase::Dispatched | TaskPhase::Running));
    let replay = st.phase == Some(TaskPhase::Pending);
    let mut v: Vec<String> = [
        st.session.as_deref().filter(|_| in_flight),
        st.replay_on.as_deref().filter(|_| replay),
    ]
    .into_iter()
    .flatten()
    .map(|s| index_key(ns, s))
    .collect();
    v.dedup();
    v
}

impl Caches {
    /// Starts one watch per kind; the tasks run until aborted.
    pub fn start(store: &Store, resync: Duration) -> (Caches, Vec<tokio::task::JoinHandle<()>>) {
        let cfg = WatchConfig {
            namespace: None,
            resync,
            ..Default::default()
        };
        let (accounts, a) = Cache::start(store.clone(), cfg.clone(), &[]);
        let by_account: IndexFn<Session> = session_account;
        let (sessions, s) = Cache::start(store.clone(), cfg.clone(), &[(BY_ACCOUNT, by_account)]);
        let by_session: IndexFn<Task> = task_session;
        let (tasks, t) = Cache::start(store.clone(), cfg.clone(), &[(BY_SESSION, by_session)]);
        let (swaps, w) = Cache::start(store.clone(), cfg.clone(), &[]);
        let (leases, l) = Cache::start(store.clone(), cfg.clone(), &[]);
        let (pools, p) = Cache::start(store.clone(), cfg.clone(), &[]);
        let (nodes, n) = Cache::start(store.clone(), cfg, &[]);
        (
            Caches {
                accounts,
                sessions,
                tasks,
                swaps,
                leases,
                pools,
                nodes,
            },
            vec![a, s, t, w, l, p, n],
        )
    }

    /// Resolves once every cache holds its first listing.
    pub async fn listed(&self) {
        self.accounts.listed().await;
        self.sessions.listed().await;
        self.tasks.listed().await;
        self.swaps.listed().await;
        self.leases.listed().await;
        self.pools.listed().await;
        self.nodes.listed().await;
    }

    /// The swap lease's current fencing epoch (0: never taken).
    pub fn swap_epoch(&self) -> u64 {
        self.leases
            .get(crate::api::SYSTEM_NAMESPACE, crate::api::SWAP_LEASE)
            .map(|l| l.spec.epoch)
            .unwrap_or(0)
    }

    /// Whether node `name` is lost: the leader found its heartbeat
    /// expired (NotReady) and it still is, by this clock (a node that
    /// came back is not, before the next check says Ready), or its Node
    /// was deleted (the machine gone for good).
    pub fn node_lost(&self, name: &str) -> bool {
        match self.nodes.get(crate::api::SYSTEM_NAMESPACE, name) {
            Some(n) => {
                let hb = n.status.as_ref().and_then(|s| s.heartbeat_time.as_ref());
                n.lost()
                    && !crate::api::heartbeat_fresh(
                        hb,
                        k8s_openapi::jiff::Timestamp::now(),
                        crate::api::NODE_TTL,
                    )
            }
            None => true,
        }
    }

    /// Whether a dispatch written at `at` by node `name` may have been
    /// typed before it was lost: within [`TYPE_WITHIN_HEARTBEAT`] of its
    /// last heartbeat known here (both by that node's clock). One written
    /// later was written after a heartbeat not seen here yet: the node
    /// is back.
    pub fn dispatched_before_loss(
        &self,
        name: &str,
        at: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    ) -> bool {
        let hb = self
            .nodes
            .get(crate::api::SYSTEM_NAMESPACE, name)
            .and_then(|n| n.status.as_ref()?.heartbeat_time.clone());
        match (hb, at) {
            (Some(hb), Some(at)) => {
                let fence = k8s_openapi::jiff::SignedDuration::try_from(TYPE_WITHIN_HEARTBEAT)
                    .unwrap_or_default();
                at.0 <= hb.0.checked_add(fence).unwrap_or(hb.0)
            }
            // No heartbeat (a deleted Node), no time: as before its loss.
            _ => true,
        }
    }

    /// The Accounts of one namespace.
    pub fn accounts_in(&self, ns: &str) -> Vec<Arc<Account>> {
        self.accounts
            .all()
            .into_iter()
            .filter(|a| a.metadata.namespace.as_deref() == Some(ns))
            .collect()
    }
}

/// What every controller uses.
pub struct Shared {
    pub store: Store,
    pub caches: Caches,
    pub driver: AgentDriver,
    pub signals: Arc<Signals>,
    pub metrics: Arc<Metrics>,
    pub notifier: Notifier,
    pub clock: Arc<dyn Clock>,
    pub settings: Settings,
    /// Whether this daemon holds the leader lease now (it changes: a
    /// daemon that loses the lease keeps its node's work and campaigns
    /// again).
    pub leading: Arc<std::sync::atomic::AtomicBool>,
    /// When this node's heartbeat was last written (by `node::heartbeat`).
    pub beaten: Arc<std::sync::Mutex<Option<std::time::Instant>>>,
}

/// How fresh this node's own heartbeat must be for its dispatcher to type
/// a task: well inside `NODE_TTL`, after which the leader takes the node
/// for lost and sends its unconfirmed tasks elsewhere. A daemon stopped
/// (SIGSTOP, a partition) past it types nothing until it has beaten again.
pub const TYPE_WITHIN_HEARTBEAT: Duration =
    Duration::from_millis(crate::api::NODE_TTL.as_millis() as u64 / 2);

impl Shared {
    pub fn now(&self) -> SystemTime {
        self.clock.now()
    }

    /// Whether this daemon leads (runs what is global).
    pub fn leads(&self) -> bool {
        self.leading.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Whether this node's heartbeat is fresh enough to type
    /// ([`TYPE_WITHIN_HEARTBEAT`]).
    pub fn node_fresh(&self) -> bool {
        self.beaten
            .lock()
            .expect("heartbeat lock")
            .is_some_and(|t| t.elapsed() < TYPE_WITHIN_HEARTBEAT)
    }

    /// Whether this daemon runs session `s` (it is placed on this node).
    pub fn runs(&self, s: &Session) -> bool {
        s.node() == Some(self.settings.node.as_str())
    }

    /// Runs store or file I/O on the blocking pool, never on an async
    /// worker thread.
    pub async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> T + Send + 'static,
    ) -> T {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .expect("a blocking store call panicked")
    }

    /// Logs an event about an object and records it in the store (shown by
    /// `describe`); one call, so the log line and the event never drift.
    pub async fn record(
        &self,
        key: &ObjectKey,
        warning: bool,
        reason: &str,
        message: &str,
        source: &'static str,
    ) {
        if warning {
            tracing::warn!(object = %key, reason, "{message}");
        } else {
            tracing::info!(object = %key, reason, "{message}");
        }
        let (k, r, m) = (key.clone(), reason.to_string(), message.to_string());
        let result = self
            .blocking(move |s| s.record_event(&k, warning, &r, &m, source))
            .await;
        if let Err(e) = result {
            tracing::warn!(object = %key, error = %e, "cannot record an event");
        }
    }
}

/// `NS/NAME` keys of a namespace and a name.
pub fn ns_of(m: &crate::api::ObjectMeta) -> String {
    m.namespace
        .clone()
        .unwrap_or_else(|| crate::api::DEFAULT_NAMESPACE.into())
}

/// Takes every wake already queued behind the one just received: a pass
/// looks at the caches whole, so one pass serves them all. Without this, a
/// burst of k changes (a relist, 500 Sessions starting) ran k passes, each
/// over every object.
pub fn drain<S: futures::Stream<Item = ()> + Unpin>(wake: &mut S) {
    use futures::{FutureExt, StreamExt};
    while let Some(Some(())) = wake.next().now_or_never() {}
}

/// Paces a controller's passes on wakes: a wake within `gap` of the last
/// pass's start waits for the gap's end, and one pass then serves every
/// wake that came meanwhile. A pass over every object ran once per change
/// otherwise, and 500 sessions at work change their statuses many times a
/// second (the failover pass was 17 % of the daemon's CPU while
/// dispatching, by profile). A wake after a quiet spell is served at once.
#[derive(Debug)]
pub struct Pace {
    gap: Duration,
    last: Option<tokio::time::Instant>,
}

impl Pace {
    pub fn new(gap: Duration) -> Pace {
        Pace { gap, last: None }
    }

    /// Waits out the gap since the last pass began, takes the wakes that
    /// came meanwhile (or, before the first pass, any already queued), and
    /// notes the coming pass's start.
    pub async fn before_pass<S: futures::Stream<Item = ()> + Unpin>(&mut self, wake: &mut S) {
        if let Some(at) = self.last {
            tokio::time::sleep_until(at + self.gap).await;
        }
        drain(wake);
        self.started();
    }

    /// As [`Pace::before_pass`], but a wake on `urgent` (a change the
    /// controller must act on at once) ends the wait.
    pub async fn before_pass_or<S, U>(&mut self, wake: &mut S, urgent: &mut U)
    where
        S: futures::Stream<Item = ()> + Unpin,
        U: futures::Stream<Item = ()> + Unpin,
    {
        use futures::StreamExt;
        if let Some(at) = self.last {
            tokio::select! {
                _ = tokio::time::sleep_until(at + self.gap) => {}
                _ = urgent.next() => {}
            }
        }
        drain(wake);
        drain(urgent);
        self.started();
    }

    /// Notes a pass's start without waiting (one that follows up at once
    /// on the previous pass's own writes).
    pub fn started(&mut self) {
        self.last = Some(tokio::time::Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::Pace;
    use futures::channel::mpsc::{UnboundedReceiver, UnboundedSender, unbounded};
    use futures::{FutureExt, StreamExt};
    use std::time::Duration;

    /// A deadline for what must not wait (not a timing claim: the gaps
    /// below are an hour).
    const DEADLINE: Duration = Duration::from_secs(30);

    fn stream() -> (UnboundedSender<()>, UnboundedReceiver<()>) {
        unbounded()
    }

    #[tokio::test]
    async fn the_first_pass_and_an_urgent_wake_do_not_wait_and_a_burst_is_one_pass() {
        let mut pace = Pace::new(Duration::from_secs(3600));
        let (tx, mut wake) = stream();
        let (urgent_tx, mut urgent) = stream();
        // No pass yet: nothing to wait for, and what was queued is taken.
        tx.unbounded_send(()).unwrap();
        tokio::time::timeout(DEADLINE, pace.before_pass_or(&mut wake, &mut urgent))
            .await
            .expect("the first pass runs at once");
        assert!(
            wake.next().now_or_never().is_none(),
            "the queued wake was taken"
        );
        // A burst of wakes and one urgent wake: the urgent one ends the
        // hour's wait, and the burst is taken with it (one pass).
        for _ in 0..50 {
            tx.unbounded_send(()).unwrap();
        }
        urgent_tx.unbounded_send(()).unwrap();
        tokio::time::timeout(DEADLINE, pace.before_pass_or(&mut wake, &mut urgent))
            .await
            .expect("an urgent wake ends the wait");
        assert!(wake.next().now_or_never().is_none(), "the burst was taken");
        assert!(urgent.next().now_or_never().is_none());
        // Without an urgent wake, the pass waits out the gap.
        tx.unbounded_send(()).unwrap();
        let waited = tokio::time::timeout(
            Duration::from_millis(50),
            pace.before_pass_or(&mut wake, &mut urgent),
        )
        .await;
        assert!(waited.is_err(), "a wake within the gap waits for its end");
    }

    #[tokio::test]
    async fn a_gap_already_past_does_not_hold_the_pass() {
        let mut pace = Pace::new(Duration::ZERO);
        let (tx, mut wake) = stream();
        pace.started();
        for _ in 0..3 {
            tx.unbounded_send(()).unwrap();
        }
        tokio::time::timeout(DEADLINE, pace.before_pass(&mut wake))
            .await
            .expect("the gap is over");
        assert!(wake.next().now_or_never().is_none(), "the wakes were taken");
    }
}

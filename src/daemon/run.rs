//! The composition root: builds every part of the daemon from the config,
//! runs them, and stops them. It waits to lead the store (or stands by),
//! serves the control plane and the agents' endpoint, follows the store
//! through the caches, runs the controllers and (with a manifests
//! directory) the sync, until SIGTERM or SIGINT or the loss of its state
//! dir. The agents keep running after it stops; the next daemon adopts
//! them.

use super::api::{ApiState, Feed, Readiness};
use super::bus::Bus;
use super::guard::{IDLE_TIMEOUT, IdleTimeout};
use super::{access, api, http, projections};
use crate::agent::driver::Driver;
use crate::agent::signals::Signals;
use crate::api::{Account, Kind, Lease, Session, Task};
use crate::controller::{self, Caches, Shared, account, failover, node, session, task};
use crate::metrics::Metrics;
use crate::store::Store;
use crate::store::cache::Cache;
use crate::tmux::Tmux;
use anyhow::{Context as _, Result};
use futures::{Stream, StreamExt};
use kube::runtime::applier;
use kube::runtime::reflector::ObjectRef;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// How often the daemon checks that its state dir still exists.
const STATE_DIR_CHECK: Duration = Duration::from_secs(2);
/// Each step of a graceful agent stop (`/exit`, SIGTERM, SIGKILL).
const STOP_STEP: Duration = Duration::from_secs(5);
/// Longest restart back-off of an agent.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Everything the daemon is built from (read from the config and flags by
/// the command line).
pub struct Options {
    pub store: Store,
    pub store_dir: PathBuf,
    pub state_dir: PathBuf,
    pub tmux_socket: PathBuf,
    pub shared_projects: PathBuf,
    pub listen: String,
    pub api_socket: Option<PathBuf>,
    pub token: String,
    pub token_path: PathBuf,
    pub syncer: Option<crate::sync::Syncer>,
    pub resync: Duration,
    pub dispatch: task::DispatchSettings,
    pub quota: account::QuotaSettings,
    pub failover: failover::FailoverSettings,
    pub janitor: crate::janitor::Settings,
    pub notify: crate::config::NotifyConfig,
    pub checkpoint_every: Duration,
    pub continue_message: String,
    /// The MCP server on the listener (docs/mcp.md).
    pub mcp: crate::mcp::http::Settings,
    /// This daemon's Node (docs/distributed.md).
    pub node: String,
    /// The most Sessions this node runs (None: no limit).
    pub capacity: Option<u32>,
}

/// The most open files the daemon asks for (see [`raise_open_files`]).
const OPEN_FILES: libc::rlim_t = 16_384;

/// The store's and the files' calls run on tokio's blocking threads; its
/// default of 512 let a pool of 500 taking 20,000 tasks grow 350 threads,
/// each with its stack and its share of the allocator's arenas (RSS 229
/// MB). Past a few dozen, more threads wait on the same disk.
pub const BLOCKING_THREADS: usize = 32;

/// The allocator's arenas (glibc makes up to eight per core, one per
/// thread that meets contention): a daemon of mostly waiting threads
/// keeps memory in each. Unless the user chose (`MALLOC_ARENA_MAX`), two.
pub fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt(3) with a valid parameter, before any thread.
        unsafe { libc::mallopt(libc::M_ARENA_MAX, 2) };
    }
}

/// Each running agent holds a pidfd (`agent/exits.rs`) and each hook a
/// connection: the soft limit of open files (often 1,024) is raised
/// towards the hard one, up to [`OPEN_FILES`].
fn raise_open_files() {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit(2) and setrlimit(2) with a valid resource and a
    // pointer to a struct of ours.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) != 0 {
            return;
        }
        let want = l.rlim_max.min(OPEN_FILES);
        if l.rlim_cur >= want {
            return;
        }
        let before = l.rlim_cur;
        l.rlim_cur = want;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &l) == 0 {
            tracing::debug!(from = before, to = want, "open files limit raised");
        }
    }
}

/// Runs the daemon until a signal (or the loss of its state dir): its
/// node's work from the start, the leader's whenever it leads.
pub async fn run(o: Options) -> Result<()> {
    crate::fsutil::ensure_dir(&o.state_dir)
        .with_context(|| format!("cannot create the state dir {}", o.state_dir.display()))?;
    raise_open_files();
    let shutdown = shutdown_signal(o.state_dir.clone());
    tokio::pin!(shutdown);
    let identity = crate::store::identity();
    tracing::info!(store = %o.store_dir.display(), state = %o.state_dir.display(), node = %o.node, version = env!("CARGO_PKG_VERSION"), "daemon starting");
    // One daemon runs a node's agents: a second one beside it (the same
    // state dir, so the same tmux server) waits for it to go, then runs
    // the node under its name.
    let _node_lock = tokio::select! {
        l = node_lock(&o.state_dir) => l?,
        _ = &mut shutdown => { tracing::info!("daemon stopped"); return Ok(()); }
    };
    let (me, _heartbeat) = join_as_node(&o, &identity).await?;
    let metrics = Arc::new(Metrics::new());
    let notifier = crate::notify::Notifier::start(&o.notify)
        .context("cannot set up the notifications (config key notify)")?;
    notifier.record_to(metrics.clone());
    let readiness = Arc::new(Readiness::new(o.syncer.is_some()));
    let (caches, mut tasks) = Caches::start(&o.store, o.resync);
    let _ = me.caches.set(caches.clone());
    // etcd: whether the store answers, for /readyz (see store::health).
    tasks.push(tokio::spawn(o.store.clone().probe_forever()));
    let bus = Bus::new();
    tasks.extend(feeds(&bus, &caches, &o.store, o.resync, &readiness));
    tasks.push(tokio::spawn(projections::gauges(
        caches.clone(),
        metrics.clone(),
    )));
    tokio::select! {
        _ = caches.listed() => readiness.sessions_listed(),
        _ = &mut shutdown => {
            abort(tasks);
            tracing::info!("daemon stopped");
            return Ok(());
        }
    }
    let (signals, wake) = Signals::new();
    let signals = Arc::new(signals);
    // The running agents are heard from the first request on.
    session::register_secrets(&signals, &o.state_dir, &caches.sessions.all()).await;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (addr, servers) = listen(&o, &signals, &readiness, bus, &metrics, &stop_rx).await?;
    let shared = shared(&o, &caches, signals, &metrics, notifier, addr, &me)?;
    if let Err(e) = shared.driver.terminal().install_hooks().await {
        tracing::warn!(error = %e, "cannot install the tmux notifications; relying on resync");
    }
    let board = Arc::new(crate::inbox::status::Board::default());
    tasks.extend(node_controllers(&o, &shared, wake, &board));
    readiness.node_running();
    let leader = tokio::spawn(super::lead::lead_forever(super::lead::LeaderWork {
        store: o.store.clone(),
        shared,
        me,
        readiness,
        metrics: metrics.clone(),
        quota: o.quota.clone(),
        failover: o.failover.clone(),
        janitor: o.janitor.clone(),
        syncer: o.syncer.clone(),
        stop: stop_rx,
    }));
    (&mut shutdown).await;
    access::remove_endpoint(&o.state_dir);
    let _ = stop_tx.send(true);
    abort(tasks);
    wind_down(&o, &board, servers).await;
    step_down(leader, &metrics).await;
    tracing::info!("daemon stopped (the agents keep running)");
    Ok(())
}

/// The control plane and the agents' endpoint, listening; their address.
async fn listen(
    o: &Options,
    signals: &Arc<Signals>,
    readiness: &Arc<Readiness>,
    bus: Bus,
    metrics: &Arc<Metrics>,
    stop: &tokio::sync::watch::Receiver<bool>,
) -> Result<(std::net::SocketAddr, Vec<tokio::task::JoinHandle<()>>)> {
    let api_state = Arc::new(ApiState {
        store: o.store.clone(),
        state_dir: o.state_dir.clone(),
        token: o.token.clone(),
        readiness: readiness.clone(),
        bus,
        metrics: metrics.clone(),
        stop: stop.clone(),
    });
    let endpoint = http::Endpoint {
        signals: signals.clone(),
        metrics: metrics.clone(),
    };
    let (addr, servers) = serve(o, api_state, endpoint, stop).await?;
    tracing::info!(%addr, socket = ?o.api_socket, token_file = %o.token_path.display(), "control plane and agents' endpoint listening");
    Ok((addr, servers))
}

/// Once stopped: the sessions' last states reach
/// `.agent-queue/status.json`, the servers finish what they serve, the
/// control plane's socket goes.
async fn wind_down(
    o: &Options,
    board: &Arc<crate::inbox::status::Board>,
    servers: Vec<tokio::task::JoinHandle<()>>,
) {
    let board = board.clone();
    let _ = tokio::task::spawn_blocking(move || board.flush()).await;
    for s in servers {
        let _ = s.await;
    }
    if let Some(p) = &o.api_socket {
        let _ = std::fs::remove_file(p);
    }
}

/// This daemon's Node, registered in the store, and its heartbeat.
async fn join_as_node(o: &Options, identity: &str) -> Result<(Arc<node::NodeState>, AbortOnDrop)> {
    let me = Arc::new(node::NodeState::new(&o.node, identity, o.capacity));
    let (store, m) = (o.store.clone(), me.clone());
    tokio::task::spawn_blocking(move || node::register(&store, &m))
        .await?
        .with_context(|| format!("cannot register the node {}", o.node))?;
    let heartbeat = AbortOnDrop(tokio::spawn(node::heartbeat(o.store.clone(), me.clone())));
    Ok((me, heartbeat))
}

/// The end of leading, at shutdown: lazily written events and progress
/// reach the disk before the lease goes.
async fn step_down(leader: tokio::task::JoinHandle<()>, metrics: &Metrics) {
    if let Err(e) = crate::store::flush_now() {
        tracing::warn!(error = %e, "cannot flush the store");
    }
    leader.abort();
    let _ = leader.await;
    metrics.leader.set(0);
}

/// What every controller of this daemon uses.
fn shared(
    o: &Options,
    caches: &Caches,
    signals: Arc<Signals>,
    metrics: &Arc<Metrics>,
    notifier: crate::notify::Notifier,
    addr: std::net::SocketAddr,
    me: &node::NodeState,
) -> Result<Arc<Shared>> {
    let exe = std::env::current_exe().context("cannot find this program's path")?;
    let notify = format!(
        "{} hook --url http://{addr}{} </dev/null",
        exe.display(),
        http::tmux_path(signals.tmux_secret())
    );
    let tmux = Tmux::new(&o.tmux_socket).with_notify(notify);
    Ok(Arc::new(Shared {
        store: o.store.clone(),
        caches: caches.clone(),
        driver: Driver::new(tmux, STOP_STEP),
        signals,
        metrics: metrics.clone(),
        notifier,
        clock: Arc::new(controller::SystemClock),
        settings: controller::Settings {
            state_dir: o.state_dir.clone(),
            shared_projects: o.shared_projects.clone(),
            agent_base_url: format!("http://{addr}"),
            exe,
            resync: o.resync,
            max_backoff: MAX_BACKOFF,
            checkpoint_every: o.checkpoint_every,
            continue_message: o.continue_message.clone(),
            strategy: o.failover.policy.strategy,
            node: o.node.clone(),
        },
        leading: me.leading.clone(),
        beaten: me.beaten.clone(),
    }))
}

/// `STATE/node.lock`: held (a kernel lock, released when the process dies,
/// however it dies) by the daemon that runs the node of this state dir.
const NODE_LOCK: &str = "node.lock";

/// Takes the node's lock, waiting (in a thread of its own) while another
/// daemon of this state dir holds it.
async fn node_lock(state_dir: &std::path::Path) -> Result<std::fs::File> {
    let path = state_dir.join(NODE_LOCK);
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    match f.try_lock() {
        Ok(()) => return Ok(f),
        Err(std::fs::TryLockError::WouldBlock) => {}
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(e).with_context(|| format!("cannot lock {}", path.display()));
        }
    }
    tracing::info!(state = %state_dir.display(), "standby: another daemon runs this node from the same state dir; waiting for it to stop");
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("node-wait".into())
        .spawn(move || {
            let _ = tx.send(f.lock().map(|()| f));
        })
        .context("cannot start the node's wait")?;
    let f = rx
        .await
        .context("the node's wait stopped")?
        .with_context(|| format!("cannot lock {}", path.display()))?;
    tracing::info!("the node's other daemon is gone: this one runs the node");
    Ok(f)
}

/// A task stopped when its handle goes (the heartbeat, at every way out).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn abort(tasks: Vec<tokio::task::JoinHandle<()>>) {
    for t in tasks {
        t.abort();
    }
}

/// The event stream's feeds: each cache's changes and the recorded events.
fn feeds(
    bus: &Bus,
    caches: &Caches,
    store: &Store,
    resync: Duration,
    readiness: &Arc<Readiness>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let listed = |feed: Feed| {
        let r = readiness.clone();
        move || r.feed_listed(feed)
    };
    vec![
        tokio::spawn(
            bus.clone()
                .follow(caches.tasks.clone(), listed(Feed::Objects(Kind::Task))),
        ),
        tokio::spawn(bus.clone().follow(
            caches.sessions.clone(),
            listed(Feed::Objects(Kind::Session)),
        )),
        tokio::spawn(bus.clone().follow(
            caches.accounts.clone(),
            listed(Feed::Objects(Kind::Account)),
        )),
        tokio::spawn(bus.clone().follow(
            caches.pools.clone(),
            listed(Feed::Objects(Kind::SessionPool)),
        )),
        tokio::spawn(bus.clone().follow(caches.swaps.clone(), || {})),
        tokio::spawn(
            bus.clone()
                .follow_events(store.clone(), resync, listed(Feed::Events)),
        ),
    ]
}

/// Binds the control plane (TCP, and the Unix socket if configured), starts
/// serving, and says where in `STATE/api.json`.
async fn serve(
    o: &Options,
    state: Arc<ApiState>,
    endpoint: http::Endpoint,
    stop: &tokio::sync::watch::Receiver<bool>,
) -> Result<(std::net::SocketAddr, Vec<tokio::task::JoinHandle<()>>)> {
    let listener = tokio::net::TcpListener::bind(&o.listen)
        .await
        .with_context(|| format!("cannot listen on {}", o.listen))?;
    let addr = listener.local_addr()?;
    let listener = IdleTimeout::new(listener, IDLE_TIMEOUT);
    let unix = match &o.api_socket {
        Some(path) => Some(IdleTimeout::new(bind_unix(path)?, IDLE_TIMEOUT)),
        None => None,
    };
    let mcp = crate::mcp::http::router(state.clone(), &o.mcp, endpoint.signals.clone())
        .context("cannot set up the MCP endpoint (config key mcp)")?;
    let mut router = api::router(state).merge(http::router(endpoint)).merge(mcp);
    if addr.ip().is_loopback() {
        router = router.layer(axum::middleware::from_fn(api::loopback_host_only));
    }
    let graceful = |mut stop: tokio::sync::watch::Receiver<bool>| async move {
        let _ = stop.changed().await;
    };
    let mut servers = vec![{
        let (router, g) = (router.clone(), graceful(stop.clone()));
        tokio::spawn(async move {
            let _ = axum::serve(listener, router)
                .with_graceful_shutdown(g)
                .await;
        })
    }];
    if let Some(l) = unix {
        let g = graceful(stop.clone());
        servers.push(tokio::spawn(async move {
            let _ = axum::serve(l, router).with_graceful_shutdown(g).await;
        }));
    }
    access::write_endpoint(
        &o.state_dir,
        &access::Endpoint {
            url: format!("http://{addr}"),
            socket: o.api_socket.clone(),
            pid: std::process::id(),
            store: std::fs::canonicalize(&o.store_dir).unwrap_or_else(|_| o.store_dir.clone()),
        },
    )
    .with_context(|| {
        format!(
            "cannot write {}",
            access::endpoint_path(&o.state_dir).display()
        )
    })?;
    Ok((addr, servers))
}

/// The controllers of this node's sessions, each on its own task.
fn node_controllers(
    o: &Options,
    shared: &Arc<Shared>,
    wake: tokio::sync::mpsc::UnboundedReceiver<ObjectRef<Session>>,
    board: &Arc<crate::inbox::status::Board>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let c = &shared.caches;
    let sessions = Arc::new(session::Context::new(shared.clone(), board.clone()));
    let tasks = Arc::new(task::Context::new(shared.clone(), o.dispatch.clone()));
    vec![
        tokio::spawn(crate::inbox::status::keep(board.clone())),
        tokio::spawn(run_sessions(sessions, wake)),
        tokio::spawn(task::run(
            tasks,
            any_of(vec![
                changes(&c.tasks),
                changes(&c.sessions),
                changes(&c.accounts),
            ]),
        )),
    ]
}

pub(super) type Wake = std::pin::Pin<Box<dyn Stream<Item = ()> + Send>>;

pub(super) fn changes<K>(cache: &Cache<K>) -> Wake
where
    K: crate::api::Object,
{
    Box::pin(cache.changes().map(|_| ()))
}

pub(super) fn any_of(streams: Vec<Wake>) -> impl Stream<Item = ()> + Send + 'static {
    futures::stream::select_all(streams)
}

/// The session controller: the applier over the Sessions' cache, woken by
/// changes of a session, of the accounts it may run on, of its tasks, of
/// the swap lease, and by its agent's signals.
async fn run_sessions(
    ctx: Arc<session::Context>,
    mut wake: tokio::sync::mpsc::UnboundedReceiver<ObjectRef<Session>>,
) {
    let c = ctx.shared.caches.clone();
    let all = {
        let c = c.clone();
        move || {
            c.sessions
                .all()
                .iter()
                .map(|s| ObjectRef::from(s.as_ref()))
                .collect::<Vec<_>>()
        }
    };
    let own = c
        .sessions
        .triggers(|s: &Session| vec![ObjectRef::from(s)], all.clone());
    let by_account = {
        let c2 = c.clone();
        c.accounts
            .triggers(move |a: &Account| sessions_of_account(&c2, a), all.clone())
    };
    let peers = standby_peers(&c);
    let by_task = c.tasks.triggers(task_session, all.clone());
    let by_lease = {
        let c2 = c.clone();
        c.leases.triggers(move |_: &Lease| moving(&c2), all.clone())
    };
    let from_agents = futures::stream::poll_fn(move |cx| wake.poll_recv(cx));
    // Every session once at the start: the caches' first listing went by
    // before these triggers subscribed.
    let initial = futures::stream::iter(all());
    let queue = futures::stream::select_all(vec![
        initial.boxed(),
        own.boxed(),
        peers.boxed(),
        by_account.boxed(),
        by_task.boxed(),
        by_lease.boxed(),
        from_agents.boxed(),
    ])
    .map(Ok::<_, kube::runtime::watcher::Error>);
    let reconcile = |s, c| Box::pin(session::reconcile(s, c));
    applier(
        reconcile,
        session::error_policy,
        ctx,
        c.sessions.reader().clone(),
        queue,
        Default::default(),
    )
    .for_each(|r| async move {
        if let Err(e) = r {
            tracing::debug!(error = %e, "session controller");
        }
    })
    .await;
}

/// A Session that took or left a standby's place, in a pool that bounds
/// its standbys, wakes its peers: one may now take the place it left.
fn standby_peers(c: &Caches) -> impl Stream<Item = ObjectRef<Session>> + Send + 'static {
    use crate::store::cache::Changed;
    use session::peers;
    let changes = c.sessions.changes();
    let c = c.clone();
    changes.flat_map(move |ch| {
        let (before, after) = match &ch {
            Changed::Added(o) => (None, Some(o)),
            Changed::Deleted(o) => (Some(o), None),
            Changed::Modified(b, a) => (Some(b), Some(a)),
            Changed::Lagged | Changed::Listed => (None, None),
        };
        let (before, after) = (before.map(|b| b.as_ref()), after.map(|a| a.as_ref()));
        let refs = if peers::wakes_peers(before, after) {
            peers::keys(&c.sessions.all(), before, after)
                .into_iter()
                .map(|k| ObjectRef::new(&k.name).within(&k.namespace))
                .collect()
        } else {
            vec![]
        };
        futures::stream::iter(refs)
    })
}

/// The sessions an account's change concerns: those running on it, naming
/// it, or not running (waiting for an account).
fn sessions_of_account(c: &Caches, a: &Account) -> Vec<ObjectRef<Session>> {
    let name = a.metadata.name.as_deref();
    c.sessions
        .all()
        .iter()
        .filter(|s| s.metadata.namespace == a.metadata.namespace)
        .filter(|s| {
            let st = s.status.clone().unwrap_or_default();
            st.account.as_deref() == name || s.spec.account.as_deref() == name || st.pid.is_none()
        })
        .map(|s| ObjectRef::from(s.as_ref()))
        .collect()
}

fn task_session(t: &Task) -> Vec<ObjectRef<Session>> {
    let ns = t.metadata.namespace.clone().unwrap_or_default();
    t.status
        .iter()
        .flat_map(|s| [s.session.clone(), s.replay_on.clone()])
        .flatten()
        .map(|n| ObjectRef::new(&n).within(&ns))
        .collect()
}

/// Sessions being moved (their placement's fencing follows the lease).
fn moving(c: &Caches) -> Vec<ObjectRef<Session>> {
    c.sessions
        .all()
        .iter()
        .filter(|s| {
            s.status
                .as_ref()
                .and_then(|st| st.last_swap.as_ref())
                .is_some_and(|p| p.swapping())
        })
        .map(|s| ObjectRef::from(s.as_ref()))
        .collect()
}

/// Binds the control plane's Unix socket, mode 0600. A socket file left by
/// a daemon that died is replaced (the store's leader lock says none serves
/// it).
fn bind_unix(path: &std::path::Path) -> Result<tokio::net::UnixListener> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    if let Some(dir) = path.parent() {
        crate::fsutil::ensure_dir(dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path)
            .with_context(|| format!("cannot replace the stale socket {}", path.display()))?,
        Ok(_) => anyhow::bail!(
            "{} exists and is not a socket; refusing to replace it (api.socket)",
            path.display()
        ),
        Err(_) => {}
    }
    let l = tokio::net::UnixListener::bind(path)
        .with_context(|| format!("cannot listen on the Unix socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot restrict {} to its owner", path.display()))?;
    Ok(l)
}

/// Resolves on SIGINT or SIGTERM, or when the state dir is gone (its
/// secrets and the agents' settings with it: the daemon stops rather than
/// run agents it can no longer hear).
pub async fn shutdown_signal(state_dir: PathBuf) {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    let gone = async {
        let mut tick = tokio::time::interval(STATE_DIR_CHECK);
        loop {
            tick.tick().await;
            let d = state_dir.clone();
            let present = tokio::task::spawn_blocking(move || d.is_dir())
                .await
                .unwrap_or(true);
            if !present {
                return;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = gone => tracing::error!(state = %state_dir.display(), "the state dir was removed: stopping (the agents keep running)"),
    }
}

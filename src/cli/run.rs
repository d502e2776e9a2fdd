//! `run`: the daemon. It waits for the leader lease, then serves the control
//! plane and the agents' endpoint, runs the controllers and (with a
//! manifests directory) the sync, until SIGTERM or SIGINT. The agents keep
//! running after it stops; the next daemon adopts them.

use super::Ctx;
use super::wait::parse_duration;
use crate::api::{Account, Kind, Session, Task};
use crate::config::LogFormat;
use crate::controller::{Context, Settings, session, task};
use crate::daemon::api::{ApiState, Feed, Readiness};
use crate::daemon::bus::Bus;
use crate::daemon::{access, api, http, lease, signals::Signals};
use crate::metrics::metrics;
use crate::store::watch::{WatchConfig, watch};
use crate::sync::Syncer;
use crate::tmux::Tmux;
use anyhow::{Context as _, Result};
use clap::Args;
use futures::{StreamExt, TryStreamExt};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{WatchStreamExt, applier};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Desired-state directory to keep synced into the store [config: manifests]
    #[arg(long, value_name = "DIR")]
    pub manifests: Option<PathBuf>,
    /// Full resync period of the sync and the controllers [config: resyncSeconds; default: 30s]
    #[arg(long, value_parser = parse_duration)]
    pub resync: Option<Duration>,
    /// Address of the control plane and the agents' hooks [config: listen; default: 127.0.0.1:7817]
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// Log format [config: log.format; default: text]
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
    /// Log filter, e.g. `info`, `debug`, `claude_failover=debug` [env: RUST_LOG; config: log.level]
    #[arg(long)]
    pub log_level: Option<String>,
}

pub const DEFAULT_LISTEN: &str = "127.0.0.1:7817";

pub fn run(ctx: &Ctx, a: RunArgs) -> Result<ExitCode> {
    let format = a
        .log_format
        .or(ctx.config.log.format)
        .unwrap_or(LogFormat::Text);
    let level = a
        .log_level
        .clone()
        .or(ctx.config.log.level.clone())
        .unwrap_or_else(|| "info".into());
    super::init_logging(format, &level);
    let cfg = &ctx.config;
    let resync = a
        .resync
        .or(cfg.resync_seconds.map(Duration::from_secs))
        .unwrap_or(Duration::from_secs(30))
        .max(Duration::from_millis(100));
    let state_dir = ctx.state_dir();
    let tmux_socket = cfg
        .tmux_socket
        .as_deref()
        .map(crate::fsutil::expand_home)
        .unwrap_or_else(|| state_dir.join("tmux.sock"));
    let shared_projects = cfg
        .transcripts_dir
        .as_deref()
        .map(crate::fsutil::expand_home)
        .unwrap_or_else(|| state_dir.join("projects"));
    let listen = a
        .listen
        .clone()
        .or(cfg.listen.clone())
        .unwrap_or_else(|| DEFAULT_LISTEN.into());
    let manifests = a
        .manifests
        .clone()
        .or_else(|| cfg.manifests.as_deref().map(crate::fsutil::expand_home));
    let token_path = access::token_path(cfg, &state_dir);
    let token = access::load_or_create_token(&token_path)
        .context("cannot prepare the control plane's bearer token")?;
    let api_socket = cfg.api.socket.as_deref().map(crate::fsutil::expand_home);
    let store = ctx.store()?;
    let syncer = match &manifests {
        Some(dir) => Some(
            Syncer::new(store.clone(), dir, &ctx.namespace).with_context(|| {
                format!("cannot read the manifests directory {}", dir.display())
            })?,
        ),
        None => None,
    };
    let exe = std::env::current_exe().context("cannot find this program's path")?;
    let d = &cfg.dispatch;
    let mut dispatch = task::DispatchSettings::default();
    if let Some(c) = d.cooldown_seconds {
        dispatch.cooldown = Duration::from_secs(c);
    }
    if let Some(t) = d.timeout_seconds {
        dispatch.default_timeout = Duration::from_secs(t);
    }
    if let Some(m) = d.max_attempts {
        dispatch.max_attempts = m.max(1);
    }
    if let Some(models) = &d.models {
        dispatch
            .models
            .extend(models.iter().map(|(p, m)| (*p, m.clone())));
    }
    let janitor_settings = crate::janitor::Settings {
        interval: Duration::from_secs(cfg.janitor.interval_seconds.unwrap_or(600).max(1)),
        keep_finished: Duration::from_secs(
            cfg.janitor.keep_finished_seconds.unwrap_or(7 * 24 * 3600),
        ),
        state_dir: state_dir.clone(),
        keep_checkpoints: Duration::from_secs(
            cfg.quota.keep_checkpoints_seconds.unwrap_or(7 * 24 * 3600),
        ),
    };
    let q = cfg.quota.clone();
    let notify_config = cfg.notify.clone();
    let quota_settings = crate::controller::account::QuotaSettings {
        stale: Duration::from_secs(q.stale_seconds.unwrap_or(900).max(1)),
        hysteresis: f64::from(q.hysteresis_percent.unwrap_or(5)),
        poll_interval: Duration::from_secs(q.poll_interval_seconds.unwrap_or(300).max(1)),
        usage_base_url: q
            .usage_base_url
            .clone()
            .unwrap_or_else(|| "https://api.anthropic.com".into()),
    };
    let failover_settings = crate::controller::failover::FailoverSettings {
        turn_wait: Duration::from_secs(q.turn_wait_seconds.unwrap_or(120)),
        confirm: Duration::from_secs(q.confirm_seconds.unwrap_or(60).max(1)),
        strategy: q.strategy.unwrap_or_default(),
        continue_message: q
            .continue_message
            .clone()
            .unwrap_or_else(|| "continue".into()),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        tracing::info!(store = %ctx.store_dir.display(), state = %state_dir.display(), version = env!("CARGO_PKG_VERSION"), "daemon starting");
        let shutdown = shutdown_signal();
        tokio::pin!(shutdown);
        let lease = match lease::try_acquire(&state_dir)? {
            Some(l) => l,
            None => {
                let holder = lease::current(&state_dir).map(|r| r.holder).unwrap_or_default();
                tracing::info!(leader = %holder, "standby: another daemon leads this store; waiting for its lease");
                tokio::select! {
                    l = lease::acquire(&state_dir) => l?,
                    _ = &mut shutdown => { tracing::info!("daemon stopped"); return Ok(()); }
                }
            }
        };
        tracing::info!(holder = %lease.record.holder, "leader lease acquired");
        let notifier = crate::notify::Notifier::start(&notify_config)
            .context("cannot set up the notifications (config key notify)")?;
        metrics().leader.set(1);
        metrics().leader_transitions_total.inc();
        let readiness = Arc::new(Readiness::new(syncer.is_some()));
        readiness.set_leader(true);
        let listener = tokio::net::TcpListener::bind(&listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        let addr = listener.local_addr()?;
        let unix_listener = match &api_socket {
            Some(path) => Some(bind_unix(path)?),
            None => None,
        };
        let (signals, wake) = Signals::new();
        let signals = Arc::new(signals);
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let bus = Bus::new();
        let api_state = Arc::new(ApiState {
            store: store.clone(),
            state_dir: state_dir.clone(),
            token,
            readiness: readiness.clone(),
            bus: bus.clone(),
            stop: stop_rx.clone(),
        });
        // The feeds of changes: the event stream's source; they also wake
        // the task dispatcher (any Task or Session change) and fill the
        // object gauges. Listed before anything is served, so a client of
        // the event stream never misses a change made after it connected.
        let store_changed = Arc::new(tokio::sync::Notify::new());
        // Account and Session changes wake the account controller.
        let accounts_changed = Arc::new(tokio::sync::Notify::new());
        let listed = |feed: Feed| {
            let readiness = readiness.clone();
            move || readiness.feed_listed(feed)
        };
        let (tasks_listed, sessions_listed, accounts_listed) = (
            listed(Feed::Objects(Kind::Task)),
            listed(Feed::Objects(Kind::Session)),
            listed(Feed::Objects(Kind::Account)),
        );
        let feeds = [
            tokio::spawn(bus.clone().follow::<Task, _>(
                store.clone(),
                resync,
                vec![store_changed.clone()],
                |t| t.status.as_ref().and_then(|s| s.phase).unwrap_or_default(),
                move |phases| {
                    crate::metrics::count_tasks(phases);
                    tasks_listed();
                },
            )),
            tokio::spawn(bus.clone().follow::<Session, _>(
                store.clone(),
                resync,
                vec![store_changed.clone(), accounts_changed.clone()],
                |s| s.status.as_ref().and_then(|st| st.phase).unwrap_or_default(),
                move |phases| {
                    crate::metrics::count_sessions(phases);
                    sessions_listed();
                },
            )),
            tokio::spawn(bus.clone().follow::<Account, _>(
                store.clone(),
                resync,
                vec![accounts_changed.clone()],
                Account::clone,
                move |accounts| {
                    crate::metrics::fill_accounts(accounts);
                    accounts_listed();
                },
            )),
            tokio::spawn(bus.clone().follow_events(store.clone(), resync, listed(Feed::Events))),
        ];
        tokio::select! {
            _ = readiness.feeds_listed() => {}
            _ = &mut shutdown => {
                for f in feeds {
                    f.abort();
                }
                tracing::info!("daemon stopped");
                return Ok(());
            }
        }
        let mcp = crate::mcp::http::router(api_state.clone(), &cfg.mcp, &ctx.namespace, {
            let s = signals.clone();
            Arc::new(move |k: &crate::api::ObjectKey, secret: &str| s.authorized(k, secret))
        })
        .context("cannot set up the MCP endpoint (config key mcp)")?;
        let mut router = api::router(api_state).merge(http::router(signals.clone())).merge(mcp);
        if addr.ip().is_loopback() {
            router = router.layer(axum::middleware::from_fn(api::loopback_host_only));
        }
        let mut servers = vec![{
            let mut stop = stop_rx.clone();
            let router = router.clone();
            tokio::spawn(async move {
                let _ = axum::serve(listener, router)
                    .with_graceful_shutdown(async move {
                        let _ = stop.changed().await;
                    })
                    .await;
            })
        }];
        if let Some(l) = unix_listener {
            let mut stop = stop_rx.clone();
            servers.push(tokio::spawn(async move {
                let _ = axum::serve(l, router)
                    .with_graceful_shutdown(async move {
                        let _ = stop.changed().await;
                    })
                    .await;
            }));
        }
        access::write_endpoint(
            &state_dir,
            &access::Endpoint {
                url: format!("http://{addr}"),
                socket: api_socket.clone(),
                pid: std::process::id(),
                store: std::fs::canonicalize(&ctx.store_dir).unwrap_or_else(|_| ctx.store_dir.clone()),
            },
        )
        .with_context(|| format!("cannot write {}", access::endpoint_path(&state_dir).display()))?;
        tracing::info!(%addr, socket = ?api_socket, token_file = %token_path.display(), "control plane and agents' endpoint listening");
        let notify = format!(
            "{} hook --url http://{addr}{} </dev/null",
            exe.display(),
            http::tmux_path(signals.tmux_secret())
        );
        let tmux = Tmux::new(&tmux_socket).with_notify(notify);
        if let Err(e) = tmux.install_hooks().await {
            tracing::warn!(error = %e, "cannot install the tmux notifications; relying on resync");
        }
        let context = Arc::new(Context {
            store: store.clone(),
            tmux,
            signals: signals.clone(),
            settings: Settings {
                state_dir: state_dir.clone(),
                shared_projects,
                agent_base_url: format!("http://{addr}"),
                exe: exe.clone(),
                resync,
                stop_step: Duration::from_secs(5),
                max_backoff: Duration::from_secs(60),
                checkpoint_every: Duration::from_secs(q.checkpoint_seconds.unwrap_or(60).max(1)),
            },
            memory: Default::default(),
            pids: Default::default(),
            quota: crate::controller::account::Hub::new(notifier),
        });
        let liveness = tokio::spawn(crate::controller::liveness(context.clone(), Duration::from_secs(2)));
        let sessions = tokio::spawn(run_session_controller(context.clone(), wake, resync, readiness.clone()));
        let tasks = tokio::spawn(task::run(context.clone(), dispatch, store_changed));
        let accounts = tokio::spawn(crate::controller::account::run(context.clone(), quota_settings, accounts_changed));
        let failover = tokio::spawn(crate::controller::failover::run(context.clone(), failover_settings));
        let janitor = tokio::spawn(crate::janitor::run(store.clone(), janitor_settings));
        let sync = syncer.map(|s| {
            let mut stop = stop_rx.clone();
            let readiness = readiness.clone();
            tokio::spawn(s.run(
                resync,
                async move {
                    let _ = stop.changed().await;
                },
                move |_| readiness.manifests_synced(),
            ))
        });
        (&mut shutdown).await;
        access::remove_endpoint(&state_dir);
        let _ = stop_tx.send(true);
        sessions.abort();
        liveness.abort();
        tasks.abort();
        janitor.abort();
        accounts.abort();
        failover.abort();
        for f in feeds {
            f.abort();
        }
        if let Some(s) = sync {
            let _ = s.await;
        }
        for s in servers {
            let _ = s.await;
        }
        if let Some(p) = &api_socket {
            let _ = std::fs::remove_file(p);
        }
        metrics().leader.set(0);
        // Lazily written events and progress reach the disk before the
        // lease goes.
        if let Err(e) = crate::store::flush_now() {
            tracing::warn!(error = %e, "cannot flush the store");
        }
        drop(lease);
        tracing::info!("daemon stopped (the agents keep running)");
        Ok::<(), anyhow::Error>(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// The session controller: the applier over the Sessions' watch, plus a
/// wake-up for each Session whose agent posted something.
async fn run_session_controller(
    ctx: Arc<Context>,
    mut wake: tokio::sync::mpsc::UnboundedReceiver<ObjectRef<Session>>,
    resync: Duration,
    readiness: Arc<Readiness>,
) {
    let (reader, writer) = reflector::store::<Session>();
    let watch = watch::<Session>(
        ctx.store.clone(),
        WatchConfig {
            namespace: None,
            resync,
        },
    );
    // Ready once the reflector holds the first listing. (Not with the
    // reader's `wait_until_ready`: the applier waits on it too, and it
    // wakes only one waiter.)
    let from_store = reflector::reflector(writer, watch)
        .inspect(move |e| {
            if matches!(e, Ok(kube::runtime::watcher::Event::InitDone)) {
                readiness.sessions_listed();
            }
        })
        .touched_objects()
        .map_ok(|s| ObjectRef::from(&s));
    let from_agents = futures::stream::poll_fn(move |cx| wake.poll_recv(cx)).map(Ok);
    let queue = futures::stream::select(from_store, from_agents);
    let reconcile = |s, c| Box::pin(session::reconcile(s, c));
    applier(
        reconcile,
        session::error_policy,
        ctx,
        reader,
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

/// Binds the control plane's Unix socket, mode 0600. A socket file left by
/// a daemon that died is replaced (the leader lease says none serves it).
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

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
    }
}

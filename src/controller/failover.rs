//! The failover controller: moves the sessions off an account that is near
//! its limit, exhausted, failing authentication or being drained, one swap
//! at a time (see docs/failover.md).
//!
//! Who owns what:
//! - the account controller (account.rs) decides each account's phase;
//! - this controller decides *where* a session runs: it writes the
//!   session's placement (`STATE/sessions/NS/NAME/placement.json`) under
//!   the swap lease, with the lease's fencing epoch, and follows the swap
//!   to its end (confirmed, or rolled back);
//! - the session controller executes: it reads the placement, stops the
//!   agent and relaunches it on the placed account with `--resume`;
//! - the task dispatcher replays an interrupted task (`status.replayOn`).
//!
//! A swap: take the swap lease (next epoch) → choose the target → preflight
//! it → per session, in parallel: wait for the turn boundary (bounded; none
//! when exhausted) → checkpoint → place on the target → confirm the resume
//! (`SessionStart` with `source: resume` and the same conversation id) →
//! replay → record the swap and release. A failed step puts the session
//! back where it was and marks the target as failed for a while.

use super::Context;
use super::checkpoint::{Checkpoint, unix_ms};
use super::runtime::Runtime;
use crate::api::{Account, AccountPhase, Kind, ObjectKey, Session, SessionPhase, Task, TaskPhase};
use crate::config::FailoverStrategy;
use crate::daemon::lease;
use crate::notify::{Notice, NoticeKind};
use crate::quota::{TargetCandidate, pick_target};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// How long a target that failed a swap is left out of the choice.
pub const TARGET_PENALTY: Duration = Duration::from_secs(600);

#[derive(Debug, Clone)]
pub struct FailoverSettings {
    pub turn_wait: Duration,
    pub confirm: Duration,
    pub strategy: FailoverStrategy,
    /// Typed into a session whose turn a usage limit cut short (empty: none).
    pub continue_message: String,
}

impl Default for FailoverSettings {
    fn default() -> Self {
        FailoverSettings {
            turn_wait: Duration::from_secs(120),
            confirm: Duration::from_secs(60),
            strategy: FailoverStrategy::Headroom,
            continue_message: "continue".into(),
        }
    }
}

// --------------------------------------------------------------- placement

/// Where the failover controller wants a session to run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Placement {
    pub account: String,
    pub from: Option<String>,
    pub epoch: u64,
    pub reason: String,
    /// `Swapping` while the swap runs, then `Done` or `RolledBack`.
    pub state: String,
    /// Unix milliseconds of the placement.
    pub at: u64,
    /// The Session's `spec.account` when placed: a later edit of it by a
    /// person wins over the placement.
    pub spec_account: Option<String>,
}

pub const SWAPPING: &str = "Swapping";
pub const DONE: &str = "Done";
pub const ROLLED_BACK: &str = "RolledBack";

fn placement_path(state_dir: &Path, key: &ObjectKey) -> PathBuf {
    super::runtime::dir(state_dir, key).join("placement.json")
}

impl Placement {
    pub fn load(state_dir: &Path, key: &ObjectKey) -> Option<Placement> {
        serde_json::from_slice(&std::fs::read(placement_path(state_dir, key)).ok()?).ok()
    }

    pub fn save(&self, state_dir: &Path, key: &ObjectKey) -> std::io::Result<()> {
        let p = placement_path(state_dir, key);
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d)?;
        }
        let data = serde_json::to_vec_pretty(self).expect("placement serializes");
        crate::fsutil::write_atomic(&p, &data, None, false)
    }

    /// The placement that applies to `s` now, if any.
    pub fn effective(state_dir: &Path, key: &ObjectKey, s: &Session) -> Option<Placement> {
        Placement::load(state_dir, key).filter(|p| p.spec_account == s.spec.account)
    }

    pub fn swapping(&self) -> bool {
        self.state == SWAPPING
    }
}

// ------------------------------------------------------------ swap records

/// One swap, as recorded in `STATE/swaps/EPOCH.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SwapRecord {
    pub epoch: u64,
    pub namespace: String,
    pub from: String,
    pub to: Option<String>,
    pub reason: String,
    pub sessions: Vec<String>,
    /// Unix milliseconds.
    pub started_at: u64,
    pub finished_at: Option<u64>,
    /// `Running`, `Succeeded`, `RolledBack`, `Failed`, `NoTarget`.
    pub result: String,
    pub message: String,
}

pub fn swaps_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("swaps")
}

impl SwapRecord {
    fn save(&self, state_dir: &Path) -> std::io::Result<()> {
        let d = swaps_dir(state_dir);
        std::fs::create_dir_all(&d)?;
        let data = serde_json::to_vec_pretty(self).expect("swap record serializes");
        crate::fsutil::write_atomic(
            &d.join(format!("{:010}.json", self.epoch)),
            &data,
            None,
            true,
        )
    }

    /// Every recorded swap, oldest epoch first.
    pub fn list(state_dir: &Path) -> Vec<SwapRecord> {
        let mut out: Vec<SwapRecord> = std::fs::read_dir(swaps_dir(state_dir))
            .into_iter()
            .flatten()
            .flatten()
            // Hidden files are atomic writes under way (or left by a crash).
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .filter_map(|e| serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok())
            .collect();
        out.sort_by_key(|r: &SwapRecord| r.epoch);
        out
    }
}

// ---------------------------------------------------------- manual request

/// A failover asked for by hand (`claude-failover failover`, the API).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FailoverRequest {
    pub account: String,
    pub to: Option<String>,
    #[serde(default)]
    pub requested_at: Option<crate::api::Time>,
}

fn requests_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("failover-requests")
}

/// Records a request for the controller (durably; it is taken at once).
pub fn request(state_dir: &Path, ns: &str, account: &str, to: Option<&str>) -> std::io::Result<()> {
    let d = requests_dir(state_dir).join(ns);
    std::fs::create_dir_all(&d)?;
    let r = FailoverRequest {
        account: account.into(),
        to: to.map(str::to_string),
        requested_at: Some(crate::api::now()),
    };
    crate::fsutil::write_atomic(
        &d.join(format!("{account}.json")),
        &serde_json::to_vec_pretty(&r).expect("request serializes"),
        None,
        true,
    )
}

fn pending_requests(state_dir: &Path) -> Vec<(String, FailoverRequest, PathBuf)> {
    let mut out = Vec::new();
    for ns in std::fs::read_dir(requests_dir(state_dir))
        .into_iter()
        .flatten()
        .flatten()
    {
        let ns_name = ns.file_name().to_string_lossy().into_owned();
        for f in std::fs::read_dir(ns.path()).into_iter().flatten().flatten() {
            if f.file_name().to_string_lossy().starts_with('.') {
                continue; // a request being written
            }
            let p = f.path();
            match std::fs::read(&p)
                .ok()
                .and_then(|b| serde_json::from_slice::<FailoverRequest>(&b).ok())
            {
                Some(r) => out.push((ns_name.clone(), r, p)),
                None => {
                    tracing::warn!(file = %p.display(), "unreadable failover request; removed");
                    let _ = std::fs::remove_file(&p);
                }
            }
        }
    }
    out
}

// -------------------------------------------------------------- controller

/// What the controller remembers between passes (not across restarts:
/// everything that must survive lives in the state dir).
#[derive(Default)]
struct Memory {
    /// Accounts we already said have no target, per phase episode.
    no_target: HashMap<ObjectKey, AccountPhase>,
    /// The failure (time) after which a continue message was typed.
    continued: HashMap<ObjectKey, SystemTime>,
}

fn ns_of(o: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> String {
    o.namespace
        .clone()
        .unwrap_or_else(|| crate::api::DEFAULT_NAMESPACE.into())
}

fn skey(s: &Session) -> ObjectKey {
    ObjectKey::new(
        Kind::Session,
        &ns_of(&s.metadata),
        s.metadata.name.as_deref().unwrap_or_default(),
    )
}

fn akey(ns: &str, name: &str) -> ObjectKey {
    ObjectKey::new(Kind::Account, ns, name)
}

fn record(ctx: &Context, key: &ObjectKey, warning: bool, reason: &str, message: &str) {
    super::record(ctx, key, warning, reason, message, "failover-controller");
}

/// Wakes the controller when a request lands in `STATE/failover-requests`
/// (written by the CLI from another process, or by the API).
fn watch_requests(ctx: &Arc<Context>) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher;
    let dir = requests_dir(&ctx.settings.state_dir);
    std::fs::create_dir_all(&dir).ok()?;
    let c = ctx.clone();
    let mut w = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if crate::fsutil::is_change(&res) {
            c.quota.wake_failover.notify_one();
        }
    })
    .ok()?;
    w.watch(&dir, notify::RecursiveMode::Recursive).ok()?;
    Some(w)
}

/// Runs until the process ends.
pub async fn run(ctx: Arc<Context>, st: FailoverSettings) {
    let mut mem = Memory::default();
    let _requests = watch_requests(&ctx);
    // A swap lease left active by a daemon that died after its swap's
    // last step: nothing to finish, only to say so.
    match lease::clear_stale_swap(&ctx.settings.state_dir) {
        Ok(Some(old)) => {
            tracing::warn!(epoch = old.epoch, holder = %old.holder, "the swap lease was left active by a daemon that died; released");
            if let Some(mut r) = SwapRecord::list(&ctx.settings.state_dir)
                .into_iter()
                .find(|r| r.epoch == old.epoch && r.result == "Running")
            {
                r.result = "Interrupted".into();
                r.message = format!("its daemon ({}) died during the swap", old.holder);
                let _ = r.save(&ctx.settings.state_dir);
            }
        }
        Ok(None) => {}
        Err(e) => tracing::warn!(error = %e, "cannot check the swap lease"),
    }
    loop {
        let started = std::time::Instant::now();
        let result = pass(&ctx, &st, &mut mem).await;
        crate::metrics::metrics().observe_reconcile(
            "failover",
            started.elapsed().as_secs_f64(),
            result.is_err(),
        );
        if let Err(e) = result {
            tracing::warn!(error = %e, "failover pass failed; retrying");
        }
        tokio::select! {
            _ = ctx.quota.wake_failover.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// Why sessions leave an account, if they must.
fn reason_to_leave(phase: AccountPhase) -> Option<&'static str> {
    match phase {
        AccountPhase::NearLimit => Some("NearLimit"),
        AccountPhase::Exhausted => Some("Exhausted"),
        AccountPhase::Unavailable => Some("AuthenticationFailed"),
        AccountPhase::Suspended => Some("Drain"),
        AccountPhase::Available => None,
    }
}

fn phase_of(a: &Account) -> AccountPhase {
    a.status
        .as_ref()
        .and_then(|s| s.phase)
        .unwrap_or(AccountPhase::Available)
}

/// Sessions running on `account` that are not being moved already.
fn sessions_on<'a>(
    ctx: &Context,
    sessions: &'a [Session],
    ns: &str,
    account: &str,
) -> Vec<&'a Session> {
    sessions
        .iter()
        .filter(|s| ns_of(&s.metadata) == ns)
        .filter(|s| s.metadata.deletion_timestamp.is_none() && !s.spec.suspend)
        .filter(|s| {
            s.status
                .as_ref()
                .is_some_and(|st| st.account.as_deref() == Some(account) && st.pid.is_some())
        })
        .filter(|s| {
            Placement::effective(&ctx.settings.state_dir, &skey(s), s)
                .is_none_or(|p| p.account == account && !p.swapping())
        })
        .collect()
}

async fn pass(ctx: &Arc<Context>, st: &FailoverSettings, mem: &mut Memory) -> anyhow::Result<()> {
    let state_dir = ctx.settings.state_dir.clone();
    let accounts = ctx.store.api::<Account>(None).list()?;
    let sessions = ctx.store.api::<Session>(None).list()?;

    // 0. A swap whose daemon died in the middle: finish following it.
    let orphans: Vec<&Session> = sessions
        .iter()
        .filter(|s| Placement::effective(&state_dir, &skey(s), s).is_some_and(|p| p.swapping()))
        .collect();
    if !orphans.is_empty() {
        resume_interrupted(ctx, st, &orphans).await?;
        return Ok(());
    }

    // 1. Requests made by hand.
    for (ns, req, file) in pending_requests(&state_dir) {
        let on: Vec<Session> = sessions_on(ctx, &sessions, &ns, &req.account)
            .into_iter()
            .cloned()
            .collect();
        if !accounts
            .iter()
            .any(|a| ns_of(&a.metadata) == ns && a.metadata.name.as_deref() == Some(&req.account))
        {
            tracing::warn!(account = %req.account, namespace = %ns, "failover requested for an unknown account");
            let _ = std::fs::remove_file(&file);
            continue;
        }
        if on.is_empty() {
            record(
                ctx,
                &akey(&ns, &req.account),
                false,
                "FailoverSkipped",
                "failover requested, but no session runs on this account",
            );
            let _ = std::fs::remove_file(&file);
            continue;
        }
        // The request goes once the swap is over: a daemon dying in the
        // middle leaves it for the next leader.
        let mv = Move {
            accounts: &accounts,
            ns: &ns,
            from: &req.account,
            reason: "Manual",
            to: req.to.as_deref(),
            sessions: on,
        };
        swap(ctx, st, mem, mv).await?;
        let _ = std::fs::remove_file(&file);
    }

    // 2. Accounts sessions must leave.
    for a in &accounts {
        let ns = ns_of(&a.metadata);
        let name = a.metadata.name.clone().unwrap_or_default();
        let phase = phase_of(a);
        let Some(reason) = reason_to_leave(phase) else {
            mem.no_target.remove(&akey(&ns, &name));
            continue;
        };
        let on: Vec<Session> = sessions_on(ctx, &sessions, &ns, &name)
            .into_iter()
            .cloned()
            .collect();
        if on.is_empty() {
            continue;
        }
        // Nothing changed since we found no target: wait for a change.
        if mem.no_target.get(&akey(&ns, &name)) == Some(&phase)
            && !accounts.iter().any(|o| {
                ns_of(&o.metadata) == ns
                    && o.metadata.name != a.metadata.name
                    && phase_of(o) == AccountPhase::Available
                    && !ctx
                        .quota
                        .excluded(&ns, o.metadata.name.as_deref().unwrap_or_default())
            })
        {
            continue;
        }
        let mv = Move {
            accounts: &accounts,
            ns: &ns,
            from: &name,
            reason,
            to: None,
            sessions: on,
        };
        swap(ctx, st, mem, mv).await?;
    }

    // 3. Sessions whose turn a usage limit cut short, back on a usable
    //    account with nothing to replay: continue.
    continue_waiting(ctx, st, mem, &accounts, &sessions).await?;
    Ok(())
}

fn candidates(ctx: &Context, accounts: &[Account], ns: &str) -> Vec<TargetCandidate> {
    accounts
        .iter()
        .filter(|a| ns_of(&a.metadata) == ns && a.metadata.deletion_timestamp.is_none())
        .map(|a| {
            let name = a.metadata.name.clone().unwrap_or_default();
            let usage = a.status.as_ref().and_then(|s| s.usage.clone());
            let used = |w: Option<&crate::api::UsageWindow>| w.map_or(0.0, |w| w.utilization);
            let headroom = (f64::from(a.spec.thresholds.five_hour)
                - used(usage.as_ref().and_then(|u| u.five_hour.as_ref())))
            .min(
                f64::from(a.spec.thresholds.seven_day)
                    - used(usage.as_ref().and_then(|u| u.seven_day.as_ref())),
            );
            TargetCandidate {
                excluded: ctx.quota.excluded(ns, &name),
                name,
                phase: phase_of(a),
                priority: a.spec.priority,
                headroom,
            }
        })
        .collect()
}

/// Checks the target can take `s`: its config dir seeded for the workdir,
/// credentials present, the conversation reachable from it.
fn preflight(ctx: &Context, target: &Account, s: &Session) -> Result<(), String> {
    let dir = crate::fsutil::expand_home(&target.spec.config_dir);
    let workdir = std::fs::canonicalize(crate::fsutil::expand_home(&s.spec.workdir))
        .map_err(|e| format!("workdir {}: {e}", s.spec.workdir))?;
    let api_key = crate::agent::seed::session_api_key(s);
    crate::agent::seed::seed_for_session(&dir, &workdir, s, &ctx.settings.shared_projects)
        .map_err(|e| format!("cannot prepare {}: {e}", dir.display()))?;
    let has_credentials = crate::quota::poll::access_token(&dir).is_some()
        || api_key.is_some()
        || s.spec.agent.env.contains_key("CLAUDE_CODE_OAUTH_TOKEN")
        || std::env::var_os("CLAUDE_CODE_OAUTH_TOKEN").is_some();
    if !has_credentials {
        return Err(format!(
            "no credentials for account {}: neither {}/.credentials.json nor an API key or OAuth token in the environment",
            target.metadata.name.as_deref().unwrap_or_default(),
            dir.display()
        ));
    }
    let projects = dir.join("projects");
    let linked = std::fs::canonicalize(&projects).ok()
        == std::fs::canonicalize(&ctx.settings.shared_projects).ok();
    if !linked {
        return Err(format!(
            "{} does not lead to the shared transcripts",
            projects.display()
        ));
    }
    Ok(())
}

/// Whether the session's agent confirmed it runs on `target`, resumed.
fn confirmed(
    ctx: &Context,
    key: &ObjectKey,
    target: &str,
    since: SystemTime,
    cp: &Checkpoint,
    resumable: bool,
) -> bool {
    let rt = Runtime::load(&ctx.settings.state_dir, key);
    if rt.account.as_deref() != Some(target) {
        return false;
    }
    let sig = ctx.signals.get(key);
    let Some((source, at)) = &sig.session_start else {
        return false;
    };
    if *at < since {
        return false;
    }
    if resumable {
        source == "resume" && sig.agent_session_id.as_deref() == Some(cp.agent_session_id.as_str())
    } else {
        source == "startup" || source == "resume"
    }
}

fn checkpoint_of(ctx: &Context, s: &Session, tasks: &[Task]) -> Checkpoint {
    let key = skey(s);
    let rt = Runtime::load(&ctx.settings.state_dir, &key);
    let st = s.status.clone().unwrap_or_default();
    let current_task = tasks
        .iter()
        .find(|t| {
            t.metadata.namespace.as_deref() == Some(key.namespace.as_str())
                && t.status.as_ref().is_some_and(|ts| {
                    matches!(ts.phase, Some(TaskPhase::Dispatched | TaskPhase::Running))
                        && ts.session.as_deref() == Some(key.name.as_str())
                        || ts.phase == Some(TaskPhase::Pending)
                            && ts.replay_on.as_deref() == Some(key.name.as_str())
                })
        })
        .and_then(|t| t.metadata.name.clone());
    Checkpoint {
        session: key.name.clone(),
        namespace: key.namespace.clone(),
        agent_session_id: rt.agent_session_id,
        account: st.account,
        workdir: s.spec.workdir.clone(),
        current_task,
        at: unix_ms(SystemTime::now()),
        ..Default::default()
    }
    .from_signals(&ctx.signals.get(&key))
}

/// The swap of a lease that was never released: its daemon died. Its
/// record says so (its end is unknown: no `finishedAt`).
fn mark_interrupted(state_dir: &Path, lease: &lease::SwapLease) {
    let Some(old) = &lease.interrupted else {
        return;
    };
    tracing::warn!(epoch = old.epoch, holder = %old.holder, "the previous swap was interrupted (its daemon died)");
    if let Some(mut r) = SwapRecord::list(state_dir)
        .into_iter()
        .find(|r| r.epoch == old.epoch && r.result == "Running")
    {
        r.result = "Interrupted".into();
        r.message = format!(
            "its daemon ({}) died during the swap; epoch {} took over",
            old.holder, lease.record.epoch
        );
        if let Err(e) = r.save(state_dir) {
            tracing::warn!(error = %e, "cannot update the interrupted swap's record");
        }
    }
}

/// `claude_failover_failovers_total{reason,result}`: the reason as a
/// bounded label (a drain counts as a manual one).
fn count_failover(reason: &str, result: &str) {
    let label = match reason {
        "NearLimit" => "near_limit",
        "Exhausted" => "exhausted",
        "AuthenticationFailed" => "auth",
        _ => "manual",
    };
    crate::metrics::metrics()
        .failovers_total
        .with_label_values(&[label, result])
        .inc();
}

/// Runs `f` under the swap lease, released whatever `f` returns.
async fn under_lease<T>(
    state_dir: &Path,
    f: impl AsyncFnOnce(&lease::SwapLease) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let lease = lease::acquire_swap(state_dir).await?;
    mark_interrupted(state_dir, &lease);
    let result = f(&lease).await;
    lease.release(state_dir)?;
    result
}

/// What one swap moves: `sessions` of account `from` in `ns`, to `to` or
/// the best target among `accounts`.
struct Move<'a> {
    accounts: &'a [Account],
    ns: &'a str,
    from: &'a str,
    reason: &'a str,
    to: Option<&'a str>,
    sessions: Vec<Session>,
}

async fn swap(
    ctx: &Arc<Context>,
    st: &FailoverSettings,
    mem: &mut Memory,
    mv: Move<'_>,
) -> anyhow::Result<()> {
    let state_dir = ctx.settings.state_dir.clone();
    under_lease(&state_dir, async |lease| {
        swap_locked(ctx, st, mem, mv, lease).await
    })
    .await
}

async fn swap_locked(
    ctx: &Arc<Context>,
    st: &FailoverSettings,
    mem: &mut Memory,
    mv: Move<'_>,
    lease: &lease::SwapLease,
) -> anyhow::Result<()> {
    let Move {
        accounts,
        ns,
        from,
        reason,
        to,
        sessions,
    } = mv;
    let state_dir = ctx.settings.state_dir.clone();
    let from_key = akey(ns, from);
    let epoch = lease.record.epoch;
    crate::metrics::metrics().swap_lease_epoch.set(epoch as i64);
    let started = std::time::Instant::now();
    let started_at = SystemTime::now();
    // The accounts as they are now (the lease may have taken a while).
    let accounts = ctx
        .store
        .api::<Account>(None)
        .list()
        .unwrap_or_else(|_| accounts.to_vec());
    let cands = candidates(ctx, &accounts, ns);
    let target = match to {
        Some(t) => cands
            .iter()
            .find(|c| c.name == t && c.name != from)
            .filter(|c| {
                !matches!(
                    c.phase,
                    AccountPhase::Exhausted | AccountPhase::Unavailable | AccountPhase::Suspended
                )
            })
            .map(|c| c.name.clone()),
        None => pick_target(&cands, from, st.strategy),
    };
    let names: Vec<String> = sessions
        .iter()
        .map(|s| s.metadata.name.clone().unwrap_or_default())
        .collect();
    let mut rec = SwapRecord {
        epoch,
        namespace: ns.into(),
        from: from.into(),
        to: target.clone(),
        reason: reason.into(),
        sessions: names.clone(),
        started_at: unix_ms(started_at),
        finished_at: None,
        result: "Running".into(),
        message: String::new(),
    };
    let Some(target) = target else {
        let phase = accounts
            .iter()
            .find(|a| ns_of(&a.metadata) == ns && a.metadata.name.as_deref() == Some(from))
            .map(phase_of)
            .unwrap_or_default();
        let why = match to {
            Some(t) => format!(
                "account {t} cannot take sessions (missing, the same, exhausted, unavailable or suspended)"
            ),
            None => "no other account is available".into(),
        };
        if mem.no_target.insert(from_key.clone(), phase) != Some(phase) || to.is_some() {
            let waiting = if phase == AccountPhase::Exhausted {
                "; its sessions wait for the window to reset"
            } else {
                "; its sessions stay"
            };
            count_failover(reason, "failed");
            record(
                ctx,
                &from_key,
                true,
                "NoFailoverTarget",
                &format!("{why}{waiting}"),
            );
            ctx.quota.notifier.send(Notice {
                kind: NoticeKind::FailoverFailed,
                object: from_key.to_string(),
                message: format!(
                    "cannot move {} session(s) off {from}: {why}{waiting}",
                    names.len()
                ),
            });
        }
        // Nothing was done under this epoch: it goes unrecorded.
        return Ok(());
    };
    rec.save(&state_dir)?;
    let summary = format!(
        "moving {} session(s) ({}) from {from} to {target} (swap epoch {epoch}, reason {reason})",
        names.len(),
        names.join(", ")
    );
    record(
        ctx,
        &from_key,
        reason != "Manual" && reason != "Drain",
        "FailoverStarted",
        &summary,
    );
    ctx.quota.notifier.send(Notice {
        kind: NoticeKind::FailoverStarted,
        object: from_key.to_string(),
        message: summary.clone(),
    });

    // Preflight, once per session (workdirs differ).
    let target_acct = accounts
        .iter()
        .find(|a| ns_of(&a.metadata) == ns && a.metadata.name.as_deref() == Some(&target))
        .cloned()
        .expect("the target is one of the accounts");
    let mut failure = None;
    for s in &sessions {
        if let Err(why) = preflight(ctx, &target_acct, s) {
            failure = Some(why);
            break;
        }
    }
    let outcome: Vec<Result<(), String>> = if let Some(why) = failure {
        ctx.quota.exclude(ns, &target);
        record(
            ctx,
            &akey(ns, &target),
            true,
            "PreflightFailed",
            &format!(
                "{why}; not a failover target for {}s",
                TARGET_PENALTY.as_secs()
            ),
        );
        vec![Err(format!("preflight of {target} failed: {why}"))]
    } else {
        let tasks = ctx.store.api::<Task>(None).list()?;
        let exhausted = reason == "Exhausted" || reason == "AuthenticationFailed";
        let moves = sessions
            .iter()
            .map(|s| move_session(ctx, st, s, &tasks, from, &target, epoch, reason, exhausted));
        futures::future::join_all(moves).await
    };

    let failed: Vec<&String> = outcome.iter().filter_map(|r| r.as_ref().err()).collect();
    let elapsed = started.elapsed();
    rec.finished_at = Some(unix_ms(SystemTime::now()));
    let result = if failed.is_empty() {
        rec.result = "Succeeded".into();
        rec.message = format!(
            "{} session(s) resumed on {target} in {:.1}s",
            names.len(),
            elapsed.as_secs_f64()
        );
        record(ctx, &from_key, false, "FailoverDone", &rec.message);
        ctx.quota.notifier.send(Notice {
            kind: NoticeKind::FailoverDone,
            object: from_key.to_string(),
            message: format!(
                "{} from {from} to {target}: {}",
                names.join(", "),
                rec.message
            ),
        });
        "succeeded"
    } else {
        ctx.quota.exclude(ns, &target);
        rec.result = if failed.len() == outcome.len() {
            "Failed"
        } else {
            "RolledBack"
        }
        .into();
        rec.message = failed
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("; ");
        record(ctx, &from_key, true, "FailoverFailed", &rec.message);
        record(
            ctx,
            &akey(ns, &target),
            true,
            "SwapTargetFailed",
            &format!(
                "a swap to this account failed ({}); not a target for {}s",
                rec.message,
                TARGET_PENALTY.as_secs()
            ),
        );
        ctx.quota.notifier.send(Notice {
            kind: NoticeKind::FailoverFailed,
            object: from_key.to_string(),
            message: format!("from {from} to {target}: {}", rec.message),
        });
        "rolled_back"
    };
    count_failover(reason, result);
    crate::metrics::metrics()
        .swap_duration_seconds
        .observe(elapsed.as_secs_f64());
    tracing::debug!(
        epoch,
        result,
        elapsed_ms = elapsed.as_millis() as u64,
        "swap finished"
    );
    rec.save(&state_dir)?;
    Ok(())
}

/// One session's part of a swap. Err: what failed (it was rolled back).
#[allow(clippy::too_many_arguments)]
async fn move_session(
    ctx: &Arc<Context>,
    st: &FailoverSettings,
    s: &Session,
    tasks: &[Task],
    from: &str,
    target: &str,
    epoch: u64,
    reason: &str,
    exhausted: bool,
) -> Result<(), String> {
    let key = skey(s);
    let state_dir = &ctx.settings.state_dir;
    // 1. The turn boundary (bounded; an exhausted account has no turn to finish).
    if !exhausted {
        let deadline = tokio::time::Instant::now() + st.turn_wait;
        loop {
            let busy = ctx
                .store
                .api::<Session>(Some(&key.namespace))
                .get(&key.name)
                .ok()
                .flatten()
                .and_then(|s| s.status)
                .is_some_and(|st| st.phase == Some(SessionPhase::Busy));
            if !busy {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                record(
                    ctx,
                    &key,
                    true,
                    "TurnWaitExpired",
                    &format!(
                        "the turn did not end within {}s: interrupting it",
                        st.turn_wait.as_secs()
                    ),
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // 2. Checkpoint.
    let cp = checkpoint_of(ctx, s, tasks);
    cp.save(state_dir, &key)
        .map_err(|e| format!("{}: checkpoint: {e}", key.name))?;
    let resumable = crate::agent::seed::transcript_resumable(
        &ctx.settings.shared_projects,
        &cp.agent_session_id,
    );
    // 3. Place it on the target: the session controller stops the agent
    //    and relaunches it there with --resume.
    let since = SystemTime::now();
    let mut placement = Placement {
        account: target.into(),
        from: Some(from.into()),
        epoch,
        reason: reason.into(),
        state: SWAPPING.into(),
        at: unix_ms(since),
        spec_account: s.spec.account.clone(),
    };
    placement
        .save(state_dir, &key)
        .map_err(|e| format!("{}: placement: {e}", key.name))?;
    record(
        ctx,
        &key,
        false,
        "Swapping",
        &format!("moving from {from} to {target} (swap epoch {epoch}, reason {reason})"),
    );
    ctx.signals.poke(&key);
    // 4. Confirm the resume.
    let deadline = tokio::time::Instant::now() + st.confirm;
    let ok = loop {
        if confirmed(ctx, &key, target, since, &cp, resumable) {
            break true;
        }
        if tokio::time::Instant::now() >= deadline {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    if !ok {
        // 5'. Roll back: where it was.
        placement.account = from.into();
        placement.state = ROLLED_BACK.into();
        let _ = placement.save(state_dir, &key);
        ctx.signals.poke(&key);
        let why = format!(
            "{}: the agent did not confirm its resume on {target} within {}s",
            key.name,
            st.confirm.as_secs()
        );
        record(ctx, &key, true, "SwapRolledBack", &why);
        return Err(why);
    }
    placement.state = DONE.into();
    placement
        .save(state_dir, &key)
        .map_err(|e| format!("{}: placement: {e}", key.name))?;
    ctx.signals.poke(&key);
    let how = if resumable {
        format!("resumed conversation {}", cp.agent_session_id)
    } else {
        "started (nothing to resume yet)".into()
    };
    record(
        ctx,
        &key,
        false,
        "Swapped",
        &format!("now on {target}: {how} (swap epoch {epoch})"),
    );
    // 5. Replay.
    replay(ctx, st, &key, &cp, tasks).await;
    Ok(())
}

/// After a swap: the interrupted task goes back to this session; a turn
/// cut short with no task gets the continue message.
async fn replay(
    ctx: &Arc<Context>,
    st: &FailoverSettings,
    key: &ObjectKey,
    cp: &Checkpoint,
    tasks: &[Task],
) {
    if let Some(task) = &cp.current_task {
        // The dispatcher replays it (status.replayOn) once the session is idle.
        if tasks.iter().any(|t| {
            t.metadata.name.as_deref() == Some(task.as_str())
                && t.metadata.namespace.as_deref() == Some(key.namespace.as_str())
        }) {
            let api = ctx.store.api::<Task>(Some(&key.namespace));
            if let Ok(Some(now)) = api.get(task)
                && now.status.as_ref().and_then(|s| s.phase) == Some(TaskPhase::Pending)
            {
                let mut status = now.status.clone().unwrap_or_default();
                if status.replay_on.as_deref() != Some(key.name.as_str()) {
                    status.replay_on = Some(key.name.clone());
                    let _ = api.patch_status(task, &status);
                }
            }
            record(
                ctx,
                key,
                false,
                "ReplayQueued",
                &format!("task {task} will be typed again here once the agent is idle"),
            );
        }
        return;
    }
    if cp.interrupted_by.as_deref() == Some("rate_limit") && !st.continue_message.is_empty() {
        let _ = type_continue(ctx, key, &st.continue_message, Duration::from_secs(30)).await;
    }
}

/// Types the continue message into an idle session (dismissing a usage
/// limit dialog first). True when typed.
async fn type_continue(
    ctx: &Context,
    key: &ObjectKey,
    message: &str,
    limit: Duration,
) -> anyhow::Result<bool> {
    let name = super::session::tmux_name(key);
    let Some(pane) = ctx.tmux.pane(&name).await?.filter(|p| !p.dead) else {
        return Ok(false);
    };
    let screen = ctx.tmux.capture(&pane.id, false).await?;
    if crate::agent::screen::classify(&screen) == crate::agent::screen::Screen::UsageLimitDialog {
        ctx.tmux.send_keys(&pane.id, &["Escape"]).await?;
    }
    if !super::task::wait_composer_empty(ctx, &pane.id, limit).await? {
        return Ok(false);
    }
    super::task::type_then_enter(ctx, &pane.id, message).await?;
    record(
        ctx,
        key,
        false,
        "Continued",
        &format!("typed {message:?}: the turn a usage limit cut short goes on"),
    );
    Ok(true)
}

/// A swap whose daemon died: its placements are followed to the end under
/// a new epoch (confirmed or rolled back).
async fn resume_interrupted(
    ctx: &Arc<Context>,
    st: &FailoverSettings,
    orphans: &[&Session],
) -> anyhow::Result<()> {
    let state_dir = ctx.settings.state_dir.clone();
    under_lease(&state_dir.clone(), async |lease| {
        resume_locked(ctx, st, orphans, lease.record.epoch).await
    })
    .await
}

async fn resume_locked(
    ctx: &Arc<Context>,
    st: &FailoverSettings,
    orphans: &[&Session],
    epoch: u64,
) -> anyhow::Result<()> {
    let state_dir = ctx.settings.state_dir.clone();
    let tasks = ctx.store.api::<Task>(None).list()?;
    for s in orphans {
        let key = skey(s);
        let Some(mut p) = Placement::effective(&state_dir, &key, s) else {
            continue;
        };
        let cp =
            Checkpoint::load(&state_dir, &key).unwrap_or_else(|| checkpoint_of(ctx, s, &tasks));
        let resumable = crate::agent::seed::transcript_resumable(
            &ctx.settings.shared_projects,
            &cp.agent_session_id,
        );
        let since = SystemTime::UNIX_EPOCH + Duration::from_millis(p.at);
        let deadline = tokio::time::Instant::now() + st.confirm;
        let ok = loop {
            if confirmed(ctx, &key, &p.account, since, &cp, resumable) {
                break true;
            }
            // Signals are in memory: after a restart a running agent on the
            // target with the same conversation is the confirmation.
            let rt = Runtime::load(&state_dir, &key);
            if rt.account.as_deref() == Some(p.account.as_str())
                && s.status.as_ref().and_then(|st| st.pid).is_some()
                && rt.agent_session_id == cp.agent_session_id
                && rt.launched_at * 1000 >= p.at.saturating_sub(1000)
            {
                break true;
            }
            if tokio::time::Instant::now() >= deadline {
                break false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let from = p.from.clone();
        if ok {
            p.state = DONE.into();
            record(
                ctx,
                &key,
                false,
                "Swapped",
                &format!(
                    "now on {} (swap of epoch {} finished under epoch {epoch})",
                    p.account, p.epoch
                ),
            );
        } else {
            let target = std::mem::replace(&mut p.account, from.clone().unwrap_or_default());
            p.state = ROLLED_BACK.into();
            ctx.quota.exclude(&key.namespace, &target);
            record(
                ctx,
                &key,
                true,
                "SwapRolledBack",
                &format!(
                    "the interrupted swap to {target} never confirmed; back to {}",
                    p.account
                ),
            );
        }
        p.epoch = epoch;
        p.save(&state_dir, &key)?;
        ctx.signals.poke(&key);
        SwapRecord {
            epoch,
            namespace: key.namespace.clone(),
            from: from.unwrap_or_default(),
            to: Some(p.account.clone()),
            reason: "Recovery".into(),
            sessions: vec![key.name.clone()],
            started_at: unix_ms(SystemTime::now()),
            finished_at: Some(unix_ms(SystemTime::now())),
            result: if ok { "Succeeded" } else { "RolledBack" }.into(),
            message: "finished a swap interrupted by a daemon exit".into(),
        }
        .save(&state_dir)?;
    }
    Ok(())
}

/// Sessions whose last turn a usage limit cut short, now on an account
/// that is back, with no task to replay: the continue message.
async fn continue_waiting(
    ctx: &Arc<Context>,
    st: &FailoverSettings,
    mem: &mut Memory,
    accounts: &[Account],
    sessions: &[Session],
) -> anyhow::Result<()> {
    if st.continue_message.is_empty() {
        return Ok(());
    }
    let mut tasks = None;
    for s in sessions {
        let key = skey(s);
        let Some(status) = &s.status else { continue };
        let (Some(account), Some(_)) = (&status.account, status.pid) else {
            continue;
        };
        let usable = accounts.iter().any(|a| {
            ns_of(&a.metadata) == key.namespace
                && a.metadata.name.as_deref() == Some(account)
                && matches!(
                    phase_of(a),
                    AccountPhase::Available | AccountPhase::NearLimit
                )
        });
        if !usable
            || !matches!(
                status.phase,
                Some(SessionPhase::Idle | SessionPhase::Waiting)
            )
        {
            continue;
        }
        let sig = ctx.signals.get(&key);
        let Some((error, _, failed_at)) = &sig.last_failure else {
            continue;
        };
        let cut_short = error == "rate_limit"
            && sig.prompts.last().is_none_or(|(_, p)| failed_at >= p)
            && sig.last_stop.as_ref().is_none_or(|(_, s)| failed_at >= s);
        if !cut_short || mem.continued.get(&key) == Some(failed_at) {
            continue;
        }
        let tasks = match &tasks {
            Some(t) => t,
            None => tasks.insert(ctx.store.api::<Task>(None).list()?),
        };
        let has_task = tasks.iter().any(|t| {
            t.metadata.namespace.as_deref() == Some(key.namespace.as_str())
                && t.status.as_ref().is_some_and(|ts| {
                    ts.replay_on.as_deref() == Some(key.name.as_str())
                        && ts.phase == Some(TaskPhase::Pending)
                        || ts.session.as_deref() == Some(key.name.as_str())
                            && matches!(ts.phase, Some(TaskPhase::Dispatched | TaskPhase::Running))
                })
        });
        mem.continued.insert(key.clone(), *failed_at);
        if has_task {
            // The dispatcher replays the task; dismiss a limit dialog so it can.
            if let Some(pane) = ctx
                .tmux
                .pane(&super::session::tmux_name(&key))
                .await?
                .filter(|p| !p.dead)
            {
                let screen = ctx.tmux.capture(&pane.id, false).await?;
                if crate::agent::screen::classify(&screen)
                    == crate::agent::screen::Screen::UsageLimitDialog
                {
                    ctx.tmux.send_keys(&pane.id, &["Escape"]).await?;
                }
            }
            continue;
        }
        type_continue(ctx, &key, &st.continue_message, Duration::from_secs(10)).await?;
    }
    Ok(())
}

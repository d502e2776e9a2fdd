//! The account controller: fuses each account's usage signals into one
//! reading per window and sets its phase (see docs/failover.md).
//!
//! Signals, all pushed into the daemon or fetched by it:
//! - the statusLine feed of every live session on the account
//!   (`rate_limits`, subscription mode);
//! - the `StopFailure` hook with `error: rate_limit` (a hard limit) or
//!   `authentication_failed`;
//! - the budgeted poll of the usage endpoint (see [`crate::quota::poll`]);
//! - the token ledger of the account's transcripts (the projection).
//!
//! The fused reading, the phase and the hard limit are written to the
//! Account's status, which is also what a restarted daemon starts from.
//! A phase change wakes the failover controller.

use super::Context;
use crate::api::{
    Account, AccountLimit, AccountPhase, AccountStatus, AccountUsage, Kind, ObjectKey, Session,
    UsageWindow, set_condition,
};
use crate::daemon::signals::AgentSignals;
use crate::notify::{Notice, NoticeKind, Notifier};
use crate::quota::{AccountInputs, Limit, Reading, Window, fuse, jiff_of, phase};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

#[derive(Debug, Clone)]
pub struct QuotaSettings {
    pub stale: Duration,
    pub hysteresis: f64,
    pub poll_interval: Duration,
    pub usage_base_url: String,
}

impl Default for QuotaSettings {
    fn default() -> Self {
        QuotaSettings {
            stale: Duration::from_secs(900),
            hysteresis: 5.0,
            poll_interval: Duration::from_secs(300),
            usage_base_url: "https://api.anthropic.com".into(),
        }
    }
}

/// What one session's signals last contributed.
#[derive(Debug, Default, Clone)]
struct Seen {
    statusline: Option<SystemTime>,
    failure: Option<SystemTime>,
}

/// The in-memory side of one account (its durable side is its status).
#[derive(Debug, Default)]
struct Memory {
    readings: HashMap<Window, Vec<Reading>>,
    limit: Option<Limit>,
    auth_failed: Option<SystemTime>,
    seen: HashMap<ObjectKey, Seen>,
    /// A poll of the usage endpoint is in flight.
    polling: bool,
    /// The ledger's projection and when it was computed.
    ledger: Option<(std::time::Instant, Option<SystemTime>)>,
    /// The usage endpoint refused the token (told once).
    poll_refused: bool,
}

const READINGS_KEPT: usize = 32;

fn system(t: &crate::api::Time) -> SystemTime {
    SystemTime::from(t.0)
}

impl Memory {
    /// Starts from what an earlier run wrote.
    fn from_status(s: &AccountStatus) -> Memory {
        let mut m = Memory::default();
        if let Some(u) = &s.usage {
            for (w, r) in [
                (Window::FiveHour, &u.five_hour),
                (Window::SevenDay, &u.seven_day),
            ] {
                if let Some(r) = r {
                    m.push(
                        w,
                        Reading {
                            utilization: r.utilization,
                            resets_at: r.resets_at.as_ref().map(system),
                            source: r.source.trim_end_matches(" (window reset)").to_string(),
                            observed_at: system(&r.observed_at),
                        },
                    );
                }
            }
        }
        m.limit = s.limit.as_ref().map(|l| Limit {
            at: system(&l.at),
            resets_at: l.resets_at.as_ref().map(system),
            source: l.source.clone(),
        });
        m
    }

    fn push(&mut self, w: Window, r: Reading) {
        let v = self.readings.entry(w).or_default();
        v.push(r);
        if v.len() > READINGS_KEPT {
            v.remove(0);
        }
    }

    fn latest(&self, w: Window) -> Option<&Reading> {
        self.readings.get(&w)?.iter().max_by_key(|r| r.observed_at)
    }

    /// Takes in what one session's agent said since the last pass.
    fn absorb(&mut self, session: &ObjectKey, sig: &AgentSignals) {
        let mut seen = self.seen.get(session).cloned().unwrap_or_default();
        if let Some((v, t)) = &sig.statusline
            && seen.statusline != Some(*t)
        {
            seen.statusline = Some(*t);
            for (w, r) in crate::quota::from_statusline(v, *t) {
                self.push(w, r);
            }
        }
        // A subagent's or a helper's limit is the account's limit too.
        let newest_failure = [&sig.last_failure, &sig.side_failure]
            .into_iter()
            .flatten()
            .max_by_key(|(_, _, t)| *t);
        if let Some((error, _, t)) = newest_failure
            && seen.failure != Some(*t)
        {
            seen.failure = Some(*t);
            match error.as_str() {
                "rate_limit" => {
                    // When it resets: the transcript's limit entry says so
                    // (2.1.332), else the fullest window we know of.
                    let logged = sig
                        .transcript_path
                        .as_deref()
                        .and_then(|p| crate::agent::hooks::latest_limit(p.as_ref(), *t))
                        .and_then(|e| e.resets_at);
                    let fullest = Window::ALL
                        .iter()
                        .filter_map(|w| self.latest(*w))
                        .max_by(|a, b| a.utilization.total_cmp(&b.utilization));
                    self.limit = Some(Limit {
                        at: *t,
                        resets_at: logged
                            .or(fullest.and_then(|r| r.resets_at))
                            .filter(|r| r > t),
                        source: format!("StopFailure rate_limit in session {}", session.name),
                    });
                }
                "authentication_failed" => self.auth_failed = Some(*t),
                _ => {}
            }
        }
        if let (Some(failed), Some((_, stop))) = (self.auth_failed, &sig.last_stop)
            && *stop > failed
        {
            self.auth_failed = None;
        }
        self.seen.insert(session.clone(), seen);
    }

    /// When the 5-hour window reaches `threshold` at the pace of the
    /// readings of the current window (None: not rising, or too few).
    fn projection(&self, threshold: f64) -> Option<SystemTime> {
        let v = self.readings.get(&Window::FiveHour)?;
        let last = v.iter().max_by_key(|r| r.observed_at)?;
        let first = v
            .iter()
            .filter(|r| r.resets_at == last.resets_at)
            .min_by_key(|r| r.observed_at)?;
        let span = last.observed_at.duration_since(first.observed_at).ok()?;
        let rise = last.utilization - first.utilization;
        if span < Duration::from_secs(60) || rise <= 0.0 || last.utilization >= threshold {
            return None;
        }
        let per_sec = rise / span.as_secs_f64();
        let at =
            last.observed_at + Duration::from_secs_f64((threshold - last.utilization) / per_sec);
        // Past the reset the window starts over: no limit this window.
        match last.resets_at {
            Some(r) if at >= r => None,
            _ => Some(at),
        }
    }
}

/// Shared by the account and failover controllers.
pub struct Hub {
    memory: Mutex<HashMap<ObjectKey, Memory>>,
    /// Targets that failed a swap, until when.
    excluded: Mutex<HashMap<(String, String), SystemTime>>,
    /// Wakes the failover controller (an account changed phase, a request).
    pub wake_failover: tokio::sync::Notify,
    pub notifier: Notifier,
}

impl Hub {
    pub fn new(notifier: Notifier) -> Hub {
        Hub {
            memory: Mutex::new(HashMap::new()),
            excluded: Mutex::new(HashMap::new()),
            wake_failover: tokio::sync::Notify::new(),
            notifier,
        }
    }

    /// Whether `name` failed as a target recently.
    pub fn excluded(&self, ns: &str, name: &str) -> bool {
        self.excluded
            .lock()
            .expect("lock")
            .get(&(ns.to_string(), name.to_string()))
            .is_some_and(|until| SystemTime::now() < *until)
    }

    pub fn exclude(&self, ns: &str, name: &str) {
        self.excluded.lock().expect("lock").insert(
            (ns.to_string(), name.to_string()),
            SystemTime::now() + super::failover::TARGET_PENALTY,
        );
    }
}

fn ns_of(o: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> String {
    o.namespace
        .clone()
        .unwrap_or_else(|| crate::api::DEFAULT_NAMESPACE.into())
}

fn window_status(r: &Reading) -> UsageWindow {
    UsageWindow {
        utilization: (r.utilization * 10.0).round() / 10.0,
        resets_at: r.resets_at.map(|t| crate::api::Time(jiff_of(t))),
        source: r.source.clone(),
        observed_at: crate::api::Time(jiff_of(r.observed_at)),
    }
}

/// The status without the reading times: two statuses that differ only in
/// when the same values were seen are not worth a write (unless old).
fn without_times(s: &AccountStatus) -> AccountStatus {
    let mut s = s.clone();
    if let Some(u) = &mut s.usage {
        for w in [&mut u.five_hour, &mut u.seven_day].into_iter().flatten() {
            w.observed_at = crate::api::Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
        }
    }
    s
}

fn oldest_observed(s: &AccountStatus) -> Option<SystemTime> {
    let u = s.usage.as_ref()?;
    [&u.five_hour, &u.seven_day]
        .into_iter()
        .flatten()
        .map(|w| system(&w.observed_at))
        .min()
}

/// Runs until the process ends. `changed` is notified on Account and
/// Session changes; agents' signals wake it through the registry.
pub async fn run(ctx: Arc<Context>, st: QuotaSettings, changed: Arc<tokio::sync::Notify>) {
    loop {
        let started = std::time::Instant::now();
        let result = pass(&ctx, &st);
        crate::metrics::metrics().observe_reconcile(
            "account",
            started.elapsed().as_secs_f64(),
            result.is_err(),
        );
        let next = match result {
            Ok(next) => next,
            Err(e) => {
                tracing::warn!(error = %e, "account pass failed; retrying");
                Duration::from_secs(2)
            }
        };
        tokio::select! {
            _ = ctx.signals.quota_changed().notified() => {}
            _ = changed.notified() => {}
            _ = tokio::time::sleep(next) => {}
        }
    }
}

fn record(ctx: &Context, key: &ObjectKey, warning: bool, reason: &str, message: &str) {
    super::record(ctx, key, warning, reason, message, "account-controller");
}

/// One pass over every account; returns when the next is due without an
/// event (a reset time, a reading ageing out).
pub fn pass(ctx: &Arc<Context>, st: &QuotaSettings) -> Result<Duration, crate::store::StoreError> {
    let now = SystemTime::now();
    let accounts = ctx.store.api::<Account>(None).list()?;
    let sessions = ctx.store.api::<Session>(None).list()?;
    let mut next = Duration::from_secs(30);
    let mut wake_failover = false;
    let logins = Logins::of(&accounts);
    for a in &accounts {
        let ns = ns_of(&a.metadata);
        let name = a.metadata.name.clone().unwrap_or_default();
        let key = ObjectKey::new(Kind::Account, &ns, &name);
        let before = a.status.clone().unwrap_or_default();
        let previous = before.phase.unwrap_or_default();
        let live: Vec<ObjectKey> = sessions
            .iter()
            .filter(|s| {
                ns_of(&s.metadata) == ns
                    && s.status.as_ref().is_some_and(|st| {
                        st.account.as_deref() == Some(name.as_str()) && st.pid.is_some()
                    })
            })
            .map(|s| {
                ObjectKey::new(
                    Kind::Session,
                    &ns,
                    s.metadata.name.as_deref().unwrap_or_default(),
                )
            })
            .collect();
        let (inputs, projection) = {
            let mut all = ctx.quota.memory.lock().expect("lock");
            let m = all
                .entry(key.clone())
                .or_insert_with(|| Memory::from_status(&before));
            for s in &live {
                m.absorb(s, &ctx.signals.get(s));
            }
            let mut inputs = AccountInputs {
                suspend: a.spec.suspend,
                thresholds: a.spec.thresholds,
                hysteresis: st.hysteresis,
                five_hour: m
                    .readings
                    .get(&Window::FiveHour)
                    .and_then(|r| fuse(r, now, st.stale)),
                seven_day: m
                    .readings
                    .get(&Window::SevenDay)
                    .and_then(|r| fuse(r, now, st.stale)),
                limit: m.limit.clone(),
                auth_failed: m.auth_failed,
                previous,
            };
            // A limit of unknown end learns it from a later poll.
            if let Some(l) = m.limit.as_mut()
                && l.resets_at.is_none()
                && let Some(end) = Window::ALL
                    .iter()
                    .filter_map(|w| m.readings.get(w)?.iter().max_by_key(|r| r.observed_at))
                    .filter(|r| {
                        r.source == "poll" && r.observed_at > l.at && r.utilization >= 100.0
                    })
                    .filter_map(|r| r.resets_at)
                    .max()
            {
                l.resets_at = Some(end);
                inputs.limit = Some(l.clone());
            }
            if let Some(l) = &m.limit
                && (!l.holds(now) || inputs.lifted())
            {
                m.limit = None;
                inputs.limit = None;
            }
            // The poll: for an account no live session reports on, or one
            // whose limit has no known end. Budgeted per account.
            let config_dir = crate::fsutil::expand_home(&a.spec.config_dir);
            let wants_poll =
                live.is_empty() || inputs.limit.as_ref().is_some_and(|l| l.resets_at.is_none());
            if wants_poll && !m.polling && !a.spec.suspend {
                let schedule =
                    crate::quota::poll::PollSchedule::load(&ctx.settings.state_dir, &ns, &name)
                        .unwrap_or_default();
                if schedule.due(now)
                    && let Some(token) = crate::quota::poll::access_token(&config_dir)
                {
                    m.polling = true;
                    tokio::spawn(poll(ctx.clone(), st.clone(), key.clone(), token, schedule));
                } else if !schedule.due(now) {
                    let at = SystemTime::UNIX_EPOCH + Duration::from_secs(schedule.next_poll_at);
                    if let Ok(d) = at.duration_since(now) {
                        next = next.min(d + Duration::from_millis(50));
                    }
                }
            }
            let threshold = f64::from(a.spec.thresholds.five_hour);
            let projection = match m.ledger {
                Some((at, p)) if at.elapsed() < LEDGER_EVERY => p,
                _ => {
                    let p = ledger_projection(
                        ctx,
                        &sessions,
                        &ns,
                        &name,
                        threshold,
                        inputs.five_hour.as_ref(),
                        now,
                    )
                    .or_else(|| m.projection(threshold));
                    m.ledger = Some((std::time::Instant::now(), p));
                    p
                }
            };
            (inputs, projection)
        };
        let verdict = logins
            .unavailable(a, &name, &sessions)
            .unwrap_or_else(|| phase(&inputs, now));
        let mut status = before.clone();
        status.phase = Some(verdict.phase);
        status.usage =
            (inputs.five_hour.is_some() || inputs.seven_day.is_some()).then(|| AccountUsage {
                five_hour: inputs.five_hour.as_ref().map(window_status),
                seven_day: inputs.seven_day.as_ref().map(window_status),
            });
        status.limit = inputs.limit.as_ref().map(|l| AccountLimit {
            at: crate::api::Time(jiff_of(l.at)),
            resets_at: l.resets_at.map(|t| crate::api::Time(jiff_of(t))),
            source: l.source.clone(),
        });
        // Nothing new to project from (say, after a restart, with one
        // reading in memory): an earlier projection of the same reading
        // still stands while it lies ahead.
        let same_reading = before
            .usage
            .as_ref()
            .and_then(|u| u.five_hour.as_ref())
            .zip(inputs.five_hour.as_ref())
            .is_some_and(|(b, r)| {
                (b.utilization - (r.utilization * 10.0).round() / 10.0).abs() < 0.05
                    && b.resets_at.as_ref().map(system) == r.resets_at
            });
        let kept = before
            .projected_limit_at
            .clone()
            .filter(|t| same_reading && system(t) > now);
        status.projected_limit_at = projection.map(|t| crate::api::Time(jiff_of(t))).or(kept);
        status.sessions = Some(live.len() as u32);
        status.observed_generation = a.metadata.generation;
        set_condition(
            &mut status.conditions,
            "Available",
            verdict.phase == AccountPhase::Available,
            verdict.reason,
            &verdict.message,
            a.metadata.generation,
            crate::api::now(),
        );
        let stale_times = oldest_observed(&before)
            .is_some_and(|t| now.duration_since(t).unwrap_or_default() > Duration::from_secs(60));
        if without_times(&status) != without_times(&before) || stale_times {
            ctx.store
                .api::<Account>(Some(&ns))
                .patch_status(&name, &status)?;
        }
        if verdict.phase != previous || before.phase.is_none() {
            // The failover controller acts on the written phase: wake it
            // before anything else is written.
            ctx.quota.wake_failover.notify_one();
            wake_failover = true;
            // Its sessions report the account's state (Waiting on an
            // exhausted one): let them look again now; so do the ones
            // waiting to start (an account that became usable, say by a
            // login, takes them at once).
            for s in &live {
                ctx.signals.poke(s);
            }
            for s in sessions.iter().filter(|s| {
                ns_of(&s.metadata) == ns && s.status.as_ref().is_none_or(|st| st.pid.is_none())
            }) {
                ctx.signals.poke(&ObjectKey::new(
                    Kind::Session,
                    &ns,
                    s.metadata.name.as_deref().unwrap_or_default(),
                ));
            }
            announce(ctx, &key, previous, &verdict, before.phase.is_none());
        }
        // Wake at the next reset or expiry that could change the phase.
        let upcoming = [
            inputs.limit.as_ref().and_then(|l| l.resets_at),
            inputs.five_hour.as_ref().and_then(|r| r.resets_at),
            inputs.seven_day.as_ref().and_then(|r| r.resets_at),
            inputs.five_hour.as_ref().map(|r| r.observed_at + st.stale),
            inputs.seven_day.as_ref().map(|r| r.observed_at + st.stale),
        ];
        for t in upcoming.into_iter().flatten() {
            if let Ok(d) = t.duration_since(now) {
                next = next.min(d + Duration::from_millis(50));
            }
        }
    }
    if wake_failover {
        ctx.quota.wake_failover.notify_one();
    }
    Ok(next.max(Duration::from_millis(100)))
}

/// The accounts' logins, read once per pass (see [`crate::agent::login`]).
struct Logins {
    /// Account (namespace, name) holding a copy of another's login → that one.
    copies: HashMap<(String, String), String>,
    daemon_env: Vec<(String, String)>,
}

impl Logins {
    fn of(accounts: &[Account]) -> Logins {
        let mut copies = HashMap::new();
        let mut by_ns: HashMap<String, Vec<&Account>> = HashMap::new();
        for a in accounts.iter().filter(|a| !a.spec.suspend) {
            by_ns.entry(ns_of(&a.metadata)).or_default().push(a);
        }
        for (ns, mut list) in by_ns {
            // The preferred account keeps the login; later ones are copies.
            list.sort_by_key(|a| (a.spec.priority, a.metadata.name.clone()));
            let dirs: Vec<(String, std::path::PathBuf)> = list
                .iter()
                .map(|a| {
                    (
                        a.metadata.name.clone().unwrap_or_default(),
                        crate::fsutil::expand_home(&a.spec.config_dir),
                    )
                })
                .collect();
            for (copy, original) in crate::agent::login::copied_logins(&dirs) {
                copies.insert((ns.clone(), copy), original);
            }
        }
        Logins {
            copies,
            daemon_env: std::env::vars().collect(),
        }
    }

    /// `Unavailable` for want of a login, or None.
    fn unavailable(
        &self,
        a: &Account,
        name: &str,
        sessions: &[Session],
    ) -> Option<crate::quota::Verdict> {
        use crate::agent::login;
        if a.spec.suspend {
            return None;
        }
        let ns = ns_of(&a.metadata);
        let mine: Vec<Session> = sessions
            .iter()
            .filter(|s| ns_of(&s.metadata) == ns)
            .cloned()
            .collect();
        let dir = crate::fsutil::expand_home(&a.spec.config_dir);
        let state = login::check(
            name,
            &dir,
            login::agents_credential(name, &mine, &self.daemon_env),
        );
        let copy_of = self.copies.get(&(ns, name.to_string())).cloned();
        // A copy stays set aside after its twin refreshed (their tokens
        // differ then, but this one's refresh token is spent) until the
        // account is logged in again (its credentials file changes).
        let copy_of = copy_of.or_else(|| {
            let c = a
                .status
                .as_ref()?
                .conditions
                .iter()
                .find(|c| c.type_ == "Available" && c.reason == "CopiedLogin")?;
            let written = std::fs::metadata(dir.join(".credentials.json"))
                .and_then(|m| m.modified())
                .ok()?;
            (written <= SystemTime::from(c.last_transition_time.0)).then(|| {
                c.message
                    .split("account ")
                    .nth(1)
                    .and_then(|m| m.split('\'').next())
                    .unwrap_or("another")
                    .to_string()
            })
        });
        let (reason, message) = login::unavailable(&state, copy_of.as_deref(), name)?;
        Some(crate::quota::Verdict {
            phase: AccountPhase::Unavailable,
            reason,
            message,
        })
    }
}

/// How often the transcripts are read for the projection, at most.
const LEDGER_EVERY: Duration = Duration::from_secs(30);

/// When the 5-hour window reaches `threshold` at the burn rate of the
/// account's transcripts (tokens of its live sessions since they came to
/// it, the last 30 minutes), scaled by the utilization the current block
/// shows. None without a reading or a burn.
fn ledger_projection(
    ctx: &Context,
    sessions: &[Session],
    ns: &str,
    account: &str,
    threshold: f64,
    five_hour: Option<&Reading>,
    now: SystemTime,
) -> Option<SystemTime> {
    use crate::quota::ledger;
    let reading = five_hour?;
    let mut entries = Vec::new();
    for s in sessions.iter().filter(|s| {
        ns_of(&s.metadata) == ns
            && s.status
                .as_ref()
                .is_some_and(|st| st.account.as_deref() == Some(account))
    }) {
        let key = ObjectKey::new(
            Kind::Session,
            ns,
            s.metadata.name.as_deref().unwrap_or_default(),
        );
        let rt = super::runtime::Runtime::load(&ctx.settings.state_dir, &key);
        let since = SystemTime::UNIX_EPOCH + Duration::from_secs(rt.launched_at);
        if let Some(path) =
            crate::agent::seed::transcript(&ctx.settings.shared_projects, &rt.agent_session_id)
        {
            entries.extend(ledger::read_entries(&path, since));
        }
    }
    entries.sort_by_key(|e| e.at);
    let block = ledger::blocks(&entries).into_iter().last()?;
    let rate = ledger::burn_rate(&entries, now, Duration::from_secs(1800));
    let at = ledger::projected_time_to(threshold, reading.utilization, block.tokens, rate, now)?;
    match reading.resets_at {
        Some(r) if at >= r => None,
        _ => Some(at),
    }
}

/// One poll of the usage endpoint, in the background; its readings wake
/// the controller.
async fn poll(
    ctx: Arc<Context>,
    st: QuotaSettings,
    key: ObjectKey,
    token: String,
    mut schedule: crate::quota::poll::PollSchedule,
) {
    use crate::quota::poll::{PollError, poll_usage};
    let result = poll_usage(&st.usage_base_url, &token).await;
    let now = SystemTime::now();
    crate::metrics::metrics()
        .usage_polls_total
        .with_label_values(&[match &result {
            Ok(_) => "ok",
            Err(PollError::RetryAfter(_)) => "retry_after",
            Err(PollError::Unauthorized) => "unauthorized",
            Err(_) => "error",
        }])
        .inc();
    let state_dir = &ctx.settings.state_dir;
    match &result {
        Ok(_) => schedule.after_success(now, st.poll_interval),
        Err(e) => schedule.after_error(now, st.poll_interval, e),
    }
    if let Err(e) = schedule.save(state_dir, &key.namespace, &key.name) {
        tracing::warn!(account = %key, error = %e, "cannot save the usage poll schedule");
    }
    let mut tell = None;
    {
        let mut all = ctx.quota.memory.lock().expect("lock");
        let m = all.entry(key.clone()).or_default();
        m.polling = false;
        match result {
            Ok(snapshot) => {
                m.poll_refused = false;
                for (w, r) in [
                    (Window::FiveHour, snapshot.five_hour),
                    (Window::SevenDay, snapshot.seven_day),
                ] {
                    if let Some(r) = r {
                        m.push(
                            w,
                            Reading {
                                utilization: r.utilization,
                                resets_at: r.resets_at,
                                source: "poll".into(),
                                observed_at: now,
                            },
                        );
                    }
                }
                tracing::debug!(account = %key, "usage polled");
            }
            Err(PollError::Unauthorized) if !m.poll_refused => {
                m.poll_refused = true;
                tell = Some("the usage endpoint refused the account's token; its usage is known only from live sessions".to_string());
            }
            Err(e) => {
                tracing::info!(account = %key, error = %e, "usage poll failed; next one later")
            }
        }
    }
    if let Some(message) = tell {
        record(&ctx, &key, true, "UsagePollRefused", &message);
    }
    ctx.signals.quota_changed().notify_one();
}

/// Events and notifications of a phase change.
fn announce(
    ctx: &Context,
    key: &ObjectKey,
    previous: AccountPhase,
    v: &crate::quota::Verdict,
    first: bool,
) {
    let object = key.to_string();
    let bad = |p: AccountPhase| {
        matches!(
            p,
            AccountPhase::NearLimit | AccountPhase::Exhausted | AccountPhase::Unavailable
        )
    };
    match v.phase {
        AccountPhase::Available if first => {
            record(ctx, key, false, "Available", &v.message);
        }
        AccountPhase::Available => {
            record(
                ctx,
                key,
                false,
                "Recovered",
                &format!("available again: {}", v.message),
            );
            if bad(previous) {
                ctx.quota.notifier.send(Notice {
                    kind: NoticeKind::AccountRecovered,
                    object,
                    message: format!("available again ({})", v.message),
                });
            }
        }
        AccountPhase::NearLimit => record(ctx, key, true, "NearLimit", &v.message),
        AccountPhase::Exhausted => {
            record(ctx, key, true, "Exhausted", &v.message);
            ctx.quota.notifier.send(Notice {
                kind: NoticeKind::AccountExhausted,
                object,
                message: v.message.clone(),
            });
        }
        AccountPhase::Unavailable => {
            record(ctx, key, true, "Unavailable", &v.message);
            ctx.quota.notifier.send(Notice {
                kind: NoticeKind::SessionDegraded,
                object,
                message: format!("account unavailable: {}", v.message),
            });
        }
        AccountPhase::Suspended => record(ctx, key, false, "Suspended", &v.message),
    }
}

//! The budgeted poll of the usage endpoint, for every account with a
//! token: at most one per `pollIntervalSeconds`, `Retry-After` honoured,
//! its schedule kept in the state dir (`STATE/quota/NS/NAME.json`, this
//! controller's own file). For an account live sessions report on (and
//! whose limit, if any, has a known end) only the per-model weekly windows
//! are taken: only the endpoint tells them, and the statusLine is fresher
//! for the others.

use super::Context;
use crate::api::{Account, ObjectKey};
use crate::quota::poll::{PollError, PollSchedule, access_token, poll_usage};
use crate::quota::{Reading, Window};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Starts a poll of `a` in the background if one is due and a token is
/// there; else when the next one is due. `models_only`: live sessions
/// report the 5-hour and weekly windows (their statusLine is fresher), so
/// only the per-model windows, which only the endpoint tells, are taken.
pub async fn maybe_start(
    ctx: &Arc<Context>,
    key: &ObjectKey,
    a: &Account,
    now: SystemTime,
    models_only: bool,
) -> Option<Duration> {
    let (dir, k) = (ctx.shared.settings.state_dir.clone(), key.clone());
    let config_dir = crate::fsutil::expand_home(&a.spec.config_dir);
    let (schedule, token) = ctx
        .shared
        .blocking(move |_| {
            let s = PollSchedule::load(&dir, &k.namespace, &k.name).unwrap_or_default();
            (s, access_token(&config_dir))
        })
        .await;
    if !schedule.due(now) {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(schedule.next_poll_at);
        return at
            .duration_since(now)
            .ok()
            .map(|d| d + Duration::from_millis(50));
    }
    let token = token?;
    {
        let mut all = ctx.memory.lock().expect("lock");
        let m = all.entry(key.clone()).or_default();
        if m.polling {
            return None;
        }
        m.polling = true;
    }
    tokio::spawn(run(ctx.clone(), key.clone(), token, schedule, models_only));
    None
}

/// One poll; its readings go to memory and wake the controller.
async fn run(
    ctx: Arc<Context>,
    key: ObjectKey,
    token: String,
    mut schedule: PollSchedule,
    models_only: bool,
) {
    let st = ctx.settings.clone();
    let result = poll_usage(&st.usage_base_url, &token).await;
    let now = SystemTime::now();
    ctx.shared
        .metrics
        .usage_polls_total
        .with_label_values(&[match &result {
            Ok(_) => "ok",
            Err(PollError::RetryAfter(_)) => "retry_after",
            Err(PollError::Unauthorized) => "unauthorized",
            Err(_) => "error",
        }])
        .inc();
    match &result {
        Ok(_) => schedule.after_success(now, st.poll_interval),
        Err(e) => schedule.after_error(now, st.poll_interval, e),
    }
    let (dir, k) = (ctx.shared.settings.state_dir.clone(), key.clone());
    if let Err(e) = ctx
        .shared
        .blocking(move |_| schedule.save(&dir, &k.namespace, &k.name))
        .await
    {
        tracing::warn!(account = %key, error = %e, "cannot save the usage poll schedule");
    }
    let tell = absorb(&ctx, &key, result, now, models_only);
    if let Some(message) = tell {
        ctx.record(&key, true, "UsagePollRefused", &message).await;
    }
    ctx.polled.notify_one();
}

/// Takes a poll's outcome into memory; what to tell, if anything.
fn absorb(
    ctx: &Context,
    key: &ObjectKey,
    result: Result<crate::quota::poll::UsageSnapshot, PollError>,
    now: SystemTime,
    models_only: bool,
) -> Option<String> {
    let mut all = ctx.memory.lock().expect("lock");
    let m = all.entry(key.clone()).or_default();
    m.polling = false;
    match result {
        Ok(snapshot) => {
            m.poll_refused = false;
            for (w, r) in readings(snapshot, models_only, now) {
                m.push(w, r);
            }
            tracing::debug!(account = %key, "usage polled");
            None
        }
        Err(PollError::Unauthorized) if !m.poll_refused => {
            m.poll_refused = true;
            Some("the usage endpoint refused the account's token; its usage is known only from live sessions".into())
        }
        Err(e) => {
            tracing::info!(account = %key, error = %e, "usage poll failed; next one later");
            None
        }
    }
}

/// The readings a poll's answer gives: with `models_only`, the per-model
/// windows alone.
fn readings(
    snapshot: crate::quota::poll::UsageSnapshot,
    models_only: bool,
    now: SystemTime,
) -> Vec<(Window, Reading)> {
    snapshot
        .windows()
        .into_iter()
        .filter(|(w, _)| !models_only || w.family().is_some())
        .map(|(w, r)| {
            let reading = Reading {
                utilization: r.utilization,
                resets_at: r.resets_at,
                source: "poll".into(),
                observed_at: now,
            };
            (w, reading)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quota::poll::parse_usage;

    #[test]
    fn with_live_sessions_a_poll_gives_only_the_per_model_windows() {
        let answer = parse_usage(
            br#"{"five_hour": {"utilization": 5.0}, "seven_day": {"utilization": 9.0},
                 "seven_day_opus": {"utilization": 97.0}, "seven_day_sonnet": null}"#,
        )
        .unwrap();
        let now = SystemTime::UNIX_EPOCH;
        // (models only, windows taken)
        let table: [(bool, &[&str]); 2] = [
            (false, &["five_hour", "seven_day", "seven_day_opus"]),
            (true, &["seven_day_opus"]),
        ];
        for (models_only, want) in table {
            let got: Vec<&str> = readings(answer.clone(), models_only, now)
                .iter()
                .map(|(w, _)| w.label())
                .collect();
            assert_eq!(got, want, "models only: {models_only}");
        }
    }
}

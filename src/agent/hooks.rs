//! What a hook payload (or a transcript line) means beyond its event name.
//!
//! Measured on the real binary (docs/claude-code-probe.md, "Limits"):
//! - `StopFailure` fires for the main turn, but also for a subagent (the
//!   `Agent` tool) and for a helper request (`/btw`), under the parent's
//!   `session_id`; only those carry `agent_id` (a subagent also
//!   `agent_type`). Such a failure does not end the turn: the main thread
//!   goes on and ends with its own `Stop` or `StopFailure`. A usage limit
//!   hit by either is still the account's limit.
//! - `Notification` types that are not waits (`auth_success`,
//!   `agent_completed`, `quota_auto_resume_fired`, ...) say nothing of the
//!   agent's state.
//! - The transcript's limit entry (an assistant line with
//!   `error: "rate_limit"`) carries the reset time on 2.1.332
//!   (`apiErrorParams.rate_limit_info.resetsAt`, `quotaLimits.resetsAt`,
//!   epoch seconds); 2.1.197 writes the entry without it.

use serde_json::Value;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::time::{Duration, SystemTime};

/// Who a hook speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The main thread of the conversation.
    Main,
    /// A subagent of the main turn (the `Agent` tool).
    Subagent {
        agent_id: String,
        agent_type: String,
    },
    /// A helper request beside the turn (a `/btw` side question, ...).
    Helper { agent_id: String },
}

fn text<'a>(payload: &'a Value, key: &str) -> Option<&'a str> {
    payload
        .get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// Who `payload` speaks for: `agent_id` is present only off the main thread.
pub fn origin(payload: &Value) -> Origin {
    match (text(payload, "agent_id"), text(payload, "agent_type")) {
        (None, _) => Origin::Main,
        (Some(id), Some(kind)) => Origin::Subagent {
            agent_id: id.into(),
            agent_type: kind.into(),
        },
        (Some(id), None) => Origin::Helper {
            agent_id: id.into(),
        },
    }
}

/// Whether `payload` ends the main turn: its `Stop`, or a `StopFailure`
/// of the main thread (not a subagent's or a helper's).
pub fn ends_turn(payload: &Value) -> bool {
    match text(payload, "hook_event_name") {
        Some("Stop") => true,
        Some("StopFailure") => origin(payload) == Origin::Main,
        _ => false,
    }
}

/// How a `StopFailure` is to be taken: `(error, message, ends_turn)`.
/// A limit hit off the main thread is still the account's limit.
pub fn failure(payload: &Value) -> Option<(String, String, bool)> {
    if text(payload, "hook_event_name") != Some("StopFailure") {
        return None;
    }
    let error = text(payload, "error").unwrap_or_default().to_string();
    let message = text(payload, "message")
        .or_else(|| text(payload, "last_assistant_message"))
        .unwrap_or_default();
    let message = match origin(payload) {
        Origin::Main => message.to_string(),
        Origin::Subagent { agent_type, .. } => format!("in a {agent_type} subagent: {message}"),
        Origin::Helper { .. } => format!("in a helper request: {message}"),
    };
    Some((error, message, ends_turn(payload)))
}

/// What a `Notification` says of the agent's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// At its prompt, nothing to do.
    Idle,
    /// Someone must answer: `permission_prompt` or `dialog_open` (the
    /// names of Claude Code's own `sessions/<pid>.json`).
    Waiting(&'static str),
    /// Informational: no change.
    Nothing,
}

/// The meaning of a `notification_type`. Unknown types change nothing:
/// the agent's own state file says whether it waits.
pub fn notice(notification_type: &str) -> Notice {
    match notification_type {
        "idle_prompt" => Notice::Idle,
        "permission_prompt" | "worker_permission_prompt" => Notice::Waiting("permission_prompt"),
        "agent_needs_input" | "elicitation_dialog" => Notice::Waiting("dialog_open"),
        _ => Notice::Nothing,
    }
}

/// The start of the prompt Claude Code submits by itself when its own
/// continue-at-reset fires (turned off in the project's sessions).
pub const AUTO_CONTINUE_PROMPT: &str = "Your claude.ai usage limit has reset.";

/// Whether a submitted prompt is Claude Code's own continuation.
pub fn is_auto_continue(prompt: &str) -> bool {
    prompt.trim_start().starts_with(AUTO_CONTINUE_PROMPT)
}

/// A usage-limit rejection as the transcript records it.
#[derive(Debug, Clone, PartialEq)]
pub struct LimitEntry {
    /// When it was written.
    pub at: SystemTime,
    /// When the limit resets (2.1.332 and later).
    pub resets_at: Option<SystemTime>,
    /// `five_hour`, `seven_day`, ... when said.
    pub window: Option<String>,
}

fn epoch(v: Option<&Value>) -> Option<SystemTime> {
    let s = v?.as_f64().filter(|s| *s > 0.0)?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs_f64(s))
}

/// The limit entry a transcript line holds, if it is one.
pub fn limit_entry(line: &Value) -> Option<LimitEntry> {
    if line.get("error").and_then(Value::as_str) != Some("rate_limit")
        || line.get("isApiErrorMessage").and_then(Value::as_bool) != Some(true)
    {
        return None;
    }
    let at = line
        .get("timestamp")
        .and_then(Value::as_str)
        .and_then(|t| t.parse::<k8s_openapi::jiff::Timestamp>().ok())
        .map(SystemTime::from)?;
    let info = line.pointer("/apiErrorParams/rate_limit_info");
    let quota = line.get("quotaLimits");
    let resets_at = epoch(info.and_then(|i| i.get("resetsAt")))
        .or_else(|| epoch(quota.and_then(|q| q.get("resetsAt"))));
    let window = [info, quota]
        .into_iter()
        .flatten()
        .find_map(|v| v.get("rateLimitType").and_then(Value::as_str))
        .map(str::to_string);
    Some(LimitEntry {
        at,
        resets_at,
        window,
    })
}

/// How much of a transcript's end is read for its latest limit entry.
const TAIL: u64 = 256 * 1024;

/// The latest limit entry of the transcript at `path` written at or after
/// `since` (a second of slack: the entry and the hook are written in the
/// same instant). Reads only the file's tail.
pub fn latest_limit(path: &Path, since: SystemTime) -> Option<LimitEntry> {
    let mut f = std::fs::File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    let start = len.saturating_sub(TAIL);
    f.seek(SeekFrom::Start(start)).ok()?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf);
    let mut lines = text.lines();
    if start > 0 {
        lines.next(); // cut mid-line
    }
    let floor = since.checked_sub(Duration::from_secs(1)).unwrap_or(since);
    lines
        .rev()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| limit_entry(&v))
        .find(|e| e.at >= floor)
}

/// A `SessionEnd` with reason `resume`: the process leaves its
/// conversation for one typed `/resume` took over, and goes on running.
pub fn ends_for_resume(payload: &Value) -> bool {
    payload.get("hook_event_name").and_then(Value::as_str) == Some("SessionEnd")
        && payload.get("reason").and_then(Value::as_str) == Some("resume")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The `StopFailure` payloads of one probe run on 2.1.332 (abridged).
    fn stop_failure(extra: Value) -> Value {
        let mut v = json!({
            "session_id": "55555555-1111-4111-8111-111111111111",
            "prompt_id": "b80ececf-dcfd-4fdd-9e0c-5c8d1abde56f",
            "hook_event_name": "StopFailure",
            "error": "rate_limit",
            "last_assistant_message": "You've hit your 5-hour limit · resets 10:19am (UTC)"
        });
        v.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        v
    }

    #[test]
    fn a_failure_off_the_main_thread_does_not_end_the_turn() {
        let main = stop_failure(json!({}));
        assert_eq!(origin(&main), Origin::Main);
        assert!(ends_turn(&main));
        let (error, message, ends) = failure(&main).unwrap();
        assert_eq!(error, "rate_limit");
        assert!(message.starts_with("You've hit your 5-hour limit"));
        assert!(ends);

        let sub =
            stop_failure(json!({"agent_id": "ace79e2028f7ab602", "agent_type": "general-purpose"}));
        assert_eq!(
            origin(&sub),
            Origin::Subagent {
                agent_id: "ace79e2028f7ab602".into(),
                agent_type: "general-purpose".into()
            }
        );
        assert!(!ends_turn(&sub));
        let (error, message, ends) = failure(&sub).unwrap();
        assert_eq!(error, "rate_limit", "still the account's limit");
        assert!(
            message.starts_with("in a general-purpose subagent: "),
            "{message}"
        );
        assert!(!ends);

        let btw = stop_failure(json!({"agent_id": "a976f90a72b85d532"}));
        assert!(matches!(origin(&btw), Origin::Helper { .. }));
        assert!(!failure(&btw).unwrap().2);

        assert!(ends_turn(
            &json!({"hook_event_name": "Stop", "agent_id": ""})
        ));
        assert!(!ends_turn(&json!({"hook_event_name": "SubagentStop"})));
        assert_eq!(failure(&json!({"hook_event_name": "Stop"})), None);
    }

    #[test]
    fn notifications_that_are_not_waits_change_nothing() {
        assert_eq!(
            notice("permission_prompt"),
            Notice::Waiting("permission_prompt")
        );
        assert_eq!(notice("agent_needs_input"), Notice::Waiting("dialog_open"));
        assert_eq!(notice("idle_prompt"), Notice::Idle);
        for informational in [
            "quota_auto_resume_fired",
            "auth_success",
            "agent_completed",
            "new",
        ] {
            assert_eq!(notice(informational), Notice::Nothing, "{informational}");
        }
        assert!(is_auto_continue(
            "Your claude.ai usage limit has reset. Continue the task you were working on \
             when the limit was reached; do not repeat work that is already complete."
        ));
        assert!(!is_auto_continue("continue"));
    }

    #[test]
    fn the_transcript_limit_entry_gives_the_reset_time() {
        // 2.1.332 (abridged from a probe transcript).
        let newest = json!({"type": "assistant", "timestamp": "2026-11-29T09:12:30.410Z",
            "message": {"model": "<synthetic>", "content": [{"type": "text",
                "text": "You've hit your 5-hour limit · resets 9:13am (UTC)"}]},
            "apiError": "usage_limit_reached",
            "apiErrorParams": {"rate_limit_info": {"status": "rejected", "resetsAt": 1795943620,
                "rateLimitType": "five_hour", "isUsingOverage": false}},
            "quotaLimits": {"status": "rejected", "resetsAt": 1795943620, "rateLimitType": "five_hour"},
            "error": "rate_limit", "isApiErrorMessage": true, "apiErrorStatus": 429});
        let e = limit_entry(&newest).unwrap();
        assert_eq!(
            e.resets_at,
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1795943620))
        );
        assert_eq!(e.window.as_deref(), Some("five_hour"));
        // 2.1.197: the same entry without the reset.
        let oldest = json!({"type": "assistant", "timestamp": "2026-11-29T09:12:30.410Z",
            "message": {"model": "<synthetic>"}, "error": "rate_limit",
            "isApiErrorMessage": true, "apiErrorStatus": 429});
        assert_eq!(limit_entry(&oldest).unwrap().resets_at, None);
        assert_eq!(limit_entry(&json!({"type": "user"})), None);

        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("t.jsonl");
        let filler = json!({"type": "user", "message": {"content": "x".repeat(1000)}}).to_string();
        let mut body = String::new();
        for _ in 0..400 {
            body.push_str(&filler);
            body.push('\n');
        }
        body.push_str(&newest.to_string());
        body.push('\n');
        body.push_str(&json!({"type": "system", "subtype": "informational"}).to_string());
        body.push('\n');
        std::fs::write(&path, body).unwrap();
        assert!(std::fs::metadata(&path).unwrap().len() > TAIL);
        let at = e.at;
        assert_eq!(latest_limit(&path, at), Some(e.clone()));
        assert_eq!(
            latest_limit(&path, at + Duration::from_secs(5)),
            None,
            "an older limit"
        );
        assert_eq!(latest_limit(&d.path().join("none.jsonl"), at), None);
    }
}

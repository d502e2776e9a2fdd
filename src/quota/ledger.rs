//! The token ledger: tokens per 5-hour block read from the transcripts.
//!
//! Claude Code appends one JSON line per event to
//! `projects/<slug>/<session-id>.jsonl`; every answered request leaves an
//! `assistant` line with `timestamp` and `message.usage`. This module turns
//! those lines into [`Entry`]s, groups them into 5-hour [`Block`]s the way
//! ccusage does, and derives a burn rate and a projected time to a
//! threshold. It is pure apart from [`read_entries`].
//!
//! What counts as tokens: `input_tokens + output_tokens +
//! cache_creation_input_tokens`. Cache reads are left out: in a warm
//! session they are most of the raw count (the whole context is re-read on
//! every request) at a tenth of the input price, so counting them at full
//! weight would make the ledger follow context length rather than spend.
//! The projection calibrates percent-per-token from the account's measured
//! utilization, so only proportionality to spend matters, and this sum is
//! closer to it.
//!
//! What does not count: synthetic lines (`model: "<synthetic>"`, e.g. the
//! usage-limit rejection, which answered no request), API error lines, and
//! repeats: Claude Code writes one line per content block of a response
//! (thinking, text, tool use), each with the usage of the same request, so
//! lines with the same `message.id` and `requestId` count once (the
//! largest).
//!
//! Accounts: transcripts are shared between accounts (each account's
//! `projects/` links to one folder) and a line does not say which account
//! answered it. Callers attribute by time: read a session's transcript
//! `since` it moved to the account in question.

use serde_json::Value;
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Length of a usage block.
pub const BLOCK: Duration = Duration::from_secs(5 * 3600);

/// One answered request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The line's `timestamp`.
    pub at: SystemTime,
    /// `input + output + cache_creation` tokens (cache reads excluded, see
    /// the module docs).
    pub tokens: u64,
}

/// Reads the entries of one transcript stamped at or after `since`, in file
/// order. Tolerant: an unreadable file gives nothing, and lines that are
/// not JSON (a partial last line being written, garbage) or not answered
/// requests are skipped.
pub fn read_entries(transcript: &Path, since: SystemTime) -> Vec<Entry> {
    let file = match std::fs::File::open(transcript) {
        Ok(f) => f,
        Err(e) => {
            tracing::debug!(path = %transcript.display(), error = %e, "transcript not readable");
            return Vec::new();
        }
    };
    let mut reader = BufReader::new(file);
    let mut entries: Vec<Entry> = Vec::new();
    // (message id, request id) → index in `entries`.
    let mut seen: HashMap<(String, String), usize> = HashMap::new();
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(path = %transcript.display(), error = %e, "transcript read stopped");
                break;
            }
        }
        let Some((entry, key)) = parse_line(&line) else {
            continue;
        };
        if entry.at < since {
            continue;
        }
        if let Some(k) = key {
            if let Some(&i) = seen.get(&k) {
                entries[i].tokens = entries[i].tokens.max(entry.tokens);
                continue;
            }
            seen.insert(k, entries.len());
        }
        entries.push(entry);
    }
    entries
}

/// An entry from one transcript line, with its (message id, request id)
/// when both are there.
fn parse_line(line: &[u8]) -> Option<(Entry, Option<(String, String)>)> {
    // Cheap filter before parsing: only assistant lines carry usage.
    if !contains(line, b"\"assistant\"") || !contains(line, b"\"usage\"") {
        return None;
    }
    let v: Value = serde_json::from_slice(line).ok()?;
    if v.get("type").and_then(Value::as_str) != Some("assistant") {
        return None;
    }
    if v.get("isApiErrorMessage").and_then(Value::as_bool) == Some(true) {
        return None;
    }
    let message = v.get("message")?;
    if message.get("model").and_then(Value::as_str) == Some("<synthetic>") {
        return None;
    }
    let usage = message.get("usage")?;
    let n = |k: &str| usage.get(k).and_then(Value::as_u64).unwrap_or(0);
    let tokens = n("input_tokens")
        .saturating_add(n("output_tokens"))
        .saturating_add(n("cache_creation_input_tokens"));
    let at = v
        .get("timestamp")?
        .as_str()?
        .parse::<k8s_openapi::jiff::Timestamp>()
        .ok()
        .map(SystemTime::from)?;
    let key = match (
        message.get("id").and_then(Value::as_str),
        v.get("requestId").and_then(Value::as_str),
    ) {
        (Some(m), Some(r)) => Some((m.to_string(), r.to_string())),
        _ => None,
    };
    Some((Entry { at, tokens }, key))
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// A 5-hour usage block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Block {
    /// Its first entry's time floored to the hour (UTC).
    pub start: SystemTime,
    /// `start` + 5 h (exclusive).
    pub end: SystemTime,
    /// Tokens of its entries.
    pub tokens: u64,
    /// Its last entry's time.
    pub last: SystemTime,
}

fn floor_hour(t: SystemTime) -> SystemTime {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => UNIX_EPOCH + Duration::from_secs(d.as_secs() / 3600 * 3600),
        // Before 1970: not a transcript time; keep it as is.
        Err(_) => t,
    }
}

/// Groups entries (any order) into blocks like ccusage: a block starts at
/// the first entry not in a block, floored to the hour, and lasts 5 hours;
/// an entry at or after its end starts the next block (so does any gap of
/// 5 hours since the previous entry). Blocks come in time order.
pub fn blocks(entries: &[Entry]) -> Vec<Block> {
    let mut sorted: Vec<&Entry> = entries.iter().collect();
    sorted.sort_by_key(|e| e.at);
    let mut out: Vec<Block> = Vec::new();
    for e in sorted {
        match out.last_mut() {
            Some(b) if e.at < b.end => {
                b.tokens = b.tokens.saturating_add(e.tokens);
                b.last = e.at;
            }
            _ => {
                let start = floor_hour(e.at);
                out.push(Block {
                    start,
                    end: start + BLOCK,
                    tokens: e.tokens,
                    last: e.at,
                });
            }
        }
    }
    out
}

/// Tokens per minute over the `window` that ends at `now`: the tokens of
/// entries in `(now - window, now]` divided by the window's length in
/// minutes. Zero for an empty window.
pub fn burn_rate(entries: &[Entry], now: SystemTime, window: Duration) -> f64 {
    if window.is_zero() {
        return 0.0;
    }
    let from = now.checked_sub(window).unwrap_or(UNIX_EPOCH);
    let tokens: u64 = entries
        .iter()
        .filter(|e| e.at > from && e.at <= now)
        .fold(0u64, |sum, e| sum.saturating_add(e.tokens));
    tokens as f64 / (window.as_secs_f64() / 60.0)
}

/// When the account reaches `threshold_pct` at the current burn rate.
///
/// The percent one token costs is estimated as `utilization_pct /
/// block_tokens` (the measured utilization of the window over the tokens
/// the ledger counted in the same block). `now` when utilization is
/// already at or over the threshold; `None` when it cannot be told: no
/// burn (`rate` 0), no tokens or no utilization to calibrate on, a
/// non-finite input, or a time too far away to represent.
pub fn projected_time_to(
    threshold_pct: f64,
    utilization_pct: f64,
    block_tokens: u64,
    rate_tokens_per_min: f64,
    now: SystemTime,
) -> Option<SystemTime> {
    if !threshold_pct.is_finite() || !utilization_pct.is_finite() {
        return None;
    }
    if utilization_pct >= threshold_pct {
        return Some(now);
    }
    if !rate_tokens_per_min.is_finite()
        || rate_tokens_per_min <= 0.0
        || block_tokens == 0
        || utilization_pct <= 0.0
    {
        return None;
    }
    let pct_per_token = utilization_pct / block_tokens as f64;
    let tokens_left = (threshold_pct - utilization_pct) / pct_per_token;
    let minutes = tokens_left / rate_tokens_per_min;
    let wait = Duration::try_from_secs_f64(minutes * 60.0).ok()?;
    now.checked_add(wait)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn t(s: &str) -> SystemTime {
        s.parse::<k8s_openapi::jiff::Timestamp>().unwrap().into()
    }

    fn e(s: &str, tokens: u64) -> Entry {
        Entry { at: t(s), tokens }
    }

    /// An assistant line as Claude Code 2.1 writes it.
    fn assistant(ts: &str, msg: &str, req: &str, usage: [u64; 4]) -> String {
        serde_json::json!({
            "parentUuid": "1b0c6f3e-0d0e-4a43-9a57-1d1f0c1f2a11",
            "isSidechain": false,
            "userType": "external",
            "cwd": "/home/u/code/api",
            "sessionId": "b28ba0c2-2b52-4bd3-afa0-021e3d398d66",
            "version": "2.1.197",
            "gitBranch": "main",
            "type": "assistant",
            "uuid": "6a4f9c1e-8f43-4a55-9d1c-5b8b2a0e7c10",
            "timestamp": ts,
            "requestId": req,
            "message": {
                "id": msg,
                "type": "message",
                "role": "assistant",
                "model": "claude-sonnet-5",
                "content": [{"type": "text", "text": "Done."}],
                "stop_reason": "end_turn",
                "stop_sequence": null,
                "usage": {
                    "input_tokens": usage[0],
                    "output_tokens": usage[1],
                    "cache_creation_input_tokens": usage[2],
                    "cache_read_input_tokens": usage[3],
                    "service_tier": "standard"
                }
            }
        })
        .to_string()
    }

    const RATE_LIMITED: &str = r#"{"parentUuid":"6a4f9c1e-8f43-4a55-9d1c-5b8b2a0e7c10","isSidechain":false,"userType":"external","cwd":"/home/u/code/api","sessionId":"b28ba0c2-2b52-4bd3-afa0-021e3d398d66","version":"2.1.197","type":"assistant","uuid":"0f5d3e2a-1c4b-4e8a-9f7d-2a6b8c9d0e1f","timestamp":"2026-11-27T03:10:00.000Z","isApiErrorMessage":true,"apiErrorStatus":429,"error":"rate_limit","message":{"id":"6c1f0e2b-3d4a-4b5c-8d9e-0f1a2b3c4d5e","type":"message","role":"assistant","model":"<synthetic>","content":[{"type":"text","text":"You've hit your session limit · resets 8am (UTC)"}],"stop_reason":"stop_sequence","stop_sequence":"","usage":{"input_tokens":0,"output_tokens":0,"cache_creation_input_tokens":0,"cache_read_input_tokens":0}}}"#;

    const USER: &str = r#"{"parentUuid":null,"isSidechain":false,"userType":"external","cwd":"/home/u/code/api","sessionId":"b28ba0c2-2b52-4bd3-afa0-021e3d398d66","version":"2.1.197","type":"user","message":{"role":"user","content":"fix the login"},"uuid":"1b0c6f3e-0d0e-4a43-9a57-1d1f0c1f2a11","timestamp":"2026-11-27T03:00:00.000Z"}"#;

    const TURN: &str = r#"{"parentUuid":"6a4f9c1e-8f43-4a55-9d1c-5b8b2a0e7c10","isSidechain":false,"userType":"external","cwd":"/home/u/code/api","sessionId":"b28ba0c2-2b52-4bd3-afa0-021e3d398d66","version":"2.1.197","type":"system","subtype":"turn_duration","durationMs":5120,"isMeta":false,"uuid":"9d8e7f6a-5b4c-4d3e-8f2a-1b0c9d8e7f6a","timestamp":"2026-11-27T03:00:06.000Z"}"#;

    fn write(lines: &[String], tail: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        for l in lines {
            writeln!(f, "{l}").unwrap();
        }
        write!(f, "{tail}").unwrap();
        f.flush().unwrap();
        f
    }

    #[test]
    fn reads_answered_requests_only() {
        let f = write(
            &[
                USER.to_string(),
                assistant(
                    "2026-11-27T03:00:05.120Z",
                    "msg_01",
                    "req_01",
                    [3, 250, 1200, 30_000],
                ),
                TURN.to_string(),
                "not json at all".to_string(),
                String::new(),
                RATE_LIMITED.to_string(),
                assistant(
                    "2026-11-27T03:20:00Z",
                    "msg_02",
                    "req_02",
                    [10, 90, 0, 31_000],
                ),
            ],
            // A line still being written.
            r#"{"type":"assistant","timestamp":"2026-11-27T03:21:00Z","message":{"usage":{"input_tok"#,
        );
        let got = read_entries(f.path(), UNIX_EPOCH);
        assert_eq!(
            got,
            [
                e("2026-11-27T03:00:05.120Z", 1453),
                e("2026-11-27T03:20:00Z", 100)
            ]
        );
    }

    #[test]
    fn content_blocks_of_one_response_count_once() {
        // Thinking, text and tool use of one response: three lines, one
        // request; the last carries the final output count.
        let f = write(
            &[
                assistant("2026-11-27T03:00:01Z", "msg_01", "req_01", [3, 8, 500, 0]),
                assistant("2026-11-27T03:00:02Z", "msg_01", "req_01", [3, 8, 500, 0]),
                assistant("2026-11-27T03:00:03Z", "msg_01", "req_01", [3, 120, 500, 0]),
                assistant("2026-11-27T03:01:00Z", "msg_02", "req_02", [1, 10, 0, 900]),
            ],
            "",
        );
        let got = read_entries(f.path(), UNIX_EPOCH);
        assert_eq!(
            got,
            [
                e("2026-11-27T03:00:01Z", 623),
                e("2026-11-27T03:01:00Z", 11)
            ]
        );
    }

    #[test]
    fn since_and_missing_files() {
        let f = write(
            &[
                assistant("2026-11-27T03:00:00Z", "m1", "r1", [1, 1, 0, 0]),
                assistant("2026-11-27T04:00:00Z", "m2", "r2", [2, 2, 0, 0]),
            ],
            "",
        );
        let got = read_entries(f.path(), t("2026-11-27T04:00:00Z"));
        assert_eq!(got, [e("2026-11-27T04:00:00Z", 4)]);
        assert!(read_entries(Path::new("/nonexistent/x.jsonl"), UNIX_EPOCH).is_empty());
    }

    #[test]
    fn blocks_floor_to_the_hour_and_last_five_hours() {
        let entries = [
            e("2026-11-27T08:10:00Z", 5), // out of order on purpose
            e("2026-11-27T03:17:00Z", 10),
            e("2026-11-27T07:59:59Z", 20), // still in [03:00, 08:00)
            e("2026-11-27T08:00:00Z", 1),  // the end is exclusive
        ];
        let b = blocks(&entries);
        assert_eq!(b.len(), 2);
        assert_eq!(b[0].start, t("2026-11-27T03:00:00Z"));
        assert_eq!(b[0].end, t("2026-11-27T08:00:00Z"));
        assert_eq!(b[0].tokens, 30);
        assert_eq!(b[0].last, t("2026-11-27T07:59:59Z"));
        assert_eq!(b[1].start, t("2026-11-27T08:00:00Z"));
        assert_eq!(b[1].tokens, 6);
        assert_eq!(b[1].last, t("2026-11-27T08:10:00Z"));
    }

    #[test]
    fn a_long_gap_starts_a_new_block() {
        let b = blocks(&[e("2026-11-27T03:59:00Z", 1), e("2026-11-27T09:30:00Z", 2)]);
        assert_eq!(b.len(), 2);
        assert_eq!(b[1].start, t("2026-11-27T09:00:00Z"));
        assert!(blocks(&[]).is_empty());
    }

    #[test]
    fn burn_rate_counts_the_window_only() {
        let now = t("2026-11-27T04:00:00Z");
        let entries = [
            e("2026-11-27T03:49:59Z", 1000), // before the window
            e("2026-11-27T03:50:00Z", 7),    // the start is exclusive
            e("2026-11-27T03:55:00Z", 300),
            e("2026-11-27T04:00:00Z", 200),
            e("2026-11-27T04:00:01Z", 9000), // after now
        ];
        let r = burn_rate(&entries, now, Duration::from_secs(600));
        assert_eq!(r, 50.0);
        assert_eq!(burn_rate(&entries, now, Duration::ZERO), 0.0);
        assert_eq!(burn_rate(&[], now, Duration::from_secs(60)), 0.0);
    }

    #[test]
    fn projection() {
        let now = t("2026-11-27T04:00:00Z");
        // 40 % for 100,000 tokens: 0.0004 % per token; 50 points to 90 %
        // are 125,000 tokens; at 1,000 per minute: 125 minutes.
        assert_eq!(
            projected_time_to(90.0, 40.0, 100_000, 1000.0, now),
            Some(now + Duration::from_secs(125 * 60))
        );
        assert_eq!(projected_time_to(90.0, 90.0, 100_000, 0.0, now), Some(now));
        assert_eq!(projected_time_to(90.0, 97.0, 0, 0.0, now), Some(now));
        assert_eq!(projected_time_to(90.0, 40.0, 100_000, 0.0, now), None);
        assert_eq!(projected_time_to(90.0, 40.0, 0, 1000.0, now), None);
        assert_eq!(projected_time_to(90.0, 0.0, 100_000, 1000.0, now), None);
        assert_eq!(
            projected_time_to(90.0, f64::NAN, 100_000, 1000.0, now),
            None
        );
        assert_eq!(projected_time_to(90.0, 1e-300, 1, 1e-300, now), None);
    }
}

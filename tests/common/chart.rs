//! A timeline of a pool (accounts' usage and phase, where the sessions
//! run, swaps, tasks done), sampled from the store while a test runs,
//! printed as a table and drawn as an SVG chart a person can look at.

use super::pool::SwapRecord;
use claude_failover::api::{Account, Session, Task, TaskPhase};
use claude_failover::store::Store;
use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

/// One look at the pool.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Since the start of the run.
    pub t: Duration,
    /// Per account (in the order given): utilization of the 5-hour window,
    /// phase, whether the failover controller said its sessions have
    /// nowhere to go.
    pub accounts: Vec<(f64, String, bool)>,
    /// Per account: sessions running there.
    pub sessions_on: Vec<usize>,
    pub tasks_done: usize,
}

/// Reads the store once.
pub fn sample(store: &Store, start: Instant, accounts: &[&str]) -> Sample {
    let acc = store
        .api::<Account>(Some("default"))
        .list()
        .unwrap_or_default();
    let sessions = store
        .api::<Session>(Some("default"))
        .list()
        .unwrap_or_default();
    let tasks = store
        .api::<Task>(Some("default"))
        .list()
        .unwrap_or_default();
    let of = |name: &str| {
        acc.iter()
            .find(|a| a.metadata.name.as_deref() == Some(name))
    };
    Sample {
        t: start.elapsed(),
        accounts: accounts
            .iter()
            .map(|n| {
                let st = of(n).and_then(|a| a.status.clone()).unwrap_or_default();
                (
                    st.usage
                        .and_then(|u| u.five_hour)
                        .map_or(0.0, |w| w.utilization),
                    st.phase
                        .map(|p| p.to_string())
                        .unwrap_or_else(|| "-".into()),
                    st.failover.is_some_and(|f| f.no_target.is_some()),
                )
            })
            .collect(),
        sessions_on: accounts
            .iter()
            .map(|n| {
                sessions
                    .iter()
                    .filter(|s| {
                        s.status
                            .as_ref()
                            .is_some_and(|st| st.account.as_deref() == Some(n) && st.pid.is_some())
                    })
                    .count()
            })
            .collect(),
        tasks_done: tasks
            .iter()
            .filter(|t| t.status.as_ref().and_then(|s| s.phase) == Some(TaskPhase::Succeeded))
            .count(),
    }
}

/// One row per `every` of run time: each account's usage, phase and
/// sessions, the swaps that started in that span, the tasks done.
pub fn table(
    samples: &[Sample],
    swaps: &[SwapRecord],
    accounts: &[&str],
    t0_ms: u64,
    every: Duration,
) -> String {
    let mut out = String::from("    t");
    for a in accounts {
        let _ = write!(out, " | {a:>18}");
    }
    out.push_str(" | done | swaps\n");
    let mut next = Duration::ZERO;
    for s in samples {
        if s.t < next {
            continue;
        }
        let from = next.as_millis() as u64 + t0_ms;
        next += every;
        let _ = write!(out, "{:>4}s", s.t.as_secs());
        for (i, (used, phase, _)) in s.accounts.iter().enumerate() {
            let _ = write!(out, " | {used:>4.0}% {phase:<9} {}s", s.sessions_on[i]);
        }
        let started: Vec<String> = swaps
            .iter()
            .filter(|w| w.started_at >= from && w.started_at < from + every.as_millis() as u64)
            .map(|w| format!("{}→{} {}", w.from, w.to.as_deref().unwrap_or("?"), w.reason))
            .collect();
        let _ = writeln!(out, " | {:>4} | {}", s.tasks_done, started.join(", "));
    }
    out
}

const W: f64 = 900.0;
const H: f64 = 420.0;
const LEFT: f64 = 50.0;
const TOP: f64 = 30.0;
const PLOT_H: f64 = 260.0;
const COLOURS: [&str; 4] = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd"];

/// The chart: each account's 5-hour usage over time (a line; dashed while
/// NearLimit or worse), its threshold, the swaps (vertical marks, labelled),
/// and the tasks done (a grey step line on its own scale).
pub fn svg(
    samples: &[Sample],
    swaps: &[SwapRecord],
    accounts: &[&str],
    threshold: f64,
    t0_ms: u64,
) -> String {
    let end = samples.last().map_or(1.0, |s| s.t.as_secs_f64()).max(1.0);
    let x = |t: f64| LEFT + t / end * (W - LEFT - 20.0);
    let y = |pct: f64| TOP + PLOT_H - pct.clamp(0.0, 100.0) / 100.0 * PLOT_H;
    let done_max = samples.last().map_or(1, |s| s.tasks_done).max(1) as f64;
    let mut o = String::new();
    let _ = writeln!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(o, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        o,
        r#"<text x="{LEFT}" y="18" font-size="13">A simulated night: accounts' 5-hour usage (%), swaps, tasks done</text>"#
    );
    for pct in [0.0, 25.0, 50.0, 75.0, 100.0] {
        let _ = writeln!(
            o,
            r##"<line x1="{LEFT}" x2="{}" y1="{y}" y2="{y}" stroke="#eee"/><text x="{}" y="{}" text-anchor="end">{pct}</text>"##,
            W - 20.0,
            LEFT - 4.0,
            y(pct) + 4.0,
            y = y(pct)
        );
    }
    let _ = writeln!(
        o,
        r##"<line x1="{LEFT}" x2="{}" y1="{t}" y2="{t}" stroke="#d62728" stroke-dasharray="4 3"/><text x="{}" y="{}" fill="#d62728">threshold {threshold}%</text>"##,
        W - 20.0,
        W - 120.0,
        y(threshold) - 4.0,
        t = y(threshold)
    );
    for (i, name) in accounts.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let points: Vec<String> = samples
            .iter()
            .map(|s| format!("{:.1},{:.1}", x(s.t.as_secs_f64()), y(s.accounts[i].0)))
            .collect();
        let _ = writeln!(
            o,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"#,
            points.join(" ")
        );
        // Where the account was draining (NearLimit or worse).
        for s in samples.iter().filter(|s| s.accounts[i].1 != "Available") {
            let _ = writeln!(
                o,
                r#"<circle cx="{:.1}" cy="{:.1}" r="1.6" fill="{colour}"/>"#,
                x(s.t.as_secs_f64()),
                y(s.accounts[i].0)
            );
        }
        let _ = writeln!(
            o,
            r#"<rect x="{}" y="{}" width="10" height="10" fill="{colour}"/><text x="{}" y="{}">account {name} (dots: not Available)</text>"#,
            LEFT + i as f64 * 200.0,
            H - 30.0,
            LEFT + 14.0 + i as f64 * 200.0,
            H - 21.0
        );
    }
    for w in swaps {
        let t = w.started_at.saturating_sub(t0_ms) as f64 / 1000.0;
        let _ = writeln!(
            o,
            r##"<line x1="{px}" x2="{px}" y1="{TOP}" y2="{}" stroke="#888" stroke-dasharray="2 2"/><text x="{px}" y="{}" transform="rotate(90 {px} {})" fill="#555">{} {}→{}</text>"##,
            TOP + PLOT_H,
            TOP + PLOT_H + 6.0,
            TOP + PLOT_H + 6.0,
            w.reason,
            w.from,
            w.to.as_deref().unwrap_or("?"),
            px = x(t)
        );
    }
    let done: Vec<String> = samples
        .iter()
        .map(|s| {
            format!(
                "{:.1},{:.1}",
                x(s.t.as_secs_f64()),
                y(s.tasks_done as f64 / done_max * 100.0)
            )
        })
        .collect();
    let _ = writeln!(
        o,
        r##"<polyline fill="none" stroke="#aaa" stroke-width="1" points="{}"/><text x="{}" y="{}" fill="#888">tasks done (0..{done_max})</text>"##,
        done.join(" "),
        W - 130.0,
        TOP + 12.0
    );
    let _ = writeln!(
        o,
        r#"<text x="{}" y="{}" text-anchor="end">{end:.0} s</text></svg>"#,
        W - 20.0,
        TOP + PLOT_H + 14.0
    );
    o
}

/// Writes `text` to `path` (its directory made).
pub fn save(path: &Path, text: &str) {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::write(path, text).unwrap();
}

//! Wall-clock helpers: epoch times, ISO 8601 timestamps and the reset
//! times Claude Code prints (`resets 8am (UTC)`), without a time-zone
//! database (everything is shown in UTC).

use std::time::{SystemTime, UNIX_EPOCH};

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub fn now_s() -> u64 {
    now_ms() / 1000
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// `2026-01-02T03:04:05.678Z`.
pub fn iso(ms: u64) -> String {
    let secs = (ms / 1000) as i64;
    let (y, mo, d) = civil_from_days(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        sod / 3600,
        sod / 60 % 60,
        sod % 60,
        ms % 1000
    )
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// The reset time as Claude Code words it: `8am (UTC)`, `8:30am (UTC)`,
/// with the date for the weekly window: `Nov 27, 6am (UTC)`.
pub fn reset_text(epoch_s: u64, with_date: bool) -> String {
    let secs = epoch_s as i64;
    let (_, mo, d) = civil_from_days(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400);
    let (h, m) = (sod / 3600, sod / 60 % 60);
    let (h12, ampm) = match h {
        0 => (12, "am"),
        1..=11 => (h, "am"),
        12 => (12, "pm"),
        _ => (h - 12, "pm"),
    };
    let time = if m == 0 {
        format!("{h12}{ampm}")
    } else {
        format!("{h12}:{m:02}{ampm}")
    };
    if with_date {
        format!("{} {d}, {time} (UTC)", MONTHS[(mo - 1) as usize])
    } else {
        format!("{time} (UTC)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(iso(0), "1970-01-01T00:00:00.000Z");
        // 2026-11-27T06:00:00Z
        assert_eq!(iso(1_795_759_200_123), "2026-11-27T06:00:00.123Z");
        assert_eq!(reset_text(1_795_759_200, true), "Nov 27, 6am (UTC)");
        assert_eq!(
            reset_text(1_795_759_200 + 8 * 3600 + 1800, false),
            "2:30pm (UTC)"
        );
        assert_eq!(reset_text(86_400 * 3, false), "12am (UTC)");
        assert_eq!(iso(951_825_600_000), "2000-02-29T12:00:00.000Z");
    }
}

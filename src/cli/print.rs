//! Output: tables with kubectl-like columns, YAML, JSON and names (the
//! template formats are in [`crate::output`]).

use crate::api::Kind;
use serde_json::Value;

/// kubectl's table writer: each column is as wide as its widest cell plus
/// three spaces, and at least six.
const COLUMN_PADDING: usize = 3;
const COLUMN_MIN_WIDTH: usize = 6;

/// `5s`, `4m12s`, `3h`, `6d`: kubectl's human durations.
pub fn human_age(secs: i64) -> String {
    let s = secs.max(0);
    match s {
        0..=119 => format!("{s}s"),
        120..=599 => format!("{}m{}s", s / 60, s % 60),
        600..=10799 => format!("{}m", s / 60),
        10800..=86399 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

/// Age since an RFC 3339 timestamp, or `<unknown>`.
pub fn age(ts: Option<&str>) -> String {
    ts.and_then(|t| t.parse::<k8s_openapi::jiff::Timestamp>().ok())
        .map(|t| human_age(k8s_openapi::jiff::Timestamp::now().as_second() - t.as_second()))
        .unwrap_or_else(|| "<unknown>".into())
}

/// Until an RFC 3339 timestamp (`in 2h`), or `-`.
fn until(ts: Option<&str>) -> String {
    ts.and_then(|t| t.parse::<k8s_openapi::jiff::Timestamp>().ok())
        .map(|t| human_age(t.as_second() - k8s_openapi::jiff::Timestamp::now().as_second()))
        .unwrap_or_else(|| "-".into())
}

fn s(v: &Value, ptr: &str) -> String {
    match v.pointer(ptr) {
        None | Some(Value::Null) => "-".into(),
        Some(Value::String(x)) if x.is_empty() => "-".into(),
        Some(Value::String(x)) => x.clone(),
        Some(Value::Number(n)) => match n.as_f64() {
            Some(f) if n.is_f64() => format!("{f:.0}"),
            _ => n.to_string(),
        },
        Some(other) => other.to_string(),
    }
}

fn pct(v: &Value, ptr: &str) -> String {
    match v.pointer(ptr).and_then(Value::as_f64) {
        Some(f) => format!("{f:.0}%"),
        None => "-".into(),
    }
}

fn phase(v: &Value) -> String {
    if v.pointer("/metadata/deletionTimestamp").is_some() {
        return "Terminating".into();
    }
    // A Session whose node is lost: what its phase says is not current
    // (as kubectl shows `Unknown` for a Pod on a lost node).
    if v.pointer("/status/nodeLost").is_some() {
        return "NodeLost".into();
    }
    let phase = s(v, "/status/phase");
    // An account set aside as a failover target says so, as kubectl says
    // `Ready,SchedulingDisabled` of a cordoned node.
    if crate::api::set_aside_now(v).is_some() {
        format!("{phase},SetAside")
    } else {
        phase
    }
}

/// The condition of type `t` in the object's status.
/// A Node's STATUS: `Ready` or `NotReady` as the leader last found it,
/// `Unknown` before it has.
fn node_status(v: &Value) -> String {
    match condition(v, "Ready")
        .and_then(|c| c.get("status"))
        .and_then(Value::as_str)
    {
        Some("True") => "Ready".into(),
        Some(_) => "NotReady".into(),
        None => "Unknown".into(),
    }
}

fn condition<'a>(v: &'a Value, t: &str) -> Option<&'a Value> {
    v.pointer("/status/conditions")
        .and_then(Value::as_array)?
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some(t))
}

/// `a=b,c=d` or `<none>`, as `--show-labels` prints them.
pub fn labels(v: &Value) -> String {
    match v.pointer("/metadata/labels").and_then(Value::as_object) {
        Some(m) if !m.is_empty() => m
            .iter()
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
            .collect::<Vec<_>>()
            .join(","),
        _ => "<none>".into(),
    }
}

/// Column headers and row cells for a kind.
pub fn columns(kind: Kind, wide: bool) -> Vec<&'static str> {
    let mut c = match kind {
        Kind::Account => vec!["NAME", "PHASE", "5H", "7D", "SESSIONS", "PRIORITY", "AGE"],
        Kind::Session => vec!["NAME", "PHASE", "ACCOUNT", "TASK", "RESTARTS", "AGE"],
        Kind::Task => vec!["NAME", "PHASE", "PRIORITY", "SESSION", "ATTEMPTS", "AGE"],
        Kind::Swap => vec!["NAME", "EPOCH", "FROM", "TO", "REASON", "RESULT", "AGE"],
        Kind::Lease => vec!["NAME", "HOLDER", "EPOCH", "RENEWED", "AGE"],
        Kind::ManifestSync => vec!["NAME", "READY", "STATUS", "REVISION", "LAST-SYNC", "AGE"],
        Kind::SessionPool => vec!["NAME", "REPLICAS", "READY", "IDLE", "BUSY", "AGE"],
        Kind::Node => vec!["NAME", "STATUS", "SESSIONS", "HEARTBEAT", "AGE"],
    };
    if wide {
        c.extend(match kind {
            Kind::Account => vec![
                "5H-RESETS",
                "7D-RESETS",
                "7D-OPUS",
                "7D-SONNET",
                "CONFIGDIR",
                "LABELS",
            ],
            Kind::Session => vec![
                "NODE",
                "WORKDIR",
                "MODEL",
                "PANE",
                "AGENT-SESSION",
                "LABELS",
            ],
            Kind::Task => vec!["MODEL", "TARGET", "LABELS"],
            Kind::Swap => vec!["SESSIONS", "MESSAGE"],
            Kind::Lease => vec!["ACQUIRED", "TRANSITIONS"],
            Kind::SessionPool => vec!["WAITING", "STRATEGY", "ACCOUNTS", "LABELS"],
            Kind::Node => vec!["LEADER", "CAPACITY", "DAEMON", "VERSION", "ACCOUNTS"],
            Kind::ManifestSync => {
                vec![
                    "PATH",
                    "SUSPENDED",
                    "OBJECTS",
                    "APPLIED",
                    "PRUNED",
                    "FAILED",
                ]
            }
        });
    }
    c
}

pub fn row(kind: Kind, v: &Value, wide: bool) -> Vec<String> {
    let mut r = narrow_row(kind, v);
    if wide {
        r.extend(wide_cells(kind, v));
    }
    r
}

/// The columns of `get KIND`.
fn narrow_row(kind: Kind, v: &Value) -> Vec<String> {
    let name = s(v, "/metadata/name");
    let created = v
        .pointer("/metadata/creationTimestamp")
        .and_then(Value::as_str);
    match kind {
        Kind::Account => vec![
            name,
            phase(v),
            pct(v, "/status/usage/fiveHour/utilization"),
            pct(v, "/status/usage/sevenDay/utilization"),
            s(v, "/status/sessions").replace('-', "0"),
            s(v, "/spec/priority").replace('-', "0"),
            age(created),
        ],
        Kind::Session => vec![
            name,
            phase(v),
            s(v, "/status/account"),
            s(v, "/status/currentTask"),
            s(v, "/status/restarts").replace('-', "0"),
            age(created),
        ],
        Kind::Task => vec![
            name,
            phase(v),
            v.pointer("/spec/priority")
                .and_then(Value::as_str)
                .unwrap_or("normal")
                .to_string(),
            s(v, "/status/session"),
            s(v, "/status/attempts").replace('-', "0"),
            age(created),
        ],
        Kind::Swap => vec![
            name,
            s(v, "/spec/epoch"),
            s(v, "/spec/from"),
            s(v, "/spec/to"),
            s(v, "/spec/reason"),
            s(v, "/status/phase"),
            age(created),
        ],
        Kind::Lease => vec![
            name,
            s(v, "/spec/holderIdentity"),
            s(v, "/spec/epoch"),
            age(v.pointer("/spec/renewTime").and_then(Value::as_str)),
            age(created),
        ],
        Kind::SessionPool => vec![
            name,
            format!(
                "{}/{}",
                s(v, "/status/replicas").replace('-', "0"),
                s(v, "/spec/replicas")
            ),
            s(v, "/status/ready").replace('-', "0"),
            s(v, "/status/idle").replace('-', "0"),
            s(v, "/status/busy").replace('-', "0"),
            age(created),
        ],
        Kind::Node => vec![
            name,
            node_status(v),
            s(v, "/status/sessions").replace('-', "0"),
            age(v.pointer("/status/heartbeatTime").and_then(Value::as_str)),
            age(created),
        ],
        Kind::ManifestSync => {
            let (ready, message) = sync_ready(v);
            vec![
                name,
                ready,
                message,
                s(v, "/status/revision"),
                age(v.pointer("/status/lastSyncTime").and_then(Value::as_str)),
                age(created),
            ]
        }
    }
}

/// The columns `-o wide` adds.
fn wide_cells(kind: Kind, v: &Value) -> Vec<String> {
    match kind {
        Kind::Account => vec![
            until(
                v.pointer("/status/usage/fiveHour/resetsAt")
                    .and_then(Value::as_str),
            ),
            until(
                v.pointer("/status/usage/sevenDay/resetsAt")
                    .and_then(Value::as_str),
            ),
            pct(v, "/status/usage/sevenDayOpus/utilization"),
            pct(v, "/status/usage/sevenDaySonnet/utilization"),
            s(v, "/spec/configDir"),
            labels(v),
        ],
        Kind::Session => vec![
            s(v, "/status/nodeName"),
            s(v, "/spec/workdir"),
            s(v, "/spec/agent/model"),
            s(v, "/status/paneId"),
            s(v, "/status/agentSessionId"),
            labels(v),
        ],
        Kind::Task => vec![s(v, "/spec/model"), task_target(v), labels(v)],
        Kind::Swap => vec![
            v.pointer("/spec/sessions")
                .and_then(Value::as_array)
                .map(|a| joined(a.iter().filter_map(Value::as_str)))
                .unwrap_or_default(),
            s(v, "/status/message"),
        ],
        Kind::Lease => vec![
            age(v.pointer("/spec/acquireTime").and_then(Value::as_str)),
            s(v, "/spec/leaseTransitions"),
        ],
        Kind::SessionPool => vec![
            s(v, "/status/waiting").replace('-', "0"),
            v.pointer("/spec/placement/strategy")
                .and_then(Value::as_str)
                .unwrap_or("Spread")
                .to_string(),
            entries(v, "/status/accounts", |k, n| format!("{k}={n}")),
            labels(v),
        ],
        Kind::Node => vec![
            if v.pointer("/status/leading") == Some(&Value::Bool(true)) {
                "yes".into()
            } else {
                "no".into()
            },
            s(v, "/status/capacity/sessions"),
            s(v, "/status/daemon"),
            s(v, "/status/version"),
            entries(v, "/status/configDirs", |k, _| k.to_string()),
        ],
        Kind::ManifestSync => vec![
            s(v, "/spec/path"),
            s(v, "/spec/suspend"),
            s(v, "/status/objects").replace('-', "0"),
            s(v, "/status/applied").replace('-', "0"),
            s(v, "/status/pruned").replace('-', "0"),
            v.pointer("/status/failed")
                .and_then(Value::as_array)
                .map_or(0, Vec::len)
                .to_string(),
        ],
    }
}

/// `a,b,c`.
fn joined<'a>(items: impl Iterator<Item = &'a str>) -> String {
    items.collect::<Vec<_>>().join(",")
}

/// The entries of the map at `ptr`, each as `cell` says, joined; `<none>`
/// when it is empty or absent.
fn entries(v: &Value, ptr: &str, cell: impl Fn(&str, &Value) -> String) -> String {
    v.pointer(ptr)
        .and_then(Value::as_object)
        .filter(|m| !m.is_empty())
        .map(|m| {
            m.iter()
                .map(|(k, n)| cell(k, n))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_else(|| "<none>".into())
}

/// A ManifestSync's READY (its `Ready` condition) and MESSAGE.
fn sync_ready(v: &Value) -> (String, String) {
    let ready = condition(v, "Ready");
    let status = ready
        .and_then(|c| c.get("status"))
        .and_then(Value::as_str)
        .unwrap_or("Unknown")
        .to_string();
    let message = if v.pointer("/spec/suspend") == Some(&Value::Bool(true)) {
        "Suspended".into()
    } else {
        ready
            .and_then(|c| c.get("message"))
            .and_then(Value::as_str)
            .filter(|m| !m.is_empty())
            .or_else(|| ready.and_then(|c| c.get("reason")).and_then(Value::as_str))
            .unwrap_or("-")
            .to_string()
    };
    (status, message)
}

/// Where a Task may run: its session, selector, workdir, or any.
fn task_target(v: &Value) -> String {
    if let Some(sess) = v.pointer("/spec/session").and_then(Value::as_str) {
        format!("session={sess}")
    } else if let Some(sel) = v.pointer("/spec/sessionSelector") {
        format!("selector={sel}")
    } else if let Some(w) = v.pointer("/spec/workdir").and_then(Value::as_str) {
        format!("workdir={w}")
    } else {
        "any".into()
    }
}

/// Formats rows under headers, columns padded to their widest cell.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    table_opt(headers, rows, true)
}

/// [`table`], optionally without the header line (`--no-headers`).
pub fn table_opt(headers: &[&str], rows: &[Vec<String>], with_headers: bool) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    for w in &mut widths {
        *w = (*w + COLUMN_PADDING).max(COLUMN_MIN_WIDTH) - COLUMN_PADDING;
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let n = cells.len();
        for (i, c) in cells.into_iter().enumerate() {
            out.push_str(c);
            if i + 1 < n {
                out.push_str(&" ".repeat(widths[i] - c.chars().count() + 3));
            }
        }
        out.push('\n');
    };
    if with_headers {
        line(headers.to_vec(), &mut out);
    }
    for r in rows {
        line(r.iter().map(String::as_str).collect(), &mut out);
    }
    out
}

/// The object without `metadata.managedFields` (kubectl hides them unless
/// `--show-managed-fields`).
pub use crate::store::ownership::without_managed_fields;

pub fn to_yaml(v: &Value) -> String {
    serde_saphyr::to_string(v).expect("JSON values serialize to YAML")
}

/// `session.claude-failover.io/ccl-0`
pub fn name_of(kind: Kind, v: &Value) -> String {
    format!("{}/{}", kind.qualified(), s(v, "/metadata/name"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages() {
        assert_eq!(human_age(5), "5s");
        assert_eq!(human_age(130), "2m10s");
        assert_eq!(human_age(3600), "60m");
        assert_eq!(human_age(4 * 3600), "4h");
        assert_eq!(human_age(3 * 86400), "3d");
    }

    #[test]
    fn table_pads() {
        let t = table(&["NAME", "PHASE"], &[vec!["a".into(), "Idle".into()]]);
        assert_eq!(t, "NAME   PHASE\na      Idle\n");
        // kubectl's minimum width: six.
        let t = table(&["A", "B"], &[vec!["x".into(), "y".into()]]);
        assert_eq!(t, "A     B\nx     y\n");
    }
}

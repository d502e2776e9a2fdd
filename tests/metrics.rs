//! Metrics against Prometheus' own tools: the daemon's `/metrics` passes
//! `promtool check metrics`; every query of the Grafana dashboards is valid
//! PromQL (`promtool check rules`) over metrics the live daemon exports; a
//! real Prometheus server scrapes the daemon on loopback.

mod common;
use claude_failover::api::{Kind, ObjectKey};
use claude_failover::store::Store;
use common::daemon::{Daemon, T, call};
use common::prom::{Prometheus, promtool, tool};
use common::*;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::path::Path;

/// A store with two Accounts (one with usage readings, as the account
/// controller records them), a Session and three Tasks.
fn populate(env: &Env) {
    // Logged in, each on its own (an account without a login is Unavailable).
    for name in ["work", "spare"] {
        env.write(
            &format!("accounts/{name}/.credentials.json"),
            &format!(
                r#"{{"claudeAiOauth": {{"accessToken": "t-{name}", "refreshToken": "r-{name}"}}}}"#
            ),
        );
    }
    let accounts = format!(
        "{HEAD}kind: Account\nmetadata:\n  name: work\nspec:\n  configDir: {}\n  thresholds: {{fiveHour: 80, sevenDay: 95}}\n---\n{HEAD}kind: Account\nmetadata:\n  name: spare\nspec:\n  configDir: {}\n  priority: 20\n",
        env.path("accounts/work").display(),
        env.path("accounts/spare").display()
    );
    let tasks: String = (0..3)
        .map(|i| {
            format!("---\n{HEAD}kind: Task\nmetadata:\n  name: job-{i}\nspec:\n  prompt: job {i}\n")
        })
        .collect();
    // An empty pool: its gauge without an agent to start.
    let pools = format!(
        "---\n{HEAD}kind: SessionPool\nmetadata:\n  name: web\nspec:\n  replicas: 0\n  template:\n    spec:\n      workdir: /tmp\n"
    );
    let f = env.write("pool.yaml", &format!("{accounts}{tasks}{pools}"));
    env.ok(&["apply", "-f", f.to_str().unwrap()]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let ts =
        |s: i64| claude_failover::api::Time(k8s_openapi::jiff::Timestamp::from_second(s).unwrap());
    let store = Store::open(env.store()).unwrap();
    store
        .write_status(
            &ObjectKey::new(Kind::Account, "default", "work"),
            &json!({
                "phase": "NearLimit",
                "usage": {
                    "fiveHour": {"utilization": 84.5, "resetsAt": ts(now + 3600), "source": "statusLine", "observedAt": ts(now)},
                    "sevenDay": {"utilization": 40.0, "resetsAt": ts(now + 86400), "source": "poll", "observedAt": ts(now)},
                    "sevenDayOpus": {"utilization": 70.0, "resetsAt": ts(now + 86400), "source": "poll", "observedAt": ts(now)},
                    "sevenDaySonnet": {"utilization": 30.0, "resetsAt": ts(now + 86400), "source": "poll", "observedAt": ts(now)},
                },
                "projectedLimitAt": ts(now + 1800),
            }),
            None,
        )
        .unwrap();
}

/// The sample names of a text exposition.
fn sample_names(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap().to_string())
        .collect()
}

/// The exposition after one pass of a manifest sync that records into its
/// own registry (the families only a daemon with `--manifests` has).
fn sync_pass_metrics(env: &Env) -> String {
    let m = std::sync::Arc::new(claude_failover::metrics::Metrics::new());
    let dir = env.path("sync-manifests");
    env.write(
        "sync-manifests/t.yaml",
        &format!("{HEAD}kind: Task\nmetadata:\n  name: synced\nspec:\n  prompt: p\n"),
    );
    let store = Store::open(env.path("sync-store")).unwrap();
    let syncer = claude_failover::sync::Syncer::new(store, &dir, "default")
        .unwrap()
        .with_metrics(m.clone());
    assert!(syncer.pass().unwrap().is_some());
    m.encode()
}

fn live_metrics(d: &Daemon) -> String {
    // The object gauges are filled once the daemon has listed the store.
    wait_for("the object gauges", T, || {
        let (code, text) = call("GET", &format!("{}/metrics", d.url), None, None);
        (code == 200 && text.contains("claude_failover_account_projected_limit_timestamp_seconds{"))
            .then_some(text)
    })
}

#[test]
#[cfg_attr(
    not(prometheus),
    ignore = "needs prometheus and promtool: apt-get install prometheus"
)]
fn metrics_pass_promtool_check() {
    let promtool_bin = tool("promtool");
    let env = Env::new();
    populate(&env);
    let d = Daemon::start(&env, &[]);
    let text = live_metrics(&d);
    let (ok, out) = promtool(&promtool_bin, &["check", "metrics"], &text);
    assert!(
        ok && out.trim().is_empty(),
        "promtool check metrics:\n{out}\n---\n{text}"
    );
    // Label sets stay bounded: no task or session name is a label value.
    for name in ["job-0", "job-1", "job-2"] {
        assert!(!text.contains(name), "{name} in /metrics");
    }
}

/// Every PromQL query of a dashboard (panels' `expr`, and the metric of
/// templating `label_values(METRIC, LABEL)` queries).
fn queries(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("expr", Value::String(e)) => out.push(e.clone()),
                    ("query" | "definition", Value::String(q))
                        if q.starts_with("label_values(") =>
                    {
                        let inner = q.trim_start_matches("label_values(").trim_end_matches(')');
                        let metric = inner.rsplit_once(',').map(|x| x.0).unwrap_or(inner);
                        out.push(metric.trim().to_string());
                    }
                    _ => queries(x, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| queries(x, out)),
        _ => {}
    }
}

/// Grafana's variables replaced by what they stand for, so the query is
/// plain PromQL.
fn plain(expr: &str) -> String {
    let e = expr
        .replace("$__rate_interval", "1m")
        .replace("$__interval", "1m")
        .replace("$__range", "1h")
        .replace("$account", ".*")
        .replace("$job", ".*")
        .replace("$instance", ".*");
    assert!(!e.contains('$'), "unknown Grafana variable in {expr}");
    e
}

/// The daemon's metric names in a query: `claude_failover_*` and the
/// process collector's `process_*`.
fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    let next = |r: &str| {
        [r.find("claude_failover_"), r.find("process_")]
            .into_iter()
            .flatten()
            .min()
    };
    while let Some(i) = next(rest) {
        let name: String = rest[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[i + name.len()..];
        out.push(name);
    }
    out
}

#[test]
#[cfg_attr(
    not(prometheus),
    ignore = "needs prometheus and promtool: apt-get install prometheus"
)]
fn every_dashboard_query_is_valid_promql_over_exported_metrics() {
    let promtool_bin = tool("promtool");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("dashboards");
    let mut boards: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    boards.sort();
    let names: Vec<String> = boards
        .iter()
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["controller", "pool", "quota"]);
    let mut all = Vec::new();
    for b in &boards {
        let v: Value = serde_json::from_str(&std::fs::read_to_string(b).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", b.display()));
        let mut q = Vec::new();
        queries(&v, &mut q);
        assert!(q.len() >= 8, "{}: only {} queries", b.display(), q.len());
        all.extend(q.into_iter().map(|e| (b.clone(), e)));
    }
    // 0. Every panel's selectors follow the dashboards' job and instance
    // variables, so one Grafana shows several daemons apart.
    for b in &boards {
        let v: Value = serde_json::from_str(&std::fs::read_to_string(b).unwrap()).unwrap();
        let mut exprs = Vec::new();
        queries(&v["panels"], &mut exprs);
        for e in &exprs {
            let mut rest = e.as_str();
            while let Some(i) = metric_names(rest)
                .first()
                .and_then(|n| rest.find(n.as_str()))
            {
                let tail = &rest[i..];
                let name_len = tail
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(tail.len());
                assert!(
                    tail[name_len..].starts_with(r#"{job=~"$job",instance=~"$instance""#),
                    "{}: {} is not filtered by $job and $instance: {e}",
                    b.display(),
                    &tail[..name_len]
                );
                rest = &tail[name_len..];
            }
        }
    }
    // 1. PromQL: every query as a recording rule, checked by promtool.
    let env = Env::new();
    let mut rules = String::from("groups:\n  - name: dashboards\n    rules:\n");
    for (i, (_, e)) in all.iter().enumerate() {
        rules.push_str(&format!(
            "      - record: dashboard:query_{i}\n        expr: {}\n",
            serde_json::to_string(&plain(e)).unwrap()
        ));
    }
    let rules_file = env.write("rules.yml", &rules);
    let (ok, out) = promtool(
        &promtool_bin,
        &["check", "rules", rules_file.to_str().unwrap()],
        "",
    );
    assert!(ok, "promtool check rules:\n{out}\n{rules}");
    assert!(
        out.contains(&format!("SUCCESS: {} rules found", all.len())),
        "{out}"
    );
    // 2. Every metric named exists in the live daemon's /metrics.
    populate(&env);
    let d = Daemon::start(&env, &[]);
    let mut exported = sample_names(&live_metrics(&d));
    // The manifest sync's families: what a sync pass records.
    exported.extend(sample_names(&sync_pass_metrics(&env)));
    let mut used = BTreeSet::new();
    for (board, e) in &all {
        for m in metric_names(e) {
            assert!(
                exported.contains(&m),
                "{}: {m} is not exported by the daemon (query: {e})\nexported: {exported:#?}",
                board.display()
            );
            used.insert(m);
        }
    }
    // And the dashboards show every family the daemon exports.
    let family = |n: &String| {
        ["_bucket", "_count", "_sum"]
            .iter()
            .find_map(|s| n.strip_suffix(s))
            .unwrap_or(n)
            .to_string()
    };
    let families: BTreeSet<String> = exported.iter().map(family).collect();
    let used_families: BTreeSet<String> = used.iter().map(family).collect();
    let unshown: Vec<_> = families.difference(&used_families).collect();
    assert!(unshown.is_empty(), "no dashboard shows {unshown:?}");
}

#[test]
#[cfg_attr(
    not(prometheus),
    ignore = "needs prometheus and promtool: apt-get install prometheus"
)]
fn a_real_prometheus_scrapes_the_daemon() {
    let bin = tool("prometheus");
    let env = Env::new();
    populate(&env);
    let d = Daemon::start(&env, &[]);
    let prom = Prometheus::start(&bin, env.dir.path(), &d.addr());
    prom.wait_value(r#"up{job="claude-failover"}"#, 1.0);
    let build = prom.wait_value("claude_failover_build_info", 1.0);
    assert_eq!(build["metric"]["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(build["metric"]["instance"], d.addr());
    prom.wait_value(r#"claude_failover_tasks{phase="Pending"}"#, 3.0);
    prom.wait_value(r#"claude_failover_leader"#, 1.0);
    prom.wait_value(
        r#"claude_failover_account_phase{account="work",phase="NearLimit"}"#,
        1.0,
    );
    prom.wait_value(
        r#"claude_failover_account_utilization_ratio{account="work",window="five_hour"}"#,
        0.845,
    );
    // A change in the store reaches Prometheus: a fourth task.
    env.ok(&[
        "apply",
        "-f",
        env.write(
            "more.yaml",
            &format!("{HEAD}kind: Task\nmetadata:\n  name: job-3\nspec:\n  prompt: job 3\n"),
        )
        .to_str()
        .unwrap(),
    ]);
    prom.wait_value(r#"sum(claude_failover_tasks{phase="Pending"})"#, 4.0);
}

/// `claude_failover_reconciles_total{controller}` of an exposition.
fn reconciles(exposition: &str) -> std::collections::BTreeMap<String, f64> {
    exposition
        .lines()
        .filter_map(|l| l.strip_prefix("claude_failover_reconciles_total{controller=\""))
        .filter_map(|l| {
            let (controller, rest) = l.split_once('"')?;
            let value = rest.rsplit(' ').next()?.parse().ok()?;
            Some((controller.to_string(), value))
        })
        .collect()
}

/// A quiet daemon does not spin: over a quiet window no controller runs
/// more than its timers ask for. (The failover controller once woke on the
/// watcher events of its own directory scans and ran thousands of passes a
/// second, taking a core from the agents.)
#[test]
fn a_quiet_daemon_reconciles_only_on_changes_and_timers() {
    let env = Env::new();
    populate(&env);
    let d = Daemon::start(&env, &[]);
    live_metrics(&d);
    let read = || reconciles(&call("GET", &format!("{}/metrics", d.url), None, None).1);
    // Settled: the first passes after the start have run, and the start's
    // burst is over (a second with no more passes than the timers ask for;
    // on a loaded machine the burst can take a while).
    let mut last = wait_for("every controller's first pass", T, || {
        let r = read();
        ["account", "failover"]
            .iter()
            .all(|c| r.get(*c).is_some_and(|v| *v > 0.0))
            .then(|| (std::time::Instant::now(), r))
    });
    let before = wait_for("the start's burst to end", T, || {
        if last.0.elapsed() < std::time::Duration::from_secs(1) {
            return None;
        }
        let r = read();
        let calm = r
            .iter()
            .all(|(c, n)| n - last.1.get(c).copied().unwrap_or(0.0) <= 3.0);
        if calm {
            return Some(r);
        }
        last = (std::time::Instant::now(), r);
        None
    });
    // A measurement window, not a synchronisation: nothing changes in it.
    let window = std::time::Duration::from_secs(3);
    std::thread::sleep(window);
    let after = read();
    for (controller, n) in &after {
        let ran = n - before.get(controller).copied().unwrap_or(0.0);
        // The busiest timer is the failover controller's 1 s tick.
        assert!(
            ran <= 2.0 * window.as_secs_f64() + 2.0,
            "the {controller} controller ran {ran} passes in a quiet {window:?}"
        );
    }
}

/// The alert rules of deploy/ name only metrics the daemon exports (a live
/// daemon's /metrics and a sync pass's), and each parses as PromQL.
#[test]
#[cfg_attr(
    not(prometheus),
    ignore = "needs prometheus and promtool: apt-get install prometheus"
)]
fn alert_rules_name_only_exported_metrics() {
    let promtool_bin = tool("promtool");
    let rules =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus/claude-failover.rules.yml");
    let (ok, out) = promtool(
        &promtool_bin,
        &["check", "rules", rules.to_str().unwrap()],
        "",
    );
    assert!(ok, "{out}");
    let doc: Value = serde_saphyr::from_str(&std::fs::read_to_string(&rules).unwrap()).unwrap();
    let env = Env::new();
    populate(&env);
    let d = Daemon::start(&env, &[]);
    let mut exported = sample_names(&live_metrics(&d));
    exported.extend(sample_names(&sync_pass_metrics(&env)));
    let mut named = 0;
    for r in doc["groups"][0]["rules"].as_array().unwrap() {
        let expr = r["expr"].as_str().unwrap();
        for m in metric_names(expr) {
            assert!(exported.contains(&m), "{}: {m} is not exported", r["alert"]);
            named += 1;
        }
    }
    assert!(named >= 6, "{named}");
}

/// Each row of docs/control-plane.md's metrics table: the family names in
/// the first column, and each label with the values listed in parentheses.
/// A documented row: its family names, and each label with its values.
type DocRow = (Vec<String>, Vec<(String, Vec<String>)>);

fn documented() -> Vec<DocRow> {
    let doc = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/control-plane.md"),
    )
    .unwrap();
    let table = doc
        .split("## Metrics")
        .nth(1)
        .unwrap()
        .split("\n\n")
        .nth(2)
        .unwrap();
    let ticks = |s: &str| -> Vec<String> {
        s.split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_string)
            .collect()
    };
    table
        .lines()
        .skip(2)
        .map(|row| {
            let cells: Vec<&str> = row.split('|').map(str::trim).collect();
            let names = ticks(cells[1]);
            // `label` (`v1`, `v2`), `other`: split at top-level commas.
            let mut labels = Vec::new();
            let (mut depth, mut start) = (0, 0);
            let col = cells[3];
            for (i, c) in col.char_indices().chain([(col.len(), ',')]) {
                match c {
                    '(' => depth += 1,
                    ')' => depth -= 1,
                    ',' if depth == 0 => {
                        let part = &col[start..i];
                        start = i + 1;
                        let Some((name, rest)) = part
                            .trim()
                            .strip_prefix('`')
                            .and_then(|p| p.split_once('`'))
                        else {
                            continue;
                        };
                        labels.push((name.to_string(), ticks(rest)));
                    }
                    _ => {}
                }
            }
            (names, labels)
        })
        .collect()
}

#[test]
fn the_docs_name_every_exported_metric_and_only_those() {
    let env = Env::new();
    populate(&env);
    let d = Daemon::start(&env, &[]);
    let text = format!("{}{}", live_metrics(&d), sync_pass_metrics(&env));
    let families: BTreeSet<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| l.split(' ').next().unwrap().to_string())
        .collect();
    let rows = documented();
    assert!(rows.len() > 20, "{rows:?}");
    let mut in_docs = BTreeSet::new();
    for (names, labels) in &rows {
        for n in names {
            assert!(
                families.contains(n),
                "docs/control-plane.md names {n}, which is not exported"
            );
            in_docs.insert(n.clone());
            for (label, values) in labels {
                for v in values {
                    let series = format!("{label}=\"{v}\"");
                    assert!(
                        text.lines()
                            .any(|l| l.starts_with(n.as_str()) && l.contains(&series)),
                        "docs: {n}{{{series}}} is not exported"
                    );
                }
            }
        }
    }
    let undocumented: Vec<_> = families.difference(&in_docs).collect();
    assert!(
        undocumented.is_empty(),
        "exported but not in docs/control-plane.md: {undocumented:?}"
    );
}

//! Prometheus' own tools for the metrics tests: `promtool` and a real
//! `prometheus` server (Debian's `prometheus` package; `.ci/run` installs
//! it).

use super::{free_port, wait_for};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// `/usr/bin/NAME`, or NAME on the PATH. Only called by tests that the
/// build marks as needing Prometheus (`cfg(prometheus)`): they are
/// reported as ignored where it is missing.
pub fn tool(name: &str) -> PathBuf {
    let fixed = Path::new("/usr/bin").join(name);
    if fixed.exists() {
        return fixed;
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join(name))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("{name} is not installed (apt-get install prometheus)"))
}

/// Runs `promtool ARGS` with `stdin`; returns success and its output.
pub fn promtool(bin: &Path, args: &[&str], stdin: &str) -> (bool, String) {
    let mut child = Command::new(bin)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn promtool");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// A Prometheus server on 127.0.0.1 with its own config and TSDB in `dir`.
pub struct Prometheus {
    child: Child,
    pub url: String,
    log: PathBuf,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- prometheus log ---\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Starts it scraping `target` (`127.0.0.1:PORT`) every second, and
    /// waits until it is ready. A port taken meanwhile is retried.
    pub fn start(bin: &Path, dir: &Path, target: &str) -> Prometheus {
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: claude-failover\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        for attempt in 0..3 {
            let port = free_port();
            let log = dir.join(format!("prometheus-{attempt}.log"));
            let mut child = Command::new(bin)
                .arg(format!("--config.file={}", config.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.join(format!("tsdb-{attempt}")).display()
                ))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .expect("spawn prometheus");
            let url = format!("http://127.0.0.1:{port}");
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(Duration::from_secs(5)))
                .build()
                .into();
            let up = wait_for(
                "prometheus to be ready or exit",
                Duration::from_secs(90),
                || {
                    if let Ok(Some(_)) = child.try_wait() {
                        return Some(false);
                    }
                    agent
                        .get(&format!("{url}/-/ready"))
                        .call()
                        .ok()
                        .filter(|r| r.status() == 200)
                        .map(|_| true)
                },
            );
            if up {
                return Prometheus { child, url, log };
            }
            eprintln!(
                "prometheus exited (attempt {attempt}):\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        panic!("prometheus did not start");
    }

    /// An instant query through the HTTP API: the result vector.
    pub fn query(&self, promql: &str) -> Vec<serde_json::Value> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .into();
        let mut resp = agent
            .get(&format!("{}/api/v1/query", self.url))
            .query("query", promql)
            .call()
            .unwrap_or_else(|e| panic!("query {promql}: {e}"));
        let v: serde_json::Value =
            serde_json::from_str(&resp.body_mut().read_to_string().unwrap()).unwrap();
        assert_eq!(v["status"], "success", "{v}");
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    /// Waits until `promql` has exactly one sample equal to `want`; returns
    /// that sample (labels and value).
    pub fn wait_value(&self, promql: &str, want: f64) -> serde_json::Value {
        wait_for(
            &format!("prometheus: {promql} == {want}"),
            Duration::from_secs(90),
            || {
                let r = self.query(promql);
                match r.as_slice() {
                    [one]
                        if one["value"][1].as_str().and_then(|v| v.parse::<f64>().ok())
                            == Some(want) =>
                    {
                        Some(one.clone())
                    }
                    _ => None,
                }
            },
        )
    }
}

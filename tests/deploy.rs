//! The operator's kit in deploy/: the systemd user unit (systemd-analyze
//! verify), the launchd plist (a well-formed property list whose arguments
//! the program takes), Grafana's provisioning files, and the Prometheus
//! config and alert rules (promtool check, and promtool's unit tests).

mod common;
use common::prom::{promtool, tool};
use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

fn deploy(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(rel)
}

fn yaml(rel: &str) -> Value {
    let text = std::fs::read_to_string(deploy(rel)).unwrap();
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// The program accepts these arguments (`--help` after them: parsed, not run).
fn program_takes(args: &[&str]) {
    let out = Command::new(BIN).args(args).arg("--help").output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
#[cfg_attr(
    not(prometheus),
    ignore = "needs prometheus and promtool: apt-get install prometheus"
)]
fn the_prometheus_rules_and_config_check_and_their_tests_pass() {
    let bin = tool("promtool");
    let rules = deploy("prometheus/claude-failover.rules.yml");
    let (ok, out) = promtool(&bin, &["check", "rules", rules.to_str().unwrap()], "");
    assert!(ok && out.contains("SUCCESS: 7 rules found"), "{out}");
    let out = Command::new(&bin)
        .args(["test", "rules", "claude-failover.rules.test.yml"])
        .current_dir(deploy("prometheus"))
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success() && text.contains("SUCCESS"), "{text}");
    // Every alert has a unit test.
    let tests =
        std::fs::read_to_string(deploy("prometheus/claude-failover.rules.test.yml")).unwrap();
    for r in yaml("prometheus/claude-failover.rules.yml")["groups"][0]["rules"]
        .as_array()
        .unwrap()
    {
        let name = r["alert"].as_str().unwrap();
        assert!(
            tests.contains(&format!("alertname: {name}")),
            "{name} has no promtool test"
        );
    }
    let out = Command::new(&bin)
        .args(["check", "config", "prometheus.yml"])
        .current_dir(deploy("prometheus"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
#[cfg_attr(
    not(systemd_analyze),
    ignore = "needs systemd-analyze: apt-get install systemd"
)]
fn the_systemd_user_unit_verifies() {
    let analyze = program("systemd-analyze");
    let env = Env::new();
    // Where the unit looks for the program (`cargo install`'s place).
    let home = env.path("home");
    std::fs::create_dir_all(home.join(".cargo/bin")).unwrap();
    std::os::unix::fs::symlink(BIN, home.join(".cargo/bin/claude-failover")).unwrap();
    let runtime = env.path("run");
    std::fs::create_dir_all(&runtime).unwrap();
    std::fs::set_permissions(
        &runtime,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    let unit = env.path("claude-failover.service");
    std::fs::copy(deploy("systemd/claude-failover.service"), &unit).unwrap();
    let out = Command::new(&analyze)
        .args(["verify", "--user"])
        .arg(&unit)
        .env("HOME", &home)
        .env("XDG_RUNTIME_DIR", &runtime)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    // systemd-analyze exits 0 on ignored lines too: silence is the check.
    assert!(
        out.status.success() && err.trim().is_empty(),
        "systemd-analyze verify:\n{err}"
    );
    let text = std::fs::read_to_string(&unit).unwrap();
    let exec = text
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .unwrap();
    let args: Vec<&str> = exec.split_whitespace().skip(1).collect();
    program_takes(&args);
    assert!(
        text.contains("\nKillMode=process\n"),
        "a stop must leave the agents running"
    );
}

#[test]
#[cfg_attr(
    not(python3),
    ignore = "needs python3 (plistlib): apt-get install python3"
)]
fn the_launchd_plist_is_a_property_list_the_program_takes() {
    let python = program("python3");
    let out = Command::new(python)
        .args([
            "-c",
            "import json, plistlib, sys; print(json.dumps(plistlib.load(open(sys.argv[1], 'rb'))))",
        ])
        .arg(deploy("launchd/io.claude-failover.daemon.plist"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "not a property list: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let p: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(p["Label"], "io.claude-failover.daemon");
    assert_eq!(
        p["AbandonProcessGroup"], true,
        "a stop must leave the agents running"
    );
    assert_eq!(p["KeepAlive"]["SuccessfulExit"], false);
    let args: Vec<&str> = p["ProgramArguments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(args[0].ends_with("/claude-failover"));
    program_takes(&args[1..]);
}

#[test]
fn grafana_provisioning_points_at_the_dashboards() {
    let ds = yaml("grafana/provisioning/datasources/claude-failover.yaml");
    assert_eq!(ds["apiVersion"], 1);
    let d = &ds["datasources"][0];
    assert_eq!(d["type"], "prometheus");
    assert!(d["url"].as_str().unwrap().starts_with("http"));
    let prov = yaml("grafana/provisioning/dashboards/claude-failover.yaml");
    assert_eq!(prov["apiVersion"], 1);
    let p = &prov["providers"][0];
    assert_eq!(p["type"], "file");
    assert!(p["options"]["path"].as_str().unwrap().starts_with('/'));
    // Each dashboard picks a Prometheus datasource through its variable,
    // so the provisioned one is selectable, and carries a stable uid.
    for b in ["controller", "pool", "quota"] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("dashboards/{b}.json"));
        let v: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let vars = v["templating"]["list"].as_array().unwrap();
        assert!(
            vars.iter()
                .any(|x| x["type"] == "datasource" && x["query"] == "prometheus"),
            "{b}"
        );
        for name in ["job", "instance"] {
            assert!(
                vars.iter().any(|x| x["name"] == name),
                "{b} lacks the {name} variable"
            );
        }
        assert!(
            v["uid"].as_str().is_some_and(|u| !u.is_empty()),
            "{b} has no uid"
        );
    }
}

//! Build facts.
//!
//! - Which external programs the tests can use, so a test that needs one
//!   that is missing is reported as ignored (never as passed):
//!   `cfg(claude_code)` when the pinned Claude Code (or `CLAUDE_BIN`) is
//!   there, `cfg(prometheus)` when `prometheus` and `promtool` are,
//!   `cfg(mcp_sdk)` when the MCP Python SDK's venv is. CI sets
//!   `CLAUDE_FAILOVER_REQUIRE_CLAUDE` / `CLAUDE_FAILOVER_REQUIRE_TOOLS`: then
//!   a missing program fails the build instead.
//! - For `claude_failover_build_info` and `version`: the git commit the
//!   binary is built from (`unknown` outside a checkout, e.g. a crate from
//!   a registry) and the compiler's version.

use std::path::{Path, PathBuf};
use std::process::Command;

const CLAUDE: &str = "tools/claude-code/node_modules/@anthropic-ai/claude-code-linux-x64/claude";

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
}

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
}

/// `CLAUDE_FAILOVER_REVISION` and `CLAUDE_FAILOVER_RUSTC`.
fn build_info() {
    let revision = git(&["rev-parse", "HEAD"]).unwrap_or_else(|| "unknown".into());
    println!("cargo::rustc-env=CLAUDE_FAILOVER_REVISION={revision}");
    // Run again when HEAD moves: a commit, a checkout. Only files that
    // exist (a missing one would make cargo run this every build).
    let mut watch = vec![];
    if let Some(dir) = git(&["rev-parse", "--git-dir"]) {
        watch.push(format!("{dir}/HEAD"));
    }
    if let Some(common) = git(&["rev-parse", "--git-common-dir"]) {
        watch.push(format!("{common}/packed-refs"));
        if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
            watch.push(format!("{common}/{branch}"));
        }
    }
    for w in watch.iter().filter(|w| Path::new(w).exists()) {
        println!("cargo::rerun-if-changed={w}");
    }
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let version = Command::new(rustc)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .nth(1)
                .map(str::to_string)
        })
        .unwrap_or_else(|| "unknown".into());
    println!("cargo::rustc-env=CLAUDE_FAILOVER_RUSTC={version}");
}

fn main() {
    build_info();
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rustc-check-cfg=cfg(claude_code)");
    println!("cargo::rustc-check-cfg=cfg(prometheus)");
    println!("cargo::rustc-check-cfg=cfg(mcp_sdk)");
    for var in [
        "CLAUDE_BIN",
        "MCP_PYTHON",
        "PATH",
        "CLAUDE_FAILOVER_REQUIRE_CLAUDE",
        "CLAUDE_FAILOVER_REQUIRE_TOOLS",
    ] {
        println!("cargo::rerun-if-env-changed={var}");
    }
    // `npm ci` replaces node_modules: the folder's entry list changes.
    println!("cargo::rerun-if-changed=tools/claude-code");
    let claude = std::env::var_os("CLAUDE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(CLAUDE).to_path_buf());
    if claude.is_file() {
        println!("cargo::rustc-cfg=claude_code");
    } else if std::env::var_os("CLAUDE_FAILOVER_REQUIRE_CLAUDE").is_some() {
        panic!(
            "Claude Code is required (CLAUDE_FAILOVER_REQUIRE_CLAUDE) but {} is missing: npm ci --prefix tools/claude-code, or set CLAUDE_BIN",
            claude.display()
        );
    }
    // The programs the CLI's and the operator's kit's tests drive: kubectl
    // (the output formats' reference), the shells of the completion tests,
    // systemd-analyze (the user unit), python3 (plistlib, the launchd
    // plist), git (the sync's revision), etcd (the store's etcd backend:
    // tests/common/etcd.rs starts a real cluster).
    for (cfg, program) in [
        ("kubectl", "kubectl"),
        ("zsh", "zsh"),
        ("fish", "fish"),
        ("systemd_analyze", "systemd-analyze"),
        ("python3", "python3"),
        ("git", "git"),
        ("etcd", "etcd"),
    ] {
        println!("cargo::rustc-check-cfg=cfg({cfg})");
        if on_path(program) {
            println!("cargo::rustc-cfg={cfg}");
        } else if std::env::var_os("CLAUDE_FAILOVER_REQUIRE_TOOLS").is_some() {
            panic!(
                "{program} is required (CLAUDE_FAILOVER_REQUIRE_TOOLS) but not on PATH: see .ci/run"
            );
        }
    }
    // The official MCP Python SDK in its venv (a real MCP client).
    println!("cargo::rerun-if-changed=tools/mcp-client");
    let python = std::env::var_os("MCP_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new("tools/mcp-client/.venv/bin/python").to_path_buf());
    if python.exists() {
        println!("cargo::rustc-cfg=mcp_sdk");
    } else if std::env::var_os("CLAUDE_FAILOVER_REQUIRE_TOOLS").is_some() {
        panic!(
            "the MCP Python SDK is required (CLAUDE_FAILOVER_REQUIRE_TOOLS) but {} is missing: see tools/mcp-client/requirements.txt",
            python.display()
        );
    }
    if on_path("prometheus") && on_path("promtool") {
        println!("cargo::rustc-cfg=prometheus");
    } else if std::env::var_os("CLAUDE_FAILOVER_REQUIRE_TOOLS").is_some() {
        panic!(
            "prometheus and promtool are required (CLAUDE_FAILOVER_REQUIRE_TOOLS) but not on PATH"
        );
    }
}

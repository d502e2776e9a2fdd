//! Says which external programs the tests can use, so a test that needs
//! one that is missing is reported as ignored (never as passed):
//! `cfg(claude_code)` when the pinned Claude Code (or `CLAUDE_BIN`) is
//! there, `cfg(prometheus)` when `prometheus` and `promtool` are,
//! `cfg(mcp_sdk)` when the MCP Python SDK's venv is. CI sets
//! `CLAUDE_FAILOVER_REQUIRE_CLAUDE` / `CLAUDE_FAILOVER_REQUIRE_TOOLS`: then
//! a missing program fails the build instead.

use std::path::{Path, PathBuf};

const CLAUDE: &str = "tools/claude-code/node_modules/@anthropic-ai/claude-code-linux-x64/claude";

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
}

fn main() {
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

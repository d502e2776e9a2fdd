//! The pool's MCP server in an agent's own launch, for Sessions with
//! `spec.agent.mcp: true`.
//!
//! At each launch the daemon writes `mcp.json` beside the session's
//! settings file (`STATE/sessions/NS/NAME/`, mode 0600: it holds the
//! session's secret) and Claude Code gets `--mcp-config FILE`: the server
//! `claude-failover` over HTTP on the daemon's listener, with the agent's
//! token (see [`super::http`]). The user's own files and MCP servers are
//! left as they are. The secret changes at every launch, like the hooks'.

use super::http::{PATH, agent_token};
use crate::api::{ObjectKey, Session};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};

/// The file name, beside the session's settings file.
pub const FILE: &str = "mcp.json";

/// Where the agent's MCP config lives, given its settings file.
pub fn config_path(settings_path: &Path) -> PathBuf {
    settings_path.with_file_name(FILE)
}

/// Whether the Session opted in.
pub fn enabled(session: &Session) -> bool {
    session.spec.agent.mcp
}

/// The arguments that add the server to the agent's command line (none
/// when the Session did not opt in). They go right after `--settings FILE`:
/// `--mcp-config` takes several values, up to the next flag.
pub fn launch_args(session: &Session, settings_path: &Path) -> Vec<String> {
    if !enabled(session) {
        return Vec::new();
    }
    vec![
        "--mcp-config".into(),
        config_path(settings_path).to_string_lossy().into_owned(),
    ]
}

/// How long Claude Code lets one call of the pool's tools run: the longest
/// wait a tool takes ([`super::tools::MAX_WAIT`]) and a minute more (its
/// own default for an HTTP server's request is 60 s).
pub const CALL_TIMEOUT_MS: u64 = (super::tools::MAX_WAIT.as_secs() + 60) * 1000;

/// The content of the agent's MCP config: the daemon at `base_url`
/// (`http://HOST:PORT`), with the agent's token.
pub fn config(base_url: &str, key: &ObjectKey, secret: &str) -> Value {
    json!({
        "mcpServers": {
            super::SERVER_NAME: {
                "type": "http",
                "url": format!("{base_url}{PATH}"),
                "headers": {"Authorization": format!("Bearer {}", agent_token(key, secret))},
                "timeout": CALL_TIMEOUT_MS,
            }
        }
    })
}

/// At a launch: writes the agent's MCP config (mode 0600, atomically) when
/// the Session opted in, else removes one left from before.
pub fn prepare(
    settings_path: &Path,
    session: &Session,
    key: &ObjectKey,
    base_url: &str,
    secret: &str,
) -> std::io::Result<()> {
    let path = config_path(settings_path);
    if !enabled(session) {
        return match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        };
    }
    let text = serde_json::to_vec_pretty(&config(base_url, key, secret)).expect("JSON");
    crate::fsutil::write_atomic(&path, &text, Some(0o600), false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{AgentSpec, Kind, SessionSpec};
    use std::os::unix::fs::PermissionsExt;

    fn session(mcp: bool) -> Session {
        Session::new(
            "ccl-0",
            SessionSpec {
                workdir: "/w".into(),
                account: None,
                agent: AgentSpec {
                    mcp,
                    ..Default::default()
                },
                suspend: false,
                workspace: None,
                standby: None,
                node_name: None,
            },
        )
    }

    #[test]
    fn only_sessions_that_opt_in_get_the_server() {
        let settings = Path::new("/state/sessions/default/ccl-0/settings.json");
        assert!(launch_args(&session(false), settings).is_empty());
        assert_eq!(
            launch_args(&session(true), settings),
            ["--mcp-config", "/state/sessions/default/ccl-0/mcp.json"]
        );
    }

    #[test]
    fn the_config_carries_the_agents_token_and_stays_private() {
        let key = ObjectKey::new(Kind::Session, "default", "ccl-0");
        let v = config("http://127.0.0.1:7817", &key, "s3cr3t");
        let server = &v["mcpServers"]["claude-failover"];
        assert_eq!(server["type"], "http");
        assert_eq!(server["url"], "http://127.0.0.1:7817/mcp");
        assert_eq!(server["timeout"], 660_000);
        assert_eq!(
            server["headers"]["Authorization"],
            "Bearer agent.default.ccl-0.s3cr3t"
        );
        let dir = tempfile::tempdir().unwrap();
        let settings = dir.path().join("settings.json");
        prepare(
            &settings,
            &session(true),
            &key,
            "http://127.0.0.1:1",
            "s3cr3t",
        )
        .unwrap();
        let path = config_path(&settings);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        prepare(&settings, &session(false), &key, "http://127.0.0.1:1", "x").unwrap();
        assert!(!path.exists(), "opting out removes it");
        prepare(&settings, &session(false), &key, "http://127.0.0.1:1", "x").unwrap();
    }
}

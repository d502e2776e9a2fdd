//! The `mcp` section of `config.yaml`: who may write, the extra bearer
//! tokens of the HTTP endpoint, and the delegation limits.

use crate::daemon::access;
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

/// Default deepest delegation: a task created by an agent whose own task was
/// created by an agent whose task was created by an agent.
pub const DEFAULT_MAX_DEPTH: u32 = 3;
/// Default number of tasks one session's agent may create per window.
pub const DEFAULT_MAX_TASKS: u32 = 10;
/// Default length of that window.
pub const DEFAULT_RATE_WINDOW: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct McpConfig {
    /// Write tools (create and cancel tasks, restart sessions, request
    /// failovers) for `claude-failover mcp` and for HTTP clients of the API
    /// token. Default false: read-only.
    pub write: Option<bool>,
    /// More bearer tokens for the HTTP endpoint, each with its own scope.
    #[serde(default)]
    pub tokens: Vec<TokenConfig>,
    #[serde(default)]
    pub delegation: DelegationConfig,
}

/// A named bearer token of the HTTP endpoint.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TokenConfig {
    /// Named in the events of its writes.
    pub name: String,
    /// The file holding the token (mode 0600, like the API token).
    pub token_file: String,
    /// Whether its clients get the write tools.
    #[serde(default)]
    pub write: bool,
}

/// Limits on agents handing work to the pool.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DelegationConfig {
    /// Deepest chain of delegated tasks (a task created by a person is at
    /// depth 0, one its agent creates at 1, ...).
    pub max_depth: Option<u32>,
    /// Tasks one session's agent may create per `windowSeconds`.
    pub max_tasks: Option<u32>,
    pub window_seconds: Option<u64>,
}

/// The delegation limits in force.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    pub max_depth: u32,
    pub max_tasks: u32,
    pub window: Duration,
}

impl DelegationConfig {
    pub fn limits(&self) -> Limits {
        Limits {
            max_depth: self.max_depth.unwrap_or(DEFAULT_MAX_DEPTH),
            max_tasks: self.max_tasks.unwrap_or(DEFAULT_MAX_TASKS),
            window: self
                .window_seconds
                .map(|s| Duration::from_secs(s.max(1)))
                .unwrap_or(DEFAULT_RATE_WINDOW),
        }
    }
}

/// A token of `mcp.tokens`, read from its file.
#[derive(Clone)]
pub struct NamedToken {
    pub name: String,
    /// The secret (never logged, never shown).
    pub secret: String,
    pub write: bool,
}

impl std::fmt::Debug for NamedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NamedToken")
            .field("name", &self.name)
            .field("write", &self.write)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    #[error("mcp.tokens[{index}] ({name}): {source}")]
    Read {
        index: usize,
        name: String,
        #[source]
        source: access::TokenError,
    },
    #[error("mcp.tokens[{index}] ({name}): {path} does not exist")]
    Missing {
        index: usize,
        name: String,
        path: PathBuf,
    },
    #[error("mcp.tokens[{index}].name: {message}")]
    Name { index: usize, message: String },
}

impl McpConfig {
    /// Whether the API token's clients and the stdio server write.
    pub fn write(&self) -> bool {
        self.write.unwrap_or(false)
    }

    /// Reads every token of `mcp.tokens` (same rules as the API token file:
    /// mode 0600, not empty). Names must be unique DNS-1123 labels.
    pub fn load_tokens(&self) -> Result<Vec<NamedToken>, TokenFileError> {
        let mut out: Vec<NamedToken> = Vec::new();
        for (index, t) in self.tokens.iter().enumerate() {
            crate::manifest::validate::dns1123_label(&t.name).map_err(|message| {
                TokenFileError::Name {
                    index,
                    message: format!("`{}`: {message}", t.name),
                }
            })?;
            if out.iter().any(|o| o.name == t.name) {
                return Err(TokenFileError::Name {
                    index,
                    message: format!("`{}` is used by another token", t.name),
                });
            }
            let path = crate::fsutil::expand_home(&t.token_file);
            let secret = access::read_token(&path)
                .map_err(|source| TokenFileError::Read {
                    index,
                    name: t.name.clone(),
                    source,
                })?
                .ok_or_else(|| TokenFileError::Missing {
                    index,
                    name: t.name.clone(),
                    path: path.clone(),
                })?;
            out.push(NamedToken {
                name: t.name.clone(),
                secret,
                write: t.write,
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn limits_have_defaults_and_a_floor() {
        let l = DelegationConfig::default().limits();
        assert_eq!(l.max_depth, DEFAULT_MAX_DEPTH);
        assert_eq!(l.max_tasks, DEFAULT_MAX_TASKS);
        assert_eq!(l.window, DEFAULT_RATE_WINDOW);
        let l = DelegationConfig {
            max_depth: Some(0),
            max_tasks: Some(2),
            window_seconds: Some(0),
        }
        .limits();
        assert_eq!((l.max_depth, l.max_tasks), (0, 2));
        assert_eq!(l.window, Duration::from_secs(1));
    }

    #[test]
    fn tokens_are_read_like_the_api_token() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good");
        std::fs::write(&good, "s3cr3t\n").unwrap();
        std::fs::set_permissions(&good, std::fs::Permissions::from_mode(0o600)).unwrap();
        let open = dir.path().join("open");
        std::fs::write(&open, "x").unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o644)).unwrap();
        let cfg = |name: &str, file: &std::path::Path| McpConfig {
            tokens: vec![TokenConfig {
                name: name.into(),
                token_file: file.display().to_string(),
                write: true,
            }],
            ..Default::default()
        };
        let t = cfg("ops", &good).load_tokens().unwrap();
        assert_eq!(
            (t[0].name.as_str(), t[0].secret.as_str()),
            ("ops", "s3cr3t")
        );
        assert!(!format!("{:?}", t[0]).contains("s3cr3t"), "Debug hides it");
        let e = cfg("ops", &open).load_tokens().unwrap_err().to_string();
        assert!(
            e.contains("mcp.tokens[0] (ops)") && e.contains("chmod 600"),
            "{e}"
        );
        let e = cfg("ops", &dir.path().join("none"))
            .load_tokens()
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not exist"), "{e}");
        let e = cfg("Bad_Name", &good)
            .load_tokens()
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("mcp.tokens[0].name: `Bad_Name`"), "{e}");
        let mut two = cfg("ops", &good);
        two.tokens.push(two.tokens[0].clone());
        let e = two.load_tokens().unwrap_err().to_string();
        assert!(
            e.contains("mcp.tokens[1].name") && e.contains("another token"),
            "{e}"
        );
    }
}

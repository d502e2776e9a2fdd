//! The configuration file (`config.yaml`) and where things live by default.
//!
//! Precedence for every setting: command-line flag, then environment
//! variable, then the config file, then the default. `config.example.yaml`
//! at the repository root documents every key; a test keeps the two in step.

use crate::manifest::{ManifestError, decode_single};
use serde::Deserialize;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Config {
    /// Where the store is: a directory (the local store) or
    /// `etcd://HOST:PORT[,HOST:PORT...][/PREFIX]` (see docs/store-backends.md).
    pub store: Option<String>,
    /// TLS and authentication of an etcd store.
    #[serde(default)]
    pub etcd: crate::store::EtcdOptions,
    /// Namespace used when a command or manifest names none.
    pub namespace: Option<String>,
    /// Desired-state directory synced into the store by `run`.
    pub manifests: Option<String>,
    /// Full resync period of the manifest sync and of the controllers, seconds.
    pub resync_seconds: Option<u64>,
    /// Controller-owned state: runtime records, settings files, the leader
    /// lease, the tmux socket.
    pub state_dir: Option<String>,
    /// Address of the daemon's HTTP endpoint (agents' hooks post here).
    pub listen: Option<String>,
    /// The tmux server socket of the pool.
    pub tmux_socket: Option<String>,
    /// The transcript folder every account's `projects/` links to.
    pub transcripts_dir: Option<String>,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub dispatch: DispatchConfig,
    #[serde(default)]
    pub janitor: JanitorConfig,
    #[serde(default)]
    pub quota: QuotaConfig,
    #[serde(default)]
    pub notify: NotifyConfig,
    #[serde(default)]
    pub api: ApiConfig,
    /// The MCP server (`claude-failover mcp`, `/mcp` on the listener).
    #[serde(default)]
    pub mcp: crate::mcp::McpConfig,
    /// This daemon as a node of the pool (docs/distributed.md).
    #[serde(default)]
    pub node: NodeConfig,
}

/// This daemon as a node (`run --node`, `--capacity`).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeConfig {
    /// The node's name (default: the host name, as a DNS-1123 label).
    pub name: Option<String>,
    /// The most Sessions this node runs (default: no limit).
    pub capacity: Option<u32>,
}

/// Usage monitoring and failover (see docs/failover.md).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct QuotaConfig {
    /// Base URL of the usage endpoint (`GET BASE/api/oauth/usage`).
    pub usage_base_url: Option<String>,
    /// Seconds between two polls of one account's usage, at least.
    pub poll_interval_seconds: Option<u64>,
    /// Readings older than this no longer count.
    pub stale_seconds: Option<u64>,
    /// Points below its threshold an account must fall to leave NearLimit.
    pub hysteresis_percent: Option<u8>,
    /// How long a swap waits for a busy session's turn to end.
    pub turn_wait_seconds: Option<u64>,
    /// How long a relaunched session may take to confirm its resume.
    pub confirm_seconds: Option<u64>,
    /// How a failover target is chosen.
    pub strategy: Option<FailoverStrategy>,
    /// From NearLimit on, an account takes no new task while its sessions
    /// can move (an Account's `spec.policy.drain` overrides it).
    pub drain: Option<bool>,
    /// Moving sessions back to their preferred account once it has room.
    pub failback: Option<FailbackConfig>,
    /// Typed into a session whose turn a usage limit cut short, once its
    /// account is back (when no task is there to replay). Empty: nothing.
    pub continue_message: Option<String>,
    /// Seconds between checkpoints of a session whose task or account
    /// changed with no word from its agent (an unchanged one is not written
    /// again).
    pub checkpoint_seconds: Option<u64>,
    /// Checkpoints of sessions that no longer exist go after this long.
    pub keep_checkpoints_seconds: Option<u64>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub enum FailoverStrategy {
    /// The account with the most headroom; priority breaks ties.
    #[default]
    Headroom,
    /// The account with the lowest priority value; headroom breaks ties.
    Priority,
    /// The account whose usage window resets soonest (its quota would be
    /// lost at the reset); headroom breaks ties.
    ConsumeFirst,
}

/// Failback: sessions that failed over go back to their preferred account
/// at a turn boundary once its usage is `marginPercent` points below its
/// thresholds, at most once per `cooldownSeconds` per session.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FailbackConfig {
    pub enabled: Option<bool>,
    pub margin_percent: Option<u8>,
    pub cooldown_seconds: Option<u64>,
}

/// Where notifications go (the log always).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NotifyConfig {
    pub telegram: Option<TelegramConfig>,
    pub webhook: Option<WebhookConfig>,
    /// At most one message per destination this often; more are merged.
    pub min_interval_seconds: Option<u64>,
    /// The same notice (kind + object) is not repeated within this.
    pub dedup_seconds: Option<u64>,
    /// Attempts per message before it is dropped (and logged).
    pub max_attempts: Option<u32>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TelegramConfig {
    /// Bot API base URL.
    pub base_url: Option<String>,
    pub chat_id: String,
    /// Environment variable holding the bot token.
    pub token_env: Option<String>,
    /// File holding the bot token (used when `tokenEnv` is unset or empty).
    pub token_file: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WebhookConfig {
    pub url: String,
    /// Environment variable holding a bearer token sent with each post.
    pub token_env: Option<String>,
    /// File holding that token.
    pub token_file: Option<String>,
}

/// The HTTP control plane.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApiConfig {
    /// Also serve the API on this Unix socket.
    pub socket: Option<String>,
    /// The bearer token file (created with mode 0600 when missing).
    pub token_file: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DispatchConfig {
    /// Seconds a session rests after a task before it takes the next.
    pub cooldown_seconds: Option<u64>,
    /// Seconds one attempt of a task may run.
    pub timeout_seconds: Option<u64>,
    /// Attempts before a task fails.
    pub max_attempts: Option<u32>,
    /// Model per priority when a task names none.
    pub models: Option<std::collections::BTreeMap<crate::api::TaskPriority, String>>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JanitorConfig {
    /// Seconds between janitor passes.
    pub interval_seconds: Option<u64>,
    /// Finished tasks, their inbox files and rejected files older than this go.
    pub keep_finished_seconds: Option<u64>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LogConfig {
    /// `text` or `json`.
    pub format: Option<LogFormat>,
    /// A tracing filter, e.g. `info` or `claude_failover=debug`.
    pub level: Option<String>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

fn xdg(var: &str, fallback: &str) -> PathBuf {
    std::env::var_os(var)
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .unwrap_or_else(|| crate::fsutil::home().join(fallback))
}

/// `$XDG_CONFIG_HOME/claude-failover` (default `~/.config/claude-failover`).
pub fn config_dir() -> PathBuf {
    xdg("XDG_CONFIG_HOME", ".config").join("claude-failover")
}

/// `$XDG_STATE_HOME/claude-failover` (default `~/.local/state/claude-failover`).
pub fn state_dir() -> PathBuf {
    xdg("XDG_STATE_HOME", ".local/state").join("claude-failover")
}

pub fn default_config_path() -> PathBuf {
    config_dir().join("config.yaml")
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Said once: the problem's own line (file, line, column, field).
    #[error(transparent)]
    Invalid(#[from] ManifestError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl Config {
    /// Loads `path`. A missing file is an empty config unless `required`.
    pub fn load(path: &Path, required: bool) -> Result<Config, ConfigError> {
        match std::fs::read(path) {
            Ok(bytes) => Ok(decode_single(&path.display().to_string(), &bytes)?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
                Ok(Config::default())
            }
            Err(source) => Err(ConfigError::Io {
                path: path.to_path_buf(),
                source,
            }),
        }
    }
}

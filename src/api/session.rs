use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One Claude Code session, kept alive in tmux.
// kube-derive takes one `printcolumn(...)` per column; clippy mistakes them for duplicates.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "claude-failover.io",
    version = "v1alpha1",
    kind = "Session",
    namespaced,
    status = "SessionStatus",
    derive = "PartialEq",
    shortname = "sess",
    category = "claude-failover",
    doc = "A Claude Code session kept alive in tmux",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Account", type_ = "string", json_path = ".status.account"),
    printcolumn(name = "Task", type_ = "string", json_path = ".status.currentTask"),
    printcolumn(name = "Restarts", type_ = "integer", json_path = ".status.restarts"),
    printcolumn(
        name = "Workdir",
        type_ = "string",
        json_path = ".spec.workdir",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SessionSpec {
    /// The working directory Claude Code runs in (`~` is expanded).
    pub workdir: String,
    /// The preferred account (an Account in the same namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    #[serde(default)]
    pub agent: AgentSpec,
    /// True: stop the agent gracefully and keep it stopped.
    #[serde(default)]
    pub suspend: bool,
}

/// How the agent is started.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AgentSpec {
    /// The program to run.
    #[serde(default = "default_command")]
    pub command: String,
    /// Extra arguments, after the ones the controller adds; leading ones
    /// that are not flags (a subcommand, e.g. `sim-agent`) go before them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Model alias or name (`sonnet`, `opus`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Extra environment variables.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Give the agent the pool's MCP server (`--mcp-config`): it can read
    /// the pool and hand tasks to other sessions (docs/mcp.md).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub mcp: bool,
}

fn default_command() -> String {
    "claude".to_string()
}

impl Default for AgentSpec {
    fn default() -> Self {
        AgentSpec {
            command: default_command(),
            args: Vec::new(),
            model: None,
            env: BTreeMap::new(),
            mcp: false,
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum SessionPhase {
    #[default]
    Pending,
    Starting,
    Idle,
    Busy,
    Waiting,
    Swapping,
    Stopped,
    Failed,
}

impl std::fmt::Display for SessionPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SessionStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<SessionPhase>,
    /// The account the agent runs under now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    /// Claude Code's conversation id (pinned with `--session-id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_session_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pane_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_task: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_activity: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restarts: Option<u32>,
    /// The latest failover of this session to another account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_swap: Option<SwapStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// One move of a session from one account to another.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SwapStatus {
    /// The fencing epoch of the swap lease under which it ran.
    pub epoch: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    pub to: String,
    /// `NearLimit`, `Exhausted`, `Manual`, `Drain`, `AuthenticationFailed`.
    pub reason: String,
    /// `Swapping`, `Done`, `RolledBack`.
    pub state: String,
    pub started_at: Time,
}

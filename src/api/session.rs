use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, MicroTime, Time};
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
        name = "Node",
        type_ = "string",
        json_path = ".status.nodeName",
        priority = 1
    ),
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
    /// The session's own git worktree, at `workdir/NAME` on a branch named
    /// after the session; its agent runs there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace: Option<WorkspaceSpec>,
    /// A second Claude Code kept idle in the workdir under the account a
    /// failover would move the session to, so that the move is a
    /// `/resume` typed into it rather than a process start. Costs one
    /// idle Claude Code per session: about 200 MiB of memory and 1-3 % of
    /// a core (docs/failover.md). Off by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub standby: Option<StandbySpec>,
    /// The node (a daemon's `run --node`) whose daemon runs this session;
    /// unset: the leader places it on a Ready node (`status.nodeName`).
    /// A running session moves to a newly named node once its agent is
    /// stopped (`suspend`), never under a running agent
    /// (docs/distributed.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
}

/// Whether a Session keeps a standby agent.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StandbySpec {
    #[serde(default)]
    pub mode: StandbyMode,
    /// A bound for a pool (`SessionPool.spec.template.spec.standby`): at
    /// most this many of the pool's Sessions on one node keep a standby for
    /// each target account and workdir, those nearest their own account's
    /// limit first (they move first); the others relaunch when they move.
    /// Unset: every Session keeps one. A Session outside a pool is a pool
    /// of one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_target: Option<u32>,
}

/// `Off`: none (the default); `Warm`: one idle Claude Code, started, seeded
/// and hooked, under the next failover target.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum StandbyMode {
    #[default]
    Off,
    Warm,
}

impl SessionSpec {
    /// The session keeps a warm standby.
    pub fn wants_standby(&self) -> bool {
        self.standby
            .as_ref()
            .is_some_and(|s| s.mode == StandbyMode::Warm)
    }

    /// The bound on the standbys of the Session's pool per target account
    /// and workdir (`spec.standby.perTarget`), if it keeps standbys.
    pub fn standby_bound(&self) -> Option<u32> {
        self.standby
            .as_ref()
            .filter(|s| s.mode == StandbyMode::Warm)
            .and_then(|s| s.per_target)
    }
}

/// A Session's own working copy.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkspaceSpec {
    pub git: GitWorkspace,
}

/// A git worktree of `repo`, on a branch named after the session, made
/// from `base` (`git worktree add -b NAME WORKDIR/NAME BASE`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GitWorkspace {
    /// The repository (`~` is expanded).
    pub repo: String,
    /// The branch (or any commit) new branches start from.
    #[serde(default = "default_base")]
    pub base: String,
}

fn default_base() -> String {
    "main".to_string()
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
    /// Extra environment variables: a literal value, or
    /// `{valueFrom: {file: PATH}}`, read when the agent starts (for keys
    /// and tokens: the store never holds a secret, and a literal value that
    /// looks like one is refused).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, EnvValue>,
    /// Give the agent the pool's MCP server (`--mcp-config`): it can read
    /// the pool and hand tasks to other sessions (docs/mcp.md).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub mcp: bool,
    /// Claude Code's permission mode, passed as `--permission-mode`.
    /// Default: `auto` (Claude Code's own default in current releases,
    /// passed explicitly so every supported release behaves alike), unless
    /// `args` already choose one (`--dangerously-skip-permissions` or
    /// `--permission-mode`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permission_mode: Option<PermissionMode>,
}

/// Claude Code's permission modes (`claude --permission-mode`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum PermissionMode {
    /// Ask before each tool that changes something (Claude Code calls it
    /// `manual` since 2.1.3xx and takes both names).
    #[serde(rename = "default")]
    Default,
    /// Edits in the working folders without asking; other tools ask.
    #[serde(rename = "acceptEdits")]
    AcceptEdits,
    /// A safety check decides; asks when the check blocks or cannot run.
    #[serde(rename = "auto")]
    Auto,
    /// Read-only planning; asks before leaving plan mode.
    #[serde(rename = "plan")]
    Plan,
    /// Never asks: anything not pre-approved is denied.
    #[serde(rename = "dontAsk")]
    DontAsk,
    /// Never asks: everything runs (`--dangerously-skip-permissions`).
    #[serde(rename = "bypassPermissions")]
    BypassPermissions,
}

impl PermissionMode {
    /// The value of `--permission-mode` (accepted by every supported release).
    pub fn flag_value(self) -> &'static str {
        match self {
            PermissionMode::Default => "default",
            PermissionMode::AcceptEdits => "acceptEdits",
            PermissionMode::Auto => "auto",
            PermissionMode::Plan => "plan",
            PermissionMode::DontAsk => "dontAsk",
            PermissionMode::BypassPermissions => "bypassPermissions",
        }
    }

    /// Whether Claude Code can stop and ask someone in this mode.
    pub fn can_ask(self) -> bool {
        !matches!(
            self,
            PermissionMode::DontAsk | PermissionMode::BypassPermissions
        )
    }
}

impl std::fmt::Display for PermissionMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.flag_value())
    }
}

/// The value of one environment variable of an agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EnvValue {
    /// `NAME: value`
    Value(String),
    /// `NAME: {valueFrom: {file: PATH}}`: the file's content (without its
    /// final line break), read at each launch.
    FromFile(String),
}

impl From<&str> for EnvValue {
    fn from(v: &str) -> EnvValue {
        EnvValue::Value(v.to_string())
    }
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct EnvFrom {
    value_from: EnvSource,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct EnvSource {
    /// An absolute path (or `~/...`) of a file holding the value.
    file: String,
}

impl Serialize for EnvValue {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            EnvValue::Value(v) => s.serialize_str(v),
            EnvValue::FromFile(f) => EnvFrom {
                value_from: EnvSource { file: f.clone() },
            }
            .serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for EnvValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = EnvValue;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string, or {valueFrom: {file: PATH}}")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<EnvValue, E> {
                Ok(EnvValue::Value(v.to_string()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<EnvValue, A::Error> {
                let from = EnvFrom::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(EnvValue::FromFile(from.value_from.file))
            }
        }
        d.deserialize_any(V)
    }
}

impl JsonSchema for EnvValue {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "EnvValue".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        // A string or an object: not one structural type, so the API server
        // keeps it as it is and the typed decoding checks it.
        schemars::json_schema!({
            "description": "A literal value, or {valueFrom: {file: PATH}} read when the agent starts",
            "x-kubernetes-preserve-unknown-fields": true
        })
    }
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
            permission_mode: None,
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
    /// The agent exits at start (or cannot be launched): retried with
    /// back-off; `status.nextStartAt` says when, the Ready condition why.
    CrashLoopBackOff,
}

impl std::fmt::Display for SessionPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

/// A Session's status. Each field has one writer (docs/state.md): the
/// session controller all but `lastSwap` (the failover controller: the
/// placement), `currentTask` (the task controller) and `nodeName` (the
/// leader's scheduler).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SessionStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<SessionPhase>,
    /// The account the agent runs under now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    /// Claude Code's conversation id (pinned with `--session-id`, resumed
    /// with `--resume`): chosen and written before the first launch.
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
    /// Launches of an agent for this session so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launches: Option<u32>,
    /// Restarts after an exit or a lost tmux session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restarts: Option<u32>,
    /// The current agent's launch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launch: Option<LaunchStatus>,
    /// The restart back-off now, seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff_seconds: Option<u64>,
    /// No restart before this time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_start_at: Option<Time>,
    /// The latest restart request (the restart annotation's value) a
    /// launch has answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_handled: Option<String>,
    /// The last turn was cut short (a usage limit) and has not been
    /// continued yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interrupted: Option<Interruption>,
    /// A placement this session's controller refused to carry out (its
    /// target failed the preflight); the failover controller rolls back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused_placement: Option<RefusedPlacement>,
    /// The standby agent (`spec.standby`), while one runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub standby: Option<StandbyStatus>,
    /// What the agent said of its account's usage (its statusLine's rate
    /// limits, a usage-limit or authentication failure): written by its
    /// node, read by the leader's account controller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<AgentUsage>,
    /// Where the failover controller placed the session (written by it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_swap: Option<SwapStatus>,
    /// The node whose daemon runs this session (written by the leader's
    /// scheduler; only that node's daemon acts on the session).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// Since when its node is lost (its heartbeat expired, or its Node
    /// was deleted): nothing here is known to be current, and no task
    /// goes to it. Written by the leader's scheduler; cleared when the
    /// node is Ready again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_lost: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

impl SessionStatus {
    /// The fields the session controller writes.
    pub const SESSION_CONTROLLER: &[&str] = &[
        "phase",
        "account",
        "agentSessionId",
        "paneId",
        "pid",
        "lastActivity",
        "launches",
        "restarts",
        "launch",
        "backoffSeconds",
        "nextStartAt",
        "restartHandled",
        "interrupted",
        "refusedPlacement",
        "standby",
        "usage",
        "observedGeneration",
        "conditions",
    ];
    /// The field the failover controller writes: the placement.
    pub const FAILOVER_CONTROLLER: &[&str] = &["lastSwap"];
    /// The field the task controller writes.
    pub const TASK_CONTROLLER: &[&str] = &["currentTask"];
    /// The field the leader's scheduler writes: the node.
    pub const SCHEDULER: &[&str] = &["nodeName", "nodeLost"];
}

/// One launch of a session's agent.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LaunchStatus {
    /// The account it was launched under (None: Claude Code's default config).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    pub at: MicroTime,
    /// Launched with `--resume` (else a new conversation).
    #[serde(default)]
    pub resumed: bool,
    /// The placement (swap epoch) it answers, if one asked for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
    /// The agent confirmed it started the expected conversation: its
    /// `SessionStart` hook (`resume` with the same id when resumed), or its
    /// own state file naming the conversation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirmed_at: Option<MicroTime>,
    /// Not a process start: the standby took the conversation over
    /// (`/resume` typed into it).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub takeover: bool,
}

/// The idle Claude Code kept for the next move (`spec.standby`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StandbyStatus {
    /// The account it runs under: where the session would move next.
    pub account: String,
    pub pane_id: String,
    pub pid: u32,
    /// Its own start-up conversation (it leaves no transcript).
    pub agent_session_id: String,
    pub launched_at: MicroTime,
    /// At its prompt (its `SessionStart` heard): a move may use it.
    #[serde(default)]
    pub ready: bool,
    /// The conversation whose `/resume <id>` waits typed in its composer:
    /// a takeover is then the Enter alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primed: Option<String>,
}

/// A turn cut short.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Interruption {
    /// The `StopFailure` error (`rate_limit`).
    pub by: String,
    pub at: MicroTime,
    /// The account the turn ran on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
}

/// What a session's agent said of the usage of the account it runs under.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AgentUsage {
    /// The account the agent ran under when it said so.
    pub account: String,
    /// Its statusLine's rate limits (subscription mode), written when they
    /// change and refreshed while they stay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limits: Option<crate::api::AccountUsage>,
    /// The newest usage-limit or authentication failure it reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<AgentFailure>,
}

/// A request of an agent refused for its account.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AgentFailure {
    /// The `StopFailure` error: `rate_limit` or `authentication_failed`.
    pub error: String,
    pub at: MicroTime,
    /// When the limit resets, as the agent's transcript says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resets_at: Option<Time>,
    /// A turn of the agent ended well after the failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovered_at: Option<MicroTime>,
}

/// A placement refused by the session controller.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RefusedPlacement {
    pub epoch: u64,
    pub account: String,
    pub message: String,
}

/// Where the failover controller placed a session: the account it must run
/// on, the swap that placed it there and how far that swap went.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SwapStatus {
    /// The fencing epoch of the swap lease under which it was placed.
    pub epoch: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// The account the session must run on.
    pub to: String,
    /// `NearLimit`, `Exhausted`, `Manual`, `Drain`, `AuthenticationFailed`, `Recovery`.
    pub reason: String,
    /// `Swapping`, `Done`, `RolledBack`.
    pub state: String,
    pub started_at: MicroTime,
    /// The Session's `spec.account` when placed: a later edit of it by a
    /// person wins over the placement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec_account: Option<String>,
}

/// `SwapStatus::state` while the move runs, and at its two ends.
pub const SWAPPING: &str = "Swapping";
pub const SWAP_DONE: &str = "Done";
pub const SWAP_ROLLED_BACK: &str = "RolledBack";

impl SwapStatus {
    pub fn swapping(&self) -> bool {
        self.state == SWAPPING
    }
}

impl Session {
    /// The node whose daemon runs this session (None: not placed yet).
    pub fn node(&self) -> Option<&str> {
        self.status.as_ref()?.node_name.as_deref()
    }

    /// Whether a restart was asked of this Session (its
    /// `claude-failover.io/restart-requested-at` annotation) that no launch
    /// has answered yet (`status.restartHandled`).
    pub fn restart_pending(&self) -> bool {
        let asked = self
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(super::keys::RESTART));
        asked.is_some()
            && asked
                != self
                    .status
                    .as_ref()
                    .and_then(|s| s.restart_handled.as_ref())
    }
}

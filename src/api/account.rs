use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// An Anthropic account: a Claude Code config directory with its own
/// credentials and usage limits.
// kube-derive takes one `printcolumn(...)` per column; clippy mistakes them for duplicates.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "claude-failover.io",
    version = "v1alpha1",
    kind = "Account",
    namespaced,
    status = "AccountStatus",
    derive = "PartialEq",
    shortname = "acct",
    category = "claude-failover",
    doc = "An Anthropic account that sessions run under",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "5h",
        type_ = "number",
        json_path = ".status.usage.fiveHour.utilization"
    ),
    printcolumn(
        name = "7d",
        type_ = "number",
        json_path = ".status.usage.sevenDay.utilization"
    ),
    printcolumn(name = "Sessions", type_ = "integer", json_path = ".status.sessions"),
    printcolumn(name = "Priority", type_ = "integer", json_path = ".spec.priority"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AccountSpec {
    /// The account's `CLAUDE_CONFIG_DIR` (`~` is expanded).
    pub config_dir: String,
    /// Lower is preferred as a failover target.
    #[serde(default)]
    pub priority: i32,
    /// Utilization (percent) at which sessions are moved away.
    #[serde(default)]
    pub thresholds: Thresholds,
    /// True: take no new sessions, drain the existing ones.
    #[serde(default)]
    pub suspend: bool,
    /// This account's failover policy; what it leaves unset follows the
    /// config's `quota:` section.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<AccountPolicy>,
}

#[cfg(test)]
impl AccountSpec {
    /// An account at `config_dir` with every other field at its default.
    pub fn in_dir(config_dir: impl Into<String>) -> AccountSpec {
        AccountSpec {
            config_dir: config_dir.into(),
            priority: 0,
            thresholds: Default::default(),
            suspend: false,
            policy: None,
        }
    }
}

/// An account's own failover policy (docs/failover.md, "Policy").
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AccountPolicy {
    /// From NearLimit on, take no new task while its sessions can move.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain: Option<bool>,
    /// Sessions that prefer this account come back to it once it has room.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failback: Option<bool>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Thresholds {
    /// Percent of the rolling 5-hour window (1..=100).
    #[serde(default = "default_five_hour")]
    pub five_hour: u8,
    /// Percent of the weekly cap (1..=100).
    #[serde(default = "default_seven_day")]
    pub seven_day: u8,
    /// Percent of the weekly cap of Opus models (1..=100; unset: as
    /// `sevenDay`). Only the sessions that may run Opus move at it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seven_day_opus: Option<u8>,
    /// Percent of the weekly cap of Sonnet models (1..=100; unset: as
    /// `sevenDay`). Only the sessions that may run Sonnet move at it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seven_day_sonnet: Option<u8>,
}

fn default_five_hour() -> u8 {
    90
}
fn default_seven_day() -> u8 {
    95
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            five_hour: default_five_hour(),
            seven_day: default_seven_day(),
            seven_day_opus: None,
            seven_day_sonnet: None,
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum AccountPhase {
    #[default]
    Available,
    NearLimit,
    Exhausted,
    Unavailable,
    Suspended,
}

impl std::fmt::Display for AccountPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

/// An Account's status. Each field has one writer (docs/state.md): the
/// account controller all but `failover` (the failover controller).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AccountStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<AccountPhase>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<AccountUsage>,
    /// When the current burn rate reaches the threshold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub projected_limit_at: Option<Time>,
    /// The latest hard limit (a request rejected for usage), while it holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<AccountLimit>,
    /// Sessions currently running on this account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sessions: Option<u32>,
    /// What the failover controller says of this account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failover: Option<AccountFailover>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

impl AccountStatus {
    /// The fields the account controller writes.
    pub const ACCOUNT_CONTROLLER: &[&str] = &[
        "phase",
        "usage",
        "projectedLimitAt",
        "limit",
        "sessions",
        "observedGeneration",
        "conditions",
    ];
    /// The field the failover controller writes.
    pub const FAILOVER_CONTROLLER: &[&str] = &["failover"];
}

/// Until when an Account (as JSON) is set aside as a failover target, if it
/// is now, and why.
pub fn set_aside_now(v: &serde_json::Value) -> Option<(k8s_openapi::jiff::Timestamp, String)> {
    let x = v.pointer("/status/failover/setAside")?;
    let until = x
        .get("until")?
        .as_str()?
        .parse::<k8s_openapi::jiff::Timestamp>()
        .ok()?;
    let reason = x.get("reason").and_then(|r| r.as_str()).unwrap_or_default();
    (until > k8s_openapi::jiff::Timestamp::now()).then(|| (until, reason.to_string()))
}

/// The failover controller's word on an account.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AccountFailover {
    /// Its sessions must leave, and no other account can take them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub no_target: Option<FailoverNote>,
    /// Left out as a failover target after a failed swap, until `until`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set_aside: Option<SetAside>,
    /// The latest failover request (the request annotation) answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<RequestAnswer>,
    /// The latest reinstate request (the annotation's value) answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reinstated: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FailoverNote {
    pub since: Time,
    pub message: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SetAside {
    pub until: Time,
    pub reason: String,
}

/// How a failover request was answered.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestAnswer {
    /// The request annotation's value this answers.
    pub requested_at: String,
    /// `Started` (a swap runs: `swap`), `Refused` (with `message`).
    pub result: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swap: Option<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AccountUsage {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub five_hour: Option<UsageWindow>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seven_day: Option<UsageWindow>,
    /// The weekly window of Opus models (from the usage endpoint).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seven_day_opus: Option<UsageWindow>,
    /// The weekly window of Sonnet models (from the usage endpoint).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seven_day_sonnet: Option<UsageWindow>,
}

impl AccountUsage {
    /// The reading of the window Claude Code and the usage endpoint call
    /// `label` (`five_hour`, `seven_day`, `seven_day_opus`, `seven_day_sonnet`).
    pub fn window(&self, label: &str) -> Option<&UsageWindow> {
        match label {
            "five_hour" => self.five_hour.as_ref(),
            "seven_day" => self.seven_day.as_ref(),
            "seven_day_opus" => self.seven_day_opus.as_ref(),
            "seven_day_sonnet" => self.seven_day_sonnet.as_ref(),
            _ => None,
        }
    }

    /// Every window, for code that treats them alike.
    pub fn windows_mut(&mut self) -> [&mut Option<UsageWindow>; 4] {
        [
            &mut self.five_hour,
            &mut self.seven_day,
            &mut self.seven_day_opus,
            &mut self.seven_day_sonnet,
        ]
    }
}

/// One usage reading of one window.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UsageWindow {
    /// Percent used, 0..=100.
    pub utilization: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resets_at: Option<Time>,
    /// Which signal produced the reading (statusLine, poll, hook, transcript, screen).
    pub source: String,
    pub observed_at: Time,
}

/// A request rejected for usage on this account.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AccountLimit {
    pub at: Time,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resets_at: Option<Time>,
    pub source: String,
}

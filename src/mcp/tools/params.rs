//! The tools' parameters: their types give the JSON schemas (doc comments
//! become descriptions) and decode the arguments strictly.

use crate::api::{Kind, TaskPhase, TaskPriority};
use schemars::JsonSchema;
use serde::Deserialize;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct ListSessions {
    /// Namespace (default: the configured one).
    pub(super) namespace: Option<String>,
    /// Label selector in kubectl's syntax, e.g. `project=api,tier in (a,b)`.
    pub(super) selector: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct ListAccounts {
    /// Namespace (default: the configured one).
    pub(super) namespace: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct ListTasks {
    /// Namespace (default: the configured one).
    pub(super) namespace: Option<String>,
    /// Label selector in kubectl's syntax.
    pub(super) selector: Option<String>,
    /// Only tasks in this phase.
    pub(super) phase: Option<TaskPhase>,
}

/// A kind of object.
#[derive(Debug, Deserialize, JsonSchema, Clone, Copy)]
#[serde(rename_all = "lowercase")]
pub(super) enum KindArg {
    Account,
    Session,
    Task,
}

impl From<KindArg> for Kind {
    fn from(k: KindArg) -> Kind {
        match k {
            KindArg::Account => Kind::Account,
            KindArg::Session => Kind::Session,
            KindArg::Task => Kind::Task,
        }
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct Describe {
    pub(super) kind: KindArg,
    pub(super) name: String,
    /// Namespace (default: the configured one).
    pub(super) namespace: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct RecentEvents {
    /// Only objects of this kind.
    pub(super) kind: Option<KindArg>,
    /// Only this object (needs `kind`).
    pub(super) name: Option<String>,
    /// Namespace (default: the configured one).
    pub(super) namespace: Option<String>,
    /// How many, newest first (default 20, at most 200).
    #[schemars(range(min = 1, max = 200))]
    pub(super) limit: Option<usize>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct WaitTask {
    pub(super) name: String,
    /// Namespace (default: the configured one).
    pub(super) namespace: Option<String>,
    /// How long to wait for the task to end (default 60, at most 600);
    /// call again to wait longer.
    #[schemars(range(min = 0, max = 600))]
    pub(super) timeout_seconds: Option<u64>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct CreateTask {
    /// The text typed into the session that takes the task.
    pub(super) prompt: String,
    /// The Task's name (default: generated).
    pub(super) name: Option<String>,
    /// Queue order; `critical` also means the opus model unless `model` says otherwise.
    pub(super) priority: Option<TaskPriority>,
    /// Model alias or name for this task (default from the priority).
    pub(super) model: Option<String>,
    /// Run on this session only.
    pub(super) session: Option<String>,
    /// Run on a session whose labels match this selector (kubectl's `-l`
    /// syntax, e.g. `role=worker,tier in (a,b)`).
    pub(super) selector: Option<String>,
    /// Run on a session with this working directory.
    pub(super) workdir: Option<String>,
    /// Give up on an attempt after this long.
    pub(super) timeout_seconds: Option<u64>,
    /// Attempts before the task fails.
    pub(super) max_attempts: Option<u32>,
    /// Namespace (default: the configured one; an agent's own).
    pub(super) namespace: Option<String>,
    /// Also wait this long for the task to end and return its result (at most 600).
    #[schemars(range(min = 0, max = 600))]
    pub(super) wait_seconds: Option<u64>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct Named {
    pub(super) name: String,
    /// Namespace (default: the configured one).
    pub(super) namespace: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct RequestFailover {
    /// The account whose sessions move.
    pub(super) account: String,
    /// The account they move to (default: the failover policy chooses).
    pub(super) to: Option<String>,
    /// Namespace (default: the configured one).
    pub(super) namespace: Option<String>,
}

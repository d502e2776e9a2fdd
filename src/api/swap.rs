//! `Swap`: one move of an account's sessions to another account, under one
//! epoch of the swap lease. Written only by the failover controller: its
//! spec when the swap starts, its status as the swap advances (each
//! session's step, with the deadline of the wait it is in), and its result.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime as Time;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

// kube-derive takes one `printcolumn(...)` per column; clippy mistakes them for duplicates.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "claude-failover.io",
    version = "v1alpha1",
    kind = "Swap",
    namespaced,
    status = "SwapState",
    derive = "PartialEq",
    shortname = "swp",
    category = "claude-failover",
    doc = "One move of an account's sessions to another account, under one swap epoch",
    printcolumn(name = "Epoch", type_ = "integer", json_path = ".spec.epoch"),
    printcolumn(name = "From", type_ = "string", json_path = ".spec.from"),
    printcolumn(name = "To", type_ = "string", json_path = ".spec.to"),
    printcolumn(name = "Reason", type_ = "string", json_path = ".spec.reason"),
    printcolumn(name = "Result", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SwapSpec {
    pub epoch: u64,
    pub from: String,
    pub to: String,
    /// `NearLimit`, `Exhausted`, `AuthenticationFailed`, `Drain`, `Manual`, `Recovery`.
    pub reason: String,
    /// The sessions it moves.
    pub sessions: Vec<String>,
    /// The failover request it answers (the Account's annotation value).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
    /// A recovery: the epoch of the interrupted swap it finishes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovers: Option<u64>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum SwapPhase {
    #[default]
    Running,
    Succeeded,
    /// Some sessions moved, the others went back.
    RolledBack,
    /// None moved.
    Failed,
    /// Its daemon died; a recovery swap finished it.
    Interrupted,
}

impl SwapPhase {
    pub fn finished(self) -> bool {
        self != SwapPhase::Running
    }
}

impl std::fmt::Display for SwapPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

/// Where one session is in a swap.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum SwapStep {
    /// Its turn is running: placed once it ends (or at the deadline).
    #[default]
    WaitingForTurn,
    /// Placed on the target: waiting for its agent to confirm the resume.
    Placed,
    Confirmed,
    RolledBack,
}

impl SwapStep {
    pub fn finished(self) -> bool {
        matches!(self, SwapStep::Confirmed | SwapStep::RolledBack)
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SwapSessionState {
    pub name: String,
    pub step: SwapStep,
    /// When the current wait gives up (the turn, or the confirmation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<Time>,
    /// When the session was placed on the target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placed_at: Option<Time>,
    /// The conversation it carries over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_session_id: Option<String>,
    /// The task it was running, replayed on the target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SwapState {
    #[serde(default)]
    pub phase: SwapPhase,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Time>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sessions: Vec<SwapSessionState>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

impl Swap {
    /// Whether this swap runs and has yet to move `session` of its
    /// namespace (its turn awaited, or placed and not confirmed): no new
    /// task goes there meanwhile (one would hold the move up by a whole
    /// turn, or be cut by it).
    pub fn moving(&self, session: &str) -> bool {
        let st = self.status.as_ref();
        if st.is_some_and(|st| st.phase.finished()) {
            return false;
        }
        match st.and_then(|st| st.sessions.iter().find(|x| x.name == session)) {
            Some(x) => !x.step.finished(),
            None => {
                st.is_none_or(|st| st.sessions.is_empty())
                    && self.spec.sessions.iter().any(|n| n == session)
            }
        }
    }
}

/// The name of the Swap of `epoch`.
pub fn swap_name(epoch: u64) -> String {
    format!("swap-{epoch}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_running_swap_is_moving_the_sessions_it_has_not_moved_yet() {
        let mut swap = Swap::new(
            "swap-1",
            SwapSpec {
                epoch: 1,
                from: "a".into(),
                to: "b".into(),
                reason: "NearLimit".into(),
                sessions: vec!["s0".into(), "s1".into(), "s2".into()],
                request: None,
                recovers: None,
            },
        );
        assert!(swap.moving("s0"), "just started: every session to move");
        assert!(!swap.moving("other"));
        let step = |name: &str, step| SwapSessionState {
            name: name.into(),
            step,
            ..Default::default()
        };
        swap.status = Some(SwapState {
            phase: SwapPhase::Running,
            sessions: vec![
                step("s0", SwapStep::WaitingForTurn),
                step("s1", SwapStep::Placed),
                step("s2", SwapStep::Confirmed),
            ],
            ..Default::default()
        });
        let cases = [("s0", true), ("s1", true), ("s2", false), ("other", false)];
        for (name, want) in cases {
            assert_eq!(swap.moving(name), want, "{name}");
        }
        swap.status.as_mut().unwrap().phase = SwapPhase::Succeeded;
        assert!(!swap.moving("s0"), "ended");
    }
}

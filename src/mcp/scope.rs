//! Who is calling, and what they may do.
//!
//! - A client (`claude-failover mcp` over stdio, or an HTTP client with the
//!   API token or a token of `mcp.tokens`) reads everything; it writes
//!   (creates and cancels tasks, restarts sessions, requests failovers)
//!   only when its configuration says so.
//! - The agent of a Session with `spec.agent.mcp: true` (its own secret)
//!   reads everything, creates tasks for other sessions, waits for them and
//!   cancels the tasks it created; nothing else.
//!
//! The tools a caller may not use are not listed to it, and calling one
//! anyway answers why.

use crate::api::ObjectKey;

/// The identity of an MCP request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// A client: `stdio`, `api-token`, or the name of an `mcp.tokens` entry.
    Client { name: String, write: bool },
    /// The agent of this Session.
    Agent { session: ObjectKey },
}

/// What a tool does to the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Reads only.
    Read,
    /// Changes the pool; agents may use it within their scope (creating
    /// tasks for other sessions, cancelling their own).
    Delegate,
    /// Changes the pool; never for agents.
    Write,
}

impl Caller {
    /// Whether this caller may use a tool of `access` at all.
    pub fn may(&self, access: Access) -> bool {
        match (self, access) {
            (_, Access::Read) => true,
            (Caller::Client { write, .. }, _) => *write,
            (Caller::Agent { .. }, Access::Delegate) => true,
            (Caller::Agent { .. }, Access::Write) => false,
        }
    }

    /// Why this caller may not use `tool` (None: it may).
    pub fn refusal(&self, tool: &str, access: Access) -> Option<String> {
        if self.may(access) {
            return None;
        }
        Some(match self {
            Caller::Client { name, .. } => format!(
                "{tool} changes the pool, and this client ({name}) is read-only: \
                 writes are enabled with `mcp.write: true` in config.yaml \
                 (or `claude-failover mcp --write`), or with a token of `mcp.tokens` that has `write: true`"
            ),
            Caller::Agent { session } => format!(
                "{tool} is not available to agents of the pool (session {}): \
                 an agent may read the pool, create tasks for other sessions, \
                 wait for them and cancel the tasks it created",
                session.name
            ),
        })
    }

    /// How events name this caller, e.g. `MCP client "ops"` or `the agent
    /// of session ccl-0`.
    pub fn describe(&self) -> String {
        match self {
            Caller::Client { name, .. } => format!("MCP client \"{name}\""),
            Caller::Agent { session } => format!(
                "the agent of session {}/{} (MCP)",
                session.namespace, session.name
            ),
        }
    }

    /// The session an agent speaks for.
    pub fn agent_session(&self) -> Option<&ObjectKey> {
        match self {
            Caller::Agent { session } => Some(session),
            Caller::Client { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Kind;

    #[test]
    fn each_caller_gets_its_scope() {
        let ro = Caller::Client {
            name: "stdio".into(),
            write: false,
        };
        let rw = Caller::Client {
            name: "ops".into(),
            write: true,
        };
        let agent = Caller::Agent {
            session: ObjectKey::new(Kind::Session, "default", "ccl-0"),
        };
        let table = [
            (&ro, [true, false, false]),
            (&rw, [true, true, true]),
            (&agent, [true, true, false]),
        ];
        for (caller, want) in table {
            let got = [Access::Read, Access::Delegate, Access::Write].map(|a| caller.may(a));
            assert_eq!(got, want, "{caller:?}");
        }
        let why = ro.refusal("create_task", Access::Delegate).unwrap();
        assert!(
            why.contains("read-only") && why.contains("mcp.write"),
            "{why}"
        );
        let why = agent.refusal("restart_session", Access::Write).unwrap();
        assert!(why.contains("session ccl-0"), "{why}");
        assert!(agent.refusal("create_task", Access::Delegate).is_none());
        assert_eq!(agent.describe(), "the agent of session default/ccl-0 (MCP)");
    }
}

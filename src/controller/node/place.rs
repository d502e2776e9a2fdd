//! Where a Session runs: the leader's scheduler decides, for each Session,
//! the node whose daemon runs it (`status.nodeName`), as Kubernetes'
//! scheduler binds a Pod (docs/distributed.md, "Placement"). Pure: the
//! caller passes the Nodes and how many Sessions each already runs.

use crate::api::{Node, Session};
use std::collections::BTreeMap;

/// What the scheduler does with one Session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// Its node stays.
    Keep,
    /// Write this node.
    Place(String),
    /// No node may take it now; why.
    Wait(String),
}

/// One Node as the scheduler sees it.
#[derive(Debug, Clone)]
pub struct NodeView {
    pub name: String,
    pub ready: bool,
    /// The most Sessions it runs (None: no limit).
    pub capacity: Option<u32>,
    /// `NAMESPACE/ACCOUNT` of the accounts whose config dir it has.
    pub accounts: Vec<String>,
}

impl NodeView {
    pub fn of(n: &Node) -> NodeView {
        let st = n.status.clone().unwrap_or_default();
        NodeView {
            name: n.metadata.name.clone().unwrap_or_default(),
            ready: n.ready(),
            capacity: st.capacity.and_then(|c| c.sessions),
            accounts: st.config_dirs.into_keys().collect(),
        }
    }
}

/// The decision for `s`. `placed`: how many Sessions each node runs now
/// (those already decided in this pass included). `leader`: the leading
/// daemon's node, where a Session ran before Sessions had nodes.
pub fn place(
    s: &Session,
    nodes: &[NodeView],
    placed: &BTreeMap<String, u32>,
    leader: &str,
) -> Placement {
    let running = s.status.as_ref().is_some_and(|st| st.pid.is_some());
    let named = s.spec.node_name.as_deref();
    if let Some(have) = s.node() {
        return match named {
            // Moved by its spec: once no agent runs here.
            Some(want) if want != have && !running => Placement::Place(want.to_string()),
            _ => Placement::Keep,
        };
    }
    if let Some(want) = named {
        return Placement::Place(want.to_string());
    }
    if running {
        // An agent started before Sessions had nodes: on the machine of
        // the daemon that led then, which leads still (or adopted it).
        return Placement::Place(leader.to_string());
    }
    choose(s, nodes, placed)
}

/// A Ready node with room under its capacity, among those with a config
/// dir of the session's account (any of its namespace's when it names
/// none) if any has one (else the session controller makes or reports the
/// dir where it lands); the one running the fewest Sessions, then by name.
fn choose(s: &Session, nodes: &[NodeView], placed: &BTreeMap<String, u32>) -> Placement {
    let ns = s
        .metadata
        .namespace
        .as_deref()
        .unwrap_or(crate::api::DEFAULT_NAMESPACE);
    let account = s
        .spec
        .account
        .clone()
        .or_else(|| s.status.as_ref().and_then(|st| st.account.clone()));
    let has_account = |n: &NodeView| match &account {
        Some(a) => n.accounts.iter().any(|k| *k == format!("{ns}/{a}")),
        None => n.accounts.iter().any(|k| k.starts_with(&format!("{ns}/"))),
    };
    let count = |n: &NodeView| placed.get(&n.name).copied().unwrap_or(0);
    let ready: Vec<&NodeView> = nodes.iter().filter(|n| n.ready).collect();
    if ready.is_empty() {
        return Placement::Wait("no node is Ready".into());
    }
    let with_account: Vec<&NodeView> = ready.iter().copied().filter(|n| has_account(n)).collect();
    let fit = if with_account.is_empty() {
        ready
    } else {
        with_account
    };
    fit.into_iter()
        .filter(|n| n.capacity.is_none_or(|c| count(n) < c))
        .min_by(|a, b| count(a).cmp(&count(b)).then(a.name.cmp(&b.name)))
        .map(|n| Placement::Place(n.name.clone()))
        .unwrap_or_else(|| {
            Placement::Wait("every Ready node it may run on is at its capacity".into())
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{SessionSpec, SessionStatus};

    fn session(
        account: Option<&str>,
        named: Option<&str>,
        node: Option<&str>,
        pid: bool,
    ) -> Session {
        let mut s = Session::new(
            "s1",
            SessionSpec {
                workdir: "/w".into(),
                account: account.map(str::to_string),
                agent: Default::default(),
                suspend: false,
                workspace: None,
                standby: None,
                node_name: named.map(str::to_string),
            },
        );
        s.metadata.namespace = Some("default".into());
        s.status = Some(SessionStatus {
            node_name: node.map(str::to_string),
            pid: pid.then_some(42),
            ..Default::default()
        });
        s
    }

    fn node(name: &str, ready: bool, capacity: Option<u32>, accounts: &[&str]) -> NodeView {
        NodeView {
            name: name.into(),
            ready,
            capacity,
            accounts: accounts.iter().map(|a| format!("default/{a}")).collect(),
        }
    }

    fn counts(c: &[(&str, u32)]) -> BTreeMap<String, u32> {
        c.iter().map(|(n, k)| (n.to_string(), *k)).collect()
    }

    #[test]
    fn placements() {
        let ab = [
            node("a", true, None, &["work", "home"]),
            node("b", true, None, &["work"]),
        ];
        let place_ = |n: &str| Placement::Place(n.into());
        #[rustfmt::skip]
        type Case = (&'static str, Session, Vec<NodeView>, BTreeMap<String, u32>, Placement);
        let cases: Vec<Case> = vec![
            (
                "placed: stays",
                session(None, None, Some("b"), true),
                ab.to_vec(),
                counts(&[]),
                Placement::Keep,
            ),
            (
                "placed, NotReady: stays (its agents may live)",
                session(None, None, Some("c"), false),
                ab.to_vec(),
                counts(&[]),
                Placement::Keep,
            ),
            (
                "named: there, even unknown",
                session(None, Some("z"), None, false),
                ab.to_vec(),
                counts(&[]),
                place_("z"),
            ),
            (
                "renamed, running: stays until stopped",
                session(None, Some("a"), Some("b"), true),
                ab.to_vec(),
                counts(&[]),
                Placement::Keep,
            ),
            (
                "renamed, stopped: moves",
                session(None, Some("a"), Some("b"), false),
                ab.to_vec(),
                counts(&[]),
                place_("a"),
            ),
            (
                "running from before nodes: the leader's",
                session(None, None, None, true),
                ab.to_vec(),
                counts(&[("a", 9)]),
                place_("a"),
            ),
            (
                "fewest sessions",
                session(Some("work"), None, None, false),
                ab.to_vec(),
                counts(&[("a", 2), ("b", 1)]),
                place_("b"),
            ),
            (
                "a tie: by name",
                session(Some("work"), None, None, false),
                ab.to_vec(),
                counts(&[]),
                place_("a"),
            ),
            (
                "only a has the account",
                session(Some("home"), None, None, false),
                ab.to_vec(),
                counts(&[("a", 5)]),
                place_("a"),
            ),
            (
                "no account named: any of the namespace's",
                session(None, None, None, false),
                ab.to_vec(),
                counts(&[("a", 1)]),
                place_("b"),
            ),
            (
                "NotReady skipped",
                session(Some("work"), None, None, false),
                vec![
                    node("a", false, None, &["work"]),
                    node("b", true, None, &["work"]),
                ],
                counts(&[("b", 7)]),
                place_("b"),
            ),
            (
                "capacity full skipped",
                session(Some("work"), None, None, false),
                vec![
                    node("a", true, Some(1), &["work"]),
                    node("b", true, None, &["work"]),
                ],
                counts(&[("a", 1), ("b", 4)]),
                place_("b"),
            ),
            (
                "none Ready",
                session(Some("work"), None, None, false),
                vec![node("a", false, None, &["work"])],
                counts(&[]),
                Placement::Wait("no node is Ready".into()),
            ),
            (
                "nobody has the account: any Ready",
                session(Some("gone"), None, None, false),
                ab.to_vec(),
                counts(&[("a", 3)]),
                place_("b"),
            ),
            (
                "all full",
                session(Some("work"), None, None, false),
                vec![node("a", true, Some(1), &["work"])],
                counts(&[("a", 1)]),
                Placement::Wait("every Ready node it may run on is at its capacity".into()),
            ),
        ];
        for (name, s, nodes, placed, want) in cases {
            assert_eq!(place(&s, &nodes, &placed, "a"), want, "{name}");
        }
    }
}

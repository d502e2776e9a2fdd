//! The resources: the pool's status and each account's usage, as JSON, with
//! change notifications fed by the daemon's event stream.
//!
//! - `claude-failover://pool/{namespace}`: sessions and tasks by phase, the
//!   queue, every account's phase and usage ([`views::pool_status`]);
//! - `claude-failover://accounts/{namespace}/{name}`: one account's usage,
//!   phase, reset times, limit and projection ([`views::account`]).
//!
//! A subscriber hears `notifications/resources/updated` for a URI when an
//! object it shows changes or gets an event (changes within
//! [`DEBOUNCE`] are told once), and `notifications/resources/list_changed`
//! when an account comes or goes.

use super::pool::{Pool, PoolError};
use super::sse::WatchItem;
use super::views;
use crate::api::{Kind, ObjectKey};
use rmcp::model::{Resource, ResourceTemplate};
use serde_json::Value;
use std::collections::BTreeSet;
use std::time::Duration;

pub const SCHEME: &str = "claude-failover://";
/// Changes closer together than this make one notification.
pub const DEBOUNCE: Duration = Duration::from_millis(300);
/// With no daemon (or after its stream ended), look for one this often.
pub const RECONNECT: Duration = Duration::from_secs(2);
/// With nothing changing, a follower asks this often whether its
/// subscriber is still there (a closed one ends it).
pub const IDLE_CHECK: Duration = Duration::from_secs(30);

/// What a resource URI names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Pool { namespace: String },
    Account(ObjectKey),
}

pub fn pool_uri(namespace: &str) -> String {
    format!("{SCHEME}pool/{namespace}")
}

pub fn account_uri(namespace: &str, name: &str) -> String {
    format!("{SCHEME}accounts/{namespace}/{name}")
}

/// Parses a resource URI, or says what is wrong with it.
pub fn parse(uri: &str) -> Result<Target, String> {
    let bad = || {
        format!(
            "unknown resource {uri:?}: the resources are {SCHEME}pool/NAMESPACE and {SCHEME}accounts/NAMESPACE/NAME"
        )
    };
    let rest = uri.strip_prefix(SCHEME).ok_or_else(bad)?;
    let parts: Vec<&str> = rest.split('/').collect();
    let label = |s: &str| crate::manifest::validate::dns1123_label(s).map_err(|_| bad());
    match parts.as_slice() {
        ["pool", ns] => {
            label(ns)?;
            Ok(Target::Pool {
                namespace: ns.to_string(),
            })
        }
        ["accounts", ns, name] => {
            label(ns)?;
            label(name)?;
            Ok(Target::Account(ObjectKey::new(Kind::Account, ns, name)))
        }
        _ => Err(bad()),
    }
}

/// The URIs an item of the event stream changes, and whether the list of
/// resources changed (an account came or went).
pub fn affected(item: &WatchItem) -> (BTreeSet<String>, bool) {
    let mut uris = BTreeSet::new();
    let mut list = false;
    if let Some((kind, ns, name)) = item.object() {
        uris.insert(pool_uri(ns));
        if kind == Kind::Account {
            uris.insert(account_uri(ns, name));
            if let WatchItem::Change { added, deleted, .. } = item {
                list = *added || *deleted;
            }
        }
    }
    (uris, list)
}

fn resource(uri: String, name: String, description: String) -> Resource {
    Resource::new(uri, name)
        .with_description(description)
        .with_mime_type("application/json")
}

/// The resources of `namespace`: the pool, then each account.
pub async fn list(pool: &Pool, namespace: &str) -> Result<Vec<Resource>, PoolError> {
    let mut out = vec![resource(
        pool_uri(namespace),
        format!("pool {namespace}"),
        format!(
            "The pool in namespace {namespace}: sessions and tasks by phase, the queue, each account's phase and usage"
        ),
    )];
    for a in pool.list(Kind::Account, Some(namespace)).await?.value {
        if let Some(name) = a.pointer("/metadata/name").and_then(Value::as_str) {
            out.push(resource(
                account_uri(namespace, name),
                format!("account {name}"),
                format!("Account {name}: phase, usage of the 5-hour and 7-day windows, reset times, projected limit"),
            ));
        }
    }
    Ok(out)
}

/// The resource templates.
pub fn templates() -> Vec<ResourceTemplate> {
    vec![
        ResourceTemplate::new(format!("{SCHEME}pool/{{namespace}}"), "pool")
            .with_description("The pool of a namespace")
            .with_mime_type("application/json"),
        ResourceTemplate::new(
            format!("{SCHEME}accounts/{{namespace}}/{{name}}"),
            "account",
        )
        .with_description("An account's usage and phase")
        .with_mime_type("application/json"),
    ]
}

/// The content of a resource.
pub async fn read(pool: &Pool, target: &Target) -> Result<Value, String> {
    let err = |e: PoolError| e.to_string();
    let (mut v, offline) = match target {
        Target::Pool { namespace } => {
            let a = pool
                .list(Kind::Account, Some(namespace))
                .await
                .map_err(err)?;
            let s = pool
                .list(Kind::Session, Some(namespace))
                .await
                .map_err(err)?;
            let t = pool.list(Kind::Task, Some(namespace)).await.map_err(err)?;
            let mut v = views::pool_status(&a.value, &s.value, &t.value);
            v["namespace"] = Value::String(namespace.clone());
            (v, a.offline)
        }
        Target::Account(key) => {
            let r = pool.get(key).await.map_err(err)?;
            let obj = r.value.ok_or_else(|| {
                format!(
                    "account.claude-failover.io \"{}\" not found in namespace {}",
                    key.name, key.namespace
                )
            })?;
            (views::account(&obj), r.offline)
        }
    };
    v["daemon"] = Value::String(match offline {
        Some(why) => format!("not running ({why}): read from the store"),
        None => "running".into(),
    });
    Ok(v)
}

/// Follows the pool's changes and tells `tell` which URIs changed (and
/// whether the list changed), at most once per [`DEBOUNCE`], until `tell`
/// answers false. With no daemon it looks for one every [`RECONNECT`];
/// with nothing changing it calls `tell` with nothing every
/// [`IDLE_CHECK`], so a subscriber that left is noticed.
pub async fn follow<F, Fut>(pool: Pool, mut tell: F)
where
    F: FnMut(BTreeSet<String>, bool) -> Fut + Send,
    Fut: std::future::Future<Output = bool> + Send,
{
    loop {
        let mut rx = match pool.watch(None, None).await {
            Ok(rx) => rx,
            Err(_) => {
                // No daemon yet (or it is restarting): nothing changes
                // meanwhile that a watch could tell.
                tokio::time::sleep(RECONNECT).await;
                if !tell(BTreeSet::new(), false).await {
                    return;
                }
                continue;
            }
        };
        let mut dirty: BTreeSet<String> = BTreeSet::new();
        let mut list = false;
        let mut due: Option<tokio::time::Instant> = None;
        loop {
            let timer = async {
                match due {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                item = rx.recv() => match item {
                    Some(WatchItem::Lagged(_)) => {
                        // Missed some: everything may have changed.
                        list = true;
                        dirty.insert(String::new());
                        due.get_or_insert_with(|| tokio::time::Instant::now() + DEBOUNCE);
                    }
                    Some(item) => {
                        let (uris, l) = affected(&item);
                        list |= l;
                        dirty.extend(uris);
                        due.get_or_insert_with(|| tokio::time::Instant::now() + DEBOUNCE);
                    }
                    None => break,
                },
                _ = timer => {
                    due = None;
                    if !tell(std::mem::take(&mut dirty), std::mem::take(&mut list)).await {
                        return;
                    }
                }
                _ = tokio::time::sleep(IDLE_CHECK), if due.is_none() => {
                    if !tell(BTreeSet::new(), false).await {
                        return;
                    }
                }
            }
        }
        if (!dirty.is_empty() || list)
            && !tell(std::mem::take(&mut dirty), std::mem::take(&mut list)).await
        {
            return;
        }
        tokio::time::sleep(RECONNECT).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn uris_round_trip_and_bad_ones_are_named() {
        assert_eq!(
            parse(&pool_uri("default")),
            Ok(Target::Pool {
                namespace: "default".into()
            })
        );
        assert_eq!(
            parse(&account_uri("default", "work")),
            Ok(Target::Account(ObjectKey::new(
                Kind::Account,
                "default",
                "work"
            )))
        );
        for bad in [
            "claude-failover://pool",
            "claude-failover://accounts/default/../x",
            "file:///etc/passwd",
            "claude-failover://tasks/default/t",
        ] {
            let e = parse(bad).unwrap_err();
            assert!(e.contains("unknown resource"), "{bad}: {e}");
        }
    }

    #[test]
    fn changes_map_to_their_resources() {
        let change = |kind: Kind, name: &str, added: bool, deleted: bool| WatchItem::Change {
            kind,
            namespace: "default".into(),
            name: name.into(),
            added,
            deleted,
            object: json!({}),
        };
        let (u, l) = affected(&change(Kind::Task, "t", true, false));
        assert_eq!(u, BTreeSet::from([pool_uri("default")]));
        assert!(!l, "a task is no resource of its own");
        let (u, l) = affected(&change(Kind::Account, "a", false, false));
        assert_eq!(
            u,
            BTreeSet::from([pool_uri("default"), account_uri("default", "a")])
        );
        assert!(!l);
        let (_, l) = affected(&change(Kind::Account, "a", false, true));
        assert!(l, "an account going changes the list");
        let (_, l) = affected(&change(Kind::Account, "b", true, false));
        assert!(l, "a new account changes the list");
        assert_eq!(affected(&WatchItem::Lagged(3)).0.len(), 0);
    }
}

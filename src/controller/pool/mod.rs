//! The pool controller: keeps each SessionPool's Sessions (`<pool>-N`,
//! owned through an owner reference and labelled with the pool's name)
//! at its `replicas`.
//!
//! One level-triggered loop, like the account controller's: each pass
//! reads the pools, the Sessions and the Accounts from the caches, asks the
//! pure [`plan::plan`] what to create and delete, does it through the
//! store, and writes the pool's status and its `Ready` condition. A pool
//! carries a finalizer: deleting it deletes its Sessions (whose own
//! finalizers stop their agents) and it goes once they are gone.

pub mod autoscale;
pub mod plan;
pub mod rollout;
mod status;
mod update;

use super::Shared;
use crate::api::{
    Kind, ObjectKey, ObjectMeta, POOL_FINALIZER, POOL_LABEL, Session, SessionPool,
    TEMPLATE_HASH_LABEL, member_name,
};
use crate::store::{ApplyRequest, StoreError};
use futures::{FutureExt, Stream, StreamExt};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use plan::Action;
use std::sync::Arc;
use std::time::Duration;

/// Source of this controller's events, and the field manager of the
/// Sessions it creates.
pub const SOURCE: &str = "pool-controller";
/// Next pass without an event.
const RESYNC: Duration = Duration::from_secs(5);
/// Next pass after a failed one.
const RETRY: Duration = Duration::from_secs(1);
/// Wakes within this long of the first one are served by one pass: a
/// hundred Sessions starting at once change a few hundred times.
const COALESCE: Duration = Duration::from_millis(25);

/// The pool controller's dependencies.
pub struct Context {
    pub shared: Arc<Shared>,
}

/// Runs passes until aborted: on every wake (a change of pools, Sessions
/// or Accounts) and every [`RESYNC`].
pub async fn run(ctx: Arc<Context>, wake: impl Stream<Item = ()> + Send + 'static) {
    let mut wake = Box::pin(wake);
    loop {
        let started = std::time::Instant::now();
        let result = pass(&ctx).await;
        ctx.shared.metrics.observe_reconcile(
            "pool",
            started.elapsed().as_secs_f64(),
            result.is_err(),
        );
        let next = match result {
            Ok(()) => RESYNC,
            Err(e) => super::failed_pass("pool", &e, e.is_unavailable(), RETRY).await,
        };
        tokio::select! {
            _ = wake.next() => {
                tokio::time::sleep(COALESCE).await;
                while let Some(Some(())) = wake.next().now_or_never() {}
            }
            _ = tokio::time::sleep(next) => {}
        }
    }
}

/// Whether `s` is owned by the pool named `pool`.
pub fn owned_by(s: &Session, pool: &str) -> bool {
    s.metadata
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.kind == Kind::SessionPool.name() && o.name == pool && o.controller == Some(true))
}

/// The Sessions `pool` owns, from the cache.
pub fn members(sh: &Shared, pool: &SessionPool) -> Vec<Arc<Session>> {
    let ns = pool.metadata.namespace.as_deref();
    let name = pool.metadata.name.as_deref().unwrap_or_default();
    sh.caches
        .sessions
        .all()
        .into_iter()
        .filter(|s| s.metadata.namespace.as_deref() == ns && owned_by(s, name))
        .collect()
}

async fn pass(ctx: &Context) -> Result<(), StoreError> {
    for pool in ctx.shared.caches.pools.all() {
        reconcile(ctx, &pool).await?;
    }
    Ok(())
}

async fn reconcile(ctx: &Context, pool: &SessionPool) -> Result<(), StoreError> {
    let sh = &ctx.shared;
    let key = ObjectKey::of(pool);
    let deleting = pool.metadata.deletion_timestamp.is_some();
    let has_finalizer = pool
        .metadata
        .finalizers
        .iter()
        .flatten()
        .any(|f| f == POOL_FINALIZER);
    if !deleting && !has_finalizer {
        let (ns, name) = (key.namespace.clone(), key.name.clone());
        sh.blocking(move |s| {
            s.api::<SessionPool>(Some(&ns))
                .set_finalizer(&name, POOL_FINALIZER, true)
        })
        .await?;
    }
    let owned = members(sh, pool);
    let accounts = sh.caches.accounts_in(&key.namespace);
    let scaled = autoscaled(ctx, pool, &owned, &accounts).await;
    let pool = &scaled.0;
    let plan = plan::plan(
        pool,
        &owned.iter().map(Arc::as_ref).collect::<Vec<_>>(),
        &accounts.iter().map(Arc::as_ref).collect::<Vec<_>>(),
    );
    let new: Vec<(u32, Option<String>)> = plan
        .actions
        .iter()
        .filter_map(|a| match a {
            Action::Create { ordinal, account } => Some((*ordinal, account.clone())),
            _ => None,
        })
        .collect();
    create(ctx, pool, &key, new).await?;
    for action in &plan.actions {
        match action {
            Action::Delete { name, busy } => delete(ctx, &key, name, *busy).await?,
            Action::Roll { name, how } => {
                update::roll(ctx, pool, &key, name, *how, &plan.status.update_revision).await?
            }
            Action::Create { .. } => {}
        }
    }
    if deleting {
        if owned.is_empty() && has_finalizer {
            let (ns, name) = (key.namespace.clone(), key.name.clone());
            match sh
                .blocking(move |s| {
                    s.api::<SessionPool>(Some(&ns))
                        .set_finalizer(&name, POOL_FINALIZER, false)
                })
                .await
            {
                Ok(_) | Err(StoreError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        return Ok(());
    }
    status::write_status(ctx, pool, &key, plan, scaled.1).await
}

/// The pool as autoscaling sizes it (its `spec.replicas` replaced by the
/// decision), and the decision's status fields (desired size, when it last
/// changed). Without `spec.autoscale`: the pool as it is.
async fn autoscaled(
    ctx: &Context,
    pool: &SessionPool,
    owned: &[Arc<Session>],
    accounts: &[Arc<crate::api::Account>],
) -> (SessionPool, Option<(u32, Option<crate::api::Time>)>) {
    let Some(a) = &pool.spec.autoscale else {
        return (pool.clone(), None);
    };
    let sh = &ctx.shared;
    let st = pool.status.clone().unwrap_or_default();
    let current = st.desired_replicas.unwrap_or(pool.spec.replicas);
    let now = sh.now();
    let since_last = st.last_scale_time.as_ref().map(|t| {
        let at = std::time::SystemTime::from(t.0);
        now.duration_since(at).unwrap_or_default()
    });
    let members: Vec<&Session> = owned.iter().map(Arc::as_ref).collect();
    let accts: Vec<&crate::api::Account> = accounts.iter().map(Arc::as_ref).collect();
    let inputs = autoscale::Inputs {
        current,
        waiting_tasks: sh
            .caches
            .tasks
            .all()
            .iter()
            .filter(|t| autoscale::waits_for(pool, t))
            .count() as u32,
        idle: autoscale::idle(&members),
        room: autoscale::room(pool, &accts),
        since_last,
    };
    let want = autoscale::decide(a, &inputs);
    let mut last = st.last_scale_time.clone();
    if want != current {
        last = Some(crate::api::now());
        let message = format!(
            "{current} → {want} sessions ({} task(s) waiting, {} idle)",
            inputs.waiting_tasks, inputs.idle
        );
        sh.record(&ObjectKey::of(pool), false, "Autoscaled", &message, SOURCE)
            .await;
    }
    let mut sized = pool.clone();
    sized.spec.replicas = want;
    (sized, Some((want, last)))
}

/// Creates the Sessions of `new` (ordinal, preferred account) in one
/// transaction: a pool scaled by a hundred is one write, like one `apply`
/// of a hundred Sessions, not a hundred. A Session already there (the
/// cache has not seen it yet) is left as it is. One event tells them.
async fn create(
    ctx: &Context,
    pool: &SessionPool,
    key: &ObjectKey,
    new: Vec<(u32, Option<String>)>,
) -> Result<(), StoreError> {
    if new.is_empty() {
        return Ok(());
    }
    let reqs: Vec<(ApplyRequest, Option<String>)> = new
        .into_iter()
        .map(|(ordinal, account)| {
            let session = member(pool, ordinal, account.clone());
            let req = ApplyRequest {
                object: serde_json::to_value(&session).expect("a Session serializes"),
                declared: None,
                manager: SOURCE.into(),
                force: false,
            };
            (req, account)
        })
        .collect();
    let sh = &ctx.shared;
    let made = sh
        .blocking(move |s| {
            let mut batch = s.batch(false)?;
            let mut made = Vec::new();
            for (req, account) in reqs {
                match batch.create_request(&req) {
                    Ok(r) => {
                        let name = r.object["metadata"]["name"].as_str().unwrap_or_default();
                        made.push((name.to_string(), account));
                    }
                    Err(StoreError::AlreadyExists(_)) => {}
                    Err(e) => return Err(e),
                }
            }
            batch.commit()?;
            Ok(made)
        })
        .await?;
    if !made.is_empty() {
        sh.record(key, false, "Created", &created_message(&made), SOURCE)
            .await;
    }
    Ok(())
}

/// The event of one pass's creations: `created session web-3 preferring
/// account a`, or for several `created 3 sessions (web-0, web-1, web-2)
/// preferring account a: 2, b: 1`.
fn created_message(made: &[(String, Option<String>)]) -> String {
    /// Names listed in full up to this many.
    const LISTED: usize = 8;
    let mut per: std::collections::BTreeMap<&str, usize> = Default::default();
    for (_, a) in made {
        if let Some(a) = a {
            *per.entry(a.as_str()).or_default() += 1;
        }
    }
    let on = match per.len() {
        0 => String::new(),
        1 if made.len() == 1 => format!(" preferring account {}", per.keys().next().unwrap()),
        _ => format!(
            " preferring account {}",
            per.iter()
                .map(|(a, n)| format!("{a}: {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    if let [(name, _)] = made {
        return format!("created session {name}{on}");
    }
    let names: Vec<&str> = made.iter().take(LISTED).map(|(n, _)| n.as_str()).collect();
    let more = made.len().saturating_sub(LISTED);
    let more = if more > 0 {
        format!(" and {more} more")
    } else {
        String::new()
    };
    format!(
        "created {} sessions ({}{more}){on}",
        made.len(),
        names.join(", ")
    )
}

async fn delete(ctx: &Context, key: &ObjectKey, name: &str, busy: bool) -> Result<(), StoreError> {
    let sh = &ctx.shared;
    let skey = ObjectKey::new(Kind::Session, &key.namespace, name);
    match sh.blocking(move |s| s.delete(&skey, None, false)).await {
        Ok(_) => {
            let how = if busy { " (in a turn: forced)" } else { "" };
            sh.record(
                key,
                false,
                "Deleted",
                &format!("deleted session {name}{how}"),
                SOURCE,
            )
            .await;
            Ok(())
        }
        Err(StoreError::NotFound(_)) => Ok(()),
        Err(e) => Err(e),
    }
}

/// The Session of `ordinal` from the pool's template.
pub fn member(pool: &SessionPool, ordinal: u32, account: Option<String>) -> Session {
    let name = pool.metadata.name.clone().unwrap_or_default();
    let t = &pool.spec.template;
    let mut labels = t.metadata.labels.clone();
    labels.insert(POOL_LABEL.into(), name.clone());
    labels.insert(TEMPLATE_HASH_LABEL.into(), crate::api::template_hash(t));
    let mut spec = t.spec.clone();
    spec.account = account.or(spec.account);
    Session {
        metadata: ObjectMeta {
            name: Some(member_name(&name, ordinal)),
            namespace: pool.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: (!t.metadata.annotations.is_empty())
                .then(|| t.metadata.annotations.clone()),
            owner_references: Some(vec![OwnerReference {
                api_version: crate::api::API_VERSION.into(),
                kind: Kind::SessionPool.name().into(),
                name,
                uid: pool.metadata.uid.clone().unwrap_or_default(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]),
            ..ObjectMeta::default()
        },
        spec,
        status: None,
    }
}

/// The states of `claude_failover_pool_sessions`.
const GAUGE_STATES: [&str; 7] = [
    "desired", "current", "ready", "idle", "busy", "waiting", "updated",
];

/// Sets `claude_failover_pool_sessions` to what the pools' statuses say,
/// and removes the series of pools that are gone (never a reset first: a
/// scrape in between would see a gap).
pub fn fill_gauge<'a>(
    gauge: &prometheus::IntGaugeVec,
    pools: impl IntoIterator<Item = &'a SessionPool>,
) {
    let mut keep = std::collections::HashSet::new();
    for p in pools {
        let ns = p.metadata.namespace.clone().unwrap_or_default();
        let name = p.metadata.name.clone().unwrap_or_default();
        let st = p.status.clone().unwrap_or_default();
        let desired = st.desired_replicas.unwrap_or(p.spec.replicas);
        let values = [
            desired,
            st.replicas,
            st.ready,
            st.idle,
            st.busy,
            st.waiting,
            st.updated_replicas,
        ];
        for (state, v) in GAUGE_STATES.iter().zip(values) {
            gauge
                .with_label_values(&[ns.as_str(), name.as_str(), state])
                .set(i64::from(v));
        }
        keep.insert((ns, name));
    }
    let gone: std::collections::HashSet<(String, String)> = {
        use prometheus::core::Collector;
        gauge
            .collect()
            .iter()
            .flat_map(|f| f.get_metric().iter())
            .map(|m| {
                let l = |k: &str| {
                    m.get_label()
                        .iter()
                        .find(|x| x.name() == k)
                        .map(|x| x.value().to_string())
                        .unwrap_or_default()
                };
                (l("namespace"), l("pool"))
            })
            .filter(|k| !keep.contains(k))
            .collect()
    };
    for (ns, name) in gone {
        for state in GAUGE_STATES {
            let _ = gauge.remove_label_values(&[ns.as_str(), name.as_str(), state]);
        }
    }
}

#[cfg(test)]
mod gauge_tests {
    use super::*;

    #[test]
    fn one_event_tells_a_pass_of_creations() {
        let m = |v: &[(&str, Option<&str>)]| {
            let v: Vec<(String, Option<String>)> = v
                .iter()
                .map(|(n, a)| (n.to_string(), a.map(str::to_string)))
                .collect();
            created_message(&v)
        };
        assert_eq!(
            m(&[("web-3", Some("a"))]),
            "created session web-3 preferring account a"
        );
        assert_eq!(m(&[("web-3", None)]), "created session web-3");
        assert_eq!(
            m(&[
                ("web-0", Some("a")),
                ("web-1", Some("b")),
                ("web-2", Some("a"))
            ]),
            "created 3 sessions (web-0, web-1, web-2) preferring account a: 2, b: 1"
        );
        let many: Vec<(String, Option<&str>)> = (0..10).map(|i| (format!("p-{i}"), None)).collect();
        let many: Vec<(&str, Option<&str>)> = many.iter().map(|(n, a)| (n.as_str(), *a)).collect();
        assert_eq!(
            m(&many),
            "created 10 sessions (p-0, p-1, p-2, p-3, p-4, p-5, p-6, p-7 and 2 more)"
        );
    }

    #[test]
    fn the_gauge_follows_the_pools_and_forgets_deleted_ones() {
        let m = crate::metrics::Metrics::new();
        let pool = |name: &str, ready: u32| -> SessionPool {
            serde_json::from_value(serde_json::json!({
                "apiVersion": "claude-failover.io/v1alpha1", "kind": "SessionPool",
                "metadata": {"name": name, "namespace": "default"},
                "spec": {"replicas": 3, "template": {"spec": {"workdir": "/w"}}},
                "status": {"replicas": 3, "ready": ready, "idle": 1, "busy": 2}
            }))
            .unwrap()
        };
        let (a, b) = (pool("a", 2), pool("b", 3));
        fill_gauge(&m.pool_sessions, [&a, &b]);
        let text = m.encode();
        assert!(
            text.contains(
                r#"claude_failover_pool_sessions{namespace="default",pool="a",state="ready"} 2"#
            ),
            "{text}"
        );
        assert!(
            text.contains(
                r#"claude_failover_pool_sessions{namespace="default",pool="b",state="desired"} 3"#
            ),
            "{text}"
        );
        assert!(
            text.contains(
                r#"claude_failover_pool_sessions{namespace="default",pool="a",state="updated"} 0"#
            ),
            "{text}"
        );
        fill_gauge(&m.pool_sessions, [&a]);
        let text = m.encode();
        assert!(!text.contains(r#"pool="b""#), "{text}");
        assert!(text.contains(r#"pool="a",state="busy"} 2"#), "{text}");
    }
}

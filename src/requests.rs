//! Requests people make of the daemon (cancel a task, restart a session,
//! fail an account over), written to the store as annotations on the
//! object, each with an event naming who asked. The controller that acts
//! answers in its own status field; it never removes the request.

use crate::api::keys::{CANCEL, FAILOVER_REQUEST, FAILOVER_TO, REINSTATE, RESTART};
use crate::api::{Kind, ObjectKey, TaskPhase};
use crate::store::{Store, StoreError};
use serde_json::{Value, json};

/// What a cancel request found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelOutcome {
    /// Asked for now (the dispatcher stops the task at its next pass).
    Requested,
    /// Asked for before; still on its way.
    AlreadyRequested,
    /// The task had already ended, in this phase: nothing to stop.
    Finished(TaskPhase),
}

/// A fresh request value: the time, precise enough to tell two apart.
fn stamp() -> String {
    k8s_openapi::jiff::Timestamp::now().to_string()
}

/// Sets annotations `set` on `key` (None removes one).
fn annotate(
    store: &Store,
    key: &ObjectKey,
    set: &[(&str, Option<&str>)],
) -> Result<(), StoreError> {
    store.update_metadata(key, None, |m| {
        let ann = m.entry("annotations").or_insert_with(|| json!({}));
        if let Some(a) = ann.as_object_mut() {
            for (k, v) in set {
                match v {
                    Some(v) => a.insert(k.to_string(), Value::from(*v)),
                    None => a.remove(*k),
                };
            }
        }
    })?;
    Ok(())
}

/// Asks for the Task `key` to be cancelled and records an event saying who
/// asked (`origin`: `api`, `cli`, ...).
pub fn request_cancel(
    store: &Store,
    key: &ObjectKey,
    origin: &str,
) -> Result<CancelOutcome, StoreError> {
    let current = store
        .get(key)?
        .ok_or_else(|| StoreError::NotFound(key.clone()))?;
    let phase = current
        .pointer("/status/phase")
        .and_then(|p| serde_json::from_value::<TaskPhase>(p.clone()).ok())
        .unwrap_or_default();
    if matches!(
        phase,
        TaskPhase::Succeeded | TaskPhase::Failed | TaskPhase::Cancelled
    ) {
        return Ok(CancelOutcome::Finished(phase));
    }
    if current
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(CANCEL))
        .is_some()
    {
        return Ok(CancelOutcome::AlreadyRequested);
    }
    let mut fresh = false;
    let when = serde_json::to_value(crate::api::now()).expect("time serializes");
    store.update_metadata(key, None, |m| {
        let ann = m.entry("annotations").or_insert_with(|| json!({}));
        if let Some(a) = ann.as_object_mut()
            && !a.contains_key(CANCEL)
        {
            a.insert(CANCEL.into(), when.clone());
            fresh = true;
        }
    })?;
    if !fresh {
        return Ok(CancelOutcome::AlreadyRequested);
    }
    store.record_event(
        key,
        false,
        "CancelRequested",
        &format!("cancel requested through the {origin}"),
        origin,
    )?;
    Ok(CancelOutcome::Requested)
}

/// Asks for a restart of the Session `key`'s agent and records an event
/// saying who asked.
pub fn request_restart(store: &Store, key: &ObjectKey, origin: &str) -> Result<(), StoreError> {
    annotate(store, key, &[(RESTART, Some(&stamp()))])?;
    store.record_event(
        key,
        false,
        "RestartRequested",
        &format!("restart requested through the {origin}"),
        origin,
    )
}

/// Asks for the sessions of Account `key` to move now (to `to`, or the
/// account the policy picks) and records an event saying who asked.
/// Returns the request's value, which the failover controller's answer
/// (`status.failover.request.requestedAt`) carries.
pub fn request_failover(
    store: &Store,
    key: &ObjectKey,
    to: Option<&str>,
    origin: &str,
) -> Result<String, StoreError> {
    debug_assert_eq!(key.kind, Kind::Account);
    let value = stamp();
    annotate(
        store,
        key,
        &[(FAILOVER_REQUEST, Some(&value)), (FAILOVER_TO, to)],
    )?;
    let target = to.map(|t| format!(" to account {t}")).unwrap_or_default();
    store.record_event(
        key,
        false,
        "FailoverRequested",
        &format!("failover{target} requested through the {origin}"),
        origin,
    )?;
    Ok(value)
}

/// Asks for Account `key` to be taken back as a failover target now,
/// though a failed swap set it aside, and records an event saying who
/// asked. Returns the request's value (`status.failover.reinstated`).
pub fn request_reinstate(
    store: &Store,
    key: &ObjectKey,
    origin: &str,
) -> Result<String, StoreError> {
    debug_assert_eq!(key.kind, Kind::Account);
    let value = stamp();
    annotate(store, key, &[(REINSTATE, Some(&value))])?;
    store.record_event(
        key,
        false,
        "ReinstateRequested",
        &format!("reinstating as a failover target requested through the {origin}"),
        origin,
    )?;
    Ok(value)
}

/// A change of a SessionPool's size.
#[derive(Debug, Clone, Default)]
pub struct Scale {
    pub replicas: u32,
    /// Let a scale down stop busy sessions (the pool's
    /// `claude-failover.io/force-scale-down` annotation, cleared by a scale
    /// without it).
    pub force: bool,
    /// Only if the pool is still at this resourceVersion.
    pub expected_rv: Option<String>,
    /// Only if the pool has this many replicas now.
    pub current: Option<u32>,
    pub dry_run: bool,
}

/// Sets the `spec.replicas` of the SessionPool `key` as `manager`.
/// Returns the pool.
pub fn scale_pool(
    store: &Store,
    key: &ObjectKey,
    req: &Scale,
    manager: &str,
) -> Result<Value, StoreError> {
    use crate::manifest::validate::MAX_POOL_REPLICAS;
    let (replicas, force, current) = (req.replicas, req.force, req.current);
    if replicas > MAX_POOL_REPLICAS {
        return Err(StoreError::Invalid {
            key: key.clone(),
            message: format!("spec.replicas: at most {MAX_POOL_REPLICAS}"),
        });
    }
    let r = store.update_object(
        key,
        req.expected_rv.as_deref(),
        manager,
        req.dry_run,
        |obj| {
            let now = obj.pointer("/spec/replicas").and_then(Value::as_u64);
            if let Some(want) = current
                && now != Some(u64::from(want))
            {
                return Err(format!(
                    "expected {want} replicas, found {}",
                    now.map_or("none".into(), |n| n.to_string())
                ));
            }
            obj["spec"]["replicas"] = json!(replicas);
            let meta = obj["metadata"]
                .as_object_mut()
                .ok_or("metadata is not a map")?;
            let ann = meta
                .entry("annotations")
                .or_insert_with(|| json!({}))
                .as_object_mut()
                .ok_or("metadata.annotations is not a map")?;
            if force {
                ann.insert(crate::api::FORCE_SCALE_DOWN.into(), json!("true"));
            } else {
                ann.remove(crate::api::FORCE_SCALE_DOWN);
            }
            Ok(())
        },
    )?;
    Ok(r.object)
}

/// A SessionPool as Kubernetes' `autoscaling/v1` `Scale` (its scale
/// subresource): the pool's name and version, `spec.replicas`, and the
/// replicas and label selector of its status.
pub fn scale_of(pool: &Value) -> Value {
    let meta = &pool["metadata"];
    let mut m = serde_json::Map::new();
    for k in [
        "name",
        "namespace",
        "uid",
        "resourceVersion",
        "creationTimestamp",
    ] {
        if let Some(v) = meta.get(k) {
            m.insert(k.into(), v.clone());
        }
    }
    let name = meta["name"].as_str().unwrap_or_default();
    let selector = pool
        .pointer("/status/selector")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| format!("{}={name}", crate::api::POOL_LABEL));
    json!({
        "apiVersion": "autoscaling/v1",
        "kind": "Scale",
        "metadata": m,
        "spec": {"replicas": pool.pointer("/spec/replicas").cloned().unwrap_or(json!(0))},
        "status": {
            "replicas": pool.pointer("/status/replicas").cloned().unwrap_or(json!(0)),
            "selector": selector,
        },
    })
}

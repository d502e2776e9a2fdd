//! Carrying out the rollout's decisions ([`super::rollout`]) on one
//! Session: relabel it, relaunch it in place, or delete it to be made
//! again.
//!
//! A relaunch or a replacement happens under the Session's keyboard (the
//! one the dispatcher holds from its look at the pane until a task is
//! typed), after checking again that no task is in flight on it: a task
//! typed a moment before is never cut, and the dispatcher, which reads the
//! Session again under the keyboard, types nothing into a Session that is
//! about to go.

use super::plan::busy;
use super::rollout::{Roll, annotations_for, labels_for, spec_for};
use super::{Context, SOURCE};
use crate::api::{Kind, ObjectKey, Session, SessionPool};
use crate::controller::BY_SESSION;
use crate::controller::task::assign::{in_flight, phase};
use crate::store::StoreError;
use crate::store::cache::index_key;
use serde_json::json;

/// Brings the Session `name` of `pool` up to its template (`hash`).
pub async fn roll(
    ctx: &Context,
    pool: &SessionPool,
    key: &ObjectKey,
    name: &str,
    how: Roll,
    hash: &str,
) -> Result<(), StoreError> {
    let sh = &ctx.shared;
    let skey = ObjectKey::new(Kind::Session, &key.namespace, name);
    if how == Roll::Relabel {
        let Some(s) = sh.caches.sessions.get(&key.namespace, name) else {
            return Ok(());
        };
        return write(ctx, pool, &s, hash, None).await.map(|_| ());
    }
    let _keyboard = sh.driver.keyboard(&skey).await;
    let Some(s) = sh.caches.sessions.get(&key.namespace, name) else {
        return Ok(());
    };
    if busy(&s) || task_in_flight(ctx, &skey) {
        return Ok(()); // a task came first: after its turn
    }
    match how {
        Roll::Replace => {
            let k = skey.clone();
            let gone = sh
                .blocking(move |st| {
                    st.delete(&k, None, false)?;
                    st.api::<Session>(Some(&k.namespace)).get(&k.name)
                })
                .await;
            match gone {
                Ok(now) => {
                    if let Some(obj) = now {
                        sh.caches.sessions.wrote(obj);
                    }
                    let message = format!(
                        "replacing session {name} with one made from template {hash} (its workdir or workspace changed: a new conversation)"
                    );
                    sh.record(key, false, "Replacing", &message, SOURCE).await;
                }
                Err(StoreError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Roll::Restart => {
            let stamp = k8s_openapi::jiff::Timestamp::now().to_string();
            if write(ctx, pool, &s, hash, Some(&stamp)).await? {
                let message = format!(
                    "restarting session {name} with template {hash} (resuming its conversation)"
                );
                sh.record(key, false, "Restarting", &message, SOURCE).await;
            }
        }
        Roll::Relabel => unreachable!("handled above"),
    }
    Ok(())
}

/// Whether the dispatcher has a task in flight on `session` (its intent is
/// written before anything is typed, and this process's own writes are in
/// the cache at once).
fn task_in_flight(ctx: &Context, session: &ObjectKey) -> bool {
    ctx.shared
        .caches
        .tasks
        .indexed(BY_SESSION, &index_key(&session.namespace, &session.name))
        .iter()
        .any(|t| {
            in_flight(phase(t))
                && t.status.as_ref().and_then(|s| s.session.as_deref()) == Some(&session.name)
        })
}

/// Writes `s` up to date (spec, labels, annotations; with `restart`, the
/// restart request that relaunches its agent), if it has not changed since
/// the cache's copy. Returns whether it was written.
async fn write(
    ctx: &Context,
    pool: &SessionPool,
    s: &Session,
    hash: &str,
    restart: Option<&str>,
) -> Result<bool, StoreError> {
    let sh = &ctx.shared;
    let key = ObjectKey::of(s);
    let spec = serde_json::to_value(spec_for(pool, s)).expect("a spec serializes");
    let labels = labels_for(pool, s, hash);
    let mut annotations = annotations_for(pool, s);
    if let Some(v) = restart {
        annotations.insert(crate::api::keys::RESTART.into(), v.into());
    }
    let rv = s.metadata.resource_version.clone();
    let k = key.clone();
    let r = sh
        .blocking(move |st| {
            st.update_object(&k, rv.as_deref(), SOURCE, false, |obj| {
                obj["spec"] = spec.clone();
                obj["metadata"]["labels"] = json!(labels);
                obj["metadata"]["annotations"] = json!(annotations);
                Ok(())
            })
        })
        .await;
    match r {
        Ok(u) => {
            if let Ok(obj) = serde_json::from_value::<Session>(u.object) {
                sh.caches.sessions.wrote(obj);
            }
            Ok(true)
        }
        // Changed since (its status, a person): the next pass looks again.
        Err(StoreError::Conflict { .. } | StoreError::NotFound(_)) => Ok(false),
        Err(e) => Err(e),
    }
}

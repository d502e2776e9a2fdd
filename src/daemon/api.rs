//! The HTTP control plane: health, readiness, metrics, a JSON API over the
//! objects, actions, and a server-sent event stream. See
//! docs/control-plane.md for every route.
//!
//! - `/healthz`, `/readyz` and `/metrics` are open; everything under
//!   `/api/` takes `Authorization: Bearer TOKEN` (the token file, see
//!   [`super::access`]), asked for before routing: a request without it or
//!   with a wrong one gets 401 (also on a path that matches no route) and
//!   changes nothing. The token is never logged.
//! - Bound to loopback, the server also refuses requests whose `Host` is
//!   not exactly one loopback name ([`loopback_host_only`]): a web page in
//!   the user's browser cannot reach it through DNS rebinding. Idle
//!   connections close ([`super::guard::IdleTimeout`]).
//! - Writes go to the store (or, for a failover, to a request file the
//!   failover controller consumes), like `apply` does; the controllers act
//!   on them, level-triggered. Actions answer 202 Accepted.

use super::bus::{Bus, EventItem, InvolvedObject, Item};
use crate::api::{Kind, ObjectKey};
use crate::selector::Selector;
use crate::store::{Store, StoreError};
use axum::Router;
use axum::extract::{Path as UrlPath, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use serde_json::{Value, json};
use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use super::readiness::{Feed, Readiness};

// ----------------------------------------------------------------- state

/// Everything the handlers need.
pub struct ApiState {
    pub store: Store,
    pub state_dir: PathBuf,
    /// The bearer token (never logged).
    pub token: String,
    pub readiness: Arc<Readiness>,
    pub bus: Bus,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Becomes true when the daemon stops: event streams end then.
    pub stop: tokio::sync::watch::Receiver<bool>,
}

// ---------------------------------------------------------------- errors

/// An error answer, as a Kubernetes `Status` object.
#[derive(Debug)]
pub struct ApiError {
    code: StatusCode,
    reason: &'static str,
    message: String,
}

impl ApiError {
    fn new(code: StatusCode, reason: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            reason,
            message: message.into(),
        }
    }

    fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "NotFound", message)
    }

    fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", message)
    }
}

fn status_body(code: StatusCode, reason: &str, message: &str, success: bool) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Status",
        "status": if success { "Success" } else { "Failure" },
        "reason": reason,
        "message": message,
        "code": code.as_u16(),
    })
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.code,
            axum::Json(status_body(self.code, self.reason, &self.message, false)),
        )
            .into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        let (code, reason) = match &e {
            StoreError::NotFound(_) => (StatusCode::NOT_FOUND, "NotFound"),
            StoreError::Conflict { .. } | StoreError::FieldConflicts { .. } => {
                (StatusCode::CONFLICT, "Conflict")
            }
            StoreError::AlreadyExists(_) => (StatusCode::CONFLICT, "AlreadyExists"),
            StoreError::Contended(_) => (StatusCode::CONFLICT, "Conflict"),
            StoreError::Unavailable { .. } => {
                (StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable")
            }
            StoreError::Invalid { .. } | StoreError::Malformed(_) => {
                (StatusCode::UNPROCESSABLE_ENTITY, "Invalid")
            }
            StoreError::Io { .. } | StoreError::Corrupt { .. } => {
                (StatusCode::INTERNAL_SERVER_ERROR, "InternalError")
            }
        };
        ApiError::new(code, reason, e.to_string())
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// 202 Accepted with a Status saying what was asked for.
fn accepted(message: String) -> Response {
    let code = StatusCode::ACCEPTED;
    (
        code,
        axum::Json(status_body(code, "Accepted", &message, true)),
    )
        .into_response()
}

/// Runs blocking store I/O off the async workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> ApiResult<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            e.to_string(),
        )
    })
}

type QueryResult<T> = Result<Query<T>, axum::extract::rejection::QueryRejection>;

/// A query string, or a 400 Status saying what is wrong with it.
fn query<T>(q: QueryResult<T>) -> ApiResult<T> {
    q.map(|Query(v)| v)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "BadRequest", e.body_text()))
}

fn kind_of(s: &str) -> ApiResult<Kind> {
    Kind::from_cli(s).ok_or_else(|| {
        ApiError::not_found(format!(
            "the server doesn't have a resource type \"{s}\" (known: accounts, sessions, tasks)"
        ))
    })
}

/// The object a URL names. Namespaces and names are DNS-1123 labels (as
/// everywhere in the project), checked before anything touches the store:
/// a path segment like `..` never reaches a file name.
fn key_of(kind: Kind, ns: &str, name: Option<&str>) -> ApiResult<ObjectKey> {
    let bad = |what: &str, e: String| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            format!("{what}: {e}"),
        )
    };
    crate::manifest::validate::dns1123_label(ns).map_err(|e| bad("namespace", e))?;
    if let Some(n) = name {
        crate::manifest::validate::dns1123_label(n).map_err(|e| bad("name", e))?;
    }
    Ok(ObjectKey::new(kind, ns, name.unwrap_or_default()))
}

fn not_found(key: &ObjectKey) -> ApiError {
    ApiError::not_found(format!(
        "{} \"{}\" not found in namespace {}",
        key.kind.qualified(),
        key.name,
        key.namespace
    ))
}

// ---------------------------------------------------------------- router

/// The open routes (health, readiness, metrics) and the authenticated API.
pub fn router(state: Arc<ApiState>) -> Router {
    // The token is asked for before routing (a layer, not a route layer):
    // every path under /api/, known or not, needs it.
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/api/v1/watch", get(watch))
        .route("/api/v1/{plural}", get(list_all))
        .route(
            "/api/v1/namespaces/{ns}/{plural}",
            get(list_namespace).post(create),
        )
        .route("/api/v1/namespaces/{ns}/{plural}/{name}", get(get_one))
        .route(
            "/api/v1/namespaces/{ns}/{plural}/{name}/{sub}",
            get(get_sub)
                .post(post_sub)
                .put(put_scale)
                .patch(patch_scale),
        )
        .fallback(|req: Request| async move {
            ApiError::not_found(format!("no such path: {}", req.uri().path()))
        })
        .layer(middleware::from_fn_with_state(state.clone(), require_token))
        .with_state(state)
}

pub use super::guard::{is_loopback_host, loopback_host_only};

/// The token guard of [`router`], with the daemon's token.
async fn require_token(State(s): State<Arc<ApiState>>, req: Request, next: Next) -> Response {
    super::guard::require_token_for_api(&s.token, req, next).await
}

// -------------------------------------------------------- open endpoints

async fn readyz(State(s): State<Arc<ApiState>>) -> Response {
    let (mut ready, mut body) = s.readiness.check_with(&s.store.corrupt());
    // A store that does not answer (etcd without a quorum): nothing is
    // written meanwhile (the agents keep running).
    let outage = s.store.outage();
    let mut syncs = vec![store_answers(outage.as_ref())];
    if outage.is_none() {
        // A stalled manifest sync (manifests that need a fix) fails its check.
        let store = s.store.clone();
        syncs.extend(
            blocking(move || crate::sync::status::readiness_checks(&store))
                .await
                .unwrap_or_default(),
        );
    }
    ready &= syncs.iter().all(|c| c["ok"] == true);
    body["ready"] = ready.into();
    if let Some(checks) = body["checks"].as_array_mut() {
        checks.extend(syncs);
    }
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, axum::Json(body)).into_response()
}

/// The `/readyz` check of the store's availability: its location (never a
/// secret: credentials live in files the config names) and why.
fn store_answers(outage: Option<&crate::store::Outage>) -> Value {
    match outage {
        None => json!({"name": "storeAvailable", "ok": true, "message": "the store answers"}),
        Some(o) => json!({
            "name": "storeAvailable",
            "ok": false,
            "message": format!(
                "{}: the store does not answer (for {}s: {}); nothing is written until it does, the agents keep running",
                o.location,
                o.for_.as_secs(),
                o.message
            ),
        }),
    }
}

async fn metrics(State(s): State<Arc<ApiState>>) -> Response {
    let available = s.store.outage().is_none();
    s.metrics.store_available.set(i64::from(available));
    (
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        s.metrics.encode(),
    )
        .into_response()
}

// ----------------------------------------------------------------- reads

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ListQuery {
    label_selector: Option<String>,
}

async fn list(
    s: &ApiState,
    ns: Option<String>,
    plural: &str,
    q: ListQuery,
) -> ApiResult<axum::Json<Value>> {
    let kind = kind_of(plural)?;
    if let Some(ns) = &ns {
        key_of(kind, ns, None)?;
    }
    let selector = q
        .label_selector
        .as_deref()
        .map(Selector::parse)
        .transpose()
        .map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                format!("labelSelector: {e}"),
            )
        })?;
    let store = s.store.clone();
    let items =
        blocking(move || store.list_checked(kind, ns.as_deref()).map(|l| l.objects)).await??;
    let items: Vec<Value> = items
        .into_iter()
        .filter(|v| {
            selector.as_ref().is_none_or(|sel| {
                let labels = v
                    .pointer("/metadata/labels")
                    .and_then(|l| serde_json::from_value(l.clone()).ok());
                sel.matches(labels.as_ref())
            })
        })
        .collect();
    Ok(axum::Json(
        json!({"apiVersion": "v1", "kind": "List", "items": items}),
    ))
}

async fn list_all(
    State(s): State<Arc<ApiState>>,
    UrlPath(plural): UrlPath<String>,
    q: QueryResult<ListQuery>,
) -> ApiResult<axum::Json<Value>> {
    list(&s, None, &plural, query(q)?).await
}

async fn list_namespace(
    State(s): State<Arc<ApiState>>,
    UrlPath((ns, plural)): UrlPath<(String, String)>,
    q: QueryResult<ListQuery>,
) -> ApiResult<axum::Json<Value>> {
    list(&s, Some(ns), &plural, query(q)?).await
}

async fn get_one(
    State(s): State<Arc<ApiState>>,
    UrlPath((ns, plural, name)): UrlPath<(String, String, String)>,
) -> ApiResult<axum::Json<Value>> {
    let key = key_of(kind_of(&plural)?, &ns, Some(&name))?;
    let store = s.store.clone();
    let k = key.clone();
    match blocking(move || store.get(&k)).await?? {
        Some(v) => Ok(axum::Json(v)),
        None => Err(not_found(&key)),
    }
}

async fn get_sub(
    State(s): State<Arc<ApiState>>,
    UrlPath((ns, plural, name, sub)): UrlPath<(String, String, String, String)>,
) -> ApiResult<axum::Json<Value>> {
    let key = key_of(kind_of(&plural)?, &ns, Some(&name))?;
    if sub == "scale" && key.kind == Kind::SessionPool {
        let store = s.store.clone();
        let k = key.clone();
        return match blocking(move || store.get(&k)).await?? {
            Some(pool) => Ok(axum::Json(crate::requests::scale_of(&pool))),
            None => Err(not_found(&key)),
        };
    }
    if sub != "events" {
        return Err(ApiError::not_found(format!("no such resource: {sub}")));
    }
    let store = s.store.clone();
    let k = key.clone();
    let (exists, events) = blocking(move || -> Result<_, StoreError> {
        // A corrupt object exists: its events say why it is skipped.
        let exists = match store.get(&k) {
            Ok(v) => v.is_some(),
            Err(StoreError::Corrupt { .. }) => true,
            Err(e) => return Err(e),
        };
        Ok((exists, store.events(&k)?))
    })
    .await??;
    if !exists && events.is_empty() {
        return Err(not_found(&key));
    }
    let items: Vec<EventItem> = events
        .into_iter()
        .map(|event| EventItem {
            involved_object: InvolvedObject::from(&key),
            event,
        })
        .collect();
    Ok(axum::Json(
        json!({"apiVersion": "v1", "kind": "EventList", "items": items}),
    ))
}

// ---------------------------------------------------------------- writes

/// `POST /api/v1/namespaces/{ns}/tasks`: a Task as JSON (or YAML), decoded
/// and validated exactly like `apply` does. 201 with the stored object;
/// 409 when one of that name exists.
async fn create(
    State(s): State<Arc<ApiState>>,
    UrlPath((ns, plural)): UrlPath<(String, String)>,
    body: axum::body::Bytes,
) -> ApiResult<Response> {
    key_of(kind_of(&plural)?, &ns, None)?;
    if kind_of(&plural)? != Kind::Task {
        return Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "only tasks are created through the API; declare accounts and sessions with apply",
        ));
    }
    let (mut docs, errors) = crate::manifest::decode_file("request body", &body);
    if !errors.is_empty() {
        let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
        return Err(ApiError::invalid(lines.join("\n")));
    }
    let mut obj = match (docs.pop(), docs.is_empty()) {
        (Some(d), true) => d.object,
        (None, _) => return Err(ApiError::invalid("request body: expected one Task")),
        (Some(_), false) => {
            return Err(ApiError::invalid(
                "request body: expected one Task, got several documents",
            ));
        }
    };
    if obj.kind() != Kind::Task {
        return Err(ApiError::invalid(format!(
            "request body: kind: expected Task, got {}",
            obj.kind()
        )));
    }
    match obj.meta().namespace.as_deref() {
        Some(declared) if declared != ns => {
            return Err(ApiError::invalid(format!(
                "request body: metadata.namespace: `{declared}` does not match the namespace `{ns}` of the URL"
            )));
        }
        _ => obj.meta_mut().namespace = Some(ns.clone()),
    }
    let key = ObjectKey::new(Kind::Task, &ns, obj.name());
    let store = s.store.clone();
    let created = blocking(move || -> Result<Value, StoreError> {
        let created = store.create(&obj.to_value())?;
        store.record_event(&key, false, "Created", "created through the API", "api")?;
        Ok(created)
    })
    .await??;
    Ok((StatusCode::CREATED, axum::Json(created)).into_response())
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct FailoverBody {
    /// The account to move to (else the failover policy chooses).
    to: Option<String>,
}

/// Actions: `tasks/NAME/cancel`, `sessions/NAME/restart`,
/// `accounts/NAME/failover`. 202 when the request is recorded.
async fn post_sub(
    State(s): State<Arc<ApiState>>,
    UrlPath((ns, plural, name, sub)): UrlPath<(String, String, String, String)>,
    body: axum::body::Bytes,
) -> ApiResult<Response> {
    let kind = kind_of(&plural)?;
    let key = key_of(kind, &ns, Some(&name))?;
    let store = s.store.clone();
    match (kind, sub.as_str()) {
        (Kind::Task, "cancel") => {
            use crate::requests::{CancelOutcome, request_cancel};
            let k = key.clone();
            match blocking(move || request_cancel(&store, &k, "api")).await? {
                Ok(CancelOutcome::Requested) | Ok(CancelOutcome::AlreadyRequested) => {
                    Ok(accepted(format!("cancel of task {name} requested")))
                }
                Ok(CancelOutcome::Finished(phase)) => Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "Conflict",
                    format!("task {name} has already ended ({phase}): nothing to cancel"),
                )),
                Err(StoreError::NotFound(_)) => Err(not_found(&key)),
                Err(e) => Err(e.into()),
            }
        }
        (Kind::Session, "restart") => {
            let k = key.clone();
            match blocking(move || crate::requests::request_restart(&store, &k, "api")).await? {
                Ok(()) => Ok(accepted(format!("restart of session {name} requested"))),
                Err(StoreError::NotFound(_)) => Err(not_found(&key)),
                Err(e) => Err(e.into()),
            }
        }
        (Kind::Account, "failover") => {
            let req: FailoverBody = if body.iter().all(u8::is_ascii_whitespace) {
                FailoverBody::default()
            } else {
                serde_json::from_slice(&body)
                    .map_err(|e| ApiError::invalid(format!("request body: {e}")))?
            };
            let k = key.clone();
            let to = req.to.clone();
            blocking(move || -> ApiResult<()> {
                let exists = |n: &str| -> ApiResult<bool> {
                    Ok(store
                        .get(&ObjectKey::new(Kind::Account, &k.namespace, n))?
                        .is_some())
                };
                if !exists(&k.name)? {
                    return Err(not_found(&k));
                }
                if let Some(t) = &to {
                    if *t == k.name {
                        return Err(ApiError::invalid(format!(
                            "to: the target must be another account than {t}"
                        )));
                    }
                    if !exists(t)? {
                        return Err(ApiError::invalid(format!(
                            "to: account {t} not found in namespace {}",
                            k.namespace
                        )));
                    }
                }
                crate::requests::request_failover(&store, &k, to.as_deref(), "api")?;
                Ok(())
            })
            .await??;
            let target = req
                .to
                .map(|t| format!(" to account {t}"))
                .unwrap_or_default();
            Ok(accepted(format!(
                "failover of account {name}{target} requested"
            )))
        }
        _ => Err(ApiError::not_found(format!(
            "no action {sub} on {} (actions: tasks/NAME/cancel, sessions/NAME/restart, accounts/NAME/failover)",
            kind.plural()
        ))),
    }
}

// ----------------------------------------------------------------- scale

/// The field manager of a scale through the API.
const SCALE_MANAGER: &str = "claude-failover-api";

/// `PUT .../sessionpools/NAME/scale`: a `Scale` (autoscaling/v1) whose
/// `spec.replicas` becomes the pool's; its `metadata.resourceVersion`, when
/// given, must be the pool's (409 otherwise). 200 with the new Scale.
async fn put_scale(
    State(s): State<Arc<ApiState>>,
    UrlPath((ns, plural, name, sub)): UrlPath<(String, String, String, String)>,
    body: axum::body::Bytes,
) -> ApiResult<axum::Json<Value>> {
    let key = scale_key(&ns, &plural, &name, &sub)?;
    let scale: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::invalid(format!("request body: {e}")))?;
    set_scale(&s, key, &scale).await
}

/// `PATCH .../sessionpools/NAME/scale`: a JSON merge patch of the pool's
/// Scale (`{"spec": {"replicas": N}}`, what `kubectl scale` sends).
async fn patch_scale(
    State(s): State<Arc<ApiState>>,
    UrlPath((ns, plural, name, sub)): UrlPath<(String, String, String, String)>,
    body: axum::body::Bytes,
) -> ApiResult<axum::Json<Value>> {
    let key = scale_key(&ns, &plural, &name, &sub)?;
    let patch: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::invalid(format!("request body: {e}")))?;
    let store = s.store.clone();
    let k = key.clone();
    let Some(pool) = blocking(move || store.get(&k)).await?? else {
        return Err(not_found(&key));
    };
    let mut scale = crate::requests::scale_of(&pool);
    crate::store::merge_patch(&mut scale, &patch);
    set_scale(&s, key, &scale).await
}

/// The pool a `/scale` URL names (only pools have one).
fn scale_key(ns: &str, plural: &str, name: &str, sub: &str) -> ApiResult<ObjectKey> {
    let kind = kind_of(plural)?;
    let key = key_of(kind, ns, Some(name))?;
    if sub != "scale" || kind != Kind::SessionPool {
        return Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            format!(
                "only sessionpools/NAME/scale can be written this way, not {plural}/NAME/{sub}"
            ),
        ));
    }
    Ok(key)
}

async fn set_scale(s: &ApiState, key: ObjectKey, scale: &Value) -> ApiResult<axum::Json<Value>> {
    if scale.get("kind").is_some_and(|k| k != "Scale") {
        return Err(ApiError::invalid(format!(
            "request body: kind: expected Scale, got {}",
            scale["kind"]
        )));
    }
    if let Some(n) = scale.pointer("/metadata/name")
        && n != key.name.as_str()
    {
        return Err(ApiError::invalid(format!(
            "request body: metadata.name: {n} does not match the pool {} of the URL",
            key.name
        )));
    }
    let replicas = scale
        .pointer("/spec/replicas")
        .and_then(Value::as_u64)
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| {
            ApiError::invalid(
                "request body: spec.replicas: expected a number of sessions (0 or more)",
            )
        })?;
    let req = crate::requests::Scale {
        replicas,
        expected_rv: scale
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .map(str::to_string),
        ..Default::default()
    };
    let store = s.store.clone();
    let k = key.clone();
    let pool = blocking(move || -> Result<Value, StoreError> {
        let pool = crate::requests::scale_pool(&store, &k, &req, SCALE_MANAGER)?;
        store.record_event(
            &k,
            false,
            "Scaled",
            &format!("scaled to {replicas} through the API"),
            "api",
        )?;
        Ok(pool)
    })
    .await?
    .map_err(|e| match e {
        StoreError::NotFound(_) => not_found(&key),
        e => e.into(),
    })?;
    Ok(axum::Json(crate::requests::scale_of(&pool)))
}

// ---------------------------------------------------------------- stream

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WatchQuery {
    /// Only objects of this namespace.
    namespace: Option<String>,
    /// Only this kind (`tasks`, `session`, ...).
    kind: Option<String>,
}

/// `GET /api/v1/watch`: server-sent events. `event: change` carries
/// `{"type": "ADDED|MODIFIED|DELETED", "object": {...}}`; `event: event`
/// carries a recorded event (`involvedObject`, `type`, `reason`,
/// `message`, `count`, `firstTimestamp`, `lastTimestamp`, `source`);
/// `event: lagged` says how many items a slow reader missed. The stream
/// opens with the comment `: watching`, once the subscription is live.
async fn watch(
    State(s): State<Arc<ApiState>>,
    q: QueryResult<WatchQuery>,
) -> ApiResult<Sse<impl futures::Stream<Item = Result<Event, Infallible>>>> {
    let q = query(q)?;
    let kind = q.kind.as_deref().map(kind_of).transpose()?;
    let ns = q.namespace;
    let rx = s.bus.subscribe();
    let stop = s.stop.clone();
    let wanted = move |item: &Item| {
        kind.is_none_or(|k| item.kind() == k) && ns.as_deref().is_none_or(|n| item.namespace() == n)
    };
    let hello = futures::stream::once(async { Ok(Event::default().comment("watching")) });
    let items = futures::stream::unfold((rx, stop), move |(mut rx, mut stop)| {
        let wanted = wanted.clone();
        async move {
            loop {
                let next = tokio::select! {
                    _ = stop.wait_for(|stopped| *stopped) => return None,
                    r = rx.recv() => r,
                };
                let event = match next {
                    Ok(item) if wanted(&item) => to_sse(&item),
                    Ok(_) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        Event::default().event("lagged").data(n.to_string())
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                };
                return Some((Ok(event), (rx, stop)));
            }
        }
    });
    Ok(Sse::new(futures::StreamExt::chain(hello, items))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

fn to_sse(item: &Item) -> Event {
    let (name, data) = match item {
        Item::Change(_, c) => ("change", serde_json::to_string(c)),
        Item::Event(e) => ("event", serde_json::to_string(e)),
    };
    Event::default()
        .event(name)
        .data(data.expect("stream items serialize"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_waits_for_every_check() {
        let r = Readiness::new(true);
        assert!(!r.check().0);
        r.node_running();
        r.set_leader(true);
        r.sessions_listed();
        for k in Kind::DECLARED {
            r.feed_listed(Feed::Objects(k));
        }
        r.feed_listed(Feed::Events);
        assert!(!r.check().0, "manifests not synced");
        r.manifests_synced();
        let (ready, body) = r.check();
        assert!(ready, "{body}");
        let r = Readiness::new(false);
        r.node_running();
        r.set_leader(true);
        r.sessions_listed();
        for k in Kind::DECLARED {
            r.feed_listed(Feed::Objects(k));
        }
        r.feed_listed(Feed::Events);
        assert!(r.check().0);
    }

    #[test]
    fn a_follower_is_ready_without_the_lease_or_the_sync() {
        let r = Readiness::new(true);
        r.node_running();
        r.sessions_listed();
        for k in Kind::DECLARED {
            r.feed_listed(Feed::Objects(k));
        }
        r.feed_listed(Feed::Events);
        let (ready, body) = r.check();
        assert!(!ready, "campaigning, no leader known: {body}");
        r.set_following(true);
        let (ready, body) = r.check();
        assert!(ready, "another daemon leads and syncs: {body}");
        assert!(
            body.to_string().contains("held by another daemon"),
            "{body}"
        );
        r.set_following(false);
        r.set_leader(true);
        assert!(!r.check().0, "leading: its own first sync is due");
    }
}

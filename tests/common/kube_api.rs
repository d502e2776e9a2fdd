//! A minimal Kubernetes API server on 127.0.0.1 serving a store's objects,
//! so the real kubectl can read the same objects as the CLI and serve as
//! the reference for output formats (`-o jsonpath`, `custom-columns`,
//! `--sort-by`). It answers discovery (`/api`, `/apis`, the group's
//! resource list) and the list and get of each kind, read from the store
//! at each request; anything else is 404.

use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use claude_failover::api::{API_VERSION, GROUP, Kind, ObjectKey, VERSION};
use claude_failover::store::Store;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread::JoinHandle;

pub struct KubeApi {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    /// kubectl's home (its discovery cache) for this server only.
    home: tempfile::TempDir,
}

fn kind_of(plural: &str) -> Option<Kind> {
    Kind::ALL.into_iter().find(|k| k.plural() == plural)
}

fn not_found() -> axum::response::Response {
    (StatusCode::NOT_FOUND, axum::Json(json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404}))).into_response()
}

async fn list(
    State(store): State<Store>,
    UrlPath((ns, plural)): UrlPath<(String, String)>,
) -> axum::response::Response {
    let Some(kind) = kind_of(&plural) else {
        return not_found();
    };
    let items = store.list(kind, Some(&ns)).unwrap();
    axum::Json(
        json!({"apiVersion": API_VERSION, "kind": format!("{}List", kind.name()),
        "metadata": {"resourceVersion": "1"}, "items": items}),
    )
    .into_response()
}

async fn one(
    State(store): State<Store>,
    UrlPath((ns, plural, name)): UrlPath<(String, String, String)>,
) -> axum::response::Response {
    let Some(kind) = kind_of(&plural) else {
        return not_found();
    };
    match store.get(&ObjectKey::new(kind, &ns, &name)).unwrap() {
        Some(v) => axum::Json(v).into_response(),
        None => not_found(),
    }
}

impl KubeApi {
    pub fn start(store_dir: &Path) -> KubeApi {
        let store = Store::open(store_dir).unwrap();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let resources: Vec<Value> = Kind::ALL
                    .iter()
                    .map(|k| {
                        json!({"name": k.plural(), "singularName": k.singular(), "namespaced": true,
                            "kind": k.name(), "verbs": ["get", "list"], "shortNames": [k.short_name()]})
                    })
                    .collect();
                let gv = json!({"groupVersion": API_VERSION, "version": VERSION});
                let app = axum::Router::new()
                    .route("/version", get(|| async { axum::Json(json!({"major": "1", "minor": "32", "gitVersion": "v1.32.0"})) }))
                    .route("/api", get(|| async { axum::Json(json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]})) }))
                    .route("/apis", get(move || {
                        let gv = gv.clone();
                        async move { axum::Json(json!({"kind": "APIGroupList", "apiVersion": "v1",
                            "groups": [{"name": GROUP, "versions": [gv], "preferredVersion": gv}]})) }
                    }))
                    .route(&format!("/apis/{API_VERSION}"), get(move || {
                        let resources = resources.clone();
                        async move { axum::Json(json!({"kind": "APIResourceList", "apiVersion": "v1",
                            "groupVersion": API_VERSION, "resources": resources})) }
                    }))
                    .route(&format!("/apis/{API_VERSION}/namespaces/{{ns}}/{{plural}}"), get(list))
                    .route(&format!("/apis/{API_VERSION}/namespaces/{{ns}}/{{plural}}/{{name}}"), get(one))
                    .fallback(|| async { not_found() })
                    .with_state(store);
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                addr_tx.send(listener.local_addr().unwrap()).unwrap();
                axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = stop_rx.await;
                    })
                    .await
                    .unwrap();
            });
        });
        let addr = addr_rx.recv().unwrap();
        KubeApi {
            addr,
            stop: Some(stop_tx),
            thread: Some(thread),
            home: tempfile::tempdir().unwrap(),
        }
    }

    /// kubectl against this server (no kubeconfig, its own cache).
    pub fn kubectl(&self, kubectl: &PathBuf, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(kubectl)
            .arg("--server")
            .arg(format!("http://{}", self.addr))
            .args(args)
            .env("KUBECONFIG", "/dev/null")
            .env("HOME", self.home.path())
            .output()
            .expect("run kubectl");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

impl Drop for KubeApi {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

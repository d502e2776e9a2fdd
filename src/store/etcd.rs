//! The etcd v3 backend (see docs/store-backends.md): the store's keys
//! (`tasks/default/a.json`...) under `PREFIX/` in an etcd cluster, a key's
//! revision its `mod_revision`, a transaction one etcd `Txn` with a compare
//! on the revision of every key it read.
//!
//! The store's interface is synchronous (the CLI, the controllers' blocking
//! sections); the etcd client is async. Each connection runs its own small
//! runtime, and a call waits for its answer on a channel, so it works the
//! same from a plain thread and from inside another runtime's worker (as a
//! file read does).

use super::health::{Health, Outage, PROBE_TIMEOUT};
use super::local::StoreError;
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, GetOptions, Identity, TlsOptions,
    Txn as EtcdTxn, TxnOp, TxnOpResponse,
};
use serde::Deserialize;
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

/// The prefix of a store that names none.
pub const DEFAULT_PREFIX: &str = "/claude-failover";

/// How long one request may take before the store says it is unavailable
/// (etcd without quorum does not answer).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// How long connecting to the endpoints may take.
const DEFAULT_DIAL_TIMEOUT: Duration = Duration::from_secs(5);

/// TLS and authentication for the etcd backend (the config's `etcd:`).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EtcdOptions {
    /// The CA that signed the members' certificates: https to them.
    pub ca_file: Option<String>,
    /// A client certificate (mutual TLS), with `keyFile`.
    pub cert_file: Option<String>,
    pub key_file: Option<String>,
    /// An etcd user (RBAC), with its password read from `passwordFile`.
    pub username: Option<String>,
    pub password_file: Option<String>,
    /// How long connecting may take, seconds.
    pub dial_timeout_seconds: Option<u64>,
}

/// Where an etcd store is: `etcd://HOST:PORT[,HOST:PORT...][/PREFIX]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdUrl {
    pub endpoints: Vec<String>,
    /// Starts with `/`, never ends with one.
    pub prefix: String,
}

impl EtcdUrl {
    /// Parses a store URL; None when it is not an etcd one (a path).
    pub fn parse(s: &str) -> Option<Result<EtcdUrl, String>> {
        let rest = s.strip_prefix("etcd://")?;
        Some(Self::parse_rest(s, rest))
    }

    fn parse_rest(whole: &str, rest: &str) -> Result<EtcdUrl, String> {
        let (hosts, prefix) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        let prefix = if prefix.is_empty() {
            DEFAULT_PREFIX.to_string()
        } else {
            prefix.to_string()
        };
        let mut endpoints = Vec::new();
        for h in hosts.split(',') {
            let ok = h.rsplit_once(':').is_some_and(|(host, port)| {
                !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
            });
            if !ok {
                return Err(format!(
                    "{whole}: `{h}` is not HOST:PORT (the form is etcd://HOST:PORT[,HOST:PORT...][/PREFIX])"
                ));
            }
            endpoints.push(h.to_string());
        }
        if prefix
            .split('/')
            .skip(1)
            .any(|p| p.is_empty() || p == "." || p == "..")
        {
            return Err(format!(
                "{whole}: the prefix `{prefix}` has an empty or dot segment"
            ));
        }
        Ok(EtcdUrl { endpoints, prefix })
    }
}

impl std::fmt::Display for EtcdUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "etcd://{}{}", self.endpoints.join(","), self.prefix)
    }
}

/// A runtime that may be dropped anywhere (inside another runtime too).
struct Rt(Option<tokio::runtime::Runtime>);

impl Drop for Rt {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// A connection to an etcd store.
pub(crate) struct Etcd {
    client: Client,
    url: EtcdUrl,
    rt: Rt,
    health: Health,
}

impl std::fmt::Debug for Etcd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Etcd({})", self.url)
    }
}

/// One stored value and its revision.
pub(crate) struct Kv {
    /// The store-relative key.
    pub rel: String,
    pub value: Vec<u8>,
    pub mod_revision: i64,
}

/// What a transaction commits: the revisions it read (0: absent), its puts
/// and its deletes, all by store-relative key.
#[derive(Default, Debug)]
pub(crate) struct Writes {
    pub read: std::collections::BTreeMap<String, i64>,
    pub puts: Vec<(String, Vec<u8>)>,
    pub deletes: Vec<String>,
}

impl Etcd {
    /// Connects to `url`'s endpoints (TLS and auth as `opts` say).
    pub fn connect(url: &EtcdUrl, opts: &EtcdOptions) -> Result<Etcd, StoreError> {
        let unavailable = |message: String| StoreError::Unavailable {
            location: url.to_string(),
            message,
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("store-etcd")
            .enable_all()
            .build()
            .map_err(|e| unavailable(format!("cannot start its client: {e}")))?;
        let connect = connect_options(opts).map_err(unavailable)?;
        let endpoints = url.endpoints.clone();
        let tls = opts.ca_file.is_some();
        // Not `block_on`: this may be called inside another runtime.
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        rt.spawn(async move {
            let eps: Vec<String> = endpoints
                .iter()
                .map(|e| format!("{}://{e}", if tls { "https" } else { "http" }))
                .collect();
            let _ = tx.send(Client::connect(eps, Some(connect)).await);
        });
        let client = rx
            .recv()
            .map_err(|_| unavailable("its client stopped".into()))?
            .map_err(|e| unavailable(e.to_string()))?;
        Ok(Etcd {
            client,
            url: url.clone(),
            rt: Rt(Some(rt)),
            health: Health::new(url.to_string()),
        })
    }

    pub fn url(&self) -> &EtcdUrl {
        &self.url
    }

    /// The location errors name: `etcd://…/PREFIX`.
    pub fn root(&self) -> PathBuf {
        PathBuf::from(self.url.to_string())
    }

    pub fn key(&self, rel: &str) -> String {
        format!("{}/{rel}", self.url.prefix)
    }

    fn rel<'k>(&self, key: &'k [u8]) -> Option<&'k str> {
        std::str::from_utf8(key)
            .ok()?
            .strip_prefix(&self.url.prefix)?
            .strip_prefix('/')
    }

    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// The runtime the client lives on (watches and leases run there).
    pub fn runtime(&self) -> &tokio::runtime::Handle {
        self.rt
            .0
            .as_ref()
            .expect("the runtime lives as long as the connection")
            .handle()
    }

    /// Runs the request `make` makes on the connection's runtime and waits
    /// for it. A request that could not reach a member (one is down: the
    /// client spreads requests over them) is sent again, to another; so is
    /// one a member refused for want of a leader (an election: it was not
    /// applied), and any failed read when `idempotent`; for up to
    /// [`ELECTION_WAIT`], and at least once to each member. While the store is known not to answer, a request
    /// fails at once (see [`super::health`]).
    fn call<T: Send + 'static, F>(
        &self,
        idempotent: bool,
        make: impl Fn() -> F + Send + 'static,
    ) -> Result<T, StoreError>
    where
        F: Future<Output = Result<T, etcd_client::Error>> + Send + 'static,
    {
        self.health.admit().map_err(|m| self.unavailable(m))?;
        self.call_within(REQUEST_TIMEOUT, ELECTION_WAIT, idempotent, make)
    }

    /// [`Etcd::call`] without the fail-fast, waiting up to `timeout`, and
    /// up to `election` for a leader.
    fn call_within<T: Send + 'static, F>(
        &self,
        timeout: Duration,
        election: Duration,
        idempotent: bool,
        make: impl Fn() -> F + Send + 'static,
    ) -> Result<T, StoreError>
    where
        F: Future<Output = Result<T, etcd_client::Error>> + Send + 'static,
    {
        let tries = self.url.endpoints.len() * 2 + 1;
        let sent = std::time::Instant::now();
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.runtime().spawn(async move {
            let r = tokio::time::timeout(timeout, async move {
                let (mut n, started) = (1, tokio::time::Instant::now());
                loop {
                    match make().await {
                        // A member without a leader, or one not (yet) up:
                        // resent while an election may take.
                        Err(e)
                            if (no_leader(&e) || retriable(&e, idempotent))
                                && started.elapsed() < election =>
                        {
                            n += 1;
                            tokio::time::sleep(RESEND_AFTER).await;
                        }
                        Err(e) if n < tries && retriable(&e, idempotent) => {
                            n += 1;
                            tokio::time::sleep(RESEND_AFTER).await;
                        }
                        r => return r,
                    }
                }
            })
            .await;
            let _ = tx.send(r);
        });
        let r = match rx.recv() {
            Ok(Ok(Ok(v))) => Ok(v),
            // Refused, or cut off: says nothing of a quorum either way.
            Ok(Ok(Err(e))) if !unavailability(&e) => return Err(self.unavailable(e.to_string())),
            Ok(Ok(Err(e))) => Err(e.to_string()),
            Ok(Err(_)) => Err(format!(
                "no answer within {}s (is a quorum of its members up?)",
                timeout.as_secs_f32()
            )),
            Err(_) => Err("its client stopped".into()),
        };
        match r {
            Ok(v) => {
                self.health.answered(sent);
                Ok(v)
            }
            Err(m) => {
                self.health.unanswered(sent, &m);
                Err(self.unavailable(m))
            }
        }
    }

    /// Asks the store whether it answers (a count-only read, never failed
    /// fast, within [`PROBE_TIMEOUT`]): what the daemon's probe runs.
    pub fn probe(&self) -> Result<(), StoreError> {
        let c = self.client.clone();
        let key = self.key(".revision");
        self.call_within(PROBE_TIMEOUT, PROBE_TIMEOUT / 2, true, move || {
            let (mut c, key) = (c.clone(), key.clone());
            async move { c.get(key, Some(GetOptions::new().with_count_only())).await }
        })
        .map(|_| ())
    }

    /// The current outage, if the store does not answer.
    pub fn outage(&self) -> Option<Outage> {
        self.health.outage()
    }

    pub fn unavailable(&self, message: String) -> StoreError {
        StoreError::Unavailable {
            location: self.url.to_string(),
            message,
        }
    }

    /// One key's value and revision.
    pub fn get(&self, rel: &str) -> Result<Option<Kv>, StoreError> {
        let c = self.client.clone();
        let key = self.key(rel);
        let r = self.call(true, move || {
            let (mut c, key) = (c.clone(), key.clone());
            async move { c.get(key, None).await }
        })?;
        Ok(r.kvs().first().map(|kv| Kv {
            rel: rel.to_string(),
            value: kv.value().to_vec(),
            mod_revision: kv.mod_revision(),
        }))
    }

    /// Many keys' values and revisions (None: absent), in the order asked:
    /// in transactions of [`GET_MANY_OPS`] reads each, one round trip per
    /// chunk instead of one per key (an apply of many objects reads each
    /// one's documents first).
    pub fn get_many(&self, rels: &[String]) -> Result<Vec<Option<Kv>>, StoreError> {
        let mut out = Vec::with_capacity(rels.len());
        for chunk in rels.chunks(GET_MANY_OPS) {
            let ops: Vec<TxnOp> = chunk
                .iter()
                .map(|rel| TxnOp::get(self.key(rel), None))
                .collect();
            let txn = EtcdTxn::new().and_then(ops);
            let c = self.client.clone();
            let r = self.call(true, move || {
                let (mut c, txn) = (c.clone(), txn.clone());
                async move { c.txn(txn).await }
            })?;
            let answers = r.op_responses();
            for (rel, answer) in chunk.iter().zip(answers) {
                let kv = match answer {
                    TxnOpResponse::Get(g) => g.kvs().first().map(|kv| Kv {
                        rel: rel.clone(),
                        value: kv.value().to_vec(),
                        mod_revision: kv.mod_revision(),
                    }),
                    _ => None,
                };
                out.push(kv);
            }
        }
        Ok(out)
    }

    /// Every key under `rel_dir/`, in key order, and the revision read at:
    /// in pages of [`RANGE_PAGE`] keys (an answer is at most 4 MiB), all
    /// read at the first page's revision (one consistent listing).
    pub fn range(&self, rel_dir: &str) -> Result<(Vec<Kv>, i64), StoreError> {
        let prefix = self.key(&format!("{rel_dir}/"));
        // The end of the prefix's range: its last byte (`/`) plus one.
        let mut end = prefix.clone().into_bytes();
        *end.last_mut().expect("a prefix ends with /") += 1;
        let mut kvs = Vec::new();
        let mut from = prefix.clone().into_bytes();
        let mut rev = 0;
        loop {
            let c = self.client.clone();
            let (start, end2) = (from.clone(), end.clone());
            let r = self.call(true, move || {
                let (mut c, start, end) = (c.clone(), start.clone(), end2.clone());
                let mut opts = GetOptions::new()
                    .with_range(end)
                    .with_limit(RANGE_PAGE as i64);
                if rev > 0 {
                    opts = opts.with_revision(rev);
                }
                async move { c.get(start, Some(opts)).await }
            })?;
            if rev == 0 {
                rev = r.header().map_or(0, |h| h.revision());
            }
            for kv in r.kvs() {
                if let Some(rel) = self.rel(kv.key()) {
                    kvs.push(Kv {
                        rel: rel.to_string(),
                        value: kv.value().to_vec(),
                        mod_revision: kv.mod_revision(),
                    });
                }
            }
            match r.kvs().last() {
                Some(last) if r.more() => {
                    from = last.key().to_vec();
                    from.push(0);
                }
                _ => return Ok((kvs, rev)),
            }
        }
    }

    /// The store's current revision.
    pub fn revision(&self) -> Result<i64, StoreError> {
        let c = self.client.clone();
        let key = self.key(".revision");
        let r = self.call(true, move || {
            let (mut c, key) = (c.clone(), key.clone());
            async move { c.get(key, Some(GetOptions::new().with_count_only())).await }
        })?;
        Ok(r.header().map_or(0, |h| h.revision()))
    }

    /// Commits `w` if every key it read is still at the revision read:
    /// Some(the new revision), or None when another writer came first.
    pub fn commit(&self, w: Writes) -> Result<Option<i64>, StoreError> {
        let compares: Vec<Compare> = w
            .read
            .iter()
            .map(|(rel, rev)| match rev {
                0 => Compare::version(self.key(rel), CompareOp::Equal, 0),
                r => Compare::mod_revision(self.key(rel), CompareOp::Equal, *r),
            })
            .collect();
        let mut ops: Vec<TxnOp> = Vec::with_capacity(w.puts.len() + w.deletes.len());
        for rel in &w.deletes {
            ops.push(TxnOp::delete(self.key(rel), None));
        }
        for (rel, v) in w.puts {
            ops.push(TxnOp::put(self.key(&rel), v, None));
        }
        let (n_compares, n_ops) = (compares.len(), ops.len());
        let txn = EtcdTxn::new().when(compares).and_then(ops);
        let c = self.client.clone();
        let r = self
            .call(false, move || {
                let (mut c, txn) = (c.clone(), txn.clone());
                async move { c.txn(txn).await }
            })
            .map_err(|e| too_large(e, n_compares.max(n_ops)))?;
        Ok(r.succeeded()
            .then(|| r.header().map_or(0, |h| h.revision())))
    }

    /// The store-relative key of an etcd key under the prefix.
    pub fn rel_of(&self, key: &[u8]) -> Option<String> {
        self.rel(key).map(str::to_string)
    }
}

/// How long a request that could not reach a member waits before it is
/// sent again.
pub(super) const RESEND_AFTER: Duration = Duration::from_millis(50);

/// Whether a failure is the store's unavailability (a member without a
/// leader, none reachable, a connection cut): told once by the store's
/// health rather than by each caller.
pub(super) fn unavailability(e: &etcd_client::Error) -> bool {
    unreachable(e)
        || no_leader(e)
        || matches!(e, etcd_client::Error::GRpcStatus(s) if broken_connection(s.message()))
}

/// What a transaction beyond the cluster's limits is told (an `apply` of
/// many manifests is one transaction): which limit, and the way out.
fn too_large(e: StoreError, ops: usize) -> StoreError {
    match e {
        StoreError::Unavailable { location, message }
            if message.contains("too many operations in txn request") =>
        {
            StoreError::Unavailable {
                location,
                message: format!(
                    "etcd refused a transaction of {ops} operations (more than its members' --max-txn-ops, 128 by default; an apply takes one per object and per status): start its members with a larger --max-txn-ops (docs/store-backends.md), or apply fewer manifests at once"
                ),
            }
        }
        StoreError::Unavailable { location, message }
            if message.contains("request is too large") =>
        {
            StoreError::Unavailable {
                location,
                message: format!(
                    "etcd refused a transaction of {ops} operations as too large (more than its members' --max-request-bytes, 1.5 MiB by default): start its members with a larger --max-request-bytes (docs/store-backends.md), or apply fewer manifests at once"
                ),
            }
        }
        e => e,
    }
}

/// How many keys one read of a listing asks for: 1,000 objects' documents
/// stay well under the 4 MiB an answer may be.
const RANGE_PAGE: usize = 1000;
/// Reads per transaction of [`Etcd::get_many`]: within etcd's default
/// `--max-txn-ops` (128).
const GET_MANY_OPS: usize = 100;

/// How long a request refused for want of a leader is sent again: an
/// election after a member died takes a few election timeouts (1 s by
/// default); longer, the cluster has lost its quorum.
const ELECTION_WAIT: Duration = Duration::from_secs(3);

/// The connection to a member broke under the request (it died): tonic
/// says so with an unknown status.
fn broken_connection(message: &str) -> bool {
    message.contains("transport error") || message.contains("h2 protocol error")
}

/// gRPC's status code DEADLINE_EXCEEDED.
const GRPC_DEADLINE_EXCEEDED: i32 = 4;

/// A member refused the request before acting on it: it has no leader
/// (the connection asks for one: `with_require_leader`).
fn no_leader(e: &etcd_client::Error) -> bool {
    matches!(e, etcd_client::Error::GRpcStatus(s) if s.message().contains("no leader"))
}

/// Whether a failure means the store does not answer (no member reachable,
/// no quorum), rather than an answer that refused the request.
fn unreachable(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        etcd_client::Error::GRpcStatus(s) => {
            let code = s.code() as i32;
            code == GRPC_UNAVAILABLE
                || code == GRPC_DEADLINE_EXCEEDED
                || s.message().contains("connect error")
                || s.message().contains("timed out")
        }
        _ => false,
    }
}

/// Whether a failed request may be sent again: one that never reached a
/// member (a refused connection), or any read that failed for want of a
/// member or a leader.
fn retriable(e: &etcd_client::Error, idempotent: bool) -> bool {
    match e {
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => idempotent,
        etcd_client::Error::GRpcStatus(s) => {
            s.message().contains("connect error")
                || (idempotent
                    && (s.code() as i32 == GRPC_UNAVAILABLE || broken_connection(s.message())))
        }
        _ => false,
    }
}

/// gRPC's status code UNAVAILABLE.
const GRPC_UNAVAILABLE: i32 = 14;

fn read_file(what: &str, path: &str) -> Result<Vec<u8>, String> {
    let p = crate::fsutil::expand_home(path);
    std::fs::read(&p).map_err(|e| format!("etcd.{what} {}: {e}", p.display()))
}

fn connect_options(o: &EtcdOptions) -> Result<ConnectOptions, String> {
    let dial = o
        .dial_timeout_seconds
        .map_or(DEFAULT_DIAL_TIMEOUT, Duration::from_secs);
    let mut c = ConnectOptions::new()
        .with_connect_timeout(dial)
        .with_timeout(REQUEST_TIMEOUT)
        .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
        // A member without a leader (the cluster lost its quorum) refuses
        // at once, and ends its watches, instead of holding requests.
        .with_require_leader(true);
    if let Some(ca) = &o.ca_file {
        let mut tls =
            TlsOptions::new().ca_certificate(Certificate::from_pem(read_file("caFile", ca)?));
        match (&o.cert_file, &o.key_file) {
            (Some(cert), Some(key)) => {
                tls = tls.identity(Identity::from_pem(
                    read_file("certFile", cert)?,
                    read_file("keyFile", key)?,
                ));
            }
            (None, None) => {}
            _ => return Err("etcd.certFile and etcd.keyFile go together".into()),
        }
        c = c.with_tls(tls);
    } else if o.cert_file.is_some() || o.key_file.is_some() {
        return Err("etcd.certFile and etcd.keyFile need etcd.caFile (TLS)".into());
    }
    match (&o.username, &o.password_file) {
        (Some(user), Some(pw)) => {
            let pw = String::from_utf8(read_file("passwordFile", pw)?)
                .map_err(|_| "etcd.passwordFile is not UTF-8".to_string())?;
            c = c.with_user(user.clone(), pw.trim_end_matches(['\r', '\n']).to_string());
        }
        (None, None) => {}
        _ => return Err("etcd.username and etcd.passwordFile go together".into()),
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_endpoints_and_a_prefix() {
        let u = EtcdUrl::parse("etcd://127.0.0.1:2379,h2:2380/team/pool")
            .unwrap()
            .unwrap();
        assert_eq!(u.endpoints, ["127.0.0.1:2379", "h2:2380"]);
        assert_eq!(u.prefix, "/team/pool");
        assert_eq!(u.to_string(), "etcd://127.0.0.1:2379,h2:2380/team/pool");
        let d = EtcdUrl::parse("etcd://h:1/").unwrap().unwrap();
        assert_eq!(d.prefix, DEFAULT_PREFIX);
        assert!(EtcdUrl::parse("/var/lib/store").is_none());
        for bad in [
            "etcd://",
            "etcd://h",
            "etcd://h:x",
            "etcd://h:1,/p",
            "etcd://h:1/a//b",
            "etcd://h:1/a/../b",
        ] {
            let e = EtcdUrl::parse(bad).unwrap().unwrap_err();
            assert!(e.starts_with(bad), "{bad}: {e}");
        }
    }

    #[test]
    fn options_are_checked_and_files_named() {
        let e = connect_options(&EtcdOptions {
            cert_file: Some("/c".into()),
            ..Default::default()
        })
        .unwrap_err();
        assert!(e.contains("caFile"), "{e}");
        let e = connect_options(&EtcdOptions {
            username: Some("u".into()),
            password_file: Some("/nonexistent/pw".into()),
            ..Default::default()
        })
        .unwrap_err();
        assert!(e.contains("etcd.passwordFile /nonexistent/pw"), "{e}");
        let d = tempfile::tempdir().unwrap();
        let pw = d.path().join("pw");
        std::fs::write(&pw, "s3cret\n").unwrap();
        connect_options(&EtcdOptions {
            username: Some("u".into()),
            password_file: Some(pw.display().to_string()),
            ..Default::default()
        })
        .unwrap();
    }
}

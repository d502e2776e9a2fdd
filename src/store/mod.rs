//! The store: the one authoritative set of objects, like the Kubernetes API
//! server, kept in a local directory.
//!
//! # Layout and guarantees
//!
//! ```text
//! STORE/                                         mode 0700: its owner's only
//! STORE/.lock                                    flock for writers + resourceVersion counter
//! STORE/.txn/                                    what a transaction stages, and its commit record
//! STORE/<plural>/<namespace>/<name>.json         apiVersion, kind, metadata, spec
//! STORE/<plural>/<namespace>/<name>.status.json  status (+ its own resourceVersion)
//! STORE/events/<plural>/<namespace>/<name>.json  the object's recent events (bounded)
//! STORE/inventory/<id>.json                      what a manifest sync applied
//! ```
//!
//! - Writes happen in transactions (`txn.rs`): staged under `.txn/`, then
//!   renamed into place, so readers never see a torn file and need no
//!   lock. A transaction of several changes (a whole `apply`, one file of
//!   the sync with its inventory, a metadata and status write) is all or
//!   nothing against conflicts, write failures (a full disk) and a writer
//!   killed at any moment: its commit record makes it whole on the next
//!   open or write, and what an uncommitted one staged is removed then.
//!   Writes of what can be observed again (events, an agent's progress)
//!   may skip the fsyncs ([`Durability::Soon`]): still atomic, made
//!   durable by one `syncfs` within [`LAZY_FLUSH`] (and at the daemon's
//!   exit).
//! - Writers (any process: the CLI, the daemon) serialise on an exclusive
//!   kernel file lock on `.lock`, which also holds the resourceVersion
//!   counter. Each write is a read-check-write under that lock, so two
//!   processes writing the same object never lose an update.
//! - Keys are checked at the boundary (`names.rs`): a namespace or name that
//!   is not a DNS-1123 label is refused by every call, so nothing outside
//!   the store directory is ever read, written or removed through it.
//! - `metadata.resourceVersion` grows with every write to the object (spec,
//!   metadata or status). A write carrying a resourceVersion that is not the
//!   current one fails with [`StoreError::Conflict`].
//! - `metadata.generation` is bumped only when the spec changes.
//! - Spec and status live in separate files and are written by separate
//!   calls ([`Store::apply`] / [`Store::write_status`]), so a status write
//!   never clobbers a spec write and back.
//! - Deleting an object with finalizers only sets `deletionTimestamp`; the
//!   object goes away when its last finalizer is removed.
//! - A corrupt object (a file emptied or torn by hand, JSON of the wrong
//!   shape) is quarantined (`quarantine.rs`): listings skip and report it,
//!   [`Store::corrupt`] names it, `get` of it is an error naming the file,
//!   and `delete` removes it.
//! - [`watch`] turns the directory into a Kubernetes-style watch stream
//!   (file notifications, relist on rescan, periodic resync) that feeds
//!   `kube_runtime` reflectors and the applier.

mod apply;
mod backend;
pub mod cache;
mod etcd;
mod events;
mod flusher;
mod health;
mod leader;
mod leader_etcd;
mod local;
mod names;
pub mod ownership;
mod patch;
#[cfg(test)]
mod proptests;
mod quarantine;
mod txn;
mod typed;
mod update;
pub mod watch;
mod watch_etcd;

pub use apply::{ApplyRequest, ApplyResult, Batch, BatchError, DEFAULT_MANAGER};
pub use etcd::{DEFAULT_PREFIX, EtcdOptions, EtcdUrl};
pub use events::{EVENTS_KEPT, StoredEvent};
pub use flusher::flush_now;
pub use health::{Outage, PROBE_EVERY, UNAVAILABLE_BACKOFF};
pub use leader::{LeaderLock, identity};
pub use leader_etcd::LEADER_TTL;
pub use local::{CONTENDED_TRIES, DeleteOutcome, Outcome, Store, StoreError};
pub use patch::{merge_patch, set_fields};
pub use quarantine::{CorruptObject, Listing};
pub use txn::{Durability, LAZY_FLUSH};
pub use typed::Api;
pub use update::Updated;

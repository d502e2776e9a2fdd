//! The store: the one authoritative set of objects, like the Kubernetes API
//! server, kept in a local directory.
//!
//! # Layout and guarantees
//!
//! ```text
//! STORE/.lock                                  flock for writers + resourceVersion counter
//! STORE/<plural>/<namespace>/<name>.json         apiVersion, kind, metadata, spec
//! STORE/<plural>/<namespace>/<name>.status.json  status (+ its own resourceVersion)
//! STORE/events/<plural>/<namespace>/<name>.json  the object's recent events (bounded)
//! STORE/inventory/<id>.json                      what a manifest sync applied
//! ```
//!
//! - Every file is written atomically (temp file, fsync, rename), so readers
//!   never see a torn object and need no lock. Writes of what can be
//!   observed again (events, an agent's progress) may skip the fsyncs
//!   ([`Durability::Soon`]): still atomic, made durable by one `syncfs`
//!   within [`LAZY_FLUSH`] (and at the daemon's exit).
//! - Writers (any process: the CLI, the daemon) serialise on an exclusive
//!   kernel file lock on `.lock`, which also holds the resourceVersion
//!   counter. Each write is a read-check-write under that lock, so two
//!   processes writing the same object never lose an update.
//! - `metadata.resourceVersion` grows with every write to the object (spec,
//!   metadata or status). A write carrying a resourceVersion that is not the
//!   current one fails with [`StoreError::Conflict`].
//! - `metadata.generation` is bumped only when the spec changes.
//! - Spec and status live in separate files and are written by separate
//!   calls ([`Store::apply`] / [`Store::write_status`]), so a status write
//!   never clobbers a spec write and back.
//! - Deleting an object with finalizers only sets `deletionTimestamp`; the
//!   object goes away when its last finalizer is removed.
//! - [`watch`] turns the directory into a Kubernetes-style watch stream
//!   (file notifications, relist on rescan, periodic resync) that feeds
//!   `kube_runtime` reflectors and the applier.

pub mod cache;
mod events;
mod flusher;
mod leader;
mod local;
pub mod ownership;
mod patch;
mod update;
pub mod watch;

pub use events::{EVENTS_KEPT, StoredEvent};
pub use flusher::flush_now;
pub use leader::{LeaderLock, identity};
pub use local::{
    Api, ApplyRequest, ApplyResult, DEFAULT_MANAGER, DeleteOutcome, Durability, LAZY_FLUSH,
    Outcome, Store, StoreError,
};
pub use patch::{merge_patch, owned_fields_patch};
pub use update::Updated;

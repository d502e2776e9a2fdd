//! Corrupt objects: a stored file that cannot be read (empty, torn by
//! hand, not JSON, not the kind's shape) is quarantined instead of failing
//! every reader.
//!
//! - Listings skip it and report it ([`Store::list_report`]); the plain
//!   [`Store::list`] (what the controllers use) returns the good objects,
//!   so one bad file never stalls the others.
//! - Each store handle (shared by its clones) remembers what it found
//!   ([`Store::corrupt`]): the daemon's readiness says degraded while any
//!   is known. The first sighting is logged (path and reason) and recorded
//!   as a `Warning` event `Corrupt` on the object.
//! - [`Store::get`] of it is an error naming the file; [`Store::delete`]
//!   removes it whatever its content.

use super::local::{Store, StoreError};
use crate::api::ObjectKey;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// One stored object that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CorruptObject {
    pub key: ObjectKey,
    /// The file that does not read.
    pub path: PathBuf,
    pub reason: String,
}

impl std::fmt::Display for CorruptObject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {} ({})", self.path.display(), self.reason, self.key)
    }
}

/// A listing: the objects that read, and those that do not.
#[derive(Debug, Default)]
pub struct Listing {
    pub objects: Vec<serde_json::Value>,
    pub corrupt: Vec<CorruptObject>,
}

/// At which level an object failed: its file (not JSON, not an object of
/// its kind and name) or its typed decoding (JSON of the wrong shape).
/// Untyped listings settle the first, typed ones the second.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Level {
    File,
    Typed,
}

type Known = BTreeMap<(PathBuf, Level), CorruptObject>;

/// What one store handle knows to be corrupt, by spec file.
#[derive(Debug, Default, Clone)]
pub(super) struct Quarantine(Arc<Mutex<Known>>);

impl Quarantine {
    fn lock(&self) -> std::sync::MutexGuard<'_, Known> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Replaces what is known at `level` under `dir` with `found` (a
    /// listing of `dir` is the whole truth about it). Returns the newly
    /// found ones.
    pub(super) fn relisted(
        &self,
        dir: &Path,
        level: Level,
        found: &[CorruptObject],
    ) -> Vec<CorruptObject> {
        let mut known = self.lock();
        let fresh: Vec<CorruptObject> = found
            .iter()
            .filter(|c| known.get(&(c.path.clone(), level)) != Some(c))
            .cloned()
            .collect();
        known.retain(|(p, l), _| *l != level || !p.starts_with(dir));
        for c in found {
            known.insert((c.path.clone(), level), c.clone());
        }
        fresh
    }

    /// One object read again at `level`: corrupt (Some) or fine or gone
    /// (None). True when it is newly found corrupt.
    pub(super) fn object(
        &self,
        key: &ObjectKey,
        level: Level,
        found: Option<CorruptObject>,
    ) -> bool {
        let mut known = self.lock();
        let before = known
            .iter()
            .find(|((_, l), c)| *l == level && c.key == *key)
            .map(|(_, c)| c.clone());
        known.retain(|(_, l), c| *l != level || c.key != *key);
        match found {
            Some(c) => {
                let fresh = before.as_ref() != Some(&c);
                known.insert((c.path.clone(), level), c);
                fresh
            }
            None => false,
        }
    }

    /// Forgets `key` at every level (deleted).
    pub(super) fn forget(&self, key: &ObjectKey) {
        self.lock().retain(|_, c| c.key != *key);
    }

    pub(super) fn all(&self) -> Vec<CorruptObject> {
        let mut v: Vec<CorruptObject> = self.lock().values().cloned().collect();
        v.dedup_by(|a, b| a.path == b.path);
        v
    }
}

impl Store {
    /// Logs and records newly found corrupt objects.
    pub(super) fn report_corrupt(&self, fresh: &[CorruptObject]) {
        for c in fresh {
            tracing::warn!(path = %c.path.display(), object = %c.key, reason = %c.reason, "corrupt object quarantined: skipped until it is fixed or deleted");
            let _ = self.record_event(
                &c.key,
                true,
                "Corrupt",
                &format!(
                    "{} cannot be read ({}); skipped until it is fixed or deleted",
                    c.path.display(),
                    c.reason
                ),
                "store",
            );
        }
    }

    /// The corrupt objects this handle (or a clone) has come across and
    /// not seen fixed or deleted since.
    pub fn corrupt(&self) -> Vec<CorruptObject> {
        self.quarantine().all()
    }

    /// Notes what a read of `key` found: its file does not read (a
    /// [`StoreError::Corrupt`]) or reads (anything else).
    pub fn note_read<T>(&self, key: &ObjectKey, result: &Result<T, StoreError>) {
        let found = match result {
            Err(StoreError::Corrupt { path, message }) => Some(CorruptObject {
                key: key.clone(),
                path: path.clone(),
                reason: message.clone(),
            }),
            _ => None,
        };
        self.note(key, Level::File, found);
    }

    /// Notes whether `key`, which read as JSON, decoded as its kind
    /// (`Err`: why not).
    pub fn note_decoded(&self, key: &ObjectKey, result: Result<(), String>) {
        let found = result.err().map(|reason| CorruptObject {
            key: key.clone(),
            path: self.spec_file(key),
            reason,
        });
        self.note(key, Level::Typed, found);
    }

    fn note(&self, key: &ObjectKey, level: Level, found: Option<CorruptObject>) {
        let fresh = found.clone();
        if self.quarantine().object(key, level, found)
            && let Some(c) = fresh
        {
            self.report_corrupt(&[c]);
        }
    }
}

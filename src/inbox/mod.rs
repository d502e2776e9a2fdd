//! Compatibility with the original tool's queue folders, in each folder a
//! Session's agent runs in (its workdir, or its own worktree when it has a
//! workspace):
//!
//! ```text
//! WORKDIR/.agent-queue/inbox/*.md      a task each: YAML front matter + prompt
//! WORKDIR/.agent-queue/inbox/X.md.dispatched   marker while X runs
//! WORKDIR/.agent-queue/done/X.md       finished (X.md.result: the summary)
//! WORKDIR/.agent-queue/failed/X.md     failed (X.md.error: why)
//! WORKDIR/.agent-queue/rejected/X.md   unreadable (X.md.error: FILE:LINE:COL: field: what)
//! WORKDIR/.agent-queue/status.json     the sessions of this workdir: idle / working
//! ```
//!
//! Each inbox file becomes one Task, once (its name derives from the file's
//! path and content, so a re-scan finds it already there). Nothing is
//! dropped silently: a file that cannot be read as a task moves to
//! `rejected/` beside an `.error` file that says why.

use crate::api::keys::INBOX_FILE;
use crate::api::{API_VERSION, ObjectKey, Session, TaskPriority};
use crate::fsutil::write_atomic;
use crate::store::Store;

mod intake;
pub mod status;
pub use intake::{MAX_BYTES, SETTLE};
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What an inbox file's front matter may say.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Front {
    priority: Option<TaskPriority>,
    model: Option<String>,
    /// A Session name.
    session: Option<String>,
    /// Labels the Session must have.
    selector: Option<BTreeMap<String, String>>,
    /// Another workdir (default: the inbox's own).
    workdir: Option<String>,
    timeout_seconds: Option<u64>,
    max_attempts: Option<u32>,
    /// A fresh branch from the session's workspace base.
    fresh_branch: Option<bool>,
    /// Its name (implies `freshBranch`).
    branch: Option<String>,
}

pub fn queue_dir(workdir: &Path) -> PathBuf {
    workdir.join(".agent-queue")
}

#[derive(Debug, Default)]
pub struct ImportReport {
    pub created: Vec<ObjectKey>,
    pub rejected: Vec<(PathBuf, String)>,
    /// Some file is settling (written less than [`YOUNG`] ago): scan again
    /// shortly.
    pub waiting: bool,
}

/// How soon to scan again when a file is settling ([`intake::SETTLE`]).
pub const YOUNG: std::time::Duration = intake::SETTLE;

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ *b as u64).wrapping_mul(0x100000001b3)
    })
}

/// `inbox-<stem>-<hash>`: stable for one file's path and content.
fn task_name(path: &Path, content: &[u8]) -> String {
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("task");
    let mut slug: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    slug = slug
        .split('-')
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join("-");
    slug.truncate(40);
    let slug = slug.trim_matches('-');
    let mut h = path.to_string_lossy().as_bytes().to_vec();
    h.extend_from_slice(content);
    format!(
        "inbox-{}{}{:06x}",
        slug,
        if slug.is_empty() { "" } else { "-" },
        fnv(&h) & 0xffffff
    )
}

/// Splits `---\nYAML\n---\nbody`; no front matter: all body.
fn split(text: &str) -> Result<(Option<&str>, &str), String> {
    let Some(rest) = text
        .strip_prefix("---\n")
        .or_else(|| text.strip_prefix("---\r\n"))
    else {
        return Ok((None, text));
    };
    for end in ["\n---\n", "\n---\r\n"] {
        if let Some(i) = rest.find(end) {
            return Ok((Some(&rest[..i + 1]), &rest[i + end.len()..]));
        }
    }
    if let Some(front) = rest.strip_suffix("\n---") {
        return Ok((Some(front), ""));
    }
    Err("front matter opened with --- is never closed".into())
}

/// `QUEUE/<name>/`, created if missing: only ever a real directory (a
/// link there would send the files it receives elsewhere).
pub(crate) fn queue_subdir(queue: &Path, name: &str) -> std::io::Result<PathBuf> {
    let dir = queue.join(name);
    match std::fs::symlink_metadata(&dir) {
        Ok(m) if m.file_type().is_dir() => return Ok(dir),
        Ok(_) => {
            return Err(std::io::Error::other(format!(
                "{} is not a directory (a link, a file): nothing is moved there",
                dir.display()
            )));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    match std::fs::create_dir(&dir) {
        Ok(()) => Ok(dir),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => queue_subdir(queue, name),
        Err(e) => Err(e),
    }
}

/// A name in `dir` not taken yet: `NAME`, else `NAME.1`, `NAME.2`...
fn free_name(dir: &Path, name: &std::ffi::OsStr) -> PathBuf {
    let first = dir.join(name);
    if std::fs::symlink_metadata(&first).is_err() {
        return first;
    }
    (1..)
        .map(|i| {
            let mut n = name.to_os_string();
            n.push(format!(".{i}"));
            dir.join(n)
        })
        .find(|p| std::fs::symlink_metadata(p).is_err())
        .expect("some name is free")
}

/// Moves `file` (whatever it is: a file, a link, a FIFO, a directory) to
/// `rejected/`, with `NAME.error` saying why.
fn reject(queue: &Path, file: &Path, why: &str) -> std::io::Result<()> {
    let dir = queue_subdir(queue, "rejected")?;
    let dest = free_name(&dir, file.file_name().unwrap_or_default());
    std::fs::rename(file, &dest)?;
    write_atomic(
        &with_suffix(&dest, ".error"),
        format!("{why}\n").as_bytes(),
        None,
        true,
    )
}

/// Whether an inbox entry is the inbox's business: `*.md` (hidden ones and
/// odd ones too, to be answered), never our own `.dispatched` markers.
fn is_task_name(name: &std::ffi::OsStr) -> bool {
    name.as_encoded_bytes().ends_with(b".md")
}

/// Scans the inboxes of every Session's agent folder and creates the tasks.
/// Every `*.md` entry becomes a task once complete, or is moved to
/// `rejected/` with its reason (or, when it cannot be moved, the reason is
/// logged).
pub fn import(store: &Store, sessions: &[std::sync::Arc<Session>]) -> ImportReport {
    let mut report = ImportReport::default();
    let mut seen = std::collections::HashSet::new();
    for s in sessions {
        // Where the agent runs: its own worktree when it has a workspace.
        let workdir = crate::workspace::agent_dir(s);
        let Ok(workdir) = std::fs::canonicalize(&workdir) else {
            continue;
        };
        let ns = s
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| crate::api::DEFAULT_NAMESPACE.into());
        if !seen.insert((ns.clone(), workdir.clone())) {
            continue;
        }
        import_inbox(store, &ns, &workdir, &mut report);
    }
    report
}

fn import_inbox(store: &Store, ns: &str, workdir: &Path, report: &mut ImportReport) {
    let queue = queue_dir(workdir);
    let inbox = queue.join("inbox");
    if std::fs::symlink_metadata(&inbox).is_err() {
        return;
    }
    let dir = match intake::open_inbox(workdir, &inbox) {
        Ok(d) => d,
        Err(why) => {
            warn_once(&inbox, &why);
            return;
        }
    };
    let Ok(rd) = std::fs::read_dir(&inbox) else {
        return;
    };
    let mut names: Vec<std::ffi::OsString> = rd
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| is_task_name(n))
        .collect();
    names.sort();
    let now = std::time::SystemTime::now();
    for name in names {
        let file = inbox.join(&name);
        let hidden = name.as_encoded_bytes().starts_with(b".");
        let outcome = match intake::take(&dir, &file, &name, now) {
            intake::Take::Ready(_) if hidden => Err(
                "is hidden (its name starts with a dot): name task files without a leading dot"
                    .to_string(),
            ),
            intake::Take::Ready(bytes) => match import_file(store, ns, workdir, &file, &bytes) {
                // The store did not take it (etcd without a quorum): the
                // file stays, and is read again at the next scan.
                Err(Import::Store(e)) => {
                    tracing::debug!(file = %file.display(), error = %e, "inbox file kept: the store did not take it");
                    report.waiting = true;
                    continue;
                }
                Err(Import::Refused(why)) => Err(why),
                Ok(k) => Ok(k),
            },
            intake::Take::Settling => {
                report.waiting = true;
                continue;
            }
            intake::Take::Open => {
                tracing::debug!(file = %file.display(), "inbox file still open for writing; taken once closed");
                continue;
            }
            intake::Take::Gone => continue,
            intake::Take::Refuse(why) => Err(format!("{}: {why}", file.display())),
        };
        intake::forget(&file);
        match outcome {
            Ok(Some(key)) => {
                tracing::info!(file = %file.display(), task = %key, "inbox file imported");
                report.created.push(key);
            }
            Ok(None) => {}
            Err(why) => {
                tracing::warn!(file = %file.display(), "inbox file rejected: {why}");
                if let Err(e) = reject(&queue, &file, &why) {
                    warn_once(
                        &file,
                        &format!("cannot move it to rejected/: {e} (rejected: {why})"),
                    );
                }
                report.rejected.push((file, why));
            }
        }
    }
}

/// Logs `why` for `path`, once per reason (the inbox is scanned often).
pub(crate) fn warn_once(path: &Path, why: &str) {
    static SAID: std::sync::Mutex<Option<std::collections::HashMap<PathBuf, String>>> =
        std::sync::Mutex::new(None);
    let mut g = SAID.lock().unwrap_or_else(|e| e.into_inner());
    let said = g.get_or_insert_with(Default::default);
    if said.get(path).map(String::as_str) != Some(why) {
        tracing::warn!(path = %path.display(), "inbox: {why}");
        if said.len() > 1024 {
            said.clear();
        }
        said.insert(path.to_path_buf(), why.to_string());
    }
}

/// Why an inbox file did not become a Task.
enum Import {
    /// The file is refused (moved to rejected/, with why).
    Refused(String),
    /// The store did not answer or take the write: the file stays.
    Store(crate::store::StoreError),
}

fn import_file(
    store: &Store,
    ns: &str,
    workdir: &Path,
    file: &Path,
    bytes: &[u8],
) -> Result<Option<ObjectKey>, Import> {
    let name = task_name(file, bytes);
    let key = ObjectKey::new(crate::api::Kind::Task, ns, &name);
    let stored = |e: crate::store::StoreError| match e {
        e @ (crate::store::StoreError::Unavailable { .. }
        | crate::store::StoreError::Contended(_)
        | crate::store::StoreError::Io { .. }) => Import::Store(e),
        e => Import::Refused(e.to_string()),
    };
    if store.get(&key).map_err(stored)?.is_some() {
        return Ok(None); // imported before
    }
    let task = parse_task(file, bytes, ns, workdir).map_err(Import::Refused)?;
    store.apply(&task, false).map_err(stored)?;
    Ok(Some(key))
}

/// The Task an inbox file's bytes declare (front matter and prompt),
/// decoded and validated as a manifest; or the one-line reason it is
/// rejected (`FILE:LINE:COL: field: what`). Reads nothing but `bytes`.
pub fn parse_task(file: &Path, bytes: &[u8], ns: &str, workdir: &Path) -> Result<Value, String> {
    let shown = file.display().to_string();
    let name = task_name(file, bytes);
    let text = std::str::from_utf8(bytes).map_err(|e| {
        format!(
            "{shown}:1:1: (file): not valid UTF-8 (offset {})",
            e.valid_up_to()
        )
    })?;
    let (front, body) = split(text).map_err(|e| format!("{shown}:1:1: (front matter): {e}"))?;
    let front: Front = match front {
        None => Front::default(),
        Some(f) => crate::manifest::decode_single(&shown, f.as_bytes()).map_err(|mut e| {
            e.pos.line += 1; // the opening ---
            e.to_string()
        })?,
    };
    let prompt = body.trim();
    if prompt.is_empty() {
        return Err(format!("{shown}:1:1: (body): the prompt is empty"));
    }
    let mut spec = json!({"prompt": prompt});
    if let Some(p) = front.priority {
        spec["priority"] = json!(p);
    }
    if let Some(m) = front.model {
        spec["model"] = json!(m);
    }
    match (front.session, front.selector, front.workdir) {
        (Some(s), _, _) => spec["session"] = json!(s),
        (None, Some(sel), w) => {
            spec["sessionSelector"] = json!({"matchLabels": sel});
            if let Some(w) = w {
                spec["workdir"] = json!(w);
            }
        }
        (None, None, w) => {
            spec["workdir"] = json!(w.unwrap_or_else(|| workdir.display().to_string()))
        }
    }
    if let Some(t) = front.timeout_seconds {
        spec["timeoutSeconds"] = json!(t);
    }
    if let Some(m) = front.max_attempts {
        spec["maxAttempts"] = json!(m);
    }
    if front.fresh_branch.is_some() || front.branch.is_some() {
        spec["workspace"] = json!({"freshBranch": front.fresh_branch.unwrap_or(false)});
        if let Some(b) = front.branch {
            spec["workspace"]["branch"] = json!(b);
        }
    }
    let doc = json!({
        "apiVersion": API_VERSION, "kind": "Task",
        "metadata": {"name": name, "namespace": ns, "annotations": {INBOX_FILE: shown}},
        "spec": spec,
    });
    // Through the same strict decoding and validation as a manifest (JSON
    // is YAML).
    let text = serde_json::to_vec(&doc).expect("JSON values serialize");
    let (objs, errs) = crate::manifest::decode_file(&shown, &text);
    if let Some(e) = errs.first() {
        return Err(format!("{shown}: {}: {}", e.path, e.message));
    }
    let obj = objs
        .into_iter()
        .next()
        .ok_or_else(|| format!("{shown}: no task"))?;
    Ok(obj.object.to_value())
}

fn with_suffix(p: &Path, suffix: &str) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Marks an inbox file as dispatched (a `.dispatched` file beside it).
pub fn mark_dispatched(file: &Path, task: &str, marker: &str) {
    if file.exists() {
        let _ = write_atomic(
            &with_suffix(file, ".dispatched"),
            format!("task {task} marker {marker}\n").as_bytes(),
            None,
            false,
        );
    }
}

/// Moves a finished task's file to `done/` or `failed/`, with its result.
pub fn mark_finished(file: &Path, ok: bool, message: &str) {
    let _ = std::fs::remove_file(with_suffix(file, ".dispatched"));
    let (Some(inbox), Some(name)) = (file.parent(), file.file_name()) else {
        return;
    };
    let Some(queue) = inbox.parent() else { return };
    if !file.exists() {
        return;
    }
    let dir = match queue_subdir(queue, if ok { "done" } else { "failed" }) {
        Ok(d) => d,
        Err(e) => {
            warn_once(file, &format!("cannot move it on: {e}"));
            return;
        }
    };
    let dest = free_name(&dir, name);
    // The result first: whoever sees the file in done/ finds its result.
    let side = with_suffix(&dest, if ok { ".result" } else { ".error" });
    let _ = write_atomic(&side, format!("{message}\n").as_bytes(), None, true);
    if std::fs::rename(file, &dest).is_ok() {
        tracing::info!(file = %dest.display(), "inbox file moved");
    }
}

/// Watches every Session workdir's inbox so a dropped file is picked up at
/// once (the dispatcher's periodic pass is the safety net).
pub struct InboxWatcher {
    watcher: notify::RecommendedWatcher,
    watched: std::collections::HashSet<PathBuf>,
}

impl InboxWatcher {
    pub fn new(changed: std::sync::Arc<tokio::sync::Notify>) -> Option<InboxWatcher> {
        use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind, RenameMode};
        let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            let Ok(ev) = &res else { return };
            // A file renamed in is complete as it is (write-then-rename).
            if let EventKind::Modify(ModifyKind::Name(RenameMode::To | RenameMode::Both)) = ev.kind
                && let Some(to) = ev.paths.last()
                && is_task_name(to.as_os_str())
            {
                intake::arrived_by_rename(to);
            }
            // A writer closing a file: it may be complete now.
            let closed = matches!(
                ev.kind,
                EventKind::Access(AccessKind::Close(AccessMode::Write))
            );
            if closed || crate::fsutil::is_change(&res) {
                changed.notify_one();
            }
        });
        match watcher {
            Ok(watcher) => Some(InboxWatcher {
                watcher,
                watched: Default::default(),
            }),
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch inbox folders; scanning them periodically");
                None
            }
        }
    }

    /// Watches the inbox of every Session's agent folder (creating it).
    pub fn sync(&mut self, sessions: &[std::sync::Arc<Session>]) {
        use notify::Watcher;
        for s in sessions {
            let Ok(workdir) = std::fs::canonicalize(crate::workspace::agent_dir(s)) else {
                continue;
            };
            let inbox = queue_dir(&workdir).join("inbox");
            if self.watched.contains(&inbox) {
                continue;
            }
            // Created as real directories, and watched only when inside
            // the workdir.
            let made = queue_subdir(&workdir, ".agent-queue")
                .and_then(|q| queue_subdir(&q, "inbox"))
                .map_err(|e| e.to_string())
                .and_then(|inbox| intake::open_inbox(&workdir, &inbox).map(|_| inbox));
            match made {
                Ok(inbox) => {
                    if self
                        .watcher
                        .watch(&inbox, notify::RecursiveMode::NonRecursive)
                        .is_ok()
                    {
                        self.watched.insert(inbox);
                    }
                }
                Err(why) => warn_once(&inbox, &why),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_may_ask_for_a_fresh_branch() {
        let t = parse_task(
            Path::new("/w/.agent-queue/inbox/fix.md"),
            b"---\nfreshBranch: true\n---\nfix it\n",
            "default",
            Path::new("/w"),
        )
        .unwrap();
        assert_eq!(t["spec"]["workspace"], json!({"freshBranch": true}));
        let t = parse_task(
            Path::new("/w/.agent-queue/inbox/fix.md"),
            b"---\nbranch: feature/fix\n---\nfix it\n",
            "default",
            Path::new("/w"),
        )
        .unwrap();
        assert_eq!(
            t["spec"]["workspace"],
            json!({"freshBranch": false, "branch": "feature/fix"})
        );
    }

    #[test]
    fn front_matter_split() {
        assert_eq!(
            split("---\npriority: high\n---\ndo it\n").unwrap(),
            (Some("priority: high\n"), "do it\n")
        );
        assert_eq!(split("just a prompt").unwrap(), (None, "just a prompt"));
        assert!(split("---\npriority: high\nno end").is_err());
        let a = task_name(Path::new("/w/.agent-queue/inbox/Fix Login!.md"), b"x");
        assert!(a.starts_with("inbox-fix-login-"), "{a}");
        assert_eq!(
            a,
            task_name(Path::new("/w/.agent-queue/inbox/Fix Login!.md"), b"x")
        );
        assert_ne!(
            a,
            task_name(Path::new("/w/.agent-queue/inbox/Fix Login!.md"), b"y")
        );
    }
}

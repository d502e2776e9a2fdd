//! Compatibility with the original tool's queue folders, per Session
//! workdir:
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
}

pub fn queue_dir(workdir: &Path) -> PathBuf {
    workdir.join(".agent-queue")
}

#[derive(Debug, Default)]
pub struct ImportReport {
    pub created: Vec<ObjectKey>,
    pub rejected: Vec<(PathBuf, String)>,
    /// Some fresh file did not read well (maybe still being written): scan
    /// again shortly.
    pub waiting: bool,
}

/// A file modified more recently than this may still be being written.
pub const YOUNG: std::time::Duration = std::time::Duration::from_millis(500);

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

fn reject(queue: &Path, file: &Path, why: &str) -> std::io::Result<()> {
    let dir = queue.join("rejected");
    std::fs::create_dir_all(&dir)?;
    let name = file.file_name().unwrap_or_default();
    let dest = dir.join(name);
    std::fs::rename(file, &dest)?;
    let mut err = dest.into_os_string();
    err.push(".error");
    write_atomic(Path::new(&err), format!("{why}\n").as_bytes(), None, true)
}

/// Scans the inboxes of every Session's workdir and creates the tasks.
pub fn import(store: &Store, sessions: &[Session]) -> ImportReport {
    let mut report = ImportReport::default();
    let mut seen = std::collections::HashSet::new();
    for s in sessions {
        let workdir = crate::fsutil::expand_home(&s.spec.workdir);
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
        let queue = queue_dir(&workdir);
        let Ok(rd) = std::fs::read_dir(queue.join("inbox")) else {
            continue;
        };
        let mut files: Vec<PathBuf> = rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.extension().is_some_and(|e| e == "md")
                    && !p
                        .file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with('.'))
                    && p.is_file()
            })
            .collect();
        files.sort();
        for file in files {
            let young = std::fs::metadata(&file)
                .and_then(|m| m.modified())
                .map(|t| t.elapsed().unwrap_or_default() < YOUNG)
                .unwrap_or(true);
            match import_file(store, &ns, &workdir, &file) {
                // A file still being written may read as broken: only a
                // settled file is rejected.
                Err(_) if young => report.waiting = true,
                Ok(Some(key)) => {
                    tracing::info!(file = %file.display(), task = %key, "inbox file imported");
                    report.created.push(key);
                }
                Ok(None) => {}
                Err(why) => {
                    tracing::warn!(file = %file.display(), "inbox file rejected: {why}");
                    if let Err(e) = reject(&queue, &file, &why) {
                        tracing::warn!(file = %file.display(), error = %e, "cannot move a rejected inbox file");
                    }
                    report.rejected.push((file, why));
                }
            }
        }
    }
    report
}

fn import_file(
    store: &Store,
    ns: &str,
    workdir: &Path,
    file: &Path,
) -> Result<Option<ObjectKey>, String> {
    let shown = file.display().to_string();
    let bytes = std::fs::read(file).map_err(|e| format!("{shown}: cannot read: {e}"))?;
    let name = task_name(file, &bytes);
    let key = ObjectKey::new(crate::api::Kind::Task, ns, &name);
    if store.get(&key).map_err(|e| e.to_string())?.is_some() {
        return Ok(None); // imported before
    }
    let text = std::str::from_utf8(&bytes).map_err(|e| {
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
    let doc = json!({
        "apiVersion": API_VERSION, "kind": "Task",
        "metadata": {"name": name, "namespace": ns, "annotations": {INBOX_FILE: shown}},
        "spec": spec,
    });
    // Through the same strict decoding and validation as a manifest.
    let yaml = serde_saphyr::to_string(&doc).expect("JSON serializes to YAML");
    let (objs, errs) = crate::manifest::decode_file(&shown, yaml.as_bytes());
    if let Some(e) = errs.first() {
        return Err(format!("{shown}: {}: {}", e.path, e.message));
    }
    let obj = objs.into_iter().next().expect("one document");
    store
        .apply(&obj.object.to_value(), false)
        .map_err(|e| e.to_string())?;
    Ok(Some(key))
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
    let dir = queue.join(if ok { "done" } else { "failed" });
    if std::fs::create_dir_all(&dir).is_err() {
        return;
    }
    let dest = dir.join(name);
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
        let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if res.is_ok() && crate::fsutil::is_change(&res) {
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

    /// Watches the inbox of every Session's workdir (creating it).
    pub fn sync(&mut self, sessions: &[Session]) {
        use notify::Watcher;
        for s in sessions {
            let Ok(workdir) = std::fs::canonicalize(crate::fsutil::expand_home(&s.spec.workdir))
            else {
                continue;
            };
            let inbox = queue_dir(&workdir).join("inbox");
            if self.watched.contains(&inbox) {
                continue;
            }
            if std::fs::create_dir_all(&inbox).is_ok()
                && self
                    .watcher
                    .watch(&inbox, notify::RecursiveMode::NonRecursive)
                    .is_ok()
            {
                self.watched.insert(inbox);
            }
        }
    }
}

static STATUS_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Updates `WORKDIR/.agent-queue/status.json` with one session's state
/// (`idle` or `working`, its phase and current task); the top-level
/// `state` is `working` when any session of the workdir is.
pub fn write_status(
    workdir: &Path,
    session: &str,
    phase: &str,
    current_task: Option<&str>,
    account: Option<&str>,
) {
    let _g = STATUS_LOCK.lock().expect("lock");
    let queue = queue_dir(workdir);
    if std::fs::create_dir_all(&queue).is_err() {
        return;
    }
    let path = queue.join("status.json");
    let mut doc: Value = std::fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .filter(Value::is_object)
        .unwrap_or_else(|| json!({}));
    let working = current_task.is_some() || phase == "Busy";
    let entry = json!({
        "state": if working { "working" } else { "idle" },
        "phase": phase,
        "currentTask": current_task,
        "account": account,
    });
    if doc.pointer(&format!("/sessions/{session}")) == Some(&entry) {
        return;
    }
    if !doc.get("sessions").is_some_and(Value::is_object) {
        doc["sessions"] = json!({});
    }
    doc["sessions"][session] = entry;
    let any_working = doc["sessions"]
        .as_object()
        .is_some_and(|m| m.values().any(|v| v["state"] == "working"));
    doc["state"] = json!(if any_working { "working" } else { "idle" });
    doc["updatedAt"] = serde_json::to_value(crate::api::now()).expect("time");
    let _ = write_atomic(
        &path,
        &serde_json::to_vec_pretty(&doc).expect("JSON"),
        None,
        false,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

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

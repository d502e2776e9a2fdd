//! The janitor: removes what is finished and old, logging every removal.
//!
//! - Tasks that finished (Succeeded, Failed, Cancelled) longer ago than
//!   `keep_finished`, with their `done/` or `failed/` inbox files;
//! - files in `.agent-queue/rejected/` older than that;
//! - `.dispatched` markers whose task is gone or finished;
//! - checkpoints (`STATE/checkpoints/NS/NAME.json`) of sessions that no
//!   longer exist, older than `keep_checkpoints`;
//! - temp files of atomic writes (`.NAME.tmp.PID.N`) that a process killed
//!   mid-write left in the store or the state dir, once older than
//!   [`TEMP_AGE`] (no write takes that long). Readers skip them already.

use crate::api::keys::INBOX_FILE;
use crate::api::{Session, Task, TaskPhase};
use crate::store::Store;
use std::path::Path;
use std::time::{Duration, SystemTime};

#[derive(Debug, Clone)]
pub struct Settings {
    pub interval: Duration,
    pub keep_finished: Duration,
    /// The daemon's state dir (checkpoints).
    pub state_dir: std::path::PathBuf,
    pub keep_checkpoints: Duration,
}

/// Runs a pass every `interval`, forever.
pub async fn run(store: Store, settings: Settings) {
    let mut tick = tokio::time::interval(settings.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let (s, st) = (store.clone(), settings.clone());
        match tokio::task::spawn_blocking(move || pass(&s, &st, SystemTime::now())).await {
            Ok(Ok(n)) if n > 0 => tracing::info!(removed = n, "janitor pass complete"),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "janitor pass failed"),
            Err(e) => tracing::warn!(error = %e, "janitor pass panicked"),
        }
    }
}

/// Age after which a write's temp file is taken as abandoned.
pub const TEMP_AGE: Duration = Duration::from_secs(600);

/// Removes abandoned temp files under `dir` (not following symlinks).
fn sweep_temp(dir: &Path, now: SystemTime, depth: usize) -> usize {
    let mut removed = 0;
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let Ok(ft) = e.file_type() else { continue };
        let p = e.path();
        if ft.is_dir() && depth > 0 {
            removed += sweep_temp(&p, now, depth - 1);
        } else if ft.is_file() && crate::fsutil::is_temp_name(&e.file_name().to_string_lossy()) {
            let modified = e.metadata().and_then(|m| m.modified()).unwrap_or(now);
            if old(modified, now, TEMP_AGE) {
                removed += remove(&p, "a temp file left by an interrupted write") as usize;
            }
        }
    }
    removed
}

fn old(t: SystemTime, now: SystemTime, keep: Duration) -> bool {
    now.duration_since(t).unwrap_or_default() > keep
}

fn remove(path: &Path, why: &str) -> bool {
    match std::fs::remove_file(path) {
        Ok(()) => {
            tracing::info!(file = %path.display(), "janitor removed {why}");
            true
        }
        Err(_) => false,
    }
}

/// One pass; returns how many things were removed.
pub fn pass(
    store: &Store,
    s: &Settings,
    now: SystemTime,
) -> Result<usize, crate::store::StoreError> {
    let tasks = store.api::<Task>(None).list()?;
    let mut removed = finished_tasks(store, s, &tasks, now);
    let sessions = store.api::<Session>(None).list()?;
    removed += orphan_checkpoints(s, &sessions, now);
    let live: std::collections::HashSet<String> = tasks
        .iter()
        .filter(|t| {
            matches!(
                t.status.as_ref().and_then(|s| s.phase),
                Some(TaskPhase::Dispatched | TaskPhase::Running)
            )
        })
        .filter_map(|t| t.metadata.name.clone())
        .collect();
    for sess in &sessions {
        removed += inbox_leftovers(sess, s, &live, now);
    }
    for root in [store.root(), s.state_dir.as_path()] {
        removed += sweep_temp(root, now, 4);
    }
    Ok(removed)
}

/// Tasks finished longer ago than `keep_finished`, with their inbox files.
fn finished_tasks(store: &Store, s: &Settings, tasks: &[Task], now: SystemTime) -> usize {
    let mut removed = 0;
    for t in tasks {
        let st = t.status.clone().unwrap_or_default();
        let done = matches!(
            st.phase,
            Some(TaskPhase::Succeeded | TaskPhase::Failed | TaskPhase::Cancelled)
        );
        let Some(finished) = st.finished_at.as_ref().map(|f| SystemTime::from(f.0)) else {
            continue;
        };
        if !done || !old(finished, now, s.keep_finished) {
            continue;
        }
        let file = t
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(INBOX_FILE));
        let file = file.map(Path::new);
        if let Some((queue, name)) =
            file.and_then(|f| Some((f.parent()?.parent()?, f.file_name()?)))
        {
            for dir in ["done", "failed"] {
                let f = queue.join(dir).join(name);
                for p in [
                    f.clone(),
                    f.with_extension("md.result"),
                    f.with_extension("md.error"),
                ] {
                    removed += remove(&p, "a finished task's inbox file") as usize;
                }
            }
        }
        let api = store.api::<Task>(t.metadata.namespace.as_deref());
        let name = t.metadata.name.as_deref().unwrap_or_default();
        if api.delete(name).is_ok() {
            tracing::info!(task = name, "janitor removed a finished task");
            removed += 1;
        }
    }
    removed
}

/// Checkpoints of Sessions deleted longer ago than `keep_checkpoints`.
fn orphan_checkpoints(s: &Settings, sessions: &[Session], now: SystemTime) -> usize {
    let mut removed = 0;
    let checkpoints = s.state_dir.join("checkpoints");
    let dirs = |p: &Path| std::fs::read_dir(p).into_iter().flatten().flatten();
    for ns in dirs(&checkpoints) {
        let namespace = ns.file_name().to_string_lossy().into_owned();
        for e in dirs(&ns.path()) {
            let p = e.path();
            let Some(name) = p.file_stem().map(|n| n.to_string_lossy().into_owned()) else {
                continue;
            };
            let exists = sessions.iter().any(|x| {
                x.metadata.name.as_deref() == Some(name.as_str())
                    && x.metadata.namespace.as_deref() == Some(namespace.as_str())
            });
            let modified = e.metadata().and_then(|m| m.modified()).unwrap_or(now);
            if !exists && old(modified, now, s.keep_checkpoints) {
                removed += remove(&p, "the checkpoint of a deleted session") as usize;
            }
        }
    }
    removed
}

/// In a session's inbox queue: `.dispatched` markers of tasks no longer
/// in flight (`live`), and rejected files older than `keep_finished`.
fn inbox_leftovers(
    sess: &Session,
    s: &Settings,
    live: &std::collections::HashSet<String>,
    now: SystemTime,
) -> usize {
    let mut removed = 0;
    let Ok(workdir) = std::fs::canonicalize(crate::workspace::agent_dir(sess)) else {
        return 0;
    };
    let queue = crate::inbox::queue_dir(&workdir);
    for e in std::fs::read_dir(queue.join("inbox"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "dispatched") {
            let task = std::fs::read_to_string(&p)
                .ok()
                .and_then(|c| c.split_whitespace().nth(1).map(str::to_string))
                .unwrap_or_default();
            if !live.contains(&task) {
                removed += remove(&p, "a stale .dispatched marker") as usize;
            }
        }
    }
    for e in std::fs::read_dir(queue.join("rejected"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let p = e.path();
        let modified = e.metadata().and_then(|m| m.modified()).unwrap_or(now);
        if old(modified, now, s.keep_finished) {
            removed += remove(&p, "an old rejected inbox file") as usize;
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn abandoned_temp_files_go_and_nothing_else() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::open(d.path().join("store")).unwrap();
        let state = d.path().join("state");
        let swaps = state.join("swaps");
        std::fs::create_dir_all(&swaps).unwrap();
        let age = |p: &Path, secs: u64| {
            std::fs::File::options()
                .write(true)
                .open(p)
                .unwrap()
                .set_modified(SystemTime::now() - Duration::from_secs(secs))
                .unwrap();
        };
        let abandoned = swaps.join(".7.json.tmp.123.4");
        let in_flight = swaps.join(".8.json.tmp.123.5");
        let record = swaps.join("7.json");
        for p in [&abandoned, &in_flight, &record] {
            std::fs::write(p, "{}").unwrap();
        }
        age(&abandoned, 3600);
        age(&record, 3600);
        let settings = Settings {
            interval: Duration::from_secs(60),
            keep_finished: Duration::from_secs(3600 * 24),
            state_dir: state.clone(),
            keep_checkpoints: Duration::from_secs(3600 * 24),
        };
        assert_eq!(pass(&store, &settings, SystemTime::now()).unwrap(), 1);
        assert!(!abandoned.exists());
        assert!(in_flight.exists() && record.exists());
    }

    #[test]
    fn checkpoints_of_deleted_sessions_go_when_old() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::open(d.path().join("store")).unwrap();
        let state = d.path().join("state");
        let (workdir, keep) = (d.path().join("w"), Duration::from_secs(3600));
        std::fs::create_dir_all(&workdir).unwrap();
        store
            .apply(
                &serde_json::json!({
                    "apiVersion": "claude-failover.io/v1alpha1", "kind": "Session",
                    "metadata": {"name": "alive", "namespace": "default"},
                    "spec": {"workdir": workdir.display().to_string()},
                }),
                false,
            )
            .unwrap();
        let dir = state.join("checkpoints/default");
        std::fs::create_dir_all(&dir).unwrap();
        let old = SystemTime::now() - Duration::from_secs(7200);
        for name in ["alive", "gone-old", "gone-new"] {
            let p = dir.join(format!("{name}.json"));
            std::fs::write(&p, "{}").unwrap();
            if name != "gone-new" {
                std::fs::File::options()
                    .write(true)
                    .open(&p)
                    .unwrap()
                    .set_modified(old)
                    .unwrap();
            }
        }
        let settings = Settings {
            interval: Duration::from_secs(60),
            keep_finished: keep,
            state_dir: state,
            keep_checkpoints: keep,
        };
        assert_eq!(pass(&store, &settings, SystemTime::now()).unwrap(), 1);
        assert!(dir.join("alive.json").exists(), "its session exists");
        assert!(!dir.join("gone-old.json").exists(), "deleted and old");
        assert!(dir.join("gone-new.json").exists(), "deleted, but recent");
    }
}

//! Atomic file writes: every file the project writes goes through here.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Writes `data` to `path` atomically: a hidden temp file in the same
/// directory, fsync, rename over the target. Readers see the old or the new
/// content, never a mix; a crash leaves the old file (and maybe a stray
/// hidden temp file, which readers ignore). `sync_dir` also fsyncs the
/// directory so the rename itself is durable; batch writers pass false and
/// call [`sync_dir`] once at the end.
pub fn write_atomic(
    path: &Path,
    data: &[u8],
    mode: Option<u32>,
    sync_parent: bool,
) -> std::io::Result<()> {
    let tmp = write_temp(path, data, mode)?;
    let result = std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .and_then(|_| std::fs::rename(&tmp, path));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result?;
    if sync_parent {
        sync_dir(path.parent().unwrap_or(Path::new(".")))?;
    }
    Ok(())
}

/// Replaces `path` with `data` atomically for every process (a temp file
/// renamed over it: readers see the old or the new content), without
/// fsync: for what a power loss makes moot anyway (the secret an agent's
/// hooks carry: the agent dies with the machine, and its next launch
/// writes another).
pub fn replace_volatile(path: &Path, data: &[u8], mode: Option<u32>) -> std::io::Result<()> {
    let tmp = write_temp(path, data, mode)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// Writes `data` to a new hidden temp file beside `path`, without fsync,
/// and returns its name: the first half of [`write_atomic`] for batch
/// writers, which make many temp files durable at once with
/// [`sync_filesystem`] and then rename them.
pub fn write_temp(
    path: &Path,
    data: &[u8],
    mode: Option<u32>,
) -> std::io::Result<std::path::PathBuf> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    static PID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    let tmp = dir.join(format!(
        ".{name}.tmp.{}.{}",
        PID.get_or_init(std::process::id),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(mode.unwrap_or(0o644));
    }
    let r = opts.open(&tmp).and_then(|mut f| f.write_all(data));
    if let Err(e) = r {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(tmp)
}

/// Whether `name` is a temp file of [`write_temp`]: `.NAME.tmp.PID.N`.
pub fn is_temp_name(name: &str) -> bool {
    let Some(rest) = name.strip_prefix('.') else {
        return false;
    };
    let mut tail = rest.rsplitn(3, '.');
    let (Some(n), Some(pid), Some(head)) = (tail.next(), tail.next(), tail.next()) else {
        return false;
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    digits(n) && digits(pid) && head.ends_with(".tmp") && head.len() > 4
}

/// Flushes every dirty page of the filesystem holding `path` (`syncfs`).
pub fn sync_filesystem(path: &Path) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(path)?;
    // SAFETY: syncfs takes a valid open descriptor, which `f` holds.
    if unsafe { libc::syncfs(f.as_raw_fd()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// fsyncs a directory so that renames and removals in it are durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Creates `dir` (and parents) if needed.
pub fn ensure_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)
}

/// Expands a leading `~` to `$HOME`.
pub fn expand_home(p: &str) -> std::path::PathBuf {
    if p == "~" {
        return home();
    }
    match p.strip_prefix("~/") {
        Some(rest) => home().join(rest),
        None => std::path::PathBuf::from(p),
    }
}

pub fn home() -> std::path::PathBuf {
    std::env::var_os("HOME")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from("/"))
}

/// Whether a file watcher's event may be a change: anything but an access.
/// Opening or reading a watched directory (our own scans) raises access
/// events; a watcher that woke on those and scanned again would spin.
/// Errors count as changes (the caller rescans).
pub fn is_change(res: &notify::Result<notify::Event>) -> bool {
    !matches!(res, Ok(ev) if matches!(ev.kind, notify::EventKind::Access(_)))
}

/// Makes sure a directory that just appeared under a recursive watch is
/// watched before its caller reads it. notify delivers a new directory's
/// creation first and adds its own watch on it only after: a file renamed
/// into the directory in between is neither notified nor, when the caller
/// read the directory before, listed (a task created in a new namespace went
/// unseen until the next resync). Watching it here first (inotify adds the
/// same watch again) closes that gap: what lands in it from now on is
/// notified, what landed before is in the caller's read. Blocking (it waits
/// for the watcher's thread): call it off the async workers.
pub fn watch_new_dir(watcher: &mut impl notify::Watcher, dir: &Path) {
    if let Err(e) = watcher.watch(dir, notify::RecursiveMode::Recursive) {
        // Gone again, or out of watches: the caller's read and the
        // periodic resync still cover it.
        tracing::debug!(dir = %dir.display(), error = %e, "could not watch a new directory");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_names_are_told_apart() {
        let d = tempfile::tempdir().unwrap();
        let tmp = write_temp(&d.path().join("7.json"), b"{}", None).unwrap();
        assert!(is_temp_name(&tmp.file_name().unwrap().to_string_lossy()));
        assert!(is_temp_name(".s0.status.json.tmp.99.0"));
        for name in [
            ".lock",
            "a.json",
            ".tmp.1.2",
            ".x.tmp.1",
            ".x.tmp.a.2",
            ".x.tmpl.1.2",
        ] {
            assert!(!is_temp_name(name), "{name}");
        }
    }

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.json");
        write_atomic(&p, b"one", None, true).unwrap();
        write_atomic(&p, b"two", Some(0o600), false).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
    }
}

//! Taking one file from an inbox, safely:
//!
//! - only a regular file of the inbox itself: opened relative to the inbox
//!   directory (itself checked to be inside the workdir) with `O_NOFOLLOW`
//!   and without blocking, then checked on the open descriptor: no link
//!   is followed (a symlink is refused, not read), a FIFO or a device is
//!   never read, a file with other hard links is refused;
//! - only once it is complete: no process has it open for writing (a read
//!   lease can be taken on it: the kernel's own answer), and it has not
//!   changed for [`SETTLE`], or it was renamed into the inbox and has not
//!   changed since (write-then-rename: complete at once);
//! - read to at most [`MAX_BYTES`], and taken only if it did not change
//!   while read.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

/// How long a file written in place must stay unchanged (and closed)
/// before it is taken. A file renamed into the inbox needs no wait.
pub const SETTLE: Duration = Duration::from_millis(250);

/// Largest inbox file taken.
pub const MAX_BYTES: u64 = 4 * 1024 * 1024;

/// What the inbox does with one entry now.
#[derive(Debug)]
pub enum Take {
    /// Complete: its content.
    Ready(Vec<u8>),
    /// Changed less than [`SETTLE`] ago: look again shortly.
    Settling,
    /// A process has it open for writing: look again once it is closed.
    Open,
    /// Never a task: why.
    Refuse(String),
    /// Gone since it was listed.
    Gone,
}

/// Identity and state of a file's content: what must not change between
/// a rename into the inbox and its taking, or while it is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
}

impl Stamp {
    fn of(m: &std::fs::Metadata) -> Stamp {
        Stamp {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
        }
    }
}

/// Files seen renamed into an inbox (by the inbox watcher), with their
/// stamp at that moment.
static ARRIVED: Mutex<Option<HashMap<PathBuf, Stamp>>> = Mutex::new(None);

/// Most renamed-in files remembered (they are forgotten once taken).
const ARRIVED_KEPT: usize = 4096;

/// Notes that `path` was just renamed into an inbox: complete as it is.
pub fn arrived_by_rename(path: &Path) {
    let Ok(m) = std::fs::symlink_metadata(path) else {
        return;
    };
    if !m.file_type().is_file() {
        return;
    }
    let mut g = ARRIVED.lock().unwrap_or_else(|e| e.into_inner());
    let map = g.get_or_insert_with(HashMap::new);
    if map.len() >= ARRIVED_KEPT {
        map.retain(|p, _| p.exists());
    }
    if map.len() < ARRIVED_KEPT {
        map.insert(path.to_path_buf(), Stamp::of(&m));
    }
}

/// Forgets a file taken or refused.
pub fn forget(path: &Path) {
    if let Some(map) = ARRIVED.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
        map.remove(path);
    }
}

fn renamed_in_unchanged(path: &Path, now: Stamp) -> bool {
    ARRIVED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
        .and_then(|m| m.get(path))
        == Some(&now)
}

/// The inbox directory, opened: only when it (and the queue folder) is a
/// real directory inside `workdir`.
pub fn open_inbox(workdir: &Path, inbox: &Path) -> Result<OwnedFd, String> {
    let real = std::fs::canonicalize(inbox).map_err(|e| format!("{}: {e}", inbox.display()))?;
    if !real.starts_with(workdir) {
        return Err(format!(
            "{} leads outside the workdir (to {}): it is not read",
            inbox.display(),
            real.display()
        ));
    }
    let c = std::ffi::CString::new(real.as_os_str().as_bytes())
        .map_err(|_| format!("{}: a NUL in the path", real.display()))?;
    // SAFETY: a valid C string; the result is checked.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(format!(
            "{}: {}",
            real.display(),
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: `fd` was just opened and is owned here.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens `name` in the directory `dir` without following a link or
/// blocking on a FIFO.
fn open_at(dir: &OwnedFd, name: &std::ffi::OsStr) -> std::io::Result<File> {
    let c = std::ffi::CString::new(name.as_bytes())
        .map_err(|_| std::io::Error::other("a NUL in the name"))?;
    // SAFETY: a valid directory descriptor and C string; checked below.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            c.as_ptr(),
            libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and is owned by the File.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// `fcntl` command: the signal that tells of a lease break (Linux,
/// `<fcntl.h>`; not in the libc crate).
const F_SETSIG: libc::c_int = 10;

/// Whether some process has `f` open for writing: the kernel refuses a
/// read lease then. None when leases cannot tell (a file of another user,
/// a filesystem without leases): the settle time alone decides.
fn open_for_writing(f: &File) -> Option<bool> {
    let fd = f.as_raw_fd();
    // A lease break (an open for writing in the moment it is held) is
    // told by a signal: SIGURG, ignored by default, rather than SIGIO,
    // which would end the process.
    // SAFETY: fcntl on a descriptor this function borrows.
    unsafe {
        if libc::fcntl(fd, F_SETSIG, libc::SIGURG) != 0 {
            return None;
        }
        if libc::fcntl(fd, libc::F_SETLEASE, libc::F_RDLCK) == 0 {
            libc::fcntl(fd, libc::F_SETLEASE, libc::F_UNLCK);
            return Some(false);
        }
    }
    match std::io::Error::last_os_error().raw_os_error() {
        Some(libc::EAGAIN) => Some(true),
        _ => None,
    }
}

/// What to do with the entry `name` of the inbox `dir` (at `path`).
pub fn take(dir: &OwnedFd, path: &Path, name: &std::ffi::OsStr, now: SystemTime) -> Take {
    let file = match open_at(dir, name) {
        Ok(f) => f,
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Take::Refuse(
                "is a symbolic link: the inbox takes regular files only and follows no link".into(),
            );
        }
        // (A link, dangling or not, is ELOOP above: this one is gone.)
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Take::Gone,
        Err(e) => return Take::Refuse(format!("cannot be opened: {e}")),
    };
    let meta = match file.metadata() {
        Ok(m) => m,
        Err(e) => return Take::Refuse(format!("cannot be read: {e}")),
    };
    let ft = meta.file_type();
    if !ft.is_file() {
        return Take::Refuse(format!(
            "is {}, not a regular file: the inbox takes regular files only",
            kind_of(ft)
        ));
    }
    if meta.nlink() > 1 {
        return Take::Refuse(format!(
            "has {} hard links: the inbox takes files of its own (write the task, then rename it in)",
            meta.nlink()
        ));
    }
    if open_for_writing(&file) == Some(true) {
        return Take::Open;
    }
    let stamp = Stamp::of(&meta);
    if !renamed_in_unchanged(path, stamp) {
        let modified = meta.modified().unwrap_or(now);
        if now.duration_since(modified).unwrap_or_default() < SETTLE {
            return Take::Settling;
        }
    }
    if stamp.size > MAX_BYTES {
        return Take::Refuse(format!(
            "is {} bytes, more than the {MAX_BYTES} accepted for a task",
            stamp.size
        ));
    }
    let mut bytes = Vec::with_capacity(stamp.size as usize);
    use std::io::Read;
    if let Err(e) = (&file).take(MAX_BYTES + 1).read_to_end(&mut bytes) {
        return Take::Refuse(format!("cannot be read: {e}"));
    }
    // Changed while read, or reopened for writing meanwhile: not yet.
    let after = file.metadata().map(|m| Stamp::of(&m)).ok();
    if after != Some(stamp) || bytes.len() as u64 != stamp.size {
        return Take::Settling;
    }
    if open_for_writing(&file) == Some(true) {
        return Take::Open;
    }
    Take::Ready(bytes)
}

fn kind_of(ft: std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if ft.is_dir() {
        "a directory"
    } else if ft.is_fifo() {
        "a FIFO"
    } else if ft.is_socket() {
        "a socket"
    } else if ft.is_char_device() {
        "a character device"
    } else if ft.is_block_device() {
        "a block device"
    } else if ft.is_symlink() {
        "a symbolic link"
    } else {
        "a special file"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn take_now(dir: &Path, name: &str, later: Duration) -> Take {
        let fd = open_inbox(dir, dir).unwrap();
        take(
            &fd,
            &dir.join(name),
            name.as_ref(),
            SystemTime::now() + later,
        )
    }

    #[test]
    fn only_complete_regular_files_are_taken() {
        let d = tempfile::tempdir().unwrap();
        let dir = std::fs::canonicalize(d.path()).unwrap();
        std::fs::write(dir.join("a.md"), "do it").unwrap();
        assert!(matches!(
            take_now(&dir, "a.md", Duration::ZERO),
            Take::Settling
        ));
        assert!(matches!(take_now(&dir, "a.md", SETTLE), Take::Ready(b) if b == b"do it"));
        // Open for writing: not taken, however old.
        let w = std::fs::OpenOptions::new()
            .append(true)
            .open(dir.join("a.md"))
            .unwrap();
        assert!(matches!(take_now(&dir, "a.md", SETTLE * 10), Take::Open));
        drop(w);
        // Renamed in, unchanged since: at once.
        std::fs::write(dir.join("tmp"), "renamed").unwrap();
        std::fs::rename(dir.join("tmp"), dir.join("b.md")).unwrap();
        arrived_by_rename(&dir.join("b.md"));
        assert!(
            matches!(take_now(&dir, "b.md", Duration::ZERO), Take::Ready(b) if b == b"renamed")
        );
        forget(&dir.join("b.md"));
        std::os::unix::fs::symlink("/etc/hostname", dir.join("l.md")).unwrap();
        assert!(
            matches!(take_now(&dir, "l.md", SETTLE), Take::Refuse(r) if r.contains("symbolic link"))
        );
        std::fs::create_dir(dir.join("d.md")).unwrap();
        assert!(
            matches!(take_now(&dir, "d.md", SETTLE), Take::Refuse(r) if r.contains("a directory"))
        );
        std::fs::hard_link(dir.join("a.md"), dir.join("h.md")).unwrap();
        assert!(
            matches!(take_now(&dir, "h.md", SETTLE), Take::Refuse(r) if r.contains("hard links"))
        );
    }

    #[test]
    fn an_inbox_outside_the_workdir_is_not_read() {
        let d = tempfile::tempdir().unwrap();
        let work = std::fs::canonicalize(d.path()).unwrap().join("w");
        std::fs::create_dir_all(work.join(".agent-queue")).unwrap();
        std::os::unix::fs::symlink("/etc", work.join(".agent-queue/inbox")).unwrap();
        let e = open_inbox(&work, &work.join(".agent-queue/inbox")).unwrap_err();
        assert!(e.contains("leads outside the workdir"), "{e}");
    }
}
